//! Bench: contended increments of one shared counter through `server6`'s topology (a balancer in
//! front of three stateful replicas), on each storage backend, at 8 and 64 concurrent clients.
//!
//! Every request crosses two HTTP hops and does a load and a compare-and-swap; all clients
//! update the same key, which is the worst case for optimistic concurrency. For scale, the same
//! Redis server is then measured with `redis-benchmark -t incr` (one server-side INCR per
//! request, no HTTP, no read-modify-write), and the ratio printed.
//!
//! The first rows run the same topology with a stateless handler: the ceiling the two HTTP hops
//! allow on this machine, so the cost of state can be read off. Bounded: each measurement runs
//! for a fixed time on loopback only.
//!
//! ```console
//! $ cargo run --release --example bench_state
//! ```
use std::sync::Arc;
use std::time::{Duration, Instant};

use metaparticle as mp;
use mp::StorageConfig;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const RUN_FOR: Duration = Duration::from_secs(3);
const WARM_UP: Duration = Duration::from_millis(300);
const CLIENTS: [usize; 2] = [8, 64];
/// The node whose replicas keep the state (their counters are what the bench reports).
const NODE: &str = "replicated-storage-service.replica";

#[derive(Serialize, Deserialize, Default)]
struct Global {
    requests: u64,
}

fn services(stateful: bool) -> Vec<mp::Service> {
    let topology = if stateful {
        mp::spread(
            3,
            mp::stateful(|_: Value, global: &mut Global| {
                global.requests += 1;
                global.requests
            }),
        )
    } else {
        // The same hops without state: the ceiling the data plane alone allows on this machine.
        mp::spread(3, |_: Value| 1)
    };
    vec![mp::service("replicated-storage-service", topology).expose()]
}

struct Measured {
    per_second: f64,
    retries_per_request: f64,
    gave_up: u64,
}

/// Runs `clients` closed-loop clients for `RUN_FOR` and counts successful increments.
/// `storage: None` measures the same topology without state.
async fn measure(storage: Option<StorageConfig>, clients: usize) -> mp::Result<Measured> {
    let stateful = storage.is_some();
    let options = mp::testing::Options { storage, ..Default::default() };
    let app = Arc::new(mp::testing::launch_with(services(stateful), options).await?);
    let run = |until: Instant| {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let app = app.clone();
            tasks.spawn(async move {
                let mut ok = 0u64;
                while Instant::now() < until {
                    if app.call_value("replicated-storage-service", &json!({})).await.is_ok() {
                        ok += 1;
                    }
                }
                ok
            });
        }
        tasks
    };
    let mut warm = run(Instant::now() + WARM_UP);
    while warm.join_next().await.is_some() {}
    let before = app.state_stats(NODE);
    let started = Instant::now();
    let mut tasks = run(started + RUN_FOR);
    let mut ok = 0;
    while let Some(n) = tasks.join_next().await {
        ok += n.expect("a client task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = app.state_stats(NODE);
    let requests = (after.requests - before.requests).max(1);
    Ok(Measured {
        per_second: ok as f64 / elapsed,
        retries_per_request: (after.retries - before.retries) as f64 / requests as f64,
        gave_up: after.gave_up - before.gave_up,
    })
}

/// `redis-benchmark -t incr` requests per second at `clients` connections, if it is installed.
fn redis_benchmark(port: u16, clients: usize) -> Option<f64> {
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "incr", "-n", "200000", "-q"])
        .args(["-c", &clients.to_string()])
        .output()
        .ok()?;
    // "INCR: 123456.79 requests per second, p50=0.2 msec" (the line may follow progress output).
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.rsplit('\r').next()?.lines().find(|l| l.contains("INCR"))?.to_string();
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> mp::Result<()> {
    println!(
        "contended increments of one key through a balancer and 3 replicas ({}s per row, {} cores)",
        RUN_FOR.as_secs(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "{:<8} {:>8} {:>14} {:>16} {:>8}",
        "backend", "clients", "increments/s", "retries/request", "gave up"
    );
    let dir = std::env::temp_dir().join(format!("mp-bench-{}", std::process::id()));
    let redis = mp::testing::RedisServer::installed()
        .then(mp::testing::RedisServer::start)
        .transpose()
        .map_err(mp::Error::Runner)?;
    let mut ours_on_redis = Vec::new();
    for clients in CLIENTS {
        let m = measure(None, clients).await?;
        println!("{:<8} {:>8} {:>14.0} {:>16} {:>8}", "(none)", clients, m.per_second, "-", "-");
    }
    for clients in CLIENTS {
        let file = StorageConfig::File(dir.join(format!("bench-{clients}.sqlite")));
        let m = measure(Some(file), clients).await?;
        println!(
            "{:<8} {:>8} {:>14.0} {:>16.3} {:>8}",
            "file", clients, m.per_second, m.retries_per_request, m.gave_up
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let Some(redis) = redis else {
        println!("redis: skipped (redis-server not installed)");
        return Ok(());
    };
    for clients in CLIENTS {
        redis.command(&["FLUSHALL"]);
        let m = measure(Some(StorageConfig::Redis(redis.url())), clients).await?;
        println!(
            "{:<8} {:>8} {:>14.0} {:>16.3} {:>8}",
            "redis", clients, m.per_second, m.retries_per_request, m.gave_up
        );
        ours_on_redis.push((clients, m.per_second));
    }
    for (clients, ours) in ours_on_redis {
        match redis_benchmark(redis.port(), clients) {
            Some(raw) => println!(
                "redis-benchmark -t incr -c {clients}: {raw:.0} INCR/s; metaparticle on redis is {:.3}x of it ({:.1}%)",
                ours / raw,
                100.0 * ours / raw
            ),
            None => println!("redis-benchmark -c {clients}: not available"),
        }
    }
    Ok(())
}
