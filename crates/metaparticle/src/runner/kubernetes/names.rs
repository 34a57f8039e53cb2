//! Kubernetes names and labels for an app's nodes.
//!
//! A plan's node names (`histogram-service.leaf`, `users.shard-1.replica`) are not valid object
//! names: a Service name is a DNS-1035 label (`[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63
//! characters). Dots become dashes; a name too long is cut and given a short hash of the whole
//! node name, so it stays unique and stable from one `up` to the next. Two nodes whose names
//! collide after that (a service named `a-replica` beside `a.replica`) are refused, never merged.
//!
//! Labels follow the Kubernetes recommended set (`app.kubernetes.io/*`) plus ours
//! (`metaparticle.io/*`); `metaparticle.io/app` is what `delete` selects on.

use std::collections::BTreeMap;

/// Longest Service (and headless Service) name.
const SERVICE_NAME_MAX: usize = 63;
/// Longest StatefulSet name: its pods are `<name>-<ordinal>` and carry a
/// `controller-revision-hash` label `<name>-<10 chars>`, which must fit a 63-character label.
pub(crate) const STATEFULSET_NAME_MAX: usize = 52;

/// The label every object of an app carries; `delete` removes everything that has it.
pub(crate) const APP_LABEL: &str = "metaparticle.io/app";
/// The label naming the node (its object name) an object or pod belongs to.
pub(crate) const NODE_LABEL: &str = "metaparticle.io/node";
/// The label naming the node's role (`leaf`, `balancer`, `router`, `gather`).
pub(crate) const ROLE_LABEL: &str = "metaparticle.io/role";
/// The field manager of server-side apply, and the `app.kubernetes.io/managed-by` value.
pub(crate) const MANAGER: &str = "metaparticle";

/// The object name of a node: a DNS-1035 label of at most `max` characters.
pub(crate) fn object_name(node: &str, max: usize) -> String {
    let mut name: String =
        node.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    // An app named only of '_' and '-' leaves nothing of itself in `<app>-metaparticle`; an object
    // name may not begin with '-'.
    name = name.trim_start_matches('-').to_string();
    if name.len() > max {
        // 8 hex digits of a hash of the full name keep truncated names apart.
        let suffix = format!("-{:08x}", fnv1a(node) as u32);
        name.truncate(max - suffix.len());
        name = name.trim_end_matches('-').to_string() + &suffix;
    }
    name
}

/// The name of the app's Secret (the secret of internal hops).
pub(crate) fn secret_name(app: &str) -> String {
    object_name(&format!("{}-metaparticle", label_value(app)), SERVICE_NAME_MAX)
}

/// The name of the ConfigMap holding the app's current and previous release (for `rollback`).
pub(crate) fn history_name(app: &str) -> String {
    object_name(&format!("{}-metaparticle-history", label_value(app)), SERVICE_NAME_MAX)
}

/// The name of the app's state volume claim (`--storage file`).
pub(crate) fn state_claim_name(app: &str) -> String {
    object_name(&format!("{}-state", label_value(app)), SERVICE_NAME_MAX)
}

/// The Service name of a node.
pub(crate) fn service_name(node: &str) -> String {
    object_name(node, SERVICE_NAME_MAX)
}

/// A label value from free text: at most 63 of `[A-Za-z0-9._-]`, starting and ending alphanumeric.
pub(crate) fn label_value(text: &str) -> String {
    let value: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    let value: String = value.chars().take(63).collect();
    value.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// The labels every object of `app` carries.
pub(crate) fn app_labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), label_value(app)),
        ("app.kubernetes.io/managed-by".to_string(), MANAGER.to_string()),
        (APP_LABEL.to_string(), label_value(app)),
    ])
}

/// The labels that select the pods of one node: stable for the node's life (a selector is
/// immutable once applied), so nothing that may change goes in here.
pub(crate) fn selector_labels(app: &str, object: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(APP_LABEL.to_string(), label_value(app)), (NODE_LABEL.to_string(), object.to_string())])
}

/// The labels of a node's objects and pods: the app's, the selector's, and its role.
pub(crate) fn node_labels(app: &str, object: &str, role: &str) -> BTreeMap<String, String> {
    let mut labels = app_labels(app);
    labels.extend(selector_labels(app, object));
    labels.insert("app.kubernetes.io/component".to_string(), object.to_string());
    labels.insert(ROLE_LABEL.to_string(), role.to_string());
    labels
}

/// The label selector (`metaparticle.io/app=<app>`) that finds every object of an app.
pub(crate) fn app_selector(app: &str) -> String {
    format!("{APP_LABEL}={}", label_value(app))
}

/// FNV-1a, 64 bits: a stable hash (std's `DefaultHasher` may change between Rust releases, and
/// names must not change between two `up`s built by different compilers).
pub(crate) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_become_dashes() {
        assert_eq!(service_name("histogram-service.leaf"), "histogram-service-leaf");
    }

    #[test]
    fn long_names_are_cut_with_a_stable_hash() {
        let long = format!("{}.shard-1.replica", "a".repeat(40));
        let name = object_name(&long, STATEFULSET_NAME_MAX);
        assert_eq!(name.len(), STATEFULSET_NAME_MAX);
        assert_eq!(name, object_name(&long, STATEFULSET_NAME_MAX));
        assert_ne!(name, object_name(&format!("{}.shard-2.replica", "a".repeat(40)), STATEFULSET_NAME_MAX));
    }

    #[test]
    fn names_never_start_with_a_dash() {
        assert_eq!(secret_name("_my_app"), "my_app-metaparticle".replace('_', "-"));
        assert_eq!(secret_name("__"), "metaparticle");
    }

    #[test]
    fn label_values_are_trimmed_to_alphanumeric_ends() {
        assert_eq!(label_value("_my_app-"), "my_app");
        assert_eq!(label_value(&"x".repeat(70)).len(), 63);
    }
}
