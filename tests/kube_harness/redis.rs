//! A real `redis-server` for the pods: an image built FROM scratch out of this machine's Debian
//! binary, its shared libraries and the loader (as the Docker runner builds the program's own
//! image, since no image can be pulled here), and the manifest a user would apply to run it in
//! the cluster.

use std::path::{Path, PathBuf};

use super::docker::docker;

/// The image's repository; the tag is the build's content, so an unchanged Redis is not rebuilt.
const REPOSITORY: &str = "mpk8s-harness-redis";

/// Builds (or finds) the image; its reference, or why it cannot be built here.
pub fn image() -> Result<String, String> {
    let binary = ["/usr/bin/redis-server", "/usr/sbin/redis-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or("redis-server is not installed (apt-get install redis-server)")?;
    let mut files = vec![binary.clone()];
    files.extend(shared_libraries(&binary)?);
    let context = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    for file in &files {
        let bytes = std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
        digest = bytes.iter().fold(digest, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
        let inside = context.path().join("rootfs").join(file.strip_prefix("/").unwrap_or(file));
        std::fs::create_dir_all(inside.parent().expect("a file has a folder")).map_err(|e| e.to_string())?;
        std::fs::write(&inside, bytes).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&inside, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    let tag = format!("{REPOSITORY}:{digest:016x}");
    if docker(&["image", "inspect", &tag]).is_ok() {
        return Ok(tag);
    }
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"{}\"]\n", binary.display()),
    )
    .map_err(|e| e.to_string())?;
    let context_path = context.path().to_str().ok_or("a UTF-8 temporary path")?;
    docker(&[
        "build",
        "-q",
        "--label",
        &format!("{}=redis", super::HARNESS_LABEL),
        "-t",
        &tag,
        context_path,
    ])?;
    Ok(tag)
}

/// The loader's view of what `binary` needs (`ldd`), as absolute paths.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, String> {
    let output = std::process::Command::new("ldd").arg(binary).output().map_err(|e| format!("ldd: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("not found") {
        return Err(format!("{} lacks shared libraries:\n{text}", binary.display()));
    }
    Ok(text
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            path.filter(|p| p.starts_with('/')).map(PathBuf::from)
        })
        .collect())
}

/// What a user applies to run Redis in the namespace: a Service `redis` and a one-pod
/// Deployment whose password comes from the Secret `redis` (key `password`).
pub fn manifest(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: redis
spec:
  selector:
    app: redis
  ports:
  - name: redis
    port: 6379
    targetPort: redis
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: redis
spec:
  replicas: 1
  selector:
    matchLabels:
      app: redis
  template:
    metadata:
      labels:
        app: redis
    spec:
      securityContext:
        runAsNonRoot: true
        runAsUser: 999
        runAsGroup: 999
      containers:
      - name: redis
        image: {image}
        args: ["--port", "6379", "--requirepass", "$(REDIS_PASSWORD)", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
        env:
        - name: REDIS_PASSWORD
          valueFrom:
            secretKeyRef:
              name: redis
              key: password
        ports:
        - name: redis
          containerPort: 6379
        readinessProbe:
          tcpSocket:
            port: redis
          periodSeconds: 1
"#
    )
}
