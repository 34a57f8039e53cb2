//! The four node roles: leaf, balancer, shard router and gather root.
//!
//! Each is a [`Role`]: a JSON-RPC body in, a reply out. Only the leaf runs user code directly; the
//! router runs the user's key function and the gather root the user's merge function, both inside
//! the same process because every node is the same binary. Each role gets the request's
//! [`Inbound`] (user, deadline) with its body and passes it on to the hops it makes; the leaf and
//! the gather root turn it into the [`Context`] the user's code may take, and stop that code when
//! the deadline passes: its caller has stopped waiting, so any further work (and any call it would
//! still make) is wasted.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use serde_json::Value;

use super::calls::run_user_code;
use super::inbound::Inbound;
use super::metrics::Metrics;
use super::server::{Reply, Role};
use super::upstream::Pool;
use crate::future::BoxFuture;
use crate::model::callee::Caller;
use crate::model::context::{Context, ContextParts};
use crate::model::handler::ErasedHandler;
use crate::model::identity::Identity;
use crate::model::topology::{ErasedKey, ErasedMerge, ScatterPolicy};
use crate::model::transactions::Transactions;
use crate::wire::jsonrpc::{dispatch_served, error_for_body, RpcError, Served};

/// The context user code gets for a request: this replica, the request's user and deadline, and
/// the way to the services it may call.
fn context_for(
    identity: &Arc<Identity>,
    inbound: &Inbound,
    missing_leaves: Vec<String>,
    state: Option<&Arc<dyn Transactions>>,
    caller: Option<&Arc<dyn Caller>>,
) -> Context {
    Context::new(ContextParts {
        identity: identity.clone(),
        user: inbound.user.clone(),
        deadline: inbound.deadline,
        missing_leaves,
        state: state.cloned(),
        caller: caller.cloned(),
        trace: inbound.trace.clone(),
    })
}

/// How long after its deadline user code is stopped. The caller stopped waiting at the deadline
/// and reports the timeout itself, naming the node and the time it allowed; without the grace the
/// two timers would race (the deadline travels in whole milliseconds) and the caller would
/// sometimes relay this node's terser message instead.
const STOP_GRACE: Duration = Duration::from_millis(50);

/// Runs user code until it is done or the request's deadline has passed, whichever comes first:
/// past the deadline the caller no longer waits, so the code is stopped (dropped) with `-32001`.
/// A synchronous handler cannot be interrupted; its calls fail at the deadline instead.
async fn until_deadline(
    deadline: Option<std::time::Instant>,
    identity: &Identity,
    work: impl Future<Output = Result<Value, RpcError>>,
) -> Result<Value, RpcError> {
    let Some(deadline) = deadline else { return work.await };
    match tokio::time::timeout_at((deadline + STOP_GRACE).into(), work).await {
        Ok(outcome) => outcome,
        Err(_) => Err(RpcError {
            code: RpcError::TIMEOUT,
            message: format!(
                "'{}' stopped the request's work at its caller's deadline; nobody waited any longer",
                identity.hostname
            ),
            data: None,
        }),
    }
}

/// Runs the user's handler.
pub(crate) struct Leaf {
    /// The service (JSON-RPC method) served.
    pub service: String,
    /// The user's handler.
    pub handler: Arc<dyn ErasedHandler>,
    /// Who serves.
    pub identity: Arc<Identity>,
    /// The state runtime of a stateful handler; `None` for every other handler.
    pub state: Option<Arc<dyn Transactions>>,
    /// The services the handler may call; `None` if its service declares none.
    pub caller: Option<Arc<dyn Caller>>,
}

impl Role for Leaf {
    fn handle(&self, body: Bytes, inbound: Inbound) -> BoxFuture<Reply> {
        let (handler, service, identity) =
            (self.handler.clone(), self.service.clone(), self.identity.clone());
        let context =
            context_for(&self.identity, &inbound, Vec::new(), self.state.as_ref(), self.caller.as_ref());
        // Synchronous code that may wait for its calls runs where waiting is safe (see `calls`).
        let may_block = self.caller.is_some() && self.handler.may_block();
        Box::pin(async move {
            let served = dispatch_served(&body, &service, |call| {
                let (handler, context) = (handler.clone(), context.clone());
                let run = run_user_code(may_block, move || handler.call(call.request, context));
                until_deadline(inbound.deadline, &identity, run)
            });
            Reply::json(served.await)
        })
    }
}

/// Forwards each body, untouched, to one replica: the fast path never parses JSON.
pub(crate) struct Balancer {
    /// The replicas.
    pub pool: Arc<Pool>,
}

impl Role for Balancer {
    fn handle(&self, body: Bytes, inbound: Inbound) -> BoxFuture<Reply> {
        let pool = self.pool.clone();
        Box::pin(async move {
            match pool.forward(body.clone(), &inbound).await {
                Ok(answer) => Reply { status: answer.status, body: answer.body, error: answer.error },
                Err(e) => {
                    let first_error = Some(e.code);
                    Reply::json(Served { body: error_for_body(&body, e), first_error })
                }
            }
        })
    }
}

/// Sends each call to the shard its key selects.
pub(crate) struct Router {
    /// The service (JSON-RPC method) served.
    pub service: String,
    /// The user's key function.
    pub key: Arc<dyn ErasedKey>,
    /// One pool per shard, in shard order.
    pub shards: Vec<Arc<Pool>>,
}

impl Role for Router {
    fn handle(&self, body: Bytes, inbound: Inbound) -> BoxFuture<Reply> {
        let (key, shards, service) = (self.key.clone(), self.shards.clone(), self.service.clone());
        Box::pin(async move {
            let out = dispatch_served(&body, &service, |call| {
                let (key, shards, service, inbound) = (&key, &shards, &service, &inbound);
                async move {
                    let shard = key.shard_of(&call.request, inbound.user.as_deref(), shards.len())?;
                    let id = call.id.clone().unwrap_or(Value::Null);
                    shards[shard].call(service, &call.request, &id, inbound).await
                }
            })
            .await;
            Reply::json(out)
        })
    }
}

/// Sends each call to every leaf at once and merges the answers.
pub(crate) struct Gather {
    /// The service (JSON-RPC method) served.
    pub service: String,
    /// The user's merge function.
    pub merge: Arc<dyn ErasedMerge>,
    /// One pool per leaf, in leaf order.
    pub leaves: Vec<Arc<Pool>>,
    /// What to do when a leaf fails.
    pub policy: ScatterPolicy,
    /// How long each leaf may take.
    pub leaf_timeout: Duration,
    /// Where missing leaves are counted.
    pub metrics: Arc<Metrics>,
    /// Who serves (the merge's context says so).
    pub identity: Arc<Identity>,
    /// The services the merge may call; `None` if its service declares none.
    pub caller: Option<Arc<dyn Caller>>,
}

impl Role for Gather {
    fn handle(&self, body: Bytes, inbound: Inbound) -> BoxFuture<Reply> {
        let (merge, leaves, service) = (self.merge.clone(), self.leaves.clone(), self.service.clone());
        let (policy, leaf_timeout, metrics) = (self.policy, self.leaf_timeout, self.metrics.clone());
        let (identity, caller) = (self.identity.clone(), self.caller.clone());
        Box::pin(async move {
            let out = dispatch_served(&body, &service, |call| {
                let (merge, leaves, service, metrics, inbound) =
                    (&merge, &leaves, &service, &metrics, &inbound);
                let (identity, caller) = (&identity, &caller);
                async move {
                    let id = call.id.clone().unwrap_or(Value::Null);
                    // A leaf's deadline is the nearer of its own timeout and the request's.
                    let leaf_timeout = inbound.hop_timeout(leaf_timeout);
                    let to_leaf = Inbound {
                        deadline: Some(std::time::Instant::now() + leaf_timeout),
                        ..inbound.clone()
                    };
                    let answers = join_all(leaves.iter().map(|leaf| async {
                        match tokio::time::timeout(
                            leaf_timeout,
                            leaf.call(service, &call.request, &id, &to_leaf),
                        )
                        .await
                        {
                            Ok(answer) => answer.map_err(|e| name_the_leaf(leaf.label(), e)),
                            Err(_) => Err(RpcError::timeout(leaf.label(), leaf_timeout)),
                        }
                    }))
                    .await;
                    let mut parts = Vec::with_capacity(answers.len());
                    let mut missing = Vec::new();
                    for (leaf, answer) in leaves.iter().zip(answers) {
                        match (answer, policy) {
                            (Ok(part), _) => parts.push(part),
                            (Err(e), ScatterPolicy::FailFast) => return Err(e),
                            (Err(e), ScatterPolicy::Partial) => {
                                tracing::warn!(error = %e, "leaf missing from the merge");
                                missing.push(leaf.label().to_string());
                            }
                        }
                    }
                    if parts.is_empty() {
                        return Err(RpcError::unavailable(
                            service,
                            format!("all {} leaves failed", missing.len()),
                        ));
                    }
                    metrics.missing_leaves(missing.len());
                    let context = context_for(identity, inbound, missing, None, caller.as_ref());
                    let may_block = caller.is_some() && merge.may_block();
                    let merge = merge.clone();
                    let run = run_user_code(may_block, move || merge.merge(parts, context));
                    until_deadline(inbound.deadline, identity, run).await
                }
            })
            .await;
            Reply::json(out)
        })
    }
}

/// Errors the leaf itself returned keep their code; the message says which leaf it was.
fn name_the_leaf(leaf: &str, e: RpcError) -> RpcError {
    if e.message.contains(leaf) {
        return e;
    }
    RpcError { message: format!("leaf '{leaf}' failed: {}", e.message), ..e }
}
