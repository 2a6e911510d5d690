//! `scenario NAME`: resilience and load scenarios for the gateway. Each starts its own mock
//! upstream (in-process) and gateway process, prints a one-line description, runs a bounded
//! load (changing the mock's behaviour mid-run), prints a summary and PASS/FAIL per criterion,
//! and exits non-zero when a criterion fails. See `scenario --list` and loadtests/README.md.
#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_loadtests::harness::stats::{
    fmt_num, kib_per_stream, leak_bound, mib, moved_after, pct, tick_counts, tick_success,
    ticks_between, verdict_table, worst_tick_p99, Verdict,
};
use switchyard_loadtests::harness::{
    self, http_request, metric_for_deployment, metric_sum, DeploymentSpec, GatewayConfig,
    GatewayProc, MockThread, RssSampler,
};
use switchyard_loadtests::loadgen::{self, LoadError, LoadSpec, Mode, Phase, Report};
use switchyard_loadtests::{Behavior, ErrorPreset};

const USAGE: &str = "\
usage: scenario NAME [options]   (normally through loadtests/scenario.sh, which builds first)
       scenario --list

  NAME                  steady | spike | outage | saturation | long-streams | slow-upstream | all
  --scale F             multiply every duration and switch time by F (0.1 to 10)   [1]
  --out DIR             where scenario-NAME-<unix time>.json goes                    [target/loadtests]
  --gateway-bin PATH    gateway binary        [target/release/switchyard next to this binary]

Loopback only; every run is bounded in time and requests; everything started is stopped.
Exit status: 0 every criterion PASS, 1 a criterion FAILs, 2 bad usage, 3 harness failure.
";

const MODEL: &str = "scenario";

struct Options {
    scale: f64,
    out: PathBuf,
    gateway_bin: PathBuf,
}

impl Options {
    /// `secs` scaled.
    fn d(&self, secs: f64) -> Duration {
        Duration::from_secs_f64(secs * self.scale)
    }

    /// `secs` scaled, in seconds.
    fn s(&self, secs: f64) -> f64 {
        secs * self.scale
    }
}

/// What a scenario hands back.
struct Outcome {
    summary: String,
    verdicts: Vec<Verdict>,
    reports: Vec<Report>,
    extra: Value,
}

struct Scenario {
    name: &'static str,
    description: &'static str,
    run: fn(&Options) -> Result<Outcome, String>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "steady",
        description: "steady load: 1000 req/s for 30 s through 2 deployments; success ≥ 99.9 %, p99 ≤ 25 ms, each deployment serves 50 ± 10 %",
        run: steady,
    },
    Scenario {
        name: "spike",
        description: "spike: 200 req/s for 10 s, 2000 req/s (10×) for 10 s, 200 req/s for 10 s; success ≥ 99.9 %, worst per-second p99 ≤ 50 ms in every phase",
        run: spike,
    },
    Scenario {
        name: "outage",
        description: "provider outage: 500 req/s for 30 s over deployments a and b; at 10 s b answers 500; 0 client errors, traffic moved off b within 5 s, b's breaker open",
        run: outage,
    },
    Scenario {
        name: "saturation",
        description: "upstream 429 saturation: 300 req/s; from 5 s both deployments answer 429 (Retry-After 1), at 20 s a recovers; 429s are fast and carry Retry-After, few upstream attempts, then 0 errors",
        run: saturation,
    },
    Scenario {
        name: "long-streams",
        description: "many long streams: 2000 concurrent 10 s streams, three waves of 20 s; ≤ 64 KiB RSS per open stream, no RSS growth from wave 2 to wave 3 (no leak), nothing in flight after",
        run: long_streams,
    },
    Scenario {
        name: "slow-upstream",
        description: "slow upstream: 200 req/s; mock latency 100 ms, then 5 s for 15 s, then 100 ms; deadline 2 s: nothing waits past 2.5 s, failures are shed fast, RSS bounded, ≥ 99 % success in the last 10 s",
        run: slow_upstream,
    },
];

enum Cmd {
    Help,
    List,
    Run(String, Options),
}

fn val(p: &mut lexopt::Parser) -> Result<std::ffi::OsString, String> {
    p.value().map_err(|e| e.to_string())
}

fn parse_args() -> Result<Cmd, String> {
    use lexopt::prelude::*;
    let mut o = Options {
        scale: 1.0,
        out: PathBuf::from("target/loadtests"),
        gateway_bin: harness::default_gateway_bin(),
    };
    let mut name = None;
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(Cmd::Help),
            Long("list") => return Ok(Cmd::List),
            Long("scale") => {
                o.scale = val(&mut p)?
                    .to_string_lossy()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| (0.1..=10.0).contains(s))
                    .ok_or("--scale must be a number from 0.1 to 10")?;
            }
            Long("out") => o.out = PathBuf::from(val(&mut p)?),
            Long("gateway-bin") => o.gateway_bin = PathBuf::from(val(&mut p)?),
            Value(v) if name.is_none() => name = Some(v.to_string_lossy().into_owned()),
            other => return Err(other.unexpected().to_string()),
        }
    }
    let name = name.ok_or("missing scenario NAME (or --list)")?;
    if name != "all" && !SCENARIOS.iter().any(|s| s.name == name) {
        return Err(format!("unknown scenario {name:?} (see --list)"));
    }
    Ok(Cmd::Run(name, o))
}

fn main() -> ExitCode {
    let (name, o) = match parse_args() {
        Ok(Cmd::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Cmd::List) => {
            for s in SCENARIOS {
                println!("{:<14} {}", s.name, s.description);
            }
            return ExitCode::SUCCESS;
        }
        Ok(Cmd::Run(name, o)) => (name, o),
        Err(e) => {
            eprintln!("scenario: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    harness::install_signal_cleanup();
    if let Err(e) = std::fs::create_dir_all(&o.out) {
        eprintln!("scenario: {}: {e}", o.out.display());
        return ExitCode::from(3);
    }
    let chosen: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| name == "all" || s.name == name)
        .collect();
    let mut results = Vec::new();
    let mut harness_failed = false;
    for s in chosen {
        println!("\n=== scenario {}: {}", s.name, s.description);
        if (o.scale - 1.0).abs() > f64::EPSILON {
            println!("(durations scaled by {})", o.scale);
        }
        let t = Instant::now();
        match (s.run)(&o) {
            Ok(outcome) => {
                println!("\n{}", outcome.summary);
                print!("{}", verdict_table(&outcome.verdicts));
                let pass = outcome.verdicts.iter().all(|v| v.pass);
                println!(
                    "\nscenario {}: {} ({:.0} s)",
                    s.name,
                    if pass { "PASS" } else { "FAIL" },
                    t.elapsed().as_secs_f64()
                );
                write_json(&o, s, &outcome);
                results.push((s.name, pass));
            }
            Err(e) => {
                eprintln!("scenario {}: could not run: {e}", s.name);
                harness_failed = true;
                results.push((s.name, false));
            }
        }
    }
    if results.len() > 1 {
        println!("\n=== summary");
        for (n, pass) in &results {
            println!("{n:<14} {}", if *pass { "PASS" } else { "FAIL" });
        }
    }
    if harness_failed {
        ExitCode::from(3)
    } else if results.iter().all(|r| r.1) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn write_json(o: &Options, s: &Scenario, outcome: &Outcome) {
    let path = o
        .out
        .join(format!("scenario-{}-{}.json", s.name, harness::unix_time()));
    let value = json!({
        "scenario": s.name,
        "description": s.description,
        "scale": o.scale,
        "verdicts": outcome.verdicts,
        "extra": outcome.extra,
        "reports": outcome.reports.iter().map(|r| serde_json::to_value(r).unwrap_or(Value::Null)).collect::<Vec<_>>(),
    });
    match serde_json::to_string_pretty(&value) {
        Ok(text) => match std::fs::write(&path, text + "\n") {
            Ok(()) => println!("written: {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        },
        Err(e) => eprintln!("cannot serialise the results: {e}"),
    }
}

// ------------------------------------------------------------------------------------------
// Common pieces

/// A mock upstream and a gateway in front of it: deployment `id` calls mock route `id`.
struct Rig {
    mock: MockThread,
    gw: GatewayProc,
}

fn rig(
    o: &Options,
    routes: &[(&str, Behavior)],
    tune: impl FnOnce(GatewayConfig) -> GatewayConfig,
) -> Result<Rig, String> {
    let mock = MockThread::start(1, Behavior::default()).map_err(|e| e.to_string())?;
    let listen = harness::free_addr().map_err(|e| e.to_string())?;
    let mut config = GatewayConfig::new(listen);
    for (route, behavior) in routes {
        mock.set_behavior(route, behavior.clone());
        config = config.deployment(DeploymentSpec::new(route, MODEL, &mock.route_url(route)));
    }
    let config = tune(config).to_toml();
    let gw =
        GatewayProc::start(&o.gateway_bin, &config, listen, &o.out).map_err(|e| e.to_string())?;
    println!(
        "mock upstream {} (routes: {}), gateway {} (pid {})",
        mock.url(),
        routes.iter().map(|r| r.0).collect::<Vec<_>>().join(", "),
        gw.url(),
        gw.pid()
    );
    Ok(Rig { mock, gw })
}

fn body(stream: bool) -> String {
    let s = if stream { r#","stream":true"# } else { "" };
    format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"Say hello."}}]{s}}}"#)
}

/// An open-loop spec against the gateway; `max_requests` bounded by the phases (+20 %).
fn open_spec(rig: &Rig, phases: Vec<Phase>, stream: bool) -> LoadSpec {
    let total: f64 = phases
        .iter()
        .map(|p| p.rate * p.duration.as_secs_f64())
        .sum();
    let mut spec = LoadSpec::new(
        format!("{}/v1/chat/completions", rig.gw.url()),
        body(stream),
        Mode::Open {
            phases,
            max_in_flight: 10_000,
        },
    );
    spec.stream = stream;
    spec.max_requests = (total * 1.2) as u64 + 100;
    spec.timeout = Duration::from_secs(10);
    spec.threads = 1;
    spec.track_header = Some("x-switchyard-deployment".to_owned());
    spec
}

fn phase(duration: Duration, rate: f64) -> Phase {
    Phase { duration, rate }
}

fn spawn_load(spec: LoadSpec) -> Result<JoinHandle<Result<Report, LoadError>>, String> {
    std::thread::Builder::new()
        .name("load".to_owned())
        .spawn(move || loadgen::run(&spec))
        .map_err(|e| format!("cannot start the load thread: {e}"))
}

fn join_load(h: JoinHandle<Result<Report, LoadError>>) -> Result<Report, String> {
    h.join()
        .map_err(|_| "the load thread panicked".to_owned())?
        .map_err(|e| e.to_string())
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn table(reports: &[&Report]) -> String {
    let mut s = Report::markdown_table(reports);
    for r in reports {
        if !r.errors.is_empty() {
            let errs: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(s, "\n{}: errors {}", r.label, errs.join(", "));
        }
        let statuses: Vec<String> = r
            .status_counts
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(s, "{}: statuses {}", r.label, statuses.join(", "));
    }
    s
}

/// Per second: `second | sent | ok | failed | p99 | tracked header counts`.
fn timeline(r: &Report) -> String {
    let mut s = String::from("| s | sent | ok | failed | p50 ms | p99 ms | served by |\n|---:|---:|---:|---:|---:|---:|---|\n");
    for t in &r.timeline {
        let headers: Vec<String> = t.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            t.second,
            t.sent,
            t.ok,
            t.failed,
            fmt_num(t.p50_ms),
            fmt_num(t.p99_ms),
            headers.join(", ")
        );
    }
    s
}

/// Share of a tick's tracked responses served by `id`.
fn share_of(t: &loadgen::Tick, id: &str) -> Option<f64> {
    let total: u64 = t.headers.values().sum();
    (total > 0).then(|| *t.headers.get(id).unwrap_or(&0) as f64 / total as f64)
}

fn check_fds(needed: u64) -> Result<(), String> {
    match harness::open_files_limit() {
        Some(l) if l < needed => Err(format!(
            "ulimit -n is {l}, this scenario needs about {needed}: run it through loadtests/scenario.sh, or raise the limit (ulimit -n 20000)"
        )),
        _ => Ok(()),
    }
}

// ------------------------------------------------------------------------------------------
// steady

fn steady(o: &Options) -> Result<Outcome, String> {
    let rig = rig(
        o,
        &[("a", Behavior::default()), ("b", Behavior::default())],
        |c| c,
    )?;
    let mut spec = open_spec(&rig, vec![phase(o.d(30.0), 1000.0)], false);
    spec.warmup = Duration::from_secs(1);
    let rss0 = rig.gw.rss_bytes().map_err(|e| e.to_string())?;
    let mut r = loadgen::run(&spec).map_err(|e| e.to_string())?;
    r.label = "1000 req/s".to_owned();
    let rss1 = rig.gw.rss_bytes().map_err(|e| e.to_string())?;
    let total: u64 = r.timeline.iter().flat_map(|t| t.headers.values()).sum();
    let served = |id: &str| -> u64 { r.timeline.iter().filter_map(|t| t.headers.get(id)).sum() };
    let share_a = (total > 0).then(|| served("a") as f64 / total as f64);
    let summary = format!(
        "{}\nserved by a: {}, b: {}; gateway RSS {:.1} MiB before, {:.1} MiB after",
        table(&[&r]),
        served("a"),
        served("b"),
        mib(rss0),
        mib(rss1)
    );
    let verdicts = vec![
        Verdict::at_least("success", Some(r.success_rate * 100.0), 99.9, "%"),
        Verdict::at_most("latency p99", Some(r.latency.p99), 25.0, "ms"),
        Verdict::check(
            "share served by deployment a",
            "50 ± 10 %",
            share_a.map_or("n/a".to_owned(), pct),
            share_a.is_some_and(|s| (0.4..=0.6).contains(&s)),
        ),
    ];
    Ok(Outcome {
        summary,
        verdicts,
        reports: vec![r],
        extra: json!({"rss_before": rss0, "rss_after": rss1}),
    })
}

// ------------------------------------------------------------------------------------------
// spike

fn spike(o: &Options) -> Result<Outcome, String> {
    let rig = rig(
        o,
        &[("a", Behavior::default()), ("b", Behavior::default())],
        |c| c,
    )?;
    let p = o.d(10.0);
    let mut spec = open_spec(
        &rig,
        vec![phase(p, 200.0), phase(p, 2000.0), phase(p, 200.0)],
        false,
    );
    spec.warmup = Duration::from_secs(1);
    let sampler = RssSampler::start(rig.gw.pid(), Duration::from_millis(250));
    let mut r = loadgen::run(&spec).map_err(|e| e.to_string())?;
    let rss = sampler.finish();
    r.label = "200 → 2000 → 200 req/s".to_owned();
    let ps = p.as_secs_f64();
    let bounds = [(0.0, ps), (ps, 2.0 * ps), (2.0 * ps, 3.0 * ps)];
    let names = [
        "before (200 req/s)",
        "spike (2000 req/s)",
        "after (200 req/s)",
    ];
    let mut summary = table(&[&r]);
    let mut verdicts = vec![Verdict::at_least(
        "success",
        Some(r.success_rate * 100.0),
        99.9,
        "%",
    )];
    let _ = writeln!(
        summary,
        "\n| phase | ok | failed | worst per-second p99 ms |\n|---|---:|---:|---:|"
    );
    for ((from, to), name) in bounds.iter().zip(names) {
        let ticks = ticks_between(&r.timeline, from.ceil() as u64, to.floor() as u64);
        let (ok, failed) = tick_counts(&ticks);
        let worst = worst_tick_p99(&ticks);
        let _ = writeln!(summary, "| {name} | {ok} | {failed} | {} |", fmt_num(worst));
        verdicts.push(Verdict::at_most(
            &format!("worst per-second p99, {name}"),
            Some(worst),
            50.0,
            "ms",
        ));
    }
    let peak = rss.iter().map(|s| s.1).max().unwrap_or(0);
    let _ = writeln!(summary, "\ngateway peak RSS {:.1} MiB", mib(peak));
    Ok(Outcome {
        summary,
        verdicts,
        reports: vec![r],
        extra: json!({"rss_samples": rss}),
    })
}

// ------------------------------------------------------------------------------------------
// outage

fn outage(o: &Options) -> Result<Outcome, String> {
    let rig = rig(
        o,
        &[("a", Behavior::default()), ("b", Behavior::default())],
        |c| c,
    )?;
    let flip_s = o.s(10.0);
    let spec = open_spec(&rig, vec![phase(o.d(30.0), 500.0)], false);
    let t0 = Instant::now();
    let load = spawn_load(spec)?;
    // Attempts reaching each route, sampled every 250 ms: (time, a, b).
    let mut samples = vec![(0.0, 0usize, 0usize)];
    let mut flipped = false;
    let mut next = t0;
    while !load.is_finished() {
        next += Duration::from_millis(250);
        sleep_until(next);
        let t = t0.elapsed().as_secs_f64();
        if !flipped && t >= flip_s {
            rig.mock
                .set_behavior("b", Behavior::error(ErrorPreset::ServerError));
            println!("t = {t:.1} s: deployment b now answers 500");
            flipped = true;
            samples.push((t, rig.mock.request_count("a"), rig.mock.request_count("b")));
            continue;
        }
        samples.push((t, rig.mock.request_count("a"), rig.mock.request_count("b")));
    }
    let mut r = join_load(load)?;
    r.label = "500 req/s, b fails at 10 s".to_owned();
    let metrics = rig.gw.get("/metrics").map_err(|e| e.to_string())?;
    let breaker_b = metric_for_deployment(&metrics, "gateway_breaker_state", "b");
    let windows: Vec<(f64, u64, u64)> = samples
        .windows(2)
        .filter_map(|w| match w {
            [p, c] => Some((
                c.0,
                c.2.saturating_sub(p.2) as u64,
                (c.1.saturating_sub(p.1) + c.2.saturating_sub(p.2)) as u64,
            )),
            _ => None,
        })
        .collect();
    let moved_attempts = moved_after(&windows, flip_s, 0.01);
    // Served (response header): the first whole second after the flip where b serves ≤ 1 %.
    let first = flip_s.ceil() as u64;
    let moved_served = r
        .timeline
        .iter()
        .filter(|t| t.second >= first)
        .find(|t| share_of(t, "b").is_some_and(|s| s <= 0.01))
        .map(|t| (t.second + 1) as f64 - flip_s);
    let retries = metric_sum(&metrics, "gateway_retries_total");
    let summary = format!(
        "{}\n{}\nclient errors: {}; time until traffic moved off b: {} s by attempts reaching b (250 ms windows), {} s by responses served (per second); gateway_retries_total {}; b's breaker state at the end: {} (0 closed, 1 half-open, 2 open)",
        table(&[&r]),
        timeline(&r),
        r.failed,
        moved_attempts.map_or("n/a".to_owned(), fmt_num),
        moved_served.map_or("n/a".to_owned(), fmt_num),
        fmt_num(retries),
        breaker_b.map_or("n/a".to_owned(), fmt_num),
    );
    let verdicts = vec![
        Verdict::at_most("client errors", Some(r.failed as f64), 0.0, "requests"),
        Verdict::at_most(
            "time until b serves ≤ 1 % (per second, response header)",
            moved_served,
            o.s(5.0).max(1.0),
            "s",
        ),
        Verdict::at_most(
            "time until b gets ≤ 1 % of upstream attempts",
            moved_attempts,
            o.s(5.0).max(1.0),
            "s",
        ),
        Verdict::check(
            "b's breaker at the end",
            "open (2)",
            breaker_b.map_or("n/a".to_owned(), fmt_num),
            breaker_b == Some(2.0),
        ),
    ];
    Ok(Outcome {
        summary,
        verdicts,
        reports: vec![r],
        extra: json!({"attempt_samples": samples, "moved_attempts_s": moved_attempts, "moved_served_s": moved_served, "breaker_b": breaker_b}),
    })
}

// ------------------------------------------------------------------------------------------
// saturation

fn saturation(o: &Options) -> Result<Outcome, String> {
    // Do not wait for a Retry-After longer than 0.5 s: answer 429 at once instead.
    let rig = rig(
        o,
        &[("a", Behavior::default()), ("b", Behavior::default())],
        |c| c.router("max_retry_wait_ms", 500),
    )?;
    let (sat_s, rec_s, end_s) = (o.s(5.0), o.s(20.0), o.s(30.0));
    let rate = 300.0;
    let spec = open_spec(&rig, vec![phase(o.d(30.0), rate)], false);
    let t0 = Instant::now();
    let load = spawn_load(spec)?;
    sleep_until(t0 + Duration::from_secs_f64(sat_s));
    let limited = Behavior::error(ErrorPreset::RateLimited {
        retry_after: Some(1),
    });
    rig.mock.set_behavior("a", limited.clone());
    rig.mock.set_behavior("b", limited);
    let attempts = |rig: &Rig| rig.mock.request_count("a") + rig.mock.request_count("b");
    let at_sat = attempts(&rig);
    println!(
        "t = {:.1} s: a and b answer 429 (Retry-After 1)",
        t0.elapsed().as_secs_f64()
    );
    // A probe in the middle of the saturation: status and Retry-After.
    sleep_until(t0 + Duration::from_secs_f64((sat_s + rec_s) / 2.0));
    let probe = http_request(
        rig.gw.addr(),
        "POST",
        "/v1/chat/completions",
        Some(&body(false)),
        Duration::from_secs(5),
    )
    .map_err(|e| format!("probe: {e}"))?;
    let inflight_mid = rig
        .gw
        .get("/metrics")
        .map(|m| metric_sum(&m, "gateway_inflight_requests"))
        .unwrap_or(f64::NAN);
    sleep_until(t0 + Duration::from_secs_f64(rec_s));
    let at_rec = attempts(&rig);
    rig.mock.set_behavior("a", Behavior::default());
    println!("t = {:.1} s: a recovers", t0.elapsed().as_secs_f64());
    let mut r = join_load(load)?;
    r.label = "300 req/s, both 429 from 5 s, a recovers at 20 s".to_owned();
    let sat_window = rec_s - sat_s;
    let upstream_per_s = (at_rec - at_sat) as f64 / sat_window;
    // Saturated seconds (skip the first, where the switch happens) and recovered seconds
    // (from 2 s after the recovery: the Retry-After cooldown is 1 s).
    let sat_ticks = ticks_between(&r.timeline, sat_s.ceil() as u64 + 1, rec_s.floor() as u64);
    let (_, sat_failed) = tick_counts(&sat_ticks);
    let rec_ticks = ticks_between(&r.timeline, rec_s.ceil() as u64 + 2, end_s.ceil() as u64);
    let (rec_ok, rec_failed) = tick_counts(&rec_ticks);
    let n429 = *r.status_counts.get(&429).unwrap_or(&0);
    let summary = format!(
        "{}\n{}\nduring saturation: {} failed requests ({} answered 429 in the whole run), failed-request latency p50 {} / p99 {} / max {} ms; upstream attempts {:.1}/s for {:.0} client req/s; gateway in-flight attempts mid-saturation {}; probe: status {}, Retry-After {}\nafter recovery (+2 s): {} ok, {} failed",
        table(&[&r]),
        timeline(&r),
        sat_failed,
        n429,
        fmt_num(r.failed_latency.p50),
        fmt_num(r.failed_latency.p99),
        fmt_num(r.failed_latency.max),
        upstream_per_s,
        rate,
        fmt_num(inflight_mid),
        probe.status,
        probe.header("retry-after").unwrap_or("none"),
        rec_ok,
        rec_failed
    );
    let verdicts = vec![
        Verdict::at_most(
            "429 latency p99 (failed requests)",
            Some(r.failed_latency.p99),
            50.0,
            "ms",
        ),
        Verdict::check(
            "probe during saturation",
            "429 with Retry-After",
            format!(
                "{}, Retry-After {}",
                probe.status,
                probe.header("retry-after").unwrap_or("none")
            ),
            probe.status == 429 && probe.header("retry-after").is_some(),
        ),
        Verdict::at_most(
            "upstream attempts per client request during saturation",
            Some(upstream_per_s / rate),
            0.1,
            "",
        ),
        Verdict::check(
            "saturated seconds answered with errors",
            "≥ 99 % failed",
            pct(1.0 - tick_success(&sat_ticks)),
            tick_success(&sat_ticks) <= 0.01,
        ),
        Verdict::at_most(
            "errors after recovery (+2 s)",
            Some(rec_failed as f64),
            0.0,
            "requests",
        ),
        Verdict::check(
            "traffic flows after recovery",
            "> 0 ok",
            rec_ok.to_string(),
            rec_ok > 0,
        ),
    ];
    Ok(Outcome {
        summary,
        verdicts,
        reports: vec![r],
        extra: json!({"upstream_attempts_per_s": upstream_per_s, "probe_status": probe.status, "probe_retry_after": probe.header("retry-after"), "inflight_mid": inflight_mid}),
    })
}

// ------------------------------------------------------------------------------------------
// long-streams

fn long_streams(o: &Options) -> Result<Outcome, String> {
    let streams = 2000usize;
    check_fds((streams * 2 + 512) as u64)?;
    // Each stream: 20 chunks 500 ms apart, about 10 s (scaled).
    let chunk_delay = o.d(0.5);
    let behavior = Behavior::default()
        .with_chunks(20)
        .with_chunk_delay(chunk_delay);
    let rig = rig(o, &[("a", behavior)], |c| {
        c.router("max_connections_per_worker", 4096)
            .server("max_connections", 25000)
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = rig.gw.rss_bytes().map_err(|e| e.to_string())?;
    // Three waves of 20 s (60 s of streams in all). The allocator keeps freed memory for reuse
    // and the first waves also settle its arenas and the connection pools, so RSS does not
    // fall back to idle; a leak shows as growth from the second wave to the third.
    let wave = |n: usize| -> Result<(Report, f64, u64, f64, u64), String> {
        let duration = o.d(20.0);
        let mut spec = LoadSpec::new(
            format!("{}/v1/chat/completions", rig.gw.url()),
            body(true),
            Mode::closed(streams, duration),
        );
        spec.stream = true;
        spec.timeout = Duration::from_secs(60);
        spec.threads = 1;
        let per_conn =
            (duration.as_secs_f64() / (chunk_delay.as_secs_f64() * 20.0)).ceil() as u64 + 2;
        spec.max_requests = streams as u64 * per_conn;
        let sampler = RssSampler::start(rig.gw.pid(), Duration::from_millis(500));
        let t0 = Instant::now();
        let load = spawn_load(spec)?;
        let mut open_peak = 0.0f64;
        let mut next = t0;
        while !load.is_finished() {
            next += Duration::from_secs(2);
            sleep_until(next);
            if let Ok(m) = rig.gw.get("/metrics") {
                open_peak = open_peak.max(metric_sum(&m, "gateway_inflight_requests"));
            }
        }
        let mut r = join_load(load)?;
        let ended = t0.elapsed().as_secs_f64();
        let samples = sampler.finish();
        r.label = format!("wave {n}: {streams} concurrent streams");
        std::thread::sleep(Duration::from_secs(5));
        let after = rig.gw.rss_bytes().map_err(|e| e.to_string())?;
        let peak = samples.iter().map(|s| s.1).max().unwrap_or(idle);
        Ok((r, open_peak, peak, ended, after))
    };
    let (r1, open_peak, peak1, ended1, after1) = wave(1)?;
    let (r2, open_peak2, peak2, ended2, after2) = wave(2)?;
    let (r3, open_peak3, peak3, ended3, after3) = wave(3)?;
    let inflight_after = rig
        .gw
        .get("/metrics")
        .map(|m| metric_sum(&m, "gateway_inflight_requests"))
        .ok();
    let per_stream = kib_per_stream(idle, peak1, streams);
    let growth_bound = leak_bound(after2);
    let summary = format!(
        "{}\nfds limit {:?}; gateway in-flight attempts peak (sampled every 2 s) {} / {} / {}; waves ended after {:.0} / {:.0} / {:.0} s\nRSS idle {:.1} MiB; peak / 5 s after: wave 1 {:.1} / {:.1} MiB, wave 2 {:.1} / {:.1} MiB, wave 3 {:.1} / {:.1} MiB (bound {:.1} MiB); {} KiB per open stream; in flight 5 s after the end: {}",
        table(&[&r1, &r2, &r3]),
        harness::open_files_limit(),
        fmt_num(open_peak),
        fmt_num(open_peak2),
        fmt_num(open_peak3),
        ended1,
        ended2,
        ended3,
        mib(idle),
        mib(peak1),
        mib(after1),
        mib(peak2),
        mib(after2),
        mib(peak3),
        mib(after3),
        mib(growth_bound),
        per_stream.map_or("n/a".to_owned(), fmt_num),
        inflight_after.map_or("n/a".to_owned(), fmt_num)
    );
    let success = r1.success_rate.min(r2.success_rate).min(r3.success_rate) * 100.0;
    let verdicts = vec![
        Verdict::at_least("success (worse wave)", Some(success), 99.9, "%"),
        Verdict::at_least(
            "streams open at once (gateway in-flight peak, wave 1)",
            Some(open_peak),
            streams as f64 * 0.9,
            "",
        ),
        Verdict::at_most("RSS per open stream (wave 1)", per_stream, 64.0, "KiB"),
        Verdict::at_most(
            "no leak: RSS 5 s after wave 3 ≤ after wave 2 + max(5 %, 4 MiB)",
            Some(mib(after3)),
            mib(growth_bound),
            "MiB",
        ),
        Verdict::at_most(
            "attempts still in flight 5 s after the end",
            inflight_after,
            0.0,
            "",
        ),
    ];
    Ok(Outcome {
        summary,
        verdicts,
        reports: vec![r1, r2, r3],
        extra: json!({"idle": idle, "peak1": peak1, "after1": after1, "peak2": peak2, "after2": after2, "peak3": peak3, "after3": after3, "inflight_after": inflight_after, "kib_per_stream": per_stream, "inflight_peak": open_peak}),
    })
}

// ------------------------------------------------------------------------------------------
// slow-upstream

fn slow_upstream(o: &Options) -> Result<Outcome, String> {
    let (deadline_ms, per_try_ms) = (2000.0, 1000.0);
    let fast = Behavior::default().with_latency(Duration::from_millis(100));
    let rig = rig(o, &[("a", fast.clone())], |c| {
        c.router("per_try_timeout_ms", per_try_ms)
            .router("timeout_ms", deadline_ms)
            .router("num_retries", 1)
            // Scaled with the run, so that recovery fits in the (scaled) last 10 s.
            .breaker("cooldown_ms", (3000.0 * o.scale).max(500.0).round())
            .breaker("probe_timeout_ms", 2000)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let idle = rig.gw.rss_bytes().map_err(|e| e.to_string())?;
    let (slow_at, fast_at, end) = (o.s(10.0), o.s(25.0), o.s(40.0));
    let spec = open_spec(&rig, vec![phase(o.d(40.0), 200.0)], false);
    let sampler = RssSampler::start(rig.gw.pid(), Duration::from_millis(250));
    let t0 = Instant::now();
    let load = spawn_load(spec)?;
    let mut inflight_peak = 0.0f64;
    let mut slowed = false;
    let mut restored = false;
    let mut next = t0;
    while !load.is_finished() {
        next += Duration::from_millis(250);
        sleep_until(next);
        let t = t0.elapsed().as_secs_f64();
        if !slowed && t >= slow_at {
            rig.mock.set_behavior(
                "a",
                Behavior::default().with_latency(Duration::from_secs(5)),
            );
            println!("t = {t:.1} s: upstream latency 5 s");
            slowed = true;
        }
        if !restored && t >= fast_at {
            rig.mock.set_behavior("a", fast.clone());
            println!("t = {t:.1} s: upstream latency 100 ms");
            restored = true;
        }
        if let Ok(m) = rig.gw.get("/metrics") {
            inflight_peak = inflight_peak.max(metric_sum(&m, "gateway_inflight_requests"));
        }
    }
    let mut r = join_load(load)?;
    let samples = sampler.finish();
    r.label = "200 req/s, upstream 100 ms → 5 s → 100 ms".to_owned();
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(idle);
    let last = ticks_between(
        &r.timeline,
        (end - o.s(10.0)).ceil() as u64,
        end.ceil() as u64,
    );
    let slow_ticks = ticks_between(&r.timeline, slow_at.ceil() as u64, fast_at.floor() as u64);
    let (slow_ok, slow_failed) = tick_counts(&slow_ticks);
    let longest = r.latency.max.max(r.failed_latency.max);
    let limit = deadline_ms + 500.0;
    let median_fail = (r.failed_latency.count > 0).then_some(r.failed_latency.p50);
    let summary = format!(
        "{}\n{}\nslow phase: {} ok, {} failed; failed-request latency p50 {} / p90 {} / p99 {} / max {} ms; longest request {} ms; gateway in-flight attempts peak {}; RSS idle {:.1} MiB, peak {:.1} MiB",
        table(&[&r]),
        timeline(&r),
        slow_ok,
        slow_failed,
        fmt_num(r.failed_latency.p50),
        fmt_num(r.failed_latency.p90),
        fmt_num(r.failed_latency.p99),
        fmt_num(r.failed_latency.max),
        fmt_num(longest),
        fmt_num(inflight_peak),
        mib(idle),
        mib(peak)
    );
    let verdicts = vec![
        Verdict::at_most(
            "longest request (deadline + 0.5 s)",
            Some(longest),
            limit,
            "ms",
        ),
        Verdict::at_most(
            "failed-request latency p50 (fast shedding)",
            median_fail.or(Some(0.0)),
            100.0,
            "ms",
        ),
        Verdict::at_most(
            "gateway peak RSS (idle + 32 MiB)",
            Some(mib(peak)),
            mib(idle) + 32.0,
            "MiB",
        ),
        Verdict::at_least(
            "success in the last 10 s (recovery)",
            Some(tick_success(&last) * 100.0),
            99.0,
            "%",
        ),
    ];
    Ok(Outcome {
        summary,
        verdicts,
        reports: vec![r],
        extra: json!({"idle": idle, "peak": peak, "inflight_peak": inflight_peak, "rss_samples": samples}),
    })
}
