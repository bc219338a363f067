//! Image digests as container runtimes report them in a container status.
//!
//! Two different things arrive in `status.imageID` (README.md, "Token format"):
//!
//! - a **registry digest**, the SHA-256 of the image's manifest: what a pod
//!   spec pins (`repo@sha256:<hex>`) and a registry shows. Reported as
//!   `repo@sha256:<hex>` (containerd, CRI-O before 1.28) or
//!   `docker-pullable://repo@sha256:<hex>` (dockershim, cri-dockerd);
//! - an **image ID**, the SHA-256 of the image's config: what `crictl images`
//!   and `docker images` show. Reported as `sha256:<hex>` (containerd, for an
//!   image without a registry digest), bare `<hex>` (CRI-O ≥ 1.28) or
//!   `docker://sha256:<hex>` (docker before repo digests).
//!
//! One image therefore yields different values on different runtimes, and
//! the two kinds never stand in for each other. kind puts the reference in
//! `imageID` and the digest in `image`, so both fields are read.

use serde::Serialize;

/// What a container status says about its image: each `sha256:<64 hex>`,
/// `None` when the runtime reported none of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageDigests {
    /// Registry (manifest) digest.
    pub repo_digest: Option<String>,
    /// Image ID (config digest).
    pub image_id: Option<String>,
}

/// The kind of digest one status string carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestKind {
    Repo,
    ImageId,
}

impl ImageDigests {
    /// From a status's `imageID` and `image`; `imageID` wins for each kind.
    pub fn from_status(image_id: Option<&str>, image: Option<&str>) -> Self {
        let mut out = Self::default();
        for (kind, hex) in [image_id, image].into_iter().flatten().filter_map(classify) {
            let slot = match kind {
                DigestKind::Repo => &mut out.repo_digest,
                DigestKind::ImageId => &mut out.image_id,
            };
            if slot.is_none() {
                *slot = Some(format!("sha256:{hex}"));
            }
        }
        out
    }
}

/// The kind and the 64 hex digits of a status `imageID` or `image`, `None`
/// for a reference without a digest (`repo:tag`) or any other form.
pub fn classify(s: &str) -> Option<(DigestKind, &str)> {
    if let Some((repo, digest)) = s.rsplit_once('@') {
        let repo = repo.strip_prefix("docker-pullable://").unwrap_or(repo);
        return (!repo.is_empty() && !repo.contains("://"))
            .then(|| digest.strip_prefix("sha256:"))
            .flatten()
            .and_then(hex64)
            .map(|h| (DigestKind::Repo, h));
    }
    let id = s.strip_prefix("docker://").unwrap_or(s);
    // Docker refuses 64-hex repository names because they read as image IDs.
    hex64(id.strip_prefix("sha256:").unwrap_or(id)).map(|h| (DigestKind::ImageId, h))
}

/// `s` if it is 64 lowercase hex digits (OCI digests are lowercase).
fn hex64(s: &str) -> Option<&str> {
    (s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "8aba57ea67e3518f3b7fcbf32954bd2c0bd60d46ed55672a0fcec66076d4a6d4";

    #[test]
    fn forms_are_classified_by_kind() {
        let repo = Some((DigestKind::Repo, HEX));
        let id = Some((DigestKind::ImageId, HEX));
        for (s, want) in [
            (format!("docker.io/library/nginx@sha256:{HEX}"), repo),
            (format!("registry:5000/a/b:1.0@sha256:{HEX}"), repo),
            (format!("docker-pullable://nginx@sha256:{HEX}"), repo),
            (format!("sha256:{HEX}"), id),
            (HEX.to_string(), id),
            (format!("docker://sha256:{HEX}"), id),
            ("docker.io/library/nginx:1.27".into(), None),
            (format!("@sha256:{HEX}"), None),
            (format!("docker-pullable://@sha256:{HEX}"), None),
            (format!("cri-o://x@sha256:{HEX}"), None),
            (format!("nginx@sha512:{HEX}"), None),
            (format!("sha256:{}", HEX.to_uppercase()), None),
            (format!("sha256:{}", &HEX[1..]), None),
            (format!("docker-pullable://sha256:{HEX}"), None),
            (String::new(), None),
        ] {
            assert_eq!(classify(&s), want, "{s:?}");
        }
    }

    #[test]
    fn image_id_field_wins_and_kinds_stay_apart() {
        let other = "0".repeat(64);
        let d = ImageDigests::from_status(
            Some(&format!("a@sha256:{HEX}")),
            Some(&format!("b@sha256:{other}")),
        );
        assert_eq!(d.repo_digest, Some(format!("sha256:{HEX}")));
        assert_eq!(d.image_id, None);
        let d = ImageDigests::from_status(Some(HEX), Some(&format!("b@sha256:{other}")));
        assert_eq!(d.repo_digest, Some(format!("sha256:{other}")));
        assert_eq!(d.image_id, Some(format!("sha256:{HEX}")));
        assert_eq!(
            ImageDigests::from_status(None, Some("nginx:1")),
            ImageDigests::default()
        );
    }
}
