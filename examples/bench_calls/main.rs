//! Benchmark: what a call between two services of one app costs, compared in one run with the
//! same callee called directly and with an ordinary internal hop (a balancer) in front of it.
//!
//! ```console
//! $ cargo run --release --example bench_calls                      # 1000 req/s, 5 s a target, 3 rounds
//! $ cargo run --release --example bench_calls -- bench --rate 2000 --seconds 10 --rounds 5 --port 3950
//! ```
//!
//! It deploys itself with the local runner as app `mp-bench-calls`, three exposed services of the
//! same trivial handler, and measures each from outside:
//!
//! | target | path of a request |
//! |---|---|
//! | `callee` | client → the callee's process |
//! | `hop` | client → a balancer → one replica (one ordinary internal hop) |
//! | `caller` | client → the caller's process, whose handler calls `callee` with `ctx.call` → the callee |
//!
//! so that `hop − callee` is what one ordinary hop adds and `caller − callee` what one in-app
//! call adds. Each target is measured at a fixed rate (latency from each request's release
//! time, see `fixed_rate`) and at saturation (`wrk`, or a built-in closed loop without it). Rounds
//! alternate the order of the targets; the summary gives medians and the per-round spread of the
//! ratios, because one round on a shared machine proves little. Everything is torn down at the end.

mod fixed_rate;
#[path = "../bench_balancer/loadgen.rs"]
mod loadgen;
#[path = "../support/percentile.rs"]
mod percentile;
#[path = "../support/self_deploy.rs"]
mod self_deploy;

use std::time::Duration;

use metaparticle as mp;
use serde_json::{json, Value};

const CALLEE: mp::Callee<Value, Value> = mp::Callee::new("callee");

fn handler(request: Value) -> Value {
    json!({ "request": request })
}

fn services() -> Vec<mp::Service> {
    let callee = mp::service(CALLEE, handler).expose();
    let caller = mp::service("caller", |ctx: mp::Context, request: Value| ctx.call(CALLEE, request))
        .calls(CALLEE)
        .expose();
    let hop = mp::service("hop", mp::spread(1, handler)).expose();
    // Exposed in this order: callee on --port, caller on the next port, hop on the one after.
    vec![callee, caller, hop]
}

/// The targets, in port order, with the body each is sent.
const TARGETS: [(&str, &str); 3] = [
    ("direct to the callee", r#"{"jsonrpc":"2.0","method":"callee","params":[{"foo":"bar"}],"id":1}"#),
    ("caller -> callee (ctx.call)", r#"{"jsonrpc":"2.0","method":"caller","params":[{"foo":"bar"}],"id":1}"#),
    ("balancer -> replica (a hop)", r#"{"jsonrpc":"2.0","method":"hop","params":[{"foo":"bar"}],"id":1}"#),
];

/// The bench's settings, from `bench [--rate N] [--seconds N] [--rounds N] [--connections N] [--port N]`.
struct Settings {
    rate: u32,
    seconds: u64,
    rounds: usize,
    connections: usize,
    port: u16,
}

impl Settings {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut settings = Settings { rate: 1000, seconds: 5, rounds: 3, connections: 32, port: 3950 };
        let mut args = args.iter().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |e: std::num::ParseIntError| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--rate" => settings.rate = value.parse().map_err(bad)?,
                "--seconds" => settings.seconds = value.parse().map_err(bad)?,
                "--rounds" => settings.rounds = value.parse().map_err(bad)?,
                "--connections" => settings.connections = value.parse().map_err(bad)?,
                "--port" => settings.port = value.parse().map_err(bad)?,
                other => return Err(format!("unknown flag {other}")),
            }
        }
        if settings.rate == 0 || settings.seconds == 0 || settings.rounds == 0 || settings.connections == 0 {
            return Err("rate, seconds, rounds and connections must be at least 1".into());
        }
        Ok(settings)
    }
}

fn main() -> mp::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !loadgen::runs_the_bench(&args) {
        return mp::serve(services());
    }
    let settings = match Settings::parse(&args) {
        Ok(settings) => settings,
        Err(why) => {
            eprintln!("bench_calls: {why}\nusage: bench_calls bench [--rate N] [--seconds N] [--rounds N] [--connections N] [--port N]");
            std::process::exit(2);
        }
    };
    bench(&settings)
}

const APP: &str = "mp-bench-calls";

fn bench(settings: &Settings) -> mp::Result<()> {
    let mut up = self_deploy::this_program("up", APP);
    up.args(["--port", &settings.port.to_string()]);
    self_deploy::up(up, APP)?;
    let result = measure(settings);
    self_deploy::delete(self_deploy::this_program("delete", APP));
    result
}

/// One round's figures for one target: at the fixed rate, and requests/s at saturation.
#[derive(Clone, Copy, Default)]
struct Figures {
    fixed: fixed_rate::Latencies,
    saturated_rps: f64,
}

fn measure(settings: &Settings) -> mp::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| mp::Error::io("starting a runtime", e))?;
    let address = |i: usize| format!("127.0.0.1:{}", settings.port + i as u16);
    let duration = Duration::from_secs(settings.seconds);
    println!(
        "in-app calls vs direct vs one balancer hop: fixed rate {} req/s over up to {} connections, and saturation \
         with {} connections; {} s a measurement, {} rounds",
        settings.rate, settings.connections, settings.connections, settings.seconds, settings.rounds
    );
    let mut rounds: Vec<[Figures; 3]> = Vec::new();
    for round in 0..settings.rounds {
        println!("round {}", round + 1);
        let mut figures = [Figures::default(); 3];
        // Rotate who goes first, so that a drift of the machine's speed favours no target.
        for k in 0..TARGETS.len() {
            let i = (round + k) % TARGETS.len();
            let (what, body) = TARGETS[i];
            let target = address(i);
            // A short warm-up fills connection pools (ours and the generator's) first.
            runtime.block_on(fixed_rate::run(
                &target,
                body,
                settings.rate,
                Duration::from_secs(1),
                settings.connections,
            ));
            let fixed = runtime.block_on(fixed_rate::run(
                &target,
                body,
                settings.rate,
                duration,
                settings.connections,
            ));
            let sat = loadgen::measure(&runtime, &target, body, settings.connections, duration);
            println!(
                "  {what:<30} at {:.0} req/s: p50 {:>6.3} ms  p99 {:>6.3} ms  errors {}   saturated: {:>7.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  errors {} ({})",
                fixed.rps,
                ms(fixed.p50),
                ms(fixed.p99),
                fixed.errors,
                sat.rps,
                ms(sat.p50),
                ms(sat.p99),
                sat.errors,
                sat.tool
            );
            figures[i] = Figures { fixed, saturated_rps: sat.rps };
        }
        rounds.push(figures);
    }
    summarize(settings, &rounds);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN in measurements"));
    values[values.len() / 2]
}

/// `median (lowest to highest)` of a per-round figure.
fn spread(values: Vec<f64>, digits: usize) -> String {
    let low = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let high = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.digits$} ({low:.digits$} to {high:.digits$})", median(values))
}

/// [`spread`] of a difference, each figure with its sign.
fn signed_spread(values: Vec<f64>, digits: usize) -> String {
    let low = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let high = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    format!("{:+.digits$} ({low:+.digits$} to {high:+.digits$})", median(values))
}

fn summarize(settings: &Settings, rounds: &[[Figures; 3]]) {
    const DIRECT: usize = 0;
    const CALL: usize = 1;
    const HOP: usize = 2;
    let per_round = |f: &dyn Fn(&[Figures; 3]) -> f64| rounds.iter().map(f).collect::<Vec<f64>>();
    println!("median of {} rounds (lowest to highest round in brackets)", rounds.len());
    for (i, (what, _)) in TARGETS.iter().enumerate() {
        println!(
            "  {what:<30} at {} req/s: p50 {} ms  p99 {} ms   saturated: {} req/s",
            settings.rate,
            spread(per_round(&|r| ms(r[i].fixed.p50)), 3),
            spread(per_round(&|r| ms(r[i].fixed.p99)), 3),
            spread(per_round(&|r| r[i].saturated_rps), 0),
        );
    }
    for (what, via) in [("an in-app call adds", CALL), ("one balancer hop adds", HOP)] {
        println!(
            "  {what:<22} at {} req/s: p50 {} ms  p99 {} ms;  saturated requests/s x{}",
            settings.rate,
            signed_spread(per_round(&|r| ms(r[via].fixed.p50) - ms(r[DIRECT].fixed.p50)), 3),
            signed_spread(per_round(&|r| ms(r[via].fixed.p99) - ms(r[DIRECT].fixed.p99)), 3),
            spread(per_round(&|r| r[via].saturated_rps / r[DIRECT].saturated_rps), 2),
        );
    }
    println!(
        "  in-app call / balancer hop: requests/s at saturation x{}",
        spread(per_round(&|r| r[CALL].saturated_rps / r[HOP].saturated_rps), 2)
    );
}
