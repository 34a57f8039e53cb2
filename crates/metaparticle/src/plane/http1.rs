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

/// A connection waiting for its next request.
struct Idle {
    stream: TcpStream,
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
        let (mut stream, reused) = match self.checkout(peer) {
            Some(stream) => (stream, true),
            None => (connect(peer).await?, false),
        };
        if let Err(e) = stream.write_all(&request).await {
            if !reused {
                return Err(SendError::NotSent(e.to_string()));
            }
            // The peer closed a kept-alive connection before this request reached it: nothing
            // ran, so a fresh connection may carry it.
            stream = connect(peer).await?;
            stream.write_all(&request).await.map_err(|e| SendError::NotSent(e.to_string()))?;
        }
        let (answer, keep_alive) = read_response(&mut stream).await?;
        if keep_alive {
            self.checkin(peer, stream);
        }
        Ok(answer)
    }

    /// A kept-alive connection to `peer` that is still open and not about to be closed.
    fn checkout(&self, peer: &Arc<str>) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let connections = idle.get_mut(peer)?;
        while let Some(Idle { stream, since }) = connections.pop() {
            if since.elapsed() < IDLE_LIMIT && is_open(&stream) {
                return Some(stream);
            }
        }
        None
    }

    fn checkin(&self, peer: &Arc<str>, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let connections = idle.entry(peer.clone()).or_default();
        if connections.len() < MAX_IDLE_PER_PEER {
            connections.push(Idle { stream, since: Instant::now() });
        }
    }
}

/// Whether an idle connection is still open: the peer has neither closed it nor sent anything
/// unasked (which would be a protocol error on an idle HTTP/1.1 connection).
fn is_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

async fn connect(peer: &str) -> Result<TcpStream, SendError> {
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
    Ok(stream)
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

/// Reads one response, and whether the connection may carry another request.
async fn read_response(stream: &mut TcpStream) -> Result<(Answer, bool), SendError> {
    let mut buffer = BytesMut::with_capacity(8 * 1024);
    let head = loop {
        if read_more(stream, &mut buffer).await? == 0 {
            return Err(SendError::Broken("the connection closed before an answer".into()));
        }
        if let Some(head) = parse_head(&buffer)? {
            break head;
        }
        if buffer.len() > MAX_HEAD {
            return Err(SendError::Broken(format!("the answer's head is over {MAX_HEAD} bytes")));
        }
    };
    let _ = buffer.split_to(head.length);
    match head.content_length {
        Some(length) if length > MAX_BODY => Err(SendError::TooLarge(Some(length))),
        Some(length) => {
            while buffer.len() < length {
                buffer.reserve(length - buffer.len());
                if read_more(stream, &mut buffer).await? == 0 {
                    return Err(SendError::Broken(format!(
                        "the connection closed after {} of {length} body bytes",
                        buffer.len()
                    )));
                }
            }
            // Anything after the body would be an answer nobody asked for: do not reuse.
            let keep_alive = head.keep_alive && buffer.len() == length;
            let answer =
                Answer { status: head.status, body: buffer.split_to(length).freeze(), error: head.error };
            Ok((answer, keep_alive))
        }
        None => {
            // Delimited by the peer closing the connection.
            while read_more(stream, &mut buffer).await? > 0 {
                if buffer.len() > MAX_BODY {
                    return Err(SendError::TooLarge(None));
                }
            }
            Ok((Answer { status: head.status, body: buffer.freeze(), error: head.error }, false))
        }
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut BytesMut) -> Result<usize, SendError> {
    if buffer.capacity() - buffer.len() < 1024 {
        buffer.reserve(8 * 1024);
    }
    stream.read_buf(buffer).await.map_err(|e| SendError::Broken(e.to_string()))
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
