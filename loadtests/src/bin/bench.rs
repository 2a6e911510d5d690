//! `bench`: the gateway's overhead benchmark. In one run, the same load goes (a) straight at
//! the mock upstream and (b) through the gateway in front of it (and (c) through nginx as a
//! plain reverse proxy, if installed), at fixed rates and at max throughput, non-streaming and
//! streaming; the report gives the gateway's added latency per percentile, its CPU time per
//! request, its RSS, and PASS/FAIL against the targets. See loadtests/README.md.
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
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_loadtests::harness::stats::{
    added, cpu_ms_per_request, fmt_num, fmt_opt, kib_per_stream, median, median_added,
    median_summary, mib, pct, ratio, verdict_table, Added, Verdict,
};
use switchyard_loadtests::harness::{
    self, DeploymentSpec, GatewayConfig, GatewayProc, MockThread, Nginx, RssSampler,
};
use switchyard_loadtests::loadgen::{self, LoadSpec, Mode, Report, Summary};
use switchyard_loadtests::Behavior;

const USAGE: &str = "\
usage: bench [options]     (normally through loadtests/bench.sh, which builds first)

  --runs N              runs; each cell is the median across runs          [3]
  --duration D          measured time per cell (e.g. 5s, 500ms)             [5s]
  --warmup D            warmup per cell                                      [1s]
  --rates R,R,...       open-loop rates, req/s                               [500,1000,2000,5000]
  --connections N       closed-loop connections for max throughput           [64]
  --streams N           concurrent streams for the TTFT / memory run         [200]
  --threads N           load-generator threads                               [1]
  --quick               1 run, 2 s per cell, 0.5 s warmup
  --out DIR             where bench-<unix time>.md / .json go                [target/loadtests]
  --gateway-bin PATH    gateway binary        [target/release/switchyard next to this binary]

Targets: loopback only. Exit status: 0 all targets PASS, 1 a target FAILs, 2 bad usage,
3 the harness failed (a process did not start, ...).
";

const MODEL: &str = "bench";
const STREAM_MODEL: &str = "bench-streams";
/// Mock settings of the stream-concurrency run: each stream is 10 chunks 20 ms apart.
const SLOW_STREAM_CHUNKS: usize = 10;
const SLOW_STREAM_CHUNK_DELAY_MS: u64 = 20;

struct Options {
    runs: usize,
    duration: Duration,
    warmup: Duration,
    rates: Vec<f64>,
    connections: usize,
    streams: usize,
    threads: usize,
    out: PathBuf,
    gateway_bin: PathBuf,
}

fn val(p: &mut lexopt::Parser) -> Result<std::ffi::OsString, String> {
    p.value().map_err(|e| e.to_string())
}

fn parse_args() -> Result<Option<Options>, String> {
    use lexopt::prelude::*;
    let mut o = Options {
        runs: 3,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        rates: vec![500.0, 1000.0, 2000.0, 5000.0],
        connections: 64,
        streams: 200,
        threads: 1,
        out: PathBuf::from("target/loadtests"),
        gateway_bin: harness::default_gateway_bin(),
    };
    let mut quick = false;
    let (mut runs, mut duration, mut warmup) = (None, None, None);
    let mut p = lexopt::Parser::from_env();
    let num = |v: std::ffi::OsString, what: &str| -> Result<usize, String> {
        v.to_string_lossy()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{what} must be a positive integer"))
    };
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("runs") => runs = Some(num(val(&mut p)?, "--runs")?),
            Long("duration") => {
                duration = Some(loadgen::parse_duration(&val(&mut p)?.to_string_lossy())?)
            }
            Long("warmup") => {
                warmup = Some(loadgen::parse_duration(&val(&mut p)?.to_string_lossy())?)
            }
            Long("rates") => o.rates = harness::parse_rates(&val(&mut p)?.to_string_lossy())?,
            Long("connections") => o.connections = num(val(&mut p)?, "--connections")?,
            Long("streams") => o.streams = num(val(&mut p)?, "--streams")?,
            Long("threads") => o.threads = num(val(&mut p)?, "--threads")?,
            Long("quick") => quick = true,
            Long("out") => o.out = PathBuf::from(val(&mut p)?),
            Long("gateway-bin") => o.gateway_bin = PathBuf::from(val(&mut p)?),
            other => return Err(other.unexpected().to_string()),
        }
    }
    if quick {
        o.runs = 1;
        o.duration = Duration::from_secs(2);
        o.warmup = Duration::from_millis(500);
    }
    o.runs = runs.unwrap_or(o.runs);
    o.duration = duration.unwrap_or(o.duration);
    o.warmup = warmup.unwrap_or(o.warmup);
    if o.duration < Duration::from_millis(500) {
        return Err("--duration must be at least 500ms".to_owned());
    }
    if o.rates.is_empty() {
        return Err("--rates needs at least one rate".to_owned());
    }
    Ok(Some(o))
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    harness::install_signal_cleanup();
    match bench(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::from(3)
        }
    }
}

// ------------------------------------------------------------------------------------------
// Cells

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Direct,
    Gateway,
    Nginx,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Gateway => "gateway",
            Target::Nginx => "nginx",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Load {
    Rate(f64),
    Max,
    Streams,
}

impl Load {
    fn name(self, o: &Options) -> String {
        match self {
            Load::Rate(r) => format!("{} req/s", fmt_num(r)),
            Load::Max => format!("max ({} conn)", o.connections),
            Load::Streams => format!("{} streams", o.streams),
        }
    }
}

/// One measurement: a load against a target in one run.
struct Cell {
    stream: bool,
    load: Load,
    target: Target,
    run: usize,
    report: Report,
    /// Gateway only: CPU seconds used and requests answered during the cell (warmup included).
    cpu: Option<(f64, f64)>,
}

struct Env {
    mock: MockThread,
    gateway: GatewayProc,
    nginx: Option<Nginx>,
    gateway_config: String,
    gateway_listen_first: std::net::SocketAddr,
}

fn body(stream: bool, target: Target, model: &str) -> String {
    match (stream, target) {
        (false, _) => format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello."}}]}}"#
        ),
        // The gateway asks the upstream for include_usage itself; ask for it directly so that
        // the mock sends the same bytes either way.
        (true, Target::Gateway) => format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello."}}],"stream":true}}"#
        ),
        (true, _) => format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello."}}],"stream":true,"stream_options":{{"include_usage":true}}}}"#
        ),
    }
}

fn url(env: &Env, gateway: &GatewayProc, target: Target, load: Load) -> Option<String> {
    let route = if load == Load::Streams { "streams" } else { "" };
    let base = match target {
        Target::Direct => env.mock.route_url(route),
        Target::Gateway => gateway.url(),
        Target::Nginx => {
            let n = env.nginx.as_ref()?;
            if route.is_empty() {
                n.url()
            } else {
                format!("{}/{route}", n.url())
            }
        }
    };
    Some(format!("{base}/v1/chat/completions"))
}

/// Runs one cell. `gateway` is the gateway process to go through (the stream run uses a fresh
/// one).
fn run_cell(
    env: &Env,
    gateway: &GatewayProc,
    o: &Options,
    stream: bool,
    load: Load,
    target: Target,
    run: usize,
) -> Result<Option<Cell>, String> {
    let Some(url) = url(env, gateway, target, load) else {
        return Ok(None);
    };
    let model = if load == Load::Streams {
        STREAM_MODEL
    } else {
        MODEL
    };
    let total = o.warmup + o.duration;
    let (mode, max_requests) = match load {
        Load::Rate(r) => (
            Mode::open(r, o.duration),
            (r * total.as_secs_f64() * 1.2) as u64 + 1000,
        ),
        // Bounded well above what a 2-core machine can do.
        Load::Max => (
            Mode::closed(o.connections, o.duration),
            (200_000.0 * total.as_secs_f64()) as u64,
        ),
        Load::Streams => (
            Mode::closed(o.streams, o.duration),
            (o.streams as f64 * 20.0 * total.as_secs_f64()) as u64 + 1000,
        ),
    };
    let mut spec = LoadSpec::new(url, body(stream, target, model), mode);
    spec.stream = stream;
    spec.warmup = o.warmup;
    spec.max_requests = max_requests;
    spec.timeout = Duration::from_secs(10);
    spec.threads = o.threads;
    let before = if target == Target::Gateway {
        Some((
            gateway.cpu_seconds().map_err(|e| e.to_string())?,
            gateway.requests_total().map_err(|e| e.to_string())?,
        ))
    } else {
        None
    };
    let mut report = loadgen::run(&spec).map_err(|e| {
        format!(
            "{} {} against {}: {e}",
            mode_name(stream),
            load.name(o),
            target.name()
        )
    })?;
    let cpu = match before {
        Some((cpu0, req0)) => Some((
            gateway.cpu_seconds().map_err(|e| e.to_string())? - cpu0,
            gateway.requests_total().map_err(|e| e.to_string())? - req0,
        )),
        None => None,
    };
    report.label = format!("{} {} {}", target.name(), mode_name(stream), load.name(o));
    let cpu_note = cpu
        .and_then(|(c, n)| cpu_ms_per_request(c, n))
        .map_or(String::new(), |c| format!(", cpu {} ms/req", fmt_num(c)));
    println!(
        "  run {} | {:<8} {:<10} {:<16} achieved {:>8.0}/s  ok {:>6.2} %  p50 {:>7.3}  p99 {:>7.3} ms{}{cpu_note}",
        run + 1,
        target.name(),
        mode_name(stream),
        load.name(o),
        report.achieved_rate,
        report.success_rate * 100.0,
        report.latency.p50,
        report.latency.p99,
        report
            .ttft
            .map_or(String::new(), |t| format!("  ttft p99 {:.3}", t.p99)),
    );
    std::thread::sleep(Duration::from_millis(200));
    Ok(Some(Cell {
        stream,
        load,
        target,
        run,
        report,
        cpu,
    }))
}

fn mode_name(stream: bool) -> &'static str {
    if stream {
        "stream"
    } else {
        "non-stream"
    }
}

/// Targets in the order of this run (rotated per run so that no target is always first).
fn order(targets: &[Target], run: usize) -> Vec<Target> {
    let n = targets.len().max(1);
    (0..targets.len())
        .filter_map(|i| targets.get((i + run) % n).copied())
        .collect()
}

// ------------------------------------------------------------------------------------------
// The bench

struct StreamMem {
    idle: u64,
    peak: u64,
    after: u64,
}

fn bench(o: &Options) -> Result<bool, String> {
    let t_start = Instant::now();
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    if let Some(limit) = harness::open_files_limit() {
        let needed = (o.streams.max(o.connections) * 4 + 256) as u64;
        if limit < needed {
            println!("warning: ulimit -n is {limit}; this bench needs about {needed} (bench.sh raises it)");
        }
    }
    let mock_behavior = Behavior::default();
    let slow = Behavior::default()
        .with_chunks(SLOW_STREAM_CHUNKS)
        .with_chunk_delay(Duration::from_millis(SLOW_STREAM_CHUNK_DELAY_MS));
    let mock = MockThread::start(1, mock_behavior.clone()).map_err(|e| e.to_string())?;
    mock.set_behavior("streams", slow);
    let listen = harness::free_addr().map_err(|e| e.to_string())?;
    let config = |listen| {
        GatewayConfig::new(listen)
            .deployment(DeploymentSpec::new("mock", MODEL, &mock.url()))
            .deployment(DeploymentSpec::new(
                "mock-streams",
                STREAM_MODEL,
                &mock.route_url("streams"),
            ))
            .to_toml()
    };
    let gateway_config = config(listen);
    let gateway = GatewayProc::start(&o.gateway_bin, &gateway_config, listen, &o.out)
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(500));
    let idle_main = gateway.rss_bytes().map_err(|e| e.to_string())?;
    let nginx = Nginx::start(mock.addr(), &o.out).map_err(|e| e.to_string())?;
    let env = Env {
        mock,
        gateway,
        nginx,
        gateway_config,
        gateway_listen_first: listen,
    };
    let mut targets = vec![Target::Direct, Target::Gateway];
    if env.nginx.is_some() {
        targets.push(Target::Nginx);
    }

    let cells_per_run = 2 * o.rates.len() * targets.len() + 2 * targets.len() + targets.len();
    let per_cell = (o.warmup + o.duration).as_secs_f64() + 0.3;
    let estimate = o.runs as f64 * (cells_per_run as f64 * per_cell + 3.0);
    println!(
        "Switchyard overhead bench: {} run(s) × {} cells, {} s warmup + {} s each: about {:.0} min",
        o.runs,
        cells_per_run,
        fmt_num(o.warmup.as_secs_f64()),
        fmt_num(o.duration.as_secs_f64()),
        estimate / 60.0
    );
    println!(
        "mock upstream {} (1 worker, latency 0 ms; stream run: {} chunks × {} ms); gateway {} (pid {}, idle RSS {:.1} MiB){}",
        env.mock.url(),
        SLOW_STREAM_CHUNKS,
        SLOW_STREAM_CHUNK_DELAY_MS,
        env.gateway.url(),
        env.gateway.pid(),
        mib(idle_main),
        env.nginx
            .as_ref()
            .map_or(String::new(), |n| format!("; nginx {} ({})", n.url(), n.version()))
    );

    let mut cells = Vec::new();
    let mut mems = Vec::new();
    let mut idles = vec![idle_main];
    for run in 0..o.runs {
        for stream in [false, true] {
            for &rate in &o.rates {
                for t in order(&targets, run) {
                    cells.extend(run_cell(
                        &env,
                        &env.gateway,
                        o,
                        stream,
                        Load::Rate(rate),
                        t,
                        run,
                    )?);
                }
            }
        }
        for stream in [false, true] {
            for t in order(&targets, run) {
                cells.extend(run_cell(&env, &env.gateway, o, stream, Load::Max, t, run)?);
            }
        }
        // Concurrent streams: a fresh gateway, so that its idle RSS is the baseline.
        let fresh_listen = harness::free_addr().map_err(|e| e.to_string())?;
        let fresh_config = env.gateway_config.replace(
            &format!("listen = \"{}\"", env.gateway_listen_first),
            &format!("listen = \"{fresh_listen}\""),
        );
        let fresh = GatewayProc::start(&o.gateway_bin, &fresh_config, fresh_listen, &o.out)
            .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(500));
        let idle = fresh.rss_bytes().map_err(|e| e.to_string())?;
        idles.push(idle);
        for t in order(&targets, run) {
            if t == Target::Gateway {
                let sampler = RssSampler::start(fresh.pid(), Duration::from_millis(200));
                cells.extend(run_cell(&env, &fresh, o, true, Load::Streams, t, run)?);
                let samples = sampler.finish();
                let peak = samples.iter().map(|s| s.1).max().unwrap_or(idle);
                std::thread::sleep(Duration::from_secs(1));
                let after = fresh.rss_bytes().map_err(|e| e.to_string())?;
                mems.push(StreamMem { idle, peak, after });
            } else {
                cells.extend(run_cell(&env, &fresh, o, true, Load::Streams, t, run)?);
            }
        }
        drop(fresh);
    }
    let rss_after = env.gateway.rss_bytes().map_err(|e| e.to_string())?;
    let elapsed = t_start.elapsed();

    let (markdown, verdicts, json) = report(o, &env, &cells, &mems, &idles, rss_after, elapsed);
    println!("\n{markdown}");
    let stamp = harness::unix_time();
    let md_path = o.out.join(format!("bench-{stamp}.md"));
    let json_path = o.out.join(format!("bench-{stamp}.json"));
    std::fs::write(&md_path, &markdown).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let json_text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, json_text + "\n")
        .map_err(|e| format!("{}: {e}", json_path.display()))?;
    println!("written: {} and {}", md_path.display(), json_path.display());
    Ok(verdicts.iter().all(|v| v.pass))
}

// ------------------------------------------------------------------------------------------
// Report

fn find(cells: &[Cell], stream: bool, load: Load, target: Target) -> Vec<&Cell> {
    cells
        .iter()
        .filter(|c| c.stream == stream && c.load == load && c.target == target)
        .collect()
}

/// Median over runs of one cell.
struct Agg {
    latency: Summary,
    ttft: Option<Summary>,
    success: f64,
    achieved: f64,
    cpu_ms: Option<f64>,
}

fn agg(cells: &[&Cell]) -> Option<Agg> {
    if cells.is_empty() {
        return None;
    }
    let lat: Vec<Summary> = cells.iter().map(|c| c.report.latency).collect();
    let ttft: Vec<Summary> = cells.iter().filter_map(|c| c.report.ttft).collect();
    let f = |g: fn(&Cell) -> f64| median(&cells.iter().map(|c| g(c)).collect::<Vec<_>>());
    let cpu: Vec<f64> = cells
        .iter()
        .filter_map(|c| c.cpu.and_then(|(s, n)| cpu_ms_per_request(s, n)))
        .collect();
    Some(Agg {
        latency: median_summary(&lat),
        ttft: (!ttft.is_empty()).then(|| median_summary(&ttft)),
        success: f(|c| c.report.success_rate).unwrap_or(0.0),
        achieved: f(|c| c.report.achieved_rate).unwrap_or(0.0),
        cpu_ms: median(&cpu),
    })
}

/// Median over runs of (through − direct) per percentile, paired by run; `ttft` compares TTFT.
fn added_median(
    cells: &[Cell],
    stream: bool,
    load: Load,
    through: Target,
    ttft: bool,
) -> Option<Added> {
    let mut diffs = Vec::new();
    for t in find(cells, stream, load, through) {
        let d = find(cells, stream, load, Target::Direct)
            .into_iter()
            .find(|d| d.run == t.run)?;
        let pick = |c: &Cell| {
            if ttft {
                c.report.ttft
            } else {
                Some(c.report.latency)
            }
        };
        diffs.push(added(&pick(t)?, &pick(d)?));
    }
    (!diffs.is_empty()).then(|| median_added(&diffs))
}

fn row_summary(s: &Summary) -> String {
    format!(
        "{} | {} | {} | {}",
        fmt_num(s.p50),
        fmt_num(s.p90),
        fmt_num(s.p99),
        fmt_num(s.max)
    )
}

fn added_cells(a: Option<Added>) -> String {
    a.map_or_else(
        || "– | – | – | –".to_owned(),
        |a| {
            format!(
                "{} | {} | {} | {}",
                fmt_num(a.p50),
                fmt_num(a.p90),
                fmt_num(a.p99),
                fmt_num(a.max)
            )
        },
    )
}

#[allow(clippy::too_many_lines)]
fn report(
    o: &Options,
    env: &Env,
    cells: &[Cell],
    mems: &[StreamMem],
    idles: &[u64],
    rss_after: u64,
    elapsed: Duration,
) -> (String, Vec<Verdict>, Value) {
    let has_nginx = env.nginx.is_some();
    let mut targets = vec![Target::Direct, Target::Gateway];
    if has_nginx {
        targets.push(Target::Nginx);
    }
    let (nproc, cpu_model, kernel) = harness::machine_info();
    let mut md = String::new();
    let _ = writeln!(md, "# Switchyard overhead benchmark\n");
    let _ = writeln!(
        md,
        "- machine: {nproc} CPU(s), {cpu_model}, Linux {kernel}; load generator, mock and gateway share the cores"
    );
    let _ = writeln!(
        md,
        "- build: bench {} profile; gateway binary {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        o.gateway_bin.display()
    );
    let _ = writeln!(
        md,
        "- mock upstream: in-process, 1 worker, latency 0 ms, ttft 0 ms, chunk delay 0 ms, 4 chunks; stream-concurrency run: {SLOW_STREAM_CHUNKS} chunks × {SLOW_STREAM_CHUNK_DELAY_MS} ms"
    );
    let _ = writeln!(
        md,
        "- gateway: 2 workers, one openai deployment per model group pointing at the mock, request logs off"
    );
    let _ = writeln!(
        md,
        "- nginx: {}",
        env.nginx
            .as_ref()
            .map_or("not found (ratios skipped)".to_owned(), |n| format!(
                "{}, 2 workers, keep-alive upstream, no buffering",
                n.version()
            ))
    );
    let _ = writeln!(
        md,
        "- {} run(s), medians across runs; each cell {} s warmup + {} s measured; open loop (latency from the intended send time) at fixed rates, closed loop with {} connections for max throughput; load-generator threads {}; took {:.1} min\n",
        o.runs,
        fmt_num(o.warmup.as_secs_f64()),
        fmt_num(o.duration.as_secs_f64()),
        o.connections,
        o.threads,
        elapsed.as_secs_f64() / 60.0
    );

    let mut json_cells = Vec::new();
    for c in cells {
        json_cells.push(json!({
            "mode": mode_name(c.stream),
            "load": c.load.name(o),
            "target": c.target.name(),
            "run": c.run + 1,
            "gateway_cpu_s": c.cpu.map(|x| x.0),
            "gateway_requests": c.cpu.map(|x| x.1),
            "report": serde_json::to_value(&c.report).unwrap_or(Value::Null),
        }));
    }
    let mut json_added = Vec::new();

    for stream in [false, true] {
        let _ = writeln!(md, "## {} (latency ms, medians)\n", mode_name(stream));
        let _ = writeln!(
            md,
            "| load | target | p50 | p90 | p99 | max | success | achieved req/s |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|");
        let loads: Vec<Load> = o
            .rates
            .iter()
            .map(|r| Load::Rate(*r))
            .chain([Load::Max])
            .collect();
        for &load in &loads {
            for &t in &targets {
                if let Some(a) = agg(&find(cells, stream, load, t)) {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {} |",
                        load.name(o),
                        t.name(),
                        row_summary(&a.latency),
                        pct(a.success),
                        fmt_num(a.achieved)
                    );
                }
            }
        }
        let _ = writeln!(
            md,
            "\n### {} — added latency (ms; median over runs of the per-run difference)\n",
            mode_name(stream)
        );
        let _ = writeln!(md, "| load | gateway−direct p50 | p90 | p99 | max | nginx−direct p50 | p90 | p99 | max | gateway/nginx p50 | p99 |");
        let _ = writeln!(
            md,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for &load in &loads {
            let g = added_median(cells, stream, load, Target::Gateway, false);
            let n = added_median(cells, stream, load, Target::Nginx, false);
            let r50 = g.zip(n).and_then(|(g, n)| ratio(g.p50, n.p50));
            let r99 = g.zip(n).and_then(|(g, n)| ratio(g.p99, n.p99));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                load.name(o),
                added_cells(g),
                added_cells(n),
                fmt_opt(r50),
                fmt_opt(r99)
            );
            json_added.push(json!({
                "mode": mode_name(stream), "load": load.name(o),
                "gateway_minus_direct": g, "nginx_minus_direct": n,
                "gateway_over_nginx_p50": r50, "gateway_over_nginx_p99": r99,
            }));
        }
        let _ = writeln!(md);
    }

    // Max throughput
    let _ = writeln!(
        md,
        "## Max throughput (closed loop, {} connections)\n",
        o.connections
    );
    let _ = writeln!(
        md,
        "| mode | direct req/s | gateway req/s | nginx req/s | gateway/direct | gateway/nginx |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    let mut max_gateway_nonstream = None;
    for stream in [false, true] {
        let a = |t| agg(&find(cells, stream, Load::Max, t)).map(|a| a.achieved);
        let (d, g, n) = (a(Target::Direct), a(Target::Gateway), a(Target::Nginx));
        if !stream {
            max_gateway_nonstream = g;
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            mode_name(stream),
            fmt_opt(d),
            fmt_opt(g),
            fmt_opt(n),
            fmt_opt(g.zip(d).and_then(|(g, d)| ratio(g, d))),
            fmt_opt(g.zip(n).and_then(|(g, n)| ratio(g, n))),
        );
    }

    // CPU per request
    let _ = writeln!(
        md,
        "\n## Gateway CPU time per request (ms; user + system, all threads, warmup included)\n"
    );
    let _ = writeln!(md, "| load | non-stream | stream |");
    let _ = writeln!(md, "|---|---:|---:|");
    let mut json_cpu = Vec::new();
    for load in o.rates.iter().map(|r| Load::Rate(*r)).chain([Load::Max]) {
        let c = |stream| agg(&find(cells, stream, load, Target::Gateway)).and_then(|a| a.cpu_ms);
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            load.name(o),
            fmt_opt(c(false)),
            fmt_opt(c(true))
        );
        json_cpu
            .push(json!({"load": load.name(o), "non_stream_ms": c(false), "stream_ms": c(true)}));
    }

    // Streams: TTFT and memory
    let _ = writeln!(
        md,
        "\n## {} concurrent streams ({} chunks × {} ms each; TTFT ms, medians)\n",
        o.streams, SLOW_STREAM_CHUNKS, SLOW_STREAM_CHUNK_DELAY_MS
    );
    let _ = writeln!(
        md,
        "| target | ttft p50 | p90 | p99 | max | success | streams/s |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for &t in &targets {
        if let Some(a) = agg(&find(cells, true, Load::Streams, t)) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                t.name(),
                a.ttft
                    .as_ref()
                    .map_or("– | – | – | –".to_owned(), row_summary),
                pct(a.success),
                fmt_num(a.achieved)
            );
        }
    }
    let ttft_added = added_median(cells, true, Load::Streams, Target::Gateway, true);
    let ttft_added_nginx = added_median(cells, true, Load::Streams, Target::Nginx, true);
    let _ = writeln!(
        md,
        "\nadded TTFT (gateway − direct): {}; (nginx − direct): {} (p50 | p90 | p99 | max)",
        added_cells(ttft_added),
        added_cells(ttft_added_nginx)
    );

    let idle_med = median(&idles.iter().map(|b| *b as f64).collect::<Vec<_>>());
    let per_stream = median(
        &mems
            .iter()
            .filter_map(|m| kib_per_stream(m.idle, m.peak, o.streams))
            .collect::<Vec<_>>(),
    );
    let _ = writeln!(md, "\n## Gateway memory (RSS)\n");
    let _ = writeln!(md, "| measure | value |\n|---|---:|");
    let _ = writeln!(
        md,
        "| idle after start (median of {} fresh processes) | {} MiB |",
        idles.len(),
        fmt_opt(idle_med.map(|b| b / 1048576.0))
    );
    let _ = writeln!(
        md,
        "| main gateway after all runs | {} MiB |",
        fmt_num(mib(rss_after))
    );
    for (i, m) in mems.iter().enumerate() {
        let _ = writeln!(
            md,
            "| run {}: fresh gateway idle / peak during {} streams / 1 s after | {} / {} / {} MiB |",
            i + 1,
            o.streams,
            fmt_num(mib(m.idle)),
            fmt_num(mib(m.peak)),
            fmt_num(mib(m.after))
        );
    }
    let _ = writeln!(
        md,
        "| per open stream ((peak − idle) / streams, median) | {} KiB |",
        fmt_opt(per_stream)
    );

    // Targets
    let mut verdicts = Vec::new();
    for rate in [1000.0, 2000.0] {
        if !o.rates.contains(&rate) {
            continue;
        }
        let a = added_median(cells, false, Load::Rate(rate), Target::Gateway, false);
        verdicts.push(Verdict::at_most(
            &format!("added latency p50 at {rate:.0} req/s (non-stream)"),
            a.map(|a| a.p50),
            0.10,
            "ms",
        ));
        verdicts.push(Verdict::at_most(
            &format!("added latency p99 at {rate:.0} req/s (non-stream)"),
            a.map(|a| a.p99),
            0.30,
            "ms",
        ));
    }
    verdicts.push(Verdict::at_least(
        "max throughput through the gateway (non-stream)",
        max_gateway_nonstream,
        20_000.0,
        "req/s",
    ));
    let cpu_rate = if o.rates.contains(&2000.0) {
        Some(2000.0)
    } else {
        o.rates.iter().copied().reduce(f64::max)
    };
    if let Some(rate) = cpu_rate {
        verdicts.push(Verdict::at_most(
            &format!("gateway CPU per request at {rate:.0} req/s (non-stream)"),
            agg(&find(cells, false, Load::Rate(rate), Target::Gateway)).and_then(|a| a.cpu_ms),
            0.10,
            "ms",
        ));
    }
    verdicts.push(Verdict::at_most(
        "gateway CPU per request at max throughput (non-stream)",
        agg(&find(cells, false, Load::Max, Target::Gateway)).and_then(|a| a.cpu_ms),
        0.10,
        "ms",
    ));
    verdicts.push(Verdict::at_most(
        "RSS idle (MB taken as MiB)",
        idle_med.map(|b| b / 1048576.0),
        40.0,
        "MiB",
    ));
    verdicts.push(Verdict::at_most(
        "RSS per open stream",
        per_stream,
        64.0,
        "KiB",
    ));
    verdicts.push(Verdict::at_most(
        &format!("added TTFT p99 at {} concurrent streams", o.streams),
        ttft_added.map(|a| a.p99),
        0.5,
        "ms",
    ));
    let _ = writeln!(md, "\n## Targets\n");
    md.push_str(&verdict_table(&verdicts));
    let passed = verdicts.iter().filter(|v| v.pass).count();
    let _ = writeln!(md, "\n{passed}/{} targets PASS", verdicts.len());

    let json = json!({
        "unix_time": harness::unix_time(),
        "machine": {"nproc": nproc, "cpu": cpu_model, "kernel": kernel},
        "bench_profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "gateway_bin": o.gateway_bin.display().to_string(),
        "nginx": env.nginx.as_ref().map(|n| n.version().to_owned()),
        "mock": {"workers": 1, "latency_ms": 0, "ttft_ms": 0, "chunk_delay_ms": 0, "chunks": 4,
                 "stream_run": {"chunks": SLOW_STREAM_CHUNKS, "chunk_delay_ms": SLOW_STREAM_CHUNK_DELAY_MS}},
        "options": {"runs": o.runs, "duration_s": o.duration.as_secs_f64(), "warmup_s": o.warmup.as_secs_f64(),
                    "rates": o.rates, "connections": o.connections, "streams": o.streams, "threads": o.threads},
        "elapsed_s": elapsed.as_secs_f64(),
        "added_latency_ms": json_added,
        "added_ttft_ms": {"gateway_minus_direct": ttft_added, "nginx_minus_direct": ttft_added_nginx},
        "cpu_ms_per_request": json_cpu,
        "rss": {"idle_bytes": idles, "after_runs_bytes": rss_after,
                "streams": mems.iter().map(|m| json!({"idle": m.idle, "peak": m.peak, "after": m.after})).collect::<Vec<_>>(),
                "kib_per_stream": per_stream},
        "verdicts": verdicts,
        "cells": json_cells,
    });
    (md, verdicts, json)
}
