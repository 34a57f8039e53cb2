//! Handlers: ordinary Rust functions turned into JSON-RPC endpoints.
//!
//! A user writes a closure or an `async fn` over any serde types; the node that runs it only sees
//! JSON. [`Handler`] is the bridge: it is implemented for every `Fn(Req) -> Out` and every
//! `Fn(Req) -> impl Future<Output = Out>` where `Req: DeserializeOwned` and `Out: IntoReply`,
//! and it erases the types into one [`ErasedHandler`] the data plane can call.
//!
//! The marker type parameter `M` exists only so that the synchronous and the asynchronous blanket
//! implementations do not overlap (the same trick axum uses for its handlers); users never name it.

use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::context::Context;
use super::handler_error::HandlerError;
use crate::future::BoxFuture;
use crate::wire::jsonrpc::RpcError;

/// A handler with its types erased: JSON request in, JSON result (or a JSON-RPC error) out.
pub trait ErasedHandler: Send + Sync + 'static {
    /// Runs the handler on one request. Panics are caught and reported as `-32603`.
    fn call(&self, request: Value, context: Context) -> BoxFuture<Result<Value, RpcError>>;

    /// Whether the handler reads a scope from storage (see [`crate::stateful`]); the node then
    /// opens its store and gives the handler a state context. False for ordinary handlers.
    fn uses_state(&self) -> bool {
        false
    }

    /// Whether the handler is synchronous code that takes a [`Context`], so it may wait for a
    /// call ([`Context::call_blocking`]); the data plane then runs it where waiting is safe.
    fn may_block(&self) -> bool {
        false
    }
}

/// A failed call to another service fails the handler with the same code, message and data, so
/// `ctx.call(CART, request).await?` passes a callee's error on to this handler's caller unchanged.
impl From<RpcError> for HandlerError {
    fn from(e: RpcError) -> Self {
        Self { code: e.code, message: e.message, data: e.data }
    }
}

/// What a handler may return: any `Serialize` value, or `Result<T, HandlerError>`.
///
/// The marker `M` keeps the two implementations apart (a `Result` is itself `Serialize`).
pub trait IntoReply<M = PlainReply> {
    /// The reply a caller receives: the output itself, or the `T` of `Result<T, HandlerError>`.
    /// A [`crate::Callee`] of the service is typed by it.
    type Reply;

    /// Converts the handler's output into a JSON result or a JSON-RPC error.
    fn into_reply(self) -> Result<Value, RpcError>;
}

/// Marker: the output is the result.
pub struct PlainReply;
/// Marker: the output is `Ok(result)` or `Err(HandlerError)`.
pub struct FallibleReply;

impl<T: Serialize> IntoReply<PlainReply> for T {
    type Reply = T;

    fn into_reply(self) -> Result<Value, RpcError> {
        serde_json::to_value(self)
            .map_err(|e| RpcError::internal(format!("the handler's result is not JSON: {e}")))
    }
}

// `HandlerError` deliberately does not implement `Serialize`, so only this impl applies to
// `Result<T, HandlerError>` and the marker is always inferred.
impl<T: Serialize> IntoReply<FallibleReply> for Result<T, HandlerError> {
    type Reply = T;

    fn into_reply(self) -> Result<Value, RpcError> {
        match self {
            Ok(value) => IntoReply::<PlainReply>::into_reply(value),
            Err(e) => Err(RpcError { code: e.code, message: e.message, data: e.data }),
        }
    }
}

/// Any function that can serve requests. Implemented for sync and async closures and fns, with or
/// without a [`Context`] before the request.
///
/// ```
/// use metaparticle as mp;
/// use serde_json::{json, Value};
///
/// // A synchronous closure over JSON...
/// let echo = mp::service("echo", |req: Value| json!({ "echo": req }));
/// // ...or an async fn over typed requests...
/// #[derive(serde::Deserialize)]
/// struct Greet { name: String }
/// async fn greet(req: Greet) -> String { format!("hello {}", req.name) }
/// let greeter = mp::service("greeter", greet);
/// // ...or either of them taking the request's context first.
/// async fn who(ctx: mp::Context, _req: Value) -> String { ctx.hostname().to_string() }
/// let who = mp::service("who", who);
/// # let _ = (echo, greeter, who);
/// ```
pub trait Handler<M>: Send + Sync + 'static + sealed::IntoErased<M> {}

impl<H, M> Handler<M> for H where H: Send + Sync + 'static + sealed::IntoErased<M> {}

pub(crate) mod sealed {
    use std::sync::Arc;

    /// Only this crate's shapes of handler exist, so the erased form can change freely.
    #[allow(unreachable_pub)] // sealed: public in name only, so that public traits may require it
    pub trait IntoErased<M> {
        /// The request the handler takes.
        type Request;
        /// The reply its caller receives (see [`super::IntoReply::Reply`]).
        type Reply;

        /// Erases the handler's types.
        fn into_erased(self) -> Arc<dyn super::ErasedHandler>;
    }
}

/// Marker for synchronous handlers (see [`Handler`]).
pub struct SyncHandler<Req, Out, R>(PhantomData<fn(Req) -> (Out, R)>);
/// Marker for asynchronous handlers (see [`Handler`]).
pub struct AsyncHandler<Req, Fut, R>(PhantomData<fn(Req) -> (Fut, R)>);
/// Marker for synchronous handlers that take a [`Context`] (see [`Handler`]).
pub struct SyncContextHandler<Req, Out, R>(PhantomData<fn(Req) -> (Out, R)>);
/// Marker for asynchronous handlers that take a [`Context`] (see [`Handler`]).
pub struct AsyncContextHandler<Req, Fut, R>(PhantomData<fn(Req) -> (Fut, R)>);

/// A user function of either shape, called with the context or without it.
pub(crate) struct Plain<F>(pub(crate) F);
pub(crate) struct WithContext<F>(pub(crate) F);

/// How one shape of user function is invoked; lets one erased implementation serve both shapes.
pub(crate) trait Invoke<Req, Out>: Send + Sync + 'static {
    /// Whether the user's function takes the context (and so can make calls).
    const TAKES_CONTEXT: bool;

    fn invoke(&self, context: Context, request: Req) -> Out;
}

impl<F: Fn(Req) -> Out + Send + Sync + 'static, Req, Out> Invoke<Req, Out> for Plain<F> {
    const TAKES_CONTEXT: bool = false;

    fn invoke(&self, _: Context, request: Req) -> Out {
        (self.0)(request)
    }
}

impl<F: Fn(Context, Req) -> Out + Send + Sync + 'static, Req, Out> Invoke<Req, Out> for WithContext<F> {
    const TAKES_CONTEXT: bool = true;

    fn invoke(&self, context: Context, request: Req) -> Out {
        (self.0)(context, request)
    }
}

struct SyncFn<I, Req, Out, R>(I, PhantomData<fn(Req) -> (Out, R)>);
struct AsyncFn<I, Req, Fut, R>(I, PhantomData<fn(Req) -> (Fut, R)>);

impl<F, Req, Out, R> sealed::IntoErased<SyncHandler<Req, Out, R>> for F
where
    F: Fn(Req) -> Out + Send + Sync + 'static,
    Req: DeserializeOwned + 'static,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    type Request = Req;
    type Reply = Out::Reply;

    fn into_erased(self) -> Arc<dyn ErasedHandler> {
        Arc::new(SyncFn(Plain(self), PhantomData))
    }
}

impl<F, Req, Out, R> sealed::IntoErased<SyncContextHandler<Req, Out, R>> for F
where
    F: Fn(Context, Req) -> Out + Send + Sync + 'static,
    Req: DeserializeOwned + 'static,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    type Request = Req;
    type Reply = Out::Reply;

    fn into_erased(self) -> Arc<dyn ErasedHandler> {
        Arc::new(SyncFn(WithContext(self), PhantomData))
    }
}

impl<F, Req, Fut, R> sealed::IntoErased<AsyncHandler<Req, Fut, R>> for F
where
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Req: DeserializeOwned + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoReply<R>,
    R: 'static,
{
    type Request = Req;
    type Reply = <Fut::Output as IntoReply<R>>::Reply;

    fn into_erased(self) -> Arc<dyn ErasedHandler> {
        Arc::new(AsyncFn(Plain(self), PhantomData))
    }
}

impl<F, Req, Fut, R> sealed::IntoErased<AsyncContextHandler<Req, Fut, R>> for F
where
    F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
    Req: DeserializeOwned + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoReply<R>,
    R: 'static,
{
    type Request = Req;
    type Reply = <Fut::Output as IntoReply<R>>::Reply;

    fn into_erased(self) -> Arc<dyn ErasedHandler> {
        Arc::new(AsyncFn(WithContext(self), PhantomData))
    }
}

/// Decodes a request for a handler, mapping a type mismatch to `-32602 invalid params`.
pub(crate) fn decode_request<Req: DeserializeOwned>(request: Value) -> Result<Req, RpcError> {
    serde_json::from_value(request).map_err(|e| RpcError::invalid_params(e.to_string()))
}

impl<I, Req, Out, R> ErasedHandler for SyncFn<I, Req, Out, R>
where
    I: Invoke<Req, Out>,
    Req: DeserializeOwned + 'static,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    fn call(&self, request: Value, context: Context) -> BoxFuture<Result<Value, RpcError>> {
        let outcome = decode_request::<Req>(request).and_then(|req| {
            std::panic::catch_unwind(AssertUnwindSafe(|| self.0.invoke(context, req)))
                .map_err(|panic| RpcError::handler_panicked(&panic))
                .and_then(IntoReply::<R>::into_reply)
        });
        Box::pin(std::future::ready(outcome))
    }

    fn may_block(&self) -> bool {
        I::TAKES_CONTEXT
    }
}

impl<I, Req, Fut, R> ErasedHandler for AsyncFn<I, Req, Fut, R>
where
    I: Invoke<Req, Fut>,
    Req: DeserializeOwned + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoReply<R>,
    R: 'static,
{
    fn call(&self, request: Value, context: Context) -> BoxFuture<Result<Value, RpcError>> {
        let req = match decode_request::<Req>(request) {
            Ok(req) => req,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        // Creating the future runs user code too, so it is inside the unwind guard as well.
        let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| self.0.invoke(context, req))) {
            Ok(fut) => fut,
            Err(panic) => return Box::pin(std::future::ready(Err(RpcError::handler_panicked(&panic)))),
        };
        Box::pin(async move {
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(out) => IntoReply::<R>::into_reply(out),
                Err(panic) => Err(RpcError::handler_panicked(&panic)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn erase<M>(h: impl Handler<M>) -> Arc<dyn ErasedHandler> {
        h.into_erased()
    }

    fn context() -> Context {
        Context::for_tests()
    }

    #[tokio::test]
    async fn sync_and_async_closures_become_the_same_erased_handler() {
        let sync = erase(|x: i64| x + 1);
        let asynchronous = erase(|x: i64| async move { x + 1 });
        assert_eq!(sync.call(json!(41), context()).await.unwrap(), json!(42));
        assert_eq!(asynchronous.call(json!(41), context()).await.unwrap(), json!(42));
    }

    #[tokio::test]
    async fn a_request_of_the_wrong_type_is_invalid_params() {
        let h = erase(|x: i64| x);
        let err = h.call(json!("not a number"), context()).await.unwrap_err();
        assert_eq!(err.code, RpcError::INVALID_PARAMS);
    }

    #[tokio::test]
    async fn a_panicking_handler_is_an_internal_error_with_the_message() {
        let h = erase(|_: Value| -> Value { panic!("boom") });
        let err = h.call(json!({}), context()).await.unwrap_err();
        assert_eq!(err.code, RpcError::INTERNAL);
        assert!(err.message.contains("boom"), "{}", err.message);
        let h = erase(|_: Value| async move {
            panic!("async boom");
            #[allow(unreachable_code)]
            0
        });
        let err = h.call(json!({}), context()).await.unwrap_err();
        assert!(err.message.contains("async boom"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_handler_error_keeps_its_code_and_message() {
        let h = erase(|_: Value| -> Result<i64, HandlerError> {
            Err(HandlerError::new("no such user").with_code(-32044))
        });
        let err = h.call(json!({}), context()).await.unwrap_err();
        assert_eq!((err.code, err.message.as_str()), (-32044, "no such user"));
    }
}
