//! The real tools the observability tests check against: an OTLP receiver (Rotel, a collector
//! packaged on PyPI, which decodes what nodes export with the official OTLP definitions),
//! `promtool` (Debian's `prometheus`) and headless Chromium. Each test that needs one skips
//! (saying so on stderr) where it is missing, unless its `MP_REQUIRE_*` variable makes that a
//! failure, as CI does.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Says why a test skips and returns `None`; with `require` set to 1 a skip is a failure.
pub fn skip<T>(why: &str, require: &str) -> Option<T> {
    if std::env::var(require).is_ok_and(|v| v == "1") {
        panic!("{why}, and {require}=1 requires this test to run");
    }
    let _ = writeln!(std::io::stderr(), "skipped: {why} (set {require}=1 to make this a failure)");
    None
}

/// The path of `program` on `PATH`, if it is installed.
pub fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// `promtool`, or a skip.
pub fn promtool_or_skip() -> Option<PathBuf> {
    on_path("promtool")
        .or_else(|| skip("promtool is not installed (Debian: prometheus)", "MP_REQUIRE_PROMTOOL"))
}

/// Runs `promtool check metrics` on `text`: `Ok` if it accepts it, else what it said.
pub fn promtool_check(promtool: &Path, text: &str) -> Result<(), String> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

/// One span as the receiver decoded it.
#[derive(Clone, Debug, Default)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub parent_id: String,
    pub span_id: String,
    pub name: String,
    pub kind: String,
    pub attributes: HashMap<String, String>,
    /// The resource's `service.instance.id`: the replica that recorded it.
    pub instance: String,
}

/// A Rotel collector on loopback printing every span it receives; stopped when dropped.
pub struct OtlpReceiver {
    child: Child,
    pub host: String,
    pub http_port: u16,
    output: PathBuf,
    _dir: tempfile::TempDir,
}

impl OtlpReceiver {
    /// Starts the receiver on loopback, or skips without one.
    pub fn start_or_skip() -> Option<Self> {
        Self::start_on_or_skip("127.0.0.1")
    }

    /// Starts the receiver listening on `host` (an address of this machine), or skips.
    pub fn start_on_or_skip(host: &str) -> Option<Self> {
        let Some(agent) = rotel_agent() else {
            return skip(
                "no OTLP receiver is installed (PyPI: rotel; `python3 -m pip install rotel==0.0.1a15`)",
                "MP_REQUIRE_OTLP",
            );
        };
        let dir = tempfile::tempdir().unwrap();
        let (grpc_port, http_port) = (super::free_port(), super::free_port());
        let host = host.to_string();
        let output = dir.path().join("spans.txt");
        let child = Command::new(agent)
            .arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
            .args(["--otlp-http-endpoint", &format!("{host}:{http_port}")])
            .args(["--debug-log", "traces", "--debug-log-verbosity", "detailed", "--exporter", "blackhole"])
            .arg("--pid-file")
            .arg(dir.path().join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.path().join("rotel.log"))
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(&output).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("the OTLP receiver starts");
        let receiver = OtlpReceiver { child, host: host.clone(), http_port, output, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((host.as_str(), http_port)).is_err() {
            assert!(Instant::now() < deadline, "the OTLP receiver did not listen on {http_port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(receiver)
    }

    /// The `OTEL_EXPORTER_OTLP_ENDPOINT` of this receiver.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.http_port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        parse(&std::fs::read_to_string(&self.output).unwrap_or_default())
    }

    /// The spans of `trace`, once there are at least `count` (or after `wait`).
    pub fn spans_of(&self, trace: &str, count: usize, wait: Duration) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + wait;
        loop {
            let spans: Vec<ReceivedSpan> = self.spans().into_iter().filter(|s| s.trace_id == trace).collect();
            if spans.len() >= count || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rotel's agent: `MP_ROTEL_AGENT`, else the one its PyPI package installed.
fn rotel_agent() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MP_ROTEL_AGENT") {
        return Some(PathBuf::from(path));
    }
    let output = Command::new("python3")
        .args(["-c", "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    (output.status.success() && path.is_file()).then_some(path)
}

/// Reads the collector's detailed debug output: resources, then their spans with attributes.
fn parse(text: &str) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    let mut instance = String::new();
    let mut current: Option<ReceivedSpan> = None;
    let mut in_resource = false;
    for raw in text.lines() {
        let line = strip_ansi(raw);
        let line = line.trim();
        if line.starts_with("ResourceSpans #") {
            spans.extend(current.take());
            in_resource = true;
            continue;
        }
        if line.starts_with("Span #") {
            spans.extend(current.take());
            in_resource = false;
            current = Some(ReceivedSpan { instance: instance.clone(), ..Default::default() });
            continue;
        }
        if let Some(rest) = line.strip_prefix("-> ") {
            let Some((key, value)) = rest.split_once(": ") else { continue };
            let value =
                value.split_once('(').map(|(_, v)| v.trim_end_matches(')')).unwrap_or(value).to_string();
            match current.as_mut() {
                Some(span) if !in_resource => {
                    span.attributes.insert(key.to_string(), value);
                }
                _ if key == "service.instance.id" => instance = value,
                _ => {}
            }
            continue;
        }
        let Some(span) = current.as_mut() else { continue };
        let Some((field, value)) = line.split_once(':') else { continue };
        let value = value.trim().to_string();
        match field.trim() {
            "Trace ID" => span.trace_id = value,
            "Parent ID" => span.parent_id = value,
            "ID" => span.span_id = value,
            "Name" => span.name = value,
            "Kind" => span.kind = value,
            _ => {}
        }
    }
    spans.extend(current);
    spans
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Headless Chromium, or a skip.
pub fn chromium_or_skip() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| on_path(name))
        .or_else(|| skip("Chromium is not installed (Debian: chromium)", "MP_REQUIRE_CHROMIUM"))
}

/// A child process killed and reaped when dropped.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
