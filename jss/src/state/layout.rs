//! Which node key and chain are current: versions and one pointer.
//!
//! ```text
//! <state_dir>/current                 "<kid>\n": the version in use
//! <state_dir>/keys/<kid>/node-key.tpm (or node-key.pem) and chain.pem
//! <state_dir>/keys/.new/              a key being created by `node register --rotate`
//! <state_dir>/node-key.tpm, chain.pem the single-file layout of nodes never rotated
//! ```
//!
//! Key and chain change together because readers resolve `current` once and
//! read both files from that version's directory; the pointer is replaced
//! with [`write_atomic`](super::write_atomic). Without `current` the state
//! directory itself is the current version (README, "Rotating the node key").

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{StateError, write_atomic};

/// The pointer file: the kid of the current version.
pub const CURRENT_FILE: &str = "current";
/// The directory holding one directory per key version, named by kid.
pub const KEYS_DIR: &str = "keys";
/// Where a rotation creates its key before the kid is known.
pub const STAGING_DIR: &str = ".new";
/// Files of one version (node key in the TPM or in software, and the chain).
pub const VERSION_FILES: [&str; 3] = ["node-key.tpm", "node-key.pem", "chain.pem"];

/// One version of the node key and its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The directory holding the key file and `chain.pem`.
    pub dir: PathBuf,
    /// The kid the pointer names; `None` for the single-file layout.
    pub kid: Option<String>,
}

/// The directory of the version `kid`.
pub fn version_dir(state_dir: &Path, kid: &str) -> PathBuf {
    state_dir.join(KEYS_DIR).join(kid)
}

/// The staging directory of a rotation in progress.
pub fn staging_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(KEYS_DIR).join(STAGING_DIR)
}

/// A kid is an RFC 7638 thumbprint: base64url, no padding. Anything else in
/// the pointer (a path, an empty file) is refused rather than followed.
fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 128
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The current version: the one `current` names, or the state directory
/// itself when there is no pointer (a node never rotated).
///
/// Errors: the pointer is unreadable, does not hold a kid, or names a
/// version whose directory is missing.
pub fn current(state_dir: &Path) -> Result<Version, StateError> {
    let pointer = state_dir.join(CURRENT_FILE);
    let text = match fs::read_to_string(&pointer) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Version {
                dir: state_dir.to_path_buf(),
                kid: None,
            });
        }
        Err(source) => {
            return Err(StateError::Read {
                path: pointer,
                source,
            });
        }
    };
    let kid = text.trim();
    if !valid_kid(kid) {
        return Err(StateError::BadPointer {
            path: pointer,
            reason: format!("it holds {kid:?}, not a key id"),
        });
    }
    let dir = version_dir(state_dir, kid);
    if !dir.is_dir() {
        return Err(StateError::BadPointer {
            path: pointer,
            reason: format!("it names {kid}, but {} is missing", dir.display()),
        });
    }
    Ok(Version {
        dir,
        kid: Some(kid.to_string()),
    })
}

/// Points `current` at the version `kid` (its directory must exist).
pub fn switch(state_dir: &Path, kid: &str) -> Result<(), StateError> {
    let pointer = state_dir.join(CURRENT_FILE);
    let dir = version_dir(state_dir, kid);
    if !valid_kid(kid) || !dir.is_dir() {
        return Err(StateError::BadPointer {
            path: pointer,
            reason: format!("no version directory {} to point at", dir.display()),
        });
    }
    write_atomic(&pointer, format!("{kid}\n").as_bytes(), 0o644)
}

/// Moves the single-file layout into `keys/<kid>/` and points `current` at
/// it; does nothing when a pointer exists. Files are copied and synced
/// before the pointer is written and the old ones removed after it, so a
/// crash leaves one readable current version either way.
pub fn migrate(state_dir: &Path, kid: &str) -> Result<bool, StateError> {
    if state_dir.join(CURRENT_FILE).exists() {
        remove_legacy(state_dir)?;
        return Ok(false);
    }
    let dir = version_dir(state_dir, kid);
    super::ensure_dir(&dir)?;
    for name in VERSION_FILES {
        let from = state_dir.join(name);
        match fs::read(&from) {
            Ok(bytes) => {
                let mode = fs::metadata(&from)
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
                    .unwrap_or(0o600);
                write_atomic(&dir.join(name), &bytes, mode)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(StateError::Read { path: from, source }),
        }
    }
    switch(state_dir, kid)?;
    remove_legacy(state_dir)?;
    Ok(true)
}

fn remove_legacy(state_dir: &Path) -> Result<(), StateError> {
    for name in VERSION_FILES {
        let p = state_dir.join(name);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(StateError::Write { path: p, source }),
        }
    }
    Ok(())
}

/// Renames the staging directory to `keys/<kid>` (a no-op when that is
/// already done).
pub fn adopt_staging(state_dir: &Path, kid: &str) -> Result<PathBuf, StateError> {
    let to = version_dir(state_dir, kid);
    let from = staging_dir(state_dir);
    if to.is_dir() {
        return Ok(to);
    }
    fs::rename(&from, &to).map_err(|source| StateError::Write {
        path: to.clone(),
        source,
    })?;
    sync_dir(&state_dir.join(KEYS_DIR)).map_err(|source| StateError::Write {
        path: to.clone(),
        source,
    })?;
    Ok(to)
}

/// Deletes the version `kid` (key blob and chain); refuses the current one.
pub fn remove_version(state_dir: &Path, kid: &str) -> Result<(), StateError> {
    let dir = version_dir(state_dir, kid);
    if !valid_kid(kid) || current(state_dir)?.kid.as_deref() == Some(kid) {
        return Err(StateError::BadPointer {
            path: state_dir.join(CURRENT_FILE),
            reason: format!(
                "refusing to remove {}: it is the current key",
                dir.display()
            ),
        });
    }
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(StateError::Write { path: dir, source }),
    }
    sync_dir(&state_dir.join(KEYS_DIR)).map_err(|source| StateError::Write {
        path: state_dir.join(KEYS_DIR),
        source,
    })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KID: &str = "dGhpcy1pcy1hLWtpZA";

    #[test]
    fn without_a_pointer_the_state_dir_is_current() {
        let d = tempfile::tempdir().unwrap();
        let v = current(d.path()).unwrap();
        assert_eq!(v.dir, d.path());
        assert_eq!(v.kid, None);
    }

    #[test]
    fn migration_moves_key_and_chain_behind_the_pointer() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(&d.path().join("node-key.tpm"), b"blob", 0o600).unwrap();
        write_atomic(&d.path().join("chain.pem"), b"chain", 0o644).unwrap();
        assert!(migrate(d.path(), KID).unwrap());
        let v = current(d.path()).unwrap();
        assert_eq!(v.kid.as_deref(), Some(KID));
        assert_eq!(fs::read(v.dir.join("node-key.tpm")).unwrap(), b"blob");
        assert_eq!(fs::read(v.dir.join("chain.pem")).unwrap(), b"chain");
        assert!(!d.path().join("node-key.tpm").exists());
        assert!(!d.path().join("chain.pem").exists());
        assert!(
            !migrate(d.path(), KID).unwrap(),
            "second run: nothing to do"
        );
    }

    #[test]
    fn a_crash_after_the_pointer_leaves_legacy_files_that_the_next_run_removes() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(&d.path().join("node-key.pem"), b"key", 0o600).unwrap();
        fs::create_dir_all(version_dir(d.path(), KID)).unwrap();
        write_atomic(
            &version_dir(d.path(), KID).join("node-key.pem"),
            b"key",
            0o600,
        )
        .unwrap();
        switch(d.path(), KID).unwrap();
        assert_eq!(current(d.path()).unwrap().kid.as_deref(), Some(KID));
        assert!(!migrate(d.path(), KID).unwrap());
        assert!(!d.path().join("node-key.pem").exists());
    }

    #[test]
    fn a_bad_pointer_is_refused_and_the_current_version_is_kept() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(&d.path().join(CURRENT_FILE), b"../../etc\n", 0o644).unwrap();
        assert!(matches!(
            current(d.path()),
            Err(StateError::BadPointer { .. })
        ));
        write_atomic(
            &d.path().join(CURRENT_FILE),
            format!("{KID}\n").as_bytes(),
            0o644,
        )
        .unwrap();
        let e = current(d.path()).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        fs::create_dir_all(version_dir(d.path(), KID)).unwrap();
        assert!(remove_version(d.path(), KID).is_err(), "current is kept");
    }

    #[test]
    fn staging_is_adopted_once() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(staging_dir(d.path())).unwrap();
        fs::write(staging_dir(d.path()).join("node-key.pem"), b"k").unwrap();
        let to = adopt_staging(d.path(), KID).unwrap();
        assert!(to.join("node-key.pem").exists());
        assert_eq!(adopt_staging(d.path(), KID).unwrap(), to);
        switch(d.path(), KID).unwrap();
        fs::create_dir_all(version_dir(d.path(), "old")).unwrap();
        remove_version(d.path(), "old").unwrap();
        assert!(!version_dir(d.path(), "old").exists());
    }
}
