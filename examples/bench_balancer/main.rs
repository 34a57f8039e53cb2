//! Benchmark: requests/s and latency of a replicated service through our balancer, compared in
//! one run with calling one replica directly and with nginx balancing over the same kind of
//! replicas.
//!
//! ```console
//! $ cargo run --release --example bench_balancer                 # 32 connections, 5 s per target
//! $ cargo run --release --example bench_balancer -- bench 64 10  # 64 connections, 10 s per target
//! ```
//!
//! It deploys itself with the local runner: app `mp-bench` is the server2 topology
//! (`bench-service`, a balancer over three replicas, port 3900), and apps `mp-bench-d0..2` are
//! three lone replicas of the same handler (ports 3901-3903), which serve as "direct" and as
//! nginx's upstreams. Which topology a process builds is chosen by `MP_BENCH_SHAPE`, which every
//! process of an app inherits from the command that deployed it. Load comes from `wrk` if it is
//! installed, else from a built-in closed-loop generator. Everything is torn down at the end.

mod loadgen;
mod nginx;

use std::process::Command;
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
    let node_or_command = std::env::var_os("MP_NODE").is_some()
        || std::env::var_os("MP_SUPERVISE").is_some()
        || args.first().is_some_and(|a| a != "bench");
    if node_or_command {
        return mp::serve(services());
    }
    let connections = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(32);
    let seconds = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    bench(connections, Duration::from_secs(seconds))
}

/// The apps the bench deploys: name, port, topology.
const APPS: [(&str, u16, &str); 4] = [
    ("mp-bench", PORT, "spread"),
    ("mp-bench-d0", PORT + 1, "direct"),
    ("mp-bench-d1", PORT + 2, "direct"),
    ("mp-bench-d2", PORT + 3, "direct"),
];

fn bench(connections: usize, duration: Duration) -> mp::Result<()> {
    let me = std::env::current_exe().map_err(|e| mp::Error::io("finding this binary", e))?;
    let mut deployed = Vec::new();
    let mut result = Ok(());
    for (app, port, shape) in APPS {
        let status = Command::new(&me)
            .args(["up", "--app", app, "--port", &port.to_string()])
            .env("MP_BENCH_SHAPE", shape)
            .env_remove("CARGO")
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| mp::Error::io("deploying the bench apps", e))?;
        if !status.success() {
            result = Err(mp::Error::Runner(format!("deploying {app} failed")));
            break;
        }
        deployed.push(app);
    }
    if result.is_ok() {
        result = measure(connections, duration);
    }
    for app in deployed {
        let _ = Command::new(&me).args(["delete", "--app", app]).stdout(std::process::Stdio::null()).status();
    }
    result
}

fn measure(connections: usize, duration: Duration) -> mp::Result<()> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| mp::Error::io("starting a runtime", e))?;
    let balancer = format!("127.0.0.1:{PORT}");
    let direct: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:{}", PORT + i)).collect();
    let nginx_address = format!("127.0.0.1:{}", PORT + 10);
    let measure_one = |address: &str| {
        // A short warm-up fills connection pools and caches before the measured run.
        let _ = load(&runtime, address, connections, Duration::from_secs(1));
        load(&runtime, address, connections, duration)
    };
    println!(
        "load: {connections} connections, {}s per target, POST of {} bytes",
        duration.as_secs(),
        BODY.len()
    );
    let direct_stats = measure_one(&direct[0]);
    print_row("direct to one replica", &direct_stats);
    let ours = measure_one(&balancer);
    print_row("through our balancer (3 replicas)", &ours);
    let nginx = match nginx::start(&nginx_address, &direct) {
        Ok(_nginx) => Some(measure_one(&nginx_address)),
        Err(why) => {
            println!("nginx comparison skipped: {why}");
            None
        }
    };
    if let Some(theirs) = &nginx {
        print_row("through nginx round robin (3 replicas)", theirs);
    }
    println!("ratio ours/direct: {:.2} (requests/s)", ours.rps / direct_stats.rps);
    if let Some(theirs) = nginx {
        println!(
            "ratio ours/nginx:  {:.2} (requests/s, higher is better), {:.2} (p99 latency, lower is better)",
            ours.rps / theirs.rps,
            ours.p99.as_secs_f64() / theirs.p99.as_secs_f64()
        );
    }
    Ok(())
}

fn load(
    runtime: &tokio::runtime::Runtime,
    address: &str,
    connections: usize,
    duration: Duration,
) -> loadgen::Stats {
    loadgen::wrk(address, BODY, connections, duration)
        .unwrap_or_else(|| runtime.block_on(loadgen::run(address, BODY, connections, duration)))
}

fn print_row(what: &str, s: &loadgen::Stats) {
    println!(
        "{what:<40} {:>9.0} req/s   p50 {:>7.3} ms   p99 {:>7.3} ms   errors {}   ({})",
        s.rps,
        s.p50.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3,
        s.errors,
        s.tool
    );
}
