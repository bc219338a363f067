//! Values that must never reach a log, an error message or `Debug` output.

use std::fmt;

/// A secret string (a JWT, a Vault token, a secret's value).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The value itself: only for the request or file that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secret's key/value data as Vault returned it (KV v2 `data.data`, KV v1 `data`).
#[derive(Clone, Default, PartialEq)]
pub struct SecretData(pub serde_json::Map<String, serde_json::Value>);

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys are names, not values: useful and safe to show.
        let keys: Vec<&String> = self.0.keys().collect();
        write!(f, "SecretData {{ keys: {keys:?}, values: <redacted> }}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_values() {
        let s = Secret::new("hvs.very-secret");
        assert_eq!(format!("{s:?}"), "<redacted>");
        let mut m = serde_json::Map::new();
        m.insert("password".into(), "s3cret".into());
        let d = format!("{:?}", SecretData(m));
        assert!(d.contains("password") && !d.contains("s3cret"), "{d}");
    }
}
