//! What can go wrong deploying, inspecting or tearing down an app with the local runner.
//!
//! Every message says what happened and what to do next, because it is what `main` prints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::runner::DeployError;
use crate::storage::StorageError;

/// An error of the local runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// The store the app keeps its state in cannot be reached.
    #[error("{source}; nothing was deployed")]
    StorageUnreachable {
        /// What the store said.
        #[source]
        source: StorageError,
    },
    /// The supervisor could not start the app and said why.
    #[error("{0}")]
    SupervisorFailed(String),
    /// A rollout's new version did not become healthy; the version running before keeps serving.
    #[error("{source}\nthe new version was not deployed: version {running} keeps serving")]
    RolloutFailed {
        /// The version still serving.
        running: String,
        /// Why the new version failed.
        #[source]
        source: Box<LocalError>,
    },
    /// A rescale in place did not finish; the version runs as it did before.
    #[error("{source}\nthe app was not rescaled: version {version} keeps serving with the replicas it had")]
    RescaleFailed {
        /// The version running.
        version: String,
        /// Why the rescale failed.
        #[source]
        source: Box<LocalError>,
    },
    /// `rollback` with no earlier version on record.
    #[error("app '{app}' has no previous version to roll back to (it has not been redeployed since it was first deployed)")]
    NoPrevious {
        /// The app.
        app: String,
    },
    /// The build `rollback` returns to is no longer on disk.
    #[error("the build of version {version} is missing from {}; deploy it again with up", dir.display())]
    PreviousBuildMissing {
        /// The version.
        version: String,
        /// Where it was kept.
        dir: PathBuf,
    },
    /// The supervisor ended before it said whether the app started.
    #[error("the supervisor exited before the app was ready; see {}", log.display())]
    SupervisorExited {
        /// The supervisor's own log.
        log: PathBuf,
    },
    /// The app did not become ready in time.
    #[error("the app did not become ready within {}s", after.as_secs())]
    NotReady {
        /// How long `up` waited.
        after: Duration,
    },
    /// The supervisor reported ready but its record is missing.
    #[error("the supervisor reported ready but wrote no record of app '{app}'")]
    NoRecord {
        /// The app.
        app: String,
    },
    /// A port of the app stayed taken after its processes were stopped.
    #[error("app '{app}' was stopped but {address} is still in use by another process")]
    PortStillInUse {
        /// The app.
        app: String,
        /// The address still taken.
        address: String,
    },
    /// A port the app must listen on is taken.
    #[error("port {} on {} is already in use; stop what uses it or deploy with --port <another>", address.port(), address.ip())]
    PortTaken {
        /// The address that could not be bound.
        address: SocketAddr,
    },
    /// The supervisor was started with an order it cannot read.
    #[error("{var} is malformed: {source}")]
    BadOrder {
        /// The environment variable.
        var: &'static str,
        /// Why it cannot be read.
        #[source]
        source: serde_json::Error,
    },
    /// A replica keeps exiting before it ever answers `/healthz`: a cause that will not change by
    /// waiting (a corrupt store, a bad environment, a crash at start).
    #[error(
        "replica '{replica}' cannot start: it exited {exits} times before answering /healthz \
         (last exit: {last_exit}); its last log lines:\n{tail}"
    )]
    CannotStart {
        /// The replica (`node-i`).
        replica: String,
        /// How many times it exited.
        exits: u32,
        /// How its last process ended.
        last_exit: String,
        /// Its last log lines.
        tail: String,
    },
    /// A replica runs but does not answer `/healthz` in time.
    #[error(
        "replica '{replica}' did not become healthy within {}s (state: {state}, last exit: {last_exit}); \
         its last log lines:\n{tail}",
        after.as_secs()
    )]
    NeverHealthy {
        /// The replica (`node-i`).
        replica: String,
        /// How long `up` waited.
        after: Duration,
        /// Its state.
        state: String,
        /// How its last process ended, if it did.
        last_exit: String,
        /// Its last log lines.
        tail: String,
    },
    /// A reason every runner shares (a port taken, the record, the deploy lock, ...).
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// The program failed to launch as the supervisor, or a node's launch contract is wrong.
    #[error(transparent)]
    Launch(#[from] crate::plane::launch_error::LaunchError),
}

impl From<crate::deployments::RecordError> for LocalError {
    fn from(e: crate::deployments::RecordError) -> Self {
        LocalError::Deploy(e.into())
    }
}

impl LocalError {
    /// An I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LocalError::Deploy(DeployError::Io { context: context.into(), source })
    }
}
