//! The four node roles: leaf, balancer, shard router and gather root.
//!
//! Each is a [`Role`]: a JSON-RPC body in, a reply out. Only the leaf runs user code directly; the
//! router runs the user's key function and the gather root the user's merge function, both inside
//! the same process because every node is the same binary. The server runs every role inside its
//! replica's identity, so `hostname()` works in key and merge functions too.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use serde_json::Value;

use super::metrics::Metrics;
use super::server::{Reply, Role};
use super::upstream::Pool;
use crate::future::BoxFuture;
use crate::model::handler::ErasedHandler;
use crate::model::state::{with_context, StateContext};
use crate::model::topology::{ErasedKey, ErasedMerge, ScatterPolicy};
use crate::wire::jsonrpc::{dispatch, error_for_body, RpcError};

tokio::task_local! {
    static MISSING: Vec<String>;
}

/// Inside a merge function of a scatter with [`Scatter::merge_partial`](crate::Scatter::merge_partial):
/// the leaves that failed or were late and are not among the parts. Empty elsewhere.
///
/// ```
/// use metaparticle as mp;
/// let tree = mp::scatter(3, |_: serde_json::Value| 1, |parts: Vec<u32>| {
///     serde_json::json!({ "sum": parts.iter().sum::<u32>(), "missing": mp::missing_leaves() })
/// }).merge_partial();
/// # let _ = tree;
/// ```
pub fn missing_leaves() -> Vec<String> {
    MISSING.try_with(Clone::clone).unwrap_or_default()
}

/// Runs the user's handler.
pub struct Leaf {
    /// The service (JSON-RPC method) served.
    pub service: String,
    /// The user's handler.
    pub handler: Arc<dyn ErasedHandler>,
    /// The store and scope keys of a stateful handler; `None` for every other handler.
    pub state: Option<Arc<StateContext>>,
}

impl Role for Leaf {
    fn handle(&self, body: Bytes) -> BoxFuture<Reply> {
        let (handler, service) = (self.handler.clone(), self.service.clone());
        let serve =
            async move { Reply::json(dispatch(&body, &service, |call| handler.call(call.request)).await) };
        match self.state.clone() {
            Some(context) => Box::pin(with_context(context, serve)),
            None => Box::pin(serve),
        }
    }
}

/// Forwards each body, untouched, to one replica: the fast path never parses JSON.
pub struct Balancer {
    /// The replicas.
    pub pool: Arc<Pool>,
}

impl Role for Balancer {
    fn handle(&self, body: Bytes) -> BoxFuture<Reply> {
        let pool = self.pool.clone();
        Box::pin(async move {
            match pool.forward(body.clone()).await {
                Ok((status, answer)) => Reply { status, body: answer },
                Err(e) => Reply::json(error_for_body(&body, e)),
            }
        })
    }
}

/// Sends each call to the shard its key selects.
pub struct Router {
    /// The service (JSON-RPC method) served.
    pub service: String,
    /// The user's key function.
    pub key: Arc<dyn ErasedKey>,
    /// One pool per shard, in shard order.
    pub shards: Vec<Arc<Pool>>,
}

impl Role for Router {
    fn handle(&self, body: Bytes) -> BoxFuture<Reply> {
        let (key, shards, service) = (self.key.clone(), self.shards.clone(), self.service.clone());
        Box::pin(async move {
            let out = dispatch(&body, &service, |call| {
                let (key, shards, service) = (&key, &shards, &service);
                async move {
                    let shard = key.shard_of(&call.request, shards.len())?;
                    let id = call.id.clone().unwrap_or(Value::Null);
                    shards[shard].call(service, &call.request, &id).await
                }
            })
            .await;
            Reply::json(out)
        })
    }
}

/// Sends each call to every leaf at once and merges the answers.
pub struct Gather {
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
}

impl Role for Gather {
    fn handle(&self, body: Bytes) -> BoxFuture<Reply> {
        let (merge, leaves, service) = (self.merge.clone(), self.leaves.clone(), self.service.clone());
        let (policy, leaf_timeout, metrics) = (self.policy, self.leaf_timeout, self.metrics.clone());
        Box::pin(async move {
            let out = dispatch(&body, &service, |call| {
                let (merge, leaves, service, metrics) = (&merge, &leaves, &service, &metrics);
                async move {
                    let id = call.id.clone().unwrap_or(Value::Null);
                    let answers = join_all(leaves.iter().map(|leaf| async {
                        match tokio::time::timeout(leaf_timeout, leaf.call(service, &call.request, &id)).await
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
                    MISSING.sync_scope(missing, || merge.merge(parts))
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
