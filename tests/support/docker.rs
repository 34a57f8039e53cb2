//! Deploying examples with `--runner docker` as a user would, for the black-box tests: the
//! binaries built once, each app under a unique name and port, removed by label when its test
//! ends however it ends, and every command bounded in time. Where no Docker engine answers, a
//! test skips (saying so on stderr), unless `MP_REQUIRE_DOCKER=1` makes that a failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest any one command may take: a cold deploy builds an image from a ~70 MB debug binary.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);

pub const APP_LABEL: &str = "io.metaparticle.app";

/// Paths of the binaries a user would run.
pub struct Binaries {
    pub dir: PathBuf,
    pub client: PathBuf,
}

/// Builds the examples and the client once, or returns `None` (after saying so) without an engine.
pub fn binaries_or_skip() -> Option<&'static Binaries> {
    if !engine_answers() {
        return skip("no Docker engine answers");
    }
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    Some(BINARIES.get_or_init(build_binaries))
}

/// Says why a test skips and returns `None`; with `MP_REQUIRE_DOCKER=1` (CI) a skip is a failure.
pub fn skip<T>(why: &str) -> Option<T> {
    if std::env::var("MP_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
        panic!("{why}, and MP_REQUIRE_DOCKER=1 requires the Docker tests to run");
    }
    // Straight to stderr, past the test harness's capture: a skip must be visible in `cargo test`.
    let _ = writeln!(std::io::stderr(), "skipped: {why} (set MP_REQUIRE_DOCKER=1 to make this a failure)");
    None
}

pub fn engine_answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The programs a user runs: every example and the client, built once for all tests (see
/// `support::binary`: `cargo test` alone builds examples only in test mode).
pub fn build_binaries() -> Binaries {
    let client = super::binary("metaparticle");
    Binaries { dir: super::target_dir(), client }
}

/// One app deployed by a test, removed by label when the test ends, however it ends.
pub struct Deployed {
    pub bins: &'static Binaries,
    pub example: &'static str,
    pub name: String,
    pub port: u16,
    pub home: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Deployed {
    pub fn new(bins: &'static Binaries, example: &'static str) -> Self {
        // Unique per test, even for two tests of one example running at once.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("mptest-{example}-{}-{n}", std::process::id());
        let port = super::free_port();
        let home = tempfile::tempdir().expect("a temporary METAPARTICLE_HOME");
        Deployed { bins, example, name, port, home, env: Vec::new() }
    }

    /// Sets `name=value` in the environment of every command the test runs for this app.
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Runs the example with `args` and the test's app name, port and home.
    pub fn run_unchecked(&self, args: &[&str]) -> Output {
        let program = self.bins.dir.join("examples").join(self.example);
        let mut command = Command::new(&program);
        command
            .args(args)
            .args(["--runner", "docker", "--app", &self.name, "--port", &self.port.to_string()])
            .env("METAPARTICLE_HOME", self.home.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        run_bounded(&mut command)
    }

    /// [`Deployed::run_unchecked`], failing the test if the command fails.
    pub fn run(&self, args: &[&str]) -> Output {
        let program = self.bins.dir.join("examples").join(self.example);
        let output = self.run_unchecked(args);
        assert!(
            output.status.success(),
            "{} {args:?} failed:\n{}\n{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Deploys the app; returns what `up` printed.
    pub fn up(&self) -> String {
        let started = Instant::now();
        let output = self.run(&["up"]);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(stdout.contains(&format!("listens on http://127.0.0.1:{}/", self.port)), "{stdout}");
        eprintln!("deployed {} in {:.2}s", self.name, started.elapsed().as_secs_f64());
        stdout
    }

    /// Calls `service` through the `metaparticle` client, as a user would.
    pub fn call(&self, service: &str) -> Value {
        let output = self.client(&["call", service]);
        assert!(
            output.status.success(),
            "calling {service} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("the client prints one JSON line")
    }

    /// Runs the `metaparticle` client with `args` against this app's home.
    pub fn client(&self, args: &[&str]) -> Output {
        let mut command = Command::new(&self.bins.client);
        command.args(args).env("METAPARTICLE_HOME", self.home.path());
        run_bounded(&mut command)
    }

    /// How many objects of `kind` (`ps -a`, `network ls`, `volume ls`) carry the app's label.
    pub fn labelled(&self, kind: &str) -> usize {
        let filter = format!("label={APP_LABEL}={}", self.name);
        let mut args: Vec<&str> = match kind {
            "ps" => vec!["ps", "-a"],
            "network" => vec!["network", "ls"],
            "volume" => vec!["volume", "ls"],
            other => panic!("unknown kind {other}"),
        };
        args.extend(["-q", "--filter", &filter]);
        let output = run_bounded(Command::new("docker").args(&args));
        assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).lines().filter(|l| !l.trim().is_empty()).count()
    }

    pub fn delete_and_check_nothing_remains(&self) {
        let started = Instant::now();
        self.run(&["delete"]);
        eprintln!("deleted {} in {:.2}s", self.name, started.elapsed().as_secs_f64());
        for kind in ["ps", "network", "volume"] {
            assert_eq!(self.labelled(kind), 0, "{kind}: objects labelled {APP_LABEL}={} remain", self.name);
        }
        assert!(!self.home.path().join("apps").join(&self.name).exists(), "the deployment record remains");
    }
}

impl Drop for Deployed {
    /// Removes whatever carries the app's label, with the CLI, so a failed test leaves nothing behind.
    fn drop(&mut self) {
        let filter = format!("label={APP_LABEL}={}", self.name);
        for (list, remove) in [
            (vec!["ps", "-aq"], vec!["rm", "-f"]),
            (vec!["network", "ls", "-q"], vec!["network", "rm"]),
            (vec!["volume", "ls", "-q"], vec!["volume", "rm", "-f"]),
        ] {
            let Ok(listed) = Command::new("docker").args(&list).args(["--filter", &filter]).output() else {
                return;
            };
            let ids: Vec<String> =
                String::from_utf8_lossy(&listed.stdout).split_whitespace().map(String::from).collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(&remove).args(&ids).stdout(Stdio::null()).status();
            }
        }
        // The image is the app's too; tests build fresh names each run, so do not let them pile up.
        let _ = Command::new("docker")
            .args(["image", "ls", "-q", "--filter", &format!("reference=metaparticle/{}", self.name)])
            .output()
            .map(|listed| {
                let ids: Vec<String> =
                    String::from_utf8_lossy(&listed.stdout).split_whitespace().map(String::from).collect();
                if !ids.is_empty() {
                    let _ = Command::new("docker")
                        .args(["image", "rm", "-f"])
                        .args(&ids)
                        .stdout(Stdio::null())
                        .status();
                }
            });
    }
}

/// Runs a command to completion, killing it if it outlives `COMMAND_TIMEOUT`.
pub fn run_bounded(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    // Drain the pipes on threads so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut buf);
        buf
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{command:?} took longer than {}s", COMMAND_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}
