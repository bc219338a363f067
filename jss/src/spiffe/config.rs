//! `[spiffe]`: the SPIFFE Workload API socket, off unless `trust_domain` is set.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::attest::Workload;

/// `[spiffe]` as written in the config file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SpiffeSection {
    pub trust_domain: Option<String>,
    pub socket: Option<PathBuf>,
    pub socket_mode: Option<String>,
    pub id_template: Option<String>,
    pub bundle_url: Option<String>,
    pub bundle_ca: Option<PathBuf>,
    pub bundle_file: Option<PathBuf>,
    pub bundle_refresh_seconds: Option<u64>,
    pub retire_leeway_seconds: Option<u64>,
}

/// The default SPIFFE ID path: one ID per service account, as SPIRE's
/// Kubernetes workload registrar writes them.
pub const DEFAULT_ID_TEMPLATE: &str = "/ns/{namespace}/sa/{service-account}";

/// Where the other nodes' keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleSource {
    /// Only this node's key: SVIDs of other nodes do not validate.
    OwnKey,
    /// A JWKS document on disk, re-read every refresh.
    File(PathBuf),
    /// A JWKS document over HTTPS, the server verified against `ca` (PEM).
    Url { url: String, ca: PathBuf },
}

/// The validated `[spiffe]` section.
#[derive(Debug, Clone)]
pub struct SpiffeConfig {
    /// e.g. `example.org` (lowercase letters, digits, `.`, `-`, `_`).
    pub trust_domain: String,
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub id_template: IdTemplate,
    pub bundle: BundleSource,
    pub bundle_refresh: Duration,
    /// How long past its SVIDs' latest `exp` a replaced node key stays in
    /// the bundle (verifiers' clock-skew leeway; go-spiffe allows 60 s).
    pub retire_leeway: Duration,
}

impl SpiffeConfig {
    /// `spiffe://<trust_domain>`: the key of the trust domain's bundle.
    pub fn trust_domain_id(&self) -> String {
        format!("spiffe://{}", self.trust_domain)
    }

    /// The SPIFFE ID of `w`: `spiffe://<trust_domain><rendered id_template>`.
    pub fn spiffe_id(&self, w: &Workload) -> String {
        let mut out = self.trust_domain_id();
        self.id_template.render_into(w, &mut out);
        out
    }
}

/// A SPIFFE ID path template naming `{namespace}` and `{service-account}`.
#[derive(Debug, Clone)]
pub struct IdTemplate(Vec<(String, Option<IdPart>)>);

#[derive(Debug, Clone, Copy)]
enum IdPart {
    Namespace,
    ServiceAccount,
}

impl IdTemplate {
    /// Errors name what is wrong with `t` (a `String` for the config error).
    pub fn parse(t: &str) -> Result<Self, String> {
        if !t.starts_with('/') || t.ends_with('/') || t.contains("//") {
            return Err(format!(
                "{t:?} must start with '/' and have no empty segment or trailing '/' (SPIFFE ID path)"
            ));
        }
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in {t:?}"))?;
            let part = match &rest[open + 1..open + close] {
                "namespace" => IdPart::Namespace,
                "service-account" => IdPart::ServiceAccount,
                other => {
                    return Err(format!(
                        "{t:?} names {other:?}; only {{namespace}} and {{service-account}} may be used (one SPIFFE ID per service account)"
                    ));
                }
            };
            parts.push((rest[..open].to_string(), Some(part)));
            rest = &rest[open + close + 1..];
        }
        parts.push((rest.to_string(), None));
        let lits_ok = parts.iter().all(|(lit, _)| {
            lit.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_'))
        });
        if !lits_ok {
            return Err(format!(
                "{t:?} may hold only letters, digits, '.', '-', '_' and '/' besides its placeholders"
            ));
        }
        Ok(Self(parts))
    }

    fn render_into(&self, w: &Workload, out: &mut String) {
        for (lit, part) in &self.0 {
            out.push_str(lit);
            match part {
                Some(IdPart::Namespace) => out.push_str(&w.namespace),
                Some(IdPart::ServiceAccount) => out.push_str(&w.service_account),
                None => {}
            }
        }
    }
}

/// Validates `[spiffe]`; `None` when `trust_domain` is not set. Errors are
/// `(key, reason)` for the config error.
pub fn validate(s: SpiffeSection) -> Result<Option<SpiffeConfig>, (&'static str, String)> {
    let Some(td) = s.trust_domain else {
        return Ok(None);
    };
    if td.is_empty()
        || !td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
    {
        return Err((
            "spiffe.trust_domain",
            format!(
                "{td:?} is not a SPIFFE trust domain name (lowercase letters, digits, '.', '-', '_'; no scheme)"
            ),
        ));
    }
    let socket = s.socket.unwrap_or_else(|| "/run/jss/spiffe.sock".into());
    if !socket.is_absolute() {
        return Err(("spiffe.socket", "must be an absolute path".into()));
    }
    let mode_text = s.socket_mode.unwrap_or_else(|| "0666".into());
    let socket_mode = crate::config::parse_mode(&mode_text).ok_or_else(|| {
        (
            "spiffe.socket_mode",
            format!("{mode_text:?} is not an octal mode such as \"0666\""),
        )
    })?;
    let id_template = IdTemplate::parse(s.id_template.as_deref().unwrap_or(DEFAULT_ID_TEMPLATE))
        .map_err(|e| ("spiffe.id_template", e))?;
    let bundle = match (s.bundle_url, s.bundle_ca, s.bundle_file) {
        (None, None, None) => BundleSource::OwnKey,
        (None, None, Some(f)) => BundleSource::File(f),
        (Some(url), Some(ca), None) if url.starts_with("https://") => BundleSource::Url { url, ca },
        (Some(url), Some(_), None) => {
            return Err((
                "spiffe.bundle_url",
                format!("{url:?} must be an https:// URL of the cluster JWKS"),
            ));
        }
        (Some(_), None, None) => {
            return Err((
                "spiffe.bundle_ca",
                "must name the PEM CA that signs the bundle_url server".into(),
            ));
        }
        (None, Some(_), _) => {
            return Err(("spiffe.bundle_ca", "is only used with bundle_url".into()));
        }
        (Some(_), _, Some(_)) => {
            return Err((
                "spiffe.bundle_file",
                "set either bundle_file or bundle_url, not both".into(),
            ));
        }
    };
    let refresh = s.bundle_refresh_seconds.unwrap_or(300);
    if !(1..=86_400).contains(&refresh) {
        return Err((
            "spiffe.bundle_refresh_seconds",
            format!("{refresh} is outside 1..=86400"),
        ));
    }
    let leeway = s.retire_leeway_seconds.unwrap_or(60);
    if leeway > 3600 {
        return Err((
            "spiffe.retire_leeway_seconds",
            format!("{leeway} is outside 0..=3600"),
        ));
    }
    Ok(Some(SpiffeConfig {
        trust_domain: td,
        socket,
        socket_mode,
        id_template,
        bundle,
        bundle_refresh: Duration::from_secs(refresh),
        retire_leeway: Duration::from_secs(leeway),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> SpiffeSection {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn off_without_trust_domain() {
        assert!(validate(section("")).unwrap().is_none());
    }

    #[test]
    fn defaults() {
        let c = validate(section(r#"trust_domain = "example.org""#))
            .unwrap()
            .unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/jss/spiffe.sock"));
        assert_eq!(c.socket_mode, 0o666);
        assert_eq!(c.bundle, BundleSource::OwnKey);
        assert_eq!(c.trust_domain_id(), "spiffe://example.org");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            (r#"trust_domain = "spiffe://x""#, "spiffe.trust_domain"),
            (r#"trust_domain = "Ex.org""#, "spiffe.trust_domain"),
            (
                "trust_domain = \"x\"\nid_template = \"/ns/{pod}\"",
                "spiffe.id_template",
            ),
            (
                "trust_domain = \"x\"\nid_template = \"ns/{namespace}\"",
                "spiffe.id_template",
            ),
            (
                "trust_domain = \"x\"\nbundle_url = \"https://d/jwks\"",
                "spiffe.bundle_ca",
            ),
            (
                "trust_domain = \"x\"\nbundle_url = \"http://d\"\nbundle_ca = \"/c\"",
                "spiffe.bundle_url",
            ),
            (
                "trust_domain = \"x\"\nbundle_url = \"https://d\"\nbundle_ca = \"/c\"\nbundle_file = \"/f\"",
                "spiffe.bundle_file",
            ),
            (
                "trust_domain = \"x\"\nsocket = \"rel.sock\"",
                "spiffe.socket",
            ),
            (
                "trust_domain = \"x\"\nsocket_mode = \"9\"",
                "spiffe.socket_mode",
            ),
            (
                "trust_domain = \"x\"\nbundle_refresh_seconds = 0",
                "spiffe.bundle_refresh_seconds",
            ),
            (
                "trust_domain = \"x\"\nretire_leeway_seconds = 3601",
                "spiffe.retire_leeway_seconds",
            ),
        ] {
            assert_eq!(validate(section(text)).unwrap_err().0, key, "{text}");
        }
    }
}
