//! Clients that call one exposed service over kept-alive HTTP/1.1 connections, as a well-behaved
//! client library does: a connection is reused until the server's answer says
//! `Connection: close`, and every request, its latency and the version that answered are kept.
//! Any error (refused, reset, cut off, an HTTP or JSON-RPC error) counts as a failed request:
//! nothing is retried.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One request as a client saw it.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was sent, from the load's start.
    pub at: Duration,
    /// How long its answer took.
    pub latency: Duration,
    /// The answer's `result.version`, or the error.
    pub outcome: Result<String, String>,
    /// The answer's `result.server`: the replica that served it (empty for an error).
    pub server: String,
}

/// Clients calling until stopped (or until their time bound).
pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// When the load started.
    pub started: Instant,
}

impl Load {
    /// Starts `clients` threads calling `method` on `address` with `params`, for at most `bound`.
    pub fn start(address: &str, method: &str, params: Value, clients: usize, bound: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let body =
            serde_json::json!({ "jsonrpc": "2.0", "method": method, "params": params, "id": 1 }).to_string();
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let threads = (0..clients)
            .map(|_| {
                let (stop, samples, address, request) =
                    (stop.clone(), samples.clone(), address.to_string(), request.clone());
                std::thread::spawn(move || {
                    let mut connection: Option<BufReader<TcpStream>> = None;
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < bound {
                        let at = started.elapsed();
                        let sent = Instant::now();
                        let answer = call(&mut connection, &address, &request);
                        let server = answer.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
                        let outcome = answer.map(|(version, _)| version);
                        let sample = Sample { at, latency: sent.elapsed(), outcome, server };
                        samples.lock().unwrap().push(sample);
                    }
                })
            })
            .collect();
        Load { stop, samples, threads, started }
    }

    /// Every request so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Waits until some client got an answer from replica `server`, at most `within`.
    pub fn wait_for_answer_from_server(&self, server: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.samples().iter().any(|s| s.server == server) {
            assert!(Instant::now() < deadline, "{server} never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// When the first answer from `version` arrived (from the load's start), waiting for one
    /// at most `within`.
    pub fn first_answer_from(&self, version: &str, within: Duration) -> Duration {
        let deadline = Instant::now() + within;
        loop {
            let samples = self.samples();
            if let Some(s) = samples.iter().find(|s| s.outcome.as_deref() == Ok(version)) {
                return s.at + s.latency;
            }
            assert!(Instant::now() < deadline, "no answer from version {version} within {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the clients and returns every request they made.
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let samples = self.samples.lock().unwrap().clone();
        samples
    }
}

/// One request on the kept-alive connection (opened if there is none): the version and the
/// replica that answered.
fn call(
    connection: &mut Option<BufReader<TcpStream>>,
    address: &str,
    request: &str,
) -> Result<(String, String), String> {
    if connection.is_none() {
        let stream = TcpStream::connect(address).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        *connection = Some(BufReader::new(stream));
    }
    let reader = connection.as_mut().expect("connected above");
    let answer = exchange(reader, request);
    match &answer {
        Ok((_, keep_alive)) if *keep_alive => {}
        _ => *connection = None,
    }
    let (body, _) = answer?;
    let reply: Value = serde_json::from_slice(&body).map_err(|e| format!("not JSON ({e})"))?;
    if let Some(error) = reply.get("error") {
        return Err(format!("JSON-RPC error {error}"));
    }
    let text = |field: &str| reply["result"][field].as_str().unwrap_or_default().to_string();
    Ok((text("version"), text("server")))
}

/// Writes the request, reads the answer: its body and whether the connection may be reused.
fn exchange(reader: &mut BufReader<TcpStream>, request: &str) -> Result<(Vec<u8>, bool), String> {
    reader.get_mut().write_all(request.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut status = String::new();
    if reader.read_line(&mut status).map_err(|e| format!("read: {e}"))? == 0 {
        return Err("the connection closed before an answer".into());
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {}", status.trim()));
    }
    let (mut length, mut keep_alive) = (0usize, true);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| format!("bad length {value}"))?;
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            keep_alive = false;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).map_err(|e| format!("read body: {e}"))?;
    Ok((body, keep_alive))
}

/// The `q` quantile of the latencies of `samples` (0 if there are none).
pub fn quantile(samples: &[&Sample], q: f64) -> Duration {
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort();
    match latencies.len() {
        0 => Duration::ZERO,
        n => latencies[((n as f64 * q).ceil() as usize).clamp(1, n) - 1],
    }
}

/// Panics, naming the first few, if any request of `samples` failed.
pub fn assert_none_failed(samples: &[Sample]) {
    let failed: Vec<String> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().err().map(|e| format!("at {:?}: {e}", s.at)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
}

/// The p99 latency of requests sent in steady state (after the clients' first second, outside
/// every window) and of those sent during the `windows` (from, to), from the load's start.
pub fn p99_steady_and_during(samples: &[Sample], windows: &[(Duration, Duration)]) -> (Duration, Duration) {
    let in_window = |s: &Sample| windows.iter().any(|(from, to)| s.at >= *from && s.at <= *to);
    let steady: Vec<&Sample> =
        samples.iter().filter(|s| s.at > Duration::from_secs(1) && !in_window(s)).collect();
    let during: Vec<&Sample> = samples.iter().filter(|s| in_window(s)).collect();
    (quantile(&steady, 0.99), quantile(&during, 0.99))
}

/// The median and the largest of `durations`.
pub fn median_and_max(mut durations: Vec<Duration>) -> (Duration, Duration) {
    durations.sort();
    match durations.len() {
        0 => (Duration::ZERO, Duration::ZERO),
        n => (durations[n / 2], durations[n - 1]),
    }
}

/// The version `up` or `rollback` says it deployed (`deployed app '...' (...): version V, ...`).
pub fn deployed_version(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("deployed app"))
        .unwrap_or_else(|| panic!("no 'deployed app' line in:\n{stdout}"));
    line.split("version ").nth(1).unwrap().split(',').next().unwrap().to_string()
}
