//! Cgroup paths → pod and container.
//!
//! One rule for every runtime and driver: walk the path's segments from the
//! right, take the first 64-hex word as the container ID, then look left (in
//! that segment and the ones before it) for `pod<uid>`. The word boundaries
//! are ASCII ones with `_` as a word character, as in SPIRE's locator, so
//! `cri-containerd-<id>.scope`, `…slice:cri-containerd:<id>`, `crio-<id>.scope`,
//! `docker-<id>.scope`, `/docker/<id>` and bare `/<id>` all work.

use serde::Serialize;

/// How the cgroup names the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum PodRef {
    /// A pod UID, dashes restored (`_` in systemd slice names).
    Uid(String),
    /// A static pod's 32-hex config hash: the kubelet must be searched by
    /// container ID, as for a CRI-O path with no pod at all.
    ConfigHash(String),
}

impl PodRef {
    /// The UID to look up, if the cgroup names one.
    pub fn uid(&self) -> Option<&str> {
        match self {
            PodRef::Uid(u) => Some(u),
            PodRef::ConfigHash(_) => None,
        }
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PodRef::Uid(u) => f.write_str(u),
            PodRef::ConfigHash(h) => write!(f, "static pod {h}"),
        }
    }
}

/// What one path says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMatch {
    pub pod: Option<PodRef>,
    pub container_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "invalid cgroup entry {line:?}: {fields} colon-separated field(s), expected at least 3"
    )]
    BadLine { line: String, fields: usize },
    #[error("multiple pod UIDs found in cgroups ({0}, {1})")]
    PodConflict(String, String),
    #[error("multiple container IDs found in cgroups ({0}, {1})")]
    ContainerConflict(String, String),
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The last 64-hex word in `seg`, with its start offset.
fn container_word(seg: &str) -> Option<(usize, &str)> {
    let b = seg.as_bytes();
    let mut found = None;
    let mut i = 0;
    while i < b.len() {
        if !is_word(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_word(b[i]) {
            i += 1;
        }
        if i - start == 64 && is_lower_hex(&b[start..i]) {
            found = Some((start, &seg[start..i]));
        }
    }
    found
}

/// The last `pod<uuid>` (or `pod<32hex>`) in `s` that stands on word boundaries.
fn pod_word(s: &str) -> Option<PodRef> {
    let b = s.as_bytes();
    let mut found = None;
    let mut from = 0;
    while let Some(off) = s[from..].find("pod") {
        let at = from + off;
        from = at + 3;
        if at > 0 && is_word(b[at - 1]) {
            continue;
        }
        let rest = &b[at + 3..];
        let bounded = |n: usize| rest.len() == n || (rest.len() > n && !is_word(rest[n]));
        if rest.len() >= 36 && bounded(36) && is_uuid(&rest[..36]) {
            let uid: String = s[at + 3..at + 39].replace('_', "-");
            found = Some(PodRef::Uid(uid));
        } else if rest.len() >= 32 && bounded(32) && is_lower_hex(&rest[..32]) {
            found = Some(PodRef::ConfigHash(s[at + 3..at + 35].to_string()));
        }
    }
    found
}

/// 8-4-4-4-12 lowercase hex groups separated by `-` or `_`.
fn is_uuid(b: &[u8]) -> bool {
    let mut pos = 0;
    for (i, len) in [8usize, 4, 4, 4, 12].into_iter().enumerate() {
        if i > 0 {
            if !matches!(b[pos], b'-' | b'_') {
                return false;
            }
            pos += 1;
        }
        if !is_lower_hex(&b[pos..pos + len]) {
            return false;
        }
        pos += len;
    }
    true
}

/// Pod and container named by one cgroup path, if it names a container.
pub fn match_path(path: &str) -> Option<PathMatch> {
    let segs: Vec<&str> = path.split('/').collect();
    for (i, seg) in segs.iter().enumerate().rev() {
        let Some((start, id)) = container_word(seg) else {
            continue;
        };
        // CRI-O's monitor lives beside the container: it is not the workload.
        if seg.starts_with("crio-conmon-") {
            return None;
        }
        let pod =
            pod_word(&seg[..start]).or_else(|| segs[..i].iter().rev().find_map(|s| pod_word(s)));
        return Some(PathMatch {
            pod,
            container_id: id.to_string(),
        });
    }
    None
}

/// One `/proc/<pid>/cgroup` line: `hierarchy:controllers:path`. The path may
/// hold further colons (`…slice:cri-containerd:<id>`).
pub fn split_line(line: &str) -> Result<(&str, &str, &str), CgroupError> {
    let mut it = line.splitn(3, ':');
    match (it.next(), it.next(), it.next()) {
        (Some(h), Some(c), Some(p)) => Ok((h, c, p)),
        _ => Err(CgroupError::BadLine {
            line: line.to_string(),
            fields: line.split(':').count(),
        }),
    }
}

/// Folds the matches of several paths into one answer.
///
/// A path with a pod wins over one without (kind: the outer node container's
/// ID sits on lines with no pod); any other disagreement is an error.
pub fn combine<'a>(
    paths: impl IntoIterator<Item = &'a str>,
) -> Result<Option<PathMatch>, CgroupError> {
    let mut found: Option<PathMatch> = None;
    for m in paths.into_iter().filter_map(match_path) {
        let Some(f) = &found else {
            found = Some(m);
            continue;
        };
        match (&m.pod, &f.pod) {
            (Some(_), None) => found = Some(m),
            (None, Some(_)) => {}
            (a, b) if a != b => {
                return Err(CgroupError::PodConflict(show(b), show(a)));
            }
            _ if m.container_id != f.container_id => {
                return Err(CgroupError::ContainerConflict(
                    f.container_id.clone(),
                    m.container_id,
                ));
            }
            _ => {}
        }
    }
    Ok(found)
}

fn show(p: &Option<PodRef>) -> String {
    p.as_ref().map(|p| p.to_string()).unwrap_or_default()
}

/// Parses a whole `/proc/<pid>/cgroup` file.
pub fn parse_file(text: &str) -> Result<Option<PathMatch>, CgroupError> {
    let mut paths = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        paths.push(split_line(line)?.2);
    }
    combine(paths)
}

/// A short form of the file for error messages: its distinct paths other
/// than the root, so the operator sees where the process really is.
pub fn summary(text: &str) -> String {
    let mut paths: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Ok((_, _, p)) = split_line(line)
            && p != "/"
            && !paths.contains(&p)
        {
            paths.push(p);
        }
    }
    let s = if paths.is_empty() {
        "/".to_string()
    } else {
        paths.join(", ")
    };
    if s.len() <= 300 {
        return s;
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests;
