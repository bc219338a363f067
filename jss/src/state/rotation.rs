//! A key rotation in progress: `<state_dir>/rotation.json`.
//!
//! `jss-bootstrap node register --rotate` writes it before it creates the
//! new key and deletes it once the old key's registration and files are
//! gone, so a run killed at any step is completed by the next; `jss inspect`
//! and `node status` show it (README, "Rotating the node key").

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{StateError, write_atomic};

/// File name of the record in the state directory.
pub const ROTATION_FILE: &str = "rotation.json";

/// What a rotation has done so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The key being replaced.
    pub old_kid: String,
    /// Its public key (SPKI PEM), to remove it from Vault without its files.
    pub old_public_key: String,
    /// The new key, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_kid: Option<String>,
    /// Unix seconds when the daemon was seen signing with the new key (or
    /// when no daemon ran): the old key signs nothing after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<u64>,
    /// Unix seconds after which every token of the old key has expired
    /// (switch + token life + the roles' leeways): its registration may go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_after: Option<u64>,
}

/// The rotation in progress in `state_dir`, if any.
///
/// Errors: the file cannot be read or is not a rotation record.
pub fn read(state_dir: &Path) -> Result<Option<Rotation>, StateError> {
    let path = state_dir.join(ROTATION_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StateError::Read {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
}

/// Records `r` atomically.
pub fn write(state_dir: &Path, r: &Rotation) -> Result<(), StateError> {
    let path = state_dir.join(ROTATION_FILE);
    let bytes = serde_json::to_vec_pretty(r).map_err(|e| StateError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&path, &bytes, 0o644)
}

/// Removes the record: the rotation is complete.
pub fn clear(state_dir: &Path) -> Result<(), StateError> {
    let path = state_dir.join(ROTATION_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(StateError::Write { path, source }),
    }
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StateError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_clears() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()).unwrap(), None);
        let r = Rotation {
            old_kid: "a".into(),
            old_public_key: "PEM".into(),
            new_kid: Some("b".into()),
            switched_at: None,
            remove_after: None,
        };
        write(d.path(), &r).unwrap();
        assert_eq!(read(d.path()).unwrap(), Some(r));
        clear(d.path()).unwrap();
        clear(d.path()).unwrap();
        assert_eq!(read(d.path()).unwrap(), None);
    }
}
