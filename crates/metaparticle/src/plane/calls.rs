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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::inbound::Inbound;
use super::upstream::Pool;
use crate::future::BoxFuture;
use crate::model::callee::Caller;
use crate::wire::jsonrpc::RpcError;

/// The callees of one node, each behind its own pool.
pub(crate) struct AppCaller {
    /// The calling node, for messages.
    node: String,
    /// Callee service name → a pool over its front node's replicas.
    callees: HashMap<String, Arc<Pool>>,
}

impl AppCaller {
    /// A caller for `node` over the pools of the services it declares.
    pub(crate) fn new(node: &str, callees: HashMap<String, Arc<Pool>>) -> Arc<Self> {
        Arc::new(Self { node: node.to_string(), callees })
    }
}

impl Caller for AppCaller {
    fn call(
        &self,
        service: &str,
        request: Value,
        user: Option<Arc<str>>,
        deadline: Option<Instant>,
    ) -> BoxFuture<Result<Value, RpcError>> {
        let Some(pool) = self.callees.get(service).cloned() else {
            return Box::pin(std::future::ready(Err(RpcError::undeclared_call(&self.node, service))));
        };
        let service = service.to_string();
        Box::pin(async move {
            // The callee answers each call on its own; the id only has to make it a call (not a
            // notification, which gets no answer).
            pool.call(&service, &request, &Value::from(1), &Inbound { user, deadline }).await
        })
    }
}
