//! The spans of whole topologies launched in-process: one tree per request, across every hop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::plane::trace::config::{Batching, TraceConfig};
use crate::plane::trace::span::{AttributeValue, SpanKind, SpanRecord};
use crate::plane::trace::tracer::{Collected, Tracer};
use crate::testing::{launch_traced, Options, TestApp};
use crate::wire::trace_context::TraceContext;
use crate::{scatter, service, spread, Callee, Context, Service};

/// Launches `services` with every replica recording into one collection.
async fn traced(services: Vec<Service>) -> (TestApp, Collected) {
    let collected = Collected::default();
    let config = TraceConfig {
        recording: true,
        batching: Batching { delay: Duration::from_millis(5), queue: 4096, batch: 1 },
        ..TraceConfig::off()
    };
    let sink = collected.clone();
    let app = launch_traced(services, Options::default(), move |identity, service| {
        Some(Tracer::with_sink(&config, identity, service, Some(Box::new(sink.clone()))))
    })
    .await
    .unwrap();
    (app, collected)
}

/// Waits until the collection holds at least `count` spans of `trace` (hex), and returns them.
async fn spans_of(collected: &Collected, trace: &str, count: usize) -> Vec<SpanRecord> {
    spans_within(collected, trace, count, Duration::from_secs(10)).await
}

/// [`spans_of`], waiting at most `wait`.
async fn spans_within(collected: &Collected, trace: &str, count: usize, wait: Duration) -> Vec<SpanRecord> {
    let deadline = Instant::now() + wait;
    loop {
        let spans: Vec<SpanRecord> =
            collected.0.lock().unwrap().iter().filter(|s| s.trace_id.to_string() == trace).cloned().collect();
        if spans.len() >= count || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Calls `method` at `address` with `traceparent` set, returning the JSON answer.
async fn call_with_trace(app: &TestApp, method: &str, traceparent: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = json!({"jsonrpc": "2.0", "method": method, "params": [{}], "id": 1}).to_string();
    let mut stream = tokio::net::TcpStream::connect(app.address(method)).await.unwrap();
    let request = format!(
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntraceparent: {traceparent}\r\n\
         tracestate: vendor=opaque\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap()
}

fn text(span: &SpanRecord, key: &str) -> Option<String> {
    match span.get(key)? {
        AttributeValue::Text(t) => Some(t.to_string()),
        AttributeValue::Static(t) => Some(t.to_string()),
        AttributeValue::Int(n) => Some(n.to_string()),
        AttributeValue::Bool(b) => Some(b.to_string()),
    }
}

/// Checks that `spans` form one tree under the caller's span `root_parent`, and returns each
/// span's children by span id.
fn one_tree(spans: &[SpanRecord], root_parent: &str) -> HashMap<String, Vec<SpanRecord>> {
    let ids: Vec<String> = spans.iter().map(|s| s.span_id.to_string()).collect();
    let mut children: HashMap<String, Vec<SpanRecord>> = HashMap::new();
    for span in spans {
        let parent =
            span.parent.expect("every span has a parent: the caller's or another node's").to_string();
        assert!(
            parent == root_parent || ids.contains(&parent),
            "{} hangs off unknown span {parent}",
            span.name
        );
        children.entry(parent).or_default().push(span.clone());
    }
    assert_eq!(children.get(root_parent).map(Vec::len), Some(1), "one span continues the caller's");
    children
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn caller_traceparent() -> String {
    format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
}

#[tokio::test]
async fn a_callers_trace_runs_through_the_balancer_to_the_replica_as_one_tree() {
    let echo = |ctx: Context, _: Value| json!({ "trace": ctx.trace_id() });
    let (app, collected) = traced(vec![service("echo", spread(3, echo)).expose()]).await;
    let answer = call_with_trace(&app, "echo", &caller_traceparent()).await;
    assert_eq!(answer["result"]["trace"], CALLER_TRACE, "the handler sees the caller's trace");

    let spans = spans_of(&collected, CALLER_TRACE, 3).await;
    assert_eq!(spans.len(), 3, "balancer, one attempt, one replica: {spans:#?}");
    let children = one_tree(&spans, CALLER_SPAN);
    let balancer = &children[CALLER_SPAN][0];
    assert_eq!((balancer.kind, &*balancer.name), (SpanKind::Server, "echo"));
    assert_eq!(text(balancer, "metaparticle.role").as_deref(), Some("balancer"));
    assert_eq!(text(balancer, "metaparticle.outcome").as_deref(), Some("ok"));
    assert_eq!(text(balancer, "metaparticle.retries").as_deref(), Some("0"));
    assert!(balancer.parent_is_remote);
    let attempt = &children[&balancer.span_id.to_string()][0];
    assert_eq!((attempt.kind, &*attempt.name), (SpanKind::Client, "call echo.replica"));
    assert_eq!(text(attempt, "metaparticle.attempt").as_deref(), Some("1"));
    let replica = &children[&attempt.span_id.to_string()][0];
    assert_eq!((replica.kind, &*replica.name), (SpanKind::Server, "echo.replica"));
    let served_by = format!("{}-{}", replica.name, text(replica, "metaparticle.replica").unwrap());
    assert_eq!(
        text(attempt, "metaparticle.upstream.replica"),
        Some(served_by),
        "the attempt names its replica"
    );
    assert_eq!(replica.trace_state.as_deref(), Some("vendor=opaque"), "tracestate travels untouched");
}

#[tokio::test]
async fn a_retry_is_a_second_attempt_span_and_the_balancer_counts_it() {
    let (app, collected) = traced(vec![service("echo", spread(2, |r: Value| r)).expose()]).await;
    let mut retried = None;
    // A call meets the stopped replica only while the balancer still has it in rotation. The
    // balancer probes its replicas as it starts, then every 500 ms; on a loaded machine a probe
    // can still be under way when the replica stops, and take it out of rotation before any call
    // meets it. Then the replica is started again, and the scenario runs once more.
    for round in 0..5u32 {
        if round > 0 {
            app.restart_replica("echo.replica", 0).await;
            // Out of rotation, it is probed every 50 ms: this is long enough to be back.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        app.stop_replica("echo.replica", 0);
        tokio::task::yield_now().await;
        // Replica choice alternates, so one of the first two calls goes to the stopped replica
        // first (which then leaves rotation).
        let traces: Vec<String> = (0..4).map(|i| format!("{:032x}", 0xabc0 + round * 16 + i)).collect();
        for trace in &traces {
            call_with_trace(&app, "echo", &format!("00-{trace}-{CALLER_SPAN}-01")).await;
        }
        for trace in &traces {
            // The balancer records its attempts before its own span, and exports in order: once
            // its span is in, so are all of its attempts.
            let spans = spans_of(&collected, trace, 3).await;
            let balancer_done = |spans: &[SpanRecord]| spans.iter().any(|s| &*s.name == "echo");
            let spans = if balancer_done(&spans) { spans } else { spans_of(&collected, trace, 4).await };
            if spans.len() == 4 {
                retried = Some(spans);
            }
        }
        if retried.is_some() {
            break;
        }
    }
    let spans = retried.expect("no call met the stopped replica");
    let children = one_tree(&spans, CALLER_SPAN);
    let balancer = &children[CALLER_SPAN][0];
    assert_eq!(text(balancer, "metaparticle.retries").as_deref(), Some("1"));
    let mut attempts = children[&balancer.span_id.to_string()].clone();
    attempts.sort_by_key(|a| text(a, "metaparticle.attempt"));
    assert_eq!(text(&attempts[0], "metaparticle.outcome").as_deref(), Some("not_sent"));
    assert_eq!(text(&attempts[0], "metaparticle.upstream.replica").as_deref(), Some("echo.replica-0"));
    assert!(attempts[0].error.is_some());
    assert_eq!(text(&attempts[1], "metaparticle.outcome").as_deref(), Some("ok"));
    assert_eq!(text(&attempts[1], "metaparticle.attempt").as_deref(), Some("2"));
    assert!(
        !children.contains_key(&attempts[0].span_id.to_string()),
        "nothing ran behind the failed attempt"
    );
    assert_eq!(children[&attempts[1].span_id.to_string()].len(), 1);
}

#[tokio::test]
async fn a_gather_root_traces_each_leaf_and_calls_between_services_carry_the_trace() {
    const SEARCH: Callee<Value, Vec<usize>> = Callee::new("search");
    let search =
        service(SEARCH, scatter(3, |ctx: Context, _: Value| ctx.replica(), |parts: Vec<usize>| parts));
    let front =
        service("front", |ctx: Context, request: Value| async move { ctx.call(SEARCH, request).await })
            .calls(SEARCH)
            .expose();
    let (app, collected) = traced(vec![front, search]).await;
    let answer = call_with_trace(&app, "front", &caller_traceparent()).await;
    assert_eq!(answer["result"].as_array().map(Vec::len), Some(3), "{answer}");

    // front, its call, the gather root, 3 attempts, 3 leaves.
    let spans = spans_of(&collected, CALLER_TRACE, 9).await;
    assert_eq!(spans.len(), 9, "{spans:#?}");
    let children = one_tree(&spans, CALLER_SPAN);
    let front = &children[CALLER_SPAN][0];
    assert_eq!(&*front.name, "front");
    let call = &children[&front.span_id.to_string()][0];
    assert_eq!(&*call.name, "call search");
    let root = &children[&call.span_id.to_string()][0];
    assert_eq!(text(root, "metaparticle.role").as_deref(), Some("gather"));
    let to_leaves = &children[&root.span_id.to_string()];
    assert_eq!(to_leaves.len(), 3, "one hop per leaf");
    let mut leaves: Vec<String> = to_leaves
        .iter()
        .map(|hop| {
            let leaf = &children[&hop.span_id.to_string()][0];
            text(leaf, "metaparticle.replica").unwrap()
        })
        .collect();
    leaves.sort();
    assert_eq!(leaves, ["0", "1", "2"]);
}

#[tokio::test]
async fn an_error_answer_marks_the_replicas_span_and_the_balancers_from_its_header() {
    let fails = |_: Value| -> Result<Value, crate::HandlerError> {
        Err(crate::HandlerError::new("no such thing").with_code(-32044))
    };
    let (app, collected) = traced(vec![service("f", spread(2, fails)).expose()]).await;
    let answer = call_with_trace(&app, "f", &caller_traceparent()).await;
    assert_eq!(answer["error"]["code"], -32044);
    let spans = spans_of(&collected, CALLER_TRACE, 3).await;
    for span in &spans {
        assert_eq!(text(span, "metaparticle.outcome").as_deref(), Some("error"), "{span:#?}");
        assert_eq!(text(span, "rpc.jsonrpc.error_code").as_deref(), Some("-32044"), "{span:#?}");
        assert!(span.error.is_some());
    }
}

#[tokio::test]
async fn without_a_tracer_a_callers_trace_is_passed_on_unchanged_and_none_is_made_up() {
    let echo = |ctx: Context, _: Value| json!({ "trace": ctx.trace_id() });
    let app = crate::testing::launch([service("echo", spread(2, echo)).expose()]).await.unwrap();
    let answer = call_with_trace(&app, "echo", &caller_traceparent()).await;
    assert_eq!(answer["result"]["trace"], CALLER_TRACE);
    let untraced: Value = app.call("echo", json!({})).await.unwrap();
    assert_eq!(untraced["trace"], Value::Null, "no trace begins where nothing records it");
    let invalid = call_with_trace(&app, "echo", "00-zz-00f067aa0ba902b7-01").await;
    assert_eq!(invalid["result"]["trace"], Value::Null, "an invalid traceparent is ignored");
}

#[tokio::test]
async fn log_lines_written_while_serving_carry_the_trace_id() {
    use std::io::Write;
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .event_format(crate::plane::trace::log_tag::format())
        .finish();
    // Every task of this (single-threaded) test runtime logs through it.
    let _default = tracing::subscriber::set_default(subscriber);
    let greet = |_: Value| {
        tracing::info!("handler says hello");
        json!("hi")
    };
    // A partial merge logs each leaf it goes without, while serving the request.
    let tree = scatter(2, greet, |parts: Vec<Value>| parts.len()).merge_partial();
    let app = crate::testing::launch([service("greet", tree).expose()]).await.unwrap();
    app.stop_replica("greet.leaf", 1);
    call_with_trace(&app, "greet", &caller_traceparent()).await;
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let traced = format!("trace={CALLER_TRACE}");
    let hello = text.lines().find(|l| l.contains("handler says hello")).expect(&text);
    assert!(hello.contains(&traced), "{hello}");
    let missing = text.lines().find(|l| l.contains("leaf missing from the merge")).expect(&text);
    assert!(missing.contains(&traced), "{missing}");
    // A trace the caller did not send is not invented (tracing is off here).
    let _: Value = app.call("greet", json!({})).await.unwrap();
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    assert!(text.lines().filter(|l| l.contains("handler says hello")).any(|l| !l.contains("trace=")));
}

#[test]
fn a_valid_traceparent_from_the_tests_is_valid() {
    assert!(TraceContext::parse(Some(caller_traceparent().as_bytes()), None).is_some());
}
