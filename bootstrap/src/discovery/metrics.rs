//! Prometheus metrics of the discovery server (`/metrics`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub path: String,
    pub code: u16,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    keys: Gauge,
    refreshes: Counter,
    refresh_errors: Counter,
    refresh_millis: Gauge,
    connections_refused: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            requests: Family::default(),
            keys: Gauge::default(),
            refreshes: Counter::default(),
            refresh_errors: Counter::default(),
            refresh_millis: Gauge::default(),
            connections_refused: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "jss_discovery_requests",
            "Requests answered, by path and status",
            m.requests.clone(),
        );
        registry.register(
            "jss_discovery_jwks_keys",
            "Keys in the served JWKS",
            m.keys.clone(),
        );
        registry.register(
            "jss_discovery_registry_reads",
            "Successful reads of the node registry",
            m.refreshes.clone(),
        );
        registry.register(
            "jss_discovery_registry_read_errors",
            "Failed reads of the node registry (the last good JWKS stays served)",
            m.refresh_errors.clone(),
        );
        registry.register(
            "jss_discovery_registry_read_milliseconds",
            "Duration of the last successful registry read",
            m.refresh_millis.clone(),
        );
        registry.register(
            "jss_discovery_connections_refused",
            "Connections closed at accept because --max-connections were open",
            m.connections_refused.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts a request to `path` (unknown paths as one label).
    pub fn request(&self, path: &str, code: u16) {
        let path = match path {
            "/keys" | "/.well-known/openid-configuration" | "/metrics" | "/healthz" => path,
            _ => "other",
        };
        self.requests
            .get_or_create(&RequestLabels {
                path: path.to_string(),
                code,
            })
            .inc();
    }

    pub fn refreshed(&self, keys: usize, took: Duration) {
        self.refreshes.inc();
        self.keys.set(i64::try_from(keys).unwrap_or(i64::MAX));
        self.refresh_millis
            .set(i64::try_from(took.as_millis()).unwrap_or(i64::MAX));
    }

    pub fn refresh_failed(&self) {
        self.refresh_errors.inc();
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
