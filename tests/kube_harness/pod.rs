//! One pod, as the kubelet would start it: its environment resolved from the template (literal
//! values with `$(VAR)` expansion, Secret keys, the downward API), its hostname and subdomain,
//! the DNS names cluster DNS would serve for it, its user, groups and volumes; then one container.

use std::collections::BTreeMap;

use serde_json::Value;

/// What the cluster knows when it starts a pod.
pub struct PodSpec<'a> {
    /// The pod's name (a StatefulSet's `<set>-<ordinal>`, a Deployment's `<deploy>-<hash>-<id>`).
    pub name: String,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its labels, as its controller sets them.
    pub labels: BTreeMap<String, String>,
    /// The template's `spec`.
    pub spec: &'a Value,
    /// `spec.subdomain`: a StatefulSet's `serviceName`.
    pub subdomain: Option<String>,
}

/// A Secret's data, by Secret name and key.
pub type Secrets = BTreeMap<String, BTreeMap<String, String>>;

/// The container's environment in order, resolved as the kubelet resolves it; `Err` is what the
/// kubelet would report (`CreateContainerConfigError`).
pub fn environment(
    pod: &PodSpec,
    container: &Value,
    secrets: &Secrets,
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().ok_or("an env entry without a name")?.to_string();
        let value = if let Some(text) = var["value"].as_str() {
            expand(text, &env)
        } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            field_value(pod, field)?
        } else if let Some(reference) = var["valueFrom"]["secretKeyRef"].as_object() {
            let secret = reference["name"].as_str().unwrap_or_default();
            let key = reference["key"].as_str().unwrap_or_default();
            match secrets.get(secret).and_then(|data| data.get(key)) {
                Some(value) => value.clone(),
                None if reference.get("optional").and_then(Value::as_bool) == Some(true) => continue,
                None => {
                    return Err(format!(
                        "CreateContainerConfigError: {name} needs key '{key}' of Secret '{secret}', which does not exist"
                    ))
                }
            }
        } else if var.get("valueFrom").is_some() {
            return Err(format!("{name}: this harness resolves only fieldRef and secretKeyRef: {var}"));
        } else {
            String::new()
        };
        env.push((name, value));
    }
    Ok(env)
}

/// A downward-API field, as the kubelet resolves it (a label the pod lacks resolves to "").
fn field_value(pod: &PodSpec, field: &str) -> Result<String, String> {
    if let Some(label) = field.strip_prefix("metadata.labels['").and_then(|l| l.strip_suffix("']")) {
        return Ok(pod.labels.get(label).cloned().unwrap_or_default());
    }
    match field {
        "metadata.name" => Ok(pod.name.clone()),
        "metadata.namespace" => Ok(pod.namespace.to_string()),
        other => Err(format!("this harness does not resolve the field {other}")),
    }
}

/// Kubernetes' `$(VAR)` expansion: a reference to a variable defined earlier in the list is
/// replaced by its value, `$$` escapes a `$`, anything else stays as written.
pub fn expand(text: &str, defined: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            out.push('$');
            rest = escaped;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
            match defined.iter().rev().find(|(n, _)| n == name) {
                Some((_, value)) => out.push_str(value),
                None => out.push_str(&format!("$({name})")),
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Every name cluster DNS serves for a Service in `namespace`, shortest first.
pub fn service_names(service: &str, namespace: &str, domain: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{domain}"),
    ]
}

/// The `docker run` arguments (before the image) that give the container what the pod spec asks
/// of its security context: user, groups, capabilities, privilege escalation.
pub fn security_args(spec: &Value, container: &Value) -> Result<Vec<String>, String> {
    let pod = &spec["securityContext"];
    let own = &container["securityContext"];
    let pick = |key: &str| own.get(key).filter(|v| !v.is_null()).or_else(|| pod.get(key)).cloned();
    let mut args = Vec::new();
    let user = pick("runAsUser").and_then(|v| v.as_i64());
    if pick("runAsNonRoot").and_then(|v| v.as_bool()) == Some(true) && user.is_none_or(|u| u == 0) {
        // The kubelet refuses to start it: the image's user would be root.
        return Err("CreateContainerConfigError: runAsNonRoot, but no non-root runAsUser".into());
    }
    if let Some(uid) = user {
        let gid = pick("runAsGroup").and_then(|v| v.as_i64()).unwrap_or(0);
        args.extend(["--user".to_string(), format!("{uid}:{gid}")]);
    }
    if let Some(group) = pod["fsGroup"].as_i64() {
        args.extend(["--group-add".to_string(), group.to_string()]);
    }
    if own["allowPrivilegeEscalation"].as_bool() == Some(false) {
        args.extend(["--security-opt".to_string(), "no-new-privileges".to_string()]);
    }
    for cap in own["capabilities"]["drop"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        args.extend(["--cap-drop".to_string(), cap.to_string()]);
    }
    if own["readOnlyRootFilesystem"].as_bool() == Some(true) {
        args.push("--read-only".to_string());
    }
    Ok(args)
}

/// A memory quantity as Docker reads it (`256Mi` → `256m`), or `None` for forms it does not take.
pub fn docker_memory(quantity: &str) -> Option<String> {
    for (k8s, docker) in [("Ki", "k"), ("Mi", "m"), ("Gi", "g")] {
        if let Some(number) = quantity.strip_suffix(k8s) {
            return number.parse::<u64>().ok().map(|n| format!("{n}{docker}"));
        }
    }
    quantity.parse::<u64>().ok().map(|n| n.to_string())
}

/// The container port a probe or Service names (a number, or a port name of the container).
pub fn container_port(container: &Value, port: &Value) -> Option<u16> {
    if let Some(number) = port.as_u64() {
        return u16::try_from(number).ok();
    }
    let name = port.as_str()?;
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let defined = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &defined), "x-$(B)-$(A)-$");
    }
}
