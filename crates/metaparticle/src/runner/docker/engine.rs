//! Reaching the Docker engine, and turning what it answers into errors a person can act on.
//!
//! bollard's own errors say what failed in HTTP terms ("error trying to connect: No such file or
//! directory"); a user needs to know *which* engine, *what* to do. So before the first request we
//! check the socket ourselves and name the two usual causes: no engine, no permission.

use std::time::Duration;

use bollard::errors::Error as EngineError;
use bollard::Docker;

use super::error::DockerError;

/// Where the engine is when `DOCKER_HOST` does not say.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// How long the first exchange with the engine may take before we call it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the engine `DOCKER_HOST` names (default: the local socket) and agrees on an API
/// version both sides speak (engines as old as 20.10 answer only up to API 1.41).
pub(crate) async fn connect() -> Result<Docker, DockerError> {
    let host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
    let socket = match host.as_deref() {
        None => Some(DEFAULT_SOCKET.to_string()),
        Some(h) => h.strip_prefix("unix://").map(str::to_string),
    };
    let shown = host.clone().unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}"));
    if let Some(path) = &socket {
        check_socket(path)?;
    }
    let no_engine = |reason: String| DockerError::NoEngine { reason };
    let docker = Docker::connect_with_defaults()
        .map_err(|e| no_engine(format!("cannot use the Docker engine at {shown}: {e}")))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => Err(no_engine(format!("no Docker engine answers at {shown}: {e}"))),
        Err(_) => Err(no_engine(format!(
            "no Docker engine answers at {shown} within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// Names the usual reasons a local engine cannot be reached.
fn check_socket(path: &str) -> Result<(), DockerError> {
    use std::io::ErrorKind;
    let reason = match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => format!(
            "no Docker engine: {path} does not exist; install and start Docker, or point DOCKER_HOST at an engine"
        ),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => format!(
            "no permission to use the Docker engine at {path}; add your user to the 'docker' group and log in again, or run as root"
        ),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => format!(
            "no Docker engine: {path} exists but nothing listens on it; start Docker (e.g. `systemctl start docker`)"
        ),
        Err(e) => format!("cannot reach the Docker engine at {path}: {e}"),
    };
    Err(DockerError::NoEngine { reason })
}

/// An engine error, with what was being done.
pub(crate) fn failed(context: impl std::fmt::Display, source: EngineError) -> DockerError {
    DockerError::Engine { context: context.to_string(), source }
}

/// Whether the engine said the object does not exist (a 404), which teardown treats as done.
pub(crate) fn is_not_found(error: &EngineError) -> bool {
    matches!(error, EngineError::DockerResponseServerError { status_code: 404, .. })
}

/// Whether the engine refused to publish a port because something holds it.
pub(crate) fn is_port_taken(error: &EngineError) -> bool {
    match error {
        EngineError::DockerResponseServerError { message, .. } => {
            message.contains("port is already allocated") || message.contains("address already in use")
        }
        _ => false,
    }
}
