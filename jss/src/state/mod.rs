//! The node's state directory: atomic, private writes and permission checks;
//! the key versions and their pointer in [`layout`].
//!
//! Every state file (key blobs, chain) is written to a temporary file in the
//! same directory, fsynced, renamed over the target and the directory fsynced,
//! so a crash or a full disk leaves either the old file or the new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub mod layout;
pub mod rotation;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source} (nothing was changed)")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path} has mode {mode:04o}; a key file must not be readable by group or others: run `chmod 600 {path}`"
    )]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error(
        "the key pointer {path} is unusable: {reason}; run `jss-bootstrap node register --rotate` to finish the rotation, or write the kid of a directory under keys/ into it"
    )]
    BadPointer { path: PathBuf, reason: String },
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `bytes` to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    remove_dead_temps(dir, &name);
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Removes `.NAME.tmp.<pid>` files left by writers that were killed mid-write
/// (their pid no longer runs); a live writer's temp file is left alone.
fn remove_dead_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp.");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Reads a file that must be private to its owner (mode without group/other bits).
pub fn read_private(path: &Path) -> Result<Vec<u8>, StateError> {
    let meta = fs::metadata(path).map_err(|source| StateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(StateError::LoosePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    fs::read(path).map_err(|source| StateError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // no temporary files left behind
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn loose_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_atomic(&p, b"x", 0o644).unwrap();
        let e = read_private(&p).unwrap_err();
        assert!(
            matches!(e, StateError::LoosePermissions { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"));
    }

    #[test]
    fn temp_files_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22: this pid cannot be running.
        let dead = dir.path().join(".k.tmp.4194399");
        let live = dir
            .path()
            .join(format!(".k.tmp.{}", std::os::unix::process::parent_id()));
        fs::write(&dead, b"half").unwrap();
        fs::write(&live, b"busy").unwrap();
        write_atomic(&dir.path().join("k"), b"whole", 0o600).unwrap();
        assert!(!dead.exists());
        assert!(live.exists(), "a running writer's temp file must stay");
    }

    #[test]
    fn failed_write_leaves_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("k");
        assert!(write_atomic(&p, b"x", 0o600).is_err());
        assert!(!p.exists());
    }
}
