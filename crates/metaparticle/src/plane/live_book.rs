//! The address book of a running node, which its runner may hand it again while it serves.
//!
//! A runner that adds or removes replicas of a node in place (a change of replica count alone,
//! which need not restart anything else) tells every process of the app where the replicas are
//! now: `PUT /_metaparticle/address-book` with the new book as JSON and the app's secret. The
//! node answers once the book is in place. A pool over a balanced target (any replica of a node)
//! compares the book's generation with the one it resolved on every request, one atomic load, and
//! resolves its replicas again when it moved on. So once the `PUT` is answered no new request goes
//! to a replica the book no longer lists; the requests already there finish, and the runner stops
//! that replica only then. Replicas that stay keep their load and health as they were.
//!
//! Indexed targets (a shard, a scatter leaf) are not followed: their replica count is part of how
//! keys map and answers merge, so changing it is a new version, not a rescale.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::address_book::AddressBook;
use crate::wire::headers::{self, constant_time_eq};

/// Where a node takes a new address book.
pub(crate) const PATH: &str = "/_metaparticle/address-book";

/// The largest book a node reads (a thousand replicas with long DNS names fit in a tenth of it).
const MAX_BOOK: usize = 1024 * 1024;

/// The address book of one process, shared by its workers, and how many times it was replaced.
pub(crate) struct LiveBook {
    generation: AtomicU64,
    book: RwLock<Arc<AddressBook>>,
}

impl LiveBook {
    /// The book a node started with (generation 0).
    pub(crate) fn new(book: AddressBook) -> Arc<Self> {
        Arc::new(Self { generation: AtomicU64::new(0), book: RwLock::new(Arc::new(book)) })
    }

    /// How many times the book was replaced; a pool that resolved an older one resolves again.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The book now, with its generation (read together, so they always belong to each other).
    pub(crate) fn current(&self) -> (u64, Arc<AddressBook>) {
        let book = self.book.read().unwrap_or_else(|e| e.into_inner());
        (self.generation(), book.clone())
    }

    /// Puts `book` in place; returns its generation.
    pub(crate) fn replace(&self, book: AddressBook) -> u64 {
        let mut current = self.book.write().unwrap_or_else(|e| e.into_inner());
        *current = Arc::new(book);
        // Bumped while the lock is held: a reader that sees the new generation and then takes
        // the read lock finds the new book.
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// What a node answers to `PUT` [`PATH`]: the status and a one-line JSON body.
pub(crate) async fn accept(live: &LiveBook, secret: &str, req: Request<Incoming>) -> (StatusCode, Bytes) {
    let given = req.headers().get(headers::SECRET).map(|v| v.as_bytes()).unwrap_or_default();
    // Only the app's runner knows the secret; an empty secret (a test harness without one)
    // proves nothing.
    if secret.is_empty() || !constant_time_eq(given, secret.as_bytes()) {
        return answer(StatusCode::FORBIDDEN, "only the app's runner may replace its address book");
    }
    let body = match Limited::new(req.into_body(), MAX_BOOK).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return answer(StatusCode::BAD_REQUEST, &format!("the address book could not be read: {e}"))
        }
    };
    match serde_json::from_slice::<AddressBook>(&body) {
        Ok(book) => {
            let generation = live.replace(book);
            tracing::info!(generation, "address book replaced");
            (StatusCode::OK, serde_json::json!({ "generation": generation }).to_string().into())
        }
        Err(e) => answer(StatusCode::BAD_REQUEST, &format!("the address book is not valid JSON: {e}")),
    }
}

/// How long a node may take to take a book.
const HAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Hands `book` to the node listening at `address` (`host:port`), proving with `secret` that the
/// app's runner sends it; returns the generation the node now serves, or why it did not take it.
pub(crate) async fn hand(address: &str, secret: &str, book: &AddressBook) -> Result<u64, String> {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let body = serde_json::to_vec(book).expect("an address book serializes");
    let request = Request::put(format!("http://{address}{PATH}"))
        .header(headers::SECRET, secret)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("{address} is not an address: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(HAND_TIMEOUT, async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((status, body))
    })
    .await
    .map_err(|_| format!("{address} did not answer within {HAND_TIMEOUT:?}"))?;
    let (status, body) = response.map_err(|e| format!("{address}: {e}"))?;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match answer["generation"].as_u64() {
        Some(generation) if status == StatusCode::OK => Ok(generation),
        _ => Err(format!("{address} answered HTTP {status}: {}", String::from_utf8_lossy(&body))),
    }
}

fn answer(status: StatusCode, error: &str) -> (StatusCode, Bytes) {
    (status, serde_json::json!({ "error": error }).to_string().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_book_is_read_with_its_own_generation() {
        let live = LiveBook::new(AddressBook::default());
        assert_eq!(live.current().0, 0);
        let mut book = AddressBook::default();
        book.insert("n", vec!["127.0.0.1:1".into()]);
        assert_eq!(live.replace(book.clone()), 1);
        let (generation, now) = live.current();
        assert_eq!((generation, &*now), (1, &book));
        assert_eq!(live.generation(), 1);
    }

    /// A server answering [`PATH`] as nodes do, over real HTTP on loopback.
    async fn serving(live: Arc<LiveBook>, secret: &'static str) -> String {
        use hyper::server::conn::http1;
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let live = live.clone();
                let service = service_fn(move |req| {
                    let live = live.clone();
                    async move {
                        let (status, body) = accept(&live, secret, req).await;
                        let mut response = hyper::Response::new(http_body_util::Full::new(body));
                        *response.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        address
    }

    #[tokio::test]
    async fn only_the_runner_replaces_a_book_and_a_bad_one_changes_nothing() {
        let live = LiveBook::new(AddressBook::default());
        let address = serving(live.clone(), "s3cret").await;
        let mut book = AddressBook::default();
        book.insert("n", vec!["127.0.0.1:7".into()]);
        let refused = hand(&address, "guess", &book).await.unwrap_err();
        assert!(refused.contains("403") && refused.contains("only the app's runner"), "{refused}");
        assert_eq!(live.generation(), 0);
        assert_eq!(hand(&address, "s3cret", &book).await, Ok(1));
        assert_eq!(&*live.current().1, &book);

        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<Bytes>>();
        let bad = Request::put(format!("http://{address}{PATH}"))
            .header(headers::SECRET, "s3cret")
            .body(http_body_util::Full::new(Bytes::from_static(b"{not json")))
            .unwrap();
        assert_eq!(client.request(bad).await.unwrap().status(), StatusCode::BAD_REQUEST);
        assert_eq!(live.generation(), 1, "a book that does not parse is not taken");
        let gone = hand("127.0.0.1:1", "s3cret", &book).await.unwrap_err();
        assert!(gone.contains("127.0.0.1:1"), "{gone}");
    }
}
