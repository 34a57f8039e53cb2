//! The request context a handler takes: what it carries, and that it is a value a handler can
//! move into other tasks (task-locals used to be lost inside `tokio::spawn`).

use std::time::Duration;

use metaparticle as mp;
use serde_json::{json, Value};

fn users() -> mp::BasicAuth {
    mp::BasicAuth::from_pairs([("alice", "wonderland")])
}

/// Replies with what its context says, read inside a spawned task.
async fn introspect(ctx: mp::Context, _request: Value) -> Value {
    tokio::spawn(async move {
        json!({
            "user": ctx.user(),
            "node": ctx.node(),
            "replica": ctx.replica(),
            "hostname": ctx.hostname(),
            "remaining_ms": ctx.remaining().map(|d| d.as_millis() as u64),
        })
    })
    .await
    .expect("the spawned task")
}

#[tokio::test]
async fn the_context_carries_user_identity_and_deadline_into_spawned_tasks() {
    let svc = mp::service("who", mp::spread(2, introspect))
        .timeout(Duration::from_secs(3))
        .expose()
        .with_basic_auth(users());
    let app = mp::testing::launch([svc]).await.unwrap();
    let address = app.address("who").to_string();
    let answer = app.client_as("alice", "wonderland").call(&address, "who", &json!({})).await.unwrap();
    assert_eq!(answer["user"], json!("alice"), "{answer}");
    assert_eq!(answer["node"], json!("who.replica"), "{answer}");
    let replica = answer["replica"].as_u64().unwrap();
    assert_eq!(answer["hostname"], json!(format!("who.replica-{replica}")), "{answer}");
    // The balancer waits at most the service's timeout, and told the replica so.
    let remaining = answer["remaining_ms"].as_u64().expect("a replica behind a balancer has a deadline");
    assert!((2_000..=3_000).contains(&remaining), "{answer}");
}

#[tokio::test]
async fn a_front_without_a_caller_deadline_has_none_and_a_caller_may_set_one() {
    let app = mp::testing::launch([mp::service("who", introspect).expose()]).await.unwrap();
    let answer: Value = app.call("who", json!({})).await.unwrap();
    assert_eq!(answer["remaining_ms"], Value::Null, "{answer}");
    assert_eq!(answer["user"], Value::Null, "{answer}");

    // Any caller may say how long it waits (it can only shorten the work done for it).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"jsonrpc":"2.0","method":"who","params":[{}],"id":1}"#;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-metaparticle-timeout-ms: 1500\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(app.address("who")).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let answer: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let remaining = answer["result"]["remaining_ms"].as_u64().unwrap();
    assert!((1_000..=1_500).contains(&remaining), "{answer}");
}

#[tokio::test]
async fn a_sync_handler_and_a_merge_take_the_context_too() {
    let leaf = |ctx: mp::Context, _: Value| ctx.replica();
    let merge = |ctx: mp::Context, parts: Vec<usize>| json!({ "parts": parts, "root": ctx.node() });
    let app = mp::testing::launch([mp::service("sg", mp::scatter(3, leaf, merge)).expose()]).await.unwrap();
    let answer: Value = app.call("sg", json!({})).await.unwrap();
    assert_eq!(answer, json!({ "parts": [0, 1, 2], "root": "sg" }));
}
