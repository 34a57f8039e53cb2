//! Finding the cluster: the kubeconfig's namespace, and a client that fails fast.
//!
//! The kubeconfig is read the way `kubectl` reads it (`KUBECONFIG`, else `~/.kube/config`, its
//! current context). Before anything is applied, one cheap request (`GET /version`) proves that
//! the API server answers; it is bounded by [`REACH_TIMEOUT`], so a missing cluster costs seconds,
//! not a TCP timeout of minutes, and the error names the server and context that were tried.

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::error::{KubernetesError, Result};

/// How long the first request to the API server may take before we give up.
pub(crate) const REACH_TIMEOUT: Duration = Duration::from_secs(8);

/// The namespace to use: the flag, else the kubeconfig's current context's namespace, else the
/// namespace Kubernetes itself defaults to for a context without one (`default`, as kubectl does).
/// Reads files only; never contacts a cluster.
pub(crate) fn namespace(flag: Option<&str>) -> Result<String> {
    if let Some(ns) = flag {
        return Ok(ns.to_string());
    }
    let config =
        Kubeconfig::read().map_err(|source| KubernetesError::NoNamespace { source: Box::new(source) })?;
    Ok(context_namespace(&config))
}

/// The namespace `manifests` writes: the flag, else the kubeconfig's context's if there is a
/// kubeconfig, else none (the objects then take the namespace `kubectl apply -n` gives them).
pub(crate) fn manifest_namespace(flag: Option<&str>) -> Option<String> {
    match flag {
        Some(ns) => Some(ns.to_string()),
        None => Kubeconfig::read().ok().map(|config| context_namespace(&config)),
    }
}

/// The current context's namespace, or `default` (as kubectl does for a context without one).
fn context_namespace(config: &Kubeconfig) -> String {
    let current = config.current_context.as_deref().unwrap_or_default();
    let context = config.contexts.iter().find(|c| c.name == current).and_then(|c| c.context.as_ref());
    context.and_then(|c| c.namespace.clone()).unwrap_or_else(|| "default".to_string())
}

/// A client for the kubeconfig's current context, proven to reach its API server.
pub(crate) async fn connect() -> Result<Client> {
    let mut config = Config::from_kubeconfig(&KubeConfigOptions::default())
        .await
        .map_err(|source| KubernetesError::Kubeconfig { source: Box::new(source) })?;
    let server = config.cluster_url.to_string();
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    // Retries of 429/503 are right for a busy server but wrong for one that is not there.
    config.default_retry = false;
    let client = Client::try_from(config)
        .map_err(|source| KubernetesError::Client { server: server.clone(), source: Box::new(source) })?;
    let unreachable = |why: String| KubernetesError::Unreachable { server: server.clone(), why };
    match tokio::time::timeout(REACH_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(unreachable(error_chain(&e))),
        Err(_) => Err(unreachable(format!("no answer within {}s", REACH_TIMEOUT.as_secs()))),
    }
}

/// An error and its causes on one line: kube's own message ("client error (Connect)") alone
/// hides the part a person can act on ("Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}
