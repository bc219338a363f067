//! Secret files under the output directory: rendered as TSI did, written
//! atomically and only when the content changed, removed on revocation.

use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use crate::state::{self, StateError};
use crate::workload::secret::SecretData;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(
        "--format raw needs a secret with exactly one key; this one has {0} (use --format json)"
    )]
    NotSingleKey(usize),
    #[error("cannot create directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Write(#[from] StateError),
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// How a secret's data becomes a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The key/value data as one JSON object (TSI's format).
    Json,
    /// A single-key secret's value alone (a string as is, anything else as JSON).
    Raw,
}

/// The file's bytes for `data`.
pub fn render(data: &SecretData, format: Format) -> Result<Vec<u8>, OutputError> {
    match format {
        Format::Json => Ok(serde_json::Value::Object(data.0.clone())
            .to_string()
            .into_bytes()),
        Format::Raw => {
            let mut values = data.0.values();
            match (values.next(), values.next()) {
                (Some(serde_json::Value::String(s)), None) => Ok(s.clone().into_bytes()),
                (Some(v), None) => Ok(v.to_string().into_bytes()),
                _ => Err(OutputError::NotSingleKey(data.0.len())),
            }
        }
    }
}

/// Writes `bytes` to `dir/rel` unless it already holds exactly them;
/// `true` when the file was written. Directories below `dir` are created
/// (mode 0755: the app may run as another uid).
pub fn write_if_changed(
    dir: &Path,
    rel: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<bool, OutputError> {
    let path = dir.join(rel);
    if std::fs::read(&path).is_ok_and(|cur| cur == bytes) {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|source| OutputError::Dir {
                path: parent.to_path_buf(),
                source,
            })?;
    }
    state::write_atomic(&path, bytes, mode)?;
    Ok(true)
}

/// Removes `dir/rel`; `true` when there was a file.
pub fn remove(dir: &Path, rel: &Path) -> Result<bool, OutputError> {
    let path = dir.join(rel);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(OutputError::Remove { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn data(pairs: &[(&str, &str)]) -> SecretData {
        SecretData(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                .collect(),
        )
    }

    #[test]
    fn json_and_raw() {
        let one = data(&[("value", "s3cret")]);
        assert_eq!(
            render(&one, Format::Json).unwrap(),
            br#"{"value":"s3cret"}"#
        );
        assert_eq!(render(&one, Format::Raw).unwrap(), b"s3cret");
        let two = data(&[("a", "1"), ("b", "2")]);
        assert!(matches!(
            render(&two, Format::Raw),
            Err(OutputError::NotSingleKey(2))
        ));
    }

    #[test]
    fn written_only_when_changed_with_the_mode() {
        let d = tempfile::tempdir().unwrap();
        let rel = Path::new("a/b/s");
        assert!(write_if_changed(d.path(), rel, b"x", 0o640).unwrap());
        assert!(!write_if_changed(d.path(), rel, b"x", 0o640).unwrap());
        assert!(write_if_changed(d.path(), rel, b"y", 0o640).unwrap());
        let m = std::fs::metadata(d.path().join(rel)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        assert!(remove(d.path(), rel).unwrap());
        assert!(!remove(d.path(), rel).unwrap());
    }
}
