//! The pod annotations that ask for injection: TSI's unchanged
//! (`admission.trusted.identity/inject`, `tsi.secrets`) and JSS's own under
//! `jss.trusted.identity/` (README.md, "The injector").
//!
//! The `tsi.secrets` items are checked with the rules `jss secrets --spec`
//! applies to the same text (README.md, "The injector"), so a mistake shows
//! in `kubectl apply` rather than in a crash-looping init container. Keep
//! the two in step.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

pub const TSI_INJECT: &str = "admission.trusted.identity/inject";
pub const TSI_SECRETS: &str = "tsi.secrets";
pub const JSS_INJECT: &str = "jss.trusted.identity/inject";
pub const JSS_SECRETS: &str = "jss.trusted.identity/secrets";
pub const JSS_INIT_ONLY: &str = "jss.trusted.identity/init-only";
pub const JSS_NATIVE_SIDECAR: &str = "jss.trusted.identity/native-sidecar";
pub const JSS_REFRESH: &str = "jss.trusted.identity/refresh-seconds";
pub const JSS_FORMAT: &str = "jss.trusted.identity/format";
/// Written by the injector on the pods it patched.
pub const JSS_STATUS: &str = "jss.trusted.identity/status";

const ITEM_NAME: &str = "tsi.secret/name";
const ITEM_ROLE: &str = "tsi.secret/role";
const ITEM_VAULT_PATH: &str = "tsi.secret/vault-path";
const ITEM_LOCAL_PATH: &str = "tsi.secret/local-path";
const ITEM_LOCAL_NAME: &str = "tsi.secret/local-name";
const ITEM_CONSTRAINTS: &str = "tsi.secret/constraints";
const ITEM_KEYS: &[&str] = &[
    ITEM_NAME,
    ITEM_ROLE,
    ITEM_VAULT_PATH,
    ITEM_LOCAL_PATH,
    ITEM_LOCAL_NAME,
    ITEM_CONSTRAINTS,
];

/// TSI's mount point, stripped from local paths.
const TSI_MOUNT: &str = "tsi-secrets";
/// TSI's constraint sets (`tsi.secret/constraints`).
const CONSTRAINTS: &[&str] = &[
    "region",
    "region,images",
    "region,cluster-name,namespace",
    "region,cluster-name,namespace,images",
];
/// Last segments of the vault paths of TSI's policy types.
const POLICY_TYPES: &[&str] = &["ti-demo-all", "ti-demo-ri"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnotationError {
    #[error("annotation {annotation}: {value:?} must be \"true\" or \"false\"")]
    NotBool { annotation: String, value: String },
    #[error("annotation {annotation}: {value:?} must be a whole number of seconds from 1 to 86400")]
    BadSeconds { annotation: String, value: String },
    #[error("annotation {JSS_FORMAT}: {0:?} must be json or raw")]
    BadFormat(String),
    #[error(
        "annotation {TSI_SECRETS} is missing: injection was asked for, so name the secrets to fetch there"
    )]
    NoSecrets,
    #[error("annotations {TSI_SECRETS} and {JSS_SECRETS} are both set: keep one")]
    TwoSecretLists,
    #[error("annotation {annotation}: not a YAML list of maps: {reason}")]
    Yaml { annotation: String, reason: String },
    #[error("annotation {annotation}: the list is empty; name at least one secret")]
    Empty { annotation: String },
    #[error("annotation {annotation}, item {index}{name}: {problem}")]
    Item {
        annotation: String,
        /// 1-based position in the list.
        index: usize,
        /// ` ("name")` when the item has a name, else empty.
        name: String,
        problem: String,
    },
}

/// One `tsi.secrets` item, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretItem {
    pub name: String,
    /// The file below `/tsi-secrets`: `<local-path or local-name>/<name>`,
    /// relative, without `..`.
    pub file: String,
}

/// What an annotated pod asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The annotation that holds the list (projected into the pod as a file).
    pub secrets_annotation: &'static str,
    pub items: Vec<SecretItem>,
    pub init_only: Option<bool>,
    pub native_sidecar: Option<bool>,
    pub refresh_seconds: Option<u32>,
    pub format: Option<String>,
}

fn flag(ann: &Map<String, Value>, key: &str) -> Result<Option<bool>, AnnotationError> {
    match ann.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if s == "true" => Ok(Some(true)),
        Some(Value::String(s)) if s == "false" => Ok(Some(false)),
        Some(v) => Err(AnnotationError::NotBool {
            annotation: key.into(),
            value: v.as_str().map_or_else(|| v.to_string(), str::to_string),
        }),
    }
}

fn text<'a>(ann: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    ann.get(key).and_then(Value::as_str)
}

/// Reads a pod's `metadata.annotations`. `Ok(None)`: no injection asked.
pub fn parse(ann: &Map<String, Value>) -> Result<Option<Request>, AnnotationError> {
    let tsi = flag(ann, TSI_INJECT)?;
    let jss = flag(ann, JSS_INJECT)?;
    if tsi != Some(true) && jss != Some(true) {
        return Ok(None);
    }
    let (secrets_annotation, list) = match (text(ann, TSI_SECRETS), text(ann, JSS_SECRETS)) {
        (Some(_), Some(_)) => return Err(AnnotationError::TwoSecretLists),
        (Some(l), None) => (TSI_SECRETS, l),
        (None, Some(l)) => (JSS_SECRETS, l),
        (None, None) => return Err(AnnotationError::NoSecrets),
    };
    let items = parse_items(secrets_annotation, list)?;
    let refresh_seconds = match text(ann, JSS_REFRESH) {
        None => None,
        Some(s) => Some(
            s.parse::<u32>()
                .ok()
                .filter(|n| (1..=86_400).contains(n))
                .ok_or_else(|| AnnotationError::BadSeconds {
                    annotation: JSS_REFRESH.into(),
                    value: s.into(),
                })?,
        ),
    };
    let format = match text(ann, JSS_FORMAT) {
        None => None,
        Some(f) if jss::claims::injected::valid_format(f) => Some(f.to_string()),
        Some(f) => return Err(AnnotationError::BadFormat(f.into())),
    };
    Ok(Some(Request {
        secrets_annotation,
        items,
        init_only: flag(ann, JSS_INIT_ONLY)?,
        native_sidecar: flag(ann, JSS_NATIVE_SIDECAR)?,
        refresh_seconds,
        format,
    }))
}

/// Checks the `tsi.secrets` list (`annotation` names it in errors).
pub fn parse_items(annotation: &str, list: &str) -> Result<Vec<SecretItem>, AnnotationError> {
    let yaml_err = |reason: String| AnnotationError::Yaml {
        annotation: annotation.into(),
        reason,
    };
    let parsed: Vec<BTreeMap<String, serde_norway::Value>> =
        serde_norway::from_str(list).map_err(|e| yaml_err(e.to_string()))?;
    if parsed.is_empty() {
        return Err(AnnotationError::Empty {
            annotation: annotation.into(),
        });
    }
    let mut files = BTreeSet::new();
    let mut items = Vec::with_capacity(parsed.len());
    for (i, raw) in parsed.iter().enumerate() {
        let shown_name = match raw.get(ITEM_NAME) {
            Some(serde_norway::Value::String(n)) => format!(" ({n:?})"),
            _ => String::new(),
        };
        let fail = |problem: String| AnnotationError::Item {
            annotation: annotation.into(),
            index: i + 1,
            name: shown_name.clone(),
            problem,
        };
        let item = check_item(raw).map_err(&fail)?;
        if !files.insert(item.file.clone()) {
            return Err(fail(format!(
                "writes /tsi-secrets/{} like an item before it; give each secret its own file",
                item.file
            )));
        }
        items.push(item);
    }
    Ok(items)
}

fn check_item(raw: &BTreeMap<String, serde_norway::Value>) -> Result<SecretItem, String> {
    let mut fields = BTreeMap::new();
    for (k, v) in raw {
        if !ITEM_KEYS.contains(&k.as_str()) {
            return Err(format!(
                "unknown key {k:?} (known: {})",
                ITEM_KEYS.join(", ")
            ));
        }
        let s = match v {
            serde_norway::Value::String(s) => s.as_str(),
            _ => return Err(format!("{k} must be a string")),
        };
        if s.trim().is_empty() {
            return Err(format!("{k} is empty"));
        }
        fields.insert(k.as_str(), s);
    }
    let name = *fields
        .get(ITEM_NAME)
        .ok_or_else(|| format!("{ITEM_NAME} is missing"))?;
    if name.contains('/') || name == "." || name == ".." {
        return Err(format!(
            "{ITEM_NAME} {name:?} must be a single path segment (the secret's name in Vault)"
        ));
    }
    if let Some(c) = fields.get(ITEM_CONSTRAINTS) {
        if fields.contains_key(ITEM_ROLE) || fields.contains_key(ITEM_VAULT_PATH) {
            return Err(format!(
                "{ITEM_CONSTRAINTS} replaces {ITEM_ROLE} and {ITEM_VAULT_PATH}; give either constraints or both of them"
            ));
        }
        let parts: Vec<&str> = c.split(',').map(str::trim).collect();
        if !CONSTRAINTS.contains(&parts.join(",").as_str()) {
            return Err(format!(
                "{ITEM_CONSTRAINTS} {c:?} is not one of TSI's: {}",
                CONSTRAINTS.join(" | ")
            ));
        }
    } else {
        for key in [ITEM_ROLE, ITEM_VAULT_PATH] {
            if !fields.contains_key(key) {
                return Err(format!("{key} is missing (or give {ITEM_CONSTRAINTS})"));
            }
        }
        vault_path(fields[ITEM_VAULT_PATH])?;
    }
    // Both spellings name the directory; the file is `<directory>/<name>`.
    let dir = match (fields.get(ITEM_LOCAL_PATH), fields.get(ITEM_LOCAL_NAME)) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{ITEM_LOCAL_PATH} and {ITEM_LOCAL_NAME} are both set: give one"
            ));
        }
        (None, None) => {
            return Err(format!("{ITEM_LOCAL_PATH} or {ITEM_LOCAL_NAME} is missing"));
        }
        (Some(d), None) => local(ITEM_LOCAL_PATH, d)?,
        (None, Some(d)) => local(ITEM_LOCAL_NAME, d)?,
    };
    let file = if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    };
    Ok(SecretItem {
        name: name.into(),
        file,
    })
}

/// A vault path as the KV CLI takes it, of a TSI policy type or with
/// `{claim}` placeholders.
fn vault_path(p: &str) -> Result<(), String> {
    let bad = |problem: &str| Err(format!("{ITEM_VAULT_PATH} {p:?} {problem}"));
    if p.starts_with('/') {
        return bad(
            "must not start with / (write it as the KV CLI takes it, e.g. secret/ti-demo-all)",
        );
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("has an empty, . or .. segment");
    }
    if p.matches('{').count() != p.matches('}').count() {
        return bad("has an unclosed {placeholder}");
    }
    let last = trimmed.rsplit('/').next().unwrap_or("");
    if !POLICY_TYPES.contains(&last) && !p.contains('{') {
        return bad(
            "is neither a TSI policy type (…/ti-demo-all, …/ti-demo-ri) nor has {claim} placeholders such as {namespace}",
        );
    }
    Ok(())
}

/// A local directory relative to `/tsi-secrets` (TSI's prefix stripped),
/// with no `..` and no other absolute path; empty: the mount's top.
fn local(key: &str, raw: &str) -> Result<String, String> {
    let trimmed = raw.trim_start_matches('/');
    let rest = if trimmed == TSI_MOUNT {
        ""
    } else if let Some(r) = trimmed.strip_prefix("tsi-secrets/") {
        r
    } else if raw.starts_with('/') {
        return Err(format!(
            "{key} {raw:?} is an absolute path outside /tsi-secrets; write it relative to /tsi-secrets"
        ));
    } else {
        raw
    };
    let parts: Vec<&str> = rest
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!(
            "{key} {raw:?} leaves /tsi-secrets with \"..\"; write a path below it"
        ));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ann(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// The annotation from TSI's article, verbatim.
    const TSI_ARTICLE: &str = "- tsi.secret/name: \"mysecret1\"\n  tsi.secret/role: \"demo\"\n  tsi.secret/vault-path: \"secret/ti-demo-all\"\n  tsi.secret/local-name: \"mysecrets/myubuntu-mysecret1\"\n";

    #[test]
    fn tsi_article_annotation() {
        let r = parse(&ann(json!({TSI_INJECT: "true", TSI_SECRETS: TSI_ARTICLE})))
            .unwrap()
            .unwrap();
        assert_eq!(r.secrets_annotation, TSI_SECRETS);
        assert_eq!(
            r.items,
            vec![SecretItem {
                name: "mysecret1".into(),
                file: "mysecrets/myubuntu-mysecret1/mysecret1".into()
            }]
        );
    }

    #[test]
    fn not_asked_is_none() {
        assert_eq!(parse(&ann(json!({}))).unwrap(), None);
        assert_eq!(
            parse(&ann(json!({TSI_INJECT: "false", TSI_SECRETS: "x: ["}))).unwrap(),
            None
        );
    }

    #[test]
    fn local_paths() {
        let item = |lp: &str| {
            parse_items(
                TSI_SECRETS,
                &format!(
                    "- {{tsi.secret/name: s, tsi.secret/role: r, tsi.secret/vault-path: secret/ti-demo-all, tsi.secret/local-path: {lp:?}}}"
                ),
            )
        };
        assert_eq!(item("/tsi-secrets/a").unwrap()[0].file, "a/s");
        assert_eq!(item("tsi-secrets/a/b/").unwrap()[0].file, "a/b/s");
        assert_eq!(item("tsi-secrets").unwrap()[0].file, "s");
        assert_eq!(item("./a").unwrap()[0].file, "a/s");
        assert_eq!(item("//tsi-secrets/").unwrap()[0].file, "s");
        for bad in ["/etc", "a/../../x", "..", "/tsi-secrets/../x"] {
            let e = item(bad).unwrap_err().to_string();
            assert!(e.contains("item 1 (\"s\")"), "{bad}: {e}");
        }
    }

    #[test]
    fn refusals_name_annotation_item_and_problem() {
        let cases = [
            ("[", "not a YAML list"),
            ("a: b", "not a YAML list"),
            ("[]", "empty"),
            (
                "- {tsi.secret/role: r, tsi.secret/vault-path: secret/ti-demo-all, tsi.secret/local-name: f}",
                "item 1: tsi.secret/name is missing",
            ),
            (
                "- {tsi.secret/name: s, tsi.secret/vault-path: secret/ti-demo-all, tsi.secret/local-name: f}",
                "tsi.secret/role is missing",
            ),
            (
                "- {tsi.secret/name: s, tsi.secret/role: r, tsi.secret/local-name: f}",
                "tsi.secret/vault-path is missing",
            ),
            (
                "- {tsi.secret/name: s, tsi.secret/role: r, tsi.secret/vault-path: secret/ti-demo-all}",
                "local-name is missing",
            ),
            (
                "- {tsi.secret/name: s, tsi.secret/constraints: region, tsi.secret/role: r, tsi.secret/local-name: f}",
                "replaces",
            ),
            (
                "- {tsi.secret/name: s, tsi.secret/role: r, tsi.secret/vault-path: secret/ti-demo-all, tsi.secret/local-name: f, tsi.secret/vault_path: q}",
                "unknown key",
            ),
            (
                "- {tsi.secret/name: [s], tsi.secret/role: r, tsi.secret/vault-path: secret/ti-demo-all, tsi.secret/local-name: f}",
                "must be a string",
            ),
            (
                "- {tsi.secret/name: a, tsi.secret/role: r, tsi.secret/vault-path: secret/ti-demo-all, tsi.secret/local-name: f}\n- {tsi.secret/name: a, tsi.secret/role: r, tsi.secret/vault-path: secret/ti-demo-ri, tsi.secret/local-path: /tsi-secrets/f}",
                "item 2 (\"a\"): writes /tsi-secrets/f/a",
            ),
            (
                "- {tsi.secret/name: s, tsi.secret/role: r, tsi.secret/vault-path: secret/other, tsi.secret/local-name: f}",
                "neither a TSI policy type",
            ),
            (
                "- {tsi.secret/name: s, tsi.secret/role: r, tsi.secret/vault-path: /secret/ti-demo-all, tsi.secret/local-name: f}",
                "must not start with /",
            ),
            (
                "- {tsi.secret/name: s, tsi.secret/role: r, tsi.secret/vault-path: \"secret/{namespace\", tsi.secret/local-name: f}",
                "unclosed",
            ),
            (
                "- {tsi.secret/name: s, tsi.secret/constraints: \"images,region\", tsi.secret/local-name: f}",
                "not one of TSI's",
            ),
        ];
        for (list, want) in cases {
            let e = parse(&ann(json!({TSI_INJECT: "true", TSI_SECRETS: list})))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("annotation tsi.secrets"), "{list}: {e}");
            assert!(e.contains(want), "{list}: {e}");
        }
        let ok = "- {tsi.secret/name: s, tsi.secret/constraints: region, tsi.secret/local-name: f}";
        assert!(parse_items(TSI_SECRETS, ok).is_ok());
    }

    #[test]
    fn jss_annotations() {
        let list = "- {tsi.secret/name: s, tsi.secret/role: r, tsi.secret/vault-path: secret/ti-demo-all, tsi.secret/local-name: f}";
        let r = parse(&ann(json!({
            JSS_INJECT: "true", JSS_SECRETS: list, JSS_INIT_ONLY: "true",
            JSS_NATIVE_SIDECAR: "false", JSS_REFRESH: "60", JSS_FORMAT: "raw"
        })))
        .unwrap()
        .unwrap();
        assert_eq!(r.secrets_annotation, JSS_SECRETS);
        assert_eq!(
            (
                r.init_only,
                r.native_sidecar,
                r.refresh_seconds,
                r.format.as_deref()
            ),
            (Some(true), Some(false), Some(60), Some("raw"))
        );
        for (k, v) in [
            (JSS_INIT_ONLY, "yes"),
            (JSS_REFRESH, "0"),
            (JSS_REFRESH, "ten"),
            (JSS_FORMAT, "yaml"),
        ] {
            let mut a = ann(json!({JSS_INJECT: "true", JSS_SECRETS: list}));
            a.insert(k.into(), json!(v));
            let e = parse(&a).unwrap_err().to_string();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
        assert_eq!(
            parse(&ann(json!({TSI_INJECT: "true"}))).unwrap_err(),
            AnnotationError::NoSecrets
        );
        assert_eq!(
            parse(&ann(
                json!({TSI_INJECT: "true", TSI_SECRETS: list, JSS_SECRETS: list})
            ))
            .unwrap_err(),
            AnnotationError::TwoSecretLists
        );
    }
}
