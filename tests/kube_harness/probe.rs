//! Probes as the kubelet runs them: HTTP GET (a status from 200 to 399 passes) or a TCP connect,
//! from outside the pod to its address, at the probe's period, each within its timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{pod, Cluster, Pod};

/// Polls every pod's readiness probe at its period until all pass, or fails after `within`
/// naming the pods that are not ready, with their state and last log lines.
pub fn wait_ready(cluster: &Cluster, within: Duration) -> Result<(), String> {
    let started = Instant::now();
    let mut ready = vec![false; cluster.pods().len()];
    let mut next = vec![Instant::now(); cluster.pods().len()];
    for (i, pod) in cluster.pods().iter().enumerate() {
        let delay = pod.spec["containers"][0]["readinessProbe"]["initialDelaySeconds"].as_u64().unwrap_or(0);
        next[i] = started + Duration::from_secs(delay);
    }
    while ready.iter().any(|r| !r) {
        if started.elapsed() > within {
            let stuck: Vec<String> = cluster
                .pods()
                .iter()
                .zip(&ready)
                .filter(|(_, r)| !**r)
                .map(|(pod, _)| {
                    let state = super::docker::docker(&[
                        "inspect",
                        "-f",
                        "{{.State.Status}} (restarts {{.RestartCount}}, exit {{.State.ExitCode}})",
                        &pod.container,
                    ])
                    .unwrap_or_default();
                    format!("{} {}:\n{}", pod.name, state.trim(), cluster.logs(pod))
                })
                .collect();
            return Err(format!("not ready within {within:?}:\n{}", stuck.join("\n")));
        }
        let now = Instant::now();
        for (i, pod) in cluster.pods().iter().enumerate() {
            if ready[i] || now < next[i] {
                continue;
            }
            let Some(probe) = pod.spec["containers"][0].get("readinessProbe") else {
                // No readiness probe: ready once the container runs.
                ready[i] = cluster.ip(pod).is_some();
                continue;
            };
            ready[i] = check(cluster, pod, probe).is_ok();
            let period = probe["periodSeconds"].as_u64().unwrap_or(10);
            next[i] = now + Duration::from_secs(period);
        }
        let earliest = next.iter().zip(&ready).filter(|(_, r)| !**r).map(|(n, _)| *n).min();
        if let Some(wait) = earliest.and_then(|e| e.checked_duration_since(Instant::now())) {
            std::thread::sleep(wait.min(Duration::from_millis(500)));
        }
    }
    Ok(())
}

/// Runs `probe` against `pod` once.
pub fn check(cluster: &Cluster, pod: &Pod, probe: &Value) -> Result<(), String> {
    let ip = cluster.ip(pod).ok_or("the container has no address (not running)")?;
    let container = &pod.spec["containers"][0];
    let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1));
    let (action, port) = if let Some(http) = probe.get("httpGet") {
        ("http", &http["port"])
    } else if let Some(tcp) = probe.get("tcpSocket") {
        ("tcp", &tcp["port"])
    } else {
        return Err(format!("this harness runs HTTP and TCP probes only: {probe}"));
    };
    let port =
        pod::container_port(container, port).ok_or_else(|| format!("probe port {port} is not a port"))?;
    let address: SocketAddr = format!("{ip}:{port}").parse().map_err(|e| format!("{e}"))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(|e| format!("{address}: {e}"))?;
    if action == "tcp" {
        return Ok(());
    }
    let path = probe["httpGet"]["path"].as_str().unwrap_or("/");
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: kube-probe/1.{}\r\nConnection: close\r\n\r\n",
        super::EMULATED_MINOR
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status: u16 = response.get(9..12).and_then(|s| s.parse().ok()).ok_or("no HTTP answer")?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {path}: HTTP {status}"))
    }
}
