//! The wire protocol as a client sees it: the seeds' exact bytes, every JSON-RPC error, batches,
//! limits, and the boundary between exposed and internal nodes.

use metaparticle as mp;
use metaparticle::client::RpcClient;
use serde_json::{json, Value};

async fn post(address: std::net::SocketAddr, body: &str) -> (u16, String) {
    let (status, body) = RpcClient::new().post(&address.to_string(), body.to_string().into()).await.unwrap();
    (status.as_u16(), String::from_utf8(body.to_vec()).unwrap())
}

fn code(body: &str) -> i64 {
    let v: Value = serde_json::from_str(body).unwrap();
    v["error"]["code"].as_i64().unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn simple() -> mp::testing::TestApp {
    mp::testing::launch([mp::service("simple-service", |r: Value| json!({ "A": r })).expose()]).await.unwrap()
}

#[tokio::test]
async fn the_seeds_curl_request_is_answered_byte_for_byte() {
    let app = simple().await;
    let (status, body) = post(
        app.address("simple-service"),
        r#"{"jsonrpc": "2.0", "params":[{}], "method": "simple-service", "id": "example"}"#,
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"jsonrpc":"2.0","id":"example","result":{"A":{}}}"#));
}

#[tokio::test]
async fn malformed_json_is_a_parse_error() {
    let app = simple().await;
    let (_, body) = post(app.address("simple-service"), r#"{"jsonrpc": "2.0", "#).await;
    assert_eq!(code(&body), -32700);
    assert!(body.contains(r#""id":null"#), "{body}");
}

#[tokio::test]
async fn json_that_is_not_a_request_is_an_invalid_request() {
    let app = simple().await;
    for body in [r#""hello""#, r#"{"method":"simple-service","id":1}"#, "[]"] {
        assert_eq!(code(&post(app.address("simple-service"), body).await.1), -32600, "{body}");
    }
}

#[tokio::test]
async fn an_unknown_method_names_what_the_endpoint_serves() {
    let app = simple().await;
    let (_, body) =
        post(app.address("simple-service"), r#"{"jsonrpc":"2.0","method":"nope","params":[{}],"id":7}"#)
            .await;
    assert_eq!(code(&body), -32601);
    assert!(body.contains("serves 'simple-service'") && body.contains(r#""id":7"#), "{body}");
}

#[tokio::test]
async fn params_of_the_wrong_type_for_the_handler_are_invalid_params() {
    let app = mp::testing::launch([mp::service("square", |x: i64| x * x).expose()]).await.unwrap();
    let (_, body) =
        post(app.address("square"), r#"{"jsonrpc":"2.0","method":"square","params":["four"],"id":1}"#).await;
    assert_eq!(code(&body), -32602);
}

#[tokio::test]
async fn a_panicking_handler_is_an_internal_error_and_the_node_keeps_serving() {
    let svc = mp::service("fragile", |x: i64| {
        if x < 0 {
            panic!("negative input {x}");
        }
        x
    });
    let app = mp::testing::launch([mp::service("front", mp::spread(1, |x: i64| x)), svc]).await.unwrap();
    let err = app.call_value("fragile", &json!(-1)).await.unwrap_err().to_string();
    assert!(err.contains("-32603") && err.contains("negative input -1"), "{err}");
    assert_eq!(app.call_value("fragile", &json!(5)).await.unwrap(), json!(5));
}

#[tokio::test]
async fn batches_are_answered_element_by_element_through_every_role() {
    let tree_services = [
        mp::service("leaf", |x: i64| x + 1),
        mp::service("spread", mp::spread(2, |x: i64| x + 1)),
        mp::service("shard", mp::shard(2, |x: &i64| *x, |x: i64| x + 1)),
        mp::service("gather", mp::scatter(2, |x: i64| x + 1, |parts: Vec<i64>| parts.iter().sum::<i64>())),
    ];
    let app = mp::testing::launch(tree_services).await.unwrap();
    for (service, expected) in [("leaf", [2, 3]), ("spread", [2, 3]), ("shard", [2, 3]), ("gather", [4, 6])] {
        let body = format!(
            r#"[{{"jsonrpc":"2.0","method":"{service}","params":[1],"id":1}},
                {{"jsonrpc":"2.0","method":"{service}","params":[2],"id":2}},
                {{"jsonrpc":"2.0","method":"{service}","params":[3]}}]"#
        );
        let (status, answer) = app.post_raw(service, 0, body).await;
        assert_eq!(status, 200);
        assert_eq!(answer[0], json!({"jsonrpc":"2.0","id":1,"result":expected[0]}), "{service}");
        assert_eq!(answer[1], json!({"jsonrpc":"2.0","id":2,"result":expected[1]}), "{service}");
        assert_eq!(answer.as_array().unwrap().len(), 2, "{service}: notifications get no answer");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let app = simple().await;
    let huge = format!(
        r#"{{"jsonrpc":"2.0","method":"simple-service","params":["{}"],"id":1}}"#,
        "x".repeat(2 << 20)
    );
    let (status, body) = post(app.address("simple-service"), &huge).await;
    assert_eq!((status, code(&body)), (413, -32004));
}

#[tokio::test]
async fn an_unreachable_replica_is_skipped_and_a_dead_node_is_named() {
    let app = mp::testing::launch([
        mp::service("spread", mp::spread(2, |x: i64| x)),
        mp::service("gather", mp::scatter(3, |x: i64| x, |parts: Vec<i64>| parts.len())),
    ])
    .await
    .unwrap();
    app.stop_replica("spread.replica", 0);
    for i in 0..10 {
        assert_eq!(
            app.call_value("spread", &json!(i)).await.unwrap(),
            json!(i),
            "retried on the live replica"
        );
    }
    app.stop_replica("spread.replica", 1);
    let err = app.call_value("spread", &json!(1)).await.unwrap_err().to_string();
    assert!(err.contains("-32000") && err.contains("spread.replica-"), "{err}");

    app.stop_replica("gather.leaf", 2);
    let err = app.call_value("gather", &json!(1)).await.unwrap_err().to_string();
    assert!(err.contains("-32000") && err.contains("gather.leaf-2"), "{err}");
}

#[tokio::test]
async fn internal_nodes_refuse_calls_without_the_app_secret() {
    let app = mp::testing::launch([mp::service("public", mp::spread(1, |x: i64| x)).expose()]).await.unwrap();
    let internal = app.replica_address("public.replica", 0).to_string();
    let outsider = RpcClient::new();
    let (status, body) = outsider
        .post(&internal, r#"{"jsonrpc":"2.0","method":"public","params":[1],"id":1}"#.into())
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 403);
    assert_eq!(code(std::str::from_utf8(&body).unwrap()), -32005);
    // The exposed front takes anyone, and forwards with the secret.
    assert_eq!(
        outsider.call(&app.address("public").to_string(), "public", &json!(3)).await.unwrap(),
        json!(3)
    );
}

#[tokio::test]
async fn health_and_metrics_are_served_and_other_routes_are_not() {
    let app = simple().await;
    let address = app.address("simple-service");
    let get = |path: &'static str| async move {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header("host", "localhost")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    let _ = app.call_value("simple-service", &json!({})).await.unwrap();
    let (status, health) = get("/healthz").await;
    assert_eq!(status, 200);
    assert!(health.contains(r#""status":"ok""#), "{health}");
    let (status, metrics) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("metaparticle_http_requests_total{"), "{metrics}");
    assert_eq!(get("/").await.0, 405);
    assert_eq!(get("/nowhere").await.0, 404);
}
