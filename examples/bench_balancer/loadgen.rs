//! A closed-loop HTTP load generator: `connections` keep-alive connections, each sending the next
//! request as soon as the previous answer arrives, for a fixed time. Used when `wrk` is absent.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// What one measurement found.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Successful requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Requests that failed (connection error or non-200).
    pub errors: u64,
    /// Which generator measured it.
    pub tool: &'static str,
}

/// Whether this process runs the bench: not a node or a supervisor of the app (their
/// environment says so), and not one of the program's own commands (`up`, `delete`, ...).
pub fn runs_the_bench(args: &[String]) -> bool {
    let deployed = std::env::var_os("MP_NODE").is_some() || std::env::var_os("MP_SUPERVISE").is_some();
    !deployed && args.first().is_none_or(|a| a == "bench")
}

/// `wrk` where it is installed, else [`run`] on `runtime`.
pub fn measure(
    runtime: &tokio::runtime::Runtime,
    address: &str,
    body: &'static str,
    connections: usize,
    duration: Duration,
) -> Stats {
    wrk(address, body, connections, duration)
        .unwrap_or_else(|| runtime.block_on(run(address, body, connections, duration)))
}

/// Drives `address` with POSTs of `body` over `connections` connections for `duration`.
pub async fn run(address: &str, body: &'static str, connections: usize, duration: Duration) -> Stats {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let address = address.to_string();
            tokio::spawn(async move { one_connection(&address, body, deadline).await })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut l, e) = task.await.expect("load task");
        latencies.append(&mut l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pick = |q: f64| crate::percentile::percentile(&latencies, q).unwrap_or_default();
    Stats {
        rps: latencies.len() as f64 / elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
        errors,
        tool: "built-in",
    }
}

async fn one_connection(address: &str, body: &'static str, deadline: Instant) -> (Vec<Duration>, u64) {
    let mut latencies = Vec::with_capacity(100_000);
    let mut errors = 0;
    'reconnect: while Instant::now() < deadline {
        let Ok(stream) = tokio::net::TcpStream::connect(address).await else {
            errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            errors += 1;
            continue;
        };
        tokio::spawn(connection);
        while Instant::now() < deadline {
            let request = Request::post("/")
                .header("host", "localhost")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .expect("valid request");
            let sent = Instant::now();
            match sender.send_request(request).await {
                Ok(response) if response.status().is_success() => {
                    if response.into_body().collect().await.is_err() {
                        errors += 1;
                        continue 'reconnect;
                    }
                    latencies.push(sent.elapsed());
                }
                Ok(_) => errors += 1,
                Err(_) => {
                    errors += 1;
                    continue 'reconnect;
                }
            }
        }
    }
    (latencies, errors)
}

/// Runs `wrk` if it is installed; `None` otherwise.
pub fn wrk(address: &str, body: &str, connections: usize, duration: Duration) -> Option<Stats> {
    let script = std::env::temp_dir().join(format!("mp-bench-{}.lua", std::process::id()));
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [[{body}]]\n"
    );
    std::fs::write(&script, lua).ok()?;
    let output = std::process::Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{}s", duration.as_secs()), "--latency", "-s"])
        .arg(&script)
        .arg(format!("http://{address}/"))
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| {
        text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|rest| rest.trim().to_string()))
    };
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .flat_map(|l| l.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()))
        .sum();
    Some(Stats {
        rps: field("Requests/sec:")?.parse().ok()?,
        p50: parse_wrk_duration(&field("50%")?)?,
        p99: parse_wrk_duration(&field("99%")?)?,
        errors,
        tool: "wrk",
    })
}

fn parse_wrk_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}
