//! Real processes in kubepods-style cgroups, so attestation runs against the
//! kernel's own `/proc/<pid>/cgroup`. Needs root and a writable cgroup tree;
//! anything else is a test failure, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use rand_core::RngCore as _;
use sha2::Digest as _;

/// Serializes creating and removing the shared parents (kubepods, QoS level)
/// between tests of one binary.
static TREE: Mutex<()> = Mutex::new(());
/// Held while the harness forks, so a test reusing a pid on purpose
/// ([`spawn_with_pid`]) is not beaten to it by another test's child.
pub static SPAWN: Mutex<()> = Mutex::new(());

/// The v1 controller used: `pids` is always there and limits nothing here.
pub const V1_CONTROLLER: &str = "pids";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    fn name(self) -> Option<&'static str> {
        match self {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        }
    }
}

/// Which cgroup layout the kubelet and runtime would have made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1, cgroupfs driver: `<ctrl>/kubepods/<qos>/pod<uid>/<id>`.
    V1Cgroupfs(Qos),
    /// cgroup v2, systemd driver, containerd:
    /// `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope`.
    V2Systemd(Qos),
}

/// Hex of SHA-256(`seed`), cut to `len` (≤ 64): stable fake IDs and digests.
pub fn hex_of(seed: &str, len: usize) -> String {
    hex::encode(sha2::Sha256::digest(seed.as_bytes()))[..len].to_string()
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A fresh random pod UID (8-4-4-4-12).
pub fn random_pod_uid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A fresh random 64-hex container ID.
pub fn random_container_id() -> String {
    random_hex(32)
}

/// Root of the cgroup v2 tree: `unified` on hybrid hosts, the mount itself on pure v2.
pub fn v2_root() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").exists() {
        return hybrid.to_path_buf();
    }
    let pure = Path::new("/sys/fs/cgroup");
    if pure.join("cgroup.controllers").exists() {
        return pure.to_path_buf();
    }
    panic!("no cgroup v2 hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup");
}

impl Layout {
    /// Directories from the first shared parent down to the container's.
    fn dirs(self, pod_uid: &str, container_id: &str) -> (Vec<PathBuf>, usize) {
        match self {
            Layout::V1Cgroupfs(qos) => {
                let ctrl = Path::new("/sys/fs/cgroup").join(V1_CONTROLLER);
                assert!(
                    ctrl.join("cgroup.procs").exists(),
                    "no cgroup v1 {V1_CONTROLLER} hierarchy at {}: this test needs a v1 or hybrid host",
                    ctrl.display()
                );
                let mut p = ctrl.join("kubepods");
                let mut v = vec![p.clone()];
                if let Some(q) = qos.name() {
                    p = p.join(q);
                    v.push(p.clone());
                }
                let shared = v.len();
                p = p.join(format!("pod{pod_uid}"));
                v.push(p.clone());
                v.push(p.join(container_id));
                (v, shared)
            }
            Layout::V2Systemd(qos) => {
                let mut p = v2_root().join("kubepods.slice");
                let mut v = vec![p.clone()];
                let prefix = match qos.name() {
                    Some(q) => {
                        p = p.join(format!("kubepods-{q}.slice"));
                        v.push(p.clone());
                        format!("kubepods-{q}")
                    }
                    None => "kubepods".to_string(),
                };
                let shared = v.len();
                p = p.join(format!("{prefix}-pod{}.slice", pod_uid.replace('-', "_")));
                v.push(p.clone());
                v.push(p.join(format!("cri-containerd-{container_id}.scope")));
                (v, shared)
            }
        }
    }
}

/// A `sleep` child moved into a pod container's cgroup; killed and its
/// cgroups removed on drop.
#[derive(Debug)]
pub struct PodProcess {
    child: Option<Child>,
    pid: i32,
    dirs: Vec<PathBuf>,
    shared: usize,
    pub pod_uid: String,
    pub container_id: String,
    pub layout: Layout,
}

impl PodProcess {
    pub fn spawn(layout: Layout, pod_uid: &str, container_id: &str) -> Self {
        let child = {
            let _g = SPAWN.lock().unwrap_or_else(|p| p.into_inner());
            sleeper()
        };
        Self::adopt(child, layout, pod_uid, container_id)
    }

    /// Like [`Self::spawn`], the process getting `pid` (which must be free):
    /// a real PID reuse, see [`spawn_with_pid`].
    pub fn spawn_as(layout: Layout, pod_uid: &str, container_id: &str, pid: i32) -> Self {
        Self::adopt(spawn_with_pid(pid, sleeper), layout, pod_uid, container_id)
    }

    fn adopt(child: Child, layout: Layout, pod_uid: &str, container_id: &str) -> Self {
        let pid = i32::try_from(child.id()).unwrap_or_else(|e| panic!("pid: {e}"));
        let (dirs, shared) = layout.dirs(pod_uid, container_id);
        let mut me = Self {
            child: Some(child),
            pid,
            dirs,
            shared,
            pod_uid: pod_uid.into(),
            container_id: container_id.into(),
            layout,
        };
        let _g = TREE.lock().unwrap_or_else(|p| p.into_inner());
        let leaf = me.cgroup_dir().to_path_buf();
        if let Err(e) = std::fs::create_dir_all(&leaf) {
            me.kill();
            panic!(
                "cannot create cgroup {} ({e}); the attestation tests need root and a writable cgroup tree",
                leaf.display()
            );
        }
        if let Err(e) = std::fs::write(leaf.join("cgroup.procs"), pid.to_string()) {
            me.kill();
            panic!("cannot move pid {pid} into {}: {e}", leaf.display());
        }
        me
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The container's cgroup directory.
    pub fn cgroup_dir(&self) -> &Path {
        &self.dirs[self.dirs.len() - 1]
    }

    /// Kills the process now (the cgroups stay until drop).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        self.kill();
        let _g = TREE.lock().unwrap_or_else(|p| p.into_inner());
        // Ours (pod, container) must go; shared parents go once empty.
        for (i, d) in self.dirs.iter().enumerate().rev() {
            if let Err(e) = remove_cgroup(d, i >= self.shared)
                && i >= self.shared
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("warning: cannot remove cgroup {}: {e}", d.display());
            }
        }
    }
}

/// Removes a cgroup directory; our own ones get a few tries, since the
/// kernel may report a just-emptied cgroup busy for a moment.
fn remove_cgroup(d: &Path, ours: bool) -> std::io::Result<()> {
    let mut tries = if ours { 20 } else { 1 };
    loop {
        match std::fs::remove_dir(d) {
            Err(e) if e.raw_os_error() == Some(16) && tries > 1 => {
                tries -= 1;
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            r => return r,
        }
    }
}

fn sleeper() -> Child {
    Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `sleep`: {e}"))
}

/// Starts a process that gets `pid`, which must be free (exited and reaped).
/// The kernel hands out `ns_last_pid + 1` next, so set it and spawn; another
/// fork on the machine may take the number first, so try again then.
pub fn spawn_with_pid(pid: i32, mut spawn: impl FnMut() -> Child) -> Child {
    const LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";
    // The harness's own spawns wait meanwhile (see SPAWN).
    let _g = SPAWN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..200 {
        std::fs::write(LAST_PID, (pid - 1).to_string()).unwrap_or_else(|e| {
            panic!("cannot write {LAST_PID} ({e}); reusing a pid on purpose needs root")
        });
        let mut child = spawn();
        if i64::from(child.id()) == i64::from(pid) {
            return child;
        }
        let _ = child.kill();
        let _ = child.wait();
        if Path::new(&format!("/proc/{pid}")).exists() {
            // Someone else's fork got it: give a short-lived one time to end.
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    panic!("pid {pid} was taken by other forks 200 times in a row");
}

/// A plain child outside any pod, killed on drop.
#[derive(Debug)]
pub struct HostProcess(Child);

impl HostProcess {
    pub fn spawn() -> Self {
        let _g = SPAWN.lock().unwrap_or_else(|p| p.into_inner());
        Self(
            Command::new("sleep")
                .arg("600")
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start `sleep`: {e}")),
        )
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).unwrap_or_else(|e| panic!("pid: {e}"))
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
