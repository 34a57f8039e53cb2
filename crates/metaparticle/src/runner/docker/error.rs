//! [`DockerError`]: what can go wrong on the Docker runner, each with what to do about it.

use bollard::errors::Error as EngineError;

use crate::runner::DeployError;

/// The Docker runner could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// No engine can be reached; `reason` names the usual cause and what to do.
    #[error("{reason}")]
    NoEngine {
        /// What is wrong and what to do.
        reason: String,
    },
    /// The engine refused or failed a request.
    #[error("{context}: {}", describe(source))]
    Engine {
        /// What was being done.
        context: String,
        /// What the engine said.
        #[source]
        source: EngineError,
    },
    /// The program's image could not be assembled from its binary.
    #[error("{0}")]
    Image(String),
    /// The engine failed to build the image.
    #[error("building image {tag} failed: {message}")]
    Build {
        /// The image.
        tag: String,
        /// What the build said.
        message: String,
    },
    /// The registry refused the image.
    #[error("pushing {image} failed; the registry said: {message}")]
    Push {
        /// The reference pushed.
        image: String,
        /// What the registry said.
        message: String,
    },
    /// Pushing needs a registry.
    #[error("publishing '{app}' needs {variable} set")]
    NoRegistry {
        /// The app.
        app: String,
        /// The variable that names the registry.
        variable: &'static str,
    },
    /// A container name would be too long for peers to resolve it.
    #[error("container name '{name}' is longer than {limit} characters, so peers could not resolve it; deploy with a shorter --app")]
    NameTooLong {
        /// The name.
        name: String,
        /// The longest DNS label.
        limit: usize,
    },
    /// A container did not become healthy, or stopped.
    #[error("{0}")]
    Unhealthy(String),
    /// `--port 0` asks for ports the engine would choose, after the record and probes are decided.
    #[error("--port 0 (any free port) is for the local runner; the docker runner publishes on a port you choose: deploy with --port <port>")]
    AnyPort,
    /// A Redis URL containers cannot follow: a Unix socket on the host is not inside them.
    #[error(
        "--storage redis at {0} cannot work with the docker runner: containers reach Redis over TCP (a redis:// address on the app's network, see docs/docker.md)"
    )]
    StorageNotTcp(String),
    /// `--attach` is for the local runner.
    #[error(
        "--attach is not supported by the docker runner; deploy, then follow the logs with `logs --follow`"
    )]
    AttachUnsupported,
    /// A rollout's new generation did not become healthy; the running one keeps serving.
    #[error("{source}\nthe new version was not deployed: version {running} keeps serving")]
    RolloutFailed {
        /// The version still serving.
        running: String,
        /// Why the new generation failed.
        #[source]
        source: Box<DockerError>,
    },
    /// Rescaling the running generation in place failed before any running container took the
    /// new address book; what it started was removed.
    #[error("{source}\nthe rescale was undone: version {version} runs on as before")]
    RescaleFailed {
        /// The version running.
        version: String,
        /// Why the added replicas failed.
        #[source]
        source: Box<DockerError>,
    },
    /// `rollback` with no earlier release on record.
    #[error("app '{app}' has no previous version to roll back to (it has not been redeployed with another build or topology since it was first deployed)")]
    NoPrevious {
        /// The app.
        app: String,
    },
    /// The image of the release `rollback` returns to is gone from the engine.
    #[error("the image of version {version} ({image}) is no longer on the Docker engine, so there is nothing to roll back to; check out that build and run `{invocation} up`")]
    PreviousImageMissing {
        /// The version.
        version: String,
        /// Its image tag.
        image: String,
        /// How the user runs the program.
        invocation: String,
    },
    /// A deploy failed, and removing what it started failed too.
    #[error("{failure}\n(and cleaning up failed too: {cleanup}; run `{invocation} delete`)")]
    CleanupFailed {
        /// Why the deploy failed.
        failure: Box<DockerError>,
        /// Why the cleanup failed.
        cleanup: Box<DockerError>,
        /// How the user runs the program.
        invocation: String,
    },
    /// A reason every runner shares.
    #[error(transparent)]
    Deploy(#[from] DeployError),
}

impl From<crate::deployments::RecordError> for DockerError {
    fn from(e: crate::deployments::RecordError) -> Self {
        DockerError::Deploy(e.into())
    }
}

impl DockerError {
    /// An I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DockerError::Deploy(DeployError::Io { context: context.into(), source })
    }
}

/// The engine's answer in the words a person needs (bollard's own `Display` adds HTTP noise).
fn describe(error: &EngineError) -> String {
    match error {
        EngineError::DockerResponseServerError { status_code, message } => {
            format!("the Docker engine refused ({status_code}): {}", message.trim())
        }
        EngineError::DockerStreamError { error } => error.trim().to_string(),
        other => other.to_string(),
    }
}
