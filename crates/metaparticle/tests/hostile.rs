//! The data plane against hostile or careless callers: heads and bodies that are too big or too
//! slow, JSON-RPC at the edges of the specification, directly and through a balancer.

use std::time::{Duration, Instant};

use metaparticle as mp;
use metaparticle::plane::server::Limits;
use metaparticle::testing::{launch, launch_with, Options};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes and reads until the server closes the connection (at most 5 s).
async fn exchange(address: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

fn call_with_header(bytes: usize) -> Vec<u8> {
    let body = r#"{"jsonrpc":"2.0","method":"svc","params":[1],"id":1}"#;
    format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Big: {}\r\nContent-Length: {}\r\n\r\n{body}",
        "a".repeat(bytes),
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn a_head_over_64_kib_is_refused_with_431_and_one_under_it_is_served() {
    let app = launch([mp::service("svc", |r: Value| r).expose()]).await.unwrap();
    let refused = exchange(app.address("svc"), &call_with_header(70 * 1024)).await;
    assert!(refused.starts_with("HTTP/1.1 431"), "{}", &refused[..refused.len().min(200)]);
    let served = exchange(app.address("svc"), &call_with_header(60 * 1024)).await;
    assert!(served.starts_with("HTTP/1.1 200") && served.ends_with(r#""result":1}"#), "{served}");
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408_and_the_connection_closes() {
    let limits = Limits { body_timeout: Duration::from_millis(300), ..Limits::default() };
    let app =
        launch_with([mp::service("svc", |r: Value| r).expose()], Options { limits, ..Options::default() })
            .await
            .unwrap();
    let started = Instant::now();
    let answer = exchange(
        app.address("svc"),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"json",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("-32600") && answer.contains("did not arrive within"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the connection was left open: {:?}",
        started.elapsed()
    );
    // A body that arrives in time, even slowly, is served.
    let mut stream = tokio::net::TcpStream::connect(app.address("svc")).await.unwrap();
    let body = br#"{"jsonrpc":"2.0","method":"svc","params":[2],"id":2}"#;
    let head =
        format!("POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.write_all(chunk).await.unwrap();
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.ends_with(r#"{"jsonrpc":"2.0","id":2,"result":2}"#), "{answer}");
}
