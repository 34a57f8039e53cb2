//! Reading a node's `/metrics` as the dashboard needs it, and turning two readings into rates:
//! requests and errors per second, and latency quantiles of the requests in between (as
//! Prometheus's `rate` and `histogram_quantile` would over the same window).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The figures of one reading of a node's `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Reading {
    /// JSON-RPC requests served so far.
    pub(crate) requests: f64,
    /// ... of which answered with an error.
    pub(crate) errors: f64,
    /// Requests being served now.
    pub(crate) in_flight: f64,
    /// The latency histogram's cumulative buckets: (upper bound in seconds, count).
    pub(crate) buckets: Vec<(f64, f64)>,
    /// State updates run again after losing a compare-and-swap (only stateful nodes count them).
    pub(crate) state_retries: Option<f64>,
    /// Failed attempts of hops to other nodes.
    pub(crate) upstream_errors: f64,
    /// When the process started (seconds since the epoch).
    pub(crate) started: Option<f64>,
}

/// `GET path` on a node, over a fresh connection: the status and body, or why not.
pub(crate) async fn get(address: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        // A node's metrics are a few kilobytes; anything far larger is not one of ours.
        stream.take(8 * 1024 * 1024).read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&answer);
        let status = answer.get(9..12).and_then(|s| s.parse().ok()).ok_or("not an HTTP answer")?;
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// The figures of Prometheus text the dashboard shows; `None` if it holds no JSON-RPC metrics
/// (a program's own HTTP server, say).
pub(crate) fn parse(text: &str) -> Option<Reading> {
    let mut reading = Reading::default();
    let mut found = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        match name {
            "metaparticle_rpc_requests_total" => {
                found = true;
                reading.requests += value;
                if label(labels, "outcome") == Some("error") {
                    reading.errors += value;
                }
            }
            "metaparticle_rpc_requests_in_flight" => reading.in_flight = value,
            "metaparticle_rpc_request_duration_seconds_bucket" => {
                let bound = match label(labels, "le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => le.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                reading.buckets.push((bound, value));
            }
            "metaparticle_state_retries_total" => reading.state_retries = Some(value),
            "metaparticle_upstream_errors_total" => reading.upstream_errors += value,
            "process_start_time_seconds" => reading.started = Some(value),
            _ => {}
        }
    }
    reading.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    found.then_some(reading)
}

/// The value of label `name` in `a="1",b="2"}`.
fn label<'t>(labels: &'t str, name: &str) -> Option<&'t str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &labels[start..];
    Some(&rest[..rest.find('"')?])
}

/// What happened between two readings of one replica.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Rates {
    /// JSON-RPC requests per second.
    pub(crate) requests_per_s: f64,
    /// ... answered with an error, per second.
    pub(crate) errors_per_s: f64,
    /// Median latency of the requests in between, in milliseconds (`None`: there were none).
    pub(crate) p50_ms: Option<f64>,
    /// 99th percentile latency.
    pub(crate) p99_ms: Option<f64>,
    /// State updates retried per second (`None` for a node without state).
    pub(crate) state_retries_per_s: Option<f64>,
    /// Failed hop attempts per second.
    pub(crate) upstream_errors_per_s: f64,
}

/// The rates from `old` to `new` (taken `elapsed` apart). A restart in between (counters went
/// down) counts from zero, as Prometheus's `rate` does.
pub(crate) fn rates(old: &Reading, new: &Reading, elapsed: Duration) -> Rates {
    let seconds = elapsed.as_secs_f64().max(1e-3);
    let restarted = new.started != old.started || new.requests < old.requests;
    let delta = |new: f64, old: f64| if restarted || new < old { new } else { new - old };
    let buckets: Vec<(f64, f64)> = new
        .buckets
        .iter()
        .map(|&(bound, count)| {
            let before = old.buckets.iter().find(|(b, _)| *b == bound).map_or(0.0, |(_, c)| *c);
            (bound, delta(count, before))
        })
        .collect();
    Rates {
        requests_per_s: delta(new.requests, old.requests) / seconds,
        errors_per_s: delta(new.errors, old.errors) / seconds,
        p50_ms: quantile(&buckets, 0.50).map(|s| s * 1e3),
        p99_ms: quantile(&buckets, 0.99).map(|s| s * 1e3),
        state_retries_per_s: new.state_retries.map(|n| delta(n, old.state_retries.unwrap_or(0.0)) / seconds),
        upstream_errors_per_s: delta(new.upstream_errors, old.upstream_errors) / seconds,
    }
}

/// The `q` quantile of cumulative `buckets`, interpolated linearly within its bucket (as
/// `histogram_quantile` does); `None` without observations.
pub(crate) fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(upper, count) in buckets {
        if count >= rank {
            if upper.is_infinite() {
                // Past the last finite bound nothing more is known than that bound.
                return Some(lower);
            }
            let share = if count > below { (rank - below) / (count - below) } else { 1.0 };
            return Some(lower + (upper - lower) * share);
        }
        (lower, below) = (upper, count);
    }
    Some(lower)
}

/// A replica's recent readings, enough to compute rates over a window of a few seconds.
#[derive(Debug, Default)]
pub(crate) struct History {
    readings: std::collections::VecDeque<(Instant, Reading)>,
}

impl History {
    /// Keeps `reading` taken at `at`, forgetting those older than `window` (but one).
    pub(crate) fn push(&mut self, at: Instant, reading: Reading, window: Duration) {
        self.readings.push_back((at, reading));
        while self.readings.len() > 2 && at.duration_since(self.readings[1].0) >= window {
            self.readings.pop_front();
        }
    }

    /// Rates over the window, from the oldest reading kept to the newest.
    pub(crate) fn rates(&self) -> Option<Rates> {
        let (first, last) = (self.readings.front()?, self.readings.back()?);
        (self.readings.len() > 1).then(|| rates(&first.1, &last.1, last.0.duration_since(first.0)))
    }

    /// The newest reading.
    pub(crate) fn latest(&self) -> Option<&Reading> {
        self.readings.back().map(|(_, r)| r)
    }

    /// Forgets every reading (the replica stopped answering).
    pub(crate) fn clear(&mut self) {
        self.readings.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP metaparticle_rpc_requests_total JSON-RPC requests served
# TYPE metaparticle_rpc_requests_total counter
metaparticle_rpc_requests_total{app="a",node="n",replica="0",outcome="ok"} 90
metaparticle_rpc_requests_total{app="a",node="n",replica="0",outcome="error"} 10
metaparticle_rpc_requests_in_flight{app="a",node="n",replica="0"} 2
metaparticle_rpc_request_duration_seconds_bucket{app="a",node="n",replica="0",le="0.001"} 50
metaparticle_rpc_request_duration_seconds_bucket{app="a",node="n",replica="0",le="0.002"} 100
metaparticle_rpc_request_duration_seconds_bucket{app="a",node="n",replica="0",le="+Inf"} 100
process_start_time_seconds{app="a",node="n",replica="0"} 1700000000
"#;

    #[test]
    fn a_nodes_metrics_read_as_totals_and_buckets() {
        let r = parse(TEXT).unwrap();
        assert_eq!((r.requests, r.errors, r.in_flight), (100.0, 10.0, 2.0));
        assert_eq!(r.buckets, vec![(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)]);
        assert_eq!(r.started, Some(1.7e9));
        assert_eq!(parse("# nothing of ours\nother_total 5\n"), None);
    }

    #[test]
    fn rates_count_only_what_happened_in_between_and_a_restart_from_zero() {
        let old = parse(TEXT).unwrap();
        let mut new = old.clone();
        new.requests += 20.0;
        new.errors += 2.0;
        new.buckets = vec![(0.001, 50.0), (0.002, 120.0), (f64::INFINITY, 120.0)];
        let r = rates(&old, &new, Duration::from_secs(2));
        assert_eq!((r.requests_per_s, r.errors_per_s), (10.0, 1.0));
        let p50 = r.p50_ms.unwrap();
        assert!((1.0..=2.0).contains(&p50), "all 20 new requests took 1-2 ms: {p50}");
        let restarted = Reading { started: Some(1.8e9), requests: 5.0, ..Reading::default() };
        assert_eq!(rates(&old, &restarted, Duration::from_secs(1)).requests_per_s, 5.0);
    }

    #[test]
    fn only_a_stateful_node_has_a_rate_of_state_retries() {
        let stateless = parse(TEXT).unwrap();
        assert_eq!(rates(&stateless, &stateless, Duration::from_secs(1)).state_retries_per_s, None);
        let stateful =
            format!("{TEXT}metaparticle_state_retries_total{{app=\"a\",node=\"n\",replica=\"0\"}} 30\n");
        let old = parse(&stateful).unwrap();
        assert_eq!(old.state_retries, Some(30.0));
        let new = Reading { state_retries: Some(36.0), ..old.clone() };
        assert_eq!(rates(&old, &new, Duration::from_secs(2)).state_retries_per_s, Some(3.0));
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket_as_prometheus_does() {
        let buckets = [(0.1, 0.0), (0.2, 100.0), (f64::INFINITY, 100.0)];
        assert!((quantile(&buckets, 0.5).unwrap() - 0.15).abs() < 1e-9);
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(quantile(&[(0.1, 1.0), (f64::INFINITY, 10.0)], 0.99), Some(0.1));
    }

    #[test]
    fn history_keeps_a_window_and_rates_span_it() {
        let mut history = History::default();
        let start = Instant::now();
        for i in 0..10u32 {
            let reading = Reading { requests: f64::from(i * 10), ..Reading::default() };
            history.push(start + Duration::from_secs(u64::from(i)), reading, Duration::from_secs(5));
        }
        let r = history.rates().unwrap();
        assert!((r.requests_per_s - 10.0).abs() < 1e-9, "{r:?}");
        assert!(history.readings.len() <= 7);
    }
}
