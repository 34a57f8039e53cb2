//! Seeing what an app does on the Docker runner: the OpenTelemetry settings reach the containers
//! (spans of one request arrive as one tree in a real OTLP receiver), every container's
//! `/metrics` passes `promtool check metrics`, and the dashboard shows every container replica
//! with its traffic.
//!
//! The receiver listens on the address of Docker's default bridge on this machine (the host as
//! containers reach it); the app's containers are on the app's own network, and reach it through
//! the host. Skips without a Docker engine, Rotel or promtool, unless `MP_REQUIRE_*` (CI).

mod support;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::docker::{binaries_or_skip, Deployed};
use support::observe::{promtool_check, promtool_or_skip, OtlpReceiver, Reaped};

/// This machine's address on Docker's default bridge, as containers reach the host: the bridge's
/// gateway, or, where the engine does not say it, the first address of its subnet (which is what
/// the engine gives its bridge interface).
fn bridge_gateway() -> String {
    let inspect = |format: &str| {
        let output = Command::new("docker")
            .args(["network", "inspect", "bridge", "--format", format])
            .output()
            .expect("docker runs");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let gateway = inspect("{{range .IPAM.Config}}{{.Gateway}}{{end}}");
    if !gateway.is_empty() {
        return gateway;
    }
    let subnet = inspect("{{range .IPAM.Config}}{{.Subnet}}{{end}}");
    let network = subnet.split('/').next().unwrap_or_default();
    let mut octets: Vec<u8> = network.split('.').filter_map(|o| o.parse().ok()).collect();
    assert_eq!(octets.len(), 4, "Docker's default bridge has no IPv4 subnet: '{subnet}'");
    octets[3] += 1;
    octets.iter().map(u8::to_string).collect::<Vec<_>>().join(".")
}

fn post(port: u16, traceparent: &str) -> Value {
    use std::io::{Read, Write};
    let body = r#"{"jsonrpc":"2.0","method":"replicated-service","params":[{}],"id":1}"#;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntraceparent: {traceparent}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap()
}

#[test]
fn on_docker_traces_metrics_and_the_dashboard_cover_every_container() {
    let Some(bins) = binaries_or_skip() else { return };
    let Some(receiver) = OtlpReceiver::start_on_or_skip(&bridge_gateway()) else { return };
    let Some(promtool) = promtool_or_skip() else { return };
    let app = Deployed::new(bins, "server2")
        .with_env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())
        .with_env("OTEL_BSP_SCHEDULE_DELAY", "100");
    app.up();

    let trace = "5b8efff798038103d269b633813fc60c";
    let answer = post(app.port, &format!("00-{trace}-eee19b7ec3c1b174-01"));
    assert!(answer["result"]["server"].as_str().is_some(), "{answer}");
    let spans = receiver.spans_of(trace, 3, Duration::from_secs(30));
    assert_eq!(spans.len(), 3, "balancer, attempt, replica: {spans:#?}");
    let root =
        spans.iter().find(|s| s.parent_id == "eee19b7ec3c1b174").expect("the caller's span is continued");
    let attempt = spans.iter().find(|s| s.parent_id == root.span_id).expect("the attempt");
    let replica = spans.iter().find(|s| s.parent_id == attempt.span_id).expect("the replica's span");
    assert!(
        replica.instance.starts_with(&format!("{}-replicated-service-replica-", app.name)),
        "{replica:#?}"
    );

    // The dashboard of the program itself, which asks the engine where the containers are.
    let listen = format!("127.0.0.1:{}", support::free_port());
    let dashboard = Command::new(bins.dir.join("examples/server2"))
        .args(["dashboard", "--app", &app.name, "--listen", &listen])
        .env("METAPARTICLE_HOME", app.home.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("the dashboard starts");
    let _dashboard = Reaped(dashboard);
    for _ in 0..40 {
        post(app.port, "00-5b8efff798038103d269b633813fc60d-eee19b7ec3c1b174-01");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let state: Value = loop {
        let state = support::try_http_get(&listen, "/api/state")
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok());
        let busy = state.as_ref().is_some_and(|s| {
            s["nodes"][0]["replicas"][0]["requests_per_s"].as_f64().is_some_and(|r| r > 0.0)
        });
        if busy || Instant::now() > deadline {
            break state.expect("the dashboard answers");
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(state["runner"], "docker", "{state}");
    let mut seen = HashSet::new();
    for node in state["nodes"].as_array().unwrap() {
        for replica in node["replicas"].as_array().unwrap() {
            assert_eq!(replica["health"], "healthy", "{replica}");
            assert_eq!(replica["state"], "running", "{replica}");
            let address = replica["address"].as_str().expect("the engine gives every container's address");
            let (status, metrics) =
                support::try_http_get(address, "/metrics").expect("the container answers");
            assert_eq!(status, 200);
            if let Err(said) = promtool_check(&promtool, &metrics) {
                panic!("promtool rejects the metrics of {replica}:\n{said}");
            }
            seen.insert(replica["name"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(state["nodes"][0]["replicas"][0]["requests_per_s"].as_f64().unwrap() > 0.0, "{state}");
    let (status, logs) = support::try_http_get(&listen, "/api/logs?replica=replicated-service-0").unwrap();
    assert_eq!(status, 200, "{logs}");
    assert!(logs.contains("serving"), "{logs}");

    app.delete_and_check_nothing_remains();
}
