//! A real `jss-injector serve` process on a loopback port with a serving
//! certificate from a test CA, and a blocking HTTPS client that keeps its
//! connection alive (tests and `jss-bench injector` use both).

use std::io::{BufReader, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

use crate::daemon::bin;
use crate::net::{free_port, read_response};

/// A CA and a serving certificate for `localhost`/127.0.0.1, as PEM files in a directory.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    ca_der: CertificateDer<'static>,
}

impl Certs {
    /// A fresh CA named `cn` and a certificate it signs, written to `dir`.
    pub fn issue(dir: &Path, cn: &str) -> Self {
        let fail = |e: rcgen::Error| -> ! { panic!("certificate generation: {e}") };
        let ca_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail(e));
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, cn);
        let ca_cert = ca.self_signed(&ca_key).unwrap_or_else(|e| fail(e));
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap_or_else(|e| fail(e));
        let mut p = CertificateParams::new(vec![
            "localhost".into(),
            "jss-injector.jss-system.svc".into(),
        ])
        .unwrap_or_else(|e| fail(e));
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        p.distinguished_name
            .push(DnType::CommonName, "jss-injector");
        let cert = p.signed_by(&key, &issuer).unwrap_or_else(|e| fail(e));
        let certs = Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            ca_der: ca_cert.der().clone(),
        };
        let write = |p: &Path, d: String| {
            std::fs::write(p, d).unwrap_or_else(|e| panic!("write {}: {e}", p.display()))
        };
        write(&certs.ca, ca_cert.pem());
        write(&certs.key, key.serialize_pem());
        write(&certs.cert, cert.pem());
        certs
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .unwrap_or_else(|e| panic!("root store: {e}"));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap_or_else(|e| panic!("rustls versions: {e}"))
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

pub struct Injector {
    child: Option<Child>,
    pub port: u16,
    pub stderr_log: PathBuf,
}

impl Injector {
    /// Starts `jss-injector serve --listen 127.0.0.1:PORT --tls-cert … --tls-key …`
    /// plus `args`, and waits until it answers `/healthz`.
    pub fn start(dir: &Path, certs: &Certs, args: &[&str]) -> Self {
        let port = free_port();
        let stderr_log = dir.join(format!("injector-{port}.stderr"));
        let err = std::fs::File::create(&stderr_log).unwrap_or_else(|e| panic!("log file: {e}"));
        let child = Command::new(bin("jss-injector"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(&certs.cert)
            .arg("--tls-key")
            .arg(&certs.key)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn jss-injector: {e}"));
        let mut me = Self {
            child: Some(child),
            port,
            stderr_log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = me.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("jss-injector exited with {status}:\n{}", me.stderr());
            }
            if let Ok(mut c) = Client::connect(port, certs)
                && c.get("/healthz").0 == 200
            {
                return me;
            }
            assert!(
                Instant::now() < deadline,
                "jss-injector did not answer /healthz:\n{}",
                me.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One kept-alive HTTPS connection (HTTP/1.1, Content-Length bodies).
pub struct Client {
    stream: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl Client {
    pub fn connect(port: u16, certs: &Certs) -> std::io::Result<Self> {
        Self::connect_with(port, certs.client_config())
    }

    pub fn connect_with(port: u16, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let conn = rustls::ClientConnection::new(
            cfg,
            ServerName::try_from("localhost").map_err(std::io::Error::other)?,
        )
        .map_err(std::io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        // Finish the handshake now, so certificate errors show here.
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(Self {
            stream: BufReader::new(s),
        })
    }

    /// Sends one request; returns the status and body.
    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        s.flush()?;
        read_response(&mut self.stream)
    }

    pub fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        self.request("GET", path, b"")
    }

    /// POSTs a review of `object` (a pod CREATE) and returns the response JSON.
    pub fn review(&mut self, object: &Value) -> Value {
        let (status, body) = self.request("POST", "/mutate", &review_body(object));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("response JSON: {e}"))
    }
}

/// An `admission.k8s.io/v1` review of a pod CREATE, as the API server sends it.
pub fn review_body(pod: &Value) -> Vec<u8> {
    let ns = pod
        .pointer("/metadata/namespace")
        .cloned()
        .unwrap_or(json!("default"));
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    }))
    .unwrap_or_default()
}
