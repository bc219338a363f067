//! Where a volume may be published: only at the kubelet's own target for a
//! CSI volume, `<kubelet-dir>/pods/<pod uid>/volumes/kubernetes.io~csi/<volume
//! name>/mount`, with no `..` and no symlink anywhere below `pods/`. The
//! plugin is privileged and its mounts propagate to the node, so a path
//! that led anywhere else would mount the JSS socket (or a tmpfs) over a
//! directory of the node's choosing.

use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

/// The kubelet's directory name for CSI volumes of a pod.
const CSI_VOLUMES: [&str; 2] = ["volumes", "kubernetes.io~csi"];
/// The last component of every CSI target path the kubelet hands out.
const MOUNT_DIR: &str = "mount";

/// A target path the plugin will not use; InvalidArgument or
/// FailedPrecondition (a parent the kubelet did not create).
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("target_path {path:?} is not absolute")]
    NotAbsolute { path: PathBuf },
    #[error("target_path {path:?} has a '.' or '..' component")]
    DotDot { path: PathBuf },
    #[error(
        "target_path {path:?} is not a kubelet CSI target ({pods}/<pod uid>/volumes/kubernetes.io~csi/<volume>/mount): is --kubelet-dir the kubelet's --root-dir?"
    )]
    Outside { path: PathBuf, pods: String },
    #[error("target_path {path:?}: {component:?} is a symlink; the plugin never follows one")]
    Symlink { path: PathBuf, component: PathBuf },
    #[error("target_path {path:?}: {component:?} is not a directory")]
    NotADirectory { path: PathBuf, component: PathBuf },
    #[error(
        "target_path {path:?}: its parent {parent:?} does not exist (the kubelet creates it before NodePublishVolume)"
    )]
    ParentMissing { path: PathBuf, parent: PathBuf },
    #[error("target_path {path:?}: cannot {what} {component:?}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        component: PathBuf,
        source: io::Error,
    },
}

/// The kubelet's pods directory, as configured and resolved.
#[derive(Debug, Clone)]
pub struct PodsDir {
    /// `<kubelet-dir>/pods` as given (the kubelet's spelling of paths).
    given: PathBuf,
    /// The same directory with symlinks resolved (what mounts see).
    real: PathBuf,
}

impl PodsDir {
    /// `<kubelet_dir>/pods`; it must exist.
    pub fn new(kubelet_dir: &Path) -> io::Result<Self> {
        let given = kubelet_dir.join("pods");
        let real = given.canonicalize()?;
        Ok(Self { given, real })
    }

    /// The resolved pods directory.
    pub fn real(&self) -> &Path {
        &self.real
    }

    /// Checks `target` and returns its resolved path, creating the last
    /// component (`mount`) when `create` and it is missing. `Ok(None)`: it
    /// or a parent does not exist (and `create` is false).
    pub fn resolve(&self, target: &Path, create: bool) -> Result<Option<PathBuf>, TargetError> {
        let path = target.to_path_buf();
        if !target.is_absolute() {
            return Err(TargetError::NotAbsolute { path });
        }
        // `components()` drops inner `.`, so look at the text itself.
        if target
            .as_os_str()
            .as_encoded_bytes()
            .split(|b| *b == b'/')
            .any(|c| c == b"." || c == b"..")
        {
            return Err(TargetError::DotDot { path });
        }
        let rel = target
            .strip_prefix(&self.given)
            .or_else(|_| target.strip_prefix(&self.real))
            .ok()
            .filter(|rel| kubelet_shape(rel))
            .ok_or_else(|| TargetError::Outside {
                path: path.clone(),
                pods: self.given.display().to_string(),
            })?;
        // Walk down from the resolved pods directory: every component but
        // the last must be a real directory, never a symlink.
        let mut real = self.real.clone();
        let parts: Vec<_> = rel.components().collect();
        let (last, parents) = parts.split_last().ok_or_else(|| TargetError::Outside {
            path: path.clone(),
            pods: self.given.display().to_string(),
        })?;
        for part in parents {
            real.push(part);
            match check_dir(&real) {
                Ok(true) => {}
                Ok(false) if !create => return Ok(None),
                Ok(false) => {
                    return Err(TargetError::ParentMissing { path, parent: real });
                }
                Err(e) => return Err(e.at(path)),
            }
        }
        real.push(last);
        match check_dir(&real) {
            Ok(true) => Ok(Some(real)),
            Ok(false) if !create => Ok(None),
            Ok(false) => match std::fs::DirBuilder::new().mode(0o750).create(&real) {
                Ok(()) => Ok(Some(real)),
                // Another publish of the same target won the race.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match check_dir(&real) {
                    Ok(true) => Ok(Some(real)),
                    Ok(false) => Err(io_err(path, "create", real, e)),
                    Err(e) => Err(e.at(path)),
                },
                Err(e) => Err(io_err(path, "create", real, e)),
            },
            Err(e) => Err(e.at(path)),
        }
    }
}

/// `<uid>/volumes/kubernetes.io~csi/<name>/mount`, nothing else.
fn kubelet_shape(rel: &Path) -> bool {
    let parts: Vec<_> = rel.iter().filter_map(|p| p.to_str()).collect();
    parts.len() == 5
        && rel.iter().count() == 5
        && !parts[0].is_empty()
        && parts[1..3] == CSI_VOLUMES
        && !parts[3].is_empty()
        && parts[4] == MOUNT_DIR
}

/// Why one component failed, before the target path is known to it.
enum Bad {
    Symlink(PathBuf),
    NotDir(PathBuf),
    Io(PathBuf, io::Error),
}

impl Bad {
    fn at(self, path: PathBuf) -> TargetError {
        match self {
            Bad::Symlink(component) => TargetError::Symlink { path, component },
            Bad::NotDir(component) => TargetError::NotADirectory { path, component },
            Bad::Io(component, e) => io_err(path, "inspect", component, e),
        }
    }
}

/// `Ok(true)`: a directory (not a symlink); `Ok(false)`: missing.
fn check_dir(p: &Path) -> Result<bool, Bad> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => Err(Bad::Symlink(p.to_path_buf())),
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(Bad::NotDir(p.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Bad::Io(p.to_path_buf(), e)),
    }
}

fn io_err(path: PathBuf, what: &'static str, component: PathBuf, source: io::Error) -> TargetError {
    TargetError::Io {
        path,
        what,
        component,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REL: &str = "pods/uid-1/volumes/kubernetes.io~csi/jss";

    fn kubelet() -> (tempfile::TempDir, PodsDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(REL)).unwrap();
        let pods = PodsDir::new(dir.path()).unwrap();
        (dir, pods)
    }

    #[test]
    fn the_kubelets_target_is_created_once_and_found_again() {
        let (dir, pods) = kubelet();
        let target = dir.path().join(REL).join("mount");
        assert_eq!(pods.resolve(&target, false).unwrap(), None);
        let real = pods.resolve(&target, true).unwrap().unwrap();
        assert!(real.is_dir() && real.starts_with(pods.real()));
        assert_eq!(pods.resolve(&target, true).unwrap(), Some(real.clone()));
        assert_eq!(pods.resolve(&target, false).unwrap(), Some(real));
    }

    #[test]
    fn other_paths_dot_dot_and_symlinks_are_refused() {
        let (dir, pods) = kubelet();
        let root = dir.path();
        let outside = root.join("elsewhere");
        std::fs::create_dir(&outside).unwrap();
        let refuse = |p: PathBuf| pods.resolve(&p, true).unwrap_err();
        for p in [
            root.join("pods/uid-1"),
            root.join("pods/uid-1/volumes/kubernetes.io~csi/jss"),
            root.join("pods/uid-1/volumes/kubernetes.io~empty-dir/jss/mount"),
            root.join("elsewhere/uid-1/volumes/kubernetes.io~csi/jss/mount"),
            PathBuf::from("/etc/mount"),
        ] {
            assert!(
                matches!(refuse(p.clone()), TargetError::Outside { .. }),
                "{p:?}"
            );
        }
        let dotdot = root.join("pods/uid-1/volumes/kubernetes.io~csi/jss/../jss/mount");
        assert!(matches!(refuse(dotdot), TargetError::DotDot { .. }));
        let dot = root.join("pods/uid-1/volumes/./kubernetes.io~csi/jss/mount");
        assert!(matches!(refuse(dot), TargetError::DotDot { .. }));
        assert!(matches!(
            refuse(PathBuf::from(
                "pods/uid-1/volumes/kubernetes.io~csi/jss/mount"
            )),
            TargetError::NotAbsolute { .. }
        ));
        // The last component, and a parent, as symlinks to elsewhere.
        let mount = root.join(REL).join("mount");
        std::os::unix::fs::symlink(&outside, &mount).unwrap();
        assert!(matches!(refuse(mount.clone()), TargetError::Symlink { .. }));
        assert!(matches!(
            pods.resolve(&mount, false).unwrap_err(),
            TargetError::Symlink { .. }
        ));
        std::fs::create_dir_all(outside.join("volumes/kubernetes.io~csi/v")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("pods/uid-2")).unwrap();
        let via = root.join("pods/uid-2/volumes/kubernetes.io~csi/v/mount");
        assert!(matches!(refuse(via), TargetError::Symlink { .. }));
        assert!(!outside.join("volumes/kubernetes.io~csi/v/mount").exists());
        // A parent the kubelet did not create.
        let orphan = root.join("pods/uid-3/volumes/kubernetes.io~csi/v/mount");
        assert!(matches!(
            refuse(orphan.clone()),
            TargetError::ParentMissing { .. }
        ));
        // Nothing to unpublish there.
        assert_eq!(pods.resolve(&orphan, false).unwrap(), None);
    }
}
