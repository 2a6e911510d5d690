//! Process harness for the benchmark and scenario commands (`bench`, `scenario`).
//!
//! - [`MockThread`]: a [`MockUpstream`] running in its own actix `System` on a dedicated thread,
//!   driven from plain (non-async) code.
//! - [`GatewayProc`]: the gateway binary as a child process, with its CPU time and RSS read from
//!   `/proc`.
//! - [`Nginx`]: nginx as a plain reverse proxy, the reference cost of one HTTP hop (optional).
//! - [`GatewayConfig`]: builds the gateway's TOML.
//! - [`http_request`]: a tiny blocking HTTP/1.1 client for `/health`, `/metrics` and probes.
//! - [`stats`]: the pure maths of the reports (medians, differences, verdicts).
//!
//! Everything here targets loopback only and stops what it started when dropped.

pub mod stats;

use std::fmt::{self, Display, Write as _};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::mock::{Behavior, MockConfig, MockUpstream};

/// An error of the harness: what failed, in words (with a log tail when a process would not
/// start).
#[derive(Debug)]
pub struct HarnessError(pub String);

impl Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

impl From<io::Error> for HarnessError {
    fn from(e: io::Error) -> Self {
        HarnessError(e.to_string())
    }
}

fn err(msg: impl Into<String>) -> HarnessError {
    HarnessError(msg.into())
}

// ------------------------------------------------------------------------------------------
// Ports, directories, /proc

/// A free loopback port: binds `127.0.0.1:0`, reads the port, releases it.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A free loopback address (see [`free_port`]).
pub fn free_addr() -> io::Result<SocketAddr> {
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)))
}

/// Creates a fresh directory `base/tmp/<tag>-<pid>-<n>` and returns it, absolute (nginx resolves
/// relative paths against its prefix, and children may run elsewhere).
pub fn temp_dir(base: &Path, tag: &str) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = base
        .join("tmp")
        .join(format!("{tag}-{}-{n}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    dir.canonicalize()
}

/// Spawns `cmd` with stdin closed and stdout and stderr to `log`, and registers it for the
/// Ctrl-C cleanup.
fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child, HarnessError> {
    let out = std::fs::File::create(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .map_err(|e| err(format!("cannot start {:?}: {e}", cmd.get_program())))?;
    register_child(child.id());
    Ok(child)
}

/// Polls `ready` every 50 ms until it holds (`Ok`), the child exits (`Err(Some(status))`) or
/// `timeout` passes (`Err(None)`).
fn wait_ready(
    child: &mut Child,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Some(status));
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The gateway binary next to the running one (`target/release/switchyard` beside
/// `target/release/bench`), for `--gateway-bin`'s default.
pub fn default_gateway_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("switchyard")))
        .unwrap_or_else(|| PathBuf::from("target/release/switchyard"))
}

/// Seconds since the Unix epoch.
pub fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Clock ticks per second (`getconf CLK_TCK`, read once; 100 if that fails).
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime + stime in clock ticks, from the text of `/proc/PID/stat`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: fields are counted
    // after the last ')'. Field 3 (state) is then index 0; utime (14) is 11, stime (15) is 12.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` in bytes, from the text of `/proc/PID/status`.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// CPU seconds (user + system, all threads) used so far by process `pid`.
pub fn proc_cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_ticks(&stat)
        .ok_or_else(|| io::Error::other(format!("cannot parse /proc/{pid}/stat")))?;
    Ok(ticks as f64 / clock_ticks())
}

/// Resident set size of process `pid`, in bytes.
pub fn proc_rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_rss(&status)
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// The soft limit on open files of this process (`Max open files` in /proc/self/limits).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The machine, for reports: (nproc, CPU model, kernel release).
pub fn machine_info() -> (usize, String, String) {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    (nproc, model, kernel)
}

/// Child processes started by the harness, stopped by [`install_signal_cleanup`].
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn children() -> std::sync::MutexGuard<'static, Vec<u32>> {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

fn register_child(pid: u32) {
    children().push(pid);
}

fn unregister_child(pid: u32) {
    children().retain(|p| *p != pid);
}

/// On SIGINT or SIGTERM: stops every child process the harness started (TERM, then KILL after
/// 2 s) and exits with 130 / 143. Call once, early in `main`.
pub fn install_signal_cleanup() {
    let _ = std::thread::Builder::new()
        .name("signal-cleanup".to_owned())
        .spawn(|| {
            actix_web::rt::System::new().block_on(async {
                use actix_web::rt::signal::unix::{signal as unix_signal, SignalKind};
                let Ok(mut term) = unix_signal(SignalKind::terminate()) else {
                    return;
                };
                let code = tokio::select! {
                    _ = actix_web::rt::signal::ctrl_c() => 130,
                    _ = term.recv() => 143,
                };
                let pids = children().clone();
                eprintln!("\ninterrupted: stopping {} child process(es)", pids.len());
                for pid in &pids {
                    signal(*pid, "TERM");
                }
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline
                    && pids
                        .iter()
                        .any(|p| Path::new(&format!("/proc/{p}")).exists())
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                for pid in &pids {
                    if Path::new(&format!("/proc/{pid}")).exists() {
                        signal(*pid, "KILL");
                    }
                }
                std::process::exit(code);
            });
        });
}

/// Sends a signal with `kill -SIG pid`.
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `grace` for the child to exit after `sig`, then kills it.
fn stop_child(child: &mut Child, sig: &str, grace: Duration) {
    unregister_child(child.id());
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal(child.id(), sig);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `lines` lines of a file (for error messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all.get(all.len().saturating_sub(lines)..)
        .unwrap_or_default()
        .join("\n")
}

// ------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client (loopback control traffic only: health, metrics, probes)

/// A response of [`http_request`].
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection (`Connection: close`); `body` is sent as JSON when given.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> io::Result<HttpResponse> {
    if !addr.ip().is_loopback() {
        return Err(io::Error::other("the harness only talks to loopback"));
    }
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        let _ = write!(
            req,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    stream.write_all(req.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut raw = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::other("bad chunk size"))?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk)?;
            raw.extend_from_slice(&chunk);
            line.clear();
            reader.read_line(&mut line)?;
        }
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        raw.resize(len, 0);
        reader.read_exact(&mut raw)?;
    } else {
        reader.read_to_end(&mut raw)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&raw).into_owned(),
    })
}

/// Sum of every sample of a Prometheus metric (all label sets), from `/metrics` text.
pub fn metric_sum(metrics: &str, name: &str) -> f64 {
    metric_samples(metrics, name).iter().map(|(_, v)| v).sum()
}

/// Every sample of a metric: (labels text without braces, value).
pub fn metric_samples(metrics: &str, name: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
                let (labels, v) = r.split_once('}')?;
                (labels.to_owned(), v)
            } else if rest.starts_with(' ') {
                (String::new(), rest)
            } else {
                return None; // another metric whose name starts with `name`
            };
            Some((labels, value.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// The value of a metric with a given `deployment` label, if present.
pub fn metric_for_deployment(metrics: &str, name: &str, deployment: &str) -> Option<f64> {
    let needle = format!("deployment=\"{deployment}\"");
    metric_samples(metrics, name)
        .into_iter()
        .find(|(labels, _)| labels.split(',').any(|l| l == needle))
        .map(|(_, v)| v)
}

// ------------------------------------------------------------------------------------------
// MockThread

/// A [`MockUpstream`] (recording off) in its own actix `System` on a dedicated thread.
/// Its methods are plain sync calls; dropping it stops the mock and joins the thread.
pub struct MockThread {
    // Field order matters: `mock` is dropped first, so that the thread holds the last
    // reference when `_guard` asks it to stop, and can stop the server gracefully.
    mock: Arc<MockUpstream>,
    _guard: MockGuard,
}

struct MockGuard {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for MockGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl MockThread {
    /// Starts a mock with `workers` worker threads and this default behaviour.
    pub fn start(workers: usize, default_behavior: Behavior) -> Result<MockThread, HarnessError> {
        let config = MockConfig {
            workers: workers.max(1),
            record: false,
            default_behavior,
            ..MockConfig::default()
        };
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<Arc<MockUpstream>>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mock-upstream".to_owned())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let mock = match MockUpstream::start(config).await {
                        Ok(m) => Arc::new(m),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    if ready_tx.send(Ok(mock.clone())).is_err() {
                        return;
                    }
                    // Resolves on a stop request or when the handle is dropped.
                    let _ = stop_rx.await;
                    match Arc::try_unwrap(mock) {
                        Ok(mock) => {
                            // Graceful for finished work; streams still open are cut after 2 s.
                            let _ = tokio::time::timeout(Duration::from_secs(2), mock.stop()).await;
                        }
                        Err(mock) => drop(mock), // stops without waiting
                    }
                });
            })?;
        let guard = MockGuard {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        let mock = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| err("the mock upstream did not start within 10 s"))?
            .map_err(|e| err(format!("the mock upstream did not start: {e}")))?;
        Ok(MockThread {
            mock,
            _guard: guard,
        })
    }

    /// The running mock (all its methods are sync).
    pub fn mock(&self) -> &MockUpstream {
        &self.mock
    }

    pub fn addr(&self) -> SocketAddr {
        self.mock.addr()
    }

    pub fn url(&self) -> String {
        self.mock.url()
    }

    pub fn route_url(&self, route: &str) -> String {
        self.mock.route_url(route)
    }

    pub fn set_behavior(&self, route: &str, behavior: Behavior) {
        self.mock.set_behavior(route, behavior);
    }

    pub fn request_count(&self, route: &str) -> usize {
        self.mock.request_count(route)
    }
}

// ------------------------------------------------------------------------------------------
// GatewayProc

/// The gateway binary running as a child process.
pub struct GatewayProc {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
}

impl GatewayProc {
    /// Writes `config_toml` to a fresh directory under `base` (e.g. `target/loadtests`),
    /// starts `bin --config FILE` (output to `gateway.log` there) and waits until `GET /health`
    /// on `listen` answers 200 (15 s, else an error with the log tail).
    /// `listen` must be the `server.listen` of the config.
    pub fn start(
        bin: &Path,
        config_toml: &str,
        listen: SocketAddr,
        base: &Path,
    ) -> Result<GatewayProc, HarnessError> {
        if !listen.ip().is_loopback() {
            return Err(err(format!("{listen} is not a loopback address")));
        }
        if !bin.is_file() {
            return Err(err(format!(
                "gateway binary {} not found (build it with cargo build --release -p switchyard)",
                bin.display()
            )));
        }
        let dir = temp_dir(base, "gateway")?;
        let config = dir.join("gateway.toml");
        std::fs::write(&config, config_toml)?;
        let log = dir.join("gateway.log");
        let child = spawn_logged(Command::new(bin).arg("--config").arg(&config), &log)?;
        let mut gw = GatewayProc {
            child,
            addr: listen,
            dir,
            log,
        };
        let ready = wait_ready(&mut gw.child, Duration::from_secs(15), || {
            let health = http_request(listen, "GET", "/health", None, Duration::from_millis(500));
            health.is_ok_and(|r| r.status == 200)
        });
        match ready {
            Ok(()) => Ok(gw),
            Err(Some(status)) => Err(err(format!(
                "the gateway exited ({status}) before answering /health:\n{}",
                tail(&gw.log, 20)
            ))),
            Err(None) => {
                let msg = format!(
                    "the gateway did not answer /health on {listen} within 15 s:\n{}",
                    tail(&gw.log, 20)
                );
                stop_child(&mut gw.child, "KILL", Duration::from_secs(1));
                Err(err(msg))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// CPU seconds (user + system) the gateway used so far.
    pub fn cpu_seconds(&self) -> io::Result<f64> {
        proc_cpu_seconds(self.pid())
    }

    /// Resident set size in bytes.
    pub fn rss_bytes(&self) -> io::Result<u64> {
        proc_rss_bytes(self.pid())
    }

    /// `GET path`: the body of a 2xx answer (5 s timeout).
    pub fn get(&self, path: &str) -> Result<String, HarnessError> {
        let r = http_request(self.addr, "GET", path, None, Duration::from_secs(5))
            .map_err(|e| err(format!("GET {path}: {e}")))?;
        if (200..300).contains(&r.status) {
            Ok(r.body)
        } else {
            Err(err(format!("GET {path}: status {}", r.status)))
        }
    }

    /// Total requests answered so far (sum of `gateway_requests_total`).
    pub fn requests_total(&self) -> Result<f64, HarnessError> {
        Ok(metric_sum(&self.get("/metrics")?, "gateway_requests_total"))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        stop_child(&mut self.child, "TERM", Duration::from_secs(3));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------------------------------------
// Nginx

/// nginx as a plain reverse proxy (keep-alive upstream, no buffering, no access log) in front
/// of one upstream, on a free loopback port.
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    version: String,
}

/// Where nginx is: `nginx` on the PATH, else `/usr/sbin/nginx`.
pub fn find_nginx() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nginx"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = PathBuf::from("/usr/sbin/nginx");
        p.is_file().then_some(p)
    })
}

/// The nginx configuration used by [`Nginx::start`].
pub fn nginx_conf(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream mock {{
        server {upstream};
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 75s;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
        }}
    }}
}}
"
    )
}

impl Nginx {
    /// Starts nginx in front of `upstream` if it is installed; `Ok(None)` (and a line on
    /// stdout) when it is not.
    pub fn start(upstream: SocketAddr, base: &Path) -> Result<Option<Nginx>, HarnessError> {
        let Some(bin) = find_nginx() else {
            println!("nginx was not found (PATH, /usr/sbin/nginx): the nginx reference and the gateway/nginx ratios are skipped");
            return Ok(None);
        };
        let version = Command::new(&bin)
            .arg("-v")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default();
        let dir = temp_dir(base, "nginx")?;
        let listen = free_addr()?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir, listen, upstream))?;
        let log = dir.join("nginx.out");
        let mut cmd = Command::new(&bin);
        cmd.arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"));
        let child = spawn_logged(&mut cmd, &log)?;
        let mut nginx = Nginx {
            child,
            addr: listen,
            dir,
            version,
        };
        // Any HTTP answer will do (the mock answers GET / with a 404 through nginx).
        let ready = wait_ready(&mut nginx.child, Duration::from_secs(10), || {
            http_request(listen, "GET", "/", None, Duration::from_millis(500)).is_ok()
        });
        match ready {
            Ok(()) => Ok(Some(nginx)),
            Err(Some(status)) => Err(err(format!(
                "nginx exited ({status}):\n{}\n{}",
                tail(&log, 10),
                tail(&nginx.dir.join("error.log"), 10)
            ))),
            Err(None) => Err(err(format!(
                "nginx did not answer on {listen} within 10 s:\n{}",
                tail(&nginx.dir.join("error.log"), 10)
            ))),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `nginx -v` output, e.g. `nginx version: nginx/1.22.1`.
    pub fn version(&self) -> &str {
        &self.version
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM is nginx's fast shutdown: the master stops its workers and exits. (Killing only
        // the master would orphan the workers, so the grace is generous.)
        stop_child(&mut self.child, "TERM", Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------------------------------------
// Gateway configuration

/// One deployment of a [`GatewayConfig`] (provider `openai`).
#[derive(Clone, Debug)]
pub struct DeploymentSpec {
    pub id: String,
    pub model: String,
    /// `{api_base}/chat/completions` is called, e.g. `http://127.0.0.1:PORT/a/v1`.
    pub api_base: String,
    pub weight: u32,
}

impl DeploymentSpec {
    /// An openai deployment of `model` at `{route_url}/v1`, weight 1.
    pub fn new(id: &str, model: &str, route_url: &str) -> Self {
        DeploymentSpec {
            id: id.to_owned(),
            model: model.to_owned(),
            api_base: format!("{route_url}/v1"),
            weight: 1,
        }
    }
}

/// Builds a gateway config: `workers` 2, `log.requests = false`, `log.level = "warn"`,
/// the given deployments and extra `[server]`, `[router]`, `[breaker]` keys.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub workers: usize,
    pub deployments: Vec<DeploymentSpec>,
    /// Extra keys: (key, TOML value text), e.g. `("timeout_ms", "2000")`.
    pub server: Vec<(String, String)>,
    pub router: Vec<(String, String)>,
    pub breaker: Vec<(String, String)>,
}

impl GatewayConfig {
    pub fn new(listen: SocketAddr) -> Self {
        GatewayConfig {
            listen,
            workers: 2,
            deployments: Vec::new(),
            server: Vec::new(),
            router: Vec::new(),
            breaker: Vec::new(),
        }
    }

    pub fn deployment(mut self, d: DeploymentSpec) -> Self {
        self.deployments.push(d);
        self
    }

    pub fn server(mut self, key: &str, value: impl Display) -> Self {
        self.server.push((key.to_owned(), value.to_string()));
        self
    }

    pub fn router(mut self, key: &str, value: impl Display) -> Self {
        self.router.push((key.to_owned(), value.to_string()));
        self
    }

    pub fn breaker(mut self, key: &str, value: impl Display) -> Self {
        self.breaker.push((key.to_owned(), value.to_string()));
        self
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Written by the switchyard-loadtests harness.\n");
        let _ = writeln!(s, "[server]");
        let _ = writeln!(s, "listen = {}", toml_str(&self.listen.to_string()));
        let _ = writeln!(s, "workers = {}", self.workers);
        // Stop quickly at the end of a run, even with streams still open.
        if !self.server.iter().any(|(k, _)| k == "shutdown_timeout_ms") {
            let _ = writeln!(s, "shutdown_timeout_ms = 1000");
        }
        for (k, v) in &self.server {
            let _ = writeln!(s, "{k} = {v}");
        }
        let _ = writeln!(s, "\n[router]");
        for (k, v) in &self.router {
            let _ = writeln!(s, "{k} = {v}");
        }
        let _ = writeln!(s, "\n[breaker]");
        for (k, v) in &self.breaker {
            let _ = writeln!(s, "{k} = {v}");
        }
        let _ = writeln!(
            s,
            "\n[log]\nlevel = \"warn\"\nformat = \"text\"\nrequests = false"
        );
        for d in &self.deployments {
            let _ = writeln!(s, "\n[[deployments]]");
            let _ = writeln!(s, "id = {}", toml_str(&d.id));
            let _ = writeln!(s, "model = {}", toml_str(&d.model));
            let _ = writeln!(s, "provider = \"openai\"");
            let _ = writeln!(s, "api_base = {}", toml_str(&d.api_base));
            let _ = writeln!(s, "weight = {}", d.weight);
        }
        s
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ------------------------------------------------------------------------------------------
// Small helpers shared by the commands

/// Parses a comma-separated list of positive numbers, e.g. `500,1000,2000`.
pub fn parse_rates(s: &str) -> Result<Vec<f64>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim()
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r > 0.0)
                .ok_or_else(|| format!("bad rate {p:?}"))
        })
        .collect()
}

/// Samples the RSS of a process every `every` on a thread until stopped; returns the samples.
pub struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<Vec<(f64, u64)>>>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(rss) = proc_rss_bytes(pid) {
                    samples.push((t0.elapsed().as_secs_f64(), rss));
                }
                std::thread::sleep(every);
            }
            samples
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; (seconds since start, RSS bytes) samples.
    pub fn finish(mut self) -> Vec<(f64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let stat = "1234 (switch yard) S 1 1234 1234 0 -1 4194560 500 0 0 0 150 25 0 0 20 0 5 0 \
                    100 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(175));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn parses_proc_status() {
        let status = "Name:\tswitchyard\nVmPeak:\t  300000 kB\nVmRSS:\t   14056 kB\nThreads:\t5\n";
        assert_eq!(parse_status_rss(status), Some(14056 * 1024));
        assert_eq!(parse_status_rss("Name: x\n"), None);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(proc_rss_bytes(pid).unwrap() > 0);
        assert!(proc_cpu_seconds(pid).unwrap() >= 0.0);
        assert!(clock_ticks() > 0.0);
    }

    #[test]
    fn mock_thread_serves_and_stops() {
        let mock = MockThread::start(1, Behavior::text("hi")).unwrap();
        mock.set_behavior("x", Behavior::text("from x"));
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let r = http_request(
            mock.addr(),
            "POST",
            "/x/v1/chat/completions",
            Some(body),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.contains("from x"), "{}", r.body);
        assert_eq!(mock.request_count("x"), 1);
        let addr = mock.addr();
        drop(mock);
        // The port may already belong to another test's server (tests run in parallel and
        // ports are ephemeral), so "stopped" means: this mock no longer answers.
        if let Ok(r) = http_request(
            addr,
            "POST",
            "/x/v1/chat/completions",
            Some(body),
            Duration::from_millis(500),
        ) {
            assert!(
                !r.body.contains("from x"),
                "the stopped mock still answered"
            );
        }
    }

    #[test]
    fn http_client_refuses_other_hosts() {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert!(http_request(addr, "GET", "/", None, Duration::from_millis(10)).is_err());
    }

    #[test]
    fn parses_metrics() {
        let text = "# TYPE gateway_requests_total counter\n\
            gateway_requests_total{model_group=\"m\",deployment=\"a\",status_class=\"2xx\"} 10\n\
            gateway_requests_total{model_group=\"m\",deployment=\"b\",status_class=\"5xx\"} 2\n\
            gateway_requests_total_other 99\n\
            gateway_breaker_state{deployment=\"b\"} 2\n\
            gateway_breaker_state{deployment=\"bb\"} 1\n\
            plain 3.5\n";
        assert_eq!(metric_sum(text, "gateway_requests_total"), 12.0);
        assert_eq!(
            metric_for_deployment(text, "gateway_breaker_state", "b"),
            Some(2.0)
        );
        assert_eq!(
            metric_for_deployment(text, "gateway_breaker_state", "c"),
            None
        );
        assert_eq!(metric_sum(text, "plain"), 3.5);
    }

    #[test]
    fn parses_rates() {
        assert_eq!(
            parse_rates("500, 1000,2000").unwrap(),
            vec![500.0, 1000.0, 2000.0]
        );
        assert!(parse_rates("500,-1").is_err());
    }

    #[test]
    fn config_builder_writes_every_section() {
        let addr: SocketAddr = "127.0.0.1:4567".parse().unwrap();
        let toml = GatewayConfig::new(addr)
            .deployment(DeploymentSpec::new("a", "m", "http://127.0.0.1:9/a"))
            .deployment(DeploymentSpec::new("b", "m", "http://127.0.0.1:9/b"))
            .router("timeout_ms", 2000)
            .breaker("cooldown_ms", 3000)
            .server("keep_alive_ms", 75000)
            .to_toml();
        assert!(toml.contains("listen = \"127.0.0.1:4567\""));
        assert!(toml.contains("workers = 2"));
        assert!(toml.contains("[router]\ntimeout_ms = 2000"));
        assert!(toml.contains("[breaker]\ncooldown_ms = 3000"));
        assert!(toml.contains("keep_alive_ms = 75000"));
        assert!(toml.contains("requests = false"));
        assert!(toml.contains("api_base = \"http://127.0.0.1:9/b/v1\""));
        assert_eq!(toml.matches("[[deployments]]").count(), 2);
        assert_eq!(toml_str("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn nginx_conf_has_the_reference_settings() {
        let conf = nginx_conf(
            Path::new("/tmp/x"),
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        for needle in [
            "worker_processes 2;",
            "keepalive 128;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "proxy_buffering off;",
            "access_log off;",
            "daemon off;",
            "master_process on;",
            "pid /tmp/x/nginx.pid;",
            "listen 127.0.0.1:1;",
            "server 127.0.0.1:2;",
        ] {
            assert!(conf.contains(needle), "{needle}");
        }
    }
}
