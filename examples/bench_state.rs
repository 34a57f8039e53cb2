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
//! Redis is reached over loopback TCP, and with group commit also over its Unix socket
//! (`redis+unix://`, as nodes on Redis's own host can): the difference is what TCP costs the round
//! trip on this machine.
//!
//! The variants of a row (no state, each store, each way of committing) are launched side by side
//! and measured in turn, round after round: a ratio compares rounds run moments apart, so load
//! from elsewhere on the machine weighs on both sides alike. Each ratio printed is the median of
//! the rounds', with its range. Beside it, the median and 99th percentile of what a client waited
//! for each successful request: a ratio says what state costs in throughput, the tail says what a
//! contended key costs the unlucky requests. And what each request cost in CPU: the machine's busy
//! CPU time per successful request, with the Redis server's part of it. The clients, the nodes
//! and Redis share these cores, so when all are busy a ratio says how the CPU was shared out,
//! and the CPU per request says where it went.
//!
//! With `deployed`, the group-commit variants run as a user runs them instead: each deployed with
//! the local runner (one process per replica, the file store shared by the processes through its
//! file), and called from this process over loopback. Which topology a deployed process builds is
//! chosen by `MP_BENCH_SHAPE`, which every process of an app inherits from the command that
//! deployed it; the apps are deleted, with their state, at the end. The group and retry columns
//! of deployed rows come from each stateful replica's `GET /metrics`, read before and after
//! every round.
//!
//! Bounded: every round runs for a fixed time, on loopback only.
//!
//! ```console
//! $ cargo run --release --example bench_state
//! $ cargo run --release --example bench_state -- keys 64   # only the rows whose topology and clients match
//! $ cargo run --release --example bench_state -- keys 64 redis   # and of their variants, only Redis
//! $ cargo run --release --example bench_state -- deployed keys 64   # deployed with the local runner
//! $ cargo run --release --example bench_state -- keys 64 rounds=15   # 15 rounds a row instead of 5
//! ```
#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/percentile.rs"]
mod percentile;
#[path = "support/scrape.rs"]
mod scrape;
#[path = "support/self_deploy.rs"]
mod self_deploy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use metaparticle as mp;
use mp::testing::RedisServer;
use mp::StorageConfig;
use percentile::percentile;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Each variant runs this long per round, in turn with the others, for this many rounds.
const ROUND: Duration = Duration::from_millis(1500);
/// Rounds per row unless `rounds=N` says otherwise: more rounds, a steadier median.
const ROUNDS: usize = 5;
const WARM_UP: Duration = Duration::from_millis(300);
const CLIENTS: [usize; 2] = [8, 64];
const KEYS: u64 = 10_000;
const SERVICE: &str = "counter";
/// With `deployed`: the ports of the stateless app, then the file and the Redis one.
const DEPLOYED_PORT: u16 = 3940;

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

    /// Its name in `MP_BENCH_SHAPE`, which tells a deployed process what to build.
    fn shape(self) -> &'static str {
        match self {
            Topology::OneKey => "one",
            Topology::OneKeyStateless => "one-none",
            Topology::ManyKeys => "keys",
            Topology::ManyKeysStateless => "keys-none",
        }
    }

    fn from_shape(shape: &str) -> Option<Self> {
        [Topology::OneKey, Topology::OneKeyStateless, Topology::ManyKeys, Topology::ManyKeysStateless]
            .into_iter()
            .find(|t| t.shape() == shape)
    }

    /// The node whose replicas keep the state (their counters are what the bench reports).
    fn stateful_node(self) -> &'static str {
        match self {
            Topology::OneKey | Topology::OneKeyStateless => "counter.replica",
            Topology::ManyKeys | Topology::ManyKeysStateless => "counter.shard",
        }
    }
}

/// One variant's counts over one round.
#[derive(Clone, Copy, Default)]
struct Measured {
    per_second: f64,
    /// Latency of the successful requests, in milliseconds: what a closed-loop client waited.
    p50_ms: f64,
    p99_ms: f64,
    retries_per_commit: f64,
    mean_group: f64,
    gave_up: u64,
    /// Share of the machine's cores busy during the round, in percent (anything on the machine).
    busy_percent: f64,
    /// Busy CPU time of the whole machine per successful request, in microseconds.
    cpu_us: f64,
    /// Of which the Redis server's, in microseconds per successful request.
    redis_us: f64,
}

/// One topology on one store, launched once and measured round after round.
struct Variant {
    label: String,
    topology: Topology,
    target: Arc<Target>,
    rounds: Vec<Measured>,
}

/// Where a variant runs.
enum Target {
    /// Every node in this process (`mp::testing::launch_with`).
    InProcess(mp::testing::TestApp),
    /// Deployed with the local runner as app `app`, its service at `address`.
    Deployed {
        app: String,
        address: String,
        /// Where the replicas of the topology's stateful node listen (from the app's record).
        stateful_replicas: Vec<String>,
        storage: Option<String>,
        client: mp::client::RpcClient,
        topology: Topology,
    },
}

impl Drop for Target {
    /// A deployed app is deleted, with its state, when its variant is done.
    fn drop(&mut self) {
        if let Target::Deployed { app, storage, topology, .. } = self {
            let mut delete = deployer("delete", app, *topology, storage.as_deref());
            delete.arg("--purge");
            self_deploy::delete(delete);
        }
    }
}

/// This program, run as `command` (`up` or `delete`) of bench app `app` of `topology`, on the
/// Redis server at `storage` or, without one, the file store.
fn deployer(command: &str, app: &str, topology: Topology, storage: Option<&str>) -> std::process::Command {
    let mut deployer = self_deploy::this_program(command, app);
    deployer.env("MP_BENCH_SHAPE", topology.shape());
    match storage {
        Some(url) => deployer.args(["--storage", "redis"]).env("REDIS_URL", url),
        None => deployer.args(["--storage", "file"]),
    };
    deployer
}

impl Target {
    async fn call(&self, request: &Value) -> bool {
        match self {
            Target::InProcess(app) => app.call_value(SERVICE, request).await.is_ok(),
            Target::Deployed { address, client, .. } => client.call(address, SERVICE, request).await.is_ok(),
        }
    }

    /// The state counters of every replica of `node` so far: handed over in-process, read from
    /// each deployed replica's `/metrics` (zeros if a replica did not answer).
    async fn state_stats(&self, node: &str) -> mp::testing::StateStats {
        match self {
            Target::InProcess(app) => app.state_stats(node),
            Target::Deployed { stateful_replicas, .. } => {
                scraped_state_stats(stateful_replicas).await.unwrap_or_default()
            }
        }
    }
}

/// The state counters of the replicas at `addresses`, summed; `None` if one did not answer.
async fn scraped_state_stats(addresses: &[String]) -> Option<mp::testing::StateStats> {
    let mut sum = mp::testing::StateStats::default();
    for address in addresses {
        let text = scrape::metrics(address).await?;
        let count = |name: &str| scrape::total(&text, name).unwrap_or(0.0) as u64;
        sum = sum
            + mp::testing::StateStats {
                requests: count("metaparticle_state_updates_total"),
                commits: count("metaparticle_state_commits_total"),
                retries: count("metaparticle_state_retries_total"),
                gave_up: count("metaparticle_state_conflicts_total"),
            };
    }
    Some(sum)
}

impl Variant {
    async fn launch(
        label: String,
        topology: Topology,
        storage: Option<StorageConfig>,
        group_limit: usize,
    ) -> mp::Result<Self> {
        let limits = mp::testing::Limits { max_state_group: group_limit, ..Default::default() };
        // An app name of its own: variants sharing a store never touch each other's keys.
        let app = Some(format!("bench-{}", label.replace([',', ' ', '(', ')'], "")));
        let options = mp::testing::Options { storage, limits, app, ..Default::default() };
        let app = mp::testing::launch_with(topology.services(), options).await?;
        Ok(Self { label, topology, target: Arc::new(Target::InProcess(app)), rounds: Vec::new() })
    }

    /// Deploys `topology` with the local runner as app `app` on `port`, on `storage` (a Redis URL,
    /// or `None` for the file store).
    fn deploy(
        label: String,
        topology: Topology,
        app: String,
        port: u16,
        storage: Option<String>,
    ) -> mp::Result<Self> {
        let mut up = deployer("up", &app, topology, storage.as_deref());
        up.args(["--port", &port.to_string()]);
        self_deploy::up(up, &app)?;
        // Bounded: a deployed app that stops answering fails calls after 5 s, not 30.
        let client = mp::client::RpcClient::new().with_timeout(Duration::from_secs(5));
        let address = format!("127.0.0.1:{port}");
        let stateful_replicas = mp::deployments::Deployment::load(&app)
            .ok()
            .flatten()
            .and_then(|record| Some(record.book.addresses(topology.stateful_node())?.to_vec()))
            .unwrap_or_default();
        let target =
            Arc::new(Target::Deployed { app, address, stateful_replicas, storage, client, topology });
        Ok(Self { label, topology, target, rounds: Vec::new() })
    }

    /// Runs `clients` closed-loop clients for `time` and counts successful requests, and the CPU
    /// time the machine and `redis` spent meanwhile.
    async fn measure(&self, clients: usize, time: Duration, redis: Option<&RedisServer>) -> Measured {
        let node = self.topology.stateful_node();
        let before = self.target.state_stats(node).await;
        let redis_before = redis_cpu(redis);
        let busy_before = cpu::machine_busy();
        let started = Instant::now();
        let until = started + time;
        let mut tasks = tokio::task::JoinSet::new();
        let target = self.target.clone();
        for client in 0..clients {
            let target = target.clone();
            tasks.spawn(async move {
                // Microseconds each successful request took.
                let mut took = Vec::new();
                // Each client draws its keys at random, uniformly and independently of the others
                // (seeded by the client, so runs repeat). A fixed stride would have every client
                // walk one sequence a step behind the next, so each key's requests would come in a
                // burst on a freshly cached value, whatever the number of keys.
                let mut rng = StdRng::seed_from_u64(client as u64);
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let key = rng.random_range(0..KEYS);
                    if target.call(&json!({ "key": key })).await {
                        took.push(sent.elapsed().as_micros() as u32);
                    }
                }
                took
            });
        }
        let mut took: Vec<u32> = tasks.join_all().await.into_iter().flatten().collect();
        let elapsed = started.elapsed().as_secs_f64();
        let busy = seconds_between(busy_before, cpu::machine_busy());
        let redis_busy = seconds_between(redis_before, redis_cpu(redis));
        let successes = took.len().max(1) as f64;
        let per_request_us = |seconds: f64| seconds * 1e6 / successes;
        took.sort_unstable();
        let percentile_ms = |q: f64| percentile(&took, q).map_or(0.0, |us| f64::from(us) / 1000.0);
        let after = self.target.state_stats(node).await;
        let commits = (after.commits - before.commits).max(1) as f64;
        Measured {
            per_second: took.len() as f64 / elapsed,
            p50_ms: percentile_ms(0.50),
            p99_ms: percentile_ms(0.99),
            retries_per_commit: (after.retries - before.retries) as f64 / commits,
            mean_group: (after.requests - before.requests) as f64 / commits,
            gave_up: after.gave_up - before.gave_up,
            busy_percent: 100.0 * busy / (elapsed * cores() as f64),
            cpu_us: per_request_us(busy),
            redis_us: per_request_us(redis_busy),
        }
    }
}

/// CPU time `redis` has used so far, if there is one and it says.
fn redis_cpu(redis: Option<&RedisServer>) -> Option<Duration> {
    cpu::redis_used(&redis?.command(&["INFO", "cpu"]))
}

/// Seconds from `before` to `after`; 0 when either is unknown.
fn seconds_between(before: Option<Duration>, after: Option<Duration>) -> f64 {
    match (before, after) {
        (Some(before), Some(after)) => after.saturating_sub(before).as_secs_f64(),
        _ => 0.0,
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The median of `values` (the upper one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Measures every variant in turn, round after round, so that whatever else the machine does
/// weighs on all of them alike; the first variant is the stateless ceiling.
async fn compare(
    variants: &mut [Variant],
    rounds: usize,
    clients: usize,
    width: usize,
    redis: Option<&RedisServer>,
) {
    for variant in variants.iter() {
        variant.measure(clients, WARM_UP, redis).await;
    }
    for _ in 0..rounds {
        for variant in variants.iter_mut() {
            let measured = variant.measure(clients, ROUND, redis).await;
            variant.rounds.push(measured);
        }
    }
    let ceiling: Vec<f64> = variants[0].rounds.iter().map(|m| m.per_second).collect();
    for variant in variants.iter() {
        let ratios: Vec<f64> =
            variant.rounds.iter().zip(&ceiling).map(|(m, c)| m.per_second / c.max(1.0)).collect();
        let (low, high) = ratios.iter().fold((f64::MAX, 0.0f64), |(l, h), r| (l.min(*r), h.max(*r)));
        let pick = |f: fn(&Measured) -> f64| median(variant.rounds.iter().map(f).collect());
        println!(
            "{:<width$} {clients:>7} {:>12.0} {:>8.2} {:>11} {:>7.2} {:>7.2} {:>7.1} {:>9.3} {:>7} {:>6.0} {:>7.1} {:>8.1}",
            variant.label,
            pick(|m| m.per_second),
            median(ratios),
            format!("{low:.2}-{high:.2}"),
            pick(|m| m.p50_ms),
            pick(|m| m.p99_ms),
            pick(|m| m.mean_group),
            pick(|m| m.retries_per_commit),
            variant.rounds.iter().map(|m| m.gave_up).sum::<u64>(),
            pick(|m| m.busy_percent),
            pick(|m| m.cpu_us),
            pick(|m| m.redis_us),
        );
    }
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

fn main() -> mp::Result<()> {
    // A process of an app this bench deployed, or the bench's own `up` and `delete` of one: it
    // builds the topology its shape names.
    if let Some(topology) = std::env::var("MP_BENCH_SHAPE").ok().and_then(|s| Topology::from_shape(&s)) {
        return mp::serve(topology.services());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| mp::Error::io("starting a runtime", e))?;
    runtime.block_on(bench())
}

async fn bench() -> mp::Result<()> {
    // Optional filters: a word of the topology's name, and a client count (to profile one row).
    let args: Vec<String> = std::env::args().skip(1).collect();
    let deployed = args.iter().any(|a| a == "deployed");
    let rounds = args.iter().find_map(|a| a.strip_prefix("rounds=")?.parse().ok()).unwrap_or(ROUNDS).max(1);
    // Room for the longest label, ", deployed" included.
    let width = if deployed { 54 } else { 44 };
    println!(
        "state through the data plane, {rounds} rounds of {}s per row, interleaved, {} cores; ratio = requests/s over the same topology without state in the same round (median, and its range over the rounds)",
        ROUND.as_secs_f64(),
        cores()
    );
    println!(
        "{:<width$} {:>7} {:>12} {:>8} {:>11} {:>7} {:>7} {:>7} {:>9} {:>7} {:>6} {:>7} {:>8}",
        "topology / store / commit",
        "clients",
        "requests/s",
        "ratio",
        "range",
        "p50 ms",
        "p99 ms",
        "group",
        "retries",
        "gave up",
        "busy %",
        "cpu µs",
        "redis µs"
    );
    let dir = std::env::temp_dir().join(format!("mp-bench-{}", std::process::id()));
    let redis = mp::testing::RedisServer::installed()
        .then(mp::testing::RedisServer::start)
        .transpose()
        .map_err(|e| mp::Error::io("starting redis-server", std::io::Error::other(e)))?;
    let mut ours_on_redis = Vec::new();
    let only_clients: Option<usize> = args.iter().find_map(|a| a.parse().ok());
    let words: Vec<&String> = args
        .iter()
        .filter(|a| a.parse::<usize>().is_err() && *a != "deployed" && !a.starts_with("rounds="))
        .collect();
    let only_topology = words.first();
    // Further words keep only the stateful variants whose label has them all (the stateless
    // ceiling always runs): `keys 64 redis` measures one variant against its ceiling.
    let wanted = |label: &str| words.iter().skip(1).all(|w| label.contains(w.as_str()));
    for (topology, stateless, name) in [
        (Topology::OneKey, Topology::OneKeyStateless, "one key, spread(3)"),
        (Topology::ManyKeys, Topology::ManyKeysStateless, "10k keys, shard(3) keyed"),
    ] {
        if only_topology.is_some_and(|word| !name.contains(word.as_str())) {
            continue;
        }
        for clients in CLIENTS {
            if only_clients.is_some_and(|n| n != clients) {
                continue;
            }
            let mut variants = Vec::new();
            if deployed {
                // Deployed nodes commit in groups (the default); 'each' needs the testing limits.
                let app = |store: &str| format!("bench-state-{}-{store}", topology.shape());
                let label = format!("{name}, no state, deployed");
                variants.push(Variant::deploy(label, stateless, app("none"), DEPLOYED_PORT, None)?);
                let label = format!("{name}, file, group, deployed");
                if wanted(&label) {
                    variants.push(Variant::deploy(label, topology, app("file"), DEPLOYED_PORT + 1, None)?);
                }
                let label = format!("{name}, redis, group, deployed");
                if let Some(redis) = redis.as_ref().filter(|_| wanted(&label)) {
                    let (app, port) = (app("redis"), DEPLOYED_PORT + 2);
                    variants.push(Variant::deploy(label, topology, app, port, Some(redis.url()))?);
                }
                let label = format!("{name}, redis unix, group, deployed");
                if let Some(url) = redis.as_ref().and_then(RedisServer::unix_url).filter(|_| wanted(&label)) {
                    let (app, port) = (app("redis-unix"), DEPLOYED_PORT + 3);
                    variants.push(Variant::deploy(label, topology, app, port, Some(url))?);
                }
            } else {
                variants.push(Variant::launch(format!("{name}, no state"), stateless, None, 1).await?);
                let commits: &[(&str, usize)] = if topology == Topology::OneKey {
                    &[("group", 64), ("each", 1)]
                } else {
                    &[("group", 64)]
                };
                for (commit, limit) in commits {
                    let file = StorageConfig::File(dir.join(format!("bench-{clients}-{commit}.sqlite")));
                    let label = format!("{name}, file, {commit}");
                    if wanted(&label) {
                        variants.push(Variant::launch(label, topology, Some(file), *limit).await?);
                    }
                    let label = format!("{name}, redis, {commit}");
                    if let Some(redis) = redis.as_ref().filter(|_| wanted(&label)) {
                        let store = Some(StorageConfig::Redis(redis.url()));
                        variants.push(Variant::launch(label, topology, store, *limit).await?);
                    }
                }
                // The same server reached over its Unix socket, as nodes on Redis's own host can:
                // what the loopback TCP of the Redis round trip costs.
                let label = format!("{name}, redis unix, group");
                if let Some(url) = redis.as_ref().and_then(RedisServer::unix_url).filter(|_| wanted(&label)) {
                    let store = Some(StorageConfig::Redis(url));
                    variants.push(Variant::launch(label, topology, store, 64).await?);
                }
            }
            compare(&mut variants, rounds, clients, width, redis.as_ref()).await;
            if topology == Topology::OneKey {
                if let Some(v) = variants.iter().find(|v| v.label.ends_with("redis, group")) {
                    ours_on_redis.push((clients, median(v.rounds.iter().map(|m| m.per_second).collect())));
                }
            }
            if let Some(redis) = &redis {
                redis.command(&["FLUSHALL"]);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("(p50/p99: latency of the successful requests, median over the rounds; group: requests per commit; retries: per commit; 'each' commits every request on its own)");
    println!("(busy %: of the machine's cores, by anything; cpu µs: the machine's busy CPU time per successful request; redis µs: the Redis server's part of it)");
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
