//! Names and labels: how the Docker runner finds everything an app owns.
//!
//! Every object the runner creates (image, network, container, and later volumes) carries
//! `io.metaparticle.app=<app>`. `delete` lists objects by that label, never by a name it remembers,
//! so it removes everything even when the deploying process crashed before writing anything down.

use std::collections::HashMap;

use crate::model::Node;

/// The label every object of an app carries: its value is the app name.
pub(crate) const APP: &str = "io.metaparticle.app";
/// The node a container serves as.
pub(crate) const NODE: &str = "io.metaparticle.node";
/// The replica index a container serves as.
pub(crate) const REPLICA: &str = "io.metaparticle.replica";
/// The node's role (`leaf`, `balancer`, ...), for people reading `docker ps`.
pub(crate) const ROLE: &str = "io.metaparticle.role";
/// Which runner created the object (`docker`).
pub(crate) const RUNNER: &str = "io.metaparticle.runner";
/// Which deploy of the app started a node's container (1, 2, ...): during a rollout two run.
pub(crate) const GENERATION: &str = "io.metaparticle.generation";
/// The build a node's container runs (its image's content hash).
pub(crate) const VERSION: &str = "io.metaparticle.version";
/// The role label of an edge container (see [`crate::plane::edge`]).
pub(crate) const EDGE_ROLE: &str = "edge";

/// The port every node listens on inside its container: each container has its own address on
/// the app network, so all can use the seeds' port.
pub(crate) const CONTAINER_PORT: u16 = 3000;

/// The labels of an app-wide object (image, network, volume).
pub(crate) fn app_labels(app: &str) -> HashMap<String, String> {
    HashMap::from([(APP.to_string(), app.to_string()), (RUNNER.to_string(), "docker".to_string())])
}

/// The labels of one replica's container, of one generation and build.
pub(crate) fn replica_labels(
    app: &str,
    node: &Node,
    replica: usize,
    generation: u32,
    version: &str,
) -> HashMap<String, String> {
    let mut labels = app_labels(app);
    labels.insert(NODE.to_string(), node.name.clone());
    labels.insert(REPLICA.to_string(), replica.to_string());
    labels.insert(ROLE.to_string(), node.role.kind().to_string());
    labels.insert(GENERATION.to_string(), generation.to_string());
    labels.insert(VERSION.to_string(), version.to_string());
    labels
}

/// The labels of the edge container of one exposed replica.
pub(crate) fn edge_labels(app: &str, node: &Node, replica: usize) -> HashMap<String, String> {
    let mut labels = app_labels(app);
    labels.insert(NODE.to_string(), node.name.clone());
    labels.insert(REPLICA.to_string(), replica.to_string());
    labels.insert(ROLE.to_string(), EDGE_ROLE.to_string());
    labels
}

/// The engine's filter that selects every object of `app`.
pub(crate) fn app_filter(app: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("{APP}={app}")])])
}

/// The app's network.
pub(crate) fn network_name(app: &str) -> String {
    format!("mp-{app}")
}

/// A replica's container name, also its hostname and its DNS name on the app network:
/// `server2-replicated-service-replica-0-g1` for generation 1. Dots become dashes so the name is
/// one DNS label; the generation keeps two versions of a replica apart during a rollout.
pub(crate) fn container_name(app: &str, node: &str, replica: usize, generation: u32) -> String {
    format!("{app}-{}-{replica}-g{generation}", node.replace('.', "-"))
}

/// The edge container of an exposed replica: `server2-replicated-service-0-edge`.
pub(crate) fn edge_name(app: &str, node: &str, replica: usize) -> String {
    format!("{app}-{}-{replica}-edge", node.replace('.', "-"))
}

/// The Unix socket (inside the containers' handover folder) an edge offers its listener on.
pub(crate) fn edge_socket(node: &str, replica: usize) -> String {
    format!("{HANDOVER_DIR}/{}-{replica}.sock", node.replace('.', "-"))
}

/// Where the app's handover folder (`<app dir>/handover` on the host) is mounted in the edges and
/// the fronts.
pub(crate) const HANDOVER_DIR: &str = "/metaparticle-handover";

/// The longest name a DNS label (and so a hostname the embedded DNS resolves) may have.
pub(crate) const MAX_DNS_LABEL: usize = 63;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_are_single_dns_labels() {
        let name = container_name("histogram", "histogram-service.leaf", 9, 2);
        assert_eq!(name, "histogram-histogram-service-leaf-9-g2");
        assert!(!name.contains('.'));
        assert_eq!(edge_name("server2", "replicated-service", 0), "server2-replicated-service-0-edge");
    }

    #[test]
    fn the_app_filter_selects_by_the_app_label() {
        assert_eq!(app_filter("server2")["label"], vec!["io.metaparticle.app=server2".to_string()]);
    }
}
