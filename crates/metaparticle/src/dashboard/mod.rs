//! The dashboard: a live page of a running app's topology, served on loopback.
//!
//! `cargo run --example NAME -- dashboard` (or `metaparticle dashboard APP`) serves a page that
//! draws the app as a graph: each service with its pattern, its nodes and their replicas, and
//! for every replica its health, state, restarts, requests per second, p50/p99 latency and
//! errors, refreshed every second. A replica links to its recent log lines, and a trace id in a
//! log line to every line of that request, in every process.
//!
//! The page is one hand-written HTML file with its CSS, JavaScript and SVG drawing inside,
//! embedded in the binary: nothing is fetched from anywhere else at run time. What it shows
//! comes from the same places as `status` and `logs`: the app's record, its runner (the local
//! supervisor's status and log, or the Docker engine) and every node's `/healthz` and `/metrics`.
//!
//! | file | what |
//! |---|---|
//! | `runtime.rs` | what the app's runner knows: replicas' addresses, states, restarts, logs |
//! | `scrape.rs` | a node's `/metrics`, and rates and quantiles between two readings |
//! | `view.rs` | the snapshot the page draws |
//! | `server.rs` | the HTTP side: the page (`page.html`), `/api/state`, `/api/logs` |

mod runtime;
mod scrape;
mod server;
mod view;

use std::net::SocketAddr;

/// Where the dashboard listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3030";

/// Why the dashboard cannot be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DashboardError {
    /// No app of that name is deployed from this machine.
    #[error("app '{app}' is not running (no record of it in {home}); deploy it first")]
    NotRunning {
        /// The app.
        app: String,
        /// The `METAPARTICLE_HOME` searched.
        home: String,
    },
    /// The address is not a loopback address: the page shows logs and the app's inner addresses.
    #[error(
        "the dashboard listens only on loopback (it shows the app's logs and inner addresses), not on \
         {listen}; use 127.0.0.1:PORT and reach it from elsewhere through an SSH tunnel"
    )]
    NotLoopback {
        /// The address asked for.
        listen: SocketAddr,
    },
    /// The address could not be bound.
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        /// The address.
        listen: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The app's record could not be read.
    #[error(transparent)]
    Record(#[from] crate::deployments::RecordError),
    /// The app runs on a runner the dashboard cannot ask.
    #[error(
        "app '{app}' runs on the {runner} runner; the dashboard shows apps on the local and Docker runners"
    )]
    Unsupported {
        /// The app.
        app: String,
        /// Its runner.
        runner: String,
    },
    /// The app runs on Docker and this build has no Docker client.
    #[error(
        "app '{app}' runs on Docker, and this program was built without the Docker client; run the \
         app's own program (`cargo run --example NAME -- dashboard`) instead"
    )]
    NeedsDocker {
        /// The app.
        app: String,
    },
    /// The runner could not be asked about the app.
    #[error("cannot ask the runner of app '{app}' about it: {detail}")]
    Runner {
        /// The app.
        app: String,
        /// What went wrong.
        detail: String,
    },
}

impl DashboardError {
    #[cfg_attr(not(feature = "docker"), allow(dead_code))]
    fn runner(app: &str, detail: impl std::fmt::Display) -> Self {
        DashboardError::Runner { app: app.to_string(), detail: detail.to_string() }
    }
}

/// Serves the dashboard of app `app` on `listen` (a loopback address; port 0 picks a free
/// port) until Ctrl-C, after printing where: `dashboard of app 'APP': http://ADDRESS/`.
pub async fn serve(app: &str, listen: SocketAddr) -> Result<(), DashboardError> {
    if !listen.ip().is_loopback() {
        return Err(DashboardError::NotLoopback { listen });
    }
    if crate::deployments::Deployment::load(app)?.is_none() {
        return Err(DashboardError::NotRunning {
            app: app.to_string(),
            home: crate::deployments::home().display().to_string(),
        });
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DashboardError::Bind { listen, source })?;
    let bound = listener.local_addr().map_err(|source| DashboardError::Bind { listen, source })?;
    println!("dashboard of app '{app}': http://{bound}/ (Ctrl-C stops it)");
    tokio::select! {
        () = server::run(listener, app.to_string()) => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
