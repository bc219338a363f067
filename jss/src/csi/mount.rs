//! Mounts at a checked target: the read-only bind mount of socket mode, the
//! unmount of any mode, and whether a path is a mount point, read from
//! `/proc/self/mountinfo` (the plugin's own mount namespace: the table it
//! changes itself, which nobody else can forge for it).

use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// Unmounts stacked on one target before giving up.
const MAX_STACKED: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot bind-mount {source_dir:?} at {target:?}: {errno}")]
    Bind {
        source_dir: PathBuf,
        target: PathBuf,
        errno: nix::Error,
    },
    #[error("cannot make the bind mount at {target:?} read-only: {errno} (it was removed again)")]
    ReadOnly { target: PathBuf, errno: nix::Error },
    #[error("cannot unmount {target:?}: {errno}")]
    Unmount { target: PathBuf, errno: nix::Error },
    #[error("{target:?} is still a mount point after {MAX_STACKED} unmounts")]
    Stacked { target: PathBuf },
    #[error("cannot read {path}: {source}")]
    MountInfo {
        path: &'static str,
        source: io::Error,
    },
    #[error("cannot stat {path:?}: {source}")]
    Stat { path: PathBuf, source: io::Error },
}

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Whether `path` (resolved, no symlinks) is a mount point in this process's
/// mount namespace.
pub fn is_mount_point(path: &Path) -> Result<bool, MountError> {
    let text = std::fs::read_to_string(MOUNTINFO).map_err(|source| MountError::MountInfo {
        path: MOUNTINFO,
        source,
    })?;
    Ok(mount_points(&text).any(|p| p == path))
}

/// The mount points (field 5) of a mountinfo table, octal escapes decoded
/// (proc(5): space, tab, newline and backslash are written as `\ooo`).
pub fn mount_points(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
}

fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the directory mounted at `target` is `source` itself (same
/// device and inode): a repeated publish of the same volume.
pub fn same_directory(source: &Path, target: &Path) -> Result<bool, MountError> {
    let stat = |p: &Path| {
        std::fs::metadata(p).map_err(|source| MountError::Stat {
            path: p.to_path_buf(),
            source,
        })
    };
    let (s, t) = (stat(source)?, stat(target)?);
    Ok(s.dev() == t.dev() && s.ino() == t.ino())
}

/// Bind-mounts `source` at `target` read-only, without devices, setuid or
/// exec. A bind mount takes the flags only on a remount, so this is two
/// calls; if the second fails the first is undone.
pub fn bind_read_only(source: &Path, target: &Path) -> Result<(), MountError> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|errno| MountError::Bind {
        source_dir: source.to_path_buf(),
        target: target.to_path_buf(),
        errno,
    })?;
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    if let Err(errno) = nix::mount::mount(None::<&str>, target, None::<&str>, ro, None::<&str>) {
        let _ = nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW);
        return Err(MountError::ReadOnly {
            target: target.to_path_buf(),
            errno,
        });
    }
    Ok(())
}

/// Unmounts everything mounted at `target` (never following a symlink
/// there); a target that is no mount point is left as it is.
pub fn unmount_all(target: &Path) -> Result<(), MountError> {
    for _ in 0..MAX_STACKED {
        if !is_mount_point(target)? {
            return Ok(());
        }
        nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW).map_err(|errno| {
            MountError::Unmount {
                target: target.to_path_buf(),
                errno,
            }
        })?;
    }
    if is_mount_point(target)? {
        return Err(MountError::Stacked {
            target: target.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_mount_points_are_field_five_unescaped() {
        let table = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
98 22 0:25 /jss /var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/my\\040vol/mount ro,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw
99 22 0:26 / /a\\134b\\011c rw - tmpfs tmpfs rw
";
        let points: Vec<PathBuf> = mount_points(table).collect();
        assert_eq!(
            points,
            [
                PathBuf::from("/"),
                PathBuf::from("/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/my vol/mount"),
                PathBuf::from("/a\\b\tc"),
            ]
        );
        // A backslash not followed by three octal digits stays as it is.
        assert_eq!(unescape("a\\9b\\"), "a\\9b\\");
    }
}
