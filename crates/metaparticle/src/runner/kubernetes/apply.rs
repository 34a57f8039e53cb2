//! Talking to the cluster: server-side apply, pruning, deleting by label.
//!
//! Server-side apply (field manager `metaparticle`, forced) makes `up` idempotent: the first run
//! creates, every later run updates in place, and "already exists" cannot happen. Objects of the
//! app that the new plan no longer has (a node removed, a subtree reshaped) are pruned after the
//! apply, so the cluster ends up holding exactly what `manifests` prints. An object with the same
//! name that belongs to *another* app (its `metaparticle.io/app` label differs, or it is not
//! ours at all) is never taken over: `up` stops and says so.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::manifests::{Manifests, SECRET_KEY};
use super::names::{self, APP_LABEL, MANAGER};
use crate::error::{Error, Result};

/// A namespaced Kubernetes kind we create.
pub(crate) trait Kind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug
{
}
impl<K> Kind for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug
{
}

/// The secret of an app already deployed in `namespace`, so a re-`up` keeps it (a new secret
/// would roll every pod for nothing).
pub(crate) async fn existing_secret(client: &Client, namespace: &str, app: &str) -> Result<Option<String>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = names::secret_name(app);
    let secret =
        api.get_opt(&name).await.map_err(|e| api_error(&format!("reading Secret/{name}"), namespace, e))?;
    Ok(secret
        .filter(|s| belongs_to(s, app))
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove(SECRET_KEY))
        .and_then(|b| String::from_utf8(b.0).ok())
        .filter(|s| !s.is_empty()))
}

/// Applies every object; returns how many were applied.
pub(crate) async fn apply_all(
    client: &Client,
    namespace: &str,
    app: &str,
    manifests: &Manifests,
) -> Result<usize> {
    let mut applied = 0;
    applied += apply(client, namespace, app, std::slice::from_ref(&manifests.secret)).await?;
    applied += apply(client, namespace, app, &manifests.services).await?;
    applied += apply(client, namespace, app, &manifests.stateful_sets).await?;
    applied += apply(client, namespace, app, &manifests.deployments).await?;
    Ok(applied)
}

async fn apply<K: Kind>(client: &Client, namespace: &str, app: &str, objects: &[K]) -> Result<usize> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(MANAGER).force();
    for object in objects {
        let name = object.name_any();
        let what = format!("{}/{name}", K::kind(&()));
        if let Some(existing) =
            api.get_opt(&name).await.map_err(|e| api_error(&format!("reading {what}"), namespace, e))?
        {
            if !belongs_to(&existing, app) {
                let owner = existing.labels().get(APP_LABEL).cloned();
                return Err(Error::Runner(format!(
                    "{what} already exists in namespace '{namespace}' and belongs to {}; refusing to take it over. \
                     Deploy into another namespace (--namespace) or rename the service",
                    owner.map(|o| format!("metaparticle app '{o}'")).unwrap_or_else(|| "something else".into())
                )));
            }
        }
        api.patch(&name, &params, &Patch::Apply(object))
            .await
            .map_err(|e| api_error(&format!("applying {what}"), namespace, e))?;
    }
    Ok(objects.len())
}

/// Deletes the app's objects that `keep` does not contain; returns `Kind/name` of each.
pub(crate) async fn prune(
    client: &Client,
    namespace: &str,
    app: &str,
    keep: &Manifests,
) -> Result<Vec<String>> {
    delete_except(client, namespace, app, &keep.summary()).await
}

/// Deletes every object labelled with the app; returns `Kind/name` of each.
pub(crate) async fn delete_all(client: &Client, namespace: &str, app: &str) -> Result<Vec<String>> {
    delete_except(client, namespace, app, &[]).await
}

/// Workloads first (their pods stop), then the Services and the Secret they used.
async fn delete_except(client: &Client, namespace: &str, app: &str, keep: &[String]) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    deleted.extend(delete_kind::<Deployment>(client, namespace, app, keep).await?);
    deleted.extend(delete_kind::<StatefulSet>(client, namespace, app, keep).await?);
    deleted.extend(delete_kind::<Service>(client, namespace, app, keep).await?);
    deleted.extend(delete_kind::<Secret>(client, namespace, app, keep).await?);
    Ok(deleted)
}

async fn delete_kind<K: Kind>(
    client: &Client,
    namespace: &str,
    app: &str,
    keep: &[String],
) -> Result<Vec<String>> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let kind = K::kind(&()).to_string();
    let listed = api
        .list(&ListParams::default().labels(&names::app_selector(app)))
        .await
        .map_err(|e| api_error(&format!("listing {kind}s of app '{app}'"), namespace, e))?;
    let mut deleted = Vec::new();
    for object in listed.items {
        let what = format!("{kind}/{}", object.name_any());
        if keep.contains(&what) {
            continue;
        }
        match api.delete(&object.name_any(), &DeleteParams::background()).await {
            Ok(_) => deleted.push(what),
            // Gone already (someone else deleted it): that is what we wanted.
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => return Err(api_error(&format!("deleting {what}"), namespace, e)),
        }
    }
    Ok(deleted)
}

fn belongs_to<K: Resource>(object: &K, app: &str) -> bool {
    object.labels().get(APP_LABEL).is_some_and(|a| *a == names::label_value(app))
}

/// An API error with what was being done and, where it helps, what to do about it.
pub(crate) fn api_error(doing: &str, namespace: &str, e: kube::Error) -> Error {
    let hint = match &e {
        kube::Error::Api(s) if s.is_not_found() && s.message.contains("namespaces") => {
            format!("\nthe namespace '{namespace}' does not exist: `kubectl create namespace {namespace}`, or pass --namespace")
        }
        kube::Error::Api(s) if s.is_forbidden() => {
            format!("\nyour kubeconfig user may not do this in namespace '{namespace}'")
        }
        _ => String::new(),
    };
    Error::Runner(format!("{doing} in namespace '{namespace}': {e}{hint}"))
}
