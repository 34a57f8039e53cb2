//! `containerize`: a program's own HTTP server, replicated and sharded by URL, in-process.

use std::collections::HashSet;
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use metaparticle as mp;

/// A server that answers with which replica it is (its port), the method, path, body and the
/// forwarding headers it received.
async fn echo_server(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let header = |name: &str| parts.headers.get(name).map(|v| v.to_str().unwrap().to_string());
                let answer = serde_json::json!({
                    "port": port, "method": parts.method.as_str(), "path": parts.uri.to_string(),
                    "body": String::from_utf8_lossy(&body), "forwarded_for": header("x-forwarded-for"),
                    "forwarded_host": header("x-forwarded-host"), "custom": header("x-custom"),
                });
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer.to_string()))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn request(address: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "example.test")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status().as_u16();
    (status, String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn one_user_always_reaches_one_shard_and_users_spread_over_shards() {
    let svc = mp::ContainerOptions::new("users").shards(3, r"^/users/([^/]+)").service(echo_server);
    let app = mp::testing::launch([svc]).await.unwrap();
    let mut shards = HashSet::new();
    for user in (0..30).map(|i| format!("user-{i}")) {
        let first = json(&request(app.address("users"), "GET", &format!("/users/{user}"), "").await.1)
            ["port"]
            .clone();
        for suffix in ["", "/photos?size=2"] {
            let again =
                json(&request(app.address("users"), "GET", &format!("/users/{user}{suffix}"), "").await.1);
            assert_eq!(again["port"], first, "{user}{suffix}");
        }
        shards.insert(first);
    }
    assert_eq!(shards.len(), 3, "{shards:?}");
}

#[tokio::test]
async fn method_path_headers_and_body_pass_through_with_forwarding_headers() {
    let svc =
        mp::ContainerOptions::new("users").shards(2, r"^/users/([^/]+)").replicas(2).service(echo_server);
    let app = mp::testing::launch([svc]).await.unwrap();
    let (status, text) = request(app.address("users"), "PUT", "/users/bob/settings?x=1", "hello body").await;
    assert_eq!(status, 200);
    let answer = json(&text);
    assert_eq!(answer["method"], "PUT");
    assert_eq!(answer["path"], "/users/bob/settings?x=1");
    assert_eq!(answer["body"], "hello body");
    assert_eq!(answer["custom"], "kept");
    assert_eq!(answer["forwarded_host"], "example.test");
    // Two proxies (router, then the shard's balancer) each append the caller they saw.
    assert_eq!(answer["forwarded_for"], "127.0.0.1, 127.0.0.1");
}

#[tokio::test]
async fn a_path_that_does_not_match_the_pattern_is_a_clear_404() {
    let svc = mp::ContainerOptions::new("users").shards(3, r"^/users/([^/]+)").service(echo_server);
    let app = mp::testing::launch([svc]).await.unwrap();
    let (status, text) = request(app.address("users"), "GET", "/about", "").await;
    assert_eq!(status, 404);
    assert!(text.contains("'/about' does not match the shard pattern '^/users/([^/]+)'"), "{text}");
}

#[tokio::test]
async fn replicas_share_requests_behind_an_http_balancer() {
    let svc = mp::ContainerOptions::new("web").replicas(3).service(echo_server);
    let app = mp::testing::launch([svc]).await.unwrap();
    let mut ports = HashSet::new();
    for _ in 0..60 {
        ports.insert(json(&request(app.address("web"), "GET", "/", "").await.1)["port"].clone());
    }
    assert_eq!(ports.len(), 3);
}

#[tokio::test]
async fn a_dead_replica_is_a_502_naming_it() {
    let svc = mp::ContainerOptions::new("web").replicas(2).service(echo_server);
    let app = mp::testing::launch([svc]).await.unwrap();
    app.stop_replica("web.replica", 0);
    app.stop_replica("web.replica", 1);
    let (status, text) = request(app.address("web"), "GET", "/", "").await;
    assert_eq!(status, 502);
    assert!(text.contains("web.replica-"), "{text}");
}

#[test]
fn bad_options_are_clear_errors() {
    // Refused when the program starts (compiling its plan), before anything is deployed.
    let bad = mp::ContainerOptions::new("web").shards(3, "/users/(").service(echo_server);
    let bad = mp::plan::compile(&[bad]).unwrap_err();
    assert!(bad.to_string().contains("'/users/(' is not a valid regular expression"), "{bad}");
    let none = mp::ContainerOptions::new("web").replicas(0).service(echo_server);
    let none = mp::plan::compile(&[none]).unwrap_err();
    assert!(none.to_string().contains("at least one replica"), "{none}");
}
