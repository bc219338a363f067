use super::*;

/// The annotation from the TSI article (shared with the integration tests and the demo).
const ARTICLE: &str = include_str!("../../../../../tests/fixtures/tsi-article.secrets.yaml");

#[test]
fn the_articles_annotation_parses() {
    let items = parse(ARTICLE).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].name, "mysecret1");
    assert_eq!(items[0].role(), "demo");
    assert_eq!(
        items[0].file,
        PathBuf::from("mysecrets/myubuntu-mysecret1/mysecret1")
    );
    assert_eq!(
        items[1].source,
        Source::Path {
            role: "demo".into(),
            vault_path: "secret/ti-demo-ri".into()
        }
    );
}

#[test]
fn later_tsi_forms_parse() {
    let items = parse(
        r#"
- tsi.secret/name: "s"
  tsi.secret/constraints: "region,images"
  tsi.secret/local-path: "/tsi-secrets/app"
"#,
    )
    .unwrap();
    assert_eq!(items[0].role(), "tsi-role-ri");
    assert_eq!(items[0].file, PathBuf::from("app/s"));
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn problems_name_the_item() {
    let e = err(r#"
- tsi.secret/name: "ok"
  tsi.secret/role: "r"
  tsi.secret/vault-path: "secret/ti-demo-ri"
  tsi.secret/local-path: "a"
- tsi.secret/name: "norole"
  tsi.secret/vault-path: "secret/ti-demo-ri"
  tsi.secret/local-path: "a"
"#);
    assert!(
        e.contains("\"norole\" (item 2)") && e.contains("no tsi.secret/role"),
        "{e}"
    );
    let e = err(r#"
- tsi.secret/name: "evil"
  tsi.secret/role: "r"
  tsi.secret/vault-path: "secret/ti-demo-ri"
  tsi.secret/local-path: "../../etc"
"#);
    assert!(e.contains("\"evil\"") && e.contains(".."), "{e}");
    let e = err(r#"
- tsi.secret/name: "abs"
  tsi.secret/role: "r"
  tsi.secret/vault-path: "secret/ti-demo-ri"
  tsi.secret/local-path: "/etc/cron.d"
"#);
    assert!(e.contains("\"abs\"") && e.contains("absolute"), "{e}");
    let e = err(r#"
- tsi.secret/name: "plain"
  tsi.secret/role: "r"
  tsi.secret/vault-path: "secret/myapp"
  tsi.secret/local-path: "a"
"#);
    assert!(e.contains("\"plain\"") && e.contains("placeholders"), "{e}");
}

#[test]
fn malformed_yaml_and_unknown_keys_are_refused() {
    assert!(err("- tsi.secret/name: [unclosed").contains("YAML list"));
    assert!(err("tsi.secret/name: x").contains("YAML list"));
    let e = err(r#"
- tsi.secret/name: "x"
  tsi.secret/rol: "typo"
  tsi.secret/vault-path: "secret/ti-demo-ri"
  tsi.secret/local-path: "a"
"#);
    assert!(e.contains("tsi.secret/rol"), "{e}");
    assert!(err("[]").contains("no secrets"));
}

#[test]
fn two_items_for_one_file_are_refused() {
    let e = err(r#"
- tsi.secret/name: "s"
  tsi.secret/role: "r"
  tsi.secret/vault-path: "secret/ti-demo-ri"
  tsi.secret/local-path: "a"
- tsi.secret/name: "s"
  tsi.secret/role: "r"
  tsi.secret/vault-path: "secret/ti-demo-all"
  tsi.secret/local-path: "/tsi-secrets/a"
"#);
    assert!(e.contains("both be written"), "{e}");
}
