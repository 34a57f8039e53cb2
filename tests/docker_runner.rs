//! The Docker runner, end to end, as a user runs it: build the examples, deploy them with
//! `--runner docker`, call them through the `metaparticle` client, delete them, and check with the
//! engine that nothing carrying the app's label remains.
//!
//! Where no Docker engine answers, each test prints "skipped: no Docker engine" and passes, unless
//! `MP_REQUIRE_DOCKER=1` is set (CI), where that is a failure. Every test removes what carries its
//! app's label when it ends, even by a panic. Apps get unique names and free loopback ports, so the
//! tests touch nothing but the containers they create.

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::docker::{binaries_or_skip, Deployed};

#[test]
fn server2_spreads_calls_over_three_container_hostnames_and_deletes_everything() {
    let Some(bins) = binaries_or_skip() else { return };
    let app = Deployed::new(bins, "server2");
    app.up();
    // A second `up` rolls the running app over to a new generation instead of adding to it, and
    // reuses the image because the binary did not change.
    let again = app.up();
    assert!(again.contains("up to date"), "the unchanged binary was rebuilt:\n{again}");
    assert!(again.contains("finished its requests and stopped"), "{again}");
    assert_eq!(app.labelled("ps"), 5, "a balancer, three replicas and the edge after two deploys");

    let mut servers = HashSet::new();
    for _ in 0..30 {
        let answer = app.call("replicated-service");
        assert_eq!(answer["request"], serde_json::json!({"foo": "bar"}));
        servers.insert(answer["server"].as_str().expect("a server name").to_string());
    }
    assert_eq!(servers.len(), 3, "servers seen: {servers:?}");
    for server in &servers {
        assert!(server.starts_with(&format!("{}-replicated-service-replica-", app.name)), "{server}");
    }
    let status = app.run(&["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).matches("healthy").count() >= 4);

    // Moving the service to another port cannot be rolled out (the edge publishes the old one):
    // the app is replaced, edge included, and answers on the new port.
    let port = support::free_port().to_string();
    let moved = support::docker::run_bounded(
        Command::new(bins.dir.join("examples/server2"))
            .args(["up", "--runner", "docker", "--app", &app.name, "--port", &port])
            .env("METAPARTICLE_HOME", app.home.path()),
    );
    let stdout =
        String::from_utf8_lossy(&moved.stdout).into_owned() + &String::from_utf8_lossy(&moved.stderr);
    assert!(moved.status.success(), "{stdout}");
    assert!(
        stdout.contains("replacing its 5 containers") && stdout.contains(&format!(":{port}/")),
        "{stdout}"
    );
    assert_eq!(app.call("replicated-service")["request"], serde_json::json!({"foo": "bar"}));
    assert_eq!(app.labelled("ps"), 5);

    app.delete_and_check_nothing_remains();
}

#[test]
fn histogram_gathers_1000_samples_from_ten_leaf_containers_and_deletes_everything() {
    let Some(bins) = binaries_or_skip() else { return };
    let app = Deployed::new(bins, "histogram");
    app.up();
    assert_eq!(app.labelled("ps"), 12, "a gather root, ten leaves and the edge");

    let histogram: Vec<u64> = serde_json::from_value(app.call("histogram-service")).expect("a histogram");
    assert_eq!(histogram.len(), 10, "{histogram:?}");
    assert_eq!(histogram.iter().sum::<u64>(), 1000, "{histogram:?}");

    app.delete_and_check_nothing_remains();
}

#[test]
fn the_sharding_tutorial_keeps_each_user_on_one_shard_container() {
    let Some(bins) = binaries_or_skip() else { return };
    let app = Deployed::new(bins, "sharded_http");
    app.up();
    assert_eq!(app.labelled("ps"), 5, "a router, three shards and the edge");
    let mut shards = HashSet::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
        let answers: HashSet<String> =
            (0..3).map(|_| http_get(app.port, &format!("/users/{user}"))).collect();
        assert_eq!(answers.len(), 1, "{user} reached several shards: {answers:?}");
        let answer = answers.into_iter().next().unwrap();
        let prefix = format!("Hello World: hostname: {}-sharded-http-shard-", app.name);
        assert!(answer.starts_with(&prefix), "{answer}");
        shards.insert(answer);
    }
    assert!(shards.len() >= 2, "eight users all on one shard: {shards:?}");
    app.delete_and_check_nothing_remains();
}

/// The body of a GET over a fresh loopback connection, which must answer 200.
fn http_get(port: u16, path: &str) -> String {
    let (status, body) = support::http_get(port, path);
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn a_taken_port_fails_clearly_and_leaves_nothing_running() {
    let Some(bins) = binaries_or_skip() else { return };
    let app = Deployed::new(bins, "server2");
    let _holder = std::net::TcpListener::bind(("127.0.0.1", app.port)).expect("holding the app's port");
    let output = app.run_unchecked(&["up"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "up succeeded on a taken port");
    assert!(stderr.contains(&format!("port {} on 127.0.0.1 is already in use", app.port)), "{stderr}");
    for kind in ["ps", "network", "volume"] {
        assert_eq!(app.labelled(kind), 0, "{kind}: a failed up left objects of the app");
    }
}

#[test]
fn port_0_is_refused_before_anything_is_built_or_started() {
    let Some(bins) = binaries_or_skip() else { return };
    let mut app = Deployed::new(bins, "server1");
    app.port = 0;
    let output = app.run_unchecked(&["up"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "up succeeded with --port 0");
    assert!(stderr.contains("--port 0") && stderr.contains("--port <port>"), "{stderr}");
    for kind in ["ps", "network", "volume"] {
        assert_eq!(app.labelled(kind), 0, "{kind}: a refused up left objects of the app");
    }
}

#[test]
fn a_unix_socket_redis_is_refused_before_anything_is_built_or_started() {
    let Some(bins) = binaries_or_skip() else { return };
    let mut app = Deployed::new(bins, "server5");
    app.env.push(("REDIS_URL".into(), "redis+unix:///run/redis/redis.sock".into()));
    let output = app.run_unchecked(&["up", "--storage", "redis"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "up succeeded with a Unix-socket Redis");
    assert!(stderr.contains("redis+unix:///run/redis/redis.sock") && stderr.contains("redis://"), "{stderr}");
    for kind in ["ps", "network", "volume"] {
        assert_eq!(app.labelled(kind), 0, "{kind}: a refused up left objects of the app");
    }
}

#[test]
fn a_node_that_cannot_start_fails_up_at_once_naming_the_cause() {
    let Some(bins) = binaries_or_skip() else { return };
    let app = Deployed::new(bins, "server5");
    let store = app.home.path().join("storage").join(format!("{}.sqlite", app.name));
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    std::fs::write(&store, vec![b'x'; 4096]).unwrap();
    let started = Instant::now();
    let output = app.run_unchecked(&["up"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "up succeeded on a corrupt store");
    assert!(stderr.contains("never became healthy") && stderr.contains("not a database"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(50), "up waited {:?}", started.elapsed());
    for kind in ["ps", "network", "volume"] {
        assert_eq!(app.labelled(kind), 0, "{kind}: a failed up left objects of the app");
    }
}

#[test]
fn up_during_another_deploy_of_the_app_says_so_and_starts_nothing() {
    use std::os::fd::AsRawFd;
    let Some(bins) = binaries_or_skip() else { return };
    let app = Deployed::new(bins, "server1");
    let dir = app.home.path().join("locks");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join(format!("{}.lock", app.name))).unwrap();
    // SAFETY: flock on a descriptor the test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let output = app.run_unchecked(&["up"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("is in progress"), "{stderr}");
    assert_eq!(app.labelled("ps"), 0, "the refused up started containers");
}

#[test]
fn docker_registry_receives_the_image_and_a_dead_registry_fails_the_deploy_cleanly() {
    let Some(bins) = binaries_or_skip() else { return };
    let Some(registry) = Registry::start_or_skip() else { return };

    // A registry nobody serves: the deploy fails naming it, and starts nothing.
    let dead = format!("127.0.0.1:{}", support::free_port());
    let mut app = Deployed::new(bins, "server1").with_env("DOCKER_REGISTRY", &dead);
    let failed = app.run_unchecked(&["up"]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "deploying with a dead registry succeeded");
    assert!(stderr.contains(&format!("pushing {dead}/{}:", app.name)), "{stderr}");
    assert!(stderr.contains("connection refused"), "{stderr}");
    for kind in ["ps", "network", "volume"] {
        assert_eq!(app.labelled(kind), 0, "a failed push left {kind} objects behind");
    }

    // A real registry gets the image, under the tag the containers run.
    app.env = vec![("DOCKER_REGISTRY".into(), registry.address.clone())];
    let up = app.up();
    let pushed = up
        .lines()
        .find_map(|l| l.strip_prefix(&format!("pushed {}/{}:", registry.address, app.name)))
        .unwrap_or_else(|| panic!("no 'pushed' line:\n{up}"))
        .to_string();
    assert!(
        up.contains(&format!("metaparticle/{}:{pushed}", app.name)),
        "the containers run the pushed tag:\n{up}"
    );
    let tags = registry.get(&format!("/v2/{}/tags/list", app.name));
    assert!(tags.contains(&format!("\"{pushed}\"")), "the registry lists the tag: {tags}");
    assert_eq!(app.call("simple-service"), serde_json::json!({"A": {"foo": "bar"}}));
    app.delete_and_check_nothing_remains();
}

/// A real registry (Debian's `docker-registry`) on a loopback port, with its storage in a
/// temporary folder; stopped when dropped. The engine pushes to 127.0.0.0/8 over plain HTTP
/// without configuration.
struct Registry {
    address: String,
    child: std::process::Child,
    _storage: tempfile::TempDir,
}

impl Registry {
    fn start_or_skip() -> Option<Registry> {
        let binary = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(binary) = binary else {
            if std::env::var("MP_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
                panic!(
                    "docker-registry is not installed, and MP_REQUIRE_DOCKER=1 requires the push test to run"
                );
            }
            let _ = writeln!(
                std::io::stderr(),
                "skipped: no docker-registry (apt-get install docker-registry; MP_REQUIRE_DOCKER=1 makes this a failure)"
            );
            return None;
        };
        let storage = tempfile::tempdir().expect("a folder for the registry");
        let address = format!("127.0.0.1:{}", support::free_port());
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
                storage.path().join("data").display()
            ),
        )
        .expect("writing the registry's config");
        let child = Command::new(binary)
            .args(["serve", config.to_str().expect("a UTF-8 path")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let registry = Registry { address, child, _storage: storage };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !registry.get("/v2/").starts_with("{") {
            assert!(Instant::now() < deadline, "docker-registry did not answer on {}", registry.address);
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(registry)
    }

    /// The body of `GET path`, or "" if the registry does not answer.
    fn get(&self, path: &str) -> String {
        support::try_http_get(&self.address, path).map(|(_, body)| body).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
