use super::*;

const EXAMPLE: &str = include_str!("../../../config.example.toml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"), None)
}

#[test]
fn example_file_parses_as_documented() {
    let c = parse(EXAMPLE).unwrap();
    assert_eq!(c.socket, PathBuf::from("/run/jss/jss.sock"));
    assert_eq!(c.socket_mode, 0o666);
    assert_eq!(c.node_name, "node-1");
    assert_eq!(c.issuer, "jss://EUCluster");
    assert_eq!(c.audiences, vec!["vault".to_string()]);
    assert_eq!(c.signer.kind, SignerKind::Tpm);
    assert_eq!(c.signer.state_dir, PathBuf::from("/var/lib/jss"));
    assert!(!c.csi.pod_token);
    assert_eq!(
        c.csi.pod_token_socket,
        PathBuf::from("/run/jss-csi/jss.sock")
    );
}

#[test]
fn minimal_file_takes_defaults() {
    let c = Config::parse(
        "cluster_name = \"c\"\ncluster_region = \"r\"\n",
        Path::new("t"),
        Some("from-env".into()),
    )
    .unwrap();
    assert_eq!(c.node_name, "from-env");
    assert_eq!(c.token_ttl_seconds, 60);
    assert!(c.cache.enabled);
}

#[test]
fn unknown_keys_are_errors() {
    let e = parse(&format!("{EXAMPLE}\nsurprise = 1\n")).unwrap_err();
    assert!(e.to_string().contains("surprise"), "{e}");
    let e = parse(&EXAMPLE.replace("[signer]\n", "[signer]\nkey_file = \"x\"\n")).unwrap_err();
    assert!(e.to_string().contains("key_file"), "{e}");
}

#[test]
fn bad_values_name_their_key() {
    for (from, to, key) in [
        (
            "socket_mode = \"0666\"",
            "socket_mode = \"rw\"",
            "socket_mode",
        ),
        (
            "token_ttl_seconds = 60",
            "token_ttl_seconds = 86400",
            "token_ttl_seconds",
        ),
        ("audiences = [\"vault\"]", "audiences = []", "audiences"),
        (
            "cluster_name = \"EUCluster\"",
            "cluster_name = \"a/b\"",
            "cluster_name",
        ),
        ("kind = \"tpm\"", "kind = \"hsm\"", "kind"),
        ("node_name = \"node-1\"", "", "node_name"),
        ("{image-id}\"", "{pod}\"", "sub_template"),
        (
            "socket = \"/run/jss/jss.sock\"",
            "socket = \"rel.sock\"",
            "socket",
        ),
        (
            "cluster_region = \"eu-de\"",
            "cluster_region = \"eu#de\"",
            "cluster_region",
        ),
        (
            "pod_token_socket = \"/run/jss-csi/jss.sock\"",
            "pod_token_socket = \"jss.sock\"",
            "csi.pod_token_socket",
        ),
        (
            "pod_token_socket = \"/run/jss-csi/jss.sock\"",
            "pod_token_socket = \"/run/jss/csi.sock\"",
            "csi.pod_token_socket",
        ),
    ] {
        assert!(EXAMPLE.contains(from), "example lacks {from}");
        let e = parse(&EXAMPLE.replacen(from, to, 1)).unwrap_err();
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
}

#[test]
fn kubelet_url_may_name_the_node() {
    let c = parse(&EXAMPLE.replace(
        "url = \"https://127.0.0.1:10250\"",
        "url = \"https://${NODE_NAME}:10250\"",
    ))
    .unwrap();
    assert_eq!(c.kubelet.url, "https://node-1:10250");
}

#[test]
fn injector_image_is_optional_and_checked() {
    assert_eq!(parse(EXAMPLE).unwrap().injector_image, None);
    let commented = "# image = \"registry.example.com/jss@sha256:...\"";
    assert!(EXAMPLE.contains(commented));
    let with = |image: &str| parse(&EXAMPLE.replace(commented, &format!("image = \"{image}\"")));
    let jss = "registry.example.com/jss@sha256:".to_string() + &"0a".repeat(32);
    assert_eq!(
        with(&jss).unwrap().injector_image.as_deref(),
        Some(jss.as_str())
    );
    for bad in ["", "jss 1", "jss@sha256:0a"] {
        let e = with(bad).unwrap_err();
        assert!(e.to_string().contains("injector.image"), "{bad:?}: {e}");
    }
}
