//! Prometheus metrics for `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::mutate::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reviews: Family<OutcomeLabel, Counter>,
    bad_requests: Counter,
    review_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reviews = Family::<OutcomeLabel, Counter>::default();
        let bad_requests = Counter::default();
        // 25 µs .. ~0.8 s
        let review_seconds = Histogram::new(exponential_buckets(0.000_025, 2.0, 16));
        registry.register(
            "jss_injector_reviews",
            "Admission reviews answered, by outcome (ignored, unchanged, patched, refused)",
            reviews.clone(),
        );
        registry.register(
            "jss_injector_bad_requests",
            "Requests to /mutate answered 400 (not an AdmissionReview, over 3 MiB)",
            bad_requests.clone(),
        );
        registry.register(
            "jss_injector_review_duration_seconds",
            "Time from the whole body read to the answer built",
            review_seconds.clone(),
        );
        Self {
            registry,
            reviews,
            bad_requests,
            review_seconds,
        }
    }

    pub fn review(&self, outcome: Outcome, seconds: f64) {
        self.reviews
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
        self.review_seconds.observe(seconds);
    }

    pub fn bad_request(&self) {
        self.bad_requests.inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
