//! A JSON-RPC client for calling a deployed service from outside the app.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::wire::headers;
use crate::wire::jsonrpc::{decode_response, encode_call, RpcError};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing answered at the address.
    #[error("cannot reach {address}: {detail}")]
    Unreachable {
        /// Where we tried.
        address: String,
        /// What the OS said.
        detail: String,
    },
    /// The service answered with a JSON-RPC error.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The request could not be turned into JSON.
    #[error("the request is not JSON: {0}")]
    Request(#[source] serde_json::Error),
    /// The service answered with a value of another type than the caller expected.
    #[error("the answer does not have the expected type: {0}")]
    Answer(#[source] serde_json::Error),
    /// The service did not answer in time.
    #[error("{address} did not answer within {after:?}")]
    Timeout {
        /// Where we waited.
        address: String,
        /// How long.
        after: Duration,
    },
}

/// A pooled JSON-RPC client.
///
/// ```no_run
/// # async fn demo() -> Result<(), metaparticle::client::CallError> {
/// let client = metaparticle::client::RpcClient::new();
/// let answer = client.call("127.0.0.1:3000", "replicated-service", &serde_json::json!({"foo": "bar"})).await?;
/// println!("{answer}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RpcClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    secret: Option<String>,
    authorization: Option<String>,
    timeout: Duration,
}

impl Default for RpcClient {
    fn default() -> Self {
        Self::new()
    }
}

impl RpcClient {
    /// A client for exposed services (no secret), with a 30 s timeout.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            inner: Client::builder(TokioExecutor::new()).build(connector),
            secret: None,
            authorization: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// The same client, sending the app's secret (to call internal nodes, as tests do).
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// The same client, sending HTTP Basic credentials (for services behind
    /// [`crate::Service::with_basic_auth`]).
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> Self {
        self.authorization = Some(basic_auth_header(user, password));
        self
    }

    /// The same client with another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Calls `method` with `request` as its single parameter.
    pub async fn call(&self, address: &str, method: &str, request: &Value) -> Result<Value, CallError> {
        let body = encode_call(method, request, &Value::from(1));
        let (_, answer) = self.post(address, Bytes::from(body)).await?;
        Ok(decode_response(&answer)?)
    }

    /// Posts a raw body to `/` and returns the HTTP status and body (for protocol tests).
    pub async fn post(&self, address: &str, body: Bytes) -> Result<(StatusCode, Bytes), CallError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{address}/"))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(secret) = &self.secret {
            request = request.header(headers::SECRET, secret);
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| CallError::Unreachable { address: address.to_string(), detail: e.to_string() })?;
        let exchange = async {
            let response = self.inner.request(request).await.map_err(|e| CallError::Unreachable {
                address: address.to_string(),
                detail: root_cause(&e),
            })?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| CallError::Unreachable {
                address: address.to_string(),
                detail: e.to_string(),
            })?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(CallError::Timeout { address: address.to_string(), after: self.timeout }))
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The `Authorization` header value that carries `user` and `password` with HTTP Basic
/// authentication, for callers that build their own requests.
///
/// ```
/// assert_eq!(metaparticle::client::basic_auth_header("alice", "wonderland"), "Basic YWxpY2U6d29uZGVybGFuZA==");
/// ```
pub fn basic_auth_header(user: &str, password: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}
