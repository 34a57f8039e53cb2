//! [`Error`]: what a metaparticle program's `main` returns, wrapping each subsystem's own error.
//!
//! Each subsystem says what went wrong in its own enum ([`PlanError`], [`StorageError`],
//! [`LaunchError`], [`AuthError`], each runner's), with the cause kept as its `source`; this type
//! only gathers them so that `main` can return one.

use crate::model::auth::AuthError;
use crate::model::plan::PlanError;
use crate::plane::launch_error::LaunchError;
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
    /// A deploy, teardown or inspection failed for a reason every runner shares.
    #[error(transparent)]
    Deploy(#[from] crate::runner::DeployError),
    /// An app's record could not be read or written.
    #[error(transparent)]
    Record(#[from] crate::deployments::RecordError),
    /// The Docker runner could not do what was asked.
    #[cfg(feature = "docker")]
    #[error(transparent)]
    Docker(#[from] crate::runner::docker::DockerError),
    /// The local runner could not do what was asked.
    #[error(transparent)]
    Local(#[from] crate::runner::local::LocalError),
    /// The storage backend is misconfigured or unreachable.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The Kubernetes runner could not do what was asked; the message says why and what to do.
    #[cfg(feature = "kubernetes")]
    #[error(transparent)]
    Kubernetes(#[from] crate::runner::kubernetes::KubernetesError),
    /// The dashboard could not be served.
    #[error(transparent)]
    Dashboard(#[from] crate::dashboard::DashboardError),
    /// The app is not deployed.
    #[error("app '{0}' is not running")]
    NotRunning(String),
    /// The command line asks for something this runner does not do; the message says what to do.
    #[error("{0}")]
    Usage(String),
    /// The program was built without the cargo feature a command needs.
    #[error(
        "this program was built without the `{feature}` feature of metaparticle; enable it to use {wanted}"
    )]
    FeatureMissing {
        /// The cargo feature of `metaparticle`.
        feature: &'static str,
        /// What needed it.
        wanted: &'static str,
    },
}

// `main` returning `Err` prints `Debug`; make that the message a person needs, not a struct dump.
// Each message already says its cause in words; the typed causes stay reachable through `source()`.
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
