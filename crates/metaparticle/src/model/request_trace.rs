//! [`RequestTrace`]: where a request is in its trace, as the handler's [`Context`](super::context::Context)
//! and every hop the request makes see it.
//!
//! Pure data: the data plane decides whether a node records a span for the request (and reads
//! the notes afterwards); the model only carries the trace to the calls a handler makes and notes
//! what a stateful handler did, which only it can see.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::wire::trace_context::TraceContext;

/// The trace a request belongs to.
#[derive(Clone, Debug)]
pub(crate) struct RequestTrace {
    /// The span every hop the request makes is a child of: this node's own span when it records
    /// one, else the caller's, passed on as it came.
    pub(crate) context: TraceContext,
    /// What serving the request taught this node, for its span; `None` when it records none.
    pub(crate) notes: Option<Arc<SpanNotes>>,
}

/// What a node learns while it serves one request, for the span it records.
#[derive(Debug, Default)]
pub(crate) struct SpanNotes {
    /// Hops sent again to another replica after a failed attempt.
    retries: AtomicU32,
    /// Runs of a stateful handler: more than one means others won the compare-and-swap.
    state_runs: AtomicU32,
}

impl SpanNotes {
    /// Counts a hop sent again.
    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one run of a stateful handler.
    pub(crate) fn ran_stateful(&self) {
        self.state_runs.fetch_add(1, Ordering::Relaxed);
    }

    /// Hops sent again so far.
    pub(crate) fn retries(&self) -> u32 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Runs of a stateful handler that another writer's change made run again.
    pub(crate) fn state_conflicts(&self) -> u32 {
        self.state_runs.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Whether a stateful handler ran at all.
    pub(crate) fn ran_state(&self) -> bool {
        self.state_runs.load(Ordering::Relaxed) > 0
    }
}

impl RequestTrace {
    /// Notes a run of a stateful handler, if the span is recorded.
    pub(crate) fn note_stateful_run(&self) {
        if let Some(notes) = &self.notes {
            notes.ran_stateful();
        }
    }
}
