//! `/proc/<pid>` → where the process lives: pod and container.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::AttestError;
use super::cgroup::{self, PodRef};

/// The caller's pod and container, as the kernel tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub pod: Option<PodRef>,
    pub container_id: String,
    /// The cgroup file in short, for messages.
    pub cgroup: String,
}

impl Location {
    /// The pod UID to look up (none for CRI-O without a pod, or a static pod).
    pub fn pod_uid(&self) -> Option<&str> {
        self.pod.as_ref().and_then(PodRef::uid)
    }
}

pub(crate) fn read_proc(proc_root: &Path, pid: i32, file: &str) -> Result<String, AttestError> {
    let path: PathBuf = proc_root.join(pid.to_string()).join(file);
    read_small(&path).map_err(|source| match source.kind() {
        // ESRCH surfaces as NotFound or as "No such process" (raw 3) mid-read.
        ErrorKind::NotFound => AttestError::ProcessGone { pid, path, source },
        _ if source.raw_os_error() == Some(3) => AttestError::ProcessGone { pid, path, source },
        // EINVAL: an exited (zombie) task has no mount namespace to show.
        _ if source.raw_os_error() == Some(22) => AttestError::ProcessGone { pid, path, source },
        _ => AttestError::ProcRead { pid, path, source },
    })
}

/// Reads a small file with plain `read` calls. `/proc` files report size 0,
/// so `fs::read_to_string` adds a `statx` and a probe read per file; on the
/// token path that was a measurable share of the daemon's CPU.
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

/// Finds the pod and container of `pid` under `proc_root`.
///
/// Only `/proc/<pid>/cgroup` counts: the kernel writes it about the process
/// itself, and moving into another cgroup needs write access to that cgroup.
/// `/proc/<pid>/mountinfo` is never read: any user can `unshare -Urm` and
/// bind-mount a pod's cgroup directory, so its mount table can name any pod
/// (SECURITY.md, "Anyone who can open the socket").
pub fn locate(proc_root: &Path, pid: i32) -> Result<Location, AttestError> {
    let cg = read_proc(proc_root, pid, "cgroup")?;
    let summary = cgroup::summary(&cg);
    match cgroup::parse_file(&cg) {
        Ok(Some(m)) => Ok(Location {
            pod: m.pod,
            container_id: m.container_id,
            cgroup: summary,
        }),
        Ok(None) => Err(AttestError::NotInPod {
            pid,
            cgroup: summary,
        }),
        Err(source) => Err(AttestError::CgroupConflict {
            pid,
            cgroup: summary,
            source,
        }),
    }
}
