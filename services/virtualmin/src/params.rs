//! Remote programs and their parameters, built so that no request field can
//! become an extra argument. remote.cgi splits every value on LF into more
//! arguments, turns an empty pair into `--`, and several programs take an
//! option's value only when it does not start with `-`; so program and
//! parameter names are compile-time constants, and every value is refused if
//! it holds a control character or starts with `-`.

use std::fmt::{self, Write as _};

use secrecy::{ExposeSecret, SecretString};

use crate::config::TimeoutClass;
use crate::error::VirtualminError;

/// Longest value sent in one parameter.
const MAX_VALUE_CHARS: usize = 1000;
/// Values are cut to this many characters in logs and error metadata.
const MAX_LOGGED_VALUE_CHARS: usize = 100;

/// A Virtualmin remote program this gateway runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Program {
    /// `list-domains`.
    ListDomains,
    /// `list-bandwidth`.
    ListBandwidth,
    /// `list-plans`.
    ListPlans,
    /// `info`.
    Info,
    /// `create-domain`.
    CreateDomain,
    /// `delete-domain`.
    DeleteDomain,
    /// `disable-domain`.
    DisableDomain,
    /// `enable-domain`.
    EnableDomain,
    /// `modify-domain`.
    ModifyDomain,
    /// `backup-domain`.
    BackupDomain,
}

impl Program {
    /// Every program, for metrics.
    pub const ALL: [Self; 10] = [
        Self::ListDomains,
        Self::ListBandwidth,
        Self::ListPlans,
        Self::Info,
        Self::CreateDomain,
        Self::DeleteDomain,
        Self::DisableDomain,
        Self::EnableDomain,
        Self::ModifyDomain,
        Self::BackupDomain,
    ];

    /// The program's name on the wire.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::ListDomains => "list-domains",
            Self::ListBandwidth => "list-bandwidth",
            Self::ListPlans => "list-plans",
            Self::Info => "info",
            Self::CreateDomain => "create-domain",
            Self::DeleteDomain => "delete-domain",
            Self::DisableDomain => "disable-domain",
            Self::EnableDomain => "enable-domain",
            Self::ModifyDomain => "modify-domain",
            Self::BackupDomain => "backup-domain",
        }
    }

    /// True for programs that change nothing, so an ambiguous failure
    /// (timeout, 5xx, dropped connection) may be retried.
    #[must_use]
    pub fn is_read_only(self) -> bool {
        matches!(self, Self::ListDomains | Self::ListBandwidth | Self::ListPlans | Self::Info)
    }

    /// The timeout class used when the caller names none.
    #[must_use]
    pub fn default_timeout_class(self) -> TimeoutClass {
        match self {
            Self::ListDomains => TimeoutClass::DomainSync,
            Self::ListBandwidth => TimeoutClass::UsageSync,
            Self::ListPlans | Self::Info => TimeoutClass::Request,
            Self::CreateDomain | Self::DeleteDomain | Self::DisableDomain | Self::EnableDomain | Self::ModifyDomain => {
                TimeoutClass::Provisioning
            }
            Self::BackupDomain => TimeoutClass::Backup,
        }
    }
}

/// One parameter value.
enum ParamValue {
    /// A bare flag, sent as `name=` (never `name=true`, which becomes a stray argument).
    Flag,
    /// A plain value.
    Text(String),
    /// A secret: sent in the POST body, masked everywhere else.
    Secret(SecretString),
}

/// The parameters of one remote call, in the order they are sent.
#[derive(Default)]
pub struct RemoteParams {
    pairs: Vec<(&'static str, ParamValue)>,
}

impl fmt::Debug for RemoteParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteParams({self})")
    }
}

/// Parameter names are constants of this crate; this checks them in debug
/// builds and in the tests, where every builder runs.
fn debug_assert_name(name: &str) {
    debug_assert!(
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "parameter name `{name}` must match [a-z0-9-]+"
    );
}

/// Refuses a value that remote.cgi would split or a program would misread.
pub fn check_value(field: &'static str, value: &str) -> Result<(), VirtualminError> {
    if value.chars().any(char::is_control) || value.starts_with('-') {
        return Err(VirtualminError::UnsafeValue { field });
    }
    if value.chars().count() > MAX_VALUE_CHARS {
        return Err(VirtualminError::InvalidArgument {
            field,
            reason: format!("must be at most {MAX_VALUE_CHARS} characters"),
        });
    }
    Ok(())
}

impl RemoteParams {
    /// No parameters.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a bare flag (`multiline=`).
    #[must_use]
    pub fn flag(mut self, name: &'static str) -> Self {
        debug_assert_name(name);
        self.pairs.push((name, ParamValue::Flag));
        self
    }

    /// Adds a value, refusing unsafe ones; `field` names the request field it came from.
    pub fn value(mut self, name: &'static str, field: &'static str, value: &str) -> Result<Self, VirtualminError> {
        debug_assert_name(name);
        check_value(field, value)?;
        if value.is_empty() {
            return Err(VirtualminError::InvalidArgument { field, reason: "must not be empty".to_owned() });
        }
        self.pairs.push((name, ParamValue::Text(value.to_owned())));
        Ok(self)
    }

    /// Adds a secret value, refusing unsafe ones without echoing them.
    pub fn secret(
        mut self,
        name: &'static str,
        field: &'static str,
        value: SecretString,
    ) -> Result<Self, VirtualminError> {
        debug_assert_name(name);
        let exposed = value.expose_secret();
        if exposed.is_empty() {
            return Err(VirtualminError::InvalidArgument { field, reason: "must not be empty".to_owned() });
        }
        check_value(field, exposed)?;
        self.pairs.push((name, ParamValue::Secret(value)));
        Ok(self)
    }

    /// The values of every secret, so failure text can be scrubbed of them.
    pub(crate) fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().filter_map(|(_, value)| match value {
            ParamValue::Secret(secret) => Some(secret.expose_secret()),
            _ => None,
        })
    }

    /// The `application/x-www-form-urlencoded` body: `program`, the JSON
    /// format, then the parameters in order.
    #[must_use]
    pub fn form_body(&self, program: Program) -> String {
        let mut body = String::with_capacity(64);
        body.push_str("program=");
        body.push_str(program.name());
        body.push_str("&json=minified");
        for (name, value) in &self.pairs {
            body.push('&');
            body.push_str(name);
            body.push('=');
            match value {
                ParamValue::Flag => {}
                ParamValue::Text(text) => percent_encode_into(text, &mut body),
                ParamValue::Secret(secret) => percent_encode_into(secret.expose_secret(), &mut body),
            }
        }
        body
    }

    /// The names and values as the simulator's argv would show them, with secrets masked.
    #[must_use]
    pub fn sanitized(&self) -> String {
        self.to_string()
    }
}

/// Masks secrets and cuts long values: `domain=a.com pass=[redacted] multiline`.
impl fmt::Display for RemoteParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (name, value)) in self.pairs.iter().enumerate() {
            if index > 0 {
                f.write_char(' ')?;
            }
            f.write_str(name)?;
            match value {
                ParamValue::Flag => {}
                ParamValue::Secret(_) => f.write_str("=[redacted]")?,
                ParamValue::Text(text) if is_secret_in_text(name, text) => f.write_str("=[redacted]")?,
                ParamValue::Text(text) => {
                    f.write_char('=')?;
                    let mut chars = text.chars();
                    f.write_str(&chars.by_ref().take(MAX_LOGGED_VALUE_CHARS).collect::<String>())?;
                    if chars.next().is_some() {
                        f.write_str("…")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Names that carry secrets even when passed as text, and URLs with credentials.
fn is_secret_in_text(name: &str, value: &str) -> bool {
    let secret_name =
        matches!(name, "pass" | "passfile" | "password" | "secret" | "token" | "key") || name.ends_with("-pass");
    let credentialed_url = value.contains("://") && value.contains('@');
    secret_name || credentialed_url
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode_into(value: &str, out: &mut String) {
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

/// Checks a domain name: RFC 1035 labels (letters, digits, hyphens; IDNs in
/// punycode), at least two labels, at most 253 characters.
pub fn check_domain_name(field: &'static str, name: &str) -> Result<(), VirtualminError> {
    check_value(field, name)?;
    let invalid = |reason: &str| VirtualminError::InvalidArgument { field, reason: reason.to_owned() };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > 253 {
        return Err(invalid("must be at most 253 characters"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(invalid("must have at least two labels, e.g. example.com"));
    }
    for label in labels {
        let label_ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !label_ok {
            return Err(invalid("must be labels of letters, digits and inner hyphens separated by dots"));
        }
    }
    Ok(())
}

/// Checks a Unix user name as Virtualmin accepts it.
pub fn check_username(field: &'static str, name: &str) -> Result<(), VirtualminError> {
    check_value(field, name)?;
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(VirtualminError::InvalidArgument { field, reason: "must be 1 to 32 of [a-z0-9._-]".to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_sends_flags_bare_and_encodes_values() {
        let params = RemoteParams::new()
            .flag("multiline")
            .value("domain", "domain_name", "a.com")
            .unwrap()
            .value("desc", "description", "Ünï & co")
            .unwrap();
        assert_eq!(
            params.form_body(Program::ListDomains),
            "program=list-domains&json=minified&multiline=&domain=a.com&desc=%C3%9Cn%C3%AF%20%26%20co"
        );
    }

    #[test]
    fn injection_attempts_are_refused() {
        for value in ["x\n--pass\nhacked", "a\rb", "a\0b", "--all-domains", "-x", "tab\there", "\u{7f}"] {
            let error = RemoteParams::new().value("desc", "description", value).unwrap_err();
            assert_eq!(error, VirtualminError::UnsafeValue { field: "description" }, "{value:?}");
        }
        let error = RemoteParams::new().secret("pass", "password", SecretString::from("a\nb")).unwrap_err();
        assert!(!error.to_string().contains("a\nb"));
    }

    #[test]
    fn secrets_are_masked_in_display_and_debug() {
        let params = RemoteParams::new()
            .value("domain", "domain_name", "a.com")
            .unwrap()
            .secret("pass", "password", SecretString::from("hunter2"))
            .unwrap()
            .value("dest", "destination_path", "ssh://root:pw@host:/x")
            .unwrap();
        assert_eq!(params.to_string(), "domain=a.com pass=[redacted] dest=[redacted]");
        assert!(!format!("{params:?}").contains("hunter2"));
        assert!(params.form_body(Program::CreateDomain).contains("pass=hunter2"));
    }

    #[test]
    fn domain_names_are_checked() {
        for good in ["example.com", "shop.example.co.uk", "xn--bcher-kva.de", "a-b.io"] {
            check_domain_name("domain_name", good).unwrap();
        }
        for bad in ["", "localhost", "-a.com", "a-.com", "a..com", "a_b.com", "a.com/x", "a.com\n--x"] {
            assert!(check_domain_name("domain_name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_program_has_a_valid_name() {
        for program in Program::ALL {
            assert!(program.name().bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
        }
        assert!(Program::ListDomains.is_read_only());
        assert!(!Program::CreateDomain.is_read_only());
        assert!(!Program::BackupDomain.is_read_only());
    }
}
