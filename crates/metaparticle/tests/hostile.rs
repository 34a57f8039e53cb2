//! The data plane against hostile or careless callers: heads and bodies that are too big or too
//! slow, JSON-RPC at the edges of the specification, directly and through a balancer.

use std::time::{Duration, Instant};

use metaparticle as mp;
use metaparticle::testing::Limits;
use metaparticle::testing::{launch, launch_with, Options};
use serde_json::{json, Value};
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

/// `POST /` of `body` to `address`: the status and the body as text.
async fn post(address: std::net::SocketAddr, body: &str) -> (u16, String) {
    let (status, answer) =
        mp::client::RpcClient::new().post(&address.to_string(), body.to_string().into()).await.unwrap();
    (status.as_u16(), String::from_utf8(answer.to_vec()).unwrap())
}

/// A leaf exposed on its own, and the same handler behind an exposed balancer.
async fn leaf_and_balancer() -> mp::testing::TestApp {
    launch([
        mp::service("svc", |x: i64| x * 2).expose(),
        mp::service("spread", mp::spread(1, |x: i64| x * 2)).expose(),
    ])
    .await
    .unwrap()
}

#[tokio::test]
async fn notifications_get_no_answer_even_with_wrong_params_directly_and_through_a_balancer() {
    let app = leaf_and_balancer().await;
    for (service, address) in [("svc", app.address("svc")), ("spread", app.address("spread"))] {
        for body in [
            format!(r#"{{"jsonrpc":"2.0","method":"{service}","params":[1]}}"#),
            format!(r#"{{"jsonrpc":"2.0","method":"{service}","params":[1,2]}}"#),
            format!(r#"{{"jsonrpc":"2.0","method":"{service}","params":["four"]}}"#),
            format!(
                r#"[{{"jsonrpc":"2.0","method":"{service}","params":[1]}},{{"jsonrpc":"2.0","method":"{service}","params":[1,2]}}]"#
            ),
        ] {
            assert_eq!(post(address, &body).await, (204, String::new()), "{service}: {body}");
        }
    }
    // The same when the balancer cannot reach its replica: a notification is never answered.
    app.stop_replica("spread.replica", 0);
    for body in [
        r#"{"jsonrpc":"2.0","method":"spread","params":[1]}"#,
        r#"[{"jsonrpc":"2.0","method":"spread","params":[1]},{"jsonrpc":"2.0","method":"spread"}]"#,
    ] {
        assert_eq!(post(app.address("spread"), body).await, (204, String::new()), "{body}");
    }
}

#[tokio::test]
async fn a_batch_with_an_invalid_element_answers_every_element_directly_and_through_a_balancer() {
    let app = leaf_and_balancer().await;
    for service in ["svc", "spread"] {
        let body = format!(r#"[1, {{"jsonrpc":"2.0","method":"{service}","params":[21],"id":"a"}}]"#);
        let (status, answer) = post(app.address(service), &body).await;
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(status, 200);
        assert_eq!(answer[0]["id"], Value::Null, "{service}: {answer}");
        assert_eq!(answer[0]["error"]["code"], json!(-32600), "{service}: {answer}");
        assert_eq!(answer[1], json!({"jsonrpc":"2.0","id":"a","result":42}), "{service}: {answer}");
    }
    app.stop_replica("spread.replica", 0);
    let (_, answer) =
        post(app.address("spread"), r#"[1, {"jsonrpc":"2.0","method":"spread","params":[21],"id":"a"}]"#)
            .await;
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer.as_array().map(Vec::len), Some(2), "{answer}");
    assert_eq!((answer[0]["id"].clone(), answer[0]["error"]["code"].clone()), (Value::Null, json!(-32600)));
    assert_eq!((answer[1]["id"].clone(), answer[1]["error"]["code"].clone()), (json!("a"), json!(-32000)));
}

#[tokio::test]
async fn an_unknown_method_is_reported_before_its_params_are_checked() {
    let app = leaf_and_balancer().await;
    for service in ["svc", "spread"] {
        let (_, answer) =
            post(app.address(service), r#"{"jsonrpc":"2.0","method":"nope","params":[1,2],"id":3}"#).await;
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["error"]["code"], json!(-32601), "{service}: {answer}");
        assert_eq!(answer["id"], json!(3));
    }
}

#[tokio::test]
async fn integer_ids_beyond_64_bits_come_back_exactly_as_sent() {
    let app = leaf_and_balancer().await;
    for id in ["123456789012345678901234567890", "-98765432109876543210", "18446744073709551616"] {
        for service in ["svc", "spread"] {
            let ok = format!(r#"{{"jsonrpc":"2.0","method":"{service}","params":[1],"id":{id}}}"#);
            let bad = format!(r#"[{{"jsonrpc":"2.0","method":"nope","id":{id}}}]"#);
            for body in [ok, bad] {
                let (_, answer) = post(app.address(service), &body).await;
                assert!(answer.contains(&format!(r#""id":{id},"#)), "{service}: {body} -> {answer}");
            }
        }
    }
    app.stop_replica("spread.replica", 0);
    let id = "123456789012345678901234567890";
    let (_, answer) = post(
        app.address("spread"),
        &format!(r#"{{"jsonrpc":"2.0","method":"spread","params":[1],"id":{id}}}"#),
    )
    .await;
    assert!(answer.contains(&format!(r#""id":{id},"#)) && answer.contains("-32000"), "{answer}");
}

#[tokio::test]
async fn a_lower_case_basic_scheme_authenticates() {
    let users = mp::BasicAuth::from_pairs([("alice", "wonderland")]);
    let app = launch([mp::service("svc", |r: Value| r).expose().with_basic_auth(users)]).await.unwrap();
    let credentials = mp::client::basic_auth_header("alice", "wonderland").replacen("Basic", "basic", 1);
    let body = r#"{"jsonrpc":"2.0","method":"svc","params":[5],"id":1}"#;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {credentials}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(app.address("svc"), request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with(r#""result":5}"#), "{answer}");
}
