//! The tmpfs of a token volume: mounted at the checked target, told apart
//! from any other mount there by its source name.

use std::path::Path;

use nix::mount::MsFlags;

use crate::csi::mount::{self, MountError};

/// The tmpfs's source name in mountinfo: marks a token volume's own mount.
pub const SOURCE: &str = "jss-token";
/// Room for a few tokens (one is about 3 KB), nothing more.
const OPTIONS: &str = "size=1m,mode=0755";

/// What is mounted at a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounted {
    Nothing,
    /// A token volume's tmpfs (a republish).
    TokenTmpfs,
    Other,
}

/// What is mounted at `target` (resolved), from `/proc/self/mountinfo`; the
/// topmost mount counts.
pub fn mounted(target: &Path) -> Result<Mounted, MountError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| {
        MountError::MountInfo {
            path: "/proc/self/mountinfo",
            source,
        }
    })?;
    Ok(of_table(&text, target))
}

fn of_table(mountinfo: &str, target: &Path) -> Mounted {
    let mut found = Mounted::Nothing;
    for line in mountinfo.lines() {
        if mount::mount_points(line).next().as_deref() != Some(target) {
            continue;
        }
        // After the " - " separator: fstype, source, super options.
        let after = line.split_once(" - ").map(|(_, a)| a).unwrap_or_default();
        let mut f = after.split(' ');
        found = match (f.next(), f.next()) {
            (Some("tmpfs"), Some(SOURCE)) => Mounted::TokenTmpfs,
            _ => Mounted::Other,
        };
    }
    found
}

/// Mounts a 1 MiB tmpfs at `target`, mode 0755 (the file in it is 0644:
/// the pod's user, whatever its uid, reads it; the tmpfs is mounted into
/// that pod only), without devices, setuid or exec.
pub fn mount_tmpfs(target: &Path) -> Result<(), nix::Error> {
    nix::mount::mount(
        Some(SOURCE),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(OPTIONS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topmost_mount_at_the_target_decides() {
        let t = Path::new("/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount");
        let ours = format!(
            "98 22 0:25 / {} rw,nosuid - tmpfs jss-token rw,size=1024k",
            t.display()
        );
        let bind = format!("99 98 8:1 /run/jss {} ro - ext4 /dev/vda1 rw", t.display());
        let other_tmpfs = format!("99 22 0:26 / {} rw - tmpfs tmpfs rw", t.display());
        let root = "22 1 8:1 / / rw - ext4 /dev/vda1 rw";
        assert_eq!(of_table(root, t), Mounted::Nothing);
        assert_eq!(of_table(&format!("{root}\n{ours}"), t), Mounted::TokenTmpfs);
        assert_eq!(
            of_table(&format!("{root}\n{ours}\n{bind}"), t),
            Mounted::Other
        );
        assert_eq!(
            of_table(&format!("{root}\n{other_tmpfs}"), t),
            Mounted::Other
        );
    }
}
