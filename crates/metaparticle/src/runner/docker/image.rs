//! The app's image: built from the running program itself, `FROM scratch`, no registry needed.
//!
//! The program is one binary that plays every role, so the image holds exactly that binary (as
//! `/app`) plus what the kernel needs to start it: a glibc-linked binary needs its shared libraries
//! and the dynamic loader, found by asking the loader which libraries the binary needs (`ldd`,
//! which is the loader's own `--list`). They are copied at their own paths, so the loader finds
//! them where the binary was linked to look. A statically linked binary needs none.
//!
//! The build context is a tar assembled in memory with fixed modes and timestamps, so the same
//! files always give the same bytes; its SHA-256 is the image tag. An unchanged binary therefore
//! maps to an image that already exists, and `up` skips the build.

use std::path::{Path, PathBuf};

use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListImagesOptionsBuilder, PushImageOptionsBuilder, RemoveImageOptionsBuilder,
    TagImageOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::engine::{self, failed};
use super::error::DockerError;
use super::labels;
use super::progress::Progress;

type Result<T, E = DockerError> = std::result::Result<T, E>;

/// Where the program sits inside the image.
pub(crate) const BINARY_IN_IMAGE: &str = "/app";

/// The environment variable naming a registry to tag and push the image to (as in the seeds).
pub(crate) const REGISTRY_ENV: &str = "DOCKER_REGISTRY";

/// A build context ready to send, and the tag its content gives.
pub(crate) struct Context {
    /// The tar bytes.
    pub tar: Vec<u8>,
    /// `metaparticle/<app>:<first 16 hex digits of the context's SHA-256>`.
    pub tag: String,
    /// The files it holds (path in the image, size), for messages.
    pub files: Vec<(String, u64)>,
}

/// Assembles the build context of `binary` for `app`.
pub(crate) fn context(app: &str, binary: &Path) -> Result<Context> {
    let mut files: Vec<(String, PathBuf)> = vec![(BINARY_IN_IMAGE.to_string(), binary.to_path_buf())];
    for library in shared_libraries(binary)? {
        files.push((library.to_string_lossy().into_owned(), library));
    }
    let mut builder = tar::Builder::new(Vec::new());
    let mut listed = Vec::new();
    append(&mut builder, "Dockerfile", dockerfile(app).as_bytes(), 0o644)?;
    // glibc's defaults without this file would be the same, but naming the order (the app
    // network's embedded DNS resolves peer containers) keeps lookups explicit.
    append(&mut builder, "rootfs/etc/nsswitch.conf", b"hosts: files dns\n", 0o644)?;
    for (in_image, on_host) in &files {
        // `read` follows symlinks: the loader path is usually a link, the image gets the file.
        let bytes = std::fs::read(on_host)
            .map_err(|e| DockerError::io(format!("reading {} for the image", on_host.display()), e))?;
        append(&mut builder, &format!("rootfs{in_image}"), &bytes, 0o755)?;
        listed.push((in_image.clone(), bytes.len() as u64));
    }
    let tar = builder.into_inner().map_err(|e| DockerError::io("assembling the image's build context", e))?;
    let digest = Sha256::digest(&tar);
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(Context { tar, tag: format!("{}:{hash}", repository(app)), files: listed })
}

/// The version an image tag names: its content hash (`metaparticle/app:<hash>`).
pub(crate) fn version_of(tag: &str) -> String {
    tag.rsplit_once(':').map_or(tag, |(_, hash)| hash).to_string()
}

/// The image repository of an app (Docker requires lowercase).
pub(crate) fn repository(app: &str) -> String {
    format!("metaparticle/{}", app.to_ascii_lowercase())
}

/// The image's recipe; its labels come with the build request. `app` is part of the context so
/// that two apps built from one binary get distinct content, hence distinct tags.
fn dockerfile(app: &str) -> String {
    format!("# metaparticle app {app}\nFROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"{BINARY_IN_IMAGE}\"]\n")
}

fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, path, bytes)
        .map_err(|e| DockerError::io(format!("adding {path} to the image's build context"), e))
}

/// The shared libraries and loader a dynamically linked binary needs, as absolute paths.
///
/// `ldd` is glibc's loader run in list mode: it resolves the binary's needs exactly as a start
/// would (search paths, `ld.so.cache`, transitive dependencies), which parsing the ELF by hand
/// would have to re-implement.
pub(crate) fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = std::process::Command::new("ldd").arg(binary).output().map_err(|e| {
        DockerError::io("running ldd to find the program's shared libraries (is glibc's ldd installed?)", e)
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        // A static binary needs nothing besides itself.
        if text.contains("not a dynamic executable") || errors.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(DockerError::Image(format!("ldd {} failed: {}", binary.display(), errors.trim())));
    }
    parse_ldd(&text).map_err(|missing| {
        DockerError::Image(format!(
            "{} needs shared libraries this machine lacks ({missing}); the image cannot be built",
            binary.display()
        ))
    })
}

/// The paths in `ldd` output; `Err` names libraries it could not find.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    let mut missing = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            missing.push(line.split_whitespace().next().unwrap_or(line).to_string());
            continue;
        }
        // `libc.so.6 => /lib/.../libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)`, or the
        // kernel's `linux-vdso.so.1 (0x...)`, which has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            paths.push(PathBuf::from(path));
        }
    }
    if missing.is_empty() {
        Ok(paths)
    } else {
        Err(missing.join(", "))
    }
}

/// Whether the engine already holds an image with this tag.
pub(crate) async fn exists(docker: &Docker, tag: &str) -> Result<bool> {
    match docker.inspect_image(tag).await {
        Ok(_) => Ok(true),
        Err(e) if engine::is_not_found(&e) => Ok(false),
        Err(e) => Err(failed(format!("looking for image {tag}"), e)),
    }
}

/// Builds the image of `context`, showing the engine's steps; a failure carries the engine's message.
pub(crate) async fn build(docker: &Docker, app: &str, context: Context, progress: &Progress) -> Result<()> {
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&context.tag)
        .rm(true)
        .forcerm(true)
        .labels(&labels::app_labels(app))
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.tar.into())));
    let mut last_lines: Vec<String> = Vec::new();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| failed(format!("building image {}", context.tag), e))?;
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            return Err(DockerError::Build {
                tag: context.tag,
                message: format!(
                    "the engine said: {}{}",
                    detail.trim(),
                    if last_lines.is_empty() {
                        String::new()
                    } else {
                        format!("\n{}", last_lines.join("\n"))
                    }
                ),
            });
        }
        if let Some(line) = info.stream.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
            progress.detail(line);
            last_lines.push(line.to_string());
            if last_lines.len() > 5 {
                last_lines.remove(0);
            }
        }
    }
    // The stream ends without an error even when the engine gave up early; trust only the tag.
    if !exists(docker, &context.tag).await? {
        return Err(DockerError::Build {
            tag: context.tag,
            message: format!(
                "it ended but the engine holds no such image; its last lines:\n{}",
                last_lines.join("\n")
            ),
        });
    }
    Ok(())
}

/// Removes the app's images but those tagged as in `keep` (the running build and the one
/// `rollback` returns to): a rebuilt debug binary is ~70 MB, and a dev loop of
/// `cargo run -- --runner docker` would otherwise pile them up. Best effort: an image a container
/// still uses is refused by the engine and stays.
pub(crate) async fn prune_older(docker: &Docker, app: &str, keep: &[String]) -> usize {
    let options = ListImagesOptionsBuilder::default().filters(&labels::app_filter(app)).build();
    let Ok(images) = docker.list_images(Some(options)).await else { return 0 };
    let mut removed = 0;
    for image in images.into_iter().filter(|i| !i.repo_tags.iter().any(|t| keep.contains(t))) {
        let options = RemoveImageOptionsBuilder::default().force(false).build();
        if docker.remove_image(&image.id, Some(options), None).await.is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Tags `tag` for `registry` and pushes it; returns the pushed name. Credentials come from the
/// engine's side (a registry without auth, or one the engine is logged in to).
pub(crate) async fn push(docker: &Docker, tag: &str, registry: &str, progress: &Progress) -> Result<String> {
    let (repo, version) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
    let name = repo.rsplit('/').next().unwrap_or(repo);
    let target_repo = format!("{}/{name}", registry.trim_end_matches('/'));
    docker
        .tag_image(tag, Some(TagImageOptionsBuilder::default().repo(&target_repo).tag(version).build()))
        .await
        .map_err(|e| failed(format!("tagging {tag} as {target_repo}:{version}"), e))?;
    let pushed = format!("{target_repo}:{version}");
    progress.stage(format!("pushing {pushed}"));
    let mut stream =
        docker.push_image(&target_repo, Some(PushImageOptionsBuilder::default().tag(version).build()), None);
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| failed(format!("pushing {pushed}"), e))?;
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            return Err(DockerError::Push { image: pushed, message });
        }
        if let Some(status) = info.status {
            progress.detail(&status);
        }
    }
    Ok(pushed)
}

/// The registry to push to, if the user named one.
pub(crate) fn registry() -> Option<String> {
    std::env::var(REGISTRY_ENV).ok().filter(|r| !r.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_every_library_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        let paths = parse_ldd(text).unwrap();
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_missing_library_is_named() {
        let text = "\tlibfoo.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x2)\n";
        assert_eq!(parse_ldd(text).unwrap_err(), "libfoo.so.1");
    }

    #[test]
    fn the_same_files_give_the_same_tag() {
        let exe = std::env::current_exe().unwrap();
        let a = context("demo", &exe).unwrap();
        let b = context("demo", &exe).unwrap();
        assert_eq!(a.tag, b.tag);
        assert!(a.tag.starts_with("metaparticle/demo:"));
        assert!(a.files.iter().any(|(p, _)| p == BINARY_IN_IMAGE));
    }
}
