//! What the standard OpenTelemetry environment variables ask of a node's tracing.
//!
//! Read once when a node starts (through a lookup, so tests need no process environment):
//!
//! | variable | meaning here |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | export spans over OTLP/HTTP to `<endpoint>/v1/traces` |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | export spans to exactly this URL (wins over the above) |
//! | `OTEL_TRACES_EXPORTER` | `otlp` (default) or `none`: record spans (trace ids in logs) without exporting them |
//! | `OTEL_SDK_DISABLED` | `true`: no tracing, whatever else is set |
//! | `OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL` | `http/protobuf` (the default, the only one supported) |
//! | `OTEL_EXPORTER_OTLP[_TRACES]_HEADERS` | `key=value,...` sent with every export |
//! | `OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT` | milliseconds an export may take (default 10000) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | `parentbased_always_on` (default), `always_on`, `always_off`, `traceidratio`, `parentbased_always_off`, `parentbased_traceidratio` |
//! | `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` | how spans are batched (5000 ms, 2048, 512) |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the exported resource (default `service.name`: the node's service) |
//!
//! Without any of them a node records nothing and exports nothing; it still passes a caller's
//! `traceparent` on to every hop, so a trace begun outside the app goes on through it.

use std::time::Duration;

/// Every variable of the table above: the launch contract hands these to every node, so that
/// containers and pods trace as the deployer's environment says. The headers are left out on
/// purpose: they usually hold credentials, which must not be written into a manifest.
pub(crate) const CARRIED: &[&str] = &[
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_EXPORT_TIMEOUT",
];

/// Which new traces a node records, and whether it follows its caller's choice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Sampler {
    /// Record a trace the caller recorded, and not one it did not (`parentbased_*`).
    pub(crate) follow_parent: bool,
    /// The share of traces without a recording caller that are recorded, 0 to 1.
    pub(crate) ratio: f64,
}

impl Sampler {
    /// Whether to record the trace with `trace_low` (the trace id's lowest 8 bytes), given the
    /// caller's choice if there was a caller.
    pub(crate) fn records(&self, parent_sampled: Option<bool>, trace_low: u64) -> bool {
        match parent_sampled {
            Some(sampled) if self.follow_parent => sampled,
            _ if self.ratio >= 1.0 => true,
            _ if self.ratio <= 0.0 => false,
            // As OpenTelemetry's TraceIdRatioBased: the same trace id gets the same answer on
            // every node, so a ratio never cuts a trace in pieces.
            _ => (trace_low >> 1) < (self.ratio * (1u64 << 63) as f64) as u64,
        }
    }
}

/// Where spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OtlpTarget {
    /// `host:port` to connect to.
    pub(crate) address: String,
    /// The `Host` header (the authority as written in the URL).
    pub(crate) host: String,
    /// The path to POST to, e.g. `/v1/traces`.
    pub(crate) path: String,
    /// Headers sent with every export.
    pub(crate) headers: Vec<(String, String)>,
    /// How long one export may take.
    pub(crate) timeout: Duration,
}

/// How spans are batched before export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Batching {
    /// Longest a span waits before its batch is sent.
    pub(crate) delay: Duration,
    /// Spans waiting at most; more are dropped (and counted) rather than slowing requests.
    pub(crate) queue: usize,
    /// Spans per export at most.
    pub(crate) batch: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Self { delay: Duration::from_millis(5000), queue: 2048, batch: 512 }
    }
}

/// A node's tracing, as its environment asks.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TraceConfig {
    /// Whether the node records spans at all. Off, it only passes a caller's trace on.
    pub(crate) recording: bool,
    /// Which traces it records.
    pub(crate) sampler: Sampler,
    /// Where recorded spans are exported; `None`: nowhere (`OTEL_TRACES_EXPORTER=none`).
    pub(crate) export: Option<OtlpTarget>,
    /// How spans are batched.
    pub(crate) batching: Batching,
    /// `OTEL_SERVICE_NAME`, which replaces the node's service as `service.name`.
    pub(crate) service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, added to every exported resource.
    pub(crate) resource: Vec<(String, String)>,
    /// What the node should say about settings it cannot follow (logged when it starts).
    pub(crate) warnings: Vec<String>,
}

impl TraceConfig {
    /// Tracing off: record nothing, export nothing, pass a caller's trace on.
    pub(crate) fn off() -> Self {
        Self {
            recording: false,
            sampler: Sampler { follow_parent: true, ratio: 1.0 },
            export: None,
            batching: Batching::default(),
            service_name: None,
            resource: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The configuration the variables `lookup` gives describe.
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let traces_or = |specific: &str, general: &str| var(specific).or_else(|| var(general));
        let mut config = Self::off();
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return config;
        }
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .map(|url| (url, false))
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|url| (url, true)));
        let exporters = var("OTEL_TRACES_EXPORTER");
        let (wants_otlp, wants_none) = match &exporters {
            Some(list) => {
                let names: Vec<String> = list.split(',').map(|n| n.trim().to_ascii_lowercase()).collect();
                for unknown in names.iter().filter(|n| !matches!(n.as_str(), "otlp" | "none")) {
                    config.warnings.push(format!(
                        "OTEL_TRACES_EXPORTER '{unknown}' is not supported (only otlp and none); ignoring it"
                    ));
                }
                (names.iter().any(|n| n == "otlp"), names.iter().any(|n| n == "none"))
            }
            // The specification's default exporter is otlp; here it takes an endpoint to mean
            // it, so that a program run without any variable stays untraced and as fast.
            None => (endpoint.is_some(), false),
        };
        if !wants_otlp && !wants_none {
            return config;
        }
        config.recording = true;
        config.sampler =
            sampler(var("OTEL_TRACES_SAMPLER"), var("OTEL_TRACES_SAMPLER_ARG"), &mut config.warnings);
        config.batching = Batching {
            delay: millis(var("OTEL_BSP_SCHEDULE_DELAY")).unwrap_or(Batching::default().delay),
            queue: count(var("OTEL_BSP_MAX_QUEUE_SIZE")).unwrap_or(Batching::default().queue),
            batch: count(var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")).unwrap_or(Batching::default().batch),
        };
        config.batching.batch = config.batching.batch.min(config.batching.queue);
        config.service_name = var("OTEL_SERVICE_NAME");
        config.resource = var("OTEL_RESOURCE_ATTRIBUTES").map(|text| key_values(&text)).unwrap_or_default();
        if !wants_otlp {
            return config;
        }
        let protocol = traces_or("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL");
        if let Some(other) = protocol.filter(|p| p != "http/protobuf") {
            config.warnings.push(format!(
                "OTLP protocol '{other}' is not supported; spans are recorded but not exported \
                 (set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and an OTLP/HTTP endpoint, usually port 4318)"
            ));
            return config;
        }
        if let Some(gzip) =
            traces_or("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
                .filter(|c| c != "none")
        {
            config
                .warnings
                .push(format!("OTLP compression '{gzip}' is not supported; spans are sent uncompressed"));
        }
        let (url, append_path) = endpoint.unwrap_or_else(|| ("http://localhost:4318".to_string(), true));
        let timeout = millis(traces_or("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"))
            .unwrap_or(Duration::from_secs(10));
        let headers = traces_or("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
            .map(|text| key_values(&text))
            .unwrap_or_default();
        match target(&url, append_path) {
            Ok((address, host, path)) => {
                config.export = Some(OtlpTarget { address, host, path, headers, timeout });
            }
            Err(why) => config.warnings.push(format!("spans are recorded but not exported: {why}")),
        }
        config
    }
}

fn sampler(name: Option<String>, arg: Option<String>, warnings: &mut Vec<String>) -> Sampler {
    let mut ratio = || match arg.as_deref().map(str::parse::<f64>) {
        None => 1.0,
        Some(Ok(r)) if (0.0..=1.0).contains(&r) => r,
        Some(_) => {
            warnings.push(format!(
                "OTEL_TRACES_SAMPLER_ARG '{}' is not a ratio from 0 to 1; using 1",
                arg.as_deref().unwrap_or_default()
            ));
            1.0
        }
    };
    match name.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("parentbased_always_on") => Sampler { follow_parent: true, ratio: 1.0 },
        Some("always_on") => Sampler { follow_parent: false, ratio: 1.0 },
        Some("always_off") => Sampler { follow_parent: false, ratio: 0.0 },
        Some("parentbased_always_off") => Sampler { follow_parent: true, ratio: 0.0 },
        Some("traceidratio") => Sampler { follow_parent: false, ratio: ratio() },
        Some("parentbased_traceidratio") => Sampler { follow_parent: true, ratio: ratio() },
        Some(other) => {
            warnings
                .push(format!("OTEL_TRACES_SAMPLER '{other}' is not supported; using parentbased_always_on"));
            Sampler { follow_parent: true, ratio: 1.0 }
        }
    }
}

fn millis(text: Option<String>) -> Option<Duration> {
    text?.parse::<u64>().ok().map(Duration::from_millis)
}

fn count(text: Option<String>) -> Option<usize> {
    text?.parse::<usize>().ok().filter(|&n| n > 0)
}

/// `key=value,key2=value2` with percent-encoded values (W3C Baggage's form, which the
/// specification uses for both resource attributes and headers); malformed members are skipped.
fn key_values(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|member| {
            let (key, value) = member.split_once('=')?;
            let key = key.trim();
            (!key.is_empty()).then(|| (key.to_string(), crate::wire::percent::decode(value.trim())))
        })
        .collect()
}

/// `http://host[:port][/path]` as (connect address, Host header, path to POST to).
fn target(url: &str, append_signal_path: bool) -> Result<(String, String, String), String> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => {
            return Err(format!(
                "the endpoint {url} uses TLS, which nodes do not speak; export to a collector over plain \
                 http (such as an OpenTelemetry Collector beside the app) that forwards over TLS"
            ))
        }
        _ => return Err(format!("the endpoint '{url}' is not an http:// URL")),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("the endpoint '{url}' has no plain host[:port]"));
    }
    // An IPv6 literal keeps its brackets in both forms; a missing port is http's.
    let has_port = authority.rsplit_once(':').is_some_and(|(_, port)| !port.contains(']'));
    let address = if has_port { authority.to_string() } else { format!("{authority}:80") };
    let path = if append_signal_path {
        format!("{}/v1/traces", path.trim_end_matches('/'))
    } else if path.is_empty() {
        "/".to_string()
    } else {
        path.to_string()
    };
    Ok((address, authority.to_string(), path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> TraceConfig {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TraceConfig::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn without_variables_nothing_is_recorded_or_exported() {
        assert_eq!(config(&[]), TraceConfig::off());
        assert!(!config(&[("OTEL_SERVICE_NAME", "x")]).recording);
    }

    #[test]
    fn an_endpoint_exports_to_its_traces_path_and_a_traces_endpoint_as_written() {
        let general = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")]);
        assert!(general.recording);
        let target = general.export.unwrap();
        assert_eq!((target.address.as_str(), target.path.as_str()), ("127.0.0.1:4318", "/v1/traces"));
        let specific = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:1"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector/custom/traces"),
        ]);
        let target = specific.export.unwrap();
        assert_eq!((target.address.as_str(), target.host.as_str()), ("collector:80", "collector"));
        assert_eq!(target.path, "/custom/traces");
    }

    #[test]
    fn exporter_none_records_without_exporting_and_disabled_wins_over_everything() {
        let none = config(&[("OTEL_TRACES_EXPORTER", "none"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:1")]);
        assert!(none.recording && none.export.is_none());
        let off = config(&[("OTEL_SDK_DISABLED", "true"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:1")]);
        assert_eq!(off, TraceConfig::off());
    }

    #[test]
    fn what_cannot_be_followed_is_said_and_nothing_is_sent_where_it_would_be_wrong() {
        let grpc = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert!(grpc.recording && grpc.export.is_none());
        assert!(grpc.warnings[0].contains("'grpc' is not supported"), "{:?}", grpc.warnings);
        let tls = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://h:4318")]);
        assert!(tls.export.is_none() && tls.warnings[0].contains("TLS"), "{:?}", tls.warnings);
        let sampler =
            config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h"), ("OTEL_TRACES_SAMPLER", "jaeger_remote")]);
        assert_eq!(sampler.sampler, Sampler { follow_parent: true, ratio: 1.0 });
        assert_eq!(sampler.warnings.len(), 1);
    }

    #[test]
    fn samplers_follow_the_parent_or_a_ratio_the_same_way_on_every_node() {
        let parent_based = Sampler { follow_parent: true, ratio: 0.0 };
        assert!(parent_based.records(Some(true), 0));
        assert!(!parent_based.records(Some(false), u64::MAX));
        assert!(!parent_based.records(None, 0));
        let half = Sampler { follow_parent: false, ratio: 0.5 };
        let recorded =
            (0..10_000u64).filter(|i| half.records(None, i.wrapping_mul(0x9E37_79B9_7F4A_7C15))).count();
        assert!((4_500..5_500).contains(&recorded), "{recorded} of 10000 at ratio 0.5");
        let parsed = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]);
        assert_eq!(parsed.sampler, Sampler { follow_parent: true, ratio: 0.25 });
    }

    #[test]
    fn resource_attributes_and_headers_are_percent_decoded_pairs() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=a%2Cb,broken"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s%3Dcret"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ]);
        assert_eq!(
            c.resource,
            vec![("deployment.environment".into(), "prod".into()), ("team".into(), "a,b".into())]
        );
        assert_eq!(c.export.unwrap().headers, vec![("x-api-key".into(), "s=cret".into())]);
        assert_eq!(c.batching.delay, Duration::from_millis(200));
    }
}
