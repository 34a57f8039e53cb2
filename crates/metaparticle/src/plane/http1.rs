//! The client side of internal hops: JSON-RPC bodies POSTed to our own nodes over kept-alive
//! HTTP/1.1 connections, written and read by the calling task itself.
//!
//! Why not hyper's pooled client: it drives every connection from a task of its own and passes
//! each request and response across channels, so a hop costs extra task wake-ups and a dispatch
//! through the pool's bookkeeping. A balancer does little else, so that overhead decided its
//! throughput. The peers here are always metaparticle nodes, which answer with a
//! `Content-Length`, so the client needs only that much of HTTP/1.1; a close-delimited body is
//! read too, and anything else is refused with a clear error rather than misread.
//!
//! What can be known about a failure is kept: [`SendError::NotSent`] means the peer cannot have
//! run the request (the connection failed, or the request was not fully written), so it is safe
//! to send it elsewhere; [`SendError::Broken`] means it may have run; [`SendError::TooLarge`]
//! means it did run and answered with more than this client accepts.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::headers;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle connection older than this is closed rather than reused. Our servers close idle
/// connections after 10 s; staying well below means a reused connection is never one the peer
/// is closing at that very moment.
const IDLE_LIMIT: Duration = Duration::from_secs(4);
/// Idle connections kept per peer; more than the busiest worker has in flight at once.
const MAX_IDLE_PER_PEER: usize = 256;
/// The largest response head accepted (as our servers' own limit).
const MAX_HEAD: usize = 64 * 1024;
/// The largest response body accepted: an answer bigger than this is an error, not a crash.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Headers parsed in a response head.
const MAX_HEADERS: usize = 32;

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The request did not reach the peer whole: it cannot have run.
    NotSent(String),
    /// The request was sent, but no complete answer came back: it may have run.
    Broken(String),
    /// The peer answered with a body of this many bytes, over the limit (its size, if it said).
    TooLarge(Option<usize>),
}

impl SendError {
    /// Whether the peer cannot have run the request.
    pub(crate) fn is_not_sent(&self) -> bool {
        matches!(self, SendError::NotSent(_))
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotSent(why) => write!(f, "the request was not sent: {why}"),
            SendError::Broken(why) => write!(f, "no answer: {why}"),
            SendError::TooLarge(Some(size)) => {
                write!(f, "its answer of {size} bytes is larger than the limit of {MAX_BODY} bytes")
            }
            SendError::TooLarge(None) => write!(f, "its answer is larger than the limit of {MAX_BODY} bytes"),
        }
    }
}

/// A connection to a peer and the buffer its answers are read into, reused for every answer it
/// carries: a buffer of its own per answer was an 8 KiB allocation per hop, too large for the
/// allocator's per-thread cache, and freed on whichever thread dropped the answer, which made
/// the allocator's locks the most contended in the process (`perf` on `futex` under
/// `bench_state`).
struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
}

/// A connection waiting for its next request.
struct Idle {
    connection: Connection,
    since: Instant,
}

/// Kept-alive connections to every peer, shared by the tasks of one worker.
#[derive(Default)]
pub(crate) struct Http1Pool {
    idle: Mutex<HashMap<Arc<str>, Vec<Idle>>>,
}

impl Http1Pool {
    /// `POST /` of `body` to `peer` (`host:port`) with `headers` added; the status and body of
    /// the answer.
    pub(crate) async fn post(
        &self,
        peer: &Arc<str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, SendError> {
        let request = encode_request(peer, headers, body);
        let (mut connection, reused) = match self.checkout(peer) {
            Some(connection) => (connection, true),
            None => (connect(peer).await?, false),
        };
        let mut outcome = exchange(&mut connection, &request).await;
        if reused && matches!(outcome, Err(SendError::NotSent(_))) {
            // The peer closed a kept-alive connection before this request reached its
            // application (a node that was just killed or shed the connection): nothing ran, so
            // a fresh connection may carry it.
            connection = connect(peer).await?;
            outcome = exchange(&mut connection, &request).await;
        }
        let (answer, keep_alive) = outcome?;
        if keep_alive {
            self.checkin(peer, connection);
        }
        Ok(answer)
    }

    /// A kept-alive connection to `peer` that is still open and not about to be closed.
    fn checkout(&self, peer: &Arc<str>) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let connections = idle.get_mut(peer)?;
        while let Some(Idle { connection, since }) = connections.pop() {
            let idle_for = since.elapsed();
            if idle_for < IDLE_LIMIT && is_open(&connection.stream, idle_for) {
                return Some(connection);
            }
        }
        None
    }

    fn checkin(&self, peer: &Arc<str>, connection: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let connections = idle.entry(peer.clone()).or_default();
        if connections.len() < MAX_IDLE_PER_PEER {
            connections.push(Idle { connection, since: Instant::now() });
        }
    }
}

/// Whether an idle connection is still open: the peer has neither closed it nor sent anything
/// unasked (which would be a protocol error on an idle HTTP/1.1 connection).
///
/// A connection reused at once (the hot path under load) is checked against what the runtime
/// already knows, which costs no system call. One that sat idle longer is asked of the kernel:
/// the runtime learns of a peer's close only when it next polls for events, and a busy worker may
/// not have done so yet, while a request sent on a connection the peer closed (a replica that was
/// killed and restarted) fails after it was sent, which cannot be retried safely.
fn is_open(stream: &TcpStream, idle_for: Duration) -> bool {
    if idle_for < KERNEL_CHECK_AFTER {
        let mut probe = [0u8; 1];
        return matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    }
    use std::os::fd::AsRawFd;
    let mut probe = [0u8; 1];
    // SAFETY: recv(2) on the descriptor `stream` owns, into a buffer of the length given; PEEK
    // leaves any data where it is and DONTWAIT keeps the call from blocking.
    let read = unsafe {
        libc::recv(stream.as_raw_fd(), probe.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    read < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// How long a connection may sit idle before its reuse asks the kernel whether it is still open.
const KERNEL_CHECK_AFTER: Duration = Duration::from_millis(2);

async fn connect(peer: &str) -> Result<Connection, SendError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(SendError::NotSent(format!("cannot connect to {peer}: {e}"))),
        Err(_) => {
            return Err(SendError::NotSent(format!(
                "connecting to {peer} took longer than {}s",
                CONNECT_TIMEOUT.as_secs()
            )))
        }
    };
    // Requests are written whole; waiting to coalesce them would only add latency.
    let _ = stream.set_nodelay(true);
    Ok(Connection { stream, buffer: BytesMut::new() })
}

fn encode_request(peer: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut request = Vec::with_capacity(128 + body.len());
    request.extend_from_slice(b"POST / HTTP/1.1\r\nhost: ");
    request.extend_from_slice(peer.as_bytes());
    request.extend_from_slice(b"\r\ncontent-type: application/json\r\n");
    for (name, value) in headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"content-length: ");
    // Writing into a Vec cannot fail; formatting in place saves a String per request.
    let _ = std::io::Write::write_fmt(&mut request, format_args!("{}", body.len()));
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(body);
    request
}

/// A node's answer to a hop.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The HTTP status.
    pub(crate) status: StatusCode,
    /// The body (JSON).
    pub(crate) body: Bytes,
    /// The JSON-RPC error code the node says its answer holds (see [`headers::ERROR`]).
    pub(crate) error: Option<i64>,
}

/// What a response head says about its body.
struct Head {
    status: StatusCode,
    /// Length of the head in bytes.
    length: usize,
    content_length: Option<usize>,
    keep_alive: bool,
    error: Option<i64>,
}

/// Writes `request` and reads its answer, and whether the connection may carry another request.
async fn exchange(connection: &mut Connection, request: &[u8]) -> Result<(Answer, bool), SendError> {
    connection.stream.write_all(request).await.map_err(|e| SendError::NotSent(e.to_string()))?;
    read_response(connection).await
}

/// Reads one response into the connection's buffer, and whether the connection may carry
/// another request.
///
/// A body of up to [`COPY_LIMIT`] bytes is copied out, so the buffer stays the connection's for
/// the next answer; a larger one is handed over as it lies in the buffer, and the connection
/// starts a new buffer.
///
/// A reset before the first byte of the answer means the peer's socket was closed when the
/// request arrived, or closed with the request still unread: its application never had the
/// whole request, so it cannot have run it. (A peer that read the request and then died closes
/// with nothing unread, which arrives as an end of stream, and may have run it.)
async fn read_response(connection: &mut Connection) -> Result<(Answer, bool), SendError> {
    let Connection { stream, buffer } = connection;
    buffer.clear();
    let head = loop {
        let read = match read_more(stream, buffer).await {
            Err(e) if buffer.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(SendError::NotSent(format!("the peer reset the connection: {e}")))
            }
            other => other.map_err(broken)?,
        };
        if read == 0 {
            return Err(SendError::Broken("the connection closed before an answer".into()));
        }
        if let Some(head) = parse_head(buffer)? {
            break head;
        }
        if buffer.len() > MAX_HEAD {
            return Err(SendError::Broken(format!("the answer's head is over {MAX_HEAD} bytes")));
        }
    };
    match head.content_length {
        Some(length) if length > MAX_BODY => Err(SendError::TooLarge(Some(length))),
        Some(length) => {
            let end = head.length + length;
            while buffer.len() < end {
                buffer.reserve(end - buffer.len());
                if read_more(stream, buffer).await.map_err(broken)? == 0 {
                    return Err(SendError::Broken(format!(
                        "the connection closed after {} of {length} body bytes",
                        buffer.len() - head.length
                    )));
                }
            }
            // Anything after the body would be an answer nobody asked for: do not reuse.
            let keep_alive = head.keep_alive && buffer.len() == end;
            let body = if length <= COPY_LIMIT {
                let body = Bytes::copy_from_slice(&buffer[head.length..end]);
                if buffer.capacity() > MAX_KEPT_BUFFER {
                    // An unusually large head: do not keep its buffer for every answer after it.
                    *buffer = BytesMut::new();
                }
                body
            } else {
                lend(buffer, head.length..end)
            };
            Ok((Answer { status: head.status, body, error: head.error }, keep_alive))
        }
        None => {
            // Delimited by the peer closing the connection.
            while read_more(stream, buffer).await.map_err(broken)? > 0 {
                if buffer.len() > MAX_BODY + head.length {
                    return Err(SendError::TooLarge(None));
                }
            }
            let end = buffer.len();
            Ok((
                Answer { status: head.status, body: lend(buffer, head.length..end), error: head.error },
                false,
            ))
        }
    }
}

/// Hands over the bytes `range` of a connection's read buffer without copying them; the
/// connection starts a new buffer for its next answer.
fn lend(buffer: &mut BytesMut, range: std::ops::Range<usize>) -> Bytes {
    std::mem::take(buffer).freeze().slice(range)
}

/// The largest answer body copied out of its connection's read buffer rather than lent from it:
/// copying a few KiB costs less than the fresh buffer the connection would need otherwise.
const COPY_LIMIT: usize = 16 * 1024;

/// The largest read buffer a connection keeps between answers.
const MAX_KEPT_BUFFER: usize = 64 * 1024;

/// How much a read asks for at least: a typical answer, head and body, in one system call.
const READ_CHUNK: usize = 8 * 1024;

async fn read_more(stream: &mut TcpStream, buffer: &mut BytesMut) -> io::Result<usize> {
    if buffer.capacity() - buffer.len() < 1024 {
        buffer.reserve(READ_CHUNK);
    }
    stream.read_buf(buffer).await
}

/// A read that failed after the request was sent: it may have run.
fn broken(e: io::Error) -> SendError {
    SendError::Broken(e.to_string())
}

/// The head at the start of `bytes`, `None` if it is not complete yet.
fn parse_head(bytes: &[u8]) -> Result<Option<Head>, SendError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(SendError::Broken(format!("the answer is not HTTP/1.1: {e}"))),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| SendError::Broken("the answer has no valid status".into()))?;
    let mut head =
        Head { status, length, content_length: None, keep_alive: response.version == Some(1), error: None };
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or_default().trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = value.parse().map_err(|_| {
                SendError::Broken(format!("the answer's content-length '{value}' is not a number"))
            })?;
            head.content_length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case(headers::ERROR) {
            head.error = value.parse().ok();
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(SendError::Broken(format!(
                "the answer uses transfer-encoding '{value}', which internal hops do not accept"
            )));
        } else if header.name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                head.keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                head.keep_alive = true;
            }
        }
    }
    // 1xx, 204 and 304 answers have no body whatever their headers say.
    if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        head.content_length = Some(0);
    }
    Ok(Some(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on a plain thread: answers each connection's first request, keeps it open until
    /// told to close it, and counts the connections it accepted.
    fn one_answer_per_connection(
    ) -> (String, std::sync::mpsc::Sender<()>, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (close, closing) = std::sync::mpsc::channel::<()>();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let mut stream = stream.unwrap();
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
                let _ = closing.recv_timeout(Duration::from_secs(5));
            }
        });
        (address, close, accepted)
    }

    #[test]
    fn a_kept_alive_connection_the_peer_closed_while_the_worker_was_busy_is_not_reused() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (address, close, accepted) = one_answer_per_connection();
            let peer: Arc<str> = address.into();
            let pool = Http1Pool::default();
            assert!(pool.post(&peer, &[], b"{}").await.is_ok());
            close.send(()).unwrap();
            // The worker is busy (it does not poll for events), so its runtime has not seen the close.
            std::thread::sleep(Duration::from_millis(50));
            let answer = pool.post(&peer, &[], b"{}").await;
            assert!(answer.is_ok(), "a dead kept-alive connection was reused: {answer:?}");
            assert_eq!(
                accepted.load(std::sync::atomic::Ordering::SeqCst),
                2,
                "a fresh connection carried it"
            );
        });
    }

    #[test]
    fn a_kept_alive_connection_reset_before_the_request_was_read_carries_it_on_a_fresh_one() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer: Arc<str> = listener.local_addr().unwrap().to_string().into();
        let server = std::thread::spawn(move || {
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
            let (mut first, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = first.read(&mut request);
            first.write_all(answer).unwrap();
            // A node dying as the next request arrives: one byte read, the rest left unread, so
            // closing resets the connection.
            let _ = first.read(&mut request[..1]);
            drop(first);
            let (mut second, _) = listener.accept().unwrap();
            let _ = second.read(&mut request);
            second.write_all(answer).unwrap();
        });
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let pool = Http1Pool::default();
            assert!(pool.post(&peer, &[], b"{}").await.is_ok());
            let answer = pool.post(&peer, &[], b"{}").await;
            assert!(answer.is_ok(), "a request the peer never read was not carried again: {answer:?}");
        });
        server.join().unwrap();
    }

    #[test]
    fn answers_small_and_large_come_back_whole_on_one_kept_alive_connection() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer: Arc<str> = listener.local_addr().unwrap().to_string().into();
        let large = "x".repeat(COPY_LIMIT + 1);
        let bodies = ["{\"n\":1}".to_string(), large.clone(), "{}".to_string(), large, "[2]".to_string()];
        let answers = bodies.clone();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            for body in answers {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                // The head and the body in separate writes, as a slow peer might send them.
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(body.as_bytes()).unwrap();
            }
            // One connection carried them all: a second accept would block the join below.
        });
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let pool = Http1Pool::default();
            for expected in &bodies {
                let answer = pool.post(&peer, &[], b"{}").await.expect("answered");
                assert_eq!(answer.body, expected.as_bytes(), "an answer of {} bytes", expected.len());
            }
        });
        server.join().unwrap();
    }

    #[test]
    fn a_request_is_one_buffer_with_its_length() {
        let request = encode_request("127.0.0.1:9", &[("x-a", "1")], b"{}");
        assert_eq!(
            String::from_utf8(request).unwrap(),
            "POST / HTTP/1.1\r\nhost: 127.0.0.1:9\r\ncontent-type: application/json\r\nx-a: 1\r\n\
             content-length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn heads_say_how_the_body_ends() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").unwrap().unwrap();
        assert_eq!(
            (head.status, head.length, head.content_length, head.keep_alive),
            (StatusCode::OK, 38, Some(5), true)
        );
        let head = parse_head(b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert_eq!((head.content_length, head.keep_alive), (None, false));
        let head = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(!head.keep_alive, "HTTP/1.0 closes unless told otherwise");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le").unwrap().is_none());
    }

    #[test]
    fn what_cannot_be_read_safely_is_an_error() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: many\r\n\r\n",
            b"SMTP ready\r\n\r\n",
        ] {
            let error = parse_head(bad).err().expect("refused");
            assert!(!error.is_not_sent(), "a bad answer means the request went out: {error}");
        }
    }
}
