//! [`BoxFuture`]: the one boxed future type, the currency of type-erased async calls across layers
//! (handlers, stores, servers). Kept at the bottom so that no layer imports another for it.

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
