//! Every topology pattern and their nesting, launched in-process through the real data plane.

use std::collections::{HashMap, HashSet};

use metaparticle as mp;
use serde::Deserialize;
use serde_json::{json, Value};

fn whoami(request: Value) -> Value {
    json!({ "request": request, "server": mp::hostname() })
}

#[derive(Deserialize)]
struct User {
    user: String,
}

async fn servers_seen(
    app: &mp::testing::TestApp,
    service: &str,
    request: Value,
    calls: usize,
) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..calls {
        let answer: Value = app.call(service, request.clone()).await.unwrap();
        *seen.entry(answer["server"].as_str().unwrap().to_string()).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn a_plain_service_answers_with_its_handler() {
    let app = mp::testing::launch([mp::service("echo", |r: Value| r).expose()]).await.unwrap();
    let answer: Value = app.call("echo", json!({"x": [1, 2]})).await.unwrap();
    assert_eq!(answer, json!({"x": [1, 2]}));
}

#[tokio::test]
async fn async_handlers_over_typed_requests_work_like_closures() {
    #[derive(Deserialize)]
    struct Add {
        a: i64,
        b: i64,
    }
    async fn add(req: Add) -> i64 {
        tokio::task::yield_now().await;
        req.a + req.b
    }
    let app = mp::testing::launch([mp::service("add", add)]).await.unwrap();
    let sum: i64 = app.call("add", json!({"a": 2, "b": 40})).await.unwrap();
    assert_eq!(sum, 42);
}

#[tokio::test]
async fn spread_shares_load_roughly_evenly_between_replicas() {
    let app = mp::testing::launch([mp::service("spread", mp::spread(3, whoami))]).await.unwrap();
    let seen = servers_seen(&app, "spread", json!({}), 300).await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (server, count) in &seen {
        assert!(*count >= 50, "{server} got only {count} of 300: {seen:?}");
    }
}

#[tokio::test]
async fn same_key_always_reaches_the_same_shard_and_keys_use_every_shard() {
    let tree = mp::shard(4, |r: &User| r.user.clone(), whoami);
    let app = mp::testing::launch([mp::service("users", tree)]).await.unwrap();
    let mut shards_used = HashSet::new();
    for i in 0..40 {
        let user = format!("user-{i}");
        let seen = servers_seen(&app, "users", json!({ "user": user }), 3).await;
        assert_eq!(seen.len(), 1, "{user} reached several shards: {seen:?}");
        shards_used.extend(seen.into_keys());
    }
    assert_eq!(shards_used.len(), 4, "{shards_used:?}");
}

#[tokio::test]
async fn scatter_sends_to_every_leaf_and_merges_in_leaf_order() {
    let leaf = |ctx: mp::Context, _: Value| ctx.replica();
    let tree = mp::scatter(5, leaf, |parts: Vec<usize>| parts);
    let app = mp::testing::launch([mp::service("gather", tree)]).await.unwrap();
    let parts: Vec<usize> = app.call("gather", json!({})).await.unwrap();
    assert_eq!(parts, vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn spread_of_scatter_balances_two_roots_that_share_four_leaves() {
    let leaf = |_: Value| mp::hostname();
    let merge = |parts: Vec<String>| json!({ "leaves": parts, "server": mp::hostname() });
    let tree = mp::spread(2, mp::scatter(4, leaf, merge));
    let app = mp::testing::launch([mp::service("tree", tree)]).await.unwrap();
    let mut roots = HashSet::new();
    for _ in 0..40 {
        let answer: Value = app.call("tree", json!({})).await.unwrap();
        let leaves: Vec<String> = serde_json::from_value(answer["leaves"].clone()).unwrap();
        assert_eq!(leaves, (0..4).map(|i| format!("tree.replica.leaf-{i}")).collect::<Vec<_>>());
        roots.insert(answer["server"].as_str().unwrap().to_string());
    }
    assert_eq!(roots, HashSet::from(["tree.replica-0".to_string(), "tree.replica-1".to_string()]));
}

#[tokio::test]
async fn shard_of_spread_keeps_a_key_on_its_shard_and_balances_within_it() {
    let tree = mp::shard(3, |r: &User| r.user.len(), mp::spread(2, whoami));
    let app = mp::testing::launch([mp::service("sharded", tree)]).await.unwrap();
    for user in ["a", "bb", "ccc"] {
        let seen = servers_seen(&app, "sharded", json!({ "user": user }), 40).await;
        let shard = user.len() % 3;
        let expected: HashSet<String> =
            (0..2).map(|r| format!("sharded.shard-{shard}.replica-{r}")).collect();
        assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), expected, "user {user}");
    }
}

#[tokio::test]
async fn several_services_in_one_program_are_each_callable() {
    let app = mp::testing::launch([
        mp::service("upper", |s: String| s.to_uppercase()).expose(),
        mp::service("count", mp::spread(2, |s: String| s.len())).expose(),
    ])
    .await
    .unwrap();
    let upper: String = app.call("upper", "abc").await.unwrap();
    let count: usize = app.call("count", "abcd").await.unwrap();
    assert_eq!((upper.as_str(), count), ("ABC", 4));
}

#[tokio::test]
async fn handler_errors_reach_the_caller_with_their_code() {
    let svc = mp::service("div", |(a, b): (i64, i64)| {
        if b == 0 {
            Err(mp::HandlerError::new("division by zero").with_code(-32042))
        } else {
            Ok(a / b)
        }
    });
    let app = mp::testing::launch([svc]).await.unwrap();
    let quotient: i64 = app.call("div", (9, 3)).await.unwrap();
    assert_eq!(quotient, 3);
    match app.call::<_, i64>("div", (1, 0)).await.unwrap_err() {
        mp::Error::Rpc(e) => assert_eq!((e.code, e.message.as_str()), (-32042, "division by zero")),
        other => panic!("unexpected {other}"),
    }
}
