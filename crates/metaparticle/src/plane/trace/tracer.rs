//! A replica's [`Tracer`]: decides which requests it records, takes their finished spans without
//! ever making a request wait, and exports them in batches from a thread of its own.
//!
//! A request's path only builds a small record and hands it over a bounded channel; encoding and
//! sending happen on the exporter thread. When the channel is full (the receiver is slow or
//! gone) spans are dropped and counted rather than slowing the node, as OpenTelemetry's batch
//! span processor does.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use super::config::{Batching, OtlpTarget, Sampler, TraceConfig};
use super::span::{AttributeValue, Resource, SpanKind, SpanRecord, Started};
use crate::model::identity::Identity;
use crate::model::request_trace::{RequestTrace, SpanNotes};
use crate::wire::trace_context::{SpanId, TraceContext};

/// Where batches of finished spans go.
pub(crate) trait SpanSink: Send + 'static {
    /// Sends one batch; the error says why it was lost.
    fn export(&mut self, spans: &[SpanRecord]) -> Result<(), String>;
}

enum Message {
    Span(Box<SpanRecord>),
    Flush(SyncSender<()>),
}

/// The spans one replica exported and lost, for its `/metrics`.
#[derive(Clone, Debug, Default)]
pub(crate) struct SpanCounters {
    /// Spans a receiver accepted.
    pub(crate) exported: Counter,
    /// Spans dropped: the queue was full, or their export failed.
    pub(crate) dropped: Counter,
}

/// One replica's tracing: its sampler, its resource and the way to its exporter thread.
pub(crate) struct Tracer {
    resource: Arc<Resource>,
    sampler: Sampler,
    /// `None` when spans are recorded but exported nowhere (`OTEL_TRACES_EXPORTER=none`).
    queue: Option<SyncSender<Message>>,
    counters: SpanCounters,
}

impl Tracer {
    /// The tracer `config` asks for, for the replica `identity` of a node serving `service`;
    /// `None` when tracing is off. Starts the exporter thread if spans are exported.
    pub(crate) fn start(config: &TraceConfig, identity: &Identity, service: &str) -> Option<Arc<Self>> {
        if !config.recording {
            return None;
        }
        for warning in &config.warnings {
            tracing::warn!("tracing: {warning}");
        }
        let sink =
            config.export.clone().map(|target| Box::new(OtlpHttp { target, failing_since: None }) as _);
        Some(Self::with_sink(config, identity, service, sink))
    }

    /// [`Tracer::start`] with spans going to `sink` (`None`: nowhere).
    pub(crate) fn with_sink(
        config: &TraceConfig,
        identity: &Identity,
        service: &str,
        sink: Option<Box<dyn SpanSink>>,
    ) -> Arc<Self> {
        let counters = SpanCounters::default();
        let queue = sink.map(|sink| {
            let (sender, receiver) = sync_channel(config.batching.queue);
            let (batching, counters) = (config.batching, counters.clone());
            let spawned = std::thread::Builder::new()
                .name("span-export".into())
                .spawn(move || export_forever(receiver, sink, batching, counters));
            if let Err(e) = &spawned {
                tracing::warn!("tracing: cannot start the span exporter ({e}); spans are not exported");
            }
            sender
        });
        Arc::new(Self {
            resource: Arc::new(resource(config, identity, service)),
            sampler: config.sampler,
            queue,
            counters,
        })
    }

    /// The replica's span counters.
    pub(crate) fn counters(&self) -> &SpanCounters {
        &self.counters
    }

    /// Begins a request that arrived with `incoming` (its caller's context, if valid): the trace
    /// it carries on, and the span to finish when it is served if this one is recorded.
    pub(crate) fn begin(&self, incoming: Option<TraceContext>) -> (RequestTrace, Option<ServerSpan>) {
        if self.queue.is_none() {
            // Spans go nowhere: the request only needs a trace id (for its log lines), which
            // its hops pass on as it is.
            let context = incoming.unwrap_or_else(|| TraceContext::root(false));
            return (RequestTrace { context, notes: None }, None);
        }
        let parent = incoming.as_ref().map(|c| c.span_id);
        let mut context = match &incoming {
            Some(caller) => caller.child(),
            None => TraceContext::root(true),
        };
        context.sampled =
            self.sampler.records(incoming.as_ref().map(|c| c.sampled), context.trace_id.low_u64());
        if !context.sampled {
            // Not recorded here; the hops still say so, so that nodes after this one agree.
            return (RequestTrace { context, notes: None }, None);
        }
        let notes = Arc::new(SpanNotes::default());
        let span =
            ServerSpan { context: context.clone(), parent, started: Started::now(), notes: notes.clone() };
        (RequestTrace { context, notes: Some(notes) }, Some(span))
    }

    /// Takes a finished span; never waits.
    pub(crate) fn record(&self, span: SpanRecord) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.inc();
            }
        }
    }

    /// A span for one attempt of a hop made by a recorded request (`trace.notes` is set): its
    /// context (which the hop sends as `traceparent`) and when it began.
    pub(crate) fn hop(trace: &RequestTrace) -> HopSpan {
        HopSpan { context: trace.context.child(), parent: trace.context.span_id, started: Started::now() }
    }

    /// Records a hop's span, named `name` (`call <target>`, see [`hop_name`]).
    pub(crate) fn record_hop(&self, hop: HopSpan, name: &Arc<str>, fill: impl FnOnce(&mut SpanRecord)) {
        if self.queue.is_none() {
            return;
        }
        let mut span = SpanRecord::ended(
            &self.resource,
            SpanKind::Client,
            name.clone(),
            &hop.context,
            Some(hop.parent),
            hop.started,
        );
        fill(&mut span);
        self.record(span);
    }

    /// Records a served request's span.
    pub(crate) fn record_server(
        &self,
        span: ServerSpan,
        name: &Arc<str>,
        fill: impl FnOnce(&mut SpanRecord, &SpanNotes),
    ) {
        if self.queue.is_none() {
            return;
        }
        let mut record = SpanRecord::ended(
            &self.resource,
            SpanKind::Server,
            name.clone(),
            &span.context,
            span.parent,
            span.started,
        );
        fill(&mut record, &span.notes);
        self.record(record);
    }

    /// Exports every span taken so far, waiting at most `timeout` (a stopping node's last word).
    pub(crate) fn flush(&self, timeout: Duration) {
        let Some(queue) = &self.queue else { return };
        let (done, finished) = sync_channel(1);
        let deadline = Instant::now() + timeout;
        // The queue may be full: keep offering the request until the deadline.
        let mut message = Message::Flush(done);
        loop {
            match queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = finished.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// The name of the spans of hops to `target`.
pub(crate) fn hop_name(target: &str) -> Arc<str> {
    format!("call {target}").into()
}

/// A recorded request being served.
pub(crate) struct ServerSpan {
    context: TraceContext,
    parent: Option<SpanId>,
    started: Started,
    notes: Arc<SpanNotes>,
}

/// One attempt of a hop being made.
pub(crate) struct HopSpan {
    context: TraceContext,
    parent: SpanId,
    started: Started,
}

impl HopSpan {
    /// The context the hop sends as its `traceparent`.
    pub(crate) fn context(&self) -> &TraceContext {
        &self.context
    }
}

/// The exported resource of one replica: OpenTelemetry's service attributes and which node and
/// replica of which app it is.
fn resource(config: &TraceConfig, identity: &Identity, service: &str) -> Resource {
    let text = |s: &str| AttributeValue::Text(s.into());
    let mut attributes = vec![
        ("service.name".to_string(), text(config.service_name.as_deref().unwrap_or(service))),
        ("service.namespace".to_string(), text(&identity.app)),
        ("service.instance.id".to_string(), text(&identity.hostname)),
        ("metaparticle.app".to_string(), text(&identity.app)),
        ("metaparticle.node".to_string(), text(&identity.node)),
        ("metaparticle.replica".to_string(), AttributeValue::Int(identity.replica as i64)),
        ("telemetry.sdk.name".to_string(), text("metaparticle")),
        ("telemetry.sdk.language".to_string(), text("rust")),
    ];
    for (key, value) in &config.resource {
        match attributes.iter_mut().find(|(k, _)| k == key) {
            // The user's own `service.name` (or other key) wins over the defaults.
            Some((_, v)) if key != "service.name" || config.service_name.is_none() => *v = text(value),
            Some(_) => {}
            None => attributes.push((key.clone(), text(value))),
        }
    }
    Resource { attributes }
}

/// How often the exporter thread looks for new spans. It sleeps in between rather than waiting
/// on the queue: a thread waiting on a channel is woken by every send, and with a span or two per
/// request those wake-ups (a system call and a context switch each) cost more than the spans.
const POLL: Duration = Duration::from_millis(10);

/// The exporter thread: every [`POLL`] takes what the queue holds, sends a batch whenever it is
/// full or the delay has passed since its first span, and answers flushes; ends when the tracer
/// is gone.
fn export_forever(
    queue: Receiver<Message>,
    mut sink: Box<dyn SpanSink>,
    batching: Batching,
    counters: SpanCounters,
) {
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(batching.batch);
    let mut due: Option<Instant> = None;
    let mut send = |batch: &mut Vec<SpanRecord>| {
        if batch.is_empty() {
            return;
        }
        let counter = match sink.export(batch) {
            Ok(()) => &counters.exported,
            Err(_) => &counters.dropped,
        };
        counter.inc_by(batch.len() as u64);
        batch.clear();
    };
    loop {
        std::thread::sleep(POLL);
        loop {
            match queue.try_recv() {
                Ok(Message::Span(span)) => {
                    batch.push(*span);
                    due.get_or_insert_with(|| Instant::now() + batching.delay);
                    if batch.len() >= batching.batch {
                        send(&mut batch);
                        due = None;
                    }
                }
                Ok(Message::Flush(done)) => {
                    send(&mut batch);
                    due = None;
                    let _ = done.try_send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    send(&mut batch);
                    return;
                }
            }
        }
        if due.is_some_and(|due| Instant::now() >= due) {
            send(&mut batch);
            due = None;
        }
    }
}

/// OTLP over HTTP/1.1 with protobuf bodies, one connection per batch (a batch leaves at most
/// every few seconds, so keeping a connection open would save nothing worth its failure modes).
struct OtlpHttp {
    target: OtlpTarget,
    /// When exports began to fail; warnings are logged when it starts and once a minute after.
    failing_since: Option<(Instant, Instant)>,
}

impl SpanSink for OtlpHttp {
    fn export(&mut self, spans: &[SpanRecord]) -> Result<(), String> {
        let body = super::otlp::encode_request(spans);
        match post(&self.target, &body) {
            Ok(()) => {
                if self.failing_since.take().is_some() {
                    tracing::info!("tracing: exporting spans to {} works again", self.target.address);
                }
                Ok(())
            }
            Err(why) => {
                let now = Instant::now();
                let say = match &mut self.failing_since {
                    None => {
                        self.failing_since = Some((now, now));
                        true
                    }
                    Some((_, last)) if now.duration_since(*last) > Duration::from_secs(60) => {
                        *last = now;
                        true
                    }
                    Some(_) => false,
                };
                if say {
                    tracing::warn!(
                        "tracing: cannot export {} spans to http://{}{}: {why}; dropping them",
                        spans.len(),
                        self.target.address,
                        self.target.path
                    );
                }
                Err(why)
            }
        }
    }
}

/// POSTs `body` to the target and checks that it answered 2xx.
fn post(target: &OtlpTarget, body: &[u8]) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let deadline = Instant::now() + target.timeout;
    let addresses =
        target.address.to_socket_addrs().map_err(|e| format!("cannot resolve {}: {e}", target.address))?;
    let mut last = format!("{} resolves to no address", target.address);
    let mut stream = None;
    for address in addresses {
        match std::net::TcpStream::connect_timeout(&address, target.timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {address}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_write_timeout(Some(left())).map_err(|e| e.to_string())?;
    let mut request = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\nconnection: close\r\n",
        target.path,
        target.host,
        body.len()
    );
    for (name, value) in &target.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).and_then(|()| stream.write_all(body)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(left())).map_err(|e| e.to_string())?;
    // Only the status line matters; the rest is read so the receiver is not cut off mid-answer.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                if answer.len() > 64 * 1024 {
                    break;
                }
            }
            Err(e) if answer.is_empty() => return Err(format!("no answer: {e}")),
            Err(_) => break,
        }
    }
    let status_line = answer.split(|&b| b == b'\n').next().unwrap_or_default();
    let status = String::from_utf8_lossy(status_line);
    match status.split_whitespace().nth(1).and_then(|code| code.parse::<u16>().ok()) {
        Some(code) if (200..300).contains(&code) => Ok(()),
        Some(code) => Err(format!("the receiver answered HTTP {code}")),
        None => Err(format!("the receiver's answer is not HTTP: {:?}", status.trim())),
    }
}

/// A sink that keeps every span, for tests.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Collected(pub(crate) Arc<std::sync::Mutex<Vec<SpanRecord>>>);

#[cfg(test)]
impl SpanSink for Collected {
    fn export(&mut self, spans: &[SpanRecord]) -> Result<(), String> {
        self.0.lock().unwrap().extend_from_slice(spans);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            app: "demo".into(),
            node: "svc.replica".into(),
            replica: 1,
            hostname: "svc.replica-1".into(),
        }
    }

    fn recording() -> TraceConfig {
        TraceConfig { recording: true, ..TraceConfig::off() }
    }

    fn exporting() -> Arc<Tracer> {
        Tracer::with_sink(&recording(), &identity(), "svc", Some(Box::new(Collected::default())))
    }

    #[test]
    fn a_callers_trace_is_continued_and_a_new_one_begun_without_a_caller() {
        let tracer = exporting();
        let caller = TraceContext::root(true);
        let (trace, span) = tracer.begin(Some(caller.clone()));
        assert_eq!(trace.context.trace_id, caller.trace_id);
        assert_ne!(trace.context.span_id, caller.span_id, "the node's own span");
        assert_eq!(span.unwrap().parent, Some(caller.span_id));
        let (fresh, span) = tracer.begin(None);
        assert_ne!(fresh.context.trace_id, caller.trace_id);
        assert_eq!(span.unwrap().parent, None);
    }

    #[test]
    fn a_trace_the_caller_does_not_record_is_not_recorded_but_passed_on() {
        let tracer = exporting();
        let caller = TraceContext { sampled: false, ..TraceContext::root(false) };
        let (trace, span) = tracer.begin(Some(caller.clone()));
        assert!(span.is_none() && trace.notes.is_none());
        assert_eq!((trace.context.trace_id, trace.context.sampled), (caller.trace_id, false));
    }

    #[test]
    fn without_export_a_request_gets_a_trace_id_and_no_span() {
        let tracer = Tracer::with_sink(&recording(), &identity(), "svc", None);
        let caller = TraceContext::root(true);
        let (trace, span) = tracer.begin(Some(caller.clone()));
        assert!(span.is_none() && trace.notes.is_none());
        assert_eq!(trace.context, caller, "passed on as it came");
        let (fresh, _) = tracer.begin(None);
        assert_ne!(fresh.context.trace_id, caller.trace_id, "a trace id for the request's log lines");
    }

    #[test]
    fn spans_reach_the_sink_in_batches_and_a_flush_sends_the_rest() {
        let collected = Collected::default();
        let config = TraceConfig {
            batching: Batching { delay: Duration::from_secs(3600), queue: 16, batch: 4 },
            ..recording()
        };
        let tracer = Tracer::with_sink(&config, &identity(), "svc", Some(Box::new(collected.clone())));
        for _ in 0..6 {
            let (trace, span) = tracer.begin(None);
            tracer.record_hop(Tracer::hop(&trace), &hop_name("other"), |_| {});
            tracer.record_server(span.unwrap(), &Arc::from("svc.replica"), |_, _| {});
        }
        tracer.flush(Duration::from_secs(5));
        let spans = collected.0.lock().unwrap();
        assert_eq!(spans.len(), 12);
        assert_eq!(tracer.counters().exported.get(), 12);
        let server = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
        let hop = spans.iter().find(|s| s.kind == SpanKind::Client && s.trace_id == server.trace_id).unwrap();
        assert_eq!(hop.parent, Some(server.span_id), "a hop is a child of the span that made it");
        assert_eq!(&*hop.name, "call other");
        assert_eq!(
            server.resource.attributes[0],
            ("service.name".to_string(), AttributeValue::Text("svc".into()))
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_spans_instead_of_waiting() {
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl SpanSink for Stuck {
            fn export(&mut self, _: &[SpanRecord]) -> Result<(), String> {
                let _ = self.0.recv();
                Ok(())
            }
        }
        let (release, stuck) = std::sync::mpsc::channel();
        let config = TraceConfig {
            batching: Batching { delay: Duration::from_millis(1), queue: 2, batch: 1 },
            ..recording()
        };
        let tracer = Tracer::with_sink(&config, &identity(), "svc", Some(Box::new(Stuck(stuck))));
        let started = Instant::now();
        for _ in 0..100 {
            let (trace, _) = tracer.begin(None);
            tracer.record_hop(Tracer::hop(&trace), &hop_name("x"), |_| {});
        }
        assert!(started.elapsed() < Duration::from_secs(1), "recording waited for the exporter");
        assert!(tracer.counters().dropped.get() >= 90, "{}", tracer.counters().dropped.get());
        drop(release);
    }

    #[test]
    fn an_unreachable_receiver_loses_the_batch_and_says_why() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let target = OtlpTarget {
            address: address.clone(),
            host: address,
            path: "/v1/traces".into(),
            headers: Vec::new(),
            timeout: Duration::from_secs(1),
        };
        let e = post(&target, b"").unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");
    }

    #[test]
    fn the_receiver_gets_protobuf_with_the_configured_headers_and_a_non_2xx_is_an_error() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let mut heads = Vec::new();
            for status in ["200 OK", "400 Bad Request"] {
                let (mut stream, _) = listener.accept().unwrap();
                // Head and body may arrive in separate reads.
                let mut request = Vec::new();
                let mut chunk = [0u8; 8192];
                while !request.ends_with(b"spans") {
                    let n = stream.read(&mut chunk).unwrap();
                    assert!(n > 0, "the exporter closed before its body");
                    request.extend_from_slice(&chunk[..n]);
                }
                heads.push(String::from_utf8_lossy(&request).into_owned());
                write!(stream, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").unwrap();
            }
            heads
        });
        let target = OtlpTarget {
            address: address.clone(),
            host: address,
            path: "/v1/traces".into(),
            headers: vec![("x-api-key".into(), "k".into())],
            timeout: Duration::from_secs(5),
        };
        assert_eq!(post(&target, b"spans"), Ok(()));
        assert!(post(&target, b"spans").unwrap_err().contains("HTTP 400"));
        let heads = server.join().unwrap();
        assert!(heads[0].starts_with("POST /v1/traces HTTP/1.1\r\n"), "{}", heads[0]);
        assert!(heads[0].contains("content-type: application/x-protobuf\r\n"));
        assert!(heads[0].contains("x-api-key: k\r\n") && heads[0].ends_with("spans"));
    }
}
