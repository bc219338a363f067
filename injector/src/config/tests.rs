use super::*;

fn from_toml(text: &str) -> Result<Config, ConfigError> {
    Config::build(toml::from_str(text).unwrap(), Overrides::default())
}

#[test]
fn defaults_are_valid() {
    let c = Config::build(FileConfig::default(), Overrides::default()).unwrap();
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.inject.sidecar, SidecarMode::Native);
    assert_eq!(c.inject.socket_path(), "/run/jss/jss.sock");
    assert_eq!(c.inject.vault_ca, VaultCa::None);
}

#[test]
fn flags_override_the_file() {
    let file: FileConfig =
        toml::from_str("listen = \"127.0.0.1:1\"\n[inject]\nimage = \"a\"\n").unwrap();
    let flags = Overrides {
        listen: Some("127.0.0.1:2".into()),
        image: Some("b".into()),
        ..Overrides::default()
    };
    let c = Config::build(file, flags).unwrap();
    assert_eq!(c.listen.port(), 2);
    assert_eq!(c.inject.image, "b");
}

#[test]
fn the_socket_volume_is_host_path_unless_csi_is_chosen() {
    let c = Config::build(FileConfig::default(), Overrides::default()).unwrap();
    assert_eq!(c.inject.socket_volume, SocketVolume::HostPath);
    assert_eq!(c.inject.csi_driver, DEFAULT_CSI_DRIVER);
    let file: FileConfig =
        toml::from_str("[inject]\nsocket_volume = \"csi\"\ncsi_driver = \"csi.example.org\"\n")
            .unwrap();
    let c = Config::build(file, Overrides::default()).unwrap();
    assert_eq!(c.inject.socket_volume, SocketVolume::Csi);
    assert_eq!(c.inject.csi_driver, "csi.example.org");
    let flags = Overrides {
        socket_volume: Some(SocketVolume::HostPath),
        ..Overrides::default()
    };
    let file: FileConfig = toml::from_str("[inject]\nsocket_volume = \"csi\"\n").unwrap();
    let c = Config::build(file, flags).unwrap();
    assert_eq!(c.inject.socket_volume, SocketVolume::HostPath);
    assert!(toml::from_str::<FileConfig>("[inject]\nsocket_volume = \"nfs\"\n").is_err());
}

#[test]
fn bad_values_name_their_key() {
    for (text, key) in [
        ("listen = \"localhost:8443\"", "`listen`"),
        ("[inject]\nimage = \"a b\"", "`inject.image`"),
        (
            "[inject]\ncsi_driver = \"Csi_Driver\"",
            "`inject.csi_driver`",
        ),
        (
            "[inject]\nimage_pull_policy = \"Sometimes\"",
            "`inject.image_pull_policy`",
        ),
        ("[inject]\nsocket_dir = \"run/jss\"", "`inject.socket_dir`"),
        ("[inject]\nsocket_name = \"a/b\"", "`inject.socket_name`"),
        ("[inject]\nrefresh_seconds = 0", "`inject.refresh_seconds`"),
        ("[inject]\nformat = \"yaml\"", "`inject.format`"),
        ("[inject]\nfile_mode = \"999\"", "`inject.file_mode`"),
        ("[inject]\nrun_as_user = 0", "`inject.run_as_user`"),
        (
            "[inject]\nsecrets_size_limit = \"lots\"",
            "`inject.secrets_size_limit`",
        ),
        ("[vault]\naddr = \"vault:8200\"", "`vault.addr`"),
        (
            "[vault]\nca_config_map = \"Vault_CA\"",
            "`vault.ca_config_map`",
        ),
        (
            "[vault]\nca_secret = \"ca\"\nca_key = \"a/b\"",
            "`vault.ca_key`",
        ),
        (
            "[vault]\nca_secret = \"a\"\nca_config_map = \"b\"",
            "`vault.ca_config_map`",
        ),
        (
            "[resources]\nmemory_limit = \"32 MB\"",
            "`resources.memory_limit`",
        ),
    ] {
        let err = from_toml(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn unknown_keys_are_errors() {
    assert!(toml::from_str::<FileConfig>("[inject]\nimgae = \"x\"").is_err());
}
