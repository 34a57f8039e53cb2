//! `metaparticle`: call a deployed metaparticle service from any directory, like the seeds' client.js.
//!
//! ```console
//! $ metaparticle call replicated-service
//! {"request":{"foo":"bar"},"server":"replicated-service.replica-2"}
//! $ metaparticle call sharded-service '{"user":"alice"}'
//! $ metaparticle call simple-service --app shop      # when several apps expose the service
//! $ metaparticle list
//! $ metaparticle dashboard shop                      # a live page of app 'shop' on http://127.0.0.1:3030/
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use metaparticle::client::{CallError, RpcClient};
use metaparticle::deployments::{self, Deployment};
use serde_json::Value;

/// Calls metaparticle services deployed from this machine.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Call a service and print its result as one JSON line.
    Call {
        /// The service (JSON-RPC method) to call.
        service: String,
        /// The request, as JSON.
        #[arg(default_value = r#"{"foo":"bar"}"#)]
        request: String,
        /// Call this address (host:port) instead of looking the service up.
        #[arg(long)]
        address: Option<String>,
        /// The app whose service to call, when several running apps expose one of that name.
        #[arg(long)]
        app: Option<String>,
        /// HTTP Basic credentials `user:password`, for services behind authentication.
        #[arg(long, short)]
        user: Option<String>,
    },
    /// List the deployed apps and their exposed services.
    List,
    /// Serve a live page of a running app on loopback: its topology, every replica's health,
    /// requests per second, p50/p99 latency, errors, restarts and log lines.
    Dashboard {
        /// The app (see `metaparticle list`).
        app: String,
        /// Where the page listens (loopback only; port 0 picks a free port).
        #[arg(long, default_value = metaparticle::dashboard::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    metaparticle::exit_quietly_on_closed_pipe();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime starts");
    let outcome = match args.command {
        Command::Call { service, request, address, app, user } => {
            runtime.block_on(call(&service, &request, address, app.as_deref(), user.as_deref()))
        }
        Command::List => list(),
        Command::Dashboard { app, listen } => {
            runtime.block_on(metaparticle::dashboard::serve(&app, listen)).map_err(|e| e.to_string())
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("metaparticle: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn call(
    service: &str,
    request: &str,
    address: Option<String>,
    app: Option<&str>,
    user: Option<&str>,
) -> Result<(), String> {
    let request: Value = serde_json::from_str(request)
        .map_err(|e| format!("the request is not valid JSON ({e}): {request}"))?;
    let (address, app) = match address {
        Some(a) => (a, None),
        None => locate(service, app)?,
    };
    let client = match user {
        Some(credentials) => {
            let (user, password) = credentials
                .split_once(':')
                .ok_or_else(|| format!("--user takes 'user:password', not '{credentials}'"))?;
            RpcClient::new().with_basic_auth(user, password)
        }
        None => RpcClient::new(),
    };
    match client.call(&address, service, &request).await {
        Ok(result) => {
            println!("{result}");
            Ok(())
        }
        Err(CallError::Unreachable { detail, .. }) if app.is_some() => Err(format!(
            "app '{}' is not running: nothing answers at {address} ({detail}); its record in {} is stale, deploy it again",
            app.unwrap_or_default(),
            deployments::home().display()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Finds the address of an exposed service among the deployed apps (only `app`'s, if given).
/// A service that several apps expose is not guessed at: the caller is asked to choose.
fn locate(service: &str, app: Option<&str>) -> Result<(String, Option<String>), String> {
    let apps = Deployment::all();
    if apps.is_empty() {
        return Err(format!(
            "no metaparticle app is running (none recorded in {}); start one, e.g. `cargo run --example server2`",
            deployments::home().display()
        ));
    }
    let candidates: Vec<&Deployment> = match app {
        Some(name) => {
            let chosen: Vec<&Deployment> = apps.iter().filter(|a| a.app == name).collect();
            if chosen.is_empty() {
                let running: Vec<&str> = apps.iter().map(|a| a.app.as_str()).collect();
                return Err(format!(
                    "app '{name}' is not running; the running apps are: {}",
                    running.join(", ")
                ));
            }
            chosen
        }
        None => apps.iter().collect(),
    };
    let exposing: Vec<(&Deployment, &deployments::Endpoint)> =
        candidates.iter().filter_map(|a| a.endpoint(service).map(|e| (*a, e))).collect();
    match exposing.as_slice() {
        [(app, endpoint)] => Ok((endpoint.address.clone(), Some(app.app.clone()))),
        [] => {
            let known: Vec<String> = candidates
                .iter()
                .flat_map(|a| a.endpoints.iter().map(move |e| format!("{} (app '{}')", e.service, a.app)))
                .collect();
            Err(format!("unknown service '{service}'; the running apps expose: {}", known.join(", ")))
        }
        several => {
            let which: Vec<String> =
                several.iter().map(|(a, e)| format!("'{}' at {}", a.app, e.address)).collect();
            Err(format!(
                "'{service}' is exposed by {} apps: {}; choose one with --app <name>",
                several.len(),
                which.join(", ")
            ))
        }
    }
}

fn list() -> Result<(), String> {
    let apps = Deployment::all();
    if apps.is_empty() {
        println!("no metaparticle app is running");
    }
    for app in apps {
        println!("{} ({} runner, {} processes)", app.app, app.runner, app.plan.process_count());
        for e in &app.endpoints {
            println!("  {:<30} {}", e.service, e.address);
        }
    }
    Ok(())
}
