//! The services the profiler watches, parsed from `name=http://host:port,...`.

/// One watched service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileTarget {
    /// The name reports use, e.g. `cache`.
    pub name: String,
    /// Where its `MemoryIntrospection` is served, `http://host:port`.
    pub uri: String,
}

/// Why a targets list is invalid. Messages name the entry by position or
/// name, never echo a URI.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetProblem {
    /// An entry is not `name=uri`.
    #[error("entry {position} must be `name=http://host:port`")]
    NotNameEqualsUri { position: usize },
    /// A name holds characters other than ASCII letters, digits, `-`, `_` and `.`.
    #[error("entry {position}: names use ASCII letters, digits, `-`, `_` and `.`")]
    InvalidName { position: usize },
    /// A URI is not plain `http://host:port`.
    #[error("target `{name}` must be http://host:port (plaintext HTTP/2, with a port)")]
    InvalidUri { name: String },
    /// Two entries share a name.
    #[error("target `{name}` is listed twice")]
    DuplicateName { name: String },
}

/// Parses `name=http://host:port` entries separated by commas; blanks are
/// ignored, so an empty string means no targets.
pub fn parse_targets(raw: &str) -> Result<Vec<ProfileTarget>, TargetProblem> {
    let mut targets: Vec<ProfileTarget> = Vec::new();
    for (index, entry) in raw.split(',').map(str::trim).filter(|entry| !entry.is_empty()).enumerate() {
        let position = index + 1;
        let Some((name, uri)) = entry.split_once('=') else {
            return Err(TargetProblem::NotNameEqualsUri { position });
        };
        let (name, uri) = (name.trim(), uri.trim());
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(TargetProblem::InvalidName { position });
        }
        if !is_plain_http_host_port(uri) {
            return Err(TargetProblem::InvalidUri { name: name.to_owned() });
        }
        if targets.iter().any(|target| target.name == name) {
            return Err(TargetProblem::DuplicateName { name: name.to_owned() });
        }
        targets.push(ProfileTarget { name: name.to_owned(), uri: uri.to_owned() });
    }
    Ok(targets)
}

fn is_plain_http_host_port(uri: &str) -> bool {
    let Some(authority) = uri.strip_prefix("http://") else {
        return false;
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    let Some((host, port)) = authority.rsplit_once(':') else {
        return false;
    };
    !host.is_empty() && !host.contains(['/', '@', '?', '#']) && port.parse::<u16>().is_ok_and(|port| port > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expected: Result<Vec<(&str, &str)>, TargetProblem>) {
        let parsed = parse_targets(raw).map(|targets| targets.into_iter().map(|t| (t.name, t.uri)).collect::<Vec<_>>());
        let expected = expected
            .map(|pairs| pairs.into_iter().map(|(name, uri)| (name.to_owned(), uri.to_owned())).collect::<Vec<_>>());
        assert_eq!(parsed, expected, "{raw:?}");
    }

    #[test]
    fn targets_are_parsed_in_order() {
        check("", Ok(vec![]));
        check(" , ", Ok(vec![]));
        check("cache=http://127.0.0.1:50061", Ok(vec![("cache", "http://127.0.0.1:50061")]));
        check(
            "cache = http://a:1 , vpn-users=http://[::1]:2/",
            Ok(vec![("cache", "http://a:1"), ("vpn-users", "http://[::1]:2/")]),
        );
    }

    #[test]
    fn invalid_entries_are_named_without_their_uri() {
        check("cache", Err(TargetProblem::NotNameEqualsUri { position: 1 }));
        check("a=http://h:1,=http://h:2", Err(TargetProblem::InvalidName { position: 2 }));
        check("a b=http://h:1", Err(TargetProblem::InvalidName { position: 1 }));
        check("cache=https://h:1", Err(TargetProblem::InvalidUri { name: "cache".into() }));
        check("cache=http://h", Err(TargetProblem::InvalidUri { name: "cache".into() }));
        check("cache=http://user:pw@h:1", Err(TargetProblem::InvalidUri { name: "cache".into() }));
        check("cache=http://h:0", Err(TargetProblem::InvalidUri { name: "cache".into() }));
        check("a=http://h:1,a=http://h:2", Err(TargetProblem::DuplicateName { name: "a".into() }));
        let message = TargetProblem::InvalidUri { name: "cache".into() }.to_string();
        assert!(!message.contains("https"), "{message}");
    }
}
