//! Tracing: every request carries a W3C `traceparent` through every hop (balancer, shard
//! router, gather root to each leaf, retries, calls between services), and each node records a
//! span per request and per hop attempt, exported over OTLP when the standard OpenTelemetry
//! variables ask for it.
//!
//! | file | what |
//! |---|---|
//! | [`config`] | the `OTEL_*` variables, read once per node |
//! | [`tracer`] | sampling, the spans' hand-over to the exporter thread, OTLP/HTTP |
//! | [`span`] | what a finished span holds |
//! | [`otlp`] | spans as protobuf, per the official OTLP definitions |
//! | [`log_tag`] | log lines that name the trace of the request they were written for |
//!
//! The spans of one request form one tree across processes: a node's server span is the child
//! of its caller's hop; each attempt of a hop it makes is a client span, child of its server
//! span, and the parent of the server span of the replica that got it:
//!
//! ```text
//! frontend (server)                        node, replica, outcome, retries
//! ├── call frontend.replica (client)       attempt 1, replica-0, not sent
//! └── call frontend.replica (client)       attempt 2, replica-1, ok
//!     └── frontend.replica (server)
//!         └── call cart (client)
//!             └── cart (server) ── call cart.shard ── cart.shard (server)   state conflicts
//! ```
//!
//! With tracing off (no variables) a node records nothing and makes no new ids: it only passes
//! a caller's `traceparent` on, so traces begun outside the app continue through it.

pub(crate) mod config;
pub(crate) mod log_tag;
pub(crate) mod otlp;
pub(crate) mod span;
pub(crate) mod tracer;

pub(crate) use config::TraceConfig;
pub(crate) use tracer::Tracer;
