//! What can go wrong in the Kubernetes runner, each case with what to do about it.

use super::manifests::ManifestError;

/// An error of the Kubernetes runner. Every message names what was tried and how to go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubernetesError {
    /// The plan and flags cannot become manifests.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// `up` has no image to deploy and nowhere to push one.
    #[error(
        "deploying '{app}' to Kubernetes needs an image registry the cluster can pull from: \
         set DOCKER_REGISTRY (e.g. DOCKER_REGISTRY=docker.io/<you>), or pass --image <ref> \
         for an image you already pushed or loaded into the cluster"
    )]
    NoRegistry {
        /// The app.
        app: String,
    },
    /// Building or pushing the image failed.
    #[cfg(feature = "docker")]
    #[error(transparent)]
    Image(#[from] crate::runner::docker::DockerError),
    /// Building an image needs the Docker runner, which this build left out.
    #[error("building '{app}' needs the `docker` feature of metaparticle; pass --image <ref> instead")]
    NoImageBuilder {
        /// The app.
        app: String,
    },
    /// No namespace flag, and no kubeconfig to take one from.
    #[error("no namespace given and no kubeconfig to take it from ({source}); pass --namespace <ns> or set KUBECONFIG")]
    NoNamespace {
        /// What kube said.
        #[source]
        source: Box<kube::config::KubeconfigError>,
    },
    /// No kubeconfig to read the cluster from.
    #[error(
        "cannot load a kubeconfig ({source}); point KUBECONFIG at your cluster's config (kubectl uses the same)"
    )]
    Kubeconfig {
        /// What kube said.
        #[source]
        source: Box<kube::config::KubeconfigError>,
    },
    /// The kubeconfig names a cluster no client can be built for.
    #[error("cannot build a Kubernetes client for {server}: {source}")]
    Client {
        /// The API server's URL.
        server: String,
        /// What kube said.
        #[source]
        source: Box<kube::Error>,
    },
    /// The API server did not answer.
    #[error(
        "cannot reach the Kubernetes API server at {server}: {why}\n\
         is the cluster running, and is the right context selected? (`kubectl cluster-info` checks the same)"
    )]
    Unreachable {
        /// The API server's URL.
        server: String,
        /// Why, with every cause.
        why: String,
    },
    /// The API server refused or failed a request.
    #[error("{doing} in namespace '{namespace}': {source}{hint}")]
    Api {
        /// What was being done (`applying Service/x`).
        doing: String,
        /// Where.
        namespace: String,
        /// What the server said.
        #[source]
        source: Box<kube::Error>,
        /// What to do about it, when we know (starts with a newline), else empty.
        hint: String,
    },
    /// An object of the same name belongs to something else.
    #[error(
        "{what} already exists in namespace '{namespace}' and belongs to {owner}; refusing to take it over. \
         Deploy into another namespace (--namespace) or rename the service"
    )]
    NotOurs {
        /// `Kind/name`.
        what: String,
        /// Where.
        namespace: String,
        /// `metaparticle app 'x'` or `something else`.
        owner: String,
    },
    /// The rollout did not finish in time.
    #[error(
        "the rollout did not finish within {seconds}s: {pending} not ready{stuck}\n\
         the objects stay applied; inspect with `kubectl -n {namespace} get pods -l {selector}` \
         and `kubectl -n {namespace} describe pod <pod>`"
    )]
    RolloutTimeout {
        /// The timeout.
        seconds: u64,
        /// The workloads not ready, comma-separated.
        pending: String,
        /// ` (pod: reason, ...)` for pods stuck on something a person must fix, else empty.
        stuck: String,
        /// Where.
        namespace: String,
        /// The app's label selector.
        selector: String,
    },
    /// `status` found nothing.
    #[error("app '{app}' has no workloads in namespace '{namespace}'")]
    NoWorkloads {
        /// The app.
        app: String,
        /// Where.
        namespace: String,
    },
    /// `rollback` with no earlier release kept.
    #[error(
        "app '{app}' has no previous version to roll back to in namespace '{namespace}' (`up` has not \
         applied another build or topology since it first deployed it, or deployed it before \
         metaparticle kept a history)"
    )]
    NoPrevious {
        /// The app.
        app: String,
        /// Where.
        namespace: String,
    },
    /// The objects could not be written as YAML.
    #[error("writing the manifests as YAML: {0}")]
    Yaml(#[source] serde_norway::Error),
    /// A command the Kubernetes runner does not offer, and what to use instead.
    #[error("{0}")]
    Unsupported(String),
}

// The causes are boxed: kube's errors are large, and every `Result` of the crate carries this.

/// `Result` with [`KubernetesError`].
pub(crate) type Result<T, E = KubernetesError> = std::result::Result<T, E>;
