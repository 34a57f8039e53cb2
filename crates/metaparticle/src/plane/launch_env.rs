//! The launch contract as environment variables: the one function every runner calls to start a
//! node ([`NodeLaunch::env_vars`]), and the one reader every node runs ([`NodeLaunch::from_env`]).
//!
//! The local runner and the Docker runner write every variable as a literal. Kubernetes cannot:
//! some values must not appear in a pod spec (secrets), and some differ per pod of one template
//! (the replica index). So each variable says where its value comes from ([`LaunchValue`]), and the
//! Kubernetes runner maps exactly the marked ones to `valueFrom`; everything else is the same
//! literal on every runner, so a variable added here reaches every runner at once.
//!
//! | variable | meaning | on Kubernetes |
//! |---|---|---|
//! | `MP_APP` | the app name | literal |
//! | `MP_NODE` | the node name from the plan | literal |
//! | `MP_REPLICA` | the replica index: a number, or a StatefulSet pod's name `<set>-<ordinal>` | the pod's name (`fieldRef: metadata.name`) |
//! | `MP_HOSTNAME` | the name `hostname()` returns (optional; else the OS hostname) | not set: the pod's name |
//! | `MP_LISTEN` | `host:port` to bind, or `fd:N` for a listening socket the runner passed in | literal |
//! | `MP_ADDRESS_BOOK` | JSON: node name → replica addresses | literal |
//! | `MP_SECRET` | the app's per-deployment secret for internal hops | the app's Secret, key `secret` |
//! | `MP_STORAGE` | where stateful handlers keep their scopes: `file:/abs/path.sqlite` or `redis://host:port` without a password (optional; default: the app's file store) | literal |
//! | `MP_STORAGE_PASSWORD` | the storage server's password (optional) | the app's Secret, key `storage-password` |
//! | `MP_LISTEN_ALSO` | (runner-set, not part of the contract a pod gets) an exposed front's second socket, shared between the versions of a rollout: `fd:N` (local runner) or `handover:/path` (received from the Docker runner's edge) | not set |
//! | `MP_VERSION` | (runner-set) the build a local or Docker node runs, for its answers and logs | not set |
//! | `OTEL_*` | the deployer's OpenTelemetry settings, as far as it set them ([`CARRIED`]: where spans go, sampling, the resource; not the export headers, which hold credentials) | literal |

use super::launch_error::LaunchError;
use super::node::{Listen, NodeLaunch};
use super::trace::config::CARRIED;
use crate::storage::StorageConfig;
use crate::wire::percent;

/// The variable that names the node; its presence makes a process a node instead of a deployer.
pub(crate) const NODE_VAR: &str = "MP_NODE";
/// The variable of the replica index.
pub(crate) const REPLICA_VAR: &str = "MP_REPLICA";
/// The variable of the app's secret for internal hops.
pub(crate) const SECRET_VAR: &str = "MP_SECRET";
/// The variable of the storage server's password.
pub(crate) const STORAGE_PASSWORD_VAR: &str = "MP_STORAGE_PASSWORD";

/// Where a runner takes one variable's value from. Every runner can use [`LaunchValue::literal`];
/// Kubernetes maps the non-literal kinds to `valueFrom` (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LaunchValue {
    /// The same text on every runner.
    Literal(String),
    /// The app's secret for internal hops: on Kubernetes, from the app's Secret.
    AppSecret(String),
    /// The replica index: on Kubernetes, from the pod's name, whose ordinal every version gives
    /// (the `apps.kubernetes.io/pod-index` label exists only from 1.28 on).
    Replica(usize),
    /// The storage server's password: on Kubernetes, from the app's Secret.
    StoragePassword(String),
}

impl LaunchValue {
    /// The value as a literal, for runners that start the process themselves.
    pub(crate) fn literal(&self) -> String {
        match self {
            LaunchValue::Literal(text)
            | LaunchValue::AppSecret(text)
            | LaunchValue::StoragePassword(text) => text.clone(),
            LaunchValue::Replica(index) => index.to_string(),
        }
    }
}

/// One variable of a node's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LaunchVar {
    /// Its name (`MP_...`).
    pub name: &'static str,
    /// Its value, and where a runner takes it from.
    pub value: LaunchValue,
}

impl NodeLaunch {
    /// The node's environment, each variable marked with where its value comes from. THE one
    /// place a node's environment is written: the local and Docker runners take it whole
    /// ([`NodeLaunch::to_env`]), the Kubernetes manifests map its marked values to `valueFrom`.
    pub(crate) fn env_vars(&self) -> Vec<LaunchVar> {
        let literal = |name, value: String| LaunchVar { name, value: LaunchValue::Literal(value) };
        let mut vars = vec![
            literal("MP_APP", self.app.clone()),
            literal(NODE_VAR, self.node.clone()),
            LaunchVar { name: REPLICA_VAR, value: LaunchValue::Replica(self.replica) },
            literal(
                "MP_LISTEN",
                match &self.listen {
                    Listen::Address(a) => a.clone(),
                    Listen::Fd(fd) => format!("fd:{fd}"),
                },
            ),
            literal("MP_ADDRESS_BOOK", serde_json::to_string(&self.book).expect("serializable")),
            LaunchVar { name: SECRET_VAR, value: LaunchValue::AppSecret(self.secret.clone()) },
        ];
        if let Some(h) = &self.hostname {
            vars.push(literal("MP_HOSTNAME", h.clone()));
        }
        // Nodes trace as the deployer's environment says, in a container or a pod too.
        vars.extend(otel_settings(|name| std::env::var(name).ok()));
        if let Some(storage) = &self.storage {
            // The password travels apart from the address, so that a runner can keep it out of
            // anything it writes down (a pod spec, a manifest in Git).
            let (text, password) = split_password(&storage.to_env());
            vars.push(literal("MP_STORAGE", text));
            if let Some(password) = password {
                vars.push(LaunchVar {
                    name: STORAGE_PASSWORD_VAR,
                    value: LaunchValue::StoragePassword(password),
                });
            }
        }
        vars
    }

    /// The environment variables that carry this launch to a process, every value literal.
    pub(crate) fn to_env(&self) -> Vec<(String, String)> {
        self.env_vars().into_iter().map(|v| (v.name.to_string(), v.value.literal())).collect()
    }

    /// Reads a launch from this process's environment; `None` when this process is not a node.
    pub(crate) fn from_env() -> Option<Result<Self, LaunchError>> {
        std::env::var(NODE_VAR).ok()?;
        Some(Self::from_lookup(|name| std::env::var(name).ok()))
    }

    /// Reads a launch from variables `lookup` gives (the process environment, or a test's map).
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, LaunchError> {
        let bad = |variable: &'static str, reason: &dyn std::fmt::Display| LaunchError::Environment {
            variable,
            reason: reason.to_string(),
        };
        let var = |k: &'static str| lookup(k).ok_or_else(|| bad(k, &"not set"));
        let replica = parse_replica(&var(REPLICA_VAR)?).map_err(|e| bad(REPLICA_VAR, &e))?;
        let listen = var("MP_LISTEN")?;
        let listen = match listen.strip_prefix("fd:") {
            Some(fd) => Listen::Fd(fd.parse().map_err(|e| bad("MP_LISTEN", &e))?),
            None => Listen::Address(listen),
        };
        let book = serde_json::from_str(&var("MP_ADDRESS_BOOK")?).map_err(|e| bad("MP_ADDRESS_BOOK", &e))?;
        let storage = match lookup("MP_STORAGE") {
            Some(text) => {
                let text = match lookup(STORAGE_PASSWORD_VAR).filter(|p| !p.is_empty()) {
                    Some(password) => {
                        with_password(&text, &password).map_err(|e| bad(STORAGE_PASSWORD_VAR, &e))?
                    }
                    None => text,
                };
                Some(StorageConfig::parse(&text).map_err(|e| bad("MP_STORAGE", &e))?)
            }
            None => None,
        };
        Ok(Self {
            app: var("MP_APP")?,
            node: var(NODE_VAR)?,
            replica,
            hostname: lookup("MP_HOSTNAME"),
            listen,
            book,
            secret: var(SECRET_VAR)?,
            storage,
        })
    }
}

/// The OpenTelemetry variables `lookup` gives that a node should get: every one of [`CARRIED`]
/// that is set.
pub(crate) fn otel_settings(lookup: impl Fn(&str) -> Option<String>) -> Vec<LaunchVar> {
    CARRIED
        .iter()
        .filter_map(|&name| Some(LaunchVar { name, value: LaunchValue::Literal(lookup(name)?) }))
        .collect()
}

/// The replica index in `MP_REPLICA`: a number, or the name of a StatefulSet pod
/// (`<set>-<ordinal>`), which is how Kubernetes of every version tells a pod its ordinal.
pub(crate) fn parse_replica(text: &str) -> Result<usize, String> {
    if let Ok(index) = text.parse() {
        return Ok(index);
    }
    text.rsplit_once('-').and_then(|(_, ordinal)| ordinal.parse().ok()).ok_or_else(|| {
        format!("{REPLICA_VAR} '{text}' is neither a replica number nor a pod name ending in -<ordinal>")
    })
}

/// A storage URL without its password, and the password (percent-decoded) if it had one:
/// `redis://user:p%40ss@host:6379` → (`redis://user@host:6379`, `p@ss`). Anything that is not a
/// URL with credentials is returned whole.
pub(crate) fn split_password(text: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = text.split_once("://") else { return (text.to_string(), None) };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return (text.to_string(), None) };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    let Some((user, password)) = userinfo.split_once(':') else { return (text.to_string(), None) };
    if password.is_empty() {
        return (text.to_string(), None);
    }
    let without =
        if user.is_empty() { format!("{scheme}://{host}") } else { format!("{scheme}://{user}@{host}") };
    (without, Some(percent::decode(password)))
}

/// `text` (a URL without a password) with `password` put back, percent-encoded.
pub(crate) fn with_password(text: &str, password: &str) -> Result<String, String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err("a password needs a storage URL such as redis://host:port".into());
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (user, host) = match rest[..authority_end].rfind('@') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => ("", rest),
    };
    if user.contains(':') {
        return Err("the storage URL already holds a password".into());
    }
    Ok(format!("{scheme}://{user}:{}@{host}", percent::encode(password)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(storage: Option<&str>) -> NodeLaunch {
        NodeLaunch {
            app: "demo".into(),
            node: "svc.replica".into(),
            replica: 2,
            hostname: None,
            listen: Listen::Address("0.0.0.0:3000".into()),
            book: Default::default(),
            secret: "s3cret".into(),
            storage: storage.map(|s| StorageConfig::parse(s).unwrap()),
        }
    }

    fn read(env: &[(String, String)]) -> Result<NodeLaunch, String> {
        let map: HashMap<_, _> = env.iter().cloned().collect();
        NodeLaunch::from_lookup(|k| map.get(k).cloned()).map_err(|e| e.to_string())
    }

    #[test]
    fn every_launch_round_trips_through_its_environment() {
        for storage in [None, Some("file:/data/demo.sqlite"), Some("redis://:p%40ss%3Aw@redis.shop:6379/2")] {
            let original = launch(storage);
            let back = read(&original.to_env()).unwrap();
            assert_eq!(back.storage, original.storage, "{storage:?}");
            assert_eq!((back.replica, back.secret, back.node), (2, "s3cret".into(), "svc.replica".into()));
        }
    }

    #[test]
    fn secrets_and_the_replica_are_marked_for_runners_that_cannot_write_them_literally() {
        let vars = launch(Some("redis://:pw@redis:6379")).env_vars();
        let value = |name: &str| vars.iter().find(|v| v.name == name).map(|v| v.value.clone());
        assert_eq!(value("MP_SECRET"), Some(LaunchValue::AppSecret("s3cret".into())));
        assert_eq!(value("MP_REPLICA"), Some(LaunchValue::Replica(2)));
        assert_eq!(value("MP_STORAGE_PASSWORD"), Some(LaunchValue::StoragePassword("pw".into())));
        assert_eq!(value("MP_STORAGE"), Some(LaunchValue::Literal("redis://redis:6379".into())));
    }

    #[test]
    fn the_deployers_opentelemetry_settings_reach_nodes_but_not_its_export_headers() {
        let env: HashMap<&str, &str> = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=secret"),
            ("PATH", "/usr/bin"),
        ]
        .into_iter()
        .collect();
        let vars = otel_settings(|name| env.get(name).map(|v| v.to_string()));
        let names: Vec<&str> = vars.iter().map(|v| v.name).collect();
        assert_eq!(names, ["OTEL_TRACES_SAMPLER", "OTEL_EXPORTER_OTLP_ENDPOINT"]);
        assert_eq!(vars[1].value, LaunchValue::Literal("http://collector:4318".into()));
    }

    #[test]
    fn a_statefulset_pod_name_gives_the_replica_on_every_kubernetes_version() {
        assert_eq!(parse_replica("7"), Ok(7));
        assert_eq!(parse_replica("replicated-service-replica-2"), Ok(2));
        // Kubernetes before 1.28 has no pod-index label: a reference to it resolves to "".
        let e = parse_replica("").unwrap_err();
        assert!(e.contains("MP_REPLICA") && e.contains("pod name"), "{e}");
        assert!(parse_replica("no-ordinal-here").is_err());
    }

    #[test]
    fn passwords_split_off_and_back_with_any_characters() {
        assert_eq!(split_password("redis://h:1"), ("redis://h:1".into(), None));
        assert_eq!(split_password("file:/x/a.sqlite"), ("file:/x/a.sqlite".into(), None));
        assert_eq!(split_password("redis://u:p%3Aw@h:1/0"), ("redis://u@h:1/0".into(), Some("p:w".into())));
        let odd = "p@ss:w/rd%é";
        let url = with_password("redis://h:1", odd).unwrap();
        assert_eq!(split_password(&url), ("redis://h:1".into(), Some(odd.into())));
        assert!(with_password("redis://u:x@h:1", "y").is_err());
    }
}
