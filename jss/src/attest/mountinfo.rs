//! `/proc/<pid>/mountinfo` fallback: the roots of cgroup mounts.
//!
//! Read only when the cgroup file names no container: the kernel writes the
//! cgroup file, but a process with mount rights can forge its mounts.

use super::cgroup::{self, CgroupError, PathMatch};

/// Roots of `cgroup`/`cgroup2` mounts other than `/` (those say nothing).
pub fn cgroup_roots(text: &str) -> Vec<String> {
    let mut roots = Vec::new();
    for line in text.lines() {
        // id parent major:minor root mount-point options [optional…] - fstype source super
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = fields.iter().skip(6).position(|f| *f == "-").map(|p| p + 6) else {
            continue;
        };
        let (Some(root), Some(fstype)) = (fields.get(3), fields.get(sep + 1)) else {
            continue;
        };
        if matches!(*fstype, "cgroup" | "cgroup2") && *root != "/" {
            roots.push(unescape(root));
        }
    }
    roots
}

/// Undoes the kernel's octal escapes (`\040` for a space). Only escapes of
/// one byte (`\000`–`\377`) are decoded; anything else is kept as written.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Pod and container named by the cgroup mounts, with the cgroup file's rules.
pub fn parse_file(text: &str) -> Result<Option<PathMatch>, CgroupError> {
    let roots = cgroup_roots(text);
    cgroup::combine(roots.iter().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape(r"/a\040b\011c\134d\012"), "/a b\tc\\d\n");
        // Found by fuzzing: `\777` overflowed a byte (a panic in debug builds,
        // a wrong byte in release). The kernel never writes more than `\377`.
        assert_eq!(unescape(r"/x\777y\400\3"), r"/x\777y\400\3");
        assert_eq!(unescape(r"\377"), "\u{fffd}");
        let line = r"40 25 0:22 /kubepods\777/pod\400 /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        assert_eq!(cgroup_roots(line), [r"/kubepods\777/pod\400"]);
    }
}
