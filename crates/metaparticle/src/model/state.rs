//! State: handlers that read and change a scope that outlives the request.
//!
//! The seeds promise that "metaparticle is reading data out of storage, executing your code and
//! detecting changed values, then storing those back in with optimistic concurrency to eliminate
//! races". [`stateful`] and [`stateful_user`] keep that promise for any serde type:
//!
//! 1. load the scope and its version from the store (`--storage file` or `redis`);
//! 2. run the handler on it;
//! 3. if the scope's serialized form changed, write it back with compare-and-swap on the version;
//!    a handler that only reads writes nothing;
//! 4. if another replica wrote first, go back to 1 (at most [`MAX_ATTEMPTS`] times; the first
//!    retry at once, then after a random sleep below a bound that doubles from 1 ms up to
//!    [`MAX_BACKOFF`]), then fail with
//!    `-32002` ([`RpcError::CONFLICT`]). Storage that cannot be reached, or a scope that does not
//!    decode, is `-32003` ([`RpcError::STORAGE`]); nothing is written.
//!
//! **The handler may run more than once per request**, so it should only compute from its
//! request and its scope: a side effect (a call, a log line that matters) could repeat. It is
//! synchronous on purpose: it holds no lock, but the shorter the read-modify-write window, the
//! fewer the conflicts. If it returns an error or panics, nothing is written.
//!
//! Within one process, updates of one key also queue on an in-process lane before they read, so
//! concurrent requests to the same replica do not conflict with each other; compare-and-swap
//! is still what makes them correct, across replicas and processes.
//!
//! Every scope has its own key, `<app>/<service>/global` or `<app>/<service>/user/<name>`, so two
//! services, or two apps on one Redis, never share a counter by accident.
//!
//! ```
//! use metaparticle as mp;
//! use serde::{Deserialize, Serialize};
//! use serde_json::{json, Value};
//!
//! #[derive(Serialize, Deserialize, Default)]
//! struct Global { requests: u64 }
//!
//! let svc = mp::service("simple-storage", mp::stateful(|_req: Value, global: &mut Global| {
//!     global.requests += 1;
//!     json!({ "requests": global.requests })
//! }));
//! # let _ = svc;
//! ```
//!
//! A scope that cannot be stored does not compile:
//!
//! ```compile_fail
//! use metaparticle as mp;
//! struct NotSerializable { requests: u64 }
//! let svc = mp::service("simple-storage", mp::stateful(|_req: serde_json::Value, s: &mut NotSerializable| s.requests));
//! ```

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::context::Context;
use super::handler::{decode_request, ErasedHandler, IntoReply};
use super::topology::{Topology, Tree};
use crate::future::BoxFuture;
use crate::wire::jsonrpc::RpcError;

/// How many times a request loads, runs and tries to write before it gives up with `-32002`.
pub(crate) const MAX_ATTEMPTS: u32 = 32;
/// The longest sleep between two attempts (each sleep is random, up to a bound that doubles from 1 ms).
pub(crate) const MAX_BACKOFF: Duration = Duration::from_millis(32);

/// What a scope can hold: any serde type with a starting value. A type that cannot be serialized
/// does not compile.
pub trait ScopeState: Serialize + DeserializeOwned + Default + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Default + Send + 'static> ScopeState for T {}

/// The per-user scope of the authenticated caller, as a [`stateful_user`] handler sees it.
///
/// It dereferences to the user's state, so `user.requests += 1` works; [`User::name`] says who it is.
#[derive(Debug)]
pub struct User<U> {
    name: String,
    state: U,
}

impl<U> User<U> {
    /// The authenticated user's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<U> Deref for User<U> {
    type Target = U;
    fn deref(&self) -> &U {
        &self.state
    }
}

impl<U> DerefMut for User<U> {
    fn deref_mut(&mut self) -> &mut U {
        &mut self.state
    }
}

/// A handler over the app's global scope for its service: `|request, &mut state| reply`.
///
/// See the [module docs](self) for what happens on every call, and that the handler **may run
/// more than once per request**. (Do not mark a service that changes state
/// [idempotent](crate::Service::idempotent): a retried request would change it twice.) `G` is any `Serialize + Deserialize + Default` type (a struct, a
/// `HashMap`, a `serde_json::Map`); it starts as `G::default()`. The result is an ordinary
/// topology, so `spread(3, stateful(f))` and `shard(4, key, stateful(f))` work.
pub fn stateful<F, Req, G, Out, R>(handler: F) -> Topology<Req, <Out as IntoReply<R>>::Reply>
where
    F: Fn(Req, &mut G) -> Out + Send + Sync + 'static,
    Req: DeserializeOwned + Send + 'static,
    G: ScopeState,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    let run = move |req: Req, state: &mut G, _user: Option<&str>| handler(req, state);
    Topology::new(Tree::Handler(Arc::new(Stateful {
        run: Arc::new(run),
        scope: Scope::Global,
        _types: PhantomData,
    })))
}

/// A handler over the per-user scope of the authenticated caller: `|request, &mut User<U>| reply`.
///
/// The service must be behind authentication ([`crate::Service::with_basic_auth`]); a call
/// without an authenticated user is refused with `-32600` and touches no state. Otherwise it
/// behaves exactly like [`stateful`], with one scope per user.
///
/// ```
/// use metaparticle as mp;
/// use serde_json::{json, Value};
///
/// #[derive(serde::Serialize, serde::Deserialize, Default)]
/// struct Visits { requests: u64 }
///
/// let auth = mp::BasicAuth::from_pairs([("alice", "wonderland")]);
/// let svc = mp::service("simple-user-storage", mp::stateful_user(|_req: Value, user: &mut mp::User<Visits>| {
///     user.requests += 1;
///     json!({ "user": user.name(), "requests": user.requests })
/// }))
/// .expose()
/// .with_basic_auth(auth);
/// # let _ = svc;
/// ```
pub fn stateful_user<F, Req, U, Out, R>(handler: F) -> Topology<Req, <Out as IntoReply<R>>::Reply>
where
    F: Fn(Req, &mut User<U>) -> Out + Send + Sync + 'static,
    Req: DeserializeOwned + Send + 'static,
    U: ScopeState,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    let run = move |req: Req, state: &mut U, user: Option<&str>| {
        let mut scope = User { name: user.unwrap_or_default().to_string(), state: std::mem::take(state) };
        let out = handler(req, &mut scope);
        *state = scope.state;
        out
    };
    Topology::new(Tree::Handler(Arc::new(Stateful {
        run: Arc::new(run),
        scope: Scope::User,
        _types: PhantomData,
    })))
}

/// Which scope a stateful handler reads: the runtime turns it into a storage key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Global,
    User,
}

/// The scope of one request, as the state runtime ([`crate::state`]) keys it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScopeId {
    /// The service's one global scope.
    Global,
    /// The scope of one authenticated user.
    User(Arc<str>),
}

/// What one attempt of a stateful request did to the scope it was given.
pub(crate) struct Attempted {
    /// The handler's reply, sent once the change (if any) is stored.
    pub(crate) reply: Value,
    /// The scope's new serialized form, or `None` if the handler left it unchanged.
    pub(crate) write: Option<Vec<u8>>,
}

/// Why an attempt produced no reply.
pub(crate) enum AttemptError {
    /// The handler failed (or its request or state could not be encoded): the request's answer.
    Handler(RpcError),
    /// The stored bytes do not decode as the handler's state; the runtime names the store and key.
    Undecodable(String),
}

/// One attempt of a stateful request: given the scope's stored bytes (`None`: never written), run
/// the handler on it. The runtime may call it again after a lost compare-and-swap.
pub(crate) type Attempt = Box<dyn FnMut(Option<&[u8]>) -> Result<Attempted, AttemptError> + Send>;

/// What runs the transactions of stateful handlers (implemented by [`crate::state`]): load the
/// scope, run the attempt, store the change with compare-and-swap, retry on conflict.
pub(crate) trait Transactions: Send + Sync + 'static {
    /// Runs `attempt` on `scope` until its change is stored or it gives up.
    fn transact(self: Arc<Self>, scope: ScopeId, attempt: Attempt) -> BoxFuture<Result<Value, RpcError>>;
}

type Run<Req, S, Out> = dyn Fn(Req, &mut S, Option<&str>) -> Out + Send + Sync;

struct Stateful<Req, S, Out, R> {
    run: Arc<Run<Req, S, Out>>,
    scope: Scope,
    _types: PhantomData<fn() -> R>,
}

impl<Req, S, Out, R> ErasedHandler for Stateful<Req, S, Out, R>
where
    Req: DeserializeOwned + Send + 'static,
    S: ScopeState,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    fn call(&self, request: Value, context: Context) -> BoxFuture<Result<Value, RpcError>> {
        let outcome = self.prepare(request, &context);
        Box::pin(async move {
            let (scope, attempt) = outcome?;
            let Some(transactions) = context.state().cloned() else {
                return Err(RpcError::internal(
                    "this handler keeps state but its node was started without storage",
                ));
            };
            transactions.transact(scope, attempt).await
        })
    }

    fn uses_state(&self) -> bool {
        true
    }
}

impl<Req, S, Out, R> Stateful<Req, S, Out, R>
where
    Req: DeserializeOwned + Send + 'static,
    S: ScopeState,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    /// Checks the request and the caller before storage is touched, and builds the attempt.
    fn prepare(&self, request: Value, context: &Context) -> Result<(ScopeId, Attempt), RpcError> {
        let mut first = Some(decode_request::<Req>(request.clone())?);
        let user: Option<Arc<str>> = match self.scope {
            Scope::Global => None,
            Scope::User => Some(context.user().map(Arc::from).ok_or_else(|| {
                RpcError::invalid_request(
                    "this service keeps per-user state and needs an authenticated user; \
                     serve it with Service::with_basic_auth",
                )
            })?),
        };
        let scope = match &user {
            Some(name) => ScopeId::User(name.clone()),
            None => ScopeId::Global,
        };
        let run = self.run.clone();
        let attempt = move |stored: Option<&[u8]>| {
            let mut state: S = match stored {
                None => S::default(),
                Some(bytes) => {
                    serde_json::from_slice(bytes).map_err(|e| AttemptError::Undecodable(e.to_string()))?
                }
            };
            let before = encode_scope(&state)?;
            // A re-run after a lost compare-and-swap decodes the request again: the first decoded
            // copy was consumed by the first run.
            let req = match first.take() {
                Some(req) => req,
                None => decode_request::<Req>(request.clone()).map_err(AttemptError::Handler)?,
            };
            let reply = std::panic::catch_unwind(AssertUnwindSafe(|| run(req, &mut state, user.as_deref())))
                .map_err(|panic| RpcError::handler_panicked(&panic))
                .and_then(IntoReply::<R>::into_reply)
                .map_err(AttemptError::Handler)?;
            let after = encode_scope(&state)?;
            Ok(Attempted { reply, write: (before != after).then_some(after) })
        };
        Ok((scope, Box::new(attempt)))
    }
}

fn encode_scope<S: ScopeState>(state: &S) -> Result<Vec<u8>, AttemptError> {
    serde_json::to_vec(state).map_err(|e| {
        AttemptError::Handler(RpcError::internal(format!("the handler's state is not JSON: {e}")))
    })
}
