//! [`DeployError`]: what can go wrong for any runner, before or around its own engine.

use std::net::SocketAddr;

use crate::deployments::RecordError;
use crate::storage::StorageError;

/// A deploy, teardown or inspection failed for a reason every runner shares.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// An exposed service's port is held by something else on this machine.
    #[error(
        "cannot expose '{service}': port {} on {} is already in use; stop what uses it or deploy with --port <another>",
        address.port(),
        address.ip()
    )]
    PortTaken {
        /// The service that would listen there.
        service: String,
        /// The address asked for.
        address: SocketAddr,
    },
    /// The app is not deployed (by this runner).
    #[error("app '{0}' is not running")]
    NotRunning(String),
    /// The app name cannot name processes, containers or objects.
    #[error("app name '{0}' must be 1-40 characters of letters, digits, '-' and '_'; choose one with --app")]
    BadAppName(String),
    /// The app runs on another runner; moving it would orphan what that runner started.
    #[error("app '{app}' is running on the {runner} runner; delete it first (`{invocation} delete`), then deploy it here")]
    OtherRunner {
        /// The app.
        app: String,
        /// The runner its record names.
        runner: String,
        /// How the user runs the program.
        invocation: String,
    },
    /// The store the app needs cannot be reached; nothing was deployed.
    #[error("{0}; nothing was deployed")]
    StoreUnreachable(#[source] StorageError),
    /// The user stopped the deploy; what was started was removed.
    #[error("interrupted; removed what was started")]
    Interrupted,
    /// The app's record could not be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// An operating-system operation failed; `context` says which and on what.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
