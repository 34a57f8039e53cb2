//! Benchmark: what tracing costs. Requests/s and p99 latency through server2's topology (a
//! balancer over three replicas) with tracing off, on without export, and on with export to a
//! local OTLP receiver, measured side by side in one run.
//!
//! ```console
//! $ cargo run --release --example bench_tracing                        # 32 connections, 5 s, 5 rounds
//! $ cargo run --release --example bench_tracing -- bench 32 5 5 --baseline /tmp/bench_balancer --port 3910
//! ```
//!
//! | target | environment of its processes |
//! |---|---|
//! | off | no OpenTelemetry variable: a node records nothing and makes no ids |
//! | on, no export | `OTEL_TRACES_EXPORTER=none`: every request gets a trace, log lines carry its id, nothing leaves |
//! | on, export | `OTEL_EXPORTER_OTLP_ENDPOINT` of a receiver in this process: every span is exported |
//! | export 1 in 10 | the same with `OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.1` |
//! | before tracing (optional) | `--baseline BIN`: the same topology deployed by an older build's `bench_balancer` |
//!
//! Requests come without a `traceparent`, so with tracing on every request begins a recorded trace
//! (the default sampler records them all): the worst case. Each round measures every target once,
//! in an order that rotates between rounds; the summary gives medians and the per-round ratios to
//! `off`. Besides requests/s and latency it reports the CPU time the app's processes spent per
//! request (from `/proc`), which a machine shared with other work disturbs less than throughput.
//! Load comes from `wrk` if it is installed, else from a built-in closed-loop generator. The apps
//! are `mp-trace-*` on ports 3910-3914 (`--port` moves them); everything is torn down at the end.

#[path = "bench_balancer/loadgen.rs"]
mod loadgen;
#[path = "support/percentile.rs"]
mod percentile;
#[path = "bench_balancer/report.rs"]
mod report;
#[path = "support/scrape.rs"]
mod scrape;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metaparticle as mp;
use serde_json::{json, Value};

const PORT: u16 = 3910;
const BODY: &str = r#"{"jsonrpc":"2.0","method":"bench-service","params":[{"foo":"bar"}],"id":1}"#;

/// The same handler and topology as `bench_balancer`'s (and server2's).
fn handler(request: Value) -> Value {
    json!({ "request": request, "server": mp::hostname() })
}

fn services() -> Vec<mp::Service> {
    vec![mp::service("bench-service", mp::spread(3, handler)).expose()]
}

fn main() -> mp::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !loadgen::runs_the_bench(&args) {
        return mp::serve(services());
    }
    let number = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let baseline = flag("--baseline");
    let settings = Settings {
        connections: number(1, 32) as usize,
        duration: Duration::from_secs(number(2, 5)),
        rounds: number(3, 5).max(1) as usize,
        port: flag("--port").and_then(|p| p.parse().ok()).unwrap_or(PORT),
    };
    bench(settings, baseline)
}

#[derive(Clone, Copy)]
struct Settings {
    connections: usize,
    duration: Duration,
    rounds: usize,
    /// The first of the four ports the targets are exposed on.
    port: u16,
}

/// One deployed target.
struct Target {
    label: &'static str,
    app: &'static str,
    port: u16,
    binary: String,
    env: Vec<(String, String)>,
}

fn bench(settings: Settings, baseline: Option<String>) -> mp::Result<()> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| mp::Error::io("starting a runtime", e))?;
    let receiver =
        runtime.block_on(Receiver::start()).map_err(|e| mp::Error::io("starting the receiver", e))?;
    let me = std::env::current_exe().map_err(|e| mp::Error::io("finding this binary", e))?;
    let me = me.display().to_string();
    let var = |k: &str, v: &str| (k.to_string(), v.to_string());
    let port = settings.port;
    let mut targets = vec![
        Target { label: "off", app: "mp-trace-off", port, binary: me.clone(), env: vec![] },
        Target {
            label: "on, no export",
            app: "mp-trace-none",
            port: port + 1,
            binary: me.clone(),
            env: vec![var("OTEL_TRACES_EXPORTER", "none")],
        },
        Target {
            label: "on, export",
            app: "mp-trace-otlp",
            port: port + 2,
            binary: me.clone(),
            env: vec![var("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{}", receiver.address))],
        },
        Target {
            label: "export 1 in 10",
            app: "mp-trace-tenth",
            port: port + 3,
            binary: me,
            env: vec![
                var("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{}", receiver.address)),
                var("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                var("OTEL_TRACES_SAMPLER_ARG", "0.1"),
            ],
        },
    ];
    if let Some(binary) = baseline {
        let env = vec![var("MP_BENCH_SHAPE", "spread")];
        targets.push(Target { label: "before tracing", app: "mp-trace-base", port: port + 4, binary, env });
    }
    let mut deployed = Vec::new();
    let mut result = Ok(());
    for target in &targets {
        let status = Command::new(&target.binary)
            .args(["up", "--app", target.app, "--port", &target.port.to_string()])
            .envs(target.env.iter().map(|(k, v)| (k, v)))
            .env_remove("CARGO")
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| mp::Error::io(format!("deploying {}", target.app), e))?;
        if !status.success() {
            result =
                Err(mp::Error::io(format!("deploying {}", target.app), std::io::Error::other("up failed")));
            break;
        }
        deployed.push(target);
    }
    if result.is_ok() {
        measure(&runtime, settings, &targets, &receiver);
    }
    for target in deployed {
        let _ = Command::new(&target.binary)
            .args(["delete", "--app", target.app])
            .stdout(std::process::Stdio::null())
            .status();
    }
    result
}

fn measure(runtime: &tokio::runtime::Runtime, settings: Settings, targets: &[Target], receiver: &Receiver) {
    println!(
        "load: {} connections, {}s per target, {} rounds, POST of {} bytes, no traceparent (every request a new trace)",
        settings.connections,
        settings.duration.as_secs(),
        settings.rounds,
        BODY.len()
    );
    let mut runs: Vec<Vec<loadgen::Stats>> = targets.iter().map(|_| Vec::new()).collect();
    let mut cpu: Vec<Vec<f64>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..settings.rounds {
        println!("round {}", round + 1);
        for k in 0..targets.len() {
            // Rotate which target goes first, so that a drift in the machine's speed favours none.
            let i = (k + round) % targets.len();
            let address = format!("127.0.0.1:{}", targets[i].port);
            let _ = loadgen::measure(runtime, &address, BODY, settings.connections, Duration::from_secs(1));
            let before = cpu_seconds(targets[i].app);
            let stats = loadgen::measure(runtime, &address, BODY, settings.connections, settings.duration);
            let spent = cpu_seconds(targets[i].app) - before;
            let per_request = spent / (stats.rps * settings.duration.as_secs_f64()).max(1.0) * 1e6;
            report::print_row(&format!("  {}", targets[i].label), 20, &stats);
            println!("{:<20} {per_request:>9.1} us of CPU per request in the app's processes", "");
            runs[i].push(stats);
            cpu[i].push(per_request);
        }
    }
    println!("median of {} rounds", settings.rounds);
    let medians: Vec<loadgen::Stats> = runs.iter().map(|r| report::median(r)).collect();
    for (target, stats) in targets.iter().zip(&medians) {
        report::print_row(&format!("  {}", target.label), 20, stats);
    }
    let range = |i: usize, f: fn(&loadgen::Stats) -> f64| {
        let ratios: Vec<f64> = runs[i].iter().zip(&runs[0]).map(|(t, off)| f(t) / f(off)).collect();
        let low = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().cloned().fold(0.0, f64::max);
        format!("rounds {low:.2}-{high:.2}")
    };
    let cpu_median = |i: usize| {
        let mut values = cpu[i].clone();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    for (i, target) in targets.iter().enumerate() {
        println!("  {:<18} {:>9.1} us of CPU per request (median)", target.label, cpu_median(i));
    }
    for (i, target) in targets.iter().enumerate().skip(1) {
        println!(
            "{:<16} / off: requests/s x{:.3} ({}), p99 x{:.2} ({}), CPU per request x{:.3}",
            target.label,
            medians[i].rps / medians[0].rps,
            range(i, |s| s.rps),
            medians[i].p99.as_secs_f64() / medians[0].p99.as_secs_f64(),
            range(i, |s| s.p99.as_secs_f64()),
            cpu_median(i) / cpu_median(0),
        );
    }
    println!(
        "the receiver got {} export requests, {} bytes of spans",
        receiver.exports.load(Ordering::Relaxed),
        receiver.bytes.load(Ordering::Relaxed)
    );
    for target in targets.iter().filter(|t| t.label == "on, export") {
        if let Some((exported, dropped)) = span_counts(runtime, target.port) {
            println!("the balancer of '{}' exported {exported} spans and dropped {dropped}", target.label);
        }
    }
}

/// CPU time (user and system) the processes of `app` have used so far, from `/proc`: its
/// supervisor's status file names them.
fn cpu_seconds(app: &str) -> f64 {
    let status = mp::deployments::app_dir(app).join("status.json");
    let replicas: Vec<Value> =
        std::fs::read(status).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    replicas
        .iter()
        .filter_map(|r| r["pid"].as_u64())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            // utime and stime: fields 14 and 15 of the line, 12 and 13 after the command name.
            Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / hz)
        })
        .sum()
}

/// The front's exported and dropped span counts, from its `/metrics`.
fn span_counts(runtime: &tokio::runtime::Runtime, port: u16) -> Option<(f64, f64)> {
    let text = runtime.block_on(scrape::metrics(&format!("127.0.0.1:{port}")))?;
    Some((
        scrape::total(&text, "metaparticle_trace_spans_exported_total")?,
        scrape::total(&text, "metaparticle_trace_spans_dropped_total")?,
    ))
}

/// A local OTLP/HTTP receiver: takes every export, answers 200, counts what it got.
struct Receiver {
    address: std::net::SocketAddr,
    exports: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Receiver {
    async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (exports, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (e, b) = (exports.clone(), bytes.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (e, b) = (e.clone(), b.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let (e, b) = (e.clone(), b.clone());
                            async move {
                                use http_body_util::BodyExt;
                                let body =
                                    req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                                e.fetch_add(1, Ordering::Relaxed);
                                b.fetch_add(body.len() as u64, Ordering::Relaxed);
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::new()),
                                ))
                            }
                        });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Ok(Self { address, exports, bytes })
    }
}
