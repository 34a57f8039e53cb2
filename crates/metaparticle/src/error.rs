//! The error a metaparticle program's `main` returns.

use crate::model::PlanError;
use crate::wire::jsonrpc::RpcError;

/// Everything that can go wrong outside a request: compiling, deploying, tearing down, calling.
#[derive(thiserror::Error)]
pub enum Error {
    /// The topology is not valid.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// An operating-system operation failed; `context` says which and on what.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A call returned a JSON-RPC error.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// A runner could not do what was asked; the message says why and what to do.
    #[error("{0}")]
    Runner(String),
    /// The local runner could not do what was asked.
    #[error(transparent)]
    Local(#[from] crate::runner::local::LocalError),
    /// The storage backend is misconfigured or unreachable.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The app is not deployed.
    #[error("app '{0}' is not running")]
    NotRunning(String),
}

// `main` returning `Err` prints `Debug`; make that the message a person needs, not a struct dump.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
