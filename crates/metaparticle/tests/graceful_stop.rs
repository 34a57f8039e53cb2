//! A node told to stop (SIGTERM, as Kubernetes, Docker and the local supervisor send it) stops
//! taking connections, lets the requests in flight finish within its drain bound, and exits.
//!
//! The node is a real process: this test binary started again with the launch contract's
//! environment, which makes `mp::serve` become the node (see [`node_process`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metaparticle as mp;
use serde_json::{json, Value};

/// The node's services: `slow` sleeps for the milliseconds it is asked to, then says so.
fn services() -> Vec<mp::Service> {
    let slow = |request: Value| async move {
        let ms = request["sleep_ms"].as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        json!({ "slept_ms": ms })
    };
    vec![mp::service("slow", slow).expose()]
}

/// The entry point of the node process: it runs only when [`Node::start`] starts this binary with
/// `MP_NODE` set (hence `#[ignore]`: a plain `cargo test` has nothing to run here).
#[test]
#[ignore = "the node process of the other tests; runs only when they start it"]
fn node_process() {
    assert!(std::env::var("MP_NODE").is_ok(), "run by the graceful-stop tests, with MP_NODE set");
    mp::serve(services()).expect("the node serves and stops cleanly");
}

/// A node process on a free loopback port; killed if the test ends before it exits.
struct Node {
    child: Child,
    address: String,
}

impl Node {
    fn start(drain_seconds: u64) -> Node {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "node_process", "--ignored", "--nocapture", "--test-threads=1"])
            .env("MP_APP", "graceful-test")
            .env("MP_NODE", "slow")
            .env("MP_REPLICA", "0")
            .env("MP_LISTEN", &address)
            .env("MP_ADDRESS_BOOK", "{}")
            .env("MP_SECRET", "test-secret")
            .env("MP_NODE_THREADS", "2")
            .env("MP_DRAIN_SECONDS", drain_seconds.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let node = Node { child, address };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&node.address).is_err() {
            assert!(Instant::now() < deadline, "the node did not listen on {}", node.address);
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit; its exit status, or `None` if it still runs.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one JSON-RPC call on `stream` (kept alive) and reads its answer: status and body.
fn call(stream: &mut TcpStream, request: Value) -> std::io::Result<(u16, Value)> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "slow", "params": [request]}).to_string();
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("no answer: {status_line:?}"))
    })?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

fn connect(address: &str) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_refuses_new_ones_and_exits() {
    let mut node = Node::start(20);
    // A kept-alive connection that sits idle must not hold the node up.
    let mut idle = connect(&node.address);
    assert_eq!(call(&mut idle, json!({})).unwrap().1["result"], json!({"slept_ms": 0}));

    let address = node.address.clone();
    let in_flight = std::thread::spawn(move || call(&mut connect(&address), json!({"sleep_ms": 1500})));
    std::thread::sleep(Duration::from_millis(400));
    let terminated = Instant::now();
    node.terminate();

    // Well before the request in flight is done, new callers are refused.
    let refusing = Instant::now() + Duration::from_secs(1);
    while TcpStream::connect(&node.address).is_ok() {
        assert!(Instant::now() < refusing, "a stopping node refuses new connections");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, answer) = in_flight.join().unwrap().expect("the request in flight gets its answer");
    assert_eq!((status, &answer["result"]), (200, &json!({"slept_ms": 1500})), "{answer}");
    let exited = node.wait_exit(Duration::from_secs(5));
    let stderr = node.stderr();
    let status = exited.unwrap_or_else(|| panic!("the node did not exit after draining:\n{stderr}"));
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(
        terminated.elapsed() < Duration::from_secs(4),
        "it exited once the request was done, not at the drain bound: {:?}",
        terminated.elapsed()
    );
    assert!(stderr.contains("stopping"), "it says so in its log:\n{stderr}");
}

#[test]
fn a_request_longer_than_the_drain_bound_does_not_hold_the_node() {
    let mut node = Node::start(1);
    let address = node.address.clone();
    let in_flight = std::thread::spawn(move || call(&mut connect(&address), json!({"sleep_ms": 60_000})));
    std::thread::sleep(Duration::from_millis(300));
    let terminated = Instant::now();
    node.terminate();
    let exited = node.wait_exit(Duration::from_secs(10));
    let stderr = node.stderr();
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}\n{stderr}");
    let took = terminated.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "it waited for the 1 s bound, not for the request: {took:?}"
    );
    assert!(in_flight.join().unwrap().is_err(), "the cut request gets no answer");
    assert!(stderr.contains("still busy"), "it says what it dropped:\n{stderr}");
}
