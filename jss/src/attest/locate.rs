//! `/proc/<pid>` → where the process lives: pod and container.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cgroup::{self, PodRef};
use super::{AttestError, mountinfo};

/// Which file named the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Cgroup,
    Mountinfo,
}

/// The caller's pod and container, as the kernel tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub pod: Option<PodRef>,
    pub container_id: String,
    pub source: Source,
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
/// The cgroup file first; the mount table only if it names no container.
pub fn locate(proc_root: &Path, pid: i32) -> Result<Location, AttestError> {
    let cg = read_proc(proc_root, pid, "cgroup")?;
    let summary = cgroup::summary(&cg);
    let conflict = |source| AttestError::CgroupConflict {
        pid,
        cgroup: summary.clone(),
        source,
    };
    let (found, source) = match cgroup::parse_file(&cg).map_err(conflict)? {
        Some(m) => (Some(m), Source::Cgroup),
        None => {
            let mi = read_proc(proc_root, pid, "mountinfo")?;
            (
                mountinfo::parse_file(&mi).map_err(conflict)?,
                Source::Mountinfo,
            )
        }
    };
    match found {
        Some(m) => Ok(Location {
            pod: m.pod,
            container_id: m.container_id,
            source,
            cgroup: summary,
        }),
        None => Err(AttestError::NotInPod {
            pid,
            cgroup: summary,
        }),
    }
}
