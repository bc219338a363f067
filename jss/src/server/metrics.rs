//! Prometheus metrics for `/metrics`.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::kubelet::PodSource;
use crate::signer::QueueStats;

/// The gauge of the daemon's token life in seconds, as it appears in the
/// text exposition (no suffix: a gauge).
pub const TOKEN_TTL_METRIC: &str = "jss_token_ttl_seconds";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub tokens_issued: Counter,
    pub cache_hits: Counter,
    pub denials: Family<ReasonLabel, Counter>,
    /// Failed signatures by `SignerError::reason` (`pcr_mismatch`, …).
    pub signer_errors: Family<ReasonLabel, Counter>,
    pub request_seconds: Histogram,
    pub refreshes: Counter,
    pub refreshes_late: Counter,
}

/// Reads the pod source's own counters at scrape time.
struct KubeletFetches(Arc<dyn PodSource>);

impl std::fmt::Debug for KubeletFetches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeletFetches")
    }
}

impl Collector for KubeletFetches {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        for (name, help, n) in [
            (
                "jss_kubelet_fetches",
                "Pod list fetches from the kubelet",
                stats.fetches,
            ),
            (
                "jss_kubelet_pods_skipped",
                "Pod list items skipped: not pod objects, or without a UID, name or namespace",
                stats.pods_skipped,
            ),
        ] {
            let c = ConstCounter::new(n);
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// `pid_guard`: which PID-reuse guard this kernel allows (`pidfd` or
    /// `start_time`); `token_ttl_seconds`: the configured token life, which
    /// `jss-bootstrap node register --rotate` reads to know when an old
    /// key's last tokens expire.
    pub fn new(
        pods: Arc<dyn PodSource>,
        pid_guard: &'static str,
        signing: Arc<QueueStats>,
        token_ttl_seconds: u64,
    ) -> Self {
        let mut registry = Registry::default();
        let tokens_issued = Counter::default();
        let cache_hits = Counter::default();
        let denials = Family::<ReasonLabel, Counter>::default();
        let signer_errors = Family::<ReasonLabel, Counter>::default();
        let (refreshes, refreshes_late) = (Counter::default(), Counter::default());
        // 100 µs .. ~3.3 s
        let request_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "jss_tokens_issued",
            "Tokens returned to callers (cached or new)",
            tokens_issued.clone(),
        );
        registry.register(
            "jss_cache_hits",
            "Tokens served from the cache",
            cache_hits.clone(),
        );
        registry.register(
            "jss_denials",
            "Requests refused, by reason",
            denials.clone(),
        );
        registry.register(
            "jss_signer_errors",
            "Failed signing operations, by reason",
            signer_errors.clone(),
        );
        registry.register(
            "jss_request_duration_seconds",
            "Token request latency",
            request_seconds.clone(),
        );
        registry.register(
            "jss_pid_reuse_guard",
            "How callers are told apart from later processes with the same pid",
            Info::new(vec![("guard", pid_guard)]),
        );
        registry.register(
            TOKEN_TTL_METRIC,
            "How long the tokens this daemon signs live (its token_ttl_seconds)",
            ConstGauge::new(i64::try_from(token_ttl_seconds).unwrap_or(i64::MAX)),
        );
        registry.register_collector(Box::new(KubeletFetches(pods)));
        registry.register(
            "jss_sign_duration_seconds",
            "Time one signature took in the signer (the TPM's round trip included)",
            signing.sign_seconds.clone(),
        );
        registry.register(
            "jss_sign_queue_wait_seconds",
            "Time a signature waited for the signer (callers and refreshes)",
            signing.wait_seconds.clone(),
        );
        registry.register(
            "jss_sign_queue_depth",
            "Signatures waiting for the signer now",
            signing.depth.clone(),
        );
        registry.register(
            "jss_refreshes",
            "Tokens re-signed ahead of need for workloads that asked recently",
            refreshes.clone(),
        );
        registry.register(
            "jss_refreshes_late",
            "Refreshes done after the old token's half-life (a caller may have waited)",
            refreshes_late.clone(),
        );
        Self {
            registry,
            tokens_issued,
            cache_hits,
            denials,
            signer_errors,
            request_seconds,
            refreshes,
            refreshes_late,
        }
    }

    pub fn deny(&self, reason: &str) {
        self.denials
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn signer_error(&self, reason: &str) {
        self.signer_errors
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
