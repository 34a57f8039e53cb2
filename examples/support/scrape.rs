//! The state counters of deployed nodes, read from their `GET /metrics` as Prometheus would.
//!
//! In-process nodes hand their counters over directly (`TestApp::state_stats`); a deployed node
//! runs in a process of its own, so the bench asks it over HTTP, like any scraper. Only loopback
//! addresses from the app's own deployment record are asked.

use std::time::Duration;

use metaparticle as mp;
use mp::testing::StateStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A scrape that takes longer than this is given up: the bench goes on without its counters.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The state counters of every replica of `node` in deployed app `app`, summed; `None` if the
/// app has no record, the node no replica, or a replica did not answer.
pub async fn deployed_state_stats(app: &str, node: &str) -> Option<StateStats> {
    let deployment = mp::deployments::Deployment::load(app).ok()??;
    let addresses = deployment.book.addresses(node)?.to_vec();
    let mut sum = StateStats::default();
    for address in &addresses {
        let text = tokio::time::timeout(SCRAPE_TIMEOUT, metrics(address)).await.ok()??;
        sum = sum + state_stats(&text);
    }
    Some(sum)
}

/// The body of `GET /metrics` at `address`, or `None` if it could not be read.
async fn metrics(address: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The state counters in one node's metrics text (each a sum over its label sets; absent: 0).
fn state_stats(text: &str) -> StateStats {
    let total = |name: &str| -> u64 {
        text.lines()
            .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    StateStats {
        requests: total("metaparticle_state_updates_total"),
        commits: total("metaparticle_state_commits_total"),
        retries: total("metaparticle_state_retries_total"),
        gave_up: total("metaparticle_state_conflicts_total"),
    }
}
