//! [`Callee`]: a typed name of a service of the app, for calling it from another service's handler.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::future::BoxFuture;
use crate::wire::jsonrpc::RpcError;

/// The name of a service of this app, typed by the request its handler takes and the reply it
/// gives.
///
/// A `Callee<Req, Reply>` is a service's name together with the request it takes and the reply
/// it gives. The compiler holds both ends to those types: [`crate::service`] accepts a callee as
/// the name only for a topology whose handler takes `Req` and answers `Reply`, and
/// [`Context::call`](crate::Context::call) only sends it a `Req` and only decodes a `Reply`.
/// Being a constant, it can be named from any handler, including a plain `async fn`, without
/// threading handles through closures:
///
/// ```
/// use metaparticle as mp;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Quote { sku: String }
/// #[derive(Serialize, Deserialize)]
/// struct Price { cents: u64 }
///
/// /// The pricing service: whoever calls it sends a `Quote` and gets a `Price`.
/// const PRICING: mp::Callee<Quote, Price> = mp::Callee::new("pricing");
///
/// async fn checkout(ctx: mp::Context, sku: String) -> Result<u64, mp::HandlerError> {
///     let price = ctx.call(PRICING, Quote { sku }).await?;
///     Ok(price.cents)
/// }
///
/// let pricing = mp::service(PRICING, mp::spread(2, |q: Quote| Price { cents: 100 + q.sku.len() as u64 }));
/// let shop = mp::service("checkout", checkout).calls(PRICING).expose();
/// # let _ = (pricing, shop);
/// ```
///
/// A call with the wrong request type does not compile:
///
/// ```compile_fail
/// # use metaparticle as mp;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Quote { sku: String }
/// # #[derive(Serialize, Deserialize)] struct Price { cents: u64 }
/// # const PRICING: mp::Callee<Quote, Price> = mp::Callee::new("pricing");
/// async fn checkout(ctx: mp::Context, sku: String) -> Result<u64, mp::HandlerError> {
///     let price = ctx.call(PRICING, sku).await?; // a String is not a Quote
///     Ok(price.cents)
/// }
/// ```
///
/// Nor does expecting another reply:
///
/// ```compile_fail
/// # use metaparticle as mp;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Quote { sku: String }
/// # #[derive(Serialize, Deserialize)] struct Price { cents: u64 }
/// # const PRICING: mp::Callee<Quote, Price> = mp::Callee::new("pricing");
/// async fn checkout(ctx: mp::Context, sku: String) -> Result<String, mp::HandlerError> {
///     let name: String = ctx.call(PRICING, Quote { sku }).await?; // it answers a Price
///     Ok(name)
/// }
/// ```
///
/// Nor does serving the name with a handler of other types:
///
/// ```compile_fail
/// # use metaparticle as mp;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Quote { sku: String }
/// # #[derive(Serialize, Deserialize)] struct Price { cents: u64 }
/// # const PRICING: mp::Callee<Quote, Price> = mp::Callee::new("pricing");
/// let pricing = mp::service(PRICING, |sku: String| sku.len()); // takes a String, answers a usize
/// ```
///
/// It is `Copy`: pass it by value to [`Context::call`](crate::Context::call),
/// [`crate::service`] and [`Service::calls`](crate::Service::calls).
pub struct Callee<Req, Reply> {
    name: &'static str,
    types: PhantomData<fn(Req) -> Reply>,
}

impl<Req, Reply> Callee<Req, Reply> {
    /// The service named `name`, taking `Req` and answering `Reply`.
    pub const fn new(name: &'static str) -> Self {
        Self { name, types: PhantomData }
    }

    /// The service's name (its JSON-RPC method).
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

// By hand: derived impls would require `Req` and `Reply` to be `Copy` and `Debug` themselves.
impl<Req, Reply> Clone for Callee<Req, Reply> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Req, Reply> Copy for Callee<Req, Reply> {}

impl<Req, Reply> fmt::Debug for Callee<Req, Reply> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Callee({:?}: {} -> {})", self.name, short::<Req>(), short::<Reply>())
    }
}

fn short<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

impl<Req, Reply> AsRef<str> for Callee<Req, Reply> {
    fn as_ref(&self) -> &str {
        self.name
    }
}

/// What names a service in [`crate::service`]: any string, or a [`Callee`] whose types are those
/// of the service's handler.
#[diagnostic::on_unimplemented(
    message = "the service's handler does not take `{Req}` and answer `{Reply}`, as `{Self}` promises",
    label = "this name's request and reply types differ from the handler's",
    note = "a `Callee<Req, Reply>` can only name a service whose handler takes `Req` and answers `Reply`"
)]
pub trait ServiceName<Req, Reply>: sealed::Sealed {
    /// The name as a string.
    fn into_name(self) -> String;
}

mod sealed {
    /// Only strings and callees name services.
    pub trait Sealed {}
    impl Sealed for &str {}
    impl Sealed for String {}
    impl Sealed for &String {}
    impl<Req, Reply> Sealed for super::Callee<Req, Reply> {}
}

impl<Req, Reply> ServiceName<Req, Reply> for &str {
    fn into_name(self) -> String {
        self.to_string()
    }
}

impl<Req, Reply> ServiceName<Req, Reply> for String {
    fn into_name(self) -> String {
        self
    }
}

impl<Req, Reply> ServiceName<Req, Reply> for &String {
    fn into_name(self) -> String {
        self.clone()
    }
}

impl<Req, Reply> ServiceName<Req, Reply> for Callee<Req, Reply> {
    fn into_name(self) -> String {
        self.name.to_string()
    }
}

/// Where a call from a handler comes from: the request it serves.
#[derive(Clone, Debug, Default)]
pub(crate) struct CallOrigin {
    /// The request's authenticated user, whom the callee serves too.
    pub(crate) user: Option<Arc<str>>,
    /// When the request's caller stops waiting; the call may not take longer.
    pub(crate) deadline: Option<Instant>,
    /// The request's trace, which the call continues.
    pub(crate) trace: Option<crate::model::request_trace::RequestTrace>,
}

/// How a handler's calls leave its node (implemented by the data plane, which owns the hops):
/// the model only describes a call, it never makes one.
pub(crate) trait Caller: Send + Sync + 'static {
    /// Calls `service` with `request` on behalf of the origin's user, waiting no longer than its
    /// deadline, as a hop of its trace.
    fn call(&self, service: &str, request: Value, origin: CallOrigin) -> BoxFuture<Result<Value, RpcError>>;

    /// Waits for `call` on this thread, for a synchronous handler; refuses (`-32603`) where
    /// waiting would block the runtime that must carry the call.
    fn wait(&self, call: BoxFuture<Result<Value, RpcError>>) -> Result<Value, RpcError>;
}
