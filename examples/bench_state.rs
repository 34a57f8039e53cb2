//! Bench: what state costs, measured side by side in one run.
//!
//! 1. Contended increments of one shared counter through `server6`'s topology (a balancer in
//!    front of three stateful replicas), on each storage backend, at 8 and 64 concurrent clients:
//!    with group commit (the default) and with each request committed on its own
//!    (`max_state_group: 1`, how every request was stored before group commit), each as a ratio of
//!    the same topology without state. All clients update one key: the worst case for optimistic
//!    concurrency.
//! 2. Increments spread uniformly over 10,000 keys with keyed scopes behind `shard` on the same key
//!    (`shard(3, cart, stateful_keyed(cart, ..))`), against the same shards without state.
//! 3. For scale, `redis-benchmark -t incr` on the same Redis server (one server-side INCR per
//!    request: no HTTP, no read-modify-write).
//!
//! Bounded: each row runs for a fixed time, on loopback only.
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
const KEYS: u64 = 10_000;
const SERVICE: &str = "counter";

#[derive(Serialize, Deserialize, Default)]
struct Count {
    requests: u64,
}

#[derive(Deserialize)]
struct Increment {
    key: u64,
}

/// The topologies compared; `Stateless*` are the ceilings the hops alone allow on this machine.
#[derive(Clone, Copy, PartialEq)]
enum Topology {
    OneKey,
    OneKeyStateless,
    ManyKeys,
    ManyKeysStateless,
}

impl Topology {
    fn services(self) -> Vec<mp::Service> {
        let increment = |_: Value, count: &mut Count| {
            count.requests += 1;
            count.requests
        };
        let service = match self {
            Topology::OneKey => mp::service(SERVICE, mp::spread(3, mp::stateful(increment))),
            Topology::OneKeyStateless => mp::service(SERVICE, mp::spread(3, |_: Value| 1)),
            Topology::ManyKeys => mp::service(
                SERVICE,
                mp::shard(
                    3,
                    |r: &Increment| r.key,
                    mp::stateful_keyed(
                        |r: &Increment| r.key,
                        |_: Increment, count: &mut Count| {
                            count.requests += 1;
                            count.requests
                        },
                    ),
                ),
            ),
            Topology::ManyKeysStateless => {
                mp::service(SERVICE, mp::shard(3, |r: &Increment| r.key, |_: Value| 1))
            }
        };
        vec![service.expose()]
    }

    /// The node whose replicas keep the state (their counters are what the bench reports).
    fn stateful_node(self) -> &'static str {
        match self {
            Topology::OneKey | Topology::OneKeyStateless => "counter.replica",
            Topology::ManyKeys | Topology::ManyKeysStateless => "counter.shard",
        }
    }
}

struct Measured {
    per_second: f64,
    retries_per_commit: f64,
    mean_group: f64,
    gave_up: u64,
}

/// Runs `clients` closed-loop clients for `RUN_FOR` and counts successful requests.
async fn measure(
    topology: Topology,
    storage: Option<StorageConfig>,
    group_limit: usize,
    clients: usize,
) -> mp::Result<Measured> {
    let limits = mp::testing::Limits { max_state_group: group_limit, ..Default::default() };
    let options = mp::testing::Options { storage, limits, ..Default::default() };
    let app = Arc::new(mp::testing::launch_with(topology.services(), options).await?);
    let run = |until: Instant| {
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..clients {
            let app = app.clone();
            tasks.spawn(async move {
                let mut ok = 0u64;
                let mut key = client as u64 * 7919;
                while Instant::now() < until {
                    // Uniform over the keys (a stride coprime to KEYS), cheap to compute.
                    key = (key + 7919) % KEYS;
                    if app.call_value(SERVICE, &json!({ "key": key })).await.is_ok() {
                        ok += 1;
                    }
                }
                ok
            });
        }
        tasks
    };
    run(Instant::now() + WARM_UP).join_all().await;
    let node = topology.stateful_node();
    let before = app.state_stats(node);
    let started = Instant::now();
    let ok: u64 = run(started + RUN_FOR).join_all().await.into_iter().sum();
    let elapsed = started.elapsed().as_secs_f64();
    let after = app.state_stats(node);
    let commits = (after.commits - before.commits).max(1) as f64;
    Ok(Measured {
        per_second: ok as f64 / elapsed,
        retries_per_commit: (after.retries - before.retries) as f64 / commits,
        mean_group: (after.requests - before.requests) as f64 / commits,
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

fn row(label: &str, clients: usize, m: &Measured, ceiling: f64) {
    println!(
        "{label:<34} {clients:>7} {:>12.0} {:>8.2} {:>10.1} {:>9.3} {:>7}",
        m.per_second,
        m.per_second / ceiling,
        m.mean_group,
        m.retries_per_commit,
        m.gave_up
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> mp::Result<()> {
    println!(
        "state through the data plane, {}s per row, {} cores; ratio = requests/s over the same topology without state",
        RUN_FOR.as_secs(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "{:<34} {:>7} {:>12} {:>8} {:>10} {:>9} {:>7}",
        "topology / store / commit", "clients", "requests/s", "ratio", "group", "retries", "gave up"
    );
    let dir = std::env::temp_dir().join(format!("mp-bench-{}", std::process::id()));
    let redis = mp::testing::RedisServer::installed()
        .then(mp::testing::RedisServer::start)
        .transpose()
        .map_err(|e| mp::Error::io("starting redis-server", std::io::Error::other(e)))?;
    let mut stores = vec![("file", None)];
    if let Some(redis) = &redis {
        stores.push(("redis", Some(redis)));
    }
    let mut ours_on_redis = Vec::new();
    for (topology, stateless, name) in [
        (Topology::OneKey, Topology::OneKeyStateless, "one key, spread(3)"),
        (Topology::ManyKeys, Topology::ManyKeysStateless, "10k keys, shard(3) keyed"),
    ] {
        for clients in CLIENTS {
            let ceiling = measure(stateless, None, 1, clients).await?;
            row(&format!("{name}, no state"), clients, &ceiling, ceiling.per_second);
            for (store_name, redis) in &stores {
                let commits: &[(&str, usize)] = if topology == Topology::OneKey {
                    &[("group", 64), ("each", 1)]
                } else {
                    &[("group", 64)]
                };
                for (commit, limit) in commits {
                    let storage = match redis {
                        Some(redis) => {
                            redis.command(&["FLUSHALL"]);
                            StorageConfig::Redis(redis.url())
                        }
                        None => StorageConfig::File(dir.join(format!("bench-{clients}-{commit}.sqlite"))),
                    };
                    let m = measure(topology, Some(storage), *limit, clients).await?;
                    row(&format!("{name}, {store_name}, {commit}"), clients, &m, ceiling.per_second);
                    if redis.is_some() && *commit == "group" && topology == Topology::OneKey {
                        ours_on_redis.push((clients, m.per_second));
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("(group: requests per commit; retries: per commit; 'each' commits every request on its own)");
    let Some(redis) = redis else {
        println!("redis: skipped (redis-server not installed)");
        return Ok(());
    };
    for (clients, ours) in ours_on_redis {
        match redis_benchmark(redis.port(), clients) {
            Some(raw) => println!(
                "redis-benchmark -t incr -c {clients}: {raw:.0} INCR/s; one contended key through metaparticle on redis is {:.3}x of it",
                ours / raw
            ),
            None => println!("redis-benchmark -c {clients}: not available"),
        }
    }
    Ok(())
}
