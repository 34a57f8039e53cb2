//! The state counters of one node replica, served in its `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Counters of one replica's state updates. Clones share the same counts, so every worker
/// thread of a replica adds to the one set its `/metrics` reports.
#[derive(Clone, Debug, Default)]
pub(crate) struct StateCounters {
    pub(crate) requests: Counter,
    pub(crate) retries: Counter,
    pub(crate) gave_up: Counter,
}

/// How many state updates one node's replicas ran, retried and gave up, since they started; see
/// [`crate::testing::TestApp::state_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateStats {
    /// Requests that ran a stateful handler.
    pub requests: u64,
    /// Attempts repeated because another writer won the compare-and-swap.
    pub retries: u64,
    /// Requests that gave up with `-32002`.
    pub gave_up: u64,
}

impl StateCounters {
    /// The counts now.
    pub(crate) fn stats(&self) -> StateStats {
        StateStats { requests: self.requests.get(), retries: self.retries.get(), gave_up: self.gave_up.get() }
    }

    /// Adds the counters to a node's metrics registry.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register("state_updates", "Requests that ran a stateful handler", self.requests.clone());
        registry.register(
            "state_retries",
            "Attempts repeated because another writer won the compare-and-swap",
            self.retries.clone(),
        );
        registry.register("state_conflicts", "Requests that gave up with -32002", self.gave_up.clone());
    }
}
