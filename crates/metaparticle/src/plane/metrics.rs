//! Prometheus metrics of one node, served at `GET /metrics`.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::model::identity::Identity;
use crate::state::counters::StateCounters;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

/// The counters one node keeps.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<StatusLabel, Counter>,
    in_flight: Gauge,
    duration: Histogram,
    missing_leaves: Counter,
}

impl Metrics {
    /// Metrics labelled with the node and replica they describe.
    pub(crate) fn new(identity: &Identity) -> Arc<Self> {
        Self::build(identity, None)
    }

    /// [`Metrics::new`] for a node that runs a stateful handler: also its state-update counters
    /// (updates, compare-and-swap retries, updates that gave up).
    pub(crate) fn with_state(identity: &Identity, state: &StateCounters) -> Arc<Self> {
        Self::build(identity, Some(state))
    }

    fn build(identity: &Identity, state: Option<&StateCounters>) -> Arc<Self> {
        let mut registry = Registry::with_prefix_and_labels(
            "metaparticle",
            [
                ("app".into(), identity.app.clone().into()),
                ("node".into(), identity.node.clone().into()),
                ("replica".into(), identity.replica.to_string().into()),
            ]
            .into_iter(),
        );
        let requests = Family::<StatusLabel, Counter>::default();
        let in_flight = Gauge::default();
        let duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register("http_requests", "HTTP requests served, by status", requests.clone());
        registry.register("http_requests_in_flight", "HTTP requests being served", in_flight.clone());
        registry.register("http_request_duration_seconds", "Time to serve a request", duration.clone());
        let missing_leaves = Counter::default();
        registry.register(
            "scatter_missing_leaves",
            "Leaves left out of partial merges",
            missing_leaves.clone(),
        );
        if let Some(state) = state {
            state.register(&mut registry);
        }
        Arc::new(Self { registry, requests, in_flight, duration, missing_leaves })
    }

    /// Marks the start of a request; the guard records it when dropped.
    pub(crate) fn start(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight { metrics: self, started: std::time::Instant::now() }
    }

    /// Counts leaves a partial merge went without.
    pub(crate) fn missing_leaves(&self, count: usize) {
        self.missing_leaves.inc_by(count as u64);
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// A request being served.
pub(crate) struct InFlight<'a> {
    metrics: &'a Metrics,
    started: std::time::Instant,
}

impl InFlight<'_> {
    /// Records the request's outcome.
    pub(crate) fn finish(self, status: u16) {
        self.metrics.requests.get_or_create(&StatusLabel { status }).inc();
        self.metrics.duration.observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}
