//! The state counters of one node replica, served in its `/metrics`.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::contention::Contention;

/// Counters of one replica's state updates. Clones share the same counts, so every worker
/// thread of a replica adds to the one set its `/metrics` reports.
#[derive(Clone, Debug)]
pub(crate) struct StateCounters {
    pub(crate) requests: Counter,
    pub(crate) commits: Counter,
    pub(crate) retries: Counter,
    pub(crate) gave_up: Counter,
    pub(crate) group_size: Histogram,
    /// The lost swaps behind `retries`, to warn when they show a key's requests reaching several
    /// replicas.
    contention: Arc<Contention>,
}

impl Default for StateCounters {
    fn default() -> Self {
        Self {
            requests: Counter::default(),
            commits: Counter::default(),
            retries: Counter::default(),
            gave_up: Counter::default(),
            // Groups of 1, 2, 4, ... 64 requests (the largest group a replica forms).
            group_size: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            contention: Arc::default(),
        }
    }
}

/// How many state updates one node's replicas ran, committed, retried and gave up, since they
/// started; see [`crate::testing::TestApp::state_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateStats {
    /// Requests that ran a stateful handler.
    pub requests: u64,
    /// Groups of requests that were stored with one compare-and-swap (or needed no write).
    pub commits: u64,
    /// Groups run again because another writer won the compare-and-swap.
    pub retries: u64,
    /// Requests that gave up with `-32002`.
    pub gave_up: u64,
}

impl std::ops::Add for StateStats {
    type Output = StateStats;
    fn add(self, other: StateStats) -> StateStats {
        StateStats {
            requests: self.requests + other.requests,
            commits: self.commits + other.commits,
            retries: self.retries + other.retries,
            gave_up: self.gave_up + other.gave_up,
        }
    }
}

impl StateCounters {
    /// Counts a group run again because its swap on `key` lost to another writer, and says so in
    /// the log when such losses show that the key's requests reach several replicas (at most once
    /// a minute; see [`super::contention`]).
    pub(crate) fn lost_swap(&self, key: &str) {
        self.retries.inc();
        if let Some(warning) = self.contention.lost(key) {
            tracing::warn!("{warning}");
        }
    }

    /// The counts now.
    pub(crate) fn stats(&self) -> StateStats {
        StateStats {
            requests: self.requests.get(),
            commits: self.commits.get(),
            retries: self.retries.get(),
            gave_up: self.gave_up.get(),
        }
    }

    /// Adds the counters to a node's metrics registry.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register("state_updates", "Requests that ran a stateful handler", self.requests.clone());
        registry.register(
            "state_commits",
            "Groups of requests stored with one compare-and-swap (or that changed nothing)",
            self.commits.clone(),
        );
        registry.register(
            "state_retries",
            "Groups run again because another writer won the compare-and-swap",
            self.retries.clone(),
        );
        registry.register("state_conflicts", "Requests that gave up with -32002", self.gave_up.clone());
        registry.register(
            "state_group_size",
            "Requests applied one after another and committed together",
            self.group_size.clone(),
        );
    }
}
