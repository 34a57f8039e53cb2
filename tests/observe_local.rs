//! Seeing what a running app does, on the local runner, as a user would: traces exported to a
//! real OTLP receiver form one tree per request across processes, every node's `/metrics` passes
//! `promtool check metrics`, and nothing is exported without the OpenTelemetry variables.
//!
//! The receiver (Rotel, from PyPI) and `promtool` (Debian's `prometheus`) are real programs; where
//! one is missing its test skips, unless `MP_REQUIRE_OTLP=1` / `MP_REQUIRE_PROMTOOL=1` (CI).

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};
use support::observe::{promtool_check, promtool_or_skip, OtlpReceiver, ReceivedSpan};
use support::Sandbox;

/// POSTs a JSON-RPC call to `port` as a caller that sends `traceparent` (and Basic credentials).
fn call_traced(
    port: u16,
    method: &str,
    request: Value,
    traceparent: Option<&str>,
    user: Option<&str>,
) -> Value {
    use std::io::{Read, Write};
    let body = json!({"jsonrpc": "2.0", "method": method, "params": [request], "id": 1}).to_string();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(traceparent) = traceparent {
        head.push_str(&format!("traceparent: {traceparent}\r\n"));
    }
    if let Some(user) = user {
        head.push_str(&format!("authorization: Basic {}\r\n", base64(user.as_bytes())));
    }
    write!(stream, "{head}\r\n{body}").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    serde_json::from_str(answer.split_once("\r\n\r\n").expect("an HTTP answer").1).unwrap()
}

/// Standard base64, for a Basic `Authorization` header.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `host:port` of every replica of the deployed app, from its record.
fn every_replica(sandbox: &Sandbox) -> Vec<(String, String)> {
    let record: Value =
        serde_json::from_slice(&std::fs::read(sandbox.app_dir().join("deployment.json")).unwrap()).unwrap();
    let mut replicas = Vec::new();
    for (node, addresses) in record["book"].as_object().unwrap() {
        for address in addresses.as_array().unwrap() {
            replicas.push((node.clone(), address.as_str().unwrap().to_string()));
        }
    }
    replicas
}

const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

fn attribute<'s>(span: &'s ReceivedSpan, key: &str) -> &'s str {
    span.attributes
        .get(key)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("{} has no {key}: {span:#?}", span.name))
}

#[test]
fn one_shop_request_is_one_trace_tree_across_its_processes_in_a_real_otlp_receiver() {
    let Some(receiver) = OtlpReceiver::start_or_skip() else { return };
    let mut sandbox = Sandbox::new("shop");
    sandbox.env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint()));
    sandbox.env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    sandbox.up();
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let add = json!({ "add": { "sku": "desk-oak", "quantity": 1 } });
    let basket = call_traced(sandbox.port, "frontend", add, Some(&traceparent), Some("alice:wonderland"));
    assert_eq!(basket["result"]["items"], 1, "{basket}");

    // frontend and its attempt, frontend.replica; its call to the catalog, the gather root, four
    // attempts and four leaves; its call to the cart, the router, its attempt and the shard.
    let spans = receiver.spans_of(CALLER_TRACE, 17, Duration::from_secs(20));
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(spans.len(), 17, "{names:?}");

    // One tree: one span continues the caller's, every other hangs off a span of the trace.
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.parent_id == CALLER_SPAN).collect();
    assert_eq!(roots.len(), 1, "{names:?}");
    assert_eq!((roots[0].name.as_str(), attribute(roots[0], "metaparticle.role")), ("frontend", "balancer"));
    for span in &spans {
        assert!(span.parent_id == CALLER_SPAN || ids.contains(span.parent_id.as_str()), "{span:#?}");
        assert_eq!(attribute(span, "metaparticle.outcome"), "ok", "{span:#?}");
    }
    let children = |parent: &ReceivedSpan| -> Vec<&ReceivedSpan> {
        spans.iter().filter(|s| s.parent_id == parent.span_id).collect()
    };
    // Spans were recorded by the processes that did the work: 1 + 1 + 1 + 4 + 1 + 1 replicas.
    let recorders: HashSet<&str> = spans.iter().map(|s| s.instance.as_str()).collect();
    assert_eq!(recorders.len(), 9, "{recorders:?}");

    let replica = children(roots[0])[0];
    assert_eq!((replica.name.as_str(), replica.kind.as_str()), ("call frontend.replica", "SPAN_KIND_CLIENT"));
    assert_eq!(attribute(replica, "metaparticle.attempt"), "1");
    let served = children(replica);
    assert_eq!(served[0].name, "frontend.replica");
    let calls: HashMap<&str, &ReceivedSpan> =
        children(served[0]).into_iter().map(|c| (c.name.as_str(), c)).collect();
    assert!(calls.contains_key("call catalog") && calls.contains_key("call cart"), "{calls:?}");

    let catalog = children(calls["call catalog"])[0];
    assert_eq!(attribute(catalog, "metaparticle.role"), "gather");
    let leaves: HashSet<&str> = children(catalog)
        .into_iter()
        .map(|hop| attribute(children(hop)[0], "metaparticle.replica"))
        .collect();
    assert_eq!(leaves, HashSet::from(["0", "1", "2", "3"]), "every leaf is a child of its own hop");

    let router = children(calls["call cart"])[0];
    assert_eq!(attribute(router, "metaparticle.role"), "router");
    let shard = children(children(router)[0])[0];
    assert_eq!(shard.name, "cart.shard");
    assert_eq!(attribute(shard, "metaparticle.state.conflicts"), "0", "a lone shopper meets no conflict");
    assert_eq!(attribute(shard, "metaparticle.retries"), "0");
}

#[test]
fn a_request_without_a_traceparent_begins_a_trace_and_without_variables_nothing_is_exported() {
    let Some(receiver) = OtlpReceiver::start_or_skip() else { return };
    let mut traced = Sandbox::new("server2");
    traced.extra = vec!["--app".into(), "observe-traced".into()];
    traced.env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint()));
    traced.env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    traced.up();
    let untraced = Sandbox::new("server1");
    untraced.up();
    call_traced(
        untraced.port,
        "simple-service",
        json!({}),
        Some(&format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")),
        None,
    );
    call_traced(traced.port, "replicated-service", json!({}), None, None);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = receiver.spans();
        if spans.len() >= 3 || std::time::Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(spans.len(), 3, "the balancer, its attempt and the replica: {spans:#?}");
    let root = spans.iter().find(|s| s.name == "replicated-service").unwrap();
    assert_eq!(root.parent_id, "", "a new trace's first span has no parent");
    assert!(spans.iter().all(|s| s.trace_id == root.trace_id));
    // The app deployed without variables sent nothing, not even for a caller's trace.
    std::thread::sleep(Duration::from_millis(500));
    assert!(receiver.spans().iter().all(|s| s.trace_id != CALLER_TRACE));
}

#[test]
fn promtool_accepts_the_metrics_of_every_node_of_the_shop() {
    let Some(promtool) = promtool_or_skip() else { return };
    let mut sandbox = Sandbox::new("shop");
    // Tracing on (spans recorded, exported nowhere), so that its counters are checked too.
    sandbox.env.push(("OTEL_TRACES_EXPORTER".into(), "none".into()));
    sandbox.up();
    // Successes and errors of several codes, through every kind of node.
    for request in [
        json!({ "search": "oak" }),
        json!({ "add": { "sku": "desk-oak", "quantity": 1 } }),
        json!({ "add": { "sku": "yacht", "quantity": 1 } }),
        json!({ "add": { "sku": "candle", "quantity": 100 } }),
    ] {
        call_traced(sandbox.port, "frontend", request, None, Some("alice:wonderland"));
    }
    let replicas = every_replica(&sandbox);
    assert_eq!(replicas.len(), 13);
    for (node, address) in replicas {
        let (status, text) = support::try_http_get(&address, "/metrics").expect("the node answers");
        assert_eq!(status, 200, "{node} at {address}");
        if let Err(said) = promtool_check(&promtool, &text) {
            panic!("promtool rejects the metrics of {node} at {address}:\n{said}\n{text}");
        }
        assert!(text.contains("# TYPE metaparticle_rpc_requests_total counter"), "{node}: {text}");
        assert!(text.contains("process_start_time_seconds{"), "{node}: {text}");
    }
    let front = support::try_http_get(&format!("127.0.0.1:{}", sandbox.port), "/metrics").unwrap().1;
    // The balancer knows the outcomes it relayed: 2 answers held errors (-32044, -32602).
    assert!(front.contains(r#"outcome="error"} 2"#), "{front}");
    assert!(front.contains(r#"code="-32044"} 1"#), "{front}");
}

/// Runs headless Chromium on `url` with `args` (a fresh profile each time); its stdout.
fn chromium(chromium: &std::path::Path, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // Virtual time runs the page's script (and its polling) for 4 s, without waiting 4 s.
        .arg("--virtual-time-budget=4000")
        .args(args)
        .arg(url)
        .stderr(std::process::Stdio::null())
        .output()
        .expect("chromium runs");
    assert!(output.status.success(), "chromium failed on {url}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts the program's `dashboard` for the sandbox's app; the child and the page's address.
fn dashboard(sandbox: &Sandbox) -> (support::observe::Reaped, String) {
    let address = format!("127.0.0.1:{}", support::free_port());
    let child = sandbox
        .program_command(&["dashboard", "--listen", &address])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the dashboard starts");
    let child = support::observe::Reaped(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while support::try_http_get(&address, "/").is_none() {
        assert!(std::time::Instant::now() < deadline, "the dashboard did not listen on {address}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, address)
}

/// `example` deployed in a sandbox, with its dashboard: the sandbox, the dashboard's process
/// and the page's address. (Bound in this order, the dashboard stops before the app is deleted.)
fn deployed_with_dashboard(example: &str) -> (Sandbox, support::observe::Reaped, String) {
    let sandbox = Sandbox::new(example);
    sandbox.up();
    let (dashboard, address) = dashboard(&sandbox);
    (sandbox, dashboard, address)
}

/// A rate the page drew on `replica`'s row, from its `attribute` (`data-rps`, ...).
fn drawn_rate(dom: &str, replica: &str, attribute: &str) -> f64 {
    let at =
        dom.find(&format!("data-replica=\"{replica}\"")).unwrap_or_else(|| panic!("no {replica}:\n{dom}"));
    let row = &dom[at..(at + 300).min(dom.len())];
    let value = row.split(&format!("{attribute}=\"")).nth(1).and_then(|rest| rest.split('"').next());
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {attribute} for {replica}: {row}"))
}

#[test]
fn the_dashboard_shows_every_replica_with_its_traffic_in_a_real_browser() {
    let Some(chromium_path) = support::observe::chromium_or_skip() else { return };
    let (sandbox, _dashboard, address) = deployed_with_dashboard("shop");
    // Traffic for a few seconds, so that the page's rates (over the last 5 s) are not zero.
    let started = std::time::Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(3) || calls < 30 {
        call_traced(sandbox.port, "frontend", json!({ "search": "oak" }), None, Some("alice:wonderland"));
        calls += 1;
    }
    let url = format!("http://{address}/");
    let dom = chromium(&chromium_path, &url, &["--dump-dom"]);

    let replicas: Vec<String> = every_replica(&sandbox)
        .into_iter()
        .map(|(node, address)| {
            let index =
                every_replica(&sandbox).iter().filter(|(n, _)| *n == node).position(|(_, a)| *a == address);
            format!("{node}-{}", index.unwrap())
        })
        .collect();
    assert_eq!(replicas.len(), 13);
    for replica in &replicas {
        assert!(
            dom.contains(&format!("data-replica=\"{replica}\"")),
            "the page does not show {replica}:\n{dom}"
        );
    }
    assert!(dom.contains("app shop"), "{dom}");
    for service in ["frontend", "cart", "catalog"] {
        assert!(dom.contains(&format!("data-service=\"{service}\"")), "no service {service}");
    }
    assert!(dom.contains("spread x2") && dom.contains("shard x4") && dom.contains("scatter x4"), "patterns");
    // The front's requests per second, as the page drew them.
    let rps = |replica: &str| drawn_rate(&dom, replica, "data-rps");
    assert!(rps("frontend-0") > 1.0, "the front served {calls} calls in ~3 s");
    assert!(rps("catalog.leaf-3") > 1.0, "every search reaches every leaf");
    assert_eq!(dom.matches("data-health=\"healthy\"").count(), 13, "{dom}");

    // A replica's log lines, as the page fetches them when one is clicked.
    let (status, logs) = support::try_http_get(&address, "/api/logs?replica=cart-0").unwrap();
    assert_eq!(status, 200);
    assert!(logs.contains("serving"), "{logs}");

    // The screenshot is kept as an artifact of the test run.
    let artifacts = support::target_dir().join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard-shop.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&chromium_path, &url, &["--window-size=1400,1100", &format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} bytes", png.len());
    eprintln!("dashboard screenshot: {}", shot.display());
}

#[test]
fn replicas_racing_for_one_key_show_their_retries_on_the_dashboard_and_name_the_cure_in_their_logs() {
    let Some(chromium_path) = support::observe::chromium_or_skip() else { return };
    // server6: three replicas behind a balancer, all writing one global counter.
    let (sandbox, _dashboard, address) = deployed_with_dashboard("server6");
    // Six concurrent callers, which the balancer spreads over the replicas, racing for the
    // counter's key: for 3 s, and on while Chromium reads the page, so that its rates (over the
    // last 5 s) hold the races however slowly Chromium starts. Bounded: 2,000 calls or 60 s each.
    let method = "replicated-storage-service";
    let calls = std::sync::atomic::AtomicU64::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let dom = std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                let started = std::time::Instant::now();
                for _ in 0..2_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed)
                        || started.elapsed() > Duration::from_secs(60)
                    {
                        break;
                    }
                    let answer = call_traced(sandbox.port, method, json!({}), None, None);
                    assert!(answer["result"]["requests"].is_u64(), "{answer}");
                    calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs(3));
        let dom = chromium(&chromium_path, &format!("http://{address}/"), &["--dump-dom"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        dom
    });
    let calls = calls.into_inner();
    let stored: Value = call_traced(sandbox.port, method, json!({}), None, None);
    assert_eq!(stored["result"]["requests"], calls + 1, "no update was lost to the races");

    // The balancer is node `{method}`; the stateful replicas are node `{method}.replica`.
    let retries: Vec<f64> =
        (0..3).map(|i| drawn_rate(&dom, &format!("{method}.replica-{i}"), "data-state-retries")).collect();
    assert!(retries.iter().sum::<f64>() > 0.0, "{calls} concurrent calls raced without a retry: {retries:?}");
    assert!(dom.contains("class=\"raced\"") && dom.contains("retries/s"), "the node shows its races:\n{dom}");
    assert!(dom.contains("<th>state retries/s</th>"), "the table has the column");

    // Each replica that lost enough races says so once, with the key and the cure.
    let mut warned = 0;
    for replica in 0..3 {
        let (status, logs) =
            support::try_http_get(&address, &format!("/api/logs?replica={method}.replica-{replica}"))
                .unwrap();
        assert_eq!(status, 200);
        let said = logs.matches("compare-and-swaps lost to other writers").count();
        assert!(said <= 1, "at most once a minute:\n{logs}");
        if said == 1 {
            assert!(logs.contains("server6/replicated-storage-service/global"), "{logs}");
            assert!(logs.contains("every replica writes"), "{logs}");
        }
        warned += said;
    }
    assert!(warned >= 1, "{calls} calls over three replicas, and no replica warned of its races");
}

#[test]
fn the_kubernetes_manifests_carry_the_deployers_opentelemetry_settings_but_not_its_headers() {
    let mut sandbox = Sandbox::new("shop");
    sandbox
        .env
        .push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), "http://otel-collector.observability:4318".into()));
    sandbox.env.push(("OTEL_TRACES_SAMPLER".into(), "parentbased_traceidratio".into()));
    sandbox.env.push(("OTEL_EXPORTER_OTLP_HEADERS".into(), "x-api-key=do-not-write-me".into()));
    // The cart keeps state in four pods, which on Kubernetes takes a Redis.
    sandbox.env.push(("REDIS_HOST".into(), "redis.shop".into()));
    let run = sandbox.program(&[
        "--runner",
        "kubernetes",
        "--storage",
        "redis",
        "manifests",
        "--namespace",
        "shop",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let pods = run.stdout.matches("name: OTEL_EXPORTER_OTLP_ENDPOINT").count();
    assert_eq!(pods, 6, "every workload (frontend, its replicas, cart, its shards, catalog, its leaves)");
    assert!(run.stdout.contains("value: http://otel-collector.observability:4318"), "{}", run.stdout);
    assert!(run.stdout.contains("name: OTEL_TRACES_SAMPLER"));
    assert!(!run.stdout.contains("do-not-write-me"), "credentials must not reach a manifest");
}

#[test]
fn every_example_shows_all_its_replicas_on_the_dashboard_and_every_metrics_page_passes_promtool() {
    let Some(promtool) = promtool_or_skip() else { return };
    for example in [
        "server1",
        "server2",
        "server3",
        "histogram",
        "server5",
        "server6",
        "server7",
        "shard_of_spreads",
        "sharded_http",
    ] {
        let mut sandbox = Sandbox::new(example);
        sandbox.env.push(("SIMPLE_USER_STORAGE_USERS".into(), "alice:wonderland".into()));
        sandbox.up();
        let (_dashboard, address) = dashboard(&sandbox);
        let replicas = every_replica(&sandbox);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let state: Value = loop {
            let state: Value =
                serde_json::from_str(&support::try_http_get(&address, "/api/state").unwrap().1).unwrap();
            let shown = state["nodes"].as_array().map_or(0, |nodes| {
                nodes.iter().flat_map(|n| n["replicas"].as_array().cloned().unwrap_or_default()).count()
            });
            if shown == replicas.len() || std::time::Instant::now() > deadline {
                break state;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        for node in state["nodes"].as_array().unwrap() {
            for replica in node["replicas"].as_array().unwrap() {
                assert_eq!(replica["health"], "healthy", "{example}: {replica}");
            }
        }
        let shown: usize =
            state["nodes"].as_array().unwrap().iter().map(|n| n["replicas"].as_array().unwrap().len()).sum();
        assert_eq!(shown, replicas.len(), "{example}: {state}");
        for (node, address) in replicas {
            let (status, text) = support::try_http_get(&address, "/metrics").expect("the node answers");
            // A program's own HTTP server (sharded_http) serves what it serves; our nodes, metrics.
            if status == 200 && text.contains("# TYPE metaparticle_") {
                if let Err(said) = promtool_check(&promtool, &text) {
                    panic!("{example}: promtool rejects the metrics of {node} at {address}:\n{said}");
                }
            } else {
                assert_eq!(example, "sharded_http", "{node} at {address} serves no metrics: {status} {text}");
            }
        }
    }
}

#[test]
fn the_metaparticle_client_serves_the_dashboard_of_an_app_from_anywhere() {
    let sandbox = Sandbox::new("server2");
    sandbox.up();
    let address = format!("127.0.0.1:{}", support::free_port());
    let child = std::process::Command::new(support::binary("metaparticle"))
        .args(["dashboard", "server2", "--listen", &address])
        .env("METAPARTICLE_HOME", sandbox.home.path())
        .current_dir(std::env::temp_dir())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the client starts");
    let _child = support::observe::Reaped(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let state = loop {
        let state = support::try_http_get(&address, "/api/state")
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .filter(|s| s["nodes"].as_array().is_some_and(|n| n.len() == 2));
        match state {
            Some(state) => break state,
            None => {
                assert!(std::time::Instant::now() < deadline, "the client's dashboard never showed the app")
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(state["runner"], "local");
    assert_eq!(state["services"][0]["pattern"], "spread x3");
    assert_eq!(state["nodes"][1]["replicas"].as_array().unwrap().len(), 3);
    // Loopback only, and a clear word for an app that is not there.
    let elsewhere = sandbox.client(&["dashboard", "server2", "--listen", "0.0.0.0:0"]);
    assert!(!elsewhere.ok && elsewhere.stderr.contains("only on loopback"), "{}", elsewhere.stderr);
    let missing = sandbox.client(&["dashboard", "nothing-here", "--listen", "127.0.0.1:0"]);
    assert!(
        !missing.ok && missing.stderr.contains("app 'nothing-here' is not running"),
        "{}",
        missing.stderr
    );
}
