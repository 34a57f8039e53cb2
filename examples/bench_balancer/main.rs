//! Benchmark: requests/s and latency of a replicated service through our balancer, compared in
//! one run with calling one replica directly and with nginx balancing over the same kind of
//! replicas.
//!
//! ```console
//! $ cargo run --release --example bench_balancer                   # 32 connections, 5 s, 3 rounds
//! $ cargo run --release --example bench_balancer -- bench 64 10 5  # 64 connections, 10 s, 5 rounds
//! ```
//!
//! Each round measures every target once; rounds alternate whether ours or nginx goes first, so
//! a drift in the machine's speed does not favour either. The summary gives medians over rounds
//! and the lowest and highest per-round ratio, because on a shared machine one round proves little.
//!
//! It deploys itself with the local runner: app `mp-bench` is the server2 topology
//! (`bench-service`, a balancer over three replicas, port 3900), and apps `mp-bench-d0..2` are
//! three lone replicas of the same handler (ports 3901-3903), which serve as "direct" and as
//! nginx's upstreams. Which topology a process builds is chosen by `MP_BENCH_SHAPE`, which every
//! process of an app inherits from the command that deployed it. Load comes from `wrk` if it is
//! installed, else from a built-in closed-loop generator. Everything is torn down at the end.

mod loadgen;
mod nginx;
#[path = "../support/percentile.rs"]
mod percentile;
mod report;
#[path = "../support/self_deploy.rs"]
mod self_deploy;

use std::time::Duration;

use metaparticle as mp;
use serde_json::{json, Value};

const PORT: u16 = 3900;
const BODY: &str = r#"{"jsonrpc":"2.0","method":"bench-service","params":[{"foo":"bar"}],"id":1}"#;

fn handler(request: Value) -> Value {
    json!({ "request": request, "server": mp::hostname() })
}

fn services() -> Vec<mp::Service> {
    let service = if std::env::var("MP_BENCH_SHAPE").as_deref() == Ok("direct") {
        mp::service("bench-service", handler)
    } else {
        mp::service("bench-service", mp::spread(3, handler))
    };
    vec![service.expose()]
}

fn main() -> mp::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !loadgen::runs_the_bench(&args) {
        return mp::serve(services());
    }
    let connections = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(32);
    let seconds = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let rounds = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(3).max(1);
    bench(connections, Duration::from_secs(seconds), rounds)
}

/// The apps the bench deploys: name, port, topology.
const APPS: [(&str, u16, &str); 4] = [
    ("mp-bench", PORT, "spread"),
    ("mp-bench-d0", PORT + 1, "direct"),
    ("mp-bench-d1", PORT + 2, "direct"),
    ("mp-bench-d2", PORT + 3, "direct"),
];

fn bench(connections: usize, duration: Duration, rounds: usize) -> mp::Result<()> {
    let mut deployed = Vec::new();
    let mut result = Ok(());
    for (app, port, shape) in APPS {
        let mut up = self_deploy::this_program("up", app);
        up.args(["--port", &port.to_string()]).env("MP_BENCH_SHAPE", shape);
        if let Err(e) = self_deploy::up(up, app) {
            result = Err(e);
            break;
        }
        deployed.push(app);
    }
    if result.is_ok() {
        result = measure(connections, duration, rounds);
    }
    for app in deployed {
        self_deploy::delete(self_deploy::this_program("delete", app));
    }
    result
}

fn measure(connections: usize, duration: Duration, rounds: usize) -> mp::Result<()> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| mp::Error::io("starting a runtime", e))?;
    let balancer = format!("127.0.0.1:{PORT}");
    let direct: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:{}", PORT + i)).collect();
    let nginx_address = format!("127.0.0.1:{}", PORT + 10);
    let measure_one = |what: &str, address: &str| {
        // A short warm-up fills connection pools and caches before the measured run.
        let _ = loadgen::measure(&runtime, address, BODY, connections, Duration::from_secs(1));
        let stats = loadgen::measure(&runtime, address, BODY, connections, duration);
        report::print_row(what, 40, &stats);
        stats
    };
    println!(
        "load: {connections} connections, {}s per target, {rounds} rounds, POST of {} bytes",
        duration.as_secs(),
        BODY.len()
    );
    let nginx =
        nginx::start(&nginx_address, &direct).map_err(|why| println!("nginx comparison skipped: {why}")).ok();
    let (mut direct_runs, mut ours_runs, mut nginx_runs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        println!("round {round}");
        direct_runs.push(measure_one("  direct to one replica", &direct[0]));
        let nginx_first = round % 2 == 0;
        if nginx.is_some() && nginx_first {
            nginx_runs.push(measure_one("  through nginx round robin (3 replicas)", &nginx_address));
        }
        ours_runs.push(measure_one("  through our balancer (3 replicas)", &balancer));
        if nginx.is_some() && !nginx_first {
            nginx_runs.push(measure_one("  through nginx round robin (3 replicas)", &nginx_address));
        }
    }
    drop(nginx);
    println!("median of {rounds} rounds");
    let (direct_median, ours_median) = (report::median(&direct_runs), report::median(&ours_runs));
    report::print_row("  direct to one replica", 40, &direct_median);
    report::print_row("  through our balancer (3 replicas)", 40, &ours_median);
    println!("ratio ours/direct: {:.2} (requests/s)", ours_median.rps / direct_median.rps);
    if !nginx_runs.is_empty() {
        let nginx_median = report::median(&nginx_runs);
        report::print_row("  through nginx round robin (3 replicas)", 40, &nginx_median);
        let per_round = |f: fn(&loadgen::Stats) -> f64| {
            let ratios: Vec<f64> = ours_runs.iter().zip(&nginx_runs).map(|(o, n)| f(o) / f(n)).collect();
            let low = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
            let high = ratios.iter().cloned().fold(0.0, f64::max);
            format!("rounds {low:.2}-{high:.2}")
        };
        println!(
            "ratio ours/nginx:  {:.2} requests/s (higher is better; {}), {:.2} p99 latency (lower is better; {})",
            ours_median.rps / nginx_median.rps,
            per_round(|s| s.rps),
            ours_median.p99.as_secs_f64() / nginx_median.p99.as_secs_f64(),
            per_round(|s| s.p99.as_secs_f64()),
        );
    }
    Ok(())
}
