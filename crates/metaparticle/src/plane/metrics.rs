//! Prometheus metrics of one node replica, served at `GET /metrics` in Prometheus's text format
//! (which `promtool check metrics` accepts; the tests run it on every node).
//!
//! Names follow Prometheus's conventions: a `metaparticle_` prefix, base units in the name
//! (`_seconds`), `_total` on counters, and the replica as labels on every series (`app`, `node`,
//! `replica`), so that one scrape of many nodes stays apart:
//!
//! | metric | type | what |
//! |---|---|---|
//! | `metaparticle_rpc_requests_total{outcome}` | counter | JSON-RPC requests served (`POST /`); `outcome` is `ok` or `error` (the answer holds a JSON-RPC error) |
//! | `metaparticle_rpc_errors_total{code}` | counter | JSON-RPC errors answered, by error code (the first, for a batch) |
//! | `metaparticle_rpc_request_duration_seconds` | histogram | time to serve a JSON-RPC request |
//! | `metaparticle_rpc_requests_in_flight` | gauge | JSON-RPC requests being served now |
//! | `metaparticle_http_requests_total{code}` | counter | every HTTP request answered (also `/healthz`, `/metrics`), by status |
//! | `metaparticle_upstream_requests_total{upstream}` | counter | attempts of hops to another node (`upstream`: its name) |
//! | `metaparticle_upstream_retries_total{upstream}` | counter | attempts sent to another replica after one failed |
//! | `metaparticle_upstream_errors_total{upstream,reason}` | counter | failed attempts: `not_sent`, `failed` (no answer), `timeout`, `too_large` |
//! | `metaparticle_scatter_missing_leaves_total` | counter | leaves left out of partial merges |
//! | `metaparticle_state_*` | | a stateful node's updates, commits, retries and give-ups ([`crate::state::counters`]) |
//! | `metaparticle_trace_spans_exported_total`, `..._dropped_total` | counter | spans sent to the OTLP receiver, and lost (only while tracing) |
//! | `process_start_time_seconds` | gauge | when the process started: a restart shows as a change (`changes(process_start_time_seconds[1h])`) |

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::trace::tracer::SpanCounters;
use crate::model::identity::Identity;
use crate::state::counters::StateCounters;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcCodeLabel {
    code: i64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabel {
    upstream: String,
    reason: &'static str,
}

/// What became of an attempt of a hop that got no usable answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HopOutcome {
    /// The request never reached the replica (connect failed): safe to send elsewhere.
    NotSent,
    /// Sent, but no complete answer came back.
    Failed,
    /// No answer within the hop's time.
    Timeout,
    /// An answer over the size limit.
    TooLarge,
}

impl HopOutcome {
    /// The label value (and span attribute) naming it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HopOutcome::NotSent => "not_sent",
            HopOutcome::Failed => "failed",
            HopOutcome::Timeout => "timeout",
            HopOutcome::TooLarge => "too_large",
        }
    }
}

/// One upstream's counters, looked up once when its pool is made (a hop then only adds).
#[derive(Clone, Debug)]
pub(crate) struct UpstreamCounters {
    /// Attempts sent.
    pub(crate) requests: Counter,
    /// Attempts sent again after a failed one.
    pub(crate) retries: Counter,
    errors: [Counter; 4],
}

impl UpstreamCounters {
    /// The counter of failed attempts that ended as `outcome`.
    pub(crate) fn errors(&self, outcome: HopOutcome) -> &Counter {
        &self.errors[outcome as usize]
    }
}

/// The counters one node replica keeps.
pub(crate) struct Metrics {
    registry: Registry,
    /// Metrics whose names have no `metaparticle_` prefix (Prometheus's own `process_*`).
    unprefixed: Registry,
    http: Family<CodeLabel, Counter>,
    http_ok: Counter,
    rpc_ok: Counter,
    rpc_error: Counter,
    rpc_errors: Family<RpcCodeLabel, Counter>,
    in_flight: Gauge,
    duration: Histogram,
    missing_leaves: Counter,
    upstream_requests: Family<UpstreamLabel, Counter>,
    upstream_retries: Family<UpstreamLabel, Counter>,
    upstream_errors: Family<UpstreamErrorLabel, Counter>,
}

impl Metrics {
    /// Metrics labelled with the node and replica they describe; a stateful node's also count
    /// its state updates, a tracing node's its spans.
    pub(crate) fn new(
        identity: &Identity,
        state: Option<&StateCounters>,
        spans: Option<&SpanCounters>,
    ) -> Arc<Self> {
        let labels = [
            ("app".into(), identity.app.clone().into()),
            ("node".into(), identity.node.clone().into()),
            ("replica".into(), identity.replica.to_string().into()),
        ];
        let mut registry = Registry::with_prefix_and_labels("metaparticle", labels.clone().into_iter());
        let mut unprefixed = Registry::with_labels(labels.into_iter());
        let http = Family::<CodeLabel, Counter>::default();
        let rpc = Family::<OutcomeLabel, Counter>::default();
        let rpc_errors = Family::<RpcCodeLabel, Counter>::default();
        let in_flight = Gauge::default();
        let duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register(
            "rpc_requests",
            "JSON-RPC requests served, by outcome (ok, or an error answered)",
            rpc.clone(),
        );
        registry.register("rpc_errors", "JSON-RPC errors answered, by error code", rpc_errors.clone());
        registry.register(
            "rpc_request_duration_seconds",
            "Time to serve a JSON-RPC request",
            duration.clone(),
        );
        registry.register("rpc_requests_in_flight", "JSON-RPC requests being served", in_flight.clone());
        registry.register(
            "http_requests",
            "HTTP requests answered (all paths), by status code",
            http.clone(),
        );
        let upstream_requests = Family::<UpstreamLabel, Counter>::default();
        let upstream_retries = Family::<UpstreamLabel, Counter>::default();
        let upstream_errors = Family::<UpstreamErrorLabel, Counter>::default();
        registry.register(
            "upstream_requests",
            "Attempts of hops to another node, by its name",
            upstream_requests.clone(),
        );
        registry.register(
            "upstream_retries",
            "Attempts sent to another replica after an attempt failed",
            upstream_retries.clone(),
        );
        registry.register(
            "upstream_errors",
            "Attempts of hops that failed: not_sent, failed (no answer), timeout, too_large",
            upstream_errors.clone(),
        );
        let missing_leaves = Counter::default();
        registry.register(
            "scatter_missing_leaves",
            "Leaves left out of partial merges",
            missing_leaves.clone(),
        );
        if let Some(state) = state {
            state.register(&mut registry);
        }
        if let Some(spans) = spans {
            registry.register(
                "trace_spans_exported",
                "Spans the OTLP receiver accepted",
                spans.exported.clone(),
            );
            registry.register(
                "trace_spans_dropped",
                "Spans lost: the export queue was full or the export failed",
                spans.dropped.clone(),
            );
        }
        let started = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        started.set(process_start_time());
        unprefixed.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            started,
        );
        let http_ok = http.get_or_create(&CodeLabel { code: 200 }).clone();
        let rpc_ok = rpc.get_or_create(&OutcomeLabel { outcome: "ok" }).clone();
        let rpc_error = rpc.get_or_create(&OutcomeLabel { outcome: "error" }).clone();
        Arc::new(Self {
            registry,
            unprefixed,
            http_ok,
            http,
            rpc_ok,
            rpc_error,
            rpc_errors,
            in_flight,
            duration,
            missing_leaves,
            upstream_requests,
            upstream_retries,
            upstream_errors,
        })
    }

    /// Counts an HTTP request answered with `code`.
    pub(crate) fn answered(&self, code: u16) {
        if code == 200 {
            self.http_ok.inc();
        } else {
            self.http.get_or_create(&CodeLabel { code }).inc();
        }
    }

    /// Marks the start of a JSON-RPC request; the guard records it when finished or dropped.
    pub(crate) fn start(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight { metrics: self, started: Instant::now() }
    }

    /// The counters of hops to `upstream`.
    pub(crate) fn upstream(&self, upstream: &str) -> UpstreamCounters {
        let label = UpstreamLabel { upstream: upstream.to_string() };
        let error = |outcome: HopOutcome| {
            let label = UpstreamErrorLabel { upstream: upstream.to_string(), reason: outcome.as_str() };
            self.upstream_errors.get_or_create(&label).clone()
        };
        UpstreamCounters {
            requests: self.upstream_requests.get_or_create(&label).clone(),
            retries: self.upstream_retries.get_or_create(&label).clone(),
            errors: [HopOutcome::NotSent, HopOutcome::Failed, HopOutcome::Timeout, HopOutcome::TooLarge]
                .map(error),
        }
    }

    /// Counts leaves a partial merge went without.
    pub(crate) fn missing_leaves(&self, count: usize) {
        self.missing_leaves.inc_by(count as u64);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub(crate) fn render(&self) -> String {
        let mut open_metrics = String::new();
        encode(&mut open_metrics, &self.registry).expect("writing to a String cannot fail");
        encode(&mut open_metrics, &self.unprefixed).expect("writing to a String cannot fail");
        prometheus_text(&open_metrics)
    }
}

/// OpenMetrics text (what prometheus-client writes) as Prometheus's text format 0.0.4, the one
/// `/metrics` is served as: a counter's `# HELP` and `# TYPE` name its samples (`..._total`), not
/// the OpenMetrics family name, and there is no `# EOF`.
fn prometheus_text(open_metrics: &str) -> String {
    let counters: Vec<&str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 16 * counters.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let comment = line
            .strip_prefix("# HELP ")
            .map(|rest| ("# HELP ", rest))
            .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("# TYPE ", rest)));
        match comment {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix =
                    if counters.contains(&name) && !name.ends_with("_total") { "_total" } else { "" };
                out.push_str(&format!("{kind}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// When this process started, in seconds since the Unix epoch (the kernel's record of it, so a
/// node built late in the process's life still tells the truth).
fn process_start_time() -> f64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64());
    let from_proc = || -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may hold spaces and parentheses; fields count from after its last ')'.
        let after = stat.rsplit_once(')')?.1;
        let ticks: f64 = after.split_whitespace().nth(19)?.parse().ok()?;
        let uptime: f64 =
            std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let now = now.as_ref().ok()?;
        (hz > 0.0).then(|| now - uptime + ticks / hz)
    };
    from_proc().or(now.ok()).map(|t| t.floor()).unwrap_or_default()
}

/// A JSON-RPC request being served.
pub(crate) struct InFlight<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl InFlight<'_> {
    /// Records the request's outcome: `error` is the JSON-RPC error code its answer holds.
    pub(crate) fn finish(self, error: Option<i64>) {
        match error {
            None => {
                self.metrics.rpc_ok.inc();
            }
            Some(code) => {
                self.metrics.rpc_error.inc();
                self.metrics.rpc_errors.get_or_create(&RpcCodeLabel { code }).inc();
            }
        }
        self.metrics.duration.observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity { app: "demo".into(), node: "svc".into(), replica: 2, hostname: "svc-2".into() }
    }

    #[test]
    fn counters_are_named_by_their_samples_and_every_series_names_its_replica() {
        let metrics = Metrics::new(&identity(), None, None);
        metrics.answered(200);
        metrics.start().finish(Some(-32601));
        metrics.upstream("svc.replica").errors(HopOutcome::NotSent).inc();
        let text = metrics.render();
        assert!(text.contains("# TYPE metaparticle_rpc_requests_total counter\n"), "{text}");
        assert!(text.contains("# HELP metaparticle_rpc_requests_total JSON-RPC"), "{text}");
        assert!(!text.contains("# EOF"));
        assert!(text
            .contains(r#"metaparticle_rpc_errors_total{app="demo",node="svc",replica="2",code="-32601"} 1"#));
        assert!(text.contains(
            r#"metaparticle_upstream_errors_total{app="demo",node="svc",replica="2",upstream="svc.replica",reason="not_sent"} 1"#
        ));
        assert!(text.contains("# TYPE process_start_time_seconds gauge\n"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains(r#"replica="2""#), "{line}");
        }
    }

    #[test]
    fn the_process_started_before_now_and_not_long_ago() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let started = process_start_time();
        assert!(started <= now && started > now - 24.0 * 3600.0, "{started} vs {now}");
    }
}
