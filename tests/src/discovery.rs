//! The real discovery server (`jss-bootstrap discovery serve`) as a child
//! process on a loopback port, with a generated CA and serving certificate,
//! killed on drop; and a small HTTPS GET to read it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName};

use crate::bao::Bao;
use crate::daemon::bin;
use crate::net;

pub struct Discovery {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    ca_der: CertificateDer<'static>,
}

/// Runs `bao` for the registry-read policy `cluster init` wrote; returns a
/// token file for the discovery server.
pub fn discovery_token(bao: &Bao, mount: &str, dir: &Path) -> PathBuf {
    let policy = format!("jss-discovery-{mount}");
    let token = bao.ok(&[
        "token",
        "create",
        "-field=token",
        "-ttl=1h",
        "-policy",
        &policy,
    ]);
    let p = dir.join("discovery-token");
    std::fs::write(&p, token.trim()).unwrap_or_else(|e| panic!("write token: {e}"));
    p
}

impl Discovery {
    /// Starts the server for `cluster` reading `bao` with a registry-only
    /// token, refreshing every `refresh` seconds; waits until it serves.
    pub fn start(bao: &Bao, cluster: &str, refresh: u64, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let ca_der = make_tls(dir.path());
        let token = discovery_token(bao, &format!("jss-{cluster}"), dir.path());
        let port = net::free_port();
        let mut args: Vec<String> = [
            "discovery",
            "serve",
            "--cluster",
            cluster,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tls-cert",
            &dir.path().join("server.crt").display().to_string(),
            "--tls-key",
            &dir.path().join("server.key").display().to_string(),
            "--refresh",
            &refresh.to_string(),
            "--vault-addr",
            &bao.addr(),
            "--token-file",
            &token.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut d = Self {
            child: None,
            port,
            dir,
            args,
            ca_der,
        };
        d.restart();
        d
    }

    /// Starts (again) with the same port, certificate and token.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.dir.path().join("discovery.log"))
            .unwrap_or_else(|e| panic!("log: {e}"));
        let child = Command::new(bin("jss-bootstrap"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start jss-bootstrap discovery serve: {e}"));
        self.child = Some(child);
        // The first registry read is a read per node: minutes at 20,000.
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            if self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
            {
                break;
            }
            if self.get("/healthz").is_ok_and(|r| r.status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the discovery server did not serve a JWKS: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("discovery.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("the discovery server is stopped"))
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/keys", self.port)
    }

    /// The CA certificate (PEM file) that verifies the server.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One HTTPS GET with optional extra header lines.
    pub fn get_with(&self, path: &str, headers: &str) -> Result<HttpReply, String> {
        https_get(self.port, &self.ca_der, path, headers)
    }

    pub fn get(&self, path: &str) -> Result<HttpReply, String> {
        self.get_with(path, "")
    }

    /// The kids the JWKS serves now.
    pub fn kids(&self) -> Vec<String> {
        let r = self
            .get("/keys")
            .unwrap_or_else(|e| panic!("GET /keys: {e}"));
        let doc: serde_json::Value =
            serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("JWKS: {e}"));
        doc["keys"]
            .as_array()
            .map(|ks| {
                ks.iter()
                    .filter_map(|k| k["kid"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

fn client_config(ca: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone())
        .unwrap_or_else(|e| panic!("root store: {e}"));
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("rustls versions: {e}"))
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// GET over a fresh TLS connection (`Connection: close`), verified with `ca`.
pub fn https_get(
    port: u16,
    ca: &CertificateDer<'static>,
    path: &str,
    headers: &str,
) -> Result<HttpReply, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(client_config(ca), name).map_err(|e| e.to_string())?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        // A peer that closes without close_notify still sent its answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP head in the answer")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status code")?;
    Ok(HttpReply {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    })
}

/// A CA (`ca.crt`) and a server certificate for 127.0.0.1 (`server.crt`,
/// `server.key`) in `dir`; returns the CA certificate.
fn make_tls(dir: &Path) -> CertificateDer<'static> {
    let fail = |e: rcgen::Error| -> ! { panic!("certificate generation: {e}") };
    let ca_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail(e));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "jss-discovery-test-ca");
    let ca_cert = ca.self_signed(&ca_key).unwrap_or_else(|e| fail(e));
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap_or_else(|e| fail(e));
    p.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    p.distinguished_name
        .push(DnType::CommonName, "jss-discovery");
    let cert = p.signed_by(&key, &issuer).unwrap_or_else(|e| fail(e));
    let write = |name: &str, data: String| {
        std::fs::write(dir.join(name), data).unwrap_or_else(|e| panic!("write {name}: {e}"));
    };
    write("ca.crt", ca_cert.pem());
    write("server.crt", cert.pem());
    write("server.key", key.serialize_pem());
    ca_cert.der().clone()
}
