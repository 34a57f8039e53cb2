//! A real `redis-server` for tests: started on 127.0.0.1 on a free port (and on a Unix socket in
//! its own folder), stopped when dropped.
//!
//! Tests of the Redis backend use the real server (the Debian package `redis-server`), never a
//! mock. On a machine without it, a test calling [`RedisServer::start_or_skip`] prints
//! `skipped: redis-server not installed` and passes, unless `MP_REQUIRE_REDIS=1` is set (as CI
//! sets it), in which case it fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` process owned by a test.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Whether `redis-server` can be run on this machine.
    pub fn installed() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    /// Starts a server, or returns `None` after printing why `test` is skipped.
    ///
    /// # Panics
    /// If `redis-server` is missing and `MP_REQUIRE_REDIS=1`, or if it is installed but does not start.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        if !Self::installed() {
            if std::env::var("MP_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
                panic!("{test}: redis-server not installed, and MP_REQUIRE_REDIS=1 requires it (apt-get install redis-server)");
            }
            // Straight to the process's stderr: the test harness captures `eprintln!` of passing
            // tests, and a skip must show in the run's output.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: redis-server not installed (set MP_REQUIRE_REDIS=1 to make this a failure)"
            );
            return None;
        }
        Some(Self::start().unwrap_or_else(|e| panic!("{test}: {e}")))
    }

    /// Starts a server on a free loopback port, keeping no data on disk.
    pub fn start() -> Result<Self, String> {
        let mut last_error = String::new();
        // The port is found free, then handed to redis-server: another process may take it in
        // between, so a failed start is retried on a new port.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("finding a free port: {e}"))?
                .port();
            let dir = std::env::temp_dir().join(format!("mp-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let mut server = Self { port, dir, child: None };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = e,
            }
        }
        Err(format!("redis-server did not start: {last_error}"))
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(path) = self.unix_socket() {
            // Only its owner may connect, as a deployment's socket would be set up.
            command.arg("--unixsocket").arg(path).args(["--unixsocketperm", "700"]);
        }
        let child = command.spawn().map_err(|e| format!("running redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.try_command(&["PING"]).is_ok_and(|r| r == "PONG") {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!("it exited at once ({status}) on port {}", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        Err(format!("it did not answer PING on port {} within 5s", self.port))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.address())
    }

    /// `redis+unix://<path>` of the server's Unix socket, for a Redis on the nodes' own host;
    /// `None` where the temporary folder's path is too long for a socket's (about 100 bytes).
    ///
    /// ```no_run
    /// let server = metaparticle::testing::RedisServer::start().unwrap();
    /// let storage = server.unix_url().map(metaparticle::StorageConfig::Redis);
    /// ```
    pub fn unix_url(&self) -> Option<String> {
        Some(format!("redis+unix://{}", self.unix_socket()?.display()))
    }

    /// Where the server listens for Unix-socket connections, if the path fits in a socket address.
    fn unix_socket(&self) -> Option<PathBuf> {
        let path = self.dir.join("redis.sock");
        // sun_path holds 108 bytes on Linux, 104 on macOS, with its terminating NUL.
        (path.as_os_str().len() < 100).then_some(path)
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would) and waits for it to be gone.
    pub fn stop(&mut self) {
        self.resume();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP), as a stalled host or a network partition would: connections
    /// stay open, nothing is answered, and what was sent is still executed after [`resume`].
    ///
    /// [`resume`]: RedisServer::resume
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a [paused](RedisServer::pause) server run again, with every key it held.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on the pid of a child this value owns and has not reaped.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    /// Starts the server again on the same port (empty: it keeps no data).
    ///
    /// # Panics
    /// If it does not start.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn().unwrap_or_else(|e| panic!("restarting redis-server: {e}"));
    }

    /// Runs one command and returns the reply as text (`OK`, `1`, the string, or `(nil)`).
    ///
    /// # Panics
    /// If the server does not answer or answers with an error.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// A minimal RESP exchange, so tests do not need `redis-cli`.
    fn try_command(&self, args: &[&str]) -> Result<String, String> {
        let mut stream = TcpStream::connect(self.address()).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request += &format!("${}\r\n{a}\r\n", a.len());
        }
        stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let line = line.trim_end();
        match line.split_at_checked(1) {
            Some(("+" | ":", rest)) => Ok(rest.to_string()),
            Some(("-", rest)) => Err(rest.to_string()),
            Some(("$", "-1")) => Ok("(nil)".into()),
            Some(("$", len)) => {
                let len: usize = len.parse().map_err(|_| format!("bad reply {line}"))?;
                let mut body = vec![0; len + 2];
                reader.read_exact(&mut body).map_err(|e| e.to_string())?;
                body.truncate(len);
                Ok(String::from_utf8_lossy(&body).into_owned())
            }
            _ => Err(format!("unexpected reply '{line}'")),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
