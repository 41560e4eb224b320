//! `Secret<T>`: a wrapper for passwords, tokens and SASL payloads.
//!
//! Its `Debug` always redacts (debug builds too); it has no `Display` and no `Serialize`, so a
//! secret cannot reach a log line, an audit record or an error string by accident. The only way
//! in is [`Secret::expose`], which greps well in review.

use std::fmt;

/// A value that must never be printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(inner: T) -> Self {
        Self(inner)
    }

    /// The secret itself. Call sites are the places that must not log it.
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(inner: T) -> Self {
        Self(inner)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("/* REDACTED */")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "/* REDACTED */");
        assert_eq!(format!("{:#?}", Some(s)), "Some(\n    /* REDACTED */,\n)");
    }
}
