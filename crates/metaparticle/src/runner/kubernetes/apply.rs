//! Talking to the cluster: the app's Secret, server-side apply, pruning, deleting by label.
//!
//! Server-side apply (field manager `metaparticle`, forced) makes `up` idempotent: the first run
//! creates, every later run updates in place, and "already exists" cannot happen. Objects of the
//! app that the new plan no longer has (a node removed, a subtree reshaped) are pruned after the
//! apply, so the cluster ends up holding exactly what `manifests` prints. An object with the same
//! name that belongs to *another* app (its `metaparticle.io/app` label differs, or it is not
//! ours at all) is never taken over: `up` stops and says so.
//!
//! The app's Secret is not in the manifests (it holds random and private values): `up` creates it
//! when absent and keeps its secret across deploys; a Secret someone created by hand (GitOps) is
//! used as it is. The state volume claim survives `delete` and pruning: only `delete --purge`
//! removes the app's state.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{KubernetesError, Result};
use super::manifests::{self, Manifests, SECRET_KEY};
use super::names::{self, APP_LABEL, MANAGER};
use crate::runner::random_secret;

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

/// Makes sure the app's Secret holds every key in `keys`: creates it with a fresh secret when
/// absent, and re-applies our own Secret with its existing secret and the current storage
/// password. A Secret created by hand (without our label) is used as it is; if it lacks a key the
/// pods need, `up` stops and says which.
pub(crate) async fn ensure_secret(
    client: &Client,
    namespace: &str,
    app: &str,
    keys: &[&str],
    storage_password: Option<&str>,
) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = names::secret_name(app);
    let existing =
        api.get_opt(&name).await.map_err(|e| api_error(&format!("reading Secret/{name}"), namespace, e))?;
    let value = |s: &Secret, key: &str| {
        let from_data = s.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.clone());
        let from_string = s.string_data.as_ref().and_then(|d| d.get(key)).map(|v| v.as_bytes().to_vec());
        from_data.or(from_string).and_then(|b| String::from_utf8(b).ok()).filter(|v| !v.is_empty())
    };
    let hop_secret = match &existing {
        Some(s) if !belongs_to(s, app) => {
            let missing: Vec<&str> = keys.iter().copied().filter(|k| value(s, k).is_none()).collect();
            if missing.is_empty() {
                return Ok(());
            }
            return Err(KubernetesError::Unsupported(format!(
                "Secret/{name} in namespace '{namespace}' was not created by metaparticle and lacks key(s) {} \
                 that the pods read; add them (kubectl -n {namespace} edit secret {name}) or delete it and let `up` create it",
                missing.join(", ")
            )));
        }
        Some(s) => value(s, SECRET_KEY).unwrap_or_else(random_secret),
        None => random_secret(),
    };
    let secret = manifests::secret(app, Some(namespace), &hop_secret, storage_password);
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&secret))
        .await
        .map_err(|e| api_error(&format!("applying Secret/{name}"), namespace, e))?;
    Ok(())
}

/// Applies every object; returns how many were applied.
pub(crate) async fn apply_all(
    client: &Client,
    namespace: &str,
    app: &str,
    manifests: &Manifests,
) -> Result<usize> {
    let mut applied = 0;
    applied += apply(client, namespace, app, &manifests.volume_claims).await?;
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
                return Err(KubernetesError::NotOurs {
                    what,
                    namespace: namespace.to_string(),
                    owner: owner
                        .map(|o| format!("metaparticle app '{o}'"))
                        .unwrap_or_else(|| "something else".into()),
                });
            }
        }
        api.patch(&name, &params, &Patch::Apply(object))
            .await
            .map_err(|e| api_error(&format!("applying {what}"), namespace, e))?;
    }
    Ok(objects.len())
}

/// Deletes the app's objects that `keep` does not contain (but never its Secret, its history nor
/// its state volume); returns `Kind/name` of each.
pub(crate) async fn prune(
    client: &Client,
    namespace: &str,
    app: &str,
    keep: &Manifests,
) -> Result<Vec<String>> {
    let mut kept = keep.summary();
    kept.push(format!("Secret/{}", names::secret_name(app)));
    kept.push(format!("ConfigMap/{}", names::history_name(app)));
    delete_except(client, namespace, app, &kept).await
}

/// Checks that the app's Secret holds every key in `keys`, changing nothing: `rollback` re-applies
/// objects whose pods read it, and has no storage password to write into it.
pub(crate) async fn require_secret(client: &Client, namespace: &str, app: &str, keys: &[&str]) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = names::secret_name(app);
    let existing =
        api.get_opt(&name).await.map_err(|e| api_error(&format!("reading Secret/{name}"), namespace, e))?;
    let has = |s: &Secret, key: &str| {
        s.data.as_ref().is_some_and(|d| d.contains_key(key))
            || s.string_data.as_ref().is_some_and(|d| d.contains_key(key))
    };
    let missing: Vec<&str> = match &existing {
        Some(s) => keys.iter().copied().filter(|k| !has(s, k)).collect(),
        None => keys.to_vec(),
    };
    if missing.is_empty() {
        return Ok(());
    }
    Err(KubernetesError::Unsupported(format!(
        "the release to roll back to reads key(s) {} of Secret/{name} in namespace '{namespace}', which {}; \
         deploy that release with `up` instead (its flags recreate the Secret)",
        missing.join(", "),
        if existing.is_some() { "lacks them" } else { "does not exist" }
    )))
}

/// Deletes every object labelled with the app but its state volume; returns `Kind/name` of each.
pub(crate) async fn delete_all(client: &Client, namespace: &str, app: &str) -> Result<Vec<String>> {
    delete_except(client, namespace, app, &[]).await
}

/// Workloads first (their pods stop), then the Services and the Secret they used, then the history.
async fn delete_except(client: &Client, namespace: &str, app: &str, keep: &[String]) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    deleted.extend(delete_kind::<Deployment>(client, namespace, app, keep).await?);
    deleted.extend(delete_kind::<StatefulSet>(client, namespace, app, keep).await?);
    deleted.extend(delete_kind::<Service>(client, namespace, app, keep).await?);
    deleted.extend(delete_kind::<Secret>(client, namespace, app, keep).await?);
    deleted.extend(delete_kind::<ConfigMap>(client, namespace, app, keep).await?);
    Ok(deleted)
}

/// Deletes the app's state volume claims (`delete --purge`); returns `Kind/name` of each.
pub(crate) async fn delete_volume_claims(client: &Client, namespace: &str, app: &str) -> Result<Vec<String>> {
    delete_kind::<PersistentVolumeClaim>(client, namespace, app, &[]).await
}

/// `Kind/name` of the app's state volume claims.
pub(crate) async fn volume_claims(client: &Client, namespace: &str, app: &str) -> Result<Vec<String>> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let listed = api
        .list(&ListParams::default().labels(&names::app_selector(app)))
        .await
        .map_err(|e| api_error(&format!("listing PersistentVolumeClaims of app '{app}'"), namespace, e))?;
    Ok(listed.items.iter().map(|c| format!("PersistentVolumeClaim/{}", c.name_any())).collect())
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

/// Whether `object` carries the app's label.
pub(crate) fn belongs_to<K: Resource>(object: &K, app: &str) -> bool {
    object.labels().get(APP_LABEL).is_some_and(|a| *a == names::label_value(app))
}

/// An API error with what was being done and, where it helps, what to do about it.
pub(crate) fn api_error(doing: &str, namespace: &str, e: kube::Error) -> KubernetesError {
    let hint = match &e {
        kube::Error::Api(s) if s.is_not_found() && s.message.contains("namespaces") => {
            format!("\nthe namespace '{namespace}' does not exist: `kubectl create namespace {namespace}`, or pass --namespace")
        }
        kube::Error::Api(s) if s.is_forbidden() => {
            format!("\nyour kubeconfig user may not do this in namespace '{namespace}'")
        }
        _ => String::new(),
    };
    KubernetesError::Api {
        doing: doing.to_string(),
        namespace: namespace.to_string(),
        source: Box::new(e),
        hint,
    }
}
