//! jss-injector: admission reviews of a typical pod (a Deployment's pod with
//! two containers, an init container and volumes; patched) over kept-alive
//! HTTPS connections, from client threads in this process. Latency is the
//! whole round trip as a client sees it; the injector's own CPU per review
//! comes from /proc.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is a failure report

use std::path::Path;
use std::time::{Duration, Instant};

use jss_tests::injector::{Certs, Client, Injector, review_body};
use jss_tests::kube;

use crate::e2e::{cpu_us, peak_rss_mib};
use crate::{Figures, percentile};

const CLIENTS: [usize; 3] = [1, 4, 16];

pub fn run(seconds: u64) -> Figures {
    println!("\n== injector: admission reviews over HTTPS ==");
    let mut f = Figures::new();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::issue(dir.path(), "bench CA");
    let inj = Injector::start(dir.path(), &certs, &["--vault-ca-config-map", "vault-ca"]);
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/injector/deployment-pod.yaml");
    let pod = kube::yaml_to_json(&std::fs::read(fixture).unwrap());
    let body = review_body(&pod);
    // The pod is patched (not a pass-through review).
    let first = Client::connect(inj.port, &certs).unwrap().review(&pod);
    assert!(first["response"]["patch"].is_string(), "{first}");
    let cfg = certs.client_config();
    for clients in CLIENTS {
        let cpu0 = cpu_us(inj.pid()).expect("read the injector's CPU time");
        let start = Instant::now();
        let end = start + Duration::from_secs(seconds);
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let (cfg, body, port) = (cfg.clone(), body.clone(), inj.port);
                std::thread::spawn(move || {
                    let mut c = Client::connect_with(port, cfg).unwrap();
                    let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
                    while Instant::now() < end {
                        let t = Instant::now();
                        let (status, _) = c.request("POST", "/mutate", &body);
                        assert_eq!(status, 200);
                        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                    lat
                })
            })
            .collect();
        let mut lat: Vec<u32> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = cpu_us(inj.pid()).expect("read the injector's CPU time") - cpu0;
        lat.sort_unstable();
        let n = lat.len() as f64;
        let key = format!("injector.c{clients}");
        let rate = n / elapsed;
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        println!(
            "{clients:>3} clients: {rate:>8.0} reviews/s  p50 {p50:.3} ms  p99 {p99:.3} ms  injector CPU {:.0} µs/review",
            cpu / n
        );
        f.insert(format!("{key}.reviews_per_s"), rate);
        f.insert(format!("{key}.p50_ms"), p50);
        f.insert(format!("{key}.p99_ms"), p99);
        f.insert(format!("{key}.cpu_us_per_review"), cpu / n);
    }
    let rss = peak_rss_mib(inj.pid()).expect("read the injector's peak RSS");
    println!("injector peak RSS: {rss:.1} MiB");
    f.insert("injector.peak_rss_mib".into(), rss);
    f
}
