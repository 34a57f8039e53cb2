//! Services that call services, in-process through the real data plane: typed calls from every
//! pattern, errors as the callee sent them, the callee down, deadlines that reach the callee, the
//! user carried along, and the plan refusing what cannot work.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metaparticle as mp;
use mp::client::CallError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A callee that says who served it and for whom.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Seen {
    served_by: String,
    user: Option<String>,
    echo: Value,
}

const WHO: mp::Callee<Value, Seen> = mp::Callee::new("who");

fn who() -> mp::Service {
    mp::service(
        WHO,
        mp::spread(2, |ctx: mp::Context, echo: Value| Seen {
            served_by: ctx.hostname().to_string(),
            user: ctx.user().map(str::to_string),
            echo,
        }),
    )
}

fn rpc_error(e: mp::Error) -> mp::RpcError {
    match e {
        mp::Error::Rpc(e) => e,
        other => panic!("expected a JSON-RPC error, got {other}"),
    }
}

#[tokio::test]
async fn a_typed_call_reaches_the_callee_through_its_balancer_and_returns_its_reply() {
    let front = mp::service("front", |ctx: mp::Context, n: u32| async move {
        let seen = ctx.call(WHO, json!({ "n": n })).await?;
        Ok::<_, mp::HandlerError>(seen)
    })
    .calls(WHO)
    .expose();
    let app = mp::testing::launch([front, who()]).await.unwrap();
    let mut replicas = std::collections::BTreeSet::new();
    for n in 0..6 {
        let seen: Seen = app.call("front", n).await.unwrap();
        assert_eq!(seen.echo, json!({ "n": n }));
        replicas.insert(seen.served_by);
    }
    assert_eq!(replicas.len(), 2, "the callee's balancer spread the calls: {replicas:?}");
}

/// Calls `who` from `caller`'s context with a label, async.
async fn ask(ctx: mp::Context, label: &str) -> Result<Value, mp::HandlerError> {
    let seen = ctx.call(WHO, json!(label)).await?;
    Ok(json!({ "caller": ctx.hostname(), "callee": seen.served_by }))
}

#[tokio::test]
async fn calls_work_from_a_spread_replica_a_shard_a_scatter_leaf_and_a_merge() {
    let spread = mp::service("from-spread", mp::spread(2, |ctx: mp::Context, _: Value| ask(ctx, "spread")));
    let shard =
        mp::service("from-shard", mp::shard(3, |n: &u32| *n, |ctx: mp::Context, _: u32| ask(ctx, "shard")));
    let leaves = mp::service(
        "from-leaves",
        mp::scatter(3, |ctx: mp::Context, _: Value| ask(ctx, "leaf"), |parts: Vec<Value>| parts),
    );
    let merge = mp::service(
        "from-merge",
        mp::scatter(
            2,
            |_: Value| 1,
            |ctx: mp::Context, parts: Vec<u32>| async move {
                let seen = ctx.call(WHO, json!(parts.len())).await?;
                Ok::<_, mp::HandlerError>(json!({ "parts": parts.len(), "callee": seen.served_by }))
            },
        ),
    );
    // A synchronous merge waits for its call on a blocking thread, not on the node's runtime.
    let sync_merge = mp::service(
        "from-sync-merge",
        mp::scatter(
            2,
            |_: Value| 1,
            |ctx: mp::Context, parts: Vec<u32>| {
                let seen = ctx.call_blocking(WHO, json!("sync merge"))?;
                Ok::<_, mp::HandlerError>(json!({ "parts": parts.len(), "callee": seen.served_by }))
            },
        ),
    );
    let services = [spread, shard, leaves, merge, sync_merge].map(|s| s.calls(WHO));
    let app = mp::testing::launch(services.into_iter().chain([who()])).await.unwrap();

    let answer: Value = app.call("from-spread", json!({})).await.unwrap();
    assert!(answer["caller"].as_str().unwrap().starts_with("from-spread.replica-"), "{answer}");
    assert!(answer["callee"].as_str().unwrap().starts_with("who.replica-"), "{answer}");
    for n in 0..3u32 {
        let answer: Value = app.call("from-shard", n).await.unwrap();
        assert_eq!(answer["caller"], json!(format!("from-shard.shard-{n}")), "{answer}");
    }
    let answers: Vec<Value> = app.call("from-leaves", json!({})).await.unwrap();
    let callers: Vec<&str> = answers.iter().map(|a| a["caller"].as_str().unwrap()).collect();
    assert_eq!(callers, ["from-leaves.leaf-0", "from-leaves.leaf-1", "from-leaves.leaf-2"]);
    for merge in ["from-merge", "from-sync-merge"] {
        let answer: Value = app.call(merge, json!({})).await.unwrap();
        assert_eq!(answer["parts"], 2, "{answer}");
        assert!(answer["callee"].as_str().unwrap().starts_with("who.replica-"), "{merge}: {answer}");
    }
}

#[tokio::test]
async fn a_synchronous_handler_calls_with_call_blocking_and_an_async_one_may_not_block() {
    const DOUBLE: mp::Callee<i64, i64> = mp::Callee::new("double");
    let double = mp::service(DOUBLE, |x: i64| x * 2);
    let sync = mp::service("sync", mp::spread(2, |ctx: mp::Context, x: i64| ctx.call_blocking(DOUBLE, x)))
        .calls(DOUBLE);
    // Blocking a node's single-threaded runtime would stall the call it waits for: refused.
    let wrong =
        mp::service("blocks-async", |ctx: mp::Context, x: i64| async move { ctx.call_blocking(DOUBLE, x) })
            .calls(DOUBLE);
    let app = mp::testing::launch([double, sync, wrong]).await.unwrap();
    // Concurrent calls: each sync handler holds a blocking thread while its call is in flight.
    let answers = futures_util::future::join_all((0..16).map(|x| app.call::<_, i64>("sync", x))).await;
    let answers: Vec<i64> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers, (0..16).map(|x| x * 2).collect::<Vec<_>>());
    let err = rpc_error(app.call::<_, i64>("blocks-async", 1).await.unwrap_err());
    assert_eq!(err.code, mp::RpcError::INTERNAL, "{err}");
    assert!(err.message.contains("an async handler awaits ctx.call"), "{err}");
}

#[tokio::test]
async fn calls_by_name_carry_json_and_must_be_declared_too() {
    let dynamic = mp::service("dynamic", |ctx: mp::Context, name: String| async move {
        ctx.call_by_name(&name, json!("by name")).await
    })
    .calls("who");
    let app = mp::testing::launch([dynamic, who()]).await.unwrap();
    let answer: Value = app.call("dynamic", "who").await.unwrap();
    assert_eq!(answer["echo"], json!("by name"));
    let err = rpc_error(app.call::<_, Value>("dynamic", "dynamic").await.unwrap_err());
    assert_eq!(err.code, mp::RpcError::UNDECLARED_CALL, "{err}");
    assert!(err.message.contains(r#".calls("dynamic")"#), "{err}");
}

#[tokio::test]
async fn an_undeclared_call_fails_clearly_on_every_runner_alike() {
    // `who` is part of the app, and the harness's address book knows it, as the local runner's
    // does; the call still fails because Kubernetes would not give this node its address.
    let sloppy =
        mp::service("sloppy", |ctx: mp::Context, _: Value| async move { ctx.call(WHO, json!(1)).await });
    let app = mp::testing::launch([sloppy, who()]).await.unwrap();
    let err = rpc_error(app.call::<_, Value>("sloppy", json!({})).await.unwrap_err());
    assert_eq!(err.code, mp::RpcError::UNDECLARED_CALL, "{err}");
    assert!(err.message.contains("'sloppy'") && err.message.contains(r#".calls("who")"#), "{err}");
}

#[derive(Serialize, Deserialize)]
struct Withdraw {
    cents: u64,
}

const BANK: mp::Callee<Withdraw, u64> = mp::Callee::new("bank");

fn bank() -> mp::Service {
    mp::service(BANK, |w: Withdraw| {
        if w.cents > 100 {
            return Err(mp::HandlerError::new("insufficient funds")
                .with_code(-32044)
                .with_data(json!({ "balance": 100, "asked": w.cents })));
        }
        Ok(100 - w.cents)
    })
}

#[tokio::test]
async fn a_callee_error_arrives_with_its_code_message_and_data() {
    // One caller matches on the error; the other passes it on with `?`.
    let careful = mp::service("careful", |ctx: mp::Context, cents: u64| async move {
        match ctx.call(BANK, Withdraw { cents }).await {
            Ok(left) => json!({ "left": left }),
            Err(e) if e.code == -32044 => {
                json!({ "refused": e.message, "balance": e.data.unwrap()["balance"] })
            }
            Err(e) => json!({ "other": e.to_string() }),
        }
    })
    .calls(BANK);
    let passing = mp::service("passing", |ctx: mp::Context, cents: u64| async move {
        let left = ctx.call(BANK, Withdraw { cents }).await?;
        Ok::<_, mp::HandlerError>(left)
    })
    .calls(BANK);
    let app = mp::testing::launch([careful, passing, bank()]).await.unwrap();
    assert_eq!(app.call::<_, Value>("careful", 30).await.unwrap(), json!({ "left": 70 }));
    assert_eq!(
        app.call::<_, Value>("careful", 500).await.unwrap(),
        json!({ "refused": "insufficient funds", "balance": 100 })
    );
    let err = rpc_error(app.call::<_, u64>("passing", 500).await.unwrap_err());
    assert_eq!((err.code, err.message.as_str()), (-32044, "insufficient funds"));
    assert_eq!(err.data, Some(json!({ "balance": 100, "asked": 500 })));
}

#[tokio::test]
async fn a_callee_that_is_down_is_minus_32000_naming_it() {
    let front = mp::service("front", |ctx: mp::Context, cents: u64| async move {
        ctx.call(BANK, Withdraw { cents }).await
    })
    .calls(BANK);
    let app = mp::testing::launch([front, bank()]).await.unwrap();
    assert_eq!(app.call::<_, u64>("front", 1).await.unwrap(), 99);
    app.stop_replica("bank", 0);
    let err = rpc_error(app.call::<_, u64>("front", 1).await.unwrap_err());
    assert_eq!(err.code, mp::RpcError::UPSTREAM_UNAVAILABLE, "{err}");
    assert!(err.message.contains("'bank-0' cannot be reached"), "{err}");
    app.restart_replica("bank", 0).await;
    assert_eq!(app.call::<_, u64>("front", 2).await.unwrap(), 98, "calls resume once it is back");
}

/// Counts what became of the slow callee's work: begun, finished, or dropped unfinished.
#[derive(Default)]
struct Work {
    begun: AtomicUsize,
    finished: AtomicUsize,
    dropped: AtomicUsize,
}

/// Counts a drop of the handler's future before it finished.
struct DropGuard(Arc<Work>, bool);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn a_slow_callee_does_not_outlive_its_callers_deadline() {
    const SLOW: mp::Callee<u64, u64> = mp::Callee::new("slow");
    let work = Arc::new(Work::default());
    let seen = work.clone();
    let slow = mp::service(SLOW, move |ctx: mp::Context, millis: u64| {
        let work = seen.clone();
        async move {
            work.begun.fetch_add(1, Ordering::SeqCst);
            let mut guard = DropGuard(work.clone(), false);
            assert!(ctx.deadline().is_some(), "the call carried its caller's deadline");
            tokio::time::sleep(Duration::from_millis(millis)).await;
            work.finished.fetch_add(1, Ordering::SeqCst);
            guard.1 = true;
            millis
        }
    });
    // The front's replica may take 300 ms (its balancer says so), so its call to `slow` may too.
    let front = mp::service(
        "front",
        mp::spread(1, |ctx: mp::Context, millis: u64| async move { ctx.call(SLOW, millis).await }),
    )
    .timeout(Duration::from_millis(300))
    .calls(SLOW);
    let app = mp::testing::launch([front, slow]).await.unwrap();

    assert_eq!(app.call::<_, u64>("front", 10).await.unwrap(), 10, "a quick call is answered");
    let started = Instant::now();
    let err = rpc_error(app.call::<_, u64>("front", 2_000).await.unwrap_err());
    assert_eq!(err.code, mp::RpcError::TIMEOUT, "{err}");
    assert!(started.elapsed() < Duration::from_millis(1_500), "answered after {:?}", started.elapsed());
    // Wait until the slow handler would have finished had it been left running.
    tokio::time::sleep(Duration::from_millis(2_300) - started.elapsed().min(Duration::from_millis(2_300)))
        .await;
    assert_eq!(work.begun.load(Ordering::SeqCst), 2);
    assert_eq!(work.finished.load(Ordering::SeqCst), 1, "only the quick call's work finished");
    assert_eq!(work.dropped.load(Ordering::SeqCst), 1, "the slow call's work was stopped at the deadline");
}

#[tokio::test]
async fn a_node_stops_a_handler_at_the_deadline_its_caller_announced_even_on_an_open_connection() {
    // A caller that gives up usually closes its connection, which also ends the work; this one
    // keeps it open (as a caller on a machine that vanished would), so only the deadline can.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = Arc::new(Work::default());
    let seen = work.clone();
    let slow = mp::service("slow", move |millis: u64| {
        let work = seen.clone();
        async move {
            let mut guard = DropGuard(work.clone(), false);
            tokio::time::sleep(Duration::from_millis(millis)).await;
            work.finished.fetch_add(1, Ordering::SeqCst);
            guard.1 = true;
            millis
        }
    })
    .expose();
    let app = mp::testing::launch([slow]).await.unwrap();
    let body = r#"{"jsonrpc":"2.0","method":"slow","params":[2000],"id":1}"#;
    let request = format!(
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-metaparticle-timeout-ms: 200\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(app.address("slow")).await.unwrap();
    let started = Instant::now();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.contains(r#""code":-32001"#), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(1_500), "answered after {:?}", started.elapsed());
    assert_eq!(work.dropped.load(Ordering::SeqCst), 1, "the handler was stopped");
    assert_eq!(work.finished.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_call_made_after_the_deadline_passed_is_not_sent() {
    const COUNT: mp::Callee<(), usize> = mp::Callee::new("count");
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let count = mp::service(COUNT, move |_: ()| counted.fetch_add(1, Ordering::SeqCst) + 1);
    // A synchronous handler cannot be stopped, but its calls after the deadline fail at once.
    let late = mp::service(
        "late",
        mp::spread(1, |ctx: mp::Context, _: ()| {
            std::thread::sleep(Duration::from_millis(400));
            ctx.call_blocking(COUNT, ())
        }),
    )
    .timeout(Duration::from_millis(200))
    .calls(COUNT);
    let app = mp::testing::launch([late, count]).await.unwrap();
    let err = rpc_error(app.call::<_, usize>("late", ()).await.unwrap_err());
    assert_eq!(err.code, mp::RpcError::TIMEOUT, "{err}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the late call never reached the callee");
}

#[tokio::test]
async fn a_per_user_call_keeps_the_user_even_into_a_front_with_passwords() {
    const PRIVATE: mp::Callee<Value, Seen> = mp::Callee::new("private");
    let users = || mp::BasicAuth::from_pairs([("alice", "wonderland"), ("bob", "builder")]);
    let private = mp::service(PRIVATE, |ctx: mp::Context, echo: Value| Seen {
        served_by: ctx.hostname().to_string(),
        user: ctx.user().map(str::to_string),
        echo,
    })
    .expose()
    .with_basic_auth(users());
    let front = mp::service(
        "front",
        mp::spread(2, |ctx: mp::Context, _: Value| async move {
            let (internal, exposed) = tokio::join!(ctx.call(WHO, json!(1)), ctx.call(PRIVATE, json!(2)));
            Ok::<_, mp::HandlerError>(json!({ "internal": internal?.user, "exposed": exposed?.user }))
        }),
    )
    .calls(WHO)
    .calls(PRIVATE)
    .expose()
    .with_basic_auth(users());
    let app = mp::testing::launch([front, who(), private]).await.unwrap();
    let front_address = app.address("front").to_string();
    for (user, password) in [("alice", "wonderland"), ("bob", "builder")] {
        let answer = app.client_as(user, password).call(&front_address, "front", &json!({})).await.unwrap();
        assert_eq!(answer, json!({ "internal": user, "exposed": user }));
    }
    // From outside the app, the password front still wants a password.
    let outsider = mp::client::RpcClient::new();
    let err = outsider.call(&app.address("private").to_string(), "private", &json!({})).await.unwrap_err();
    assert!(matches!(err, CallError::Rpc(ref e) if e.code == mp::RpcError::UNAUTHORIZED), "{err}");
}

#[tokio::test]
async fn sharding_by_user_keeps_each_user_on_one_shard_and_needs_a_user() {
    let users = mp::BasicAuth::from_pairs([("alice", "a"), ("bob", "b"), ("carol", "c"), ("dave", "d")]);
    const SHARDED: mp::Callee<Value, String> = mp::Callee::new("sharded");
    let sharded =
        mp::service(SHARDED, mp::shard_by_user(3, |ctx: mp::Context, _: Value| ctx.hostname().to_string()));
    let front =
        mp::service("front", |ctx: mp::Context, _: Value| async move { ctx.call(SHARDED, json!({})).await })
            .calls(SHARDED)
            .expose()
            .with_basic_auth(users);
    let anonymous =
        mp::service(
            "anonymous",
            |ctx: mp::Context, _: Value| async move { ctx.call(SHARDED, json!({})).await },
        )
        .calls(SHARDED);
    let app = mp::testing::launch([front, sharded, anonymous]).await.unwrap();
    let address = app.address("front").to_string();
    let mut shards = std::collections::BTreeSet::new();
    for (user, password) in [("alice", "a"), ("bob", "b"), ("carol", "c"), ("dave", "d")] {
        let client = app.client_as(user, password);
        let first = client.call(&address, "front", &json!({})).await.unwrap();
        for _ in 0..3 {
            assert_eq!(client.call(&address, "front", &json!({})).await.unwrap(), first, "{user} moved");
        }
        shards.insert(first.as_str().unwrap().to_string());
    }
    assert!(shards.len() >= 2, "four users all on one shard: {shards:?}");
    let err = rpc_error(app.call::<_, String>("anonymous", json!({})).await.unwrap_err());
    assert_eq!(err.code, mp::RpcError::INVALID_REQUEST, "{err}");
    assert!(err.message.contains("sharded by user"), "{err}");
}

#[test]
fn an_unknown_callee_is_refused_at_start_naming_it() {
    let front = mp::service("front", |_: Value| 1).calls("kart");
    let err = mp::plan::compile(&[front, who()]).unwrap_err();
    assert!(matches!(err, mp::PlanError::UnknownCallee { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "service 'front' calls 'kart', which is not a service of this app (its services: front, who)"
    );
}

#[test]
fn a_call_cycle_is_refused_at_start_naming_it() {
    let a = mp::service("a", |_: Value| 1).calls("b");
    let b = mp::service("b", |_: Value| 1).calls("c");
    let c = mp::service("c", |_: Value| 1).calls("a");
    let err = mp::plan::compile(&[a, b, c]).unwrap_err();
    assert!(matches!(err, mp::PlanError::CallCycle(_)), "{err}");
    assert!(err.to_string().contains("a -> b -> c -> a"), "{err}");
    let selfish = mp::service("selfish", |_: Value| 1).calls("selfish");
    let err = mp::plan::compile(&[selfish]).unwrap_err();
    assert!(err.to_string().contains("selfish -> selfish"), "{err}");
    // A diamond is not a cycle.
    let top = mp::service("top", |_: Value| 1).calls("left").calls("right");
    let left = mp::service("left", |_: Value| 1).calls("bottom");
    let right = mp::service("right", |_: Value| 1).calls("bottom");
    let bottom = mp::service("bottom", |_: Value| 1);
    mp::plan::compile(&[top, left, right, bottom]).unwrap();
}

#[test]
fn a_program_that_declares_an_unknown_callee_does_not_start() {
    // `serve` compiles the plan before anything else, in every role of the program.
    let err = mp::serve([mp::service("front", |_: Value| 1).calls("nowhere")]).unwrap_err();
    assert!(err.to_string().contains("calls 'nowhere', which is not a service of this app"), "{err}");
}

#[test]
fn the_plan_records_and_prints_the_call_edges() {
    let front = mp::service("front", mp::spread(2, |_: Value| 1)).calls(WHO).expose();
    let plan = mp::plan::compile(&[front, who()]).unwrap();
    let replica = plan.node("front.replica").unwrap();
    assert_eq!(replica.calls, ["who"]);
    assert!(plan.node("front").unwrap().calls.is_empty(), "a balancer runs no code that calls");
    let callees: Vec<String> = plan.callees(replica).iter().map(ToString::to_string).collect();
    assert_eq!(callees, ["who"]);
    let balancer = plan.node("front").unwrap();
    let callees: Vec<String> = plan.callees(balancer).iter().map(ToString::to_string).collect();
    assert_eq!(callees, ["front.replica"]);
    let text = plan.to_string();
    let line = text.lines().find(|l| l.starts_with("front.replica ")).unwrap();
    assert!(line.ends_with("x2   calls who"), "{text}");
}
