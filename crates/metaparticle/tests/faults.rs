//! How the data plane behaves when parts fail: slow leaves, dead replicas, replicas that come
//! back, requests that may have run, and clients that never finish sending.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use metaparticle as mp;
use metaparticle::testing::{launch, launch_with, Limits, Options};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Leaf 2 sleeps for a second; the others answer at once.
async fn slow_leaf(ctx: mp::Context, _: Value) -> usize {
    if ctx.replica() == 2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ctx.replica()
}

#[tokio::test]
async fn a_leaf_past_its_timeout_fails_the_request_naming_the_leaf_by_default() {
    let tree = mp::scatter(4, slow_leaf, |parts: Vec<usize>| parts).leaf_timeout(Duration::from_millis(200));
    let app = launch([mp::service("sg", tree)]).await.unwrap();
    let started = Instant::now();
    let err = app.call_value("sg", &json!({})).await.unwrap_err().to_string();
    assert!(err.contains("-32001") && err.contains("sg.leaf-2") && err.contains("200ms"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(900), "it did not wait for the slow leaf");
}

#[tokio::test]
async fn the_partial_policy_merges_the_leaves_that_answered_and_names_the_missing() {
    let merge =
        |ctx: mp::Context, parts: Vec<usize>| json!({ "parts": parts, "missing": ctx.missing_leaves() });
    let tree = mp::scatter(4, slow_leaf, merge).leaf_timeout(Duration::from_millis(200)).merge_partial();
    let app = launch([mp::service("sg", tree)]).await.unwrap();
    let answer = app.call_value("sg", &json!({})).await.unwrap();
    assert_eq!(answer, json!({ "parts": [0, 1, 3], "missing": ["sg.leaf-2"] }));
    let metrics = reqwest_metrics(app.address("sg")).await;
    assert!(
        metrics.contains("metaparticle_scatter_missing_leaves_total{") && metrics.contains("} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_partial_merge_with_no_leaf_left_is_an_error() {
    let tree = mp::scatter(2, |_: Value| 1, |parts: Vec<u8>| parts.len()).merge_partial();
    let app = launch([mp::service("sg", tree)]).await.unwrap();
    app.stop_replica("sg.leaf", 0);
    app.stop_replica("sg.leaf", 1);
    let err = app.call_value("sg", &json!({})).await.unwrap_err().to_string();
    assert!(err.contains("all 2 leaves failed"), "{err}");
}

/// Sends two slow requests at once (power of two choices puts them on different replicas), kills
/// replica 0 while both are in flight, and returns the outcomes.
async fn kill_mid_flight(service: mp::Service) -> Vec<Result<Value, String>> {
    let app = launch([service]).await.unwrap();
    let request = json!({});
    let calls = (0..2).map(|_| app.call_value("svc", &request));
    let killer = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        app.stop_replica("svc.replica", 0);
    };
    let (outcomes, ()) = tokio::join!(futures_util::future::join_all(calls), killer);
    outcomes.into_iter().map(|o| o.map_err(|e| e.to_string())).collect()
}

async fn slow_echo(_: Value) -> String {
    tokio::time::sleep(Duration::from_millis(400)).await;
    mp::hostname()
}

#[tokio::test]
async fn a_request_that_may_have_run_is_not_retried_unless_the_service_is_idempotent() {
    let outcomes = kill_mid_flight(mp::service("svc", mp::spread(2, slow_echo))).await;
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(failed.len(), 1, "{outcomes:?}");
    assert!(failed[0].contains("-32000") && failed[0].contains("svc.replica-0"), "{}", failed[0]);

    let outcomes = kill_mid_flight(mp::service("svc", mp::spread(2, slow_echo)).idempotent()).await;
    let servers: Vec<Value> =
        outcomes.into_iter().map(|o| o.expect("idempotent requests are retried")).collect();
    assert_eq!(servers, vec![json!("svc.replica-1"); 2]);
}

#[tokio::test]
async fn a_dead_replica_leaves_rotation_and_traffic_returns_when_it_recovers() {
    let app = launch([mp::service("svc", mp::spread(2, |_: Value| mp::hostname()))]).await.unwrap();
    app.stop_replica("svc.replica", 0);
    for _ in 0..20 {
        assert_eq!(app.call_value("svc", &json!({})).await.unwrap(), json!("svc.replica-1"));
    }
    app.restart_replica("svc.replica", 0).await;
    // Health probes run every 500 ms; give them two rounds.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = HashSet::new();
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "replica 0 never returned to rotation: {seen:?}");
        seen.insert(app.call_value("svc", &json!({})).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let limits = Limits { header_timeout: Duration::from_millis(300), ..Limits::default() };
    let app =
        launch_with([mp::service("svc", |r: Value| r).expose()], Options { limits, ..Options::default() })
            .await
            .unwrap();
    let mut slow = tokio::net::TcpStream::connect(app.address("svc")).await.unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(app.address("svc")).await.unwrap();
    let started = Instant::now();
    for stream in [&mut slow, &mut idle] {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // a 408 response may come first
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the connection was left open");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let app = launch([mp::service("svc", |r: Value| r).expose()]).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(app.address("svc")).await.unwrap();
    let huge = format!("POST / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(200 * 1024));
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut response = Vec::new();
    // The node must answer 431 and close, or close at once: a node that hangs on to the
    // connection (the read times out) fails this test, whatever it sent.
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the node kept the connection open for 5 s instead of refusing the head");
    let text = String::from_utf8_lossy(&response);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");
    // The node is unharmed.
    assert_eq!(app.call_value("svc", &json!(1)).await.unwrap(), json!(1));
}

async fn reqwest_metrics(address: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}
