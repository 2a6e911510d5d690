//! `Secret`: a string that never prints. Debug and Display show `***`; it does not implement
//! `Serialize`, so it cannot leak into logs, metrics, error bodies or admin responses by accident.

use std::fmt;

use subtle::ConstantTimeEq;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(value: impl Into<Box<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it (an outgoing header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in constant time with respect to the contents (the length may leak).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(candidate).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("sk-live-123");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert!(s.matches(b"sk-live-123"));
        assert!(!s.matches(b"sk-live-124"));
        assert!(!s.matches(b"sk-live"));
    }
}
