//! Waiting for a rollout, and saying where the exposed services can be reached.
//!
//! Polling (every second) rather than watching: a handful of objects, a bounded wait, and no
//! long-lived watch machinery (kube-runtime) to compile for it. A workload is rolled out when the
//! controller has seen its latest spec and every replica is updated and ready, the same test
//! `kubectl rollout status` makes. While waiting, pods stuck for a reason a person must fix
//! (`ImagePullBackOff`, `CrashLoopBackOff`, ...) are named in the progress line and in the error.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::apply::api_error;
use super::error::{KubernetesError, Result};
use super::manifests::{ExposeAs, Manifests};
use super::names;

/// Waits until every workload of `manifests` is rolled out, printing progress as it changes.
pub(crate) async fn wait(
    client: &Client,
    namespace: &str,
    app: &str,
    manifests: &Manifests,
    timeout: Duration,
) -> Result<()> {
    let started = Instant::now();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let total = manifests.deployments.len() + manifests.stateful_sets.len();
    let mut last = String::new();
    loop {
        let mut pending = Vec::new();
        for d in &manifests.deployments {
            let name = d.name_any();
            let live = deployments
                .get(&name)
                .await
                .map_err(|e| api_error(&format!("reading Deployment/{name}"), namespace, e))?;
            if !deployment_done(&live) {
                pending.push(name);
            }
        }
        for s in &manifests.stateful_sets {
            let name = s.name_any();
            let live = stateful_sets
                .get(&name)
                .await
                .map_err(|e| api_error(&format!("reading StatefulSet/{name}"), namespace, e))?;
            if !stateful_set_done(&live) {
                pending.push(name);
            }
        }
        if pending.is_empty() {
            eprintln!("rollout: {total}/{total} nodes ready in {:.0}s", started.elapsed().as_secs_f64());
            return Ok(());
        }
        let stuck = stuck_pods(client, namespace, app).await;
        let line = format!(
            "rollout: {}/{total} nodes ready; waiting for {}{}",
            total - pending.len(),
            pending.join(", "),
            if stuck.is_empty() { String::new() } else { format!(" (problems: {})", stuck.join(", ")) }
        );
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if started.elapsed() > timeout {
            return Err(KubernetesError::RolloutTimeout {
                seconds: timeout.as_secs(),
                pending: pending.join(", "),
                stuck: if stuck.is_empty() { String::new() } else { format!(" ({})", stuck.join(", ")) },
                namespace: namespace.to_string(),
                selector: names::app_selector(app),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn deployment_done(d: &Deployment) -> bool {
    let (spec, Some(status)) = (&d.spec, &d.status) else { return false };
    let want = spec.replicas.unwrap_or(1);
    status.observed_generation >= d.metadata.generation
        && status.updated_replicas.unwrap_or(0) == want
        && status.available_replicas.unwrap_or(0) == want
        // No pods of an older version still running.
        && status.replicas.unwrap_or(0) == want
}

fn stateful_set_done(s: &StatefulSet) -> bool {
    let (spec, Some(status)) = (&s.spec, &s.status) else { return false };
    let want = spec.replicas.unwrap_or(1);
    status.observed_generation >= s.metadata.generation
        && status.updated_replicas.unwrap_or(0) == want
        && status.ready_replicas.unwrap_or(0) == want
}

/// `pod: reason` for each pod waiting on something that will not fix itself soon.
async fn stuck_pods(client: &Client, namespace: &str, app: &str) -> Vec<String> {
    const STUCK: [&str; 6] = [
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
    ];
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let Ok(list) = pods.list(&ListParams::default().labels(&names::app_selector(app))).await else {
        return Vec::new();
    };
    let mut out = BTreeSet::new();
    for pod in list.items {
        let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
        for reason in statuses.iter().filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone()) {
            if STUCK.contains(&reason.as_str()) {
                out.insert(format!("{}: {reason}", pod.name_any()));
            }
        }
    }
    out.into_iter().collect()
}

/// Prints how to reach each exposed service; waits a little for load balancers' addresses.
pub(crate) async fn print_endpoints(
    client: &Client,
    namespace: &str,
    manifests: &Manifests,
    exposed: &[(String, String)],
    expose_as: ExposeAs,
    port: u16,
) {
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    for (service, object) in exposed {
        if !manifests.services.iter().any(|s| s.name_any() == *object) {
            continue;
        }
        let how = match expose_as {
            ExposeAs::LoadBalancer => match load_balancer_address(&api, object).await {
                Some(address) => format!("http://{address}:{port}/"),
                None => format!(
                    "a load balancer (no external address yet; `kubectl -n {namespace} get service {object} -w`)"
                ),
            },
            ExposeAs::NodePort => {
                let node_port = api
                    .get(object)
                    .await
                    .ok()
                    .and_then(|s| s.spec?.ports?.first()?.node_port)
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "?".into());
                format!("port {node_port} of any cluster node")
            }
            ExposeAs::ClusterIp => format!(
                "inside the cluster only: `kubectl -n {namespace} port-forward service/{object} {port}:{port}`, then http://127.0.0.1:{port}/"
            ),
        };
        println!("  {service} is reachable at {how}");
    }
}

async fn load_balancer_address(api: &Api<Service>, name: &str) -> Option<String> {
    // Cloud load balancers take a while; wait a bounded time, then say how to keep watching.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ingress = api
            .get(name)
            .await
            .ok()
            .and_then(|s| s.status?.load_balancer?.ingress?.into_iter().next())
            .and_then(|i| i.ip.or(i.hostname));
        if ingress.is_some() || Instant::now() > deadline {
            return ingress;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus, StatefulSetSpec, StatefulSetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn deployment(
        generation: i64,
        observed: i64,
        replicas: i32,
        updated: i32,
        available: i32,
        total: i32,
    ) -> Deployment {
        Deployment {
            metadata: ObjectMeta { generation: Some(generation), ..Default::default() },
            spec: DeploymentSpec { replicas: Some(replicas), ..Default::default() },
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                replicas: Some(total),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_deployment_is_rolled_out_when_every_pod_is_new_and_available() {
        assert!(deployment_done(&deployment(2, 2, 3, 3, 3, 3)));
        assert!(!deployment_done(&deployment(3, 2, 3, 3, 3, 3)), "the controller has not seen the new spec");
        assert!(!deployment_done(&deployment(2, 2, 3, 2, 3, 3)), "one pod still runs the old spec");
        assert!(!deployment_done(&deployment(2, 2, 3, 3, 2, 3)), "one pod is not available");
        assert!(!deployment_done(&deployment(2, 2, 3, 3, 3, 4)), "an old pod is still terminating");
        assert!(!deployment_done(&Deployment::default()), "no status yet");
    }

    #[test]
    fn a_stateful_set_is_rolled_out_when_every_pod_is_updated_and_ready() {
        let sts = |updated, ready| StatefulSet {
            metadata: ObjectMeta { generation: Some(1), ..Default::default() },
            spec: StatefulSetSpec { replicas: Some(3), ..Default::default() },
            status: Some(StatefulSetStatus {
                observed_generation: Some(1),
                updated_replicas: Some(updated),
                ready_replicas: Some(ready),
                replicas: 3,
                ..Default::default()
            }),
        };
        assert!(stateful_set_done(&sts(3, 3)));
        assert!(!stateful_set_done(&sts(3, 2)));
        assert!(!stateful_set_done(&sts(2, 3)));
    }
}
