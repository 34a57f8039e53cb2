//! The Kubernetes runner: the same plan, deployed onto a cluster as typed objects.
//!
//! ```console
//! $ cargo run --example server3 -- --runner kubernetes manifests --image registry.example/server3:v1
//! $ DOCKER_REGISTRY=registry.example cargo run --example server3 -- --runner kubernetes up --image registry.example/server3:v1
//! $ cargo run --example server3 -- --runner kubernetes delete
//! ```
//!
//! - [`manifests`](self::manifests) turns a plan into objects (pure; which kind for which node and why is
//!   documented there). `manifests` prints them and changes nothing; it needs no cluster.
//! - [`cluster`] finds the kubeconfig's namespace and proves the API server answers, quickly.
//! - [`apply`] applies them with server-side apply, prunes what the plan no longer has, and
//!   deletes everything by label.
//! - [`rollout`] waits for the rollout and prints how to reach exposed services.
//!
//! Every pod runs the program's own image: `--image` names one already pushed, else the Docker
//! runner's builder makes it (FROM scratch, tagged by content) and pushes it to `DOCKER_REGISTRY`.
//! [`resolve_image`] decides which; everything downstream takes an image reference.

pub(crate) mod apply;
pub(crate) mod cluster;
pub(crate) mod manifests;
pub(crate) mod names;
pub(crate) mod rollout;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Api, ListParams};
use kube::ResourceExt;

use crate::error::{Error, Result};
use crate::model::Plan;
use crate::runner::random_secret;
use crate::runner::Deploy;
pub(crate) use manifests::{generate, ExposeAs, Resources, Settings};

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
}

/// The image `up` deploys. THE SEAM for the image builder: today it is `--image`; when the
/// builder lands, the `DOCKER_REGISTRY`-only arm builds this program's image, pushes it there,
/// and returns its content-tagged reference.
///
/// Refuses without a registry: a cluster can only pull from one, and this machine's local
/// images are invisible to it.
pub(crate) fn resolve_image(app: &str, options: &Options) -> Result<ImageSource> {
    match (&options.image, &options.registry) {
        (Some(image), _) => Ok(ImageSource::Given(image.clone())),
        (None, None) => Err(Error::Runner(format!(
            "deploying '{app}' to Kubernetes needs an image registry the cluster can pull from: \
             set DOCKER_REGISTRY (e.g. DOCKER_REGISTRY=docker.io/<you>), or pass --image <ref> \
             for an image you already pushed or loaded into the cluster"
        ))),
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
        ImageSource::BuildAndPush => Err(Error::Runner(format!(
            "building '{app}' needs the `docker` feature of metaparticle; pass --image <ref> instead"
        ))),
    }
}

/// Refuses a storage backend that cannot work across pods: the file backend locks a file on
/// one machine's disk, and pods on different nodes (or restarted ones) do not share it.
/// Only plans that keep state are affected.
pub(crate) fn check_storage(storage: &str, plan: &Plan) -> Result<()> {
    let pods = plan.process_count();
    if storage == "file" && pods > 1 && plan.uses_state() {
        return Err(Error::Runner(format!(
            "--storage file cannot be used on Kubernetes with {pods} pods: each pod has its own disk, \
             so replicas would each keep their own state and lose it on restart; use --storage redis \
             (with REDIS_HOST pointing at a Redis the pods can reach)"
        )));
    }
    Ok(())
}

fn settings(
    deploy: &Deploy,
    options: &Options,
    namespace: String,
    image: String,
    secret: String,
) -> Settings {
    Settings {
        app: deploy.app.clone(),
        namespace,
        image,
        port: deploy.port,
        expose_as: options.expose_as,
        resources: options.resources.clone(),
        secret,
        cluster_domain: options.cluster_domain.clone(),
    }
}

fn manifest_error(e: manifests::ManifestError) -> Error {
    Error::Runner(e.to_string())
}

/// Prints every object of the app as YAML and changes nothing. Needs no cluster: the namespace
/// comes from `--namespace` or the kubeconfig file.
pub(crate) fn print_manifests(deploy: &Deploy, plan: &Plan, options: &Options) -> Result<()> {
    let namespace = cluster::namespace(options.namespace.as_deref())?;
    let image = match &options.image {
        Some(image) => image.clone(),
        None => {
            let placeholder =
                format!("{PLACEHOLDER_REGISTRY}/{}:unbuilt", names::label_value(&deploy.app).to_lowercase());
            eprintln!("note: no --image given; the manifests name the placeholder {placeholder}");
            placeholder
        }
    };
    let m = generate(plan, &settings(deploy, options, namespace, image, random_secret()))
        .map_err(manifest_error)?;
    let yaml = m.to_yaml().map_err(|e| Error::Runner(format!("writing YAML: {e}")))?;
    println!(
        "# The objects of app '{}': nodes {}, pods {}.",
        deploy.app,
        plan.nodes.len(),
        plan.process_count()
    );
    println!("# The Secret holds a fresh random value each time this is printed: treat this output as");
    println!("# secret, and expect re-applying it to restart every pod (they all switch to the new value).");
    print!("{yaml}");
    Ok(())
}

/// Deploys (or updates in place) the app on the cluster and waits for it to roll out.
pub(crate) async fn up(deploy: &Deploy, plan: &Plan, options: &Options) -> Result<()> {
    let started = Instant::now();
    let source = resolve_image(&deploy.app, options)?;
    let namespace = cluster::namespace(options.namespace.as_deref())?;
    // Reach the cluster before building and pushing an image it would never run.
    let client = cluster::connect().await?;
    let image = image_reference(&deploy.app, source).await?;
    // Bad flags are reported before any network call.
    generate(plan, &settings(deploy, options, namespace.clone(), image.clone(), String::new()))
        .map_err(manifest_error)?;
    let secret = match apply::existing_secret(&client, &namespace, &deploy.app).await? {
        Some(secret) => secret,
        None => random_secret(),
    };
    let m = generate(plan, &settings(deploy, options, namespace.clone(), image.clone(), secret))
        .map_err(manifest_error)?;
    eprintln!("applying app '{}' to namespace '{namespace}' (image {image})", deploy.app);
    let applied = apply::apply_all(&client, &namespace, &deploy.app, &m).await?;
    let pruned = apply::prune(&client, &namespace, &deploy.app, &m).await?;
    eprintln!(
        "applied {applied} objects{}",
        if pruned.is_empty() {
            String::new()
        } else {
            format!("; removed {} no longer in the plan: {}", pruned.len(), pruned.join(", "))
        }
    );
    rollout::wait(&client, &namespace, &deploy.app, &m, options.rollout_timeout).await?;
    println!(
        "deployed app '{}' (kubernetes runner, namespace '{namespace}'): {} pods, ready in {:.0}s",
        deploy.app,
        plan.process_count(),
        started.elapsed().as_secs_f64()
    );
    let exposed: Vec<(String, String)> =
        plan.exposed().map(|n| (n.service.clone(), names::service_name(&n.name))).collect();
    rollout::print_endpoints(&client, &namespace, &m, &exposed, options.expose_as, deploy.port).await;
    println!(
        "status:     {inv} --runner kubernetes status\ntear down:  {inv} --runner kubernetes delete",
        inv = deploy.invocation
    );
    Ok(())
}

/// Deletes every object labelled with the app.
pub(crate) async fn delete(app: &str, options: &Options) -> Result<()> {
    let namespace = cluster::namespace(options.namespace.as_deref())?;
    let client = cluster::connect().await?;
    let deleted = apply::delete_all(&client, &namespace, app).await?;
    if deleted.is_empty() {
        println!("app '{app}' has no objects in namespace '{namespace}'; nothing to delete");
    } else {
        println!("deleted app '{app}' from namespace '{namespace}': {}", deleted.join(", "));
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
        return Err(Error::Runner(format!("app '{app}' has no workloads in namespace '{namespace}'")));
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
    use crate::{service, spread};
    use serde_json::Value;

    fn options(image: Option<&str>, registry: Option<&str>) -> Options {
        Options {
            namespace: Some("ns".into()),
            image: image.map(Into::into),
            registry: registry.map(Into::into),
            expose_as: ExposeAs::LoadBalancer,
            resources: Resources::default(),
            cluster_domain: "cluster.local".into(),
            rollout_timeout: Duration::from_secs(1),
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

    #[test]
    fn file_storage_is_refused_for_state_kept_by_more_than_one_pod() {
        let counter = crate::stateful(|_: Value, count: &mut u64| {
            *count += 1;
            *count
        });
        let (plan, _) = crate::model::compile(&[service("s", spread(3, counter))]).unwrap();
        let err = check_storage("file", &plan).unwrap_err().to_string();
        assert!(err.contains("--storage redis"), "{err}");
        assert!(check_storage("redis", &plan).is_ok());
        let (stateless, _) = crate::model::compile(&[service("s", spread(3, |r: Value| r))]).unwrap();
        assert!(check_storage("file", &stateless).is_ok(), "no state, nothing to lose");
    }
}
