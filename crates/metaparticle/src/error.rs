//! [`Error`]: what a metaparticle program's `main` returns, wrapping each subsystem's own error.
//!
//! Each subsystem says what went wrong in its own enum ([`PlanError`], [`StorageError`],
//! [`LaunchError`], [`AuthError`], each runner's), with the cause kept as its `source`; this type
//! only gathers them so that `main` can return one.

use crate::model::auth::AuthError;
use crate::model::plan::PlanError;
use crate::storage::StorageError;
use crate::wire::jsonrpc::RpcError;

/// Everything that can go wrong outside a request: compiling, deploying, tearing down, calling.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The topology is not valid.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A node could not start in the role its runner gave it.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// Credentials for an exposed service could not be read.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// An operating-system operation failed; `context` says which and on what.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A call returned a JSON-RPC error.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// A call could not be made or answered (see [`crate::client::CallError`]).
    #[error(transparent)]
    Call(#[from] crate::client::CallError),
    /// A runner could not do what was asked; the message says why and what to do.
    #[error("{0}")]
    Runner(String),
    /// The storage backend is misconfigured or unreachable.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The app is not deployed.
    #[error("app '{0}' is not running")]
    NotRunning(String),
}

/// Why a process could not become the node its runner started it as. Fixing it means fixing the
/// runner's environment or the program, never retrying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// A variable of the launch contract is missing or malformed.
    #[error("this node was started with a bad environment: {variable}: {reason}")]
    Environment {
        /// The variable (`MP_REPLICA`, `MP_ADDRESS_BOOK`, ...).
        variable: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The runner asked for a node this program does not define (it was started from another build).
    #[error("this program has no node '{0}'; was it started from another build?")]
    UnknownNode(String),
    /// The plan names a role for which the program registered no code.
    #[error("node '{node}' ({role}) has no code registered")]
    NoCode {
        /// The node.
        node: String,
        /// Its role.
        role: &'static str,
    },
    /// The address book does not say where a node this one calls listens.
    #[error("the address book has no {0}")]
    Unaddressed(String),
    /// The node's store could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A URL pattern in the plan does not compile.
    #[error(transparent)]
    Pattern(#[from] PlanError),
}

// `main` returning `Err` prints `Debug`; make that the message a person needs, not a struct dump.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)?;
        let mut cause = std::error::Error::source(self);
        // Causes the message does not already include are listed, as `anyhow` does.
        while let Some(e) = cause {
            let text = e.to_string();
            if !self.to_string().contains(&text) {
                write!(f, "\n  caused by: {text}")?;
            }
            cause = e.source();
        }
        Ok(())
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
