//! The Kubernetes runner's manifests, run: every example's `manifests` output is applied to a
//! one-namespace stand-in for a cluster on the real Docker engine (`tests/kube_harness/`: one
//! container per pod, environment, DNS names, security context, volumes and probes as a cluster
//! gives them, emulating Kubernetes 1.27), and the app must then behave as the local runner's
//! tests require of it.
//!
//! Where no Docker engine answers, each test prints "skipped: ..." and passes, unless
//! `MP_REQUIRE_DOCKER=1` (CI), where that is a failure. Every container and network a test
//! creates is removed when it ends, even by a panic.

mod kube_harness;
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use kube_harness::docker::bounded;
use kube_harness::Cluster;
use serde_json::{json, Value};
use support::docker::engine_answers;

/// How long a whole app may take to become ready (first pods start while images are still cold).
const READY_WITHIN: Duration = Duration::from_secs(120);

/// Says why a test skips; with `MP_REQUIRE_DOCKER=1` (CI) a skip is a failure.
fn docker_or_skip() -> bool {
    if engine_answers() {
        return true;
    }
    let why = "no Docker engine answers";
    if std::env::var("MP_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
        panic!("{why}, and MP_REQUIRE_DOCKER=1 requires the pod harness to run");
    }
    // Straight to stderr, past the test harness's capture: a skip must be visible in `cargo test`.
    let _ = writeln!(std::io::stderr(), "skipped: {why} (set MP_REQUIRE_DOCKER=1 to make this a failure)");
    false
}

/// An example deployed into a cluster from its own `manifests` output.
struct App {
    cluster: Cluster,
    app: String,
    started: Instant,
}

/// Builds `example`'s image with its `image` command (reused while the binary is unchanged).
fn image(example: &str, app: &str) -> String {
    let output =
        bounded(Command::new(support::binary(&format!("examples/{example}"))).args(["image", "--app", app]))
            .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{example} image failed:\n{}", String::from_utf8_lossy(&output.stderr));
    stdout.lines().last().expect("the image reference").trim().to_string()
}

/// `example --runner kubernetes manifests` as a GitOps user prints it: no kubeconfig here, so
/// the namespace is the flag's or none.
fn manifests(
    example: &str,
    app: &str,
    image: &str,
    namespace: Option<&str>,
    flags: &[&str],
    env: &[(&str, &str)],
) -> String {
    let mut command = Command::new(support::binary(&format!("examples/{example}")));
    command
        .args(["--runner", "kubernetes", "manifests", "--app", app, "--image", image])
        .args(namespace.map(|ns| ["--namespace", ns]).into_iter().flatten())
        .args(flags)
        .envs(env.iter().copied())
        .env("KUBECONFIG", std::env::temp_dir().join("mpk8s-no-such-kubeconfig"))
        .env_remove("CARGO");
    let output = bounded(&mut command).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        output.status.success(),
        "{example} manifests failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl App {
    /// Deploys `example` into a fresh namespace `namespace`; with `flag_namespace` the manifests
    /// name it, without they leave it to `kubectl apply -n`. `secret` holds the app Secret's keys
    /// beyond the generated `secret` (the storage password).
    fn deploy(
        example: &str,
        namespace: &str,
        flag_namespace: bool,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> App {
        Self::deploy_into(Cluster::new(example, namespace), example, flag_namespace, flags, env, &[])
    }

    fn deploy_into(
        mut cluster: Cluster,
        example: &str,
        flag_namespace: bool,
        flags: &[&str],
        env: &[(&str, &str)],
        extra_secret: &[(&str, &str)],
    ) -> App {
        let started = Instant::now();
        let app = format!("mpk8s-{example}");
        let image = image(example, &app);
        let namespace = cluster.namespace.clone();
        let yaml = manifests(example, &app, &image, flag_namespace.then_some(namespace.as_str()), flags, env);
        // What the header tells a GitOps user to create once.
        let hop_secret = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
        let mut data = vec![("secret", hop_secret.as_str())];
        data.extend_from_slice(extra_secret);
        let secret_name = format!("{}-metaparticle", app.replace('_', "-"));
        assert!(yaml.contains(&format!("kubectl create secret generic {secret_name}")), "{yaml}");
        cluster.create_secret(&secret_name, &data);
        cluster.apply(&yaml).unwrap_or_else(|e| panic!("applying {example}'s manifests: {e}\n{yaml}"));
        cluster.wait_ready(READY_WITHIN).unwrap_or_else(|e| panic!("{example}: {e}"));
        eprintln!(
            "{example}: {} pods ready in {:.1}s (image, manifests and start)",
            cluster.pods().len(),
            started.elapsed().as_secs_f64()
        );
        App { cluster, app, started }
    }

    /// Calls the exposed Service `service` (its front pod, as a load balancer forwards).
    fn call(&self, service: &str, request: Value) -> Value {
        let address = self.cluster.service_address(service);
        rpc(&address, service, request).unwrap_or_else(|e| panic!("calling {service} at {address}: {e}"))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        eprintln!("{}: done in {:.1}s", self.app, self.started.elapsed().as_secs_f64());
    }
}

/// One JSON-RPC call over a fresh connection: the result, or the error object / transport error.
fn rpc(address: &str, method: &str, request: Value) -> Result<Value, String> {
    rpc_as(address, method, request, None)
}

/// [`rpc`] with HTTP Basic credentials `user:password`.
fn rpc_as(address: &str, method: &str, request: Value, user: Option<&str>) -> Result<Value, String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": [request]}).to_string();
    let headers = match user {
        Some(user) => {
            let (name, password) = user.split_once(':').expect("user:password");
            format!("Authorization: {}\r\n", metaparticle::client::basic_auth_header(name, password))
        }
        None => String::new(),
    };
    let (status, text) = http_with(address, "POST", "/", &body, &headers)?;
    let answer: Value = serde_json::from_str(&text).map_err(|e| format!("HTTP {status}: {e}: {text}"))?;
    match answer.get("result") {
        Some(result) => Ok(result.clone()),
        None => Err(answer["error"].to_string()),
    }
}

/// One HTTP/1.1 request with `Connection: close`: status and body.
fn http(address: &str, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    http_with(address, method, path, body, "")
}

/// [`http`] with extra header lines (each ending in `\r\n`).
fn http_with(
    address: &str,
    method: &str,
    path: &str,
    body: &str,
    headers: &str,
) -> Result<(u16, String), String> {
    let mut stream = std::net::TcpStream::connect(address).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let status =
        response.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no answer: {response:?}"))?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

#[test]
fn server2_spreads_calls_over_its_three_replica_pods() {
    if !docker_or_skip() {
        return;
    }
    let app = App::deploy("server2", "shop", true, &[], &[]);
    let mut servers = HashSet::new();
    for _ in 0..30 {
        let answer = app.call("replicated-service", json!({"foo": "bar"}));
        assert_eq!(answer["request"], json!({"foo": "bar"}));
        servers.insert(answer["server"].as_str().expect("a server name").to_string());
    }
    let expected: HashSet<String> = (0..3).map(|i| format!("replicated-service-replica-{i}")).collect();
    assert_eq!(servers, expected, "the three pods' hostnames");
}

#[test]
fn replica_pods_replaced_one_by_one_under_load_lose_no_request() {
    if !docker_or_skip() {
        return;
    }
    let mut app = App::deploy("server2", "roll", true, &[], &[]);
    let front = app.cluster.service_address("replicated-service");
    let load = support::load::Load::start(
        &front,
        "replicated-service",
        json!({ "foo": "bar" }),
        8,
        Duration::from_secs(180),
    );
    std::thread::sleep(Duration::from_secs(1));
    // A StatefulSet's rolling update: each replica pod told to stop (SIGTERM: it serves on for
    // MP_STOP_DELAY_SECONDS, then drains and exits), then its successor under the same name.
    for replica in 0..3 {
        let name = format!("replicated-service-replica-{replica}");
        let new = app.cluster.replace_pod(&name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(new.name, name);
        app.cluster.wait_ready(READY_WITHIN).unwrap_or_else(|e| panic!("{e}"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let samples = load.finish();
    let failed: Vec<&String> = samples.iter().filter_map(|s| s.outcome.as_ref().err()).collect();
    eprintln!("{} requests while three replica pods were replaced, {} failed", samples.len(), failed.len());
    assert!(samples.len() > 100, "the load ran: {} requests", samples.len());
    assert!(failed.is_empty(), "{} failed, first: {:?}", failed.len(), &failed[..failed.len().min(5)]);
}

#[test]
fn server3_keeps_each_user_on_the_shard_its_key_names() {
    if !docker_or_skip() {
        return;
    }
    // Without --namespace: the objects and the address book are relative to the namespace applied to.
    let app = App::deploy("server3", "team-k8s", false, &[], &[]);
    for user in ["al", "bob", "carol", "dave", "eve"] {
        let shard = user.len() % 3;
        for _ in 0..3 {
            let answer = app.call("sharded-service", json!({ "user": user }));
            // The shard's index comes from its pod's name: Kubernetes 1.27 has no pod-index label.
            assert_eq!(answer["shard"], json!(shard), "{user}: {answer}");
            assert_eq!(answer["server"], json!(format!("sharded-service-shard-{shard}")), "{user}: {answer}");
        }
    }
}

#[test]
fn histogram_gathers_1000_samples_from_ten_leaf_pods() {
    if !docker_or_skip() {
        return;
    }
    let app = App::deploy("histogram", "stats", true, &[], &[]);
    let histogram: Vec<u64> =
        serde_json::from_value(app.call("histogram-service", json!({}))).expect("a histogram");
    assert_eq!(histogram.len(), 10, "{histogram:?}");
    assert_eq!(histogram.iter().sum::<u64>(), 1000, "{histogram:?}");
}

#[test]
fn the_sharding_tutorial_keeps_each_user_on_one_shard_pod() {
    if !docker_or_skip() {
        return;
    }
    let app = App::deploy("sharded_http", "web", false, &[], &[]);
    let address = app.cluster.service_address("sharded-http");
    let mut shards = HashSet::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
        let answers: HashSet<String> = (0..3)
            .map(|_| {
                let (status, body) = http(&address, "GET", &format!("/users/{user}"), "").unwrap();
                assert_eq!(status, 200, "{body}");
                body
            })
            .collect();
        assert_eq!(answers.len(), 1, "{user} reached several shards: {answers:?}");
        let answer = answers.into_iter().next().unwrap();
        assert!(answer.starts_with("Hello World: hostname: sharded-http-shard-"), "{answer}");
        shards.insert(answer);
    }
    assert!(shards.len() >= 2, "eight users all on one shard: {shards:?}");
    let (status, body) = http(&address, "GET", "/about", "").unwrap();
    assert_eq!(status, 404, "{body}");
}

#[test]
fn shards_of_spreads_keep_each_user_on_one_shard_served_by_its_replicas() {
    if !docker_or_skip() {
        return;
    }
    let app = App::deploy("shard_of_spreads", "profiles", true, &[], &[]);
    let mut servers_of_shard: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
        let mut shards = HashSet::new();
        for _ in 0..8 {
            let answer = app.call("user-profiles", json!({ "user": user }));
            let server = answer["server"].as_str().expect("a server").to_string();
            // `user-profiles-shard-1-replica-0`: pod 0 of shard 1's replicas.
            let shard = server.rsplit_once("-replica-").map(|(s, _)| s.to_string()).unwrap_or_default();
            assert!(shard.starts_with("user-profiles-shard-"), "{server}");
            shards.insert(shard.clone());
            servers_of_shard.entry(shard).or_default().insert(server);
        }
        assert_eq!(shards.len(), 1, "{user} reached several shards: {shards:?}");
    }
    assert!(servers_of_shard.len() >= 2, "eight users all on one shard: {servers_of_shard:?}");
    for (shard, servers) in &servers_of_shard {
        assert_eq!(servers.len(), 2, "{shard} is served by both its replica pods: {servers:?}");
    }
}

#[test]
fn server5_keeps_its_count_on_its_volume_across_a_replaced_pod() {
    if !docker_or_skip() {
        return;
    }
    let mut app = App::deploy("server5", "store", true, &[], &[]);
    for n in 1..=5 {
        assert_eq!(app.call("simple-storage", json!({})), json!({ "requests": n }));
    }
    // The pod goes away (SIGTERM, drain) and its Deployment makes a new one on the same claim.
    let old = app.cluster.pods()[0].name.clone();
    let new = app.cluster.replace_pod(&old).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(new.name, old);
    app.cluster.wait_ready(READY_WITHIN).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(app.call("simple-storage", json!({})), json!({ "requests": 6 }), "the count survived the pod");
}

#[test]
fn server6_replicas_share_one_counter_in_redis_and_lose_no_update() {
    if !docker_or_skip() {
        return;
    }
    let Some(app) = deploy_with_redis("server6", "counters") else { return };
    let address = app.cluster.service_address("replicated-storage-service");
    let (clients, per_client) = (8, 25);
    let outcomes: Vec<(usize, HashSet<String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let address = address.clone();
                scope.spawn(move || {
                    let mut ok = 0;
                    let mut servers = HashSet::new();
                    for _ in 0..per_client {
                        if let Ok(answer) = rpc(&address, "replicated-storage-service", json!({})) {
                            ok += 1;
                            servers.insert(answer["server"].as_str().unwrap_or_default().to_string());
                        }
                    }
                    (ok, servers)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let successes: usize = outcomes.iter().map(|(ok, _)| ok).sum();
    let servers: HashSet<String> = outcomes.into_iter().flat_map(|(_, s)| s).collect();
    assert_eq!(successes, clients * per_client, "every increment succeeded");
    let last = app.call("replicated-storage-service", json!({}));
    assert_eq!(last["requests"], json!(successes + 1), "the counter equals the successes: {last}");
    assert_eq!(servers.len(), 3, "all three replica pods served: {servers:?}");
    let by_pod: HashMap<&str, usize> = app.cluster.pods().iter().map(|p| (p.owner.as_str(), 1)).collect();
    assert!(by_pod.contains_key("StatefulSet/replicated-storage-service-replica"), "{by_pod:?}");
}

#[test]
fn the_shop_runs_as_pods_whose_services_call_each_other_by_cluster_names() {
    if !docker_or_skip() {
        return;
    }
    let Some(app) = deploy_with_redis("shop", "shop") else { return };
    let frontend = app.cluster.service_address("frontend");
    let shop = |user: &str, request: Value| rpc_as(&frontend, "frontend", request, Some(user));
    // The frontend pods call the catalog's gather root and the cart's router by their Service names.
    let page = shop("alice:wonderland", json!({ "search": "oak" })).unwrap();
    let skus: Vec<&str> =
        page["results"].as_array().unwrap().iter().map(|p| p["sku"].as_str().unwrap()).collect();
    assert_eq!(skus, ["clock-wall", "shelf-oak", "chair-oak", "desk-oak"], "{page}");
    // Each shopper's basket lives on the shopper's cart shard, in Redis.
    shop("alice:wonderland", json!({ "add": { "sku": "desk-oak", "quantity": 1 } })).unwrap();
    let alice = shop("alice:wonderland", json!({ "add": { "sku": "mug-stone", "quantity": 2 } })).unwrap();
    assert_eq!((alice["items"].clone(), alice["total_cents"].clone()), (json!(3), json!(37300)), "{alice}");
    assert_eq!(shop("bob:builder", json!({ "cart": {} })).unwrap()["items"], json!(0));
    let err = shop("alice:wonderland", json!({ "add": { "sku": "yacht", "quantity": 1 } })).unwrap_err();
    assert!(err.contains("-32044"), "a callee's error crosses pods with its code: {err}");
}

/// Deploys `example` with `--storage redis` into a cluster namespace that also runs a Redis
/// (FROM scratch, password in a Secret), as a user would point the app at it: the Redis Service's
/// cluster name in `REDIS_URL`, the password in the app's Secret. `None` (after saying why) when
/// the Redis image cannot be built here and Redis is not required.
fn deploy_with_redis(example: &str, namespace: &str) -> Option<App> {
    let redis = match kube_harness::redis::image() {
        Ok(image) => image,
        Err(why) if std::env::var("MP_REQUIRE_REDIS").is_ok_and(|v| v == "1") => {
            panic!("{why}, and MP_REQUIRE_REDIS=1 requires this test to run")
        }
        Err(why) => {
            let _ = writeln!(std::io::stderr(), "skipped: {why}");
            return None;
        }
    };
    let password = format!("pw-{:016x}", rand::random::<u64>());
    let mut cluster = Cluster::new(example, namespace);
    cluster.create_secret("redis", &[("password", &password)]);
    cluster.apply(&kube_harness::redis::manifest(&redis)).unwrap_or_else(|e| panic!("{e}"));
    let url = format!("redis://:{password}@redis.{namespace}.svc.cluster.local:6379");
    Some(App::deploy_into(
        cluster,
        example,
        true,
        &["--storage", "redis"],
        &[("REDIS_URL", &url)],
        &[("storage-password", &password)],
    ))
}
