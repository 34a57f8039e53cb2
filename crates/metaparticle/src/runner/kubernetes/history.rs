//! What `up` keeps so that `rollback` can re-apply the release that ran before: a ConfigMap
//! `<app>-metaparticle-history` beside the app's objects, holding the current release and the
//! one it replaced, each as the objects `up` applied (and the image and plan they came from).
//!
//! Why re-apply whole releases rather than do what `kubectl rollout undo` does: `rollout undo`
//! swaps one workload's pod template back to its previous ReplicaSet's (or ControllerRevision's),
//! workload by workload. It knows nothing of the app: a node `up` added stays, a node `up`
//! removed does not come back (its workload is gone, with its revisions), a changed replica count
//! or Service stays as it is, and each workload's "previous" is its own last template change,
//! which need not be the same deploy for all of them. A user who rolls back an app expects the
//! app as it ran before the last `up`, as the local and Docker runners give it; re-applying the
//! kept objects, then pruning what they lack, gives exactly that, through the same rolling update
//! as `up` (readiness first, no pod unavailable).
//!
//! The history lives in the cluster, not on the deploying machine, so `rollback` works from any
//! machine whose kubeconfig reaches the namespace, as `rollout undo` does; it carries the app's
//! label, so `delete` removes it. Objects applied by other means (`manifests | kubectl apply`)
//! leave no history: roll those back where they were applied from.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};

use super::apply::{api_error, belongs_to};
use super::error::{KubernetesError, Result};
use super::manifests::{Manifests, SECRET_KEY, STORAGE_PASSWORD_KEY};
use super::names::{self, APP_LABEL, MANAGER};
use crate::model::Plan;

/// The keys of the history ConfigMap.
const CURRENT: &str = "current";
const PREVIOUS: &str = "previous";

/// One release of the app: the objects one `up` applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Release {
    /// The image its pods run.
    pub image: String,
    /// The plan its objects came from.
    pub plan: Plan,
    /// Its state volume claims.
    pub volume_claims: Vec<PersistentVolumeClaim>,
    /// Its Services.
    pub services: Vec<Service>,
    /// Its StatefulSets.
    pub stateful_sets: Vec<StatefulSet>,
    /// Its Deployments.
    pub deployments: Vec<Deployment>,
    /// The keys its pods read from the app's Secret.
    pub secret_keys: Vec<String>,
}

impl Release {
    /// The release `manifests` of `plan` make, running `image`.
    pub(crate) fn of(image: &str, plan: &Plan, manifests: &Manifests) -> Release {
        Release {
            image: image.to_string(),
            plan: plan.clone(),
            volume_claims: manifests.volume_claims.clone(),
            services: manifests.services.clone(),
            stateful_sets: manifests.stateful_sets.clone(),
            deployments: manifests.deployments.clone(),
            secret_keys: manifests.secret_keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    /// The objects to apply again.
    pub(crate) fn manifests(&self) -> Result<Manifests> {
        let secret_keys = self
            .secret_keys
            .iter()
            .map(|key| match key.as_str() {
                SECRET_KEY => Ok(SECRET_KEY),
                STORAGE_PASSWORD_KEY => Ok(STORAGE_PASSWORD_KEY),
                other => Err(KubernetesError::Unsupported(format!(
                    "the kept release names a Secret key this program does not know ('{other}'); \
                     roll back with the program that deployed it"
                ))),
            })
            .collect::<Result<_>>()?;
        Ok(Manifests {
            volume_claims: self.volume_claims.clone(),
            services: self.services.clone(),
            stateful_sets: self.stateful_sets.clone(),
            deployments: self.deployments.clone(),
            secret_keys,
        })
    }
}

/// The running release and the one it replaced.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct History {
    /// What runs now (or is rolling out).
    pub current: Option<Release>,
    /// What ran before the last `up` that changed something: what `rollback` returns to.
    pub previous: Option<Release>,
}

impl History {
    /// The history once `next` is applied: the release it replaces becomes the previous one. An
    /// `up` that applies the very objects that run changes nothing on the cluster, so it keeps
    /// the previous one: `rollback` still returns to a release that differs.
    pub(crate) fn after(self, next: Release) -> History {
        match self.current {
            Some(current) if current == next => History { current: Some(next), previous: self.previous },
            replaced => History { current: Some(next), previous: replaced },
        }
    }
}

/// The app's history, or `None` if it has none. A ConfigMap of that name that is not the app's
/// is refused, as `up` refuses to take over any object.
pub(crate) async fn load(client: &Client, namespace: &str, app: &str) -> Result<Option<History>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = names::history_name(app);
    let what = format!("ConfigMap/{name}");
    let Some(map) =
        api.get_opt(&name).await.map_err(|e| api_error(&format!("reading {what}"), namespace, e))?
    else {
        return Ok(None);
    };
    if !belongs_to(&map, app) {
        return Err(KubernetesError::NotOurs {
            what,
            namespace: namespace.to_string(),
            owner: map
                .labels()
                .get(APP_LABEL)
                .map(|o| format!("metaparticle app '{o}'"))
                .unwrap_or_else(|| "something else".into()),
        });
    }
    let data = map.data.unwrap_or_default();
    let release = |key: &str| -> Result<Option<Release>> {
        data.get(key)
            .map(|text| {
                serde_json::from_str(text).map_err(|e| {
                    KubernetesError::Unsupported(format!(
                        "{what} in namespace '{namespace}' is damaged ({key}: {e}); delete it \
                         (`kubectl -n {namespace} delete configmap {name}`) and the next `up` starts a new history"
                    ))
                })
            })
            .transpose()
    };
    Ok(Some(History { current: release(CURRENT)?, previous: release(PREVIOUS)? }))
}

/// Writes the history with server-side apply, as every object of the app is written.
pub(crate) async fn save(client: &Client, namespace: &str, app: &str, history: &History) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = names::history_name(app);
    let mut data = BTreeMap::new();
    for (key, release) in [(CURRENT, &history.current), (PREVIOUS, &history.previous)] {
        if let Some(release) = release {
            data.insert(key.to_string(), serde_json::to_string(release).expect("a release serializes"));
        }
    }
    let map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(names::app_labels(app)),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&map))
        .await
        .map_err(|e| api_error(&format!("applying ConfigMap/{name}"), namespace, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(image: &str) -> Release {
        Release {
            image: image.into(),
            plan: Plan { nodes: Vec::new() },
            volume_claims: Vec::new(),
            services: Vec::new(),
            stateful_sets: Vec::new(),
            deployments: Vec::new(),
            secret_keys: vec![SECRET_KEY.into()],
        }
    }

    #[test]
    fn the_replaced_release_becomes_the_previous_one_unless_nothing_changed() {
        let (a, b) = (release("r/app:a"), release("r/app:b"));
        let history = History::default().after(a.clone());
        assert_eq!(history.previous, None);
        let history = history.after(b.clone()).after(b.clone());
        assert_eq!(history.previous, Some(a.clone()), "an up that changes nothing keeps the previous one");
        let back = history.clone().after(history.previous.clone().unwrap());
        assert_eq!(
            (back.current, back.previous),
            (Some(a), Some(b)),
            "a rollback of a rollback goes forward"
        );
    }

    #[test]
    fn a_kept_release_gives_back_its_objects_and_refuses_an_unknown_secret_key() {
        let mut kept = release("r/app:a");
        kept.secret_keys.push(STORAGE_PASSWORD_KEY.into());
        assert_eq!(kept.manifests().unwrap().secret_keys, [SECRET_KEY, STORAGE_PASSWORD_KEY]);
        kept.secret_keys.push("token".into());
        assert!(kept.manifests().unwrap_err().to_string().contains("'token'"));
    }
}
