//! The local runner as a user drives it: deploy, call through the `metaparticle` client, inspect,
//! re-deploy, tear down, and what is left afterwards (nothing).

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{free_port, http_get, Sandbox};

/// The pids and addresses `status` reports, one per replica.
fn replicas(sandbox: &Sandbox) -> Vec<(String, u32, String)> {
    let run = sandbox.program(&["status"]);
    assert!(run.ok, "status failed: {}", run.stderr);
    run.stdout
        .lines()
        .skip(2)
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f[8], "healthy", "{line}");
            (format!("{}-{}", f[0], f[2]), f[5].parse().unwrap(), f[4].to_string())
        })
        .collect()
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn port_free(address: &str) -> bool {
    std::net::TcpListener::bind(address).is_ok()
}

fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn server2_deploys_spreads_calls_over_three_replicas_and_deletes_without_leftovers() {
    let sandbox = Sandbox::new("server2");
    let up = sandbox.up();
    assert!(
        up.stdout.contains(&format!("replicated-service listens on http://127.0.0.1:{}/", sandbox.port)),
        "{}",
        up.stdout
    );

    let mut servers = HashSet::new();
    for _ in 0..10 {
        let answer = sandbox.call("replicated-service", None);
        assert_eq!(answer["request"], json!({"foo": "bar"}));
        servers.insert(answer["server"].as_str().unwrap().to_string());
    }
    assert_eq!(servers.len(), 3, "ten calls reach all three replicas: {servers:?}");

    let replicas = replicas(&sandbox);
    assert_eq!(replicas.len(), 4, "a balancer and three replicas");
    let delete = sandbox.program(&["delete"]);
    assert!(delete.ok && delete.stdout.contains("deleted app 'server2'"), "{}", delete.stdout);
    for (name, pid, address) in &replicas {
        assert!(!process_alive(*pid), "{name} (pid {pid}) survived delete");
        assert!(port_free(address), "{name}'s port {address} is still taken");
    }
    assert!(!sandbox.app_dir().exists(), "the app's state folder is removed");
    let again = sandbox.program(&["delete"]);
    assert!(again.ok && again.stdout.contains("not running; nothing to delete"), "{}", again.stdout);
}

#[test]
fn the_seeds_curl_line_works_against_a_deployed_app() {
    let sandbox = Sandbox::new("server1");
    sandbox.up();
    let body = r#"{"jsonrpc": "2.0", "params":[{}], "method": "simple-service", "id": "example"}"#;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", sandbox.port)).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"jsonrpc":"2.0","id":"example","result":{"A":{}}}"#), "{response}");
    assert_eq!(sandbox.call("simple-service", None), json!({"A": {"foo": "bar"}}));
}

#[test]
fn up_on_a_running_app_rolls_it_over_without_leftovers() {
    let sandbox = Sandbox::new("server2");
    sandbox.up();
    let first = replicas(&sandbox);
    let second_up = sandbox.up();
    assert!(second_up.stdout.contains("is running: rolling out the same build"), "{}", second_up.stdout);
    let second = replicas(&sandbox);
    assert_eq!(second.len(), 4);
    for (name, pid, _) in &first {
        assert!(!process_alive(*pid), "old {name} (pid {pid}) still runs after re-deploy");
    }
    assert_eq!(sandbox.call("replicated-service", Some(r#"{"n":1}"#))["request"], json!({"n": 1}));
}

#[test]
fn a_taken_port_is_a_clear_error_and_nothing_is_deployed() {
    let mut sandbox = Sandbox::new("server2");
    // The squatter takes a port the system chooses, so no other test can be holding it already.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    sandbox.port = squatter.local_addr().unwrap().port();
    let run = sandbox.program(&["up"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains(&format!("port {} on 127.0.0.1 is already in use", sandbox.port)),
        "{}",
        run.stderr
    );
    assert!(!sandbox.app_dir().exists(), "nothing half-deployed");
}

#[test]
fn a_killed_replica_is_restarted_and_status_counts_it() {
    let sandbox = Sandbox::new("server2");
    sandbox.up();
    let before = replicas(&sandbox);
    let (name, pid, _) = before.iter().find(|(n, _, _)| n.ends_with("replica-1")).unwrap().clone();
    send_signal(pid, "-KILL");
    wait_until("the replica to be restarted", Duration::from_secs(10), || {
        let run = sandbox.program(&["status"]);
        run.stdout.lines().any(|l| {
            l.starts_with("replicated-service.replica ")
                && l.contains(" 1 ")
                && l.contains("running")
                && l.contains("healthy")
                && !l.contains(&pid.to_string())
        })
    });
    let mut servers = HashSet::new();
    for _ in 0..30 {
        servers.insert(sandbox.call("replicated-service", None)["server"].as_str().unwrap().to_string());
    }
    assert!(servers.contains(&name), "traffic returns to {name}: {servers:?}");
}

fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn attach_streams_prefixed_logs_and_ctrl_c_tears_everything_down() {
    let sandbox = Sandbox::new("server2");
    let mut child = sandbox
        .program_command(&["up", "--attach"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut prefixes = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while prefixes.len() < 4 {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("log lines from every replica");
        if let Some((prefix, _)) = line.split_once(" | ") {
            prefixes.insert(prefix.trim().to_string());
        }
    }
    assert!(prefixes.contains("replicated-service.replica-2"), "{prefixes:?}");
    assert_eq!(sandbox.call("replicated-service", None)["request"], json!({"foo": "bar"}));
    let pids: Vec<u32> = replicas(&sandbox).into_iter().map(|(_, pid, _)| pid).collect();

    send_signal(child.id(), "-INT");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "attach did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    for pid in pids {
        assert!(!process_alive(pid), "pid {pid} survived Ctrl-C");
    }
    assert!(port_free(&format!("127.0.0.1:{}", sandbox.port)));
    assert!(!sandbox.app_dir().exists());
}

#[test]
fn sharded_service_keeps_each_user_on_one_shard_end_to_end() {
    let sandbox = Sandbox::new("server3");
    sandbox.up();
    for user in ["alice", "bob", "charlotte"] {
        let request = format!(r#"{{"user":"{user}"}}"#);
        let shards: HashSet<Value> =
            (0..5).map(|_| sandbox.call("sharded-service", Some(&request))["shard"].clone()).collect();
        assert_eq!(shards, HashSet::from([json!(user.len() % 3)]), "{user}");
    }
    let run = sandbox.client(&["call", "sharded-service"]);
    assert!(
        !run.ok && run.stderr.contains("missing field `user`") && run.stderr.contains("-32602"),
        "{}",
        run.stderr
    );
}

#[test]
fn histogram_deploys_eleven_processes_and_counts_a_thousand_samples() {
    let sandbox = Sandbox::new("histogram");
    let up = sandbox.up();
    assert!(up.stdout.contains("11 processes"), "{}", up.stdout);
    let histogram: Vec<u64> = serde_json::from_value(sandbox.call("histogram-service", None)).unwrap();
    assert_eq!(histogram.len(), 10);
    assert_eq!(histogram.iter().sum::<u64>(), 1000);
}

#[test]
fn the_client_explains_unknown_services_and_apps_that_are_not_running() {
    let sandbox = Sandbox::new("server1");
    let none = sandbox.client(&["call", "simple-service"]);
    assert!(!none.ok && none.stderr.contains("no metaparticle app is running"), "{}", none.stderr);
    sandbox.up();
    let unknown = sandbox.client(&["call", "nope"]);
    assert!(
        !unknown.ok
            && unknown.stderr.contains("unknown service 'nope'")
            && unknown.stderr.contains("simple-service (app 'server1')"),
        "{}",
        unknown.stderr
    );
    let bad_json = sandbox.client(&["call", "simple-service", "{oops"]);
    assert!(!bad_json.ok && bad_json.stderr.contains("not valid JSON"), "{}", bad_json.stderr);

    // A record whose processes are gone (e.g. after a reboot) is reported as such.
    let record = sandbox.app_dir().join("deployment.json");
    let text = std::fs::read_to_string(&record).unwrap();
    let stale_port = free_port();
    std::fs::write(
        &record,
        text.replace(&format!("127.0.0.1:{}", sandbox.port), &format!("127.0.0.1:{stale_port}")),
    )
    .unwrap();
    let stale = sandbox.client(&["call", "simple-service"]);
    assert!(!stale.ok && stale.stderr.contains("app 'server1' is not running"), "{}", stale.stderr);
}

#[test]
fn status_piped_into_a_reader_that_stops_early_ends_quietly() {
    let sandbox = Sandbox::new("histogram");
    sandbox.up();
    let mut child =
        sandbox.program_command(&["status"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Read one line and close the pipe, as `status | head -1` does.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(first.starts_with("app 'histogram'"), "{first}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn status_and_logs_of_an_app_that_is_not_running_fail_clearly() {
    let sandbox = Sandbox::new("server1");
    for command in ["status", "logs"] {
        let run = sandbox.program(&[command]);
        assert!(!run.ok && run.stderr.contains("app 'server1' is not running"), "{command}: {}", run.stderr);
    }
}

#[test]
fn binding_beyond_loopback_is_an_explicit_flag() {
    let mut sandbox = Sandbox::new("server1");
    sandbox.extra = vec!["--bind".into(), "0.0.0.0".into()];
    sandbox.up();
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(sandbox.app_dir().join("deployment.json")).unwrap())
            .unwrap();
    assert_eq!(record["endpoints"][0]["address"], json!(format!("127.0.0.1:{}", sandbox.port)));
    assert!(!port_free(&format!("0.0.0.0:{}", sandbox.port)), "bound on all interfaces");
    assert_eq!(sandbox.call("simple-service", None), json!({"A": {"foo": "bar"}}));
}

#[test]
fn the_sharding_tutorial_keeps_each_user_on_one_shard_end_to_end() {
    let sandbox = Sandbox::new("sharded_http");
    let up = sandbox.up();
    assert!(up.stdout.contains("4 processes"), "a router and three shards: {}", up.stdout);
    let mut shards = HashSet::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
        let answers: HashSet<String> =
            (0..4).map(|_| http_get(sandbox.port, &format!("/users/{user}")).1).collect();
        assert_eq!(answers.len(), 1, "{user} reached several shards: {answers:?}");
        let answer = answers.into_iter().next().unwrap();
        assert!(answer.starts_with("Hello World: hostname: sharded-http.shard-"), "{answer}");
        shards.insert(answer);
    }
    assert!(shards.len() >= 2, "eight users all on one shard: {shards:?}");
    let (status, body) = http_get(sandbox.port, "/about");
    assert_eq!(status, 404, "{body}");
    let logs = sandbox.program(&["logs"]).stdout;
    assert!(
        logs.lines().any(|l| l.contains("sharded-http.shard-") && l.ends_with("| /users/alice")),
        "{logs}"
    );
}

/// The address `up` printed for `service`.
fn printed_address(up: &str, service: &str) -> String {
    let prefix = format!("  {service} listens on http://");
    let line = up.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no address in:\n{up}"));
    line[prefix.len()..].trim_end_matches('/').to_string()
}

#[test]
fn port_0_deploys_on_free_ports_and_records_the_real_ones() {
    let mut sandbox = Sandbox::new("server2");
    sandbox.port = 0;
    let up = sandbox.up();
    let address = printed_address(&up.stdout, "replicated-service");
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0, "{}", up.stdout);
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(sandbox.app_dir().join("deployment.json")).unwrap())
            .unwrap();
    assert_eq!(record["endpoints"][0]["address"], json!(address));
    assert_eq!(sandbox.call("replicated-service", None)["request"], json!({"foo": "bar"}));
    assert_eq!(replicas(&sandbox).len(), 4, "every replica healthy");
}

#[test]
fn the_highest_port_deploys_without_overflowing() {
    if !port_free("127.0.0.1:65535") {
        eprintln!("skipped: port 65535 is taken on this machine");
        return;
    }
    let mut sandbox = Sandbox::new("server1");
    sandbox.port = 65535;
    let up = sandbox.up();
    assert_eq!(printed_address(&up.stdout, "simple-service"), "127.0.0.1:65535");
    assert_eq!(sandbox.call("simple-service", None), json!({"A": {"foo": "bar"}}));
}

#[test]
fn the_printed_status_and_tear_down_hints_act_on_the_same_app() {
    let mut sandbox = Sandbox::new("server1");
    sandbox.extra = vec!["--app".into(), "hostile-hints".into()];
    let up = sandbox.up();
    let hint = |label: &str| -> Vec<String> {
        let line =
            up.stdout.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("{}", up.stdout));
        line[label.len()..].split_whitespace().map(String::from).collect()
    };
    let run_hint = |words: Vec<String>| {
        let output = std::process::Command::new(&words[0])
            .args(&words[1..])
            .env("METAPARTICLE_HOME", sandbox.home.path())
            .env_remove("CARGO")
            .output()
            .unwrap();
        let text =
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    };
    let (ok, status) = run_hint(hint("status:"));
    assert!(ok && status.contains("app 'hostile-hints'"), "{status}");
    let (ok, deleted) = run_hint(hint("tear down:"));
    assert!(ok && deleted.contains("deleted app 'hostile-hints'"), "{deleted}");
    assert!(!sandbox.home.path().join("apps/hostile-hints").exists());
}

#[test]
fn server7_is_torn_down_without_its_passwords_but_not_deployed_without_them() {
    let sandbox = Sandbox::new("server7");
    let run = |args: &[&str], users: Option<&str>| -> support::Run {
        let mut command = sandbox.program_command(args);
        command.env_remove("SIMPLE_USER_STORAGE_USERS").env_remove("SIMPLE_USER_STORAGE_USERS_FILE");
        if let Some(users) = users {
            command.env("SIMPLE_USER_STORAGE_USERS", users);
        }
        command.output().unwrap().into()
    };
    let refused = run(&["up"], None);
    assert!(
        !refused.ok && refused.stderr.contains("SIMPLE_USER_STORAGE_USERS is not set"),
        "{}",
        refused.stderr
    );
    let up = run(&["up"], Some("alice:wonderland"));
    assert!(up.ok, "{}{}", up.stdout, up.stderr);
    for command in [&["status"][..], &["logs"], &["plan"]] {
        let run = run(command, None);
        assert!(run.ok, "{command:?} without the passwords: {}", run.stderr);
    }
    let delete = run(&["delete", "--purge"], None);
    assert!(
        delete.ok && delete.stdout.contains("deleted app 'server7'"),
        "{}{}",
        delete.stdout,
        delete.stderr
    );
    assert!(!sandbox.app_dir().exists());
}

#[test]
fn binding_all_interfaces_warns_and_an_address_this_machine_lacks_is_refused() {
    let mut sandbox = Sandbox::new("server1");
    sandbox.extra = vec!["--bind".into(), "0.0.0.0".into()];
    let up = sandbox.up();
    assert!(
        up.stderr
            .contains("warning: --bind 0.0.0.0 makes the exposed services reachable from other machines")
            && up.stderr.contains(&format!("http://127.0.0.1:{}/", sandbox.port)),
        "{}",
        up.stderr
    );
    let delete = sandbox.program(&["delete"]);
    assert!(delete.ok && !delete.stderr.contains("warning"), "only deploying warns: {}", delete.stderr);

    // An address reserved for documentation (RFC 5737), which this machine should not have.
    if std::net::TcpListener::bind("203.0.113.77:0").is_ok() {
        eprintln!("skipped: this machine has the address 203.0.113.77");
        return;
    }
    sandbox.extra = vec!["--bind".into(), "203.0.113.77".into()];
    let run = sandbox.program(&["up"]);
    assert!(
        !run.ok && run.stderr.contains("--bind 203.0.113.77: this machine has no such address"),
        "{}",
        run.stderr
    );
    assert!(!sandbox.app_dir().exists(), "nothing deployed");
}

#[test]
fn calling_a_service_two_apps_expose_asks_which_app() {
    let mut sandbox = Sandbox::new("server1");
    sandbox.extra = vec!["--app".into(), "hostile-one".into()];
    sandbox.up();
    let second = |args: &[&str]| -> support::Run {
        let port = free_port().to_string();
        std::process::Command::new(support::binary("examples/server1"))
            .args(args)
            .args(["--app", "hostile-two", "--port", &port])
            .env("METAPARTICLE_HOME", sandbox.home.path())
            .env_remove("CARGO")
            .output()
            .unwrap()
            .into()
    };
    /// Deletes the second app however the test ends.
    struct Second<F: Fn(&[&str]) -> support::Run>(F);
    impl<F: Fn(&[&str]) -> support::Run> Drop for Second<F> {
        fn drop(&mut self) {
            (self.0)(&["delete"]);
        }
    }
    assert!(second(&["up"]).ok);
    let second = Second(second);
    let ambiguous = sandbox.client(&["call", "simple-service"]);
    assert!(
        !ambiguous.ok
            && ambiguous.stderr.contains("'simple-service' is exposed by 2 apps")
            && ambiguous.stderr.contains("hostile-one")
            && ambiguous.stderr.contains("hostile-two")
            && ambiguous.stderr.contains("--app"),
        "{}",
        ambiguous.stderr
    );
    for app in ["hostile-one", "hostile-two"] {
        let run = sandbox.client(&["call", "simple-service", "--app", app]);
        assert!(run.ok && run.stdout.contains(r#"{"A":{"foo":"bar"}}"#), "{app}: {}", run.stderr);
    }
    let unknown = sandbox.client(&["call", "simple-service", "--app", "nope"]);
    assert!(!unknown.ok && unknown.stderr.contains("app 'nope' is not running"), "{}", unknown.stderr);
    assert!((second.0)(&["delete"]).ok);
    let delete = sandbox.program(&["delete"]);
    assert!(delete.ok, "{}", delete.stderr);
}
