//! Log lines that name the trace of the request they were written for: `... trace=<id>` at the
//! end of every line written while a request with a trace is served, so `logs | grep trace=<id>`
//! (or the dashboard) follows one request through every process.
//!
//! The request's trace travels explicitly ([`Inbound`](super::super::inbound::Inbound)); only the
//! log formatter, which cannot be handed anything, reads it from a thread-local that is set while
//! the request's future is being polled (and around synchronous user code on the blocking pool),
//! and restored after. A `tracing` span per request would do the same, but it formats its fields
//! on every request, logged or not; this costs two thread-local writes per poll and formats only
//! lines that are written.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::wire::trace_context::TraceId;

thread_local! {
    static CURRENT: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// The trace of the request being served on this thread right now, if it has one.
pub(crate) fn current() -> Option<TraceId> {
    CURRENT.with(Cell::get)
}

/// Runs `f` with log lines naming `trace` (synchronous code, e.g. on the blocking pool).
pub(crate) fn within<R>(trace: Option<TraceId>, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT.with(|c| c.replace(trace));
    let _restore = Restore(previous);
    f()
}

struct Restore(Option<TraceId>);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// A future whose log lines name `trace` while it is polled.
pub(crate) struct Tagged<F> {
    inner: F,
    trace: Option<TraceId>,
}

impl<F> Tagged<F> {
    /// `inner`, logging as part of `trace`.
    pub(crate) fn new(inner: F, trace: Option<TraceId>) -> Self {
        Self { inner, trace }
    }
}

impl<F: Future + Unpin> Future for Tagged<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let trace = self.trace;
        within(trace, || Pin::new(&mut self.inner).poll(cx))
    }
}

/// An event format that adds ` trace=<id>` to the lines of a request with a trace.
pub(crate) struct TraceTagged<F>(pub(crate) F);

impl<S, N, F> FormatEvent<S, N> for TraceTagged<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(trace) = current() else { return self.0.format_event(ctx, writer, event) };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writeln!(writer, "{} trace={trace}", line.trim_end_matches('\n'))
    }
}

/// The event format of every metaparticle process: tracing-subscriber's plain one, without
/// targets or colours, with the trace of the request a line was written for.
pub(crate) fn format() -> TraceTagged<tracing_subscriber::fmt::format::Format> {
    TraceTagged(tracing_subscriber::fmt::format().with_target(false).with_ansi(false))
}
