//! nginx as a round-robin balancer over the same kind of replicas, for comparison.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx; stopped on drop.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

/// Starts nginx on `listen` balancing over `upstreams`; `None` (with the reason) if it cannot.
pub fn start(listen: &str, upstreams: &[String]) -> Result<Nginx, String> {
    let binary = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or("nginx is not installed (apt-get install nginx-light)")?;
    let dir = std::env::temp_dir().join(format!("mp-bench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
    let servers: String = upstreams.iter().map(|u| format!("        server {u};\n")).collect();
    // As close to our balancer as nginx gets: round robin, keep-alive pools, no logging.
    let conf = format!(
        "worker_processes auto;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n    access_log off;\n    upstream replicas {{\n{servers}        keepalive 128;\n    }}\n\
         \x20   server {{\n        listen {listen};\n        location / {{\n            proxy_pass http://replicas;\n\
         \x20           proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n        }}\n    }}\n}}\n",
        dir = dir.display()
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let child = Command::new(binary)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start nginx: {e}"))?;
    let nginx = Nginx { child, dir };
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(listen).is_err() {
        if Instant::now() > deadline {
            return Err("nginx did not start listening within 5s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(nginx)
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-QUIT").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
