//! Calls between the services of one app: how [`Context::call`](crate::Context::call) leaves a node.
//!
//! A node whose service declares calls ([`crate::Service::calls`]) gets one [`Pool`] per callee,
//! over the callee's front node (its balancer, shard router, gather root, or its only replica), as
//! the address book gives it. A call is then an ordinary internal hop through [`Pool::call`]: the
//! same connection reuse, replica choice, retries and health as a balancer's, the app's secret,
//! the user of the request being served, and a timeout that is the calling service's hop timeout
//! cut to the request's remaining deadline. So a callee never works for longer than its caller
//! waits, however deep the calls nest.
//!
//! Only declared callees have pools; a call to any other name fails with `-32006` here, on every
//! runner alike, rather than working where the address book happens to hold every node (local,
//! Docker) and failing where it holds only what a node needs (Kubernetes).
//!
//! # Synchronous callers
//!
//! A node's workers are single-threaded runtimes: a synchronous handler that waited there for a
//! call would stall the very runtime that must carry the call. So a synchronous handler or merge
//! that takes a context, on a node whose service declares calls, runs on the runtime's blocking
//! pool ([`run_user_code`]), where [`Caller::wait`] may block its thread; everywhere else waiting
//! is refused with an error instead of a deadlock. Nodes that make no calls pay nothing for this.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::Value;

use super::inbound::Inbound;
use super::trace::Tracer;
use super::upstream::Pool;
use crate::future::BoxFuture;
use crate::model::callee::{CallOrigin, Caller};
use crate::wire::jsonrpc::RpcError;

/// The callees of one node, each behind its own pool.
pub(crate) struct AppCaller {
    /// The calling node, for messages.
    node: String,
    /// Callee service name → a pool over its front node's replicas.
    callees: HashMap<String, Arc<Pool>>,
    /// Where the spans of calls go, for requests that are recorded.
    tracer: Option<Arc<Tracer>>,
}

impl AppCaller {
    /// A caller for `node` over the pools of the services it declares.
    pub(crate) fn new(
        node: &str,
        callees: HashMap<String, Arc<Pool>>,
        tracer: Option<Arc<Tracer>>,
    ) -> Arc<Self> {
        Arc::new(Self { node: node.to_string(), callees, tracer })
    }
}

impl Caller for AppCaller {
    fn call(&self, service: &str, request: Value, origin: CallOrigin) -> BoxFuture<Result<Value, RpcError>> {
        let Some(pool) = self.callees.get(service).cloned() else {
            return Box::pin(std::future::ready(Err(RpcError::undeclared_call(&self.node, service))));
        };
        let service = service.to_string();
        let CallOrigin { user, deadline, trace } = origin;
        // The call's attempts are spans of the request's trace when the request is recorded.
        let tracer = trace.as_ref().and_then(|t| t.notes.as_ref()).and(self.tracer.clone());
        Box::pin(async move {
            // The callee answers each call on its own; the id only has to make it a call (not a
            // notification, which gets no answer).
            pool.call(&service, &request, &Value::from(1), &Inbound { user, deadline, trace, tracer }).await
        })
    }

    fn wait(&self, call: BoxFuture<Result<Value, RpcError>>) -> Result<Value, RpcError> {
        if !ON_BLOCKING_POOL.with(Cell::get) {
            return Err(RpcError::internal(
                "call_blocking is only for synchronous handlers and merges that take a context, of a \
                 service that declares its calls; an async handler awaits ctx.call(..), and a stateful \
                 handler does not call (it may run several times per request)",
            ));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| RpcError::internal(format!("call_blocking outside a node's runtime: {e}")))?;
        runtime.block_on(call)
    }
}

thread_local! {
    /// Set while user code runs on the blocking pool, where it may wait for a call.
    static ON_BLOCKING_POOL: Cell<bool> = const { Cell::new(false) };
}

/// Allows waiting for calls on this thread until dropped: blocking threads are reused for other
/// work, which must not inherit the permission, even if the user's code panicked.
struct MayWait(());

impl MayWait {
    fn here() -> Self {
        ON_BLOCKING_POOL.with(|on| on.set(true));
        Self(())
    }
}

impl Drop for MayWait {
    fn drop(&mut self) {
        ON_BLOCKING_POOL.with(|on| on.set(false));
    }
}

/// Runs user code (`run` makes its future): inline, or, when `may_block` (synchronous code that
/// may wait for a call), on the runtime's blocking pool with waiting allowed. Synchronous code
/// runs to completion when its future is made, so the blocking thread is held only that long.
pub(crate) async fn run_user_code<F>(may_block: bool, run: F) -> Result<Value, RpcError>
where
    F: FnOnce() -> BoxFuture<Result<Value, RpcError>> + Send + 'static,
{
    if !may_block {
        return run().await;
    }
    // Log lines the code writes there name the request's trace, as they do inline.
    let trace = super::trace::log_tag::current();
    let ran = tokio::task::spawn_blocking(move || {
        super::trace::log_tag::within(trace, || {
            let _allowed = MayWait::here();
            let mut outcome = run();
            (&mut outcome).now_or_never().ok_or(outcome)
        })
    })
    .await;
    match ran {
        Ok(Ok(outcome)) => outcome,
        // Not finished on the thread (synchronous code always is): finish it here.
        Ok(Err(pending)) => pending.await,
        Err(e) => Err(RpcError::internal(format!("the handler's thread failed: {e}"))),
    }
}
