//! What each fuzz target does with one input.
//!
//! Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and the corpus
//! replay that CI runs (`tests/tests/fuzz_corpus.rs`): both include this file
//! with `#[path]`, so the replay exercises exactly what was fuzzed. Every
//! function takes arbitrary bytes and must not panic; the HTTP target also
//! panics if the connection neither answers nor closes in time.
#![allow(dead_code)] // each fuzz binary uses one function

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use jss::attest::{Workload, cgroup, proc_stat};
use jss::claims::{ClaimsBuilder, NodeFacts};
use jss::config::Limits;
use jss::kubelet::{ContainerKind, ImageDigests, PodList, PodQuery, PodSource as _, StaticPods};
use jss::server::http::{self, Endpoint};
use jss::server::{Code, Refusal};
use jss::signer::NodePublicKey;

/// Every target, as named under `fuzz/fuzz_targets/` and `fuzz/corpus/`.
pub const TARGETS: &[&str] = &[
    "cgroup",
    "proc_stat",
    "podlist",
    "http",
    "chain",
    "csr",
    "admission",
];

/// Runs `data` through the target called `name`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "cgroup" => cgroup(data),
        "proc_stat" => proc_stat(data),
        "podlist" => podlist(data),
        "http" => http(data),
        "chain" => chain(data),
        "csr" => csr(data),
        "admission" => admission(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

/// `/proc/<pid>/cgroup`: the whole file, each line, each path.
pub fn cgroup(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let whole = cgroup::parse_file(&text);
    let _ = cgroup::summary(&text);
    for line in text.lines() {
        if let Ok((_, _, path)) = cgroup::split_line(line) {
            check_match(cgroup::match_path(path));
        }
    }
    check_match(cgroup::match_path(&text));
    if let Ok(m) = whole {
        check_match(m);
    }
}

/// What any match must look like: a 64-hex container ID and a well-formed pod.
fn check_match(m: Option<cgroup::PathMatch>) {
    let Some(m) = m else { return };
    assert_eq!(m.container_id.len(), 64, "{m:?}");
    assert!(
        m.container_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{m:?}"
    );
    match &m.pod {
        Some(cgroup::PodRef::Uid(u)) => assert_eq!(u.len(), 36, "{m:?}"),
        Some(cgroup::PodRef::ConfigHash(h)) => assert_eq!(h.len(), 32, "{m:?}"),
        None => {}
    }
}

/// `/proc/<pid>/stat` start time and `/proc/<pid>/status` ids: the same
/// bytes are read as either file.
pub fn proc_stat(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = proc_stat::start_time(&text);
    let _ = proc_stat::ids(&text);
}

fn facts() -> NodeFacts {
    NodeFacts {
        issuer: "jss://fuzz".into(),
        cluster_name: "fuzz".into(),
        cluster_region: "eu-de".into(),
        node_name: "node-1".into(),
        machine_id: "0123456789abcdef0123456789abcdef".into(),
    }
}

/// A kubelet `/pods` body: parse it, then look up every container ID it
/// lists (with and without the pod UID, and against a wrong UID) the way
/// the attestor does, and build claims for each match.
pub fn podlist(data: &[u8]) {
    let Ok(list) = PodList::parse(data) else {
        return;
    };
    let mut queries = Vec::new();
    for pod in &list.pods {
        for kind in [
            ContainerKind::Container,
            ContainerKind::Init,
            ContainerKind::Ephemeral,
        ] {
            for c in pod.spec(kind) {
                let _ = pod.status(kind, &c.name);
            }
        }
        for st in &pod.statuses {
            let _ = st.running();
            let _ = ImageDigests::from_status(st.image_id.as_deref(), st.image.as_deref());
            if let Some(id) = &st.container_id {
                for pod_uid in [None, Some(pod.uid.clone()), Some("x".to_string())] {
                    queries.push(PodQuery {
                        pod_uid,
                        container_id: id.clone(),
                    });
                }
            }
        }
    }
    queries.push(PodQuery {
        pod_uid: None,
        container_id: "0".repeat(64),
    });
    let pods = StaticPods::new(list);
    let claims = ClaimsBuilder::new(facts(), Default::default(), 60);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        for q in &queries {
            if let Ok(m) = pods.find(q).await {
                assert_eq!(m.container_id, q.container_id);
                let w = Workload::from_match(m);
                let _ = claims.build(&w, "vault", 1_700_000_000);
            }
        }
    });
}

/// The daemon's default limits (`[limits]` in jss/src/config).
fn limits() -> Limits {
    Limits::default()
}

/// After the client stops sending (and later closes its side), the server
/// must have answered or closed within this much (virtual) time.
pub const HTTP_BOUND: Duration = Duration::from_secs(60);

/// The daemon's routing and request reading (`jss::server::http`) up to
/// attestation, which needs a key, a chain and `/proc`: the endpoint, the
/// audience from the query or the body within the limits, the allow-list.
/// Answers 200 with the audience, or the daemon's refusal.
async fn route(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let audiences = ["vault".to_string(), "other".to_string()];
    let answer = async {
        match Endpoint::of(req.method(), req.uri().path())? {
            Endpoint::TokenPost | Endpoint::TokenGet => {
                let asked = http::requested_audience(req, &limits()).await?;
                let audience = http::allowed_audience(&audiences, asked.as_deref())?;
                Ok(Response::new(Full::new(Bytes::from(audience.to_string()))))
            }
            _ => Ok(Response::new(Full::new(Bytes::from_static(b"ok")))),
        }
    };
    Ok(answer
        .await
        .unwrap_or_else(|r: Refusal| http::refusal_response(&r)))
}

/// One HTTP/1.1 connection carrying `data`, served as the daemon serves it.
///
/// The client sends `data`, then stalls past the header timeout (a slow or
/// stuck caller), then closes its side. Time is virtual (paused clock), so
/// timeouts cost nothing and runs are deterministic. Panics if the server
/// has not finished within [`HTTP_BOUND`] of each step.
pub fn http(data: &[u8]) {
    let _ = http_exchange(data);
}

/// [`http`], returning every byte the server sent back.
pub fn http_exchange(data: &[u8]) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let header_timeout = Duration::from_millis(limits().header_timeout_ms);
        let limits = limits();
        let request_timeout = Duration::from_millis(limits.request_timeout_ms);
        let conn = jss::server::http1(&limits).serve_connection(
            TokioIo::new(server),
            hyper::service::service_fn(move |req| async move {
                match tokio::time::timeout(request_timeout, route(req)).await {
                    Ok(r) => r,
                    Err(_) => Ok(http::refusal_response(&Refusal::new(
                        Code::Timeout,
                        "request timeout",
                    ))),
                }
            }),
        );
        let (mut rd, mut wr) = tokio::io::split(client);
        let send = async move {
            // The server may close early (bad request): write errors are fine.
            let _ = wr.write_all(data).await;
            tokio::time::sleep(header_timeout + Duration::from_secs(1)).await;
            let _ = wr.shutdown().await;
            // Keep the write half alive until the server is done.
            std::future::pending::<()>().await;
        };
        let recv = async move {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        };
        let served = async {
            let (_conn, answer) = tokio::join!(conn, recv);
            answer
        };
        let bound = header_timeout + Duration::from_secs(1) + HTTP_BOUND;
        tokio::select! {
            answer = served => answer,
            () = send => unreachable!(),
            () = tokio::time::sleep(bound) => panic!(
                "the server neither answered nor closed within {bound:?} of the request"
            ),
        }
    })
}

/// The fixed node key the chain target checks leaf certificates against
/// (its private half was thrown away once the seed chains were signed).
const NODE_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZfajoVK5hy2KmCa/CumB9/rbILS1
99q02XZ99CVL2jPK0DMBDIcJuPvL0r5HGk5jQJD25rG9MIihZd7qIBXBEw==
-----END PUBLIC KEY-----
";

pub fn node_key() -> NodePublicKey {
    use p256::pkcs8::DecodePublicKey as _;
    NodePublicKey::new(p256::PublicKey::from_public_key_pem(NODE_KEY_PEM).expect("node key"))
}

/// `chain.pem` as `jss serve` loads it, and what it then reads from it.
pub fn chain(data: &[u8]) {
    let pem = String::from_utf8_lossy(data);
    if let Ok(c) = jss::chain::Chain::from_pem(&pem, &node_key()) {
        assert!(c.certificates().len() >= 2);
        let _ = c.x5c();
        let _ = c.subject();
        let _ = (c.not_before_unix(), c.not_after_unix());
        let _ = c.remaining_fraction(std::time::SystemTime::UNIX_EPOCH);
        let _ = c.is_valid_at(std::time::SystemTime::now());
    }
}

/// A CSR as `jss-bootstrap node sign --csr` reads it.
pub fn csr(data: &[u8]) {
    let pem = String::from_utf8_lossy(data);
    if let Ok(v) = jss_bootstrap::csr::verify(&pem, "fuzz") {
        let _ = (v.identity.subject(), v.identity.uri(), v.key.jwk());
    }
}

/// jss-injector: the bytes as a `/mutate` body (`review::decode`, then
/// `mutate::respond` with the default settings) and as the text of a
/// `tsi.secrets` annotation (`annotations::parse_items`). A response must
/// be a v1 AdmissionReview for the request's uid; a checked item's file must
/// stay below /tsi-secrets.
pub fn admission(data: &[u8]) {
    use jss_injector::config::{Config, FileConfig, Overrides};
    use jss_injector::{annotations, mutate, review};

    if let Ok(req) = review::decode(data) {
        let cfg = Config::build(FileConfig::default(), Overrides::default())
            .unwrap_or_else(|e| panic!("default injector config: {e}"));
        let (outcome, body) = mutate::respond(&req, &cfg.inject);
        let v: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("response not JSON: {e}"));
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["response"]["uid"].as_str(), Some(req.uid.as_str()));
        let allowed = v["response"]["allowed"] == true;
        assert_eq!(allowed, outcome != mutate::Outcome::Refused, "{v}");
        assert_eq!(
            v["response"]["patch"].is_string(),
            outcome == mutate::Outcome::Patched,
            "{v}"
        );
    }
    if let Ok(items) = annotations::parse_items("tsi.secrets", &String::from_utf8_lossy(data)) {
        for item in items {
            assert!(
                !item.file.starts_with('/')
                    && !item.file.split('/').any(|c| c == ".." || c.is_empty()),
                "{item:?}"
            );
        }
    }
}
