//! Running the examples and the `metaparticle` client as a user would, in a sandbox: a private
//! `METAPARTICLE_HOME` and a free port per test, and a guard that deletes the app even when the
//! test fails.

#![allow(dead_code)]

pub mod docker;
pub mod load;
pub mod observe;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace's debug output directory.
pub fn target_dir() -> PathBuf {
    // Test binaries live in <target>/debug/deps/.
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target/debug").to_path_buf()
}

/// Builds the examples and the client once per test binary (`cargo test` alone does not build
/// plain example binaries), then returns the path of `name` under the target dir.
pub fn binary(relative: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--workspace", "--examples", "--bins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building the examples failed");
    });
    target_dir().join(relative)
}

/// A build of `source` that differs from every other (its hash, so its version and image, do):
/// the binary with `tag` appended, which the loader ignores. Written as `dir/<tag>/<file name>`,
/// so the program's name (and the app's default name) stays the same.
pub fn tagged_build(source: &Path, dir: &Path, tag: &str) -> PathBuf {
    let dir = dir.join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(source.file_name().unwrap());
    let mut bytes = std::fs::read(source).unwrap();
    bytes.extend_from_slice(format!("\nbuild {tag}\n").as_bytes());
    std::fs::write(&path, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` from `address` over a fresh connection: the status and body, or `None` if nothing
/// answers there (yet).
pub fn try_http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// `GET path` on a loopback `port` that must answer: the status and body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    try_http_get(&format!("127.0.0.1:{port}"), path)
        .unwrap_or_else(|| panic!("nothing answered on port {port}"))
}

/// The outcome of a command, with its output as text.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// One example deployed in its own sandbox.
pub struct Sandbox {
    pub home: tempfile::TempDir,
    pub example: String,
    pub port: u16,
    pub extra: Vec<String>,
    /// Variables set for every run of the program (as a user's shell would).
    pub env: Vec<(String, String)>,
}

impl Sandbox {
    pub fn new(example: &str) -> Self {
        Sandbox {
            home: tempfile::tempdir().unwrap(),
            example: example.into(),
            port: free_port(),
            extra: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Runs the example program with `args` plus `--port` and any extra flags.
    pub fn program(&self, args: &[&str]) -> Run {
        let mut command = self.program_command(args);
        command.output().expect("running the example").into()
    }

    pub fn program_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary(&format!("examples/{}", self.example)));
        command.args(args).arg("--port").arg(self.port.to_string()).args(&self.extra);
        command.env("METAPARTICLE_HOME", self.home.path()).env_remove("CARGO");
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs the `metaparticle` client.
    pub fn client(&self, args: &[&str]) -> Run {
        Command::new(binary("metaparticle"))
            .args(args)
            .env("METAPARTICLE_HOME", self.home.path())
            .current_dir(std::env::temp_dir())
            .output()
            .expect("running metaparticle")
            .into()
    }

    /// `metaparticle call <service> [request]`, asserting success; the printed JSON.
    pub fn call(&self, service: &str, request: Option<&str>) -> serde_json::Value {
        let mut args = vec!["call", service];
        args.extend(request);
        let run = self.client(&args);
        assert!(run.ok, "call {service} failed: {}", run.stderr);
        assert_eq!(run.stdout.lines().count(), 1, "one JSON line: {}", run.stdout);
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
    }

    /// Deploys, asserting success; the output.
    pub fn up(&self) -> Run {
        let run = self.program(&["up"]);
        assert!(run.ok, "up failed:\n{}\n{}", run.stdout, run.stderr);
        run
    }

    /// The app's name: `--app` among the extra flags, else the example's.
    pub fn app(&self) -> &str {
        let named = self.extra.iter().position(|f| f == "--app").and_then(|i| self.extra.get(i + 1));
        named.unwrap_or(&self.example)
    }

    pub fn app_dir(&self) -> PathBuf {
        self.home.path().join("apps").join(self.app())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Best effort: whatever the test did, no process of the app outlives it.
        if self.app_dir().exists() {
            let _ = self.program_command(&["delete"]).output();
        }
    }
}
