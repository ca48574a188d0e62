//! The management scope: which containers this service may read or change.
//! A container is in scope when it carries every scope label (the
//! management label and, when configured, the namespace label). Callers'
//! label selectors can only narrow a listing further, never widen it.

use std::collections::HashMap;
use std::fmt;

use crate::error::DockerError;

/// Longest label key or value accepted in a selector, in bytes.
const MAX_LABEL_PART_BYTES: usize = 1024;

/// `key` (the label is present) or `key=value` (the label has that value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    /// The label key.
    pub key: String,
    /// The required value; `None` means any value.
    pub value: Option<String>,
}

impl LabelSelector {
    /// Parses `key` or `key=value`; the key must be non-empty and free of
    /// whitespace.
    pub fn parse(selector: &str) -> Result<Self, DockerError> {
        let invalid = |reason| DockerError::InvalidLabelSelector { selector: selector.to_owned(), reason };
        let (key, value) = match selector.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (selector, None),
        };
        if key.is_empty() {
            return Err(invalid("the key is empty"));
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("the key contains whitespace"));
        }
        if key.len() > MAX_LABEL_PART_BYTES || value.is_some_and(|v| v.len() > MAX_LABEL_PART_BYTES) {
            return Err(invalid("the key or value is longer than 1024 bytes"));
        }
        Ok(Self { key: key.to_owned(), value: value.map(str::to_owned) })
    }

    /// Whether `labels` satisfy this selector.
    #[must_use]
    pub fn matches(&self, labels: &HashMap<String, String>) -> bool {
        match (labels.get(&self.key), &self.value) {
            (Some(actual), Some(expected)) => actual == expected,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// The engine's `label` filter syntax, the same as ours.
    #[must_use]
    pub fn engine_filter(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value}", self.key),
            None => f.write_str(&self.key),
        }
    }
}

/// The labels that put a container in this service's scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagementScope {
    /// The management label, then the namespace label when configured.
    required: Vec<LabelSelector>,
}

impl ManagementScope {
    /// A scope requiring `managed` and, when given, `namespace`.
    #[must_use]
    pub fn new(managed: LabelSelector, namespace: Option<LabelSelector>) -> Self {
        Self { required: std::iter::once(managed).chain(namespace).collect() }
    }

    /// Whether a container with these labels is in scope.
    #[must_use]
    pub fn admits(&self, labels: &HashMap<String, String>) -> bool {
        self.required.iter().all(|selector| selector.matches(labels))
    }

    /// The engine `label` filters selecting exactly the scope, plus `narrowing`.
    #[must_use]
    pub fn engine_label_filters(&self, narrowing: &[LabelSelector]) -> Vec<String> {
        self.required.iter().chain(narrowing).map(LabelSelector::engine_filter).collect()
    }

    /// The labels a created container gets so that it is in scope. A
    /// selector without a value becomes a label with an empty value.
    #[must_use]
    pub fn labels_for_new_container(&self) -> HashMap<String, String> {
        self.required.iter().map(|s| (s.key.clone(), s.value.clone().unwrap_or_default())).collect()
    }

    /// Whether `key` is one of the scope's label keys, which callers may not set.
    #[must_use]
    pub fn is_reserved_key(&self, key: &str) -> bool {
        self.required.iter().any(|selector| selector.key == key)
    }
}

impl fmt::Display for ManagementScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.required.iter().map(|s| format!("`{s}`")).collect();
        f.write_str(&parts.join(" and "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn check(selector: &str, expected: Result<(&str, Option<&str>), &str>) {
        let parsed = LabelSelector::parse(selector);
        match expected {
            Ok((key, value)) => {
                let parsed = parsed.unwrap_or_else(|e| panic!("{selector}: {e}"));
                assert_eq!((parsed.key.as_str(), parsed.value.as_deref()), (key, value), "{selector}");
                assert_eq!(parsed.to_string(), selector);
            }
            Err(reason) => match parsed {
                Err(DockerError::InvalidLabelSelector { reason: actual, .. }) => {
                    assert_eq!(actual, reason, "{selector}");
                }
                other => panic!("{selector}: expected an error, got {other:?}"),
            },
        }
    }

    #[test]
    fn selectors_parse() {
        check("mesh.managed=true", Ok(("mesh.managed", Some("true"))));
        check("mesh.managed", Ok(("mesh.managed", None)));
        check("env=", Ok(("env", Some(""))));
        check("a=b=c", Ok(("a", Some("b=c"))));
        check("", Err("the key is empty"));
        check("=x", Err("the key is empty"));
        check("a b=c", Err("the key contains whitespace"));
    }

    #[test]
    fn scope_requires_every_label() {
        let scope = ManagementScope::new(
            LabelSelector::parse("mesh.managed=true").unwrap(),
            Some(LabelSelector::parse("mesh.namespace=blue").unwrap()),
        );
        assert!(scope.admits(&labels(&[("mesh.managed", "true"), ("mesh.namespace", "blue"), ("x", "y")])));
        assert!(!scope.admits(&labels(&[("mesh.managed", "true")])));
        assert!(!scope.admits(&labels(&[("mesh.managed", "false"), ("mesh.namespace", "blue")])));
        assert!(!scope.admits(&labels(&[])));
        assert_eq!(scope.to_string(), "`mesh.managed=true` and `mesh.namespace=blue`");
        assert!(scope.is_reserved_key("mesh.namespace"));
        assert!(!scope.is_reserved_key("app"));
        let narrowing = [LabelSelector::parse("app").unwrap()];
        assert_eq!(scope.engine_label_filters(&narrowing), ["mesh.managed=true", "mesh.namespace=blue", "app"]);
        assert!(scope.admits(&scope.labels_for_new_container()));
    }
}
