//! `jss secrets exec -- CMD ARGS…` (secrets-init's model): environment
//! variables holding `vault:<path>#<key>` are replaced by the secret's
//! value, then CMD replaces this process (no shell; signals reach the app).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;

use super::session::{FetchError, Session};
use super::vault::SecretStore;
use crate::workload::secret::Secret;

const PREFIX: &str = "vault:";

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(
        "${var}: {reference:?} is not a reference of the form vault:<path>#<key> (e.g. vault:secret/app/db#password)"
    )]
    Malformed { var: String, reference: String },
    #[error("${var}: cannot resolve {path}#{key}: {reason}")]
    Unresolved {
        var: String,
        path: String,
        key: String,
        reason: String,
    },
    #[error("cannot run {cmd:?}: {source}")]
    Exec {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
}

/// A variable whose value refers to a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub var: String,
    pub path: String,
    pub key: String,
}

/// The references among `env`: values starting `vault:`; anything else is
/// left alone. Not UTF-8 values cannot be references.
pub fn references(
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<Reference>, ExecError> {
    let mut out = Vec::new();
    for (k, v) in env {
        let (Some(var), Some(val)) = (k.to_str(), v.to_str()) else {
            continue;
        };
        let Some(rest) = val.strip_prefix(PREFIX) else {
            continue;
        };
        let malformed = || ExecError::Malformed {
            var: var.into(),
            reference: val.into(),
        };
        let (path, key) = rest.rsplit_once('#').ok_or_else(malformed)?;
        let path = path.trim_matches('/');
        if path.is_empty() || key.is_empty() || !path.contains('/') {
            return Err(malformed());
        }
        out.push(Reference {
            var: var.into(),
            path: path.into(),
            key: key.into(),
        });
    }
    Ok(out)
}

/// Each reference's value, read with `role`. Values are [`Secret`]s: they
/// never appear in an error.
pub async fn resolve<S: SecretStore>(
    session: &mut Session<S>,
    role: &str,
    refs: &[Reference],
) -> Result<Vec<(String, Secret)>, ExecError> {
    let mut cache = BTreeMap::new();
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        let unresolved = |reason: String| ExecError::Unresolved {
            var: r.var.clone(),
            path: r.path.clone(),
            key: r.key.clone(),
            reason,
        };
        if !cache.contains_key(&r.path) {
            let data = session
                .read_path(role, &r.path)
                .await
                .map_err(|e: FetchError| unresolved(e.to_string()))?;
            cache.insert(r.path.clone(), data);
        }
        let value = match cache.get(&r.path).and_then(|d| d.0.get(&r.key)) {
            Some(serde_json::Value::String(s)) => Secret::new(s.clone()),
            Some(v) => Secret::new(v.to_string()),
            None => return Err(unresolved("the secret has no such key".into())),
        };
        out.push((r.var.clone(), value));
    }
    Ok(out)
}

/// Replaces this process with `cmd args` and the resolved variables.
/// Returns only on failure.
pub fn exec(cmd: &OsString, args: &[OsString], values: Vec<(String, Secret)>) -> ExecError {
    let mut c = std::process::Command::new(cmd);
    c.args(args);
    for (k, v) in values {
        c.env(k, v.expose());
    }
    ExecError::Exec {
        cmd: cmd.to_string_lossy().into_owned(),
        source: c.exec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn references_are_found_and_others_left() {
        let r = references(env(&[
            ("PATH", "/bin"),
            ("DB_PASSWORD", "vault:secret/app/db#password"),
            ("TOKEN", "vault:/kv/x/y#a#b"),
        ]))
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].path, "secret/app/db");
        assert_eq!(r[0].key, "password");
        // The key is after the last `#`.
        assert_eq!((r[1].path.as_str(), r[1].key.as_str()), ("kv/x/y#a", "b"));
    }

    #[test]
    fn malformed_references_name_the_variable() {
        for bad in [
            "vault:secret/app/db",
            "vault:#k",
            "vault:secret#k",
            "vault:secret/a#",
        ] {
            let e = references(env(&[("X", bad)])).unwrap_err().to_string();
            assert!(e.starts_with("$X:"), "{e}");
        }
    }
}
