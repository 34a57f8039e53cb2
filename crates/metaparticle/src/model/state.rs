//! Stateful handlers, described: [`stateful`] and [`stateful_user`] turn a handler over a scope
//! into an *attempt* (scope bytes in, reply and new bytes out) that the state runtime runs with
//! optimistic concurrency through the [`Transactions`](super::transactions::Transactions) port.
//! Pure: the I/O is the runtime's (`crate::state`).

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::context::Context;
use super::handler::{decode_request, ErasedHandler, IntoReply};
use super::topology::{Topology, Tree};
use super::transactions::{Attempt, AttemptError, Attempted, ScopeId};
use crate::future::BoxFuture;
use crate::wire::jsonrpc::RpcError;

/// How many times a request runs and tries to write before it gives up with `-32002`. Each lost
/// attempt means another writer stored, and the next runs at once on what it stored, so a writer
/// with `n` rivals as fast as itself wins each round with a chance of about `1/(n+1)`: with 10
/// rivals, 256 attempts in a row all lose less than once in ten billion, and they are 256 store
/// round trips, not seconds of sleep.
pub(crate) const MAX_ATTEMPTS: u32 = 256;

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
/// `G` is any `Serialize + Deserialize + Default` type (a struct, a `HashMap`, a
/// `serde_json::Map`); it starts as `G::default()`. The result is an ordinary topology, so
/// `spread(3, stateful(f))` and `shard(4, key, stateful(f))` work. (Do not mark a service that
/// changes state [idempotent](crate::Service::idempotent): a retried request would change it twice.)
///
/// State: handlers that read and change a scope that outlives the request.
///
/// The seeds promise that "metaparticle is reading data out of storage, executing your code and
/// detecting changed values, then storing those back in with optimistic concurrency to eliminate
/// races". [`stateful`] and [`stateful_user`] keep that promise for any serde type:
///
/// 1. load the scope and its version from the store (`--storage file` or `redis`);
/// 2. run the handler on it;
/// 3. if the scope's serialized form changed, write it back with compare-and-swap on the version;
///    a handler that only reads writes nothing;
/// 4. if another replica wrote first, go back to 2 at once, on the value it wrote (at most
///    `MAX_ATTEMPTS` (256) times), then fail with `-32002` ([`RpcError::CONFLICT`]). Storage that
///    cannot be reached, or a scope that does not decode, is `-32003` ([`RpcError::STORAGE`]);
///    nothing is written.
///
/// **The handler may run more than once per request**, so it should only compute from its
/// request and its scope: a side effect (a call, a log line that matters) could repeat. It is
/// synchronous on purpose: it holds no lock, but the shorter the read-modify-write window, the
/// fewer the conflicts. If it returns an error or panics, nothing is written.
///
/// Within one process, updates of one key also queue on an in-process lane before they read, so
/// concurrent requests to the same replica do not conflict with each other; compare-and-swap
/// is still what makes them correct, across replicas and processes.
///
/// Every scope has its own key, `<app>/<service>/global` or `<app>/<service>/user/<name>`, so two
/// services, or two apps on one Redis, never share a counter by accident.
///
/// ```
/// use metaparticle as mp;
/// use serde::{Deserialize, Serialize};
/// use serde_json::{json, Value};
///
/// #[derive(Serialize, Deserialize, Default)]
/// struct Global { requests: u64 }
///
/// let svc = mp::service("simple-storage", mp::stateful(|_req: Value, global: &mut Global| {
///     global.requests += 1;
///     json!({ "requests": global.requests })
/// }));
/// # let _ = svc;
/// ```
///
/// A scope that cannot be stored does not compile:
///
/// ```compile_fail
/// use metaparticle as mp;
/// struct NotSerializable { requests: u64 }
/// let svc = mp::service("simple-storage", mp::stateful(|_req: serde_json::Value, s: &mut NotSerializable| s.requests));
/// ```
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

/// A handler over a scope chosen by a key function of the request: one scope per cart, account
/// or document. `|request: &Req| key` names the scope (any `Display`: a string, a number), and
/// `|request, &mut state| reply` runs on it exactly as [`stateful`] does on the global scope.
///
/// Put it behind [`shard`](crate::shard) with the same key and every request for one key reaches
/// one replica, where requests queued on the key are committed together (one writer in the
/// common case, like Orleans grains or Restate's virtual objects); compare-and-swap still keeps
/// every update when two replicas do meet on a key (a failover, a re-shard, a spread).
///
/// ```
/// use metaparticle as mp;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct AddItem { cart: String, item: String }
/// #[derive(Serialize, Deserialize, Default)]
/// struct Cart { items: Vec<String> }
///
/// let carts = mp::service("cart", mp::shard(4, |r: &AddItem| r.cart.clone(),
///     mp::stateful_keyed(|r: &AddItem| r.cart.clone(), |r: AddItem, cart: &mut Cart| {
///         cart.items.push(r.item);
///         cart.items.len()
///     })));
/// # let _ = carts;
/// ```
pub fn stateful_keyed<K, Key, F, Req, S, Out, R>(
    key: K,
    handler: F,
) -> Topology<Req, <Out as IntoReply<R>>::Reply>
where
    K: Fn(&Req) -> Key + Send + Sync + 'static,
    Key: std::fmt::Display,
    F: Fn(Req, &mut S) -> Out + Send + Sync + 'static,
    Req: DeserializeOwned + Send + 'static,
    S: ScopeState,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    let run = move |req: Req, state: &mut S, _user: Option<&str>| handler(req, state);
    let key_of = move |req: &Req| key(req).to_string();
    Topology::new(Tree::Handler(Arc::new(Stateful {
        run: Arc::new(run),
        scope: Scope::Keyed(Arc::new(key_of)),
        _types: PhantomData,
    })))
}

/// Which scope a stateful handler reads: the runtime turns it into a storage key.
enum Scope<Req> {
    Global,
    User,
    Keyed(Arc<KeyOf<Req>>),
}

type KeyOf<Req> = dyn Fn(&Req) -> String + Send + Sync;

type Run<Req, S, Out> = dyn Fn(Req, &mut S, Option<&str>) -> Out + Send + Sync;

struct Stateful<Req, S, Out, R> {
    run: Arc<Run<Req, S, Out>>,
    scope: Scope<Req>,
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
        let decoded = decode_request::<Req>(request.clone())?;
        let mut user: Option<Arc<str>> = None;
        let scope = match &self.scope {
            Scope::Global => ScopeId::Global,
            Scope::User => {
                let name: Arc<str> = context.user().map(Arc::from).ok_or_else(|| {
                    RpcError::invalid_request(
                        "this service keeps per-user state and needs an authenticated user; \
                         serve it with Service::with_basic_auth",
                    )
                })?;
                user = Some(name.clone());
                ScopeId::User(name)
            }
            Scope::Keyed(key_of) => {
                let key = std::panic::catch_unwind(AssertUnwindSafe(|| key_of(&decoded)))
                    .map_err(|panic| RpcError::handler_panicked(&panic))?;
                ScopeId::Keyed(key.into())
            }
        };
        let mut first = Some(decoded);
        let run = self.run.clone();
        // The attempt runs in the state runtime's commit task, away from the request's task:
        // it runs as the request's replica, so `hostname()` inside the handler is still right.
        let identity = context.identity_arc();
        // Each run after the first means another writer won: the request's span counts them.
        let trace = context.trace().cloned();
        let attempt = move |stored: Option<&[u8]>| {
            if let Some(trace) = &trace {
                trace.note_stateful_run();
            }
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
            let reply = super::identity::sync_scope(identity.clone(), || {
                std::panic::catch_unwind(AssertUnwindSafe(|| run(req, &mut state, user.as_deref())))
            })
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
