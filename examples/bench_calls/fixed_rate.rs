//! An open-loop HTTP load generator: requests at a fixed rate, whatever the server's speed.
//!
//! A closed loop (each connection sends its next request when the last answer arrives, as `wrk`
//! does) slows down with the server and so hides the latency of requests that would have queued;
//! at a fixed rate each request is released on schedule, and its latency is counted from its
//! release, waiting for a free connection included, so a stall shows in the percentiles of every
//! request it delayed (coordinated omission, as wrk2 corrects it). Bounded: exactly
//! `rate × duration` requests are released.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

/// What a fixed-rate run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latencies {
    /// Median latency from each request's release.
    pub p50: Duration,
    /// 99th percentile latency from each request's release.
    pub p99: Duration,
    /// Requests answered with a 2xx per second of the run.
    pub rps: f64,
    /// Requests that failed (connection error or a status other than 2xx).
    pub errors: u64,
}

/// POSTs `body` to `address` at `rate` requests per second for `duration`, over at most
/// `connections` kept-alive connections (a request waits for a free one, and that wait counts).
pub async fn run(
    address: &str,
    body: &'static str,
    rate: u32,
    duration: Duration,
    connections: usize,
) -> Latencies {
    let (schedule, queue) = mpsc::unbounded_channel::<Instant>();
    let queue = Arc::new(Mutex::new(queue));
    let workers: Vec<_> =
        (0..connections).map(|_| tokio::spawn(worker(address.to_string(), body, queue.clone()))).collect();
    let period = Duration::from_secs(1) / rate;
    let total = u64::from(rate) * duration.as_secs();
    let start = Instant::now() + Duration::from_millis(10);
    for i in 0..total {
        tokio::time::sleep_until(start + period * i as u32).await;
        // Counted from when the timer let it go, not from the ideal time: the timer's own
        // lateness (up to a millisecond) is the generator's, not the server's. A server that
        // falls behind still shows, in the time a request waits for a free connection.
        if schedule.send(Instant::now()).is_err() {
            break;
        }
    }
    drop(schedule);
    let mut latencies = Vec::with_capacity(total as usize);
    let mut errors = 0;
    for worker in workers {
        let (mut done, failed) = worker.await.expect("a load worker");
        latencies.append(&mut done);
        errors += failed;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pick = |q: f64| crate::percentile::percentile(&latencies, q).unwrap_or_default();
    Latencies { p50: pick(0.50), p99: pick(0.99), rps: latencies.len() as f64 / elapsed, errors }
}

/// Takes release times from the queue and sends one request for each over its own connection.
async fn worker(
    address: String,
    body: &'static str,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>,
) -> (Vec<Duration>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut sender = None;
    loop {
        let Some(released) = queue.lock().await.recv().await else { break };
        if sender.is_none() {
            sender = connect(&address).await;
        }
        let Some(connection) = sender.as_mut() else {
            errors += 1;
            continue;
        };
        let request = Request::post("/")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("a valid request");
        match connection.send_request(request).await {
            Ok(response) if response.status().is_success() => match response.into_body().collect().await {
                Ok(_) => latencies.push(released.elapsed()),
                Err(_) => {
                    errors += 1;
                    sender = None;
                }
            },
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                sender = None;
            }
        }
    }
    (latencies, errors)
}

async fn connect(address: &str) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    Some(sender)
}
