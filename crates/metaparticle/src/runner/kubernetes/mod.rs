//! The Kubernetes runner: the same plan, deployed onto a cluster as typed objects.
//!
//! ```console
//! $ cargo run --example server3 -- --runner kubernetes manifests --image registry.example/server3:v1
//! $ DOCKER_REGISTRY=registry.example cargo run --example server3 -- --runner kubernetes up
//! $ cargo run --example server3 -- --runner kubernetes delete
//! ```
//!
//! - [`manifests`] turns a plan into objects (pure; which kind for which node and why is
//!   documented there). `manifests` prints them and changes nothing; it needs no cluster, and
//!   prints the same YAML every time for the same build and flags.
//! - [`cluster`] finds the kubeconfig's namespace and proves the API server answers, quickly.
//! - [`apply`] creates the app's Secret when absent, applies the objects with server-side apply,
//!   prunes what the plan no longer has, and deletes everything by label.
//! - [`history`] keeps the release `up` applies and the one it replaced in a ConfigMap of the
//!   app; `rollback` re-applies the previous one, whole, through the same rolling update (why
//!   this and not `kubectl rollout undo` is explained there).
//! - [`rollout`] waits for the rollout and prints how to reach exposed services.
//! - [`error`] says what went wrong and what to do.
//!
//! Every pod runs the program's own image: `--image` names one already pushed, else the Docker
//! runner's builder makes it (FROM scratch, tagged by content) and pushes it to `DOCKER_REGISTRY`.
//! [`resolve_image`] decides which; everything downstream takes an image reference.

pub(crate) mod apply;
pub(crate) mod cluster;
pub(crate) mod error;
pub(crate) mod history;
pub(crate) mod manifests;
pub(crate) mod names;
pub(crate) mod rollout;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Api, ListParams};
use kube::ResourceExt;

use crate::model::Plan;
use crate::runner::Deploy;
use crate::storage::StorageConfig;
pub(crate) use error::KubernetesError;
use error::Result;
pub(crate) use manifests::{generate, ExposeAs, PodStorage, Resources, Settings};

/// The image `manifests` names when no `--image` is given: an unresolvable host (`.invalid` is
/// reserved by RFC 2606), so a manifest applied by mistake fails visibly instead of pulling
/// something else.
pub(crate) const PLACEHOLDER_REGISTRY: &str = "image.invalid";

/// The Kubernetes runner's settings, from the command line.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// The namespace (default: the kubeconfig's).
    pub namespace: Option<String>,
    /// An image already pushed (or loaded into the cluster) to run, instead of building one.
    pub image: Option<String>,
    /// Where images are pushed (`DOCKER_REGISTRY`).
    pub registry: Option<String>,
    /// How exposed services are published.
    pub expose_as: ExposeAs,
    /// Container requests and limits.
    pub resources: Resources,
    /// The cluster's DNS domain.
    pub cluster_domain: String,
    /// How long `up` waits for the rollout.
    pub rollout_timeout: Duration,
    /// The size of the state volume (`--storage file`).
    pub volume_size: String,
}

/// The image `up` deploys: `--image` as given, else this program's image, built and pushed to
/// `DOCKER_REGISTRY`.
///
/// Refuses without a registry: a cluster can only pull from one, and this machine's local
/// images are invisible to it.
pub(crate) fn resolve_image(app: &str, options: &Options) -> Result<ImageSource> {
    match (&options.image, &options.registry) {
        (Some(image), _) => Ok(ImageSource::Given(image.clone())),
        (None, None) => Err(KubernetesError::NoRegistry { app: app.to_string() }),
        (None, Some(_)) => Ok(ImageSource::BuildAndPush),
    }
}

/// Where the image of a Kubernetes deployment comes from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ImageSource {
    /// `--image`: already pushed or loaded into the cluster.
    Given(String),
    /// Built from this program as the Docker runner builds it, and pushed to `DOCKER_REGISTRY`.
    BuildAndPush,
}

/// The image reference to deploy, building and pushing it first when that is how it is made.
async fn image_reference(app: &str, source: ImageSource) -> Result<String> {
    match source {
        ImageSource::Given(image) => Ok(image),
        #[cfg(feature = "docker")]
        ImageSource::BuildAndPush => Ok(crate::runner::docker::publish_image(app).await?),
        #[cfg(not(feature = "docker"))]
        ImageSource::BuildAndPush => Err(KubernetesError::NoImageBuilder { app: app.to_string() }),
    }
}

/// The objects' settings for this deploy.
fn settings(deploy: &Deploy, options: &Options, namespace: Option<String>, image: String) -> Settings {
    Settings {
        app: deploy.app.clone(),
        namespace,
        image,
        port: deploy.port,
        expose_as: options.expose_as,
        resources: options.resources.clone(),
        cluster_domain: options.cluster_domain.clone(),
        storage: match &deploy.storage {
            StorageConfig::File(_) => PodStorage::File { size: options.volume_size.clone() },
            StorageConfig::Redis(url) => PodStorage::Redis(url.clone()),
        },
    }
}

/// Prints every object of the app as YAML and changes nothing. Needs no cluster and no
/// kubeconfig: the namespace comes from `--namespace`, else the kubeconfig's context if there is
/// one, else it is left out (for `kubectl apply -n`). The same build and flags print the same YAML.
pub(crate) fn print_manifests(deploy: &Deploy, plan: &Plan, options: &Options) -> Result<()> {
    let namespace = cluster::manifest_namespace(options.namespace.as_deref());
    let image = match &options.image {
        Some(image) => image.clone(),
        None => {
            let placeholder =
                format!("{PLACEHOLDER_REGISTRY}/{}:unbuilt", names::label_value(&deploy.app).to_lowercase());
            eprintln!(
                "note: no --image given; the manifests name the placeholder {placeholder} \
                 (`image` prints this program's image reference)"
            );
            placeholder
        }
    };
    let m = generate(plan, &settings(deploy, options, namespace.clone(), image))?;
    let yaml = m.to_yaml().map_err(KubernetesError::Yaml)?;
    println!(
        "# The objects of app '{}': nodes {}, pods {}{}.",
        deploy.app,
        plan.nodes.len(),
        plan.process_count(),
        match &namespace {
            Some(ns) => format!(", namespace '{ns}'"),
            None => ", no namespace (kubectl apply -n <namespace>)".to_string(),
        }
    );
    let secret = names::secret_name(&deploy.app);
    println!(
        "# The pods read the Secret '{secret}' (keys: {}), which `up` creates. To apply these by hand",
        m.secret_keys.join(", ")
    );
    println!(
        "# or through GitOps, create it once: kubectl create secret generic {secret} \
         --from-literal={}=\"$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n')\"{}",
        manifests::SECRET_KEY,
        if m.secret_keys.contains(&manifests::STORAGE_PASSWORD_KEY) {
            format!(" --from-literal={}=<the Redis password>", manifests::STORAGE_PASSWORD_KEY)
        } else {
            String::new()
        }
    );
    print!("{yaml}");
    Ok(())
}

/// Deploys (or updates in place) the app on the cluster and waits for it to roll out.
pub(crate) async fn up(deploy: &Deploy, plan: &Plan, options: &Options) -> Result<()> {
    let started = Instant::now();
    let source = resolve_image(&deploy.app, options)?;
    let namespace = cluster::namespace(options.namespace.as_deref())?;
    // Bad flags and storage that cannot work are reported before any network call.
    generate(plan, &settings(deploy, options, Some(namespace.clone()), String::new()))
        .map_err(KubernetesError::from)?;
    // Reach the cluster before building and pushing an image it would never run.
    let client = cluster::connect().await?;
    let image = image_reference(&deploy.app, source).await?;
    let settings = settings(deploy, options, Some(namespace.clone()), image.clone());
    let m = generate(plan, &settings).map_err(KubernetesError::from)?;
    eprintln!("applying app '{}' to namespace '{namespace}' (image {image})", deploy.app);
    let password = manifests::storage_password(&settings)
        .filter(|_| m.secret_keys.contains(&manifests::STORAGE_PASSWORD_KEY));
    let history = history::load(&client, &namespace, &deploy.app).await?.unwrap_or_default();
    apply::ensure_secret(&client, &namespace, &deploy.app, &m.secret_keys, password.as_deref()).await?;
    let release = history::Release::of(&image, plan, &m);
    apply_release(&client, &namespace, deploy, options, &m, history.after(release)).await?;
    println!(
        "deployed app '{}' (kubernetes runner, namespace '{namespace}'): {} pods, ready in {:.0}s",
        deploy.app,
        plan.process_count(),
        started.elapsed().as_secs_f64()
    );
    print_endpoints(&client, &namespace, deploy, options, plan, &m).await;
    Ok(())
}

/// Re-applies the release the app ran before its last `up` (as [`history`] kept it: its image,
/// its objects, its replica counts), prunes what that release lacks, and waits for the rolling
/// update as `up` does. A rollback of a rollback goes forward again.
pub(crate) async fn rollback(deploy: &Deploy, options: &Options) -> Result<()> {
    let started = Instant::now();
    let namespace = cluster::namespace(options.namespace.as_deref())?;
    let client = cluster::connect().await?;
    let Some(history) = history::load(&client, &namespace, &deploy.app).await? else {
        if workloads(&client, &namespace, &deploy.app).await?.is_empty() {
            return Err(KubernetesError::NoWorkloads { app: deploy.app.clone(), namespace });
        }
        return Err(KubernetesError::NoPrevious { app: deploy.app.clone(), namespace });
    };
    let Some(previous) = history.previous.clone() else {
        return Err(KubernetesError::NoPrevious { app: deploy.app.clone(), namespace });
    };
    let m = previous.manifests()?;
    // Checked before anything changes: the kept objects' pods need their Secret's keys.
    apply::require_secret(&client, &namespace, &deploy.app, &m.secret_keys).await?;
    println!(
        "app '{}': rolling back from image {} to image {}",
        deploy.app,
        history.current.as_ref().map_or("?", |c| c.image.as_str()),
        previous.image
    );
    apply_release(&client, &namespace, deploy, options, &m, history.after(previous.clone())).await?;
    println!(
        "deployed app '{}' (kubernetes runner, namespace '{namespace}'): {} pods, ready in {:.0}s",
        deploy.app,
        previous.plan.process_count(),
        started.elapsed().as_secs_f64()
    );
    print_endpoints(&client, &namespace, deploy, options, &previous.plan, &m).await;
    Ok(())
}

/// Records `history` (whose current release is `m`), applies `m`, prunes what it lacks, and waits
/// for the rollout. The history is written first: should the apply or the rollout fail halfway,
/// `rollback` still knows the release that ran before, which is where a user then wants to go.
async fn apply_release(
    client: &kube::Client,
    namespace: &str,
    deploy: &Deploy,
    options: &Options,
    m: &manifests::Manifests,
    history: history::History,
) -> Result<()> {
    history::save(client, namespace, &deploy.app, &history).await?;
    let applied = apply::apply_all(client, namespace, &deploy.app, m).await?;
    let pruned = apply::prune(client, namespace, &deploy.app, m).await?;
    eprintln!(
        "applied {applied} objects{}",
        if pruned.is_empty() {
            String::new()
        } else {
            format!("; removed {} no longer in the plan: {}", pruned.len(), pruned.join(", "))
        }
    );
    rollout::wait(client, namespace, &deploy.app, m, options.rollout_timeout).await
}

/// Prints how to reach the exposed services of `plan`, and the next commands.
async fn print_endpoints(
    client: &kube::Client,
    namespace: &str,
    deploy: &Deploy,
    options: &Options,
    plan: &Plan,
    m: &manifests::Manifests,
) {
    let exposed: Vec<(String, String)> =
        plan.exposed().map(|n| (n.service.clone(), names::service_name(&n.name))).collect();
    rollout::print_endpoints(client, namespace, m, &exposed, options.expose_as, deploy.port).await;
    println!(
        "status:     {inv} --runner kubernetes status\ntear down:  {inv} --runner kubernetes delete",
        inv = deploy.invocation
    );
}

/// `Kind/name` of the app's Deployments and StatefulSets.
async fn workloads(client: &kube::Client, namespace: &str, app: &str) -> Result<Vec<String>> {
    let selector = ListParams::default().labels(&names::app_selector(app));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let listing = |doing: &str, e| apply::api_error(doing, namespace, e);
    let ds = deployments.list(&selector).await.map_err(|e| listing("listing Deployments", e))?;
    let ss = stateful_sets.list(&selector).await.map_err(|e| listing("listing StatefulSets", e))?;
    Ok(ds
        .items
        .iter()
        .map(|d| format!("Deployment/{}", d.name_any()))
        .chain(ss.items.iter().map(|s| format!("StatefulSet/{}", s.name_any())))
        .collect())
}

/// Deletes every object labelled with the app; its state volume only with `purge`.
pub(crate) async fn delete(app: &str, options: &Options, purge: bool) -> Result<()> {
    let namespace = cluster::namespace(options.namespace.as_deref())?;
    let client = cluster::connect().await?;
    let deleted = apply::delete_all(&client, &namespace, app).await?;
    let claims =
        if purge { apply::delete_volume_claims(&client, &namespace, app).await? } else { Vec::new() };
    if deleted.is_empty() && claims.is_empty() {
        println!("app '{app}' has no objects in namespace '{namespace}'; nothing to delete");
    } else if !deleted.is_empty() {
        println!("deleted app '{app}' from namespace '{namespace}': {}", deleted.join(", "));
    }
    if !claims.is_empty() {
        println!("purged the state of app '{app}': deleted {}", claims.join(", "));
    } else if !purge {
        let kept = apply::volume_claims(&client, &namespace, app).await?;
        if !kept.is_empty() {
            println!("kept the app's state in {} (delete --purge removes it)", kept.join(", "));
        }
    }
    Ok(())
}

/// Prints each workload of the app and how many of its pods are ready.
pub(crate) async fn status(app: &str, options: &Options) -> Result<()> {
    let namespace = cluster::namespace(options.namespace.as_deref())?;
    let client = cluster::connect().await?;
    let selector = ListParams::default().labels(&names::app_selector(app));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(client, &namespace);
    let listing = |doing: &str, e| apply::api_error(doing, &namespace, e);
    let ds = deployments.list(&selector).await.map_err(|e| listing("listing Deployments", e))?;
    let ss = stateful_sets.list(&selector).await.map_err(|e| listing("listing StatefulSets", e))?;
    if ds.items.is_empty() && ss.items.is_empty() {
        return Err(KubernetesError::NoWorkloads { app: app.to_string(), namespace });
    }
    println!("app '{app}' (kubernetes runner, namespace '{namespace}')");
    println!("{:<44} {:<12} {:<10} READY", "NODE", "KIND", "ROLE");
    let role = |labels: &std::collections::BTreeMap<String, String>| {
        labels.get(names::ROLE_LABEL).cloned().unwrap_or_default()
    };
    for d in &ds.items {
        let want = d.spec.replicas.unwrap_or(1);
        let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        println!("{:<44} {:<12} {:<10} {ready}/{want}", d.name_any(), "Deployment", role(d.labels()));
    }
    for s in &ss.items {
        let want = s.spec.replicas.unwrap_or(1);
        let ready = s.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        println!("{:<44} {:<12} {:<10} {ready}/{want}", s.name_any(), "StatefulSet", role(s.labels()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(image: Option<&str>, registry: Option<&str>) -> Options {
        Options {
            namespace: Some("ns".into()),
            image: image.map(Into::into),
            registry: registry.map(Into::into),
            expose_as: ExposeAs::LoadBalancer,
            resources: Resources::default(),
            cluster_domain: "cluster.local".into(),
            rollout_timeout: Duration::from_secs(1),
            volume_size: "1Gi".into(),
        }
    }

    #[test]
    fn up_without_a_registry_is_refused_naming_docker_registry() {
        let err = resolve_image("app", &options(None, None)).unwrap_err().to_string();
        assert!(err.contains("DOCKER_REGISTRY"), "{err}");
        assert_eq!(
            resolve_image("app", &options(Some("r.example/app:1"), None)).unwrap(),
            ImageSource::Given("r.example/app:1".into())
        );
        assert_eq!(
            resolve_image("app", &options(None, Some("r.example"))).unwrap(),
            ImageSource::BuildAndPush
        );
    }
}
