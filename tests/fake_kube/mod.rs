//! A fake Kubernetes API server on loopback, for testing `up`, `delete` and `status` at the HTTP
//! level without a cluster.
//!
//! It speaks just enough of the API for what the runner sends: `GET /version`, get, list,
//! server-side-apply `PATCH` and `DELETE` of namespaced Secrets, ConfigMaps, Services, Pods,
//! Deployments and StatefulSets. Applied objects are stored as sent; when read back, workloads report every
//! replica updated and ready, and LoadBalancer Services an ingress address, as a healthy cluster
//! would once the rollout is done. It is not a cluster: no controllers, no validation, no
//! conflicts. What it proves is what the runner asks for, in which order, with which parameters.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub content_type: String,
}

#[derive(Default)]
struct State {
    /// (resource, name) → object, e.g. ("deployments", "replicated-service").
    objects: BTreeMap<(String, String), Value>,
    seen: Vec<Seen>,
    /// Pods never become ready and report this waiting reason instead.
    stalled: Option<String>,
}

/// A running fake API server; stops with the test process.
#[derive(Clone)]
pub struct FakeApi {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let state = shared.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        FakeApi { url, state }
    }

    /// A kubeconfig naming this server, with `namespace` in its context.
    pub fn kubeconfig(&self, dir: &std::path::Path, namespace: &str) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: nobody\n  user: {{}}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: nobody\n    namespace: {namespace}\n",
            self.url
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// From now on, no pod becomes ready and every pod waits with `reason` (e.g. `ImagePullBackOff`).
    pub fn stall(&self, reason: &str) {
        self.state.lock().unwrap().stalled = Some(reason.to_string());
    }

    /// Stores an object as if someone had created it.
    pub fn insert(&self, resource: &str, object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        self.state.lock().unwrap().objects.insert((resource.to_string(), name), object);
    }

    /// The stored object, as sent (without the fake's status).
    pub fn get(&self, resource: &str, name: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(&(resource.to_string(), name.to_string())).cloned()
    }

    /// `resource/name` of every stored object.
    pub fn names(&self) -> Vec<String> {
        self.state.lock().unwrap().objects.keys().map(|(r, n)| format!("{r}/{n}")).collect()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn clear_seen(&self) {
        self.state.lock().unwrap().seen.clear();
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn not_found(what: &str) -> Response<Full<Bytes>> {
    reply(
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

/// The object as a healthy cluster would report it after its rollout.
fn with_status(resource: &str, mut object: Value, stalled: bool) -> Value {
    let replicas = object["spec"]["replicas"].as_i64().unwrap_or(1);
    let ready = if stalled { 0 } else { replicas };
    object["metadata"]["generation"] = json!(1);
    match resource {
        "deployments" => {
            object["status"] = json!({"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                                      "readyReplicas": ready, "availableReplicas": ready});
        }
        "statefulsets" => {
            object["status"] = json!({"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                                      "readyReplicas": ready, "currentReplicas": replicas,
                                      "availableReplicas": ready});
        }
        "services" if object["spec"]["type"] == "LoadBalancer" => {
            object["status"] = json!({"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}});
        }
        _ => {}
    }
    object
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let selector = label_selector(req.uri().query().unwrap_or_default());
    let content_type =
        req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    state.lock().unwrap().seen.push(Seen {
        method: method.to_string(),
        uri: req.uri().to_string(),
        content_type,
    });
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if path == "/version" {
        return Ok(reply(
            StatusCode::OK,
            json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0-fake", "gitCommit": "", "gitTreeState": "",
                   "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64"}),
        ));
    }
    // /api/v1/namespaces/<ns>/<resource>[/<name>] or /apis/apps/v1/namespaces/<ns>/<resource>[/<name>]
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", "v1", "namespaces", _ns, rest @ ..]
        | ["apis", "apps", "v1", "namespaces", _ns, rest @ ..] => rest,
        _ => return Ok(not_found(&path)),
    };
    let mut state = state.lock().unwrap();
    let stalled = state.stalled.is_some();
    Ok(match (method, rest) {
        (Method::GET, ["pods"]) => {
            let pods: Vec<Value> = state
                .stalled
                .iter()
                .map(|reason| {
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stuck-pod-0"},
                           "status": {"containerStatuses": [{"name": "node", "image": "x", "imageID": "",
                               "ready": false, "restartCount": 0,
                               "state": {"waiting": {"reason": reason}}}]}})
                })
                .collect();
            reply(
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": pods}),
            )
        }
        (Method::GET, [resource]) => {
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((r, _), o)| r == resource && matches(o, selector.as_ref()))
                .map(|((r, _), o)| with_status(r, o.clone(), stalled))
                .collect();
            reply(
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        (Method::GET, [resource, name]) => match state.objects.get(&(resource.to_string(), name.to_string()))
        {
            Some(o) => reply(StatusCode::OK, with_status(resource, o.clone(), stalled)),
            None => not_found(&format!("{resource} \"{name}\"")),
        },
        (Method::PATCH, [resource, name]) => {
            let object: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            state.objects.insert((resource.to_string(), name.to_string()), object.clone());
            reply(StatusCode::OK, with_status(resource, object, stalled))
        }
        (Method::DELETE, [resource, name]) => {
            match state.objects.remove(&(resource.to_string(), name.to_string())) {
                Some(_) => reply(
                    StatusCode::OK,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                ),
                None => not_found(&format!("{resource} \"{name}\"")),
            }
        }
        _ => not_found(&path),
    })
}

/// `key=value` from a `labelSelector` query parameter (the only form the runner sends).
fn label_selector(query: &str) -> Option<(String, String)> {
    let raw = query.split('&').find_map(|p| p.strip_prefix("labelSelector="))?;
    let decoded = raw.replace("%2F", "/").replace("%2f", "/").replace("%3D", "=").replace("%3d", "=");
    let (k, v) = decoded.split_once('=')?;
    Some((k.to_string(), v.to_string()))
}

fn matches(object: &Value, selector: Option<&(String, String)>) -> bool {
    selector.is_none_or(|(k, v)| object["metadata"]["labels"][k] == *v)
}
