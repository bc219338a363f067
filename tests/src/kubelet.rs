//! A kubelet stand-in: `GET /pods` over HTTPS (a generated CA and serving
//! certificate for 127.0.0.1/localhost), bearer token checked, the kubelet's
//! JSON format, a pod list the test can change, and failures on demand.
//! Also builders for pods in the kubelet's real `/pods` shape.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use jss::kubelet::KubeletConfig;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

/// What the stand-in does with the next requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Serve the pod list.
    None,
    /// Answer with this HTTP status and a short text body.
    Status(u16),
    /// 200 with a body that is not a pod list.
    Garbage,
    /// Wait this long, then serve normally.
    Delay(Duration),
    /// Accept the connection and close it without a word.
    Hangup,
}

/// How the stand-in listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// HTTPS, bearer token required (the kubelet's secure port).
    #[default]
    Https,
    /// HTTPS, a client certificate signed by the stand-in's CA required; no token.
    HttpsClientCert,
    /// Plain HTTP without auth (the read-only port).
    Plain,
}

struct State {
    body: Vec<u8>,
    fault: Fault,
    token: String,
}

pub struct KubeletStandin {
    addr: SocketAddr,
    mode: Mode,
    dir: tempfile::TempDir,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl KubeletStandin {
    /// HTTPS with a bearer token, serving `pods` (a `PodList` object).
    pub fn start(pods: Value) -> Self {
        Self::start_with(Mode::Https, pods)
    }

    pub fn start_with(mode: Mode, pods: Value) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let tls = match mode {
            Mode::Plain => None,
            _ => Some(make_tls(dir.path(), mode == Mode::HttpsClientCert)),
        };
        let token = format!("standin-token-{}", std::process::id());
        write(&dir.path().join("token"), token.as_bytes());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let state = Arc::new(Mutex::new(State {
            body: to_body(&pods),
            fault: Fault::None,
            token,
        }));
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (state, requests, stop) = (state.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (state, requests, tls) = (state.clone(), requests.clone(), tls.clone());
                    std::thread::spawn(move || serve(conn, tls, mode, &state, &requests));
                }
            })
        };
        Self {
            addr,
            mode,
            dir,
            state,
            requests,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub fn url(&self) -> String {
        match self.mode {
            Mode::Plain => format!("http://{}", self.addr),
            _ => format!("https://{}", self.addr),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn token_path(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Client certificate and key (Mode::HttpsClientCert).
    pub fn client_cert_paths(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("client.crt"),
            self.dir.path().join("client.key"),
        )
    }

    /// A `[kubelet]` section for this stand-in, with short waits for tests.
    pub fn config(&self) -> KubeletConfig {
        let mut c = KubeletConfig {
            token_path: self.token_path(),
            ca_path: self.ca_path(),
            connect_timeout_ms: 1_000,
            request_timeout_ms: 2_000,
            retry_window_ms: 3_000,
            retry_interval_ms: 100,
            max_list_age_ms: 0,
            ..KubeletConfig::default()
        };
        match self.mode {
            Mode::Plain => c.read_only_url = Some(self.url()),
            Mode::Https => c.url = self.url(),
            Mode::HttpsClientCert => {
                c.url = self.url();
                let (cert, key) = self.client_cert_paths();
                c.client_cert_path = Some(cert);
                c.client_key_path = Some(key);
                c.token_path = self.dir.path().join("no-token");
            }
        }
        c
    }

    pub fn set_pods(&self, pods: Value) {
        self.lock().body = to_body(&pods);
    }

    pub fn set_fault(&self, fault: Fault) {
        self.lock().fault = fault;
    }

    /// Writes a new token file; the old token is refused from now on.
    pub fn rotate_token(&self, token: &str) {
        write(&self.token_path(), token.as_bytes());
        self.lock().token = token.to_string();
    }

    /// Requests received so far (any path, any outcome).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stops listening: the kubelet is down from now on.
    pub fn stop(&mut self) {
        if let Some(h) = self.acceptor.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
            let _ = h.join();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for KubeletStandin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn to_body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|e| panic!("pod list to JSON: {e}"))
}

fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn make_tls(dir: &Path, client_auth: bool) -> Arc<rustls::ServerConfig> {
    let fail = |e: rcgen::Error| -> ! { panic!("certificate generation: {e}") };
    let ca_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail(e));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "kubelet-standin-ca");
    let ca_cert = ca.self_signed(&ca_key).unwrap_or_else(|e| fail(e));
    let issuer = Issuer::new(ca, ca_key);
    write(&dir.join("ca.crt"), ca_cert.pem().as_bytes());

    let key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap_or_else(|e| fail(e));
    p.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    p.distinguished_name.push(DnType::CommonName, "kubelet");
    let cert = p.signed_by(&key, &issuer).unwrap_or_else(|e| fail(e));

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("rustls versions: {e}"));
    let builder = if client_auth {
        let ckey = KeyPair::generate().unwrap_or_else(|e| fail(e));
        let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail(e));
        cp.distinguished_name.push(DnType::CommonName, "jss");
        let ccert = cp.signed_by(&ckey, &issuer).unwrap_or_else(|e| fail(e));
        write(&dir.join("client.crt"), ccert.pem().as_bytes());
        write(&dir.join("client.key"), ckey.serialize_pem().as_bytes());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca_cert.der().clone())
            .unwrap_or_else(|e| panic!("root store: {e}"));
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap_or_else(|e| panic!("client verifier: {e}"));
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Arc::new(
        builder
            .with_single_cert(chain, key)
            .unwrap_or_else(|e| panic!("server cert: {e}")),
    )
}

fn serve(
    conn: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    mode: Mode,
    state: &Mutex<State>,
    requests: &AtomicU64,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = conn.set_nodelay(true);
    match tls {
        None => handle(conn, mode, state, requests),
        Some(cfg) => {
            let Ok(sc) = rustls::ServerConnection::new(cfg) else {
                return;
            };
            let mut s = rustls::StreamOwned::new(sc, conn);
            handle(&mut s, mode, state, requests);
            s.conn.send_close_notify();
            let _ = s.flush();
            let _ = s.sock.shutdown(Shutdown::Both);
        }
    }
}

fn handle(mut s: impl Read + Write, mode: Mode, state: &Mutex<State>, requests: &AtomicU64) {
    // Read the request head (no body on GET).
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 << 10 {
            return;
        }
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let auth = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());
    let (fault, body, token) = {
        let st = state.lock().unwrap_or_else(|p| p.into_inner());
        (st.fault.clone(), st.body.clone(), st.token.clone())
    };
    let reply = |s: &mut dyn Write, status: u16, body: &[u8], ctype: &str| {
        let _ = write!(
            s,
            "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(body);
        let _ = s.flush();
    };
    match fault {
        Fault::Hangup => return,
        Fault::Delay(d) => std::thread::sleep(d),
        Fault::Status(code) => return reply(&mut s, code, b"injected failure\n", "text/plain"),
        Fault::None | Fault::Garbage => {}
    }
    if !request_line.starts_with("GET /pods ") && !request_line.starts_with("GET /pods/ ") {
        return reply(&mut s, 404, b"404 page not found\n", "text/plain");
    }
    if mode == Mode::Https && auth.as_deref() != Some(format!("Bearer {token}").as_str()) {
        return reply(&mut s, 401, b"Unauthorized\n", "text/plain");
    }
    if fault == Fault::Garbage {
        return reply(
            &mut s,
            200,
            b"<html>this is not a pod list",
            "application/json",
        );
    }
    reply(&mut s, 200, &body, "application/json");
}

/// A container for [`PodBuilder`].
#[derive(Debug, Clone)]
pub struct Ctr {
    pub name: String,
    pub image: String,
    /// 64 hex; `None` while the runtime has not created it.
    pub id: Option<String>,
    /// `containerd`, `cri-o`, `docker`.
    pub runtime: String,
    /// Hex of the image digest (status `imageID`).
    pub digest: Option<String>,
    /// `running`, `waiting` or `terminated`.
    pub state: String,
}

impl Ctr {
    pub fn running(name: &str, image: &str, id: &str) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            id: Some(id.into()),
            runtime: "containerd".into(),
            digest: Some(crate::pods::hex_of(&format!("digest of {image}"), 64)),
            state: "running".into(),
        }
    }
}

/// A pod in the kubelet's `/pods` JSON shape.
#[derive(Debug, Clone)]
pub struct PodBuilder {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub node_name: String,
    pub labels: Vec<(String, String)>,
    pub containers: Vec<Ctr>,
    pub init_containers: Vec<Ctr>,
    pub ephemeral_containers: Vec<Ctr>,
}

impl PodBuilder {
    pub fn new(uid: &str, namespace: &str, name: &str) -> Self {
        Self {
            uid: uid.into(),
            namespace: namespace.into(),
            name: name.into(),
            service_account: "default".into(),
            node_name: "node-1".into(),
            labels: vec![("app".into(), name.into())],
            containers: Vec::new(),
            init_containers: Vec::new(),
            ephemeral_containers: Vec::new(),
        }
    }

    pub fn container(mut self, c: Ctr) -> Self {
        self.containers.push(c);
        self
    }

    pub fn init(mut self, c: Ctr) -> Self {
        self.init_containers.push(c);
        self
    }

    pub fn ephemeral(mut self, c: Ctr) -> Self {
        self.ephemeral_containers.push(c);
        self
    }

    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = sa.into();
        self
    }

    pub fn json(&self) -> Value {
        let spec_c = |c: &Ctr| {
            json!({
                "name": c.name, "image": c.image, "imagePullPolicy": "IfNotPresent",
                "env": [{"name": "LOG_LEVEL", "value": "info"}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                "volumeMounts": [{"name": "kube-api-access", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log"
            })
        };
        let status_c = |c: &Ctr| {
            let state = match c.state.as_str() {
                "running" => json!({"running": {"startedAt": "2025-01-01T00:00:00Z"}}),
                "terminated" => json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
                _ => json!({"waiting": {"reason": "ContainerCreating"}}),
            };
            let mut v = json!({
                "name": c.name, "state": state, "lastState": {},
                "ready": c.state == "running", "restartCount": 0, "image": c.image,
                "imageID": c.digest.as_ref().map(|d| format!("docker.io/library/app@sha256:{d}")).unwrap_or_default(),
                "started": c.state == "running"
            });
            if let Some(id) = &c.id {
                v["containerID"] = json!(format!("{}://{id}", c.runtime));
            }
            v
        };
        let labels: serde_json::Map<String, Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({
            "metadata": {
                "name": self.name, "generateName": format!("{}-", self.name),
                "namespace": self.namespace, "uid": self.uid, "resourceVersion": "4242",
                "creationTimestamp": "2025-01-01T00:00:00Z", "labels": labels,
                "annotations": {"kubernetes.io/config.seen": "2025-01-01T00:00:00Z",
                                "kubernetes.io/config.source": "api"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": format!("{}-rs", self.name), "uid": "0e5b1a43-6f3c-4c47-9a7f-1b2c3d4e5f60",
                    "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {
                "volumes": [{"name": "kube-api-access", "projected": {"sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
                "containers": self.containers.iter().map(spec_c).collect::<Vec<_>>(),
                "initContainers": self.init_containers.iter().map(spec_c).collect::<Vec<_>>(),
                "ephemeralContainers": self.ephemeral_containers.iter().map(spec_c).collect::<Vec<_>>(),
                "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                "serviceAccountName": self.service_account, "serviceAccount": self.service_account,
                "nodeName": self.node_name, "priority": 0,
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                    "effect": "NoExecute", "tolerationSeconds": 300}]
            },
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2025-01-01T00:00:00Z"}],
                "hostIP": "10.0.0.5", "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}],
                "startTime": "2025-01-01T00:00:00Z", "qosClass": "BestEffort",
                "containerStatuses": self.containers.iter().map(status_c).collect::<Vec<_>>(),
                "initContainerStatuses": self.init_containers.iter().map(status_c).collect::<Vec<_>>(),
                "ephemeralContainerStatuses": self.ephemeral_containers.iter().map(status_c).collect::<Vec<_>>()
            }
        })
    }
}

/// A `PodList` as the kubelet's `/pods` returns it.
pub fn pod_list(pods: &[Value]) -> Value {
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods})
}

/// A pod as the API server holds it (a manifest, or a webhook's patched
/// result) as the kubelet lists it once it runs on `node-1`: a new UID,
/// `name`, and every container and init container running with a new
/// container ID.
pub struct Listed {
    pub json: Value,
    pub uid: String,
    /// Container name → container ID.
    pub ids: std::collections::BTreeMap<String, String>,
}

impl Listed {
    pub fn new(pod: &Value, name: &str) -> Self {
        let uid = crate::pods::random_pod_uid();
        let mut json = pod.clone();
        json["metadata"]["name"] = json!(name);
        json["metadata"]["uid"] = json!(uid);
        json["spec"]["nodeName"] = json!("node-1");
        // The API server's default.
        if json["spec"]["serviceAccountName"].is_null() {
            json["spec"]["serviceAccountName"] = json!("default");
        }
        let mut ids = std::collections::BTreeMap::new();
        let mut status = json!({"phase": "Running"});
        for (spec, key) in [
            ("containers", "containerStatuses"),
            ("initContainers", "initContainerStatuses"),
        ] {
            let mut statuses = Vec::new();
            for c in pod["spec"][spec].as_array().into_iter().flatten() {
                let (name, image) = (c["name"].as_str().unwrap_or(""), &c["image"]);
                let id = crate::pods::random_container_id();
                let digest = crate::pods::hex_of(&format!("digest of {image}"), 64);
                statuses.push(json!({
                    "name": name, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                    "ready": true, "restartCount": 0, "image": image,
                    "imageID": format!("registry.example.com/image@sha256:{digest}"),
                    "containerID": format!("containerd://{id}"),
                }));
                ids.insert(name.to_string(), id);
            }
            status[key] = json!(statuses);
        }
        json["status"] = status;
        Self { json, uid, ids }
    }

    /// The container ID of `name`.
    pub fn id(&self, name: &str) -> &str {
        self.ids
            .get(name)
            .unwrap_or_else(|| panic!("the pod has no container {name}"))
    }
}
