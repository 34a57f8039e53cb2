//! Reading a node's `GET /metrics` as Prometheus would: the text, and one counter summed over
//! its label sets. Benches use it for what a node in another process counts. Only loopback
//! addresses the bench deployed itself are asked.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A scrape that takes longer than this is given up: the bench goes on without its counters.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The body of `GET /metrics` at `address` (`host:port`), or `None` if it could not be read in
/// time.
pub async fn metrics(address: &str) -> Option<String> {
    tokio::time::timeout(SCRAPE_TIMEOUT, async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    })
    .await
    .ok()?
}

/// Counter `name` in metrics `text`, summed over its label sets; `None` if no series has it.
pub fn total(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
