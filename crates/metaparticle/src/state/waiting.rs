//! What a stateful request waits on: its answer, and, when it was the first to queue on its key,
//! the key's commit work, which it runs itself instead of spawning a task for it.
//!
//! Most keys of a keyed scope see one request at a time, so the commit work usually commits just
//! the request that started it. Spawning it as a task cost every such request a task and a
//! wake-up on whichever worker thread took the task. Run inside the request's own future, the
//! work needs neither; it moves to a task of its own only when it must outlive the request:
//!
//! - the request's answer is ready while others are still queued on the key (they need their
//!   commit to go on, and this request should not wait for theirs);
//! - the request's future is dropped (its caller hung up) before the work is done: the others in
//!   its group are still answered, and its own update is still stored.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde_json::Value;
use tokio::sync::oneshot;

use crate::future::BoxFuture;
use crate::wire::jsonrpc::RpcError;

/// The future of one stateful request; see the [module docs](self).
pub(super) struct Waiting {
    /// The key's commit work, while this request runs it.
    lead: Option<BoxFuture<()>>,
    answer: oneshot::Receiver<Result<Value, RpcError>>,
}

impl Waiting {
    /// Waits for `answer`, running `lead` (if this request leads its key) until the answer comes.
    pub(super) fn new(
        lead: Option<BoxFuture<()>>,
        answer: oneshot::Receiver<Result<Value, RpcError>>,
    ) -> Self {
        Self { lead, answer }
    }

    /// Hands the commit work, if this request still holds it, to a task of its own.
    fn hand_off_lead(&mut self) {
        let Some(lead) = self.lead.take() else { return };
        // Outside a runtime (it is shutting down) nothing can run it: dropping it answers the
        // requests queued on the key with an error rather than leaving them waiting.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(lead);
        }
    }
}

impl Future for Waiting {
    type Output = Result<Value, RpcError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(lead) = this.lead.as_mut() {
            if lead.as_mut().poll(cx).is_ready() {
                this.lead = None;
            }
        }
        match Pin::new(&mut this.answer).poll(cx) {
            Poll::Ready(answer) => {
                this.hand_off_lead();
                Poll::Ready(answer.unwrap_or_else(|_| {
                    Err(RpcError::internal("the state update was abandoned by its node"))
                }))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.hand_off_lead();
    }
}
