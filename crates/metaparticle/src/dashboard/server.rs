//! The dashboard's HTTP side: the embedded page, the snapshot it polls, and log lines on demand.
//!
//! | path | answer |
//! |---|---|
//! | `GET /` | the page (HTML with its CSS and JavaScript inside) |
//! | `GET /api/state` | the latest [`Snapshot`](super::view::Snapshot), as JSON, refreshed every second |
//! | `GET /api/logs?replica=NAME` | the last lines a replica logged: `{"lines": [...]}` |
//! | `GET /api/logs?trace=ID` | every recent line, of any replica, that names trace `ID` |

use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::runtime;
use super::view::Board;
use crate::deployments::Deployment;

/// The page, with everything it needs inside.
const PAGE: &str = include_str!("page.html");
/// How often the snapshot is refreshed.
const REFRESH: Duration = Duration::from_secs(1);
/// Log lines returned at most.
const LOG_LINES: usize = 200;

/// Serves the dashboard of `app` on `listener` for ever.
pub(super) async fn run(listener: tokio::net::TcpListener, app: String) {
    let latest: Arc<RwLock<Bytes>> =
        Arc::new(RwLock::new(Bytes::from_static(b"{\"nodes\":[],\"services\":[]}")));
    tokio::spawn(refresh_forever(app.clone(), latest.clone()));
    let app: Arc<str> = app.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (app, latest) = (app.clone(), latest.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (app, latest) = (app.clone(), latest.clone());
                async move { Ok::<_, Infallible>(answer(req, &app, &latest).await) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn refresh_forever(app: String, latest: Arc<RwLock<Bytes>>) {
    let mut board = Board::default();
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = board.refresh(&app).await;
        let json = serde_json::to_vec(&snapshot).expect("a snapshot serializes");
        *latest.write().unwrap_or_else(|e| e.into_inner()) = json.into();
    }
}

async fn answer<B>(req: Request<B>, app: &str, latest: &RwLock<Bytes>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "the dashboard only answers GET\n".into(),
        );
    }
    match req.uri().path() {
        "/" => respond(StatusCode::OK, "text/html; charset=utf-8", Bytes::from_static(PAGE.as_bytes())),
        "/api/state" => {
            let json = latest.read().unwrap_or_else(|e| e.into_inner()).clone();
            respond(StatusCode::OK, "application/json", json)
        }
        "/api/logs" => logs(app, req.uri().query().unwrap_or_default()).await,
        path => respond(StatusCode::NOT_FOUND, "text/plain", format!("no page {path}\n").into()),
    }
}

/// What `/api/logs` asks for.
#[derive(Debug, PartialEq)]
enum LogFilter {
    Replica(String),
    Trace(String),
}

impl LogFilter {
    /// From a query string; names and trace ids are plain ASCII, so nothing needs decoding.
    fn parse(query: &str) -> Result<Self, String> {
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("replica", name))
                    if !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) =>
                {
                    return Ok(LogFilter::Replica(name.to_string()))
                }
                Some(("trace", id)) if id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()) => {
                    return Ok(LogFilter::Trace(id.to_ascii_lowercase()))
                }
                _ => {}
            }
        }
        Err("ask for ?replica=NODE-INDEX or ?trace=<32 hex digits>".into())
    }

    fn keeps(&self, replica: &str, line: &str) -> bool {
        match self {
            LogFilter::Replica(name) => replica == name,
            LogFilter::Trace(id) => line.contains(&format!("trace={id}")),
        }
    }
}

async fn logs(app: &str, query: &str) -> Response<Full<Bytes>> {
    let filter = match LogFilter::parse(query) {
        Ok(filter) => filter,
        Err(why) => return json_error(StatusCode::BAD_REQUEST, why),
    };
    let record = match Deployment::load(app) {
        Ok(Some(record)) => record,
        Ok(None) => return json_error(StatusCode::NOT_FOUND, format!("app '{app}' is not running")),
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let keep = |replica: &str, line: &str| filter.keeps(replica, line);
    match runtime::log_lines(&record, &keep, LOG_LINES).await {
        Ok(lines) => {
            let body = serde_json::to_vec(&serde_json::json!({ "lines": lines })).expect("lines serialize");
            respond(StatusCode::OK, "application/json", body.into())
        }
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

fn json_error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&serde_json::json!({ "error": message })).expect("a message serializes");
    respond(status, "application/json", body.into())
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Live data: never from a cache.
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_queries_name_a_replica_or_a_trace_and_nothing_else() {
        assert_eq!(LogFilter::parse("replica=cart.shard-2"), Ok(LogFilter::Replica("cart.shard-2".into())));
        let trace = "4BF92F3577B34DA6A3CE929D0E0E4736";
        assert_eq!(
            LogFilter::parse(&format!("trace={trace}")),
            Ok(LogFilter::Trace(trace.to_ascii_lowercase()))
        );
        for bad in ["", "replica=", "replica=a/b", "trace=123", "trace=zz", "other=1"] {
            assert!(LogFilter::parse(bad).is_err(), "{bad}");
        }
        let by_trace = LogFilter::Trace("ab".repeat(16));
        assert!(by_trace.keeps("x-0", &format!("INFO request{{trace={}}}: hi", "ab".repeat(16))));
        assert!(!by_trace.keeps("x-0", "INFO serving"));
    }

    #[tokio::test]
    async fn the_page_is_served_whole_and_embedded() {
        let latest = RwLock::new(Bytes::from_static(b"{}"));
        let page = answer(Request::get("/").body(()).unwrap(), "none", &latest).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert!(PAGE.contains("<svg") || PAGE.contains("createElementNS"), "the graph is drawn as SVG");
        for remote in ["http://", "https://", "//cdn", "src=\"//"] {
            let outside = PAGE
                .match_indices(remote)
                .any(|(at, _)| !PAGE[at..].starts_with("http://www.w3.org/2000/svg"));
            assert!(!outside, "the page must not load anything from elsewhere ({remote})");
        }
        let missing = answer(Request::get("/nope").body(()).unwrap(), "none", &latest).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
}
