//! TOML text -> [`Config`], collecting every problem instead of stopping at the first.
//!
//! Each section (and each `[[deployments]]` / `[[fallbacks]]` element) is deserialized on its own
//! through `serde_path_to_error`, so one bad element does not hide problems in the others; then
//! semantic rules run over everything that parsed. Messages name the dotted key and the bad value:
//! `deployments.openai-main.weight = 0: must be >= 1`.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::raw::*;
use super::*;
use crate::providers;

/// Parses and validates `text`; `env` resolves `${NAME}` references.
pub fn parse_with_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut table: toml::Table = toml::from_str(text)
        .map_err(|e| ConfigErrors::single("(syntax)", e.to_string().trim_end().to_owned()))?;
    let mut p = Problems::default();
    expand_env_in_table(&mut table, "", env, &mut p);
    // Every model a deployment names, even a deployment with problems of its own, so fallbacks
    // are judged on their own.
    let models: HashSet<String> = table
        .get("deployments")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("model").and_then(toml::Value::as_str))
        .map(str::to_owned)
        .collect();

    let mut server = RawServer::default_filled();
    let mut router_table = toml::Table::new();
    let mut breaker_table = toml::Table::new();
    let mut log = RawLog::default_filled();
    let mut deployments: Vec<(String, RawDeployment)> = Vec::new();
    let mut fallbacks: Vec<(String, RawFallback)> = Vec::new();
    let mut group_tables = toml::Table::new();
    let mut aliases = toml::Table::new();
    let mut keys: Vec<(String, RawKey)> = Vec::new();
    let mut rules: Vec<(String, RawRule)> = Vec::new();
    let mut deployments_seen = false;

    for (key, value) in table {
        match key.as_str() {
            "server" => {
                if let Some(s) = section("server", value, &mut p) {
                    server = s;
                }
            }
            "router" => router_table = table_section("router", value, &mut p),
            "breaker" => breaker_table = table_section("breaker", value, &mut p),
            "log" => {
                if let Some(s) = section("log", value, &mut p) {
                    log = s;
                }
            }
            "deployments" => {
                deployments_seen = true;
                deployments = array_section("deployments", value, &mut p);
            }
            "fallbacks" => fallbacks = array_section("fallbacks", value, &mut p),
            "groups" => group_tables = table_section("groups", value, &mut p),
            "aliases" => aliases = table_section("aliases", value, &mut p),
            "keys" => keys = array_section("keys", value, &mut p),
            "rules" => rules = array_section("rules", value, &mut p),
            other => p.push(
                other,
                "unknown section (expected server, router, breaker, log, deployments, fallbacks, groups, aliases, keys, rules)",
            ),
        }
    }
    if !deployments_seen {
        p.push(
            "deployments",
            "at least one [[deployments]] entry is required",
        );
    }

    let server = validate_server(server, &mut p);
    let router_raw: RawRouter = section("router", toml::Value::Table(router_table.clone()), &mut p)
        .unwrap_or_else(RawRouter::default_filled);
    let per_try_ms = router_raw.per_try_timeout_ms;
    let rl_cooldown_ms = router_raw.rate_limit_cooldown_ms;
    let long_cooldown_ms = router_raw.long_cooldown_ms;
    let router = validate_router(router_raw, "router", &mut p);
    let breaker_raw: RawBreaker =
        section("breaker", toml::Value::Table(breaker_table.clone()), &mut p)
            .unwrap_or_else(RawBreaker::default_filled);
    let breaker = validate_breaker(breaker_raw, per_try_ms, "breaker", &mut p);
    let log = validate_log(log, &mut p);
    // An invalid [router] rejects the file; groups meanwhile get the defaults.
    let global = router.clone().or_else(|| {
        validate_router(
            RawRouter::default_filled(),
            "router",
            &mut Problems::default(),
        )
    });
    let Some(global) = global.map(Arc::new) else {
        return Err(ConfigErrors(p.0));
    };
    let defaults = DeploymentDefaults {
        policy: global,
        breaker: &breaker_table,
        per_try_ms,
        rl_cooldown_ms,
        long_cooldown_ms,
    };
    let (deployments, mut groups, group_index) =
        validate_deployments(deployments, &defaults, env, &mut p);
    validate_groups(
        group_tables,
        &router_table,
        &models,
        &mut groups,
        &group_index,
        &mut p,
    );
    validate_fallbacks(fallbacks, &models, &mut groups, &group_index, &mut p);
    let aliases = validate_aliases(aliases, &models, &groups, &mut p);
    let wildcards = wildcard_groups(&groups);
    let (keys, tenants) = validate_keys(keys, &mut p);
    let rules = validate_rules(rules, &deployments, &group_index, &keys, &mut p);

    match (server, router, breaker, log) {
        (Some(server), Some(router), Some(breaker), Some(log)) if p.0.is_empty() => Ok(Config {
            server,
            router,
            breaker,
            log,
            deployments,
            groups,
            group_index,
            aliases,
            wildcards,
            keys,
            rules,
            tenants,
        }),
        _ => Err(ConfigErrors(p.0)),
    }
}

/// A section that must be a table, kept as TOML so parts of it can be merged into others.
fn table_section(name: &str, value: toml::Value, p: &mut Problems) -> toml::Table {
    match value {
        toml::Value::Table(t) => t,
        other => {
            p.push(
                name,
                format!("must be a table ([{name}]), found {}", other.type_str()),
            );
            toml::Table::new()
        }
    }
}

/// `over` laid over `base`, key by key.
fn merged(base: &toml::Table, over: &toml::Table) -> toml::Value {
    let mut t = base.clone();
    for (k, v) in over {
        t.insert(k.clone(), v.clone());
    }
    toml::Value::Table(t)
}

#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// `key = value: message`
    fn bad(&mut self, key: impl AsRef<str>, value: impl std::fmt::Display, message: &str) {
        self.push(format!("{} = {value}", key.as_ref()), message);
    }
}

// === env expansion ===

fn expand_env_in_table(
    table: &mut toml::Table,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) {
    for (k, v) in table.iter_mut() {
        let key = join(path, k);
        expand_env_in_value(v, &key, env, p);
    }
}

fn expand_env_in_value(
    value: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) {
    match value {
        toml::Value::String(s) if s.contains('$') => match expand_env(s, env) {
            Ok(expanded) => *s = expanded,
            Err(msg) => p.push(path, msg),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let name = element_name(path, item, i);
                expand_env_in_value(item, &name, env, p);
            }
        }
        toml::Value::Table(t) => expand_env_in_table(t, path, env, p),
        _ => {}
    }
}

/// Replaces `${NAME}` with the variable's value; `$${` stays a literal `${`.
fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(stripped) = after.strip_prefix("${") {
            let end = stripped
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {s:?}"))?;
            let name = &stripped[..end];
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable name"
                ));
            }
            match env(name) {
                Some(v) if v.is_empty() => {
                    return Err(format!("environment variable {name} is set but empty"))
                }
                Some(v) => out.push_str(&v),
                None => return Err(format!("environment variable {name} is not set")),
            }
            rest = &stripped[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

// === sections ===

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// `deployments.openai-main` when the element has an `id`, else `deployments[2]`.
fn element_name(path: &str, item: &toml::Value, i: usize) -> String {
    match item.get("id").and_then(|v| v.as_str()) {
        Some(id) => format!("{path}.{id}"),
        None => match item
            .get(if path == "keys" { "name" } else { "from" })
            .and_then(|v| v.as_str())
        {
            Some(from) if path == "fallbacks" || path == "keys" => format!("{path}.{from}"),
            _ => format!("{path}[{i}]"),
        },
    }
}

/// Deserializes one section, reporting every unknown key and ill-typed value, not just the
/// first: serde stops at the first error, so the offending key is removed and the section is
/// deserialized again, until it parses or the error cannot be pinned on a key (a missing
/// required field). What parses is returned even after errors, so the semantic rules still
/// run on the rest of the section; the config is rejected either way.
fn section<T: DeserializeOwned>(name: &str, mut value: toml::Value, p: &mut Problems) -> Option<T> {
    let mut removed: Vec<String> = Vec::new();
    // Bounded by the number of keys in the section; the cap is a backstop.
    for _ in 0..256 {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        let first_line = msg.lines().next().unwrap_or("invalid value").to_owned();
        // A required key removed after a type error is missing now; that is not news.
        let echo = removed
            .iter()
            .any(|k| first_line == format!("missing field `{k}`"));
        if !echo {
            let key = if path == "." {
                name.to_owned()
            } else {
                join(name, &path)
            };
            p.push(key, first_line);
        }
        match remove_at(&mut value, e.path()) {
            Some(k) => removed.push(k),
            None => return None,
        }
    }
    None
}

/// Removes the value at `path` (a key of a table or an element of an array); returns the
/// removed key's name, or `None` when the path is the section itself.
fn remove_at(value: &mut toml::Value, path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let (last, parents) = segments.split_last()?;
    let mut cur = value;
    for seg in parents {
        cur = match seg {
            Segment::Map { key } => cur.get_mut(key.as_str())?,
            Segment::Seq { index } => cur.get_mut(*index)?,
            _ => return None,
        };
    }
    match last {
        Segment::Map { key } => cur
            .as_table_mut()?
            .remove(key.as_str())
            .map(|_| key.clone()),
        Segment::Seq { index } => {
            let items = cur.as_array_mut()?;
            (*index < items.len()).then(|| {
                items.remove(*index);
                index.to_string()
            })
        }
        _ => None,
    }
}

fn array_section<T: DeserializeOwned>(
    name: &str,
    value: toml::Value,
    p: &mut Problems,
) -> Vec<(String, T)> {
    let toml::Value::Array(items) = value else {
        p.push(
            name,
            format!(
                "must be an array of tables ([[{name}]]), found {}",
                value.type_str()
            ),
        );
        return Vec::new();
    };
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let elem = element_name(name, &item, i);
            section::<T>(&elem, item, p).map(|v| (elem, v))
        })
        .collect()
}

// === defaults for absent sections ===

trait DefaultFilled: Sized + DeserializeOwned {
    /// The section as if it were present but empty, so every `default_x()` applies.
    fn default_filled() -> Self {
        serde_path_to_error::deserialize(toml::Value::Table(toml::Table::new()))
            .unwrap_or_else(|_| Self::fallback())
    }
    fn fallback() -> Self;
}

impl DefaultFilled for RawServer {
    fn fallback() -> Self {
        RawServer::default()
    }
}
impl DefaultFilled for RawRouter {
    fn fallback() -> Self {
        RawRouter::default()
    }
}
impl DefaultFilled for RawBreaker {
    fn fallback() -> Self {
        RawBreaker::default()
    }
}
impl DefaultFilled for RawLog {
    fn fallback() -> Self {
        RawLog::default()
    }
}

// === semantic rules ===

fn ms(key: &str, value: u64, min: u64, max: u64, p: &mut Problems) -> Option<Duration> {
    in_range(key, value, min, max, p).map(Duration::from_millis)
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: T,
    min: T,
    max: T,
    p: &mut Problems,
) -> Option<T> {
    if value < min {
        p.bad(key, value, &format!("must be >= {min}"));
        None
    } else if value > max {
        p.bad(key, value, &format!("must be <= {max}"));
        None
    } else {
        Some(value)
    }
}

const DAY_MS: u64 = 86_400_000;

fn validate_server(raw: RawServer, p: &mut Problems) -> Option<ServerConfig> {
    let before = p.0.len();
    let listen = match raw.listen.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            p.bad(
                "server.listen",
                format!("{:?}", raw.listen),
                "must be an address like \"127.0.0.1:4000\"",
            );
            None
        }
    };
    let workers = in_range("server.workers", raw.workers, 0, 512, p);
    let actor_threads = in_range("server.actor_threads", raw.actor_threads, 1, 64, p);
    let max_body = in_range("server.max_body_bytes", raw.max_body_bytes, 1, 256 << 20, p);
    let body_read = ms(
        "server.body_read_timeout_ms",
        raw.body_read_timeout_ms,
        1,
        DAY_MS,
        p,
    );
    let client_req = ms(
        "server.client_request_timeout_ms",
        raw.client_request_timeout_ms,
        1,
        DAY_MS,
        p,
    );
    let keep_alive = ms("server.keep_alive_ms", raw.keep_alive_ms, 0, DAY_MS, p);
    let shutdown = ms(
        "server.shutdown_timeout_ms",
        raw.shutdown_timeout_ms,
        0,
        DAY_MS,
        p,
    );
    let max_conn = in_range("server.max_connections", raw.max_connections, 1, 1 << 20, p);
    let master_key = match raw.master_key {
        Some(k) if k.is_empty() => {
            p.push(
                "server.master_key",
                "must not be empty (omit it to disable auth)",
            );
            None
        }
        Some(k) if !is_header_safe(&k) => {
            p.push(
                "server.master_key",
                "must be printable ASCII without spaces (it is compared with a bearer token)",
            );
            None
        }
        other => other.map(Secret::new),
    };
    if p.0.len() != before {
        return None;
    }
    let workers = match workers? {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    };
    Some(ServerConfig {
        listen: listen?,
        workers,
        actor_threads: actor_threads? as usize,
        max_body_bytes: max_body? as usize,
        body_read_timeout: body_read?,
        client_request_timeout: client_req?,
        keep_alive: keep_alive?,
        shutdown_timeout: shutdown?,
        max_connections: max_conn? as usize,
        master_key,
    })
}

fn validate_router(raw: RawRouter, pre: &str, p: &mut Problems) -> Option<RouterConfig> {
    let before = p.0.len();
    let strategy = match Strategy::parse(&raw.strategy) {
        Some(s) => Some(s),
        None => {
            p.bad(
                format!("{pre}.strategy"),
                format!("{:?}", raw.strategy),
                &format!(
                    "unknown strategy (expected one of: {})",
                    Strategy::NAMES.join(", ")
                ),
            );
            None
        }
    };
    let num_retries = in_range(&format!("{pre}.num_retries"), raw.num_retries, 0, 10, p);
    let backoff_base = ms(
        &format!("{pre}.backoff_base_ms"),
        raw.backoff_base_ms,
        1,
        DAY_MS,
        p,
    );
    let backoff_max = ms(
        &format!("{pre}.backoff_max_ms"),
        raw.backoff_max_ms,
        1,
        DAY_MS,
        p,
    );
    if raw.backoff_max_ms < raw.backoff_base_ms {
        p.bad(
            format!("{pre}.backoff_max_ms"),
            raw.backoff_max_ms,
            &format!("must be >= {pre}.backoff_base_ms"),
        );
    }
    let max_retry_wait = ms(
        &format!("{pre}.max_retry_wait_ms"),
        raw.max_retry_wait_ms,
        0,
        DAY_MS,
        p,
    );
    let max_fallbacks = in_range(&format!("{pre}.max_fallbacks"), raw.max_fallbacks, 0, 16, p);
    let timeout = ms(&format!("{pre}.timeout_ms"), raw.timeout_ms, 1, DAY_MS, p);
    let per_try = ms(
        &format!("{pre}.per_try_timeout_ms"),
        raw.per_try_timeout_ms,
        1,
        DAY_MS,
        p,
    );
    let first_token = ms(
        &format!("{pre}.first_token_timeout_ms"),
        raw.first_token_timeout_ms,
        1,
        DAY_MS,
        p,
    );
    let idle = ms(
        &format!("{pre}.stream_idle_timeout_ms"),
        raw.stream_idle_timeout_ms,
        1,
        DAY_MS,
        p,
    );
    let connect = ms(
        &format!("{pre}.connect_timeout_ms"),
        raw.connect_timeout_ms,
        1,
        DAY_MS,
        p,
    );
    let max_resp = in_range(
        &format!("{pre}.max_response_bytes"),
        raw.max_response_bytes,
        1024,
        1 << 30,
        p,
    );
    let buffer = in_range(
        &format!("{pre}.stream_buffer_chunks"),
        raw.stream_buffer_chunks,
        1,
        1024,
        p,
    );
    let mailbox = ms(
        &format!("{pre}.mailbox_timeout_ms"),
        raw.mailbox_timeout_ms,
        1,
        60_000,
        p,
    );
    let max_conns = in_range(
        &format!("{pre}.max_connections_per_worker"),
        raw.max_connections_per_worker,
        1,
        1 << 20,
        p,
    );
    let rl_cooldown = ms(
        &format!("{pre}.rate_limit_cooldown_ms"),
        raw.rate_limit_cooldown_ms,
        0,
        DAY_MS,
        p,
    );
    let long_cooldown = ms(
        &format!("{pre}.long_cooldown_ms"),
        raw.long_cooldown_ms,
        0,
        DAY_MS,
        p,
    );
    let budget_ratio = in_range(
        &format!("{pre}.retry_budget_ratio"),
        raw.retry_budget_ratio,
        0.0,
        10.0,
        p,
    );
    let budget_min = in_range(
        &format!("{pre}.retry_budget_min_per_sec"),
        raw.retry_budget_min_per_sec,
        0,
        1_000_000,
        p,
    );
    let budget_window = ms(
        &format!("{pre}.retry_budget_window_ms"),
        raw.retry_budget_window_ms,
        1_000,
        3_600_000,
        p,
    );
    let hedge_delay = match raw.hedge_delay_ms {
        Some(v) => ms(&format!("{pre}.hedge_delay_ms"), v, 1, DAY_MS, p).map(Some),
        None => Some(None),
    };
    let max_pending = in_range(
        &format!("{pre}.max_pending"),
        raw.max_pending,
        0,
        1_000_000,
        p,
    );
    let pending_timeout = ms(
        &format!("{pre}.pending_timeout_ms"),
        raw.pending_timeout_ms,
        0,
        DAY_MS,
        p,
    );
    if p.0.len() != before {
        return None;
    }
    Some(RouterConfig {
        retry_budget_ratio: budget_ratio?,
        retry_budget_min_per_sec: budget_min?,
        retry_budget_window: budget_window?,
        hedge: raw.hedge,
        hedge_delay: hedge_delay?,
        max_pending: max_pending?,
        pending_timeout: pending_timeout?,
        strategy: strategy?,
        num_retries: num_retries?,
        backoff_base: backoff_base?,
        backoff_max: backoff_max?,
        max_retry_wait: max_retry_wait?,
        max_fallbacks: max_fallbacks? as usize,
        timeout: timeout?,
        per_try_timeout: per_try?,
        first_token_timeout: first_token?,
        stream_idle_timeout: idle?,
        connect_timeout: connect?,
        max_response_bytes: max_resp? as usize,
        stream_buffer_chunks: buffer? as usize,
        mailbox_timeout: mailbox?,
        max_connections_per_worker: max_conns? as usize,
        rate_limit_cooldown: rl_cooldown?,
        long_cooldown: long_cooldown?,
    })
}

fn validate_breaker(
    raw: RawBreaker,
    per_try_timeout_ms: u64,
    pre: &str,
    p: &mut Problems,
) -> Option<BreakerConfig> {
    let before = p.0.len();
    let failures = in_range(
        &format!("{pre}.consecutive_failures"),
        raw.consecutive_failures,
        1,
        1000,
        p,
    );
    let rate = fraction(&format!("{pre}.failure_rate"), raw.failure_rate, false, p);
    let min_calls = in_range(&format!("{pre}.min_calls"), raw.min_calls, 1, 1_000_000, p);
    let window = ms(&format!("{pre}.window_ms"), raw.window_ms, 1_000, DAY_MS, p);
    let cooldown = ms(&format!("{pre}.cooldown_ms"), raw.cooldown_ms, 1, DAY_MS, p);
    let max_cooldown = ms(
        &format!("{pre}.max_cooldown_ms"),
        raw.max_cooldown_ms,
        1,
        DAY_MS,
        p,
    );
    if raw.max_cooldown_ms < raw.cooldown_ms {
        p.bad(
            format!("{pre}.max_cooldown_ms"),
            raw.max_cooldown_ms,
            &format!("must be >= {pre}.cooldown_ms"),
        );
    }
    let jitter = fraction(&format!("{pre}.jitter"), raw.jitter, true, p);
    let probe_interval = ms(
        &format!("{pre}.probe_interval_ms"),
        raw.probe_interval_ms,
        0,
        DAY_MS,
        p,
    );
    let probes = in_range(
        &format!("{pre}.half_open_probes"),
        raw.half_open_probes,
        1,
        100,
        p,
    );
    let probe_timeout = ms(
        &format!("{pre}.probe_timeout_ms"),
        raw.probe_timeout_ms.unwrap_or(per_try_timeout_ms),
        1,
        DAY_MS,
        p,
    );
    if p.0.len() != before {
        return None;
    }
    Some(BreakerConfig {
        consecutive_failures: failures?,
        failure_rate: rate?,
        min_calls: min_calls?,
        window: window?,
        cooldown: cooldown?,
        max_cooldown: max_cooldown?,
        jitter: jitter?,
        probe_interval: probe_interval?,
        half_open_probes: probes?,
        probe_timeout: probe_timeout?,
    })
}

/// A share in `(0, 1]` (or `[0, 1]` when `zero_ok`).
fn fraction(key: &str, v: f64, zero_ok: bool, p: &mut Problems) -> Option<f64> {
    let low_ok = if zero_ok { v >= 0.0 } else { v > 0.0 };
    if low_ok && v <= 1.0 {
        Some(v)
    } else {
        let range = if zero_ok { "[0, 1]" } else { "(0, 1]" };
        p.bad(key, v, &format!("must be in {range}"));
        None
    }
}

fn validate_log(raw: RawLog, p: &mut Problems) -> Option<LogConfig> {
    let before = p.0.len();
    if tracing_subscriber::EnvFilter::try_new(&raw.level).is_err() {
        p.bad(
            "log.level",
            format!("{:?}", raw.level),
            "must be a level (error, warn, info, debug, trace) or a tracing filter directive",
        );
    }
    let format = match raw.format.as_str() {
        "json" => Some(LogFormat::Json),
        "text" => Some(LogFormat::Text),
        other => {
            p.bad(
                "log.format",
                format!("{other:?}"),
                "must be \"json\" or \"text\"",
            );
            None
        }
    };
    if p.0.len() != before {
        return None;
    }
    Some(LogConfig {
        level: raw.level,
        format: format?,
        requests: raw.requests,
    })
}

/// Printable ASCII, no spaces: safe inside an HTTP header value.
fn is_header_safe(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn is_label_safe(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Dollars per million tokens -> pico-dollars per token.
fn price(key: &str, per_mtok: f64, p: &mut Problems) -> u64 {
    if !per_mtok.is_finite() || !(0.0..=1_000_000.0).contains(&per_mtok) {
        p.bad(
            key,
            per_mtok,
            "must be a number between 0 and 1000000 (dollars per million tokens)",
        );
        return 0;
    }
    // $1/Mtok = 1e-6 $/token = 1e6 pico-dollars per token.
    (per_mtok * 1e6).round() as u64
}

type Deployments = (
    Vec<Arc<Deployment>>,
    Vec<ModelGroup>,
    HashMap<Arc<str>, usize>,
);

/// What a deployment inherits unless it says otherwise.
struct DeploymentDefaults<'a> {
    policy: Arc<RouterConfig>,
    breaker: &'a toml::Table,
    per_try_ms: u64,
    rl_cooldown_ms: u64,
    long_cooldown_ms: u64,
}

fn validate_deployments(
    raws: Vec<(String, RawDeployment)>,
    defaults: &DeploymentDefaults<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) -> Deployments {
    let mut deployments = Vec::new();
    let mut groups: Vec<ModelGroup> = Vec::new();
    let mut group_index: HashMap<Arc<str>, usize> = HashMap::new();
    let mut ids = HashSet::new();

    for (name, mut raw) in raws {
        let before = p.0.len();
        let k = |field: &str| format!("{name}.{field}");
        if raw.id.is_empty() || raw.id.len() > 64 || !is_label_safe(&raw.id) {
            p.bad(
                k("id"),
                format!("{:?}", raw.id),
                "must be 1-64 characters from A-Z a-z 0-9 . _ -",
            );
        } else if !ids.insert(raw.id.clone()) {
            p.bad(k("id"), format!("{:?}", raw.id), "duplicate deployment id");
        }
        if raw.model.is_empty()
            || raw.model.len() > 256
            || raw
                .model
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            p.bad(
                k("model"),
                format!("{:?}", raw.model),
                "must be 1-256 characters without whitespace",
            );
        }
        let provider = match providers::parse_provider(&raw.provider) {
            Some(kind) => Some(kind),
            None => {
                p.bad(
                    k("provider"),
                    format!("{:?}", raw.provider),
                    &format!(
                        "unknown provider (expected one of: {})",
                        providers::PROVIDER_NAMES.join(", ")
                    ),
                );
                None
            }
        };
        let passthrough = raw.upstream_model.is_none();
        let upstream_model = raw.upstream_model.unwrap_or_else(|| raw.model.clone());
        if upstream_model.is_empty() {
            p.bad(k("upstream_model"), "\"\"", "must not be empty");
        }
        // The URL is checked whether or not the provider is valid, so both problems show.
        let base_ok = match &raw.api_base {
            Some(base) => match check_base_url(base) {
                Ok(()) => true,
                Err(msg) => {
                    p.bad(k("api_base"), format!("{base:?}"), msg);
                    false
                }
            },
            None => true,
        };
        let api_key = match raw.api_key {
            Some(key) if key.is_empty() => {
                p.push(k("api_key"), "must not be empty (omit it to send no key)");
                None
            }
            Some(key) if !is_header_safe(&key) => {
                p.push(
                    k("api_key"),
                    "must be printable ASCII without spaces (it is sent in a header)",
                );
                None
            }
            other => other.map(Secret::new),
        };
        let wire = provider.filter(|_| base_ok).and_then(|(kind, preset)| {
            let extras = WireExtras {
                api_version: raw.api_version.take(),
                azure_auth: raw.azure_auth.take(),
                aws_region: raw.aws_region.take(),
                aws_access_key_id: raw.aws_access_key_id.take(),
                aws_secret_access_key: raw.aws_secret_access_key.take(),
                aws_session_token: raw.aws_session_token.take(),
                vertex_project: raw.vertex_project.take(),
                vertex_location: raw.vertex_location.take(),
            };
            wire(
                kind,
                preset,
                &raw.provider,
                raw.api_base.as_deref(),
                api_key.clone(),
                &raw.anthropic_version,
                extras,
                env,
                &k,
                p,
            )
        });
        let endpoint = wire.as_ref().map(|w| {
            w.url(providers::Op::Chat, &upstream_model, false, false)
                .or_else(|_| w.url(providers::Op::Embeddings, &upstream_model, false, false))
                .unwrap_or_else(|_| w.base.to_string())
        });
        if raw.weight == 0 || raw.weight > 1_000_000 {
            p.bad(k("weight"), raw.weight, "must be between 1 and 1000000");
        }
        let rpm = match raw.rpm {
            Some(0) => {
                p.bad(k("rpm"), 0, "must be >= 1 (omit it for no limit)");
                None
            }
            other => other.and_then(NonZeroU32::new),
        };
        if raw.max_concurrency == Some(0) {
            p.bad(
                k("max_concurrency"),
                0,
                "must be >= 1 (omit it for no limit)",
            );
        }
        let input = price(&k("input_cost_per_mtok"), raw.input_cost_per_mtok, p);
        let output = price(&k("output_cost_per_mtok"), raw.output_cost_per_mtok, p);
        let cached_input = match raw.cached_input_cost_per_mtok {
            Some(c) => price(&k("cached_input_cost_per_mtok"), c, p),
            None => input,
        };
        if raw.default_max_tokens == 0 {
            p.bad(k("default_max_tokens"), 0, "must be >= 1");
        }
        if raw.anthropic_version.is_empty() || !is_header_safe(&raw.anthropic_version) {
            p.bad(
                k("anthropic_version"),
                format!("{:?}", raw.anthropic_version),
                "must be a version like \"2023-06-01\"",
            );
        }
        if let Some(region) = &raw.region {
            if region.is_empty() || region.len() > 64 || !is_label_safe(region) {
                p.bad(
                    k("region"),
                    format!("{region:?}"),
                    "must be 1-64 characters from A-Z a-z 0-9 . _ -",
                );
            }
        }
        let tpm = match raw.tpm {
            Some(0) => {
                p.bad(k("tpm"), 0, "must be >= 1 (omit it for no limit)");
                None
            }
            other => other.and_then(NonZeroU32::new),
        };
        let adaptive = if raw.adaptive_concurrency {
            match raw.max_concurrency {
                None => {
                    p.push(
                        k("adaptive_concurrency"),
                        "needs max_concurrency (the ceiling the limit grows to)",
                    );
                    None
                }
                Some(max) if raw.min_concurrency == 0 || raw.min_concurrency > max => {
                    p.bad(
                        k("min_concurrency"),
                        raw.min_concurrency,
                        &format!("must be between 1 and max_concurrency ({max})"),
                    );
                    None
                }
                Some(max) => Some((raw.min_concurrency, max)),
            }
        } else {
            None
        };
        let opt_ms = |field: &str, v: Option<u64>, p: &mut Problems| {
            v.and_then(|v| ms(&k(field), v, 1, DAY_MS, p))
        };
        let per_try = opt_ms("per_try_timeout_ms", raw.per_try_timeout_ms, p);
        let first_token = opt_ms("first_token_timeout_ms", raw.first_token_timeout_ms, p);
        let idle = opt_ms("stream_idle_timeout_ms", raw.stream_idle_timeout_ms, p);
        let rl_cooldown = ms(
            &k("rate_limit_cooldown_ms"),
            raw.rate_limit_cooldown_ms
                .unwrap_or(defaults.rl_cooldown_ms),
            0,
            DAY_MS,
            p,
        );
        let long_cooldown = ms(
            &k("long_cooldown_ms"),
            raw.long_cooldown_ms.unwrap_or(defaults.long_cooldown_ms),
            0,
            DAY_MS,
            p,
        );
        let breaker = {
            let over = raw.breaker.clone().unwrap_or_default();
            let bkey = k("breaker");
            section::<RawBreaker>(&bkey, merged(defaults.breaker, &over), p).and_then(|b| {
                validate_breaker(
                    b,
                    raw.per_try_timeout_ms.unwrap_or(defaults.per_try_ms),
                    &bkey,
                    p,
                )
            })
        };
        if p.0.len() != before {
            continue;
        }
        let (
            Some((provider, _)),
            Some(wire),
            Some(endpoint),
            Some(breaker),
            Some(rl_cooldown),
            Some(long_cooldown),
        ) = (
            provider,
            wire,
            endpoint,
            breaker,
            rl_cooldown,
            long_cooldown,
        )
        else {
            continue;
        };
        let wildcard = raw.model.ends_with('*');
        if wildcard && raw.model[..raw.model.len() - 1].contains('*') {
            p.bad(
                k("model"),
                format!("{:?}", raw.model),
                "a wildcard model has one `*`, at the end (e.g. \"openai/*\")",
            );
            continue;
        }

        let model: Arc<str> = raw.model.into();
        let group = match group_index.get(&model) {
            Some(&g) => g,
            None => {
                let g = groups.len();
                groups.push(ModelGroup {
                    index: g,
                    name: model.clone(),
                    deployments: Vec::new(),
                    fallbacks: Vec::new(),
                    context_window_fallbacks: Vec::new(),
                    content_policy_fallbacks: Vec::new(),
                    policy: defaults.policy.clone(),
                    wildcard: wildcard.then(|| model[..model.len() - 1].into()),
                });
                group_index.insert(model.clone(), g);
                g
            }
        };
        let index = deployments.len();
        groups[group].deployments.push(index);
        deployments.push(Arc::new(Deployment {
            index,
            id: raw.id.into(),
            group,
            model,
            provider,
            wire,
            upstream_model: upstream_model.into(),
            endpoint: endpoint.into(),
            api_key,
            weight: raw.weight,
            rpm,
            max_concurrency: raw.max_concurrency,
            prices: Prices {
                input,
                cached_input,
                output,
            },
            default_max_tokens: raw.default_max_tokens,
            anthropic_version: raw.anthropic_version.into(),
            order: raw.order,
            region: raw.region.map(Into::into),
            tpm,
            adaptive,
            per_try_timeout: per_try,
            first_token_timeout: first_token,
            stream_idle_timeout: idle,
            rate_limit_cooldown: rl_cooldown,
            long_cooldown,
            breaker,
            wildcard: wildcard && passthrough,
        }));
    }
    (deployments, groups, group_index)
}

/// The provider-specific deployment keys, taken out of the raw deployment.
struct WireExtras {
    api_version: Option<String>,
    azure_auth: Option<String>,
    aws_region: Option<String>,
    aws_access_key_id: Option<String>,
    aws_secret_access_key: Option<String>,
    aws_session_token: Option<String>,
    vertex_project: Option<String>,
    vertex_location: Option<String>,
}

/// Builds how to reach a deployment; every key that belongs to another provider is an error
/// (a typo'd provider must not silently ignore its settings).
#[expect(clippy::too_many_arguments, reason = "one deployment's wire settings")]
fn wire(
    kind: ProviderKind,
    preset: providers::Preset,
    name: &str,
    api_base: Option<&str>,
    api_key: Option<Secret>,
    anthropic_version: &str,
    x: WireExtras,
    env: &dyn Fn(&str) -> Option<String>,
    k: &dyn Fn(&str) -> String,
    p: &mut Problems,
) -> Option<providers::Wire> {
    let before = p.0.len();
    let only = |p: &mut Problems, set: bool, key: &str, who: &str| {
        if set {
            p.push(k(key), format!("only applies to provider = {who}"));
        }
    };
    let is_azure = kind == ProviderKind::Azure;
    let is_bedrock = kind == ProviderKind::Bedrock;
    let is_vertex = kind == ProviderKind::Vertex;
    if !is_azure {
        only(p, x.api_version.is_some(), "api_version", "\"azure\"");
        only(p, x.azure_auth.is_some(), "azure_auth", "\"azure\"");
    }
    if !is_bedrock {
        for (key, v) in [
            ("aws_region", &x.aws_region),
            ("aws_access_key_id", &x.aws_access_key_id),
            ("aws_secret_access_key", &x.aws_secret_access_key),
            ("aws_session_token", &x.aws_session_token),
        ] {
            only(p, v.is_some(), key, "\"bedrock\"");
        }
    }
    if !is_vertex {
        only(
            p,
            x.vertex_project.is_some(),
            "vertex_project",
            "\"vertex\"",
        );
        only(
            p,
            x.vertex_location.is_some(),
            "vertex_location",
            "\"vertex\"",
        );
    }
    let token_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if let Some(v) = &x.api_version {
        if !token_ok(v) {
            p.bad(
                k("api_version"),
                format!("{v:?}"),
                "must be a version like \"2024-10-21\"",
            );
        }
    }
    let azure_bearer = match x.azure_auth.as_deref() {
        None | Some("api-key") => false,
        Some("bearer") => true,
        Some(other) => {
            p.bad(
                k("azure_auth"),
                format!("{other:?}"),
                "must be \"api-key\" or \"bearer\"",
            );
            false
        }
    };
    let mut aws = None;
    let mut default_base = kind.default_api_base(preset).map(str::to_owned);
    if is_bedrock {
        let region = x
            .aws_region
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"));
        let region = match region {
            Some(r) if token_ok(&r) => r,
            Some(r) => {
                p.bad(
                    k("aws_region"),
                    format!("{r:?}"),
                    "must be a region like \"us-east-1\"",
                );
                String::new()
            }
            None => {
                p.push(
                    k("aws_region"),
                    "is required for bedrock (or set AWS_REGION in the environment)",
                );
                String::new()
            }
        };
        default_base = Some(format!("https://bedrock-runtime.{region}.amazonaws.com"));
        let from_config = x.aws_access_key_id.is_some() || x.aws_secret_access_key.is_some();
        let (akid, secret, token) = if from_config {
            (
                x.aws_access_key_id,
                x.aws_secret_access_key,
                x.aws_session_token,
            )
        } else if api_key.is_some() {
            // A Bedrock API key in config wins over credentials in the environment.
            (None, None, None)
        } else {
            (
                env("AWS_ACCESS_KEY_ID"),
                env("AWS_SECRET_ACCESS_KEY"),
                x.aws_session_token.or_else(|| env("AWS_SESSION_TOKEN")),
            )
        };
        let credentials = match (akid, secret) {
            (Some(a), Some(s)) if is_header_safe(&a) && !s.is_empty() => {
                Some(providers::bedrock::AwsCredentials {
                    access_key_id: a,
                    secret_access_key: Secret::new(s),
                    session_token: token.filter(|t| !t.is_empty()).map(Secret::new),
                })
            }
            (None, None) if api_key.is_some() => None,
            (None, None) => {
                p.push(
                    k("aws_access_key_id"),
                    "bedrock needs credentials: aws_access_key_id and aws_secret_access_key \
                     (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), or a Bedrock api_key",
                );
                None
            }
            (Some(_), Some(_)) => {
                p.push(
                    k("aws_access_key_id"),
                    "must be printable ASCII without spaces, with a non-empty secret",
                );
                None
            }
            _ => {
                p.push(
                    k("aws_secret_access_key"),
                    "aws_access_key_id and aws_secret_access_key go together",
                );
                None
            }
        };
        aws = Some(providers::Aws {
            region: region.into(),
            credentials,
        });
    }
    let mut vertex = None;
    if is_vertex {
        let location = x
            .vertex_location
            .unwrap_or_else(|| "us-central1".to_owned());
        if !token_ok(&location) {
            p.bad(
                k("vertex_location"),
                format!("{location:?}"),
                "must be a location like \"us-central1\"",
            );
        }
        match x.vertex_project {
            Some(project) if token_ok(&project) => {
                default_base = Some(if location == "global" {
                    "https://aiplatform.googleapis.com".to_owned()
                } else {
                    format!("https://{location}-aiplatform.googleapis.com")
                });
                vertex = Some((project.into(), location.into()));
            }
            Some(project) => p.bad(
                k("vertex_project"),
                format!("{project:?}"),
                "must be a project id",
            ),
            None => p.push(k("vertex_project"), "is required for vertex"),
        }
    }
    let base = match (api_base, default_base) {
        (Some(b), _) => b.trim_end_matches('/').to_owned(),
        (None, Some(d)) => d,
        (None, None) => {
            p.push(
                k("api_base"),
                format!("is required for provider = {name:?}"),
            );
            String::new()
        }
    };
    if p.0.len() != before {
        return None;
    }
    let name = providers::PROVIDER_NAMES
        .iter()
        .find(|n| **n == name)
        .copied()
        .unwrap_or("openai");
    Some(providers::Wire {
        kind,
        preset,
        name,
        base: base.into(),
        api_key,
        api_version: x.api_version.map(Into::into),
        azure_bearer,
        anthropic_version: anthropic_version.into(),
        vertex,
        aws,
    })
}

fn check_base_url(base: &str) -> Result<(), &'static str> {
    let uri: awc::http::Uri = base
        .parse()
        .map_err(|_| "must be an absolute http:// or https:// URL")?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("must be an absolute http:// or https:// URL"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("must name a host");
    }
    if uri.query().is_some() || base.contains('#') {
        return Err("must not have a query or fragment");
    }
    Ok(())
}

/// `[groups.NAME]`: `[router]` keys overridden for one model group.
fn validate_groups(
    tables: toml::Table,
    router: &toml::Table,
    models: &HashSet<String>,
    groups: &mut [ModelGroup],
    group_index: &HashMap<Arc<str>, usize>,
    p: &mut Problems,
) {
    for (name, value) in tables {
        let key = format!("groups.{name}");
        let over = table_section(&key, value, p);
        if !models.contains(&name) {
            p.push(key, "no deployment serves this model");
            continue;
        }
        let global_only: Vec<&String> = over
            .keys()
            .filter(|k| GLOBAL_ONLY_ROUTER_KEYS.contains(&k.as_str()))
            .collect();
        if !global_only.is_empty() {
            for k in global_only {
                p.push(format!("{key}.{k}"), "can only be set in [router]");
            }
            continue;
        }
        let Some(raw) = section::<RawRouter>(&key, merged(router, &over), p) else {
            continue;
        };
        let policy = validate_router(raw, &key, p);
        // A group whose deployments all have problems of their own does not exist; the file is
        // rejected for those.
        if let (Some(policy), Some(&g)) = (policy, group_index.get(name.as_str())) {
            groups[g].policy = Arc::new(policy);
        }
    }
}

/// `models` holds every model named by a deployment, valid or not, so a fallback is judged on
/// its own even when a deployment it names has problems of its own.
fn validate_fallbacks(
    raws: Vec<(String, RawFallback)>,
    models: &HashSet<String>,
    groups: &mut [ModelGroup],
    group_index: &HashMap<Arc<str>, usize>,
    p: &mut Problems,
) {
    let mut seen_from = HashSet::new();
    for (name, raw) in raws {
        if !matches!(
            raw.on.as_str(),
            "default" | "context_window" | "content_policy"
        ) {
            p.bad(
                format!("{name}.on"),
                format!("{:?}", raw.on),
                "must be one of: default, context_window, content_policy",
            );
            continue;
        }
        if !models.contains(&raw.from) {
            p.bad(
                format!("{name}.from"),
                format!("{:?}", raw.from),
                "no deployment serves this model",
            );
            continue;
        }
        if !seen_from.insert((raw.from.clone(), raw.on.clone())) {
            p.bad(
                format!("{name}.from"),
                format!("{:?}", raw.from),
                &format!(
                    "more than one [[fallbacks]] entry for this model with on = {:?}",
                    raw.on
                ),
            );
            continue;
        }
        if raw.to.is_empty() {
            p.push(format!("{name}.to"), "must list at least one model");
            continue;
        }
        let mut seen_to = HashSet::new();
        for (i, target) in raw.to.iter().enumerate() {
            let key = format!("{name}.to[{i}]");
            if !models.contains(target) {
                p.bad(
                    key,
                    format!("{target:?}"),
                    "no deployment serves this model",
                );
            } else if target.ends_with('*') {
                p.bad(
                    key,
                    format!("{target:?}"),
                    "a wildcard group cannot be a fallback: it serves the model the client names",
                );
            } else if *target == raw.from {
                p.bad(
                    key,
                    format!("{target:?}"),
                    "a model cannot fall back to itself",
                );
            } else if !seen_to.insert(target) {
                p.bad(key, format!("{target:?}"), "listed twice");
            }
        }
        // With every deployment valid, every name resolves; otherwise the config is rejected.
        let Some(&from) = group_index.get(raw.from.as_str()) else {
            continue;
        };
        let chain: Vec<usize> = raw
            .to
            .iter()
            .filter_map(|t| group_index.get(t.as_str()).copied())
            .filter(|&g| g != from)
            .take(groups[from].policy.max_fallbacks)
            .collect();
        let group = &mut groups[from];
        match raw.on.as_str() {
            "context_window" => group.context_window_fallbacks = chain,
            "content_policy" => group.content_policy_fallbacks = chain,
            _ => group.fallbacks = chain,
        }
    }
}

/// `[aliases]`: `"requested" = "group"`. An alias names a model group (or a name a wildcard
/// group serves) and may not shadow a group.
fn validate_aliases(
    table: toml::Table,
    models: &HashSet<String>,
    groups: &[ModelGroup],
    p: &mut Problems,
) -> HashMap<Arc<str>, Arc<str>> {
    let mut out = HashMap::new();
    for (alias, target) in table {
        let key = format!("aliases.{alias}");
        let Some(target) = target.as_str() else {
            p.push(key, "must be a model name (a string)");
            continue;
        };
        if models.contains(&alias) {
            p.bad(
                key,
                format!("{target:?}"),
                "a model group of this name exists; an alias may not shadow it",
            );
            continue;
        }
        let wildcard_serves = groups.iter().any(|g| {
            g.wildcard
                .as_ref()
                .is_some_and(|pre| target.len() > pre.len() && target.starts_with(&**pre))
        });
        if !models.contains(target) && !wildcard_serves {
            p.bad(
                key,
                format!("{target:?}"),
                "no deployment serves this model",
            );
            continue;
        }
        out.insert(alias.into(), target.into());
    }
    out
}

fn wildcard_groups(groups: &[ModelGroup]) -> Vec<(Arc<str>, usize)> {
    let mut w: Vec<(Arc<str>, usize)> = groups
        .iter()
        .filter_map(|g| g.wildcard.clone().map(|pre| (pre, g.index)))
        .collect();
    w.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    w
}

fn validate_keys(raws: Vec<(String, RawKey)>, p: &mut Problems) -> (Vec<ApiKey>, Vec<Arc<str>>) {
    let mut keys = Vec::new();
    let mut tenants: Vec<Arc<str>> = Vec::new();
    let mut names = HashSet::new();
    for (elem, raw) in raws {
        let before = p.0.len();
        if raw.name.is_empty() || raw.name.len() > 64 || !is_label_safe(&raw.name) {
            p.bad(
                format!("{elem}.name"),
                format!("{:?}", raw.name),
                "must be 1-64 characters from A-Z a-z 0-9 . _ -",
            );
        } else if !names.insert(raw.name.clone()) {
            p.bad(
                format!("{elem}.name"),
                format!("{:?}", raw.name),
                "duplicate key name",
            );
        }
        if raw.key.len() < 16 || !is_header_safe(&raw.key) {
            p.push(
                format!("{elem}.key"),
                "must be at least 16 printable ASCII characters without spaces",
            );
        }
        for (field, v) in [("tenant", &raw.tenant), ("region", &raw.region)] {
            if let Some(v) = v {
                if v.is_empty() || v.len() > 64 || !is_label_safe(v) {
                    p.bad(
                        format!("{elem}.{field}"),
                        format!("{v:?}"),
                        "must be 1-64 characters from A-Z a-z 0-9 . _ -",
                    );
                }
            }
        }
        if p.0.len() != before {
            continue;
        }
        let tenant: Option<Arc<str>> = raw.tenant.map(Into::into);
        if let Some(t) = &tenant {
            if !tenants.contains(t) {
                tenants.push(t.clone());
            }
        }
        keys.push(ApiKey {
            name: raw.name.into(),
            key: Secret::new(raw.key),
            tenant,
            region: raw.region.map(Into::into),
        });
    }
    (keys, tenants)
}

fn validate_rules(
    raws: Vec<(String, RawRule)>,
    deployments: &[Arc<Deployment>],
    group_index: &HashMap<Arc<str>, usize>,
    keys: &[ApiKey],
    p: &mut Problems,
) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (elem, raw) in raws {
        let before = p.0.len();
        let group = match &raw.model {
            Some(m) => match group_index.get(m.as_str()) {
                Some(&g) => Some(g),
                None => {
                    p.bad(
                        format!("{elem}.model"),
                        format!("{m:?}"),
                        "no deployment serves this model",
                    );
                    None
                }
            },
            None => None,
        };
        if let Some(k) = &raw.key {
            if !keys.iter().any(|key| *key.name == **k) {
                p.bad(
                    format!("{elem}.key"),
                    format!("{k:?}"),
                    "no [[keys]] entry has this name",
                );
            }
        }
        let ids = |field: &str, list: &[String], p: &mut Problems| -> Vec<usize> {
            list.iter()
                .enumerate()
                .filter_map(|(i, id)| {
                    let d = deployments.iter().find(|d| *d.id == **id);
                    match d {
                        Some(d) if group.is_none_or(|g| d.group == g) => Some(d.index),
                        Some(_) => {
                            p.bad(
                                format!("{elem}.{field}[{i}]"),
                                format!("{id:?}"),
                                "this deployment does not serve the rule's model",
                            );
                            None
                        }
                        None => {
                            p.bad(
                                format!("{elem}.{field}[{i}]"),
                                format!("{id:?}"),
                                "no such deployment",
                            );
                            None
                        }
                    }
                })
                .collect()
        };
        let prefer = ids("prefer", &raw.prefer, p);
        let only = ids("only", &raw.only, p);
        if prefer.is_empty() == only.is_empty() && p.0.len() == before {
            p.push(
                elem.clone(),
                "needs exactly one of `prefer` or `only` (a non-empty list of deployment ids)",
            );
        }
        if p.0.len() != before {
            continue;
        }
        rules.push(Rule {
            name: raw.name.unwrap_or_else(|| elem.clone()).into(),
            group,
            user: raw.user,
            key: raw.key,
            headers: raw
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            tags: raw.tags,
            prefer,
            only,
        });
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[deployments]]
id = "a"
model = "gpt-4o"
provider = "openai"
"#;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        parse_with_env(text, &|name| match name {
            "OPENAI_API_KEY" => Some("sk-test".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        })
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => panic!("expected the config to be rejected"),
            Err(e) => {
                e.0.iter()
                    .map(|p| format!("{}: {}", p.key, p.message))
                    .collect()
            }
        }
    }

    fn assert_has(problems: &[String], needle: &str) {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "no problem contains {needle:?}; got {problems:#?}"
        );
    }

    fn one(provider_and_keys: &str) -> String {
        format!("[[deployments]]\nid = \"d\"\nmodel = \"m\"\n{provider_and_keys}\n")
    }

    #[test]
    fn provider_settings_build_the_wire() {
        let c = parse(&one(
            "provider = \"azure\"\napi_base = \"https://r.openai.azure.com/\"\nupstream_model = \"prod-4o\"\napi_version = \"2024-10-21\"\nazure_auth = \"bearer\"\napi_key = \"k\"",
        ))
        .expect("valid azure");
        let d = &c.deployments[0];
        assert_eq!(
            &*d.endpoint,
            "https://r.openai.azure.com/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
        );
        assert!(d.wire.azure_bearer);

        let c = parse_with_env(
            &one("provider = \"bedrock\"\nupstream_model = \"anthropic.claude-3-haiku-20240307-v1:0\""),
            &|name| match name {
                "AWS_REGION" => Some("eu-west-1".to_owned()),
                "AWS_ACCESS_KEY_ID" => Some("AKIDEXAMPLE".to_owned()),
                "AWS_SECRET_ACCESS_KEY" => Some("secret".to_owned()),
                _ => None,
            },
        )
        .expect("bedrock from the environment");
        let d = &c.deployments[0];
        assert_eq!(
            &*d.endpoint,
            "https://bedrock-runtime.eu-west-1.amazonaws.com/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
        );
        let aws = d.wire.aws.as_ref().expect("aws settings");
        assert_eq!(&*aws.region, "eu-west-1");
        assert!(aws.credentials.is_some());
        assert!(
            !format!("{:?}", d.wire).contains("secret\""),
            "the secret never prints"
        );

        let c = parse(&one(
            "provider = \"vertex\"\nvertex_project = \"p1\"\nvertex_location = \"global\"\napi_key = \"tok\"",
        ))
        .expect("valid vertex");
        assert!(c.deployments[0]
            .endpoint
            .starts_with("https://aiplatform.googleapis.com/v1/projects/p1/locations/global/"));

        let c = parse(&one("provider = \"mistral\"")).expect("a preset needs nothing else");
        assert_eq!(
            &*c.deployments[0].endpoint,
            "https://api.mistral.ai/v1/chat/completions"
        );
        assert_eq!(c.deployments[0].wire.name, "mistral");
        let c = parse(&one("provider = \"voyage\"")).expect("voyage");
        assert_eq!(
            &*c.deployments[0].endpoint,
            "https://api.voyageai.com/v1/embeddings"
        );
    }

    #[test]
    fn provider_settings_are_checked() {
        let p = problems(&one("provider = \"bedrock\""));
        assert_has(&p, "deployments.d.aws_region: is required for bedrock");
        assert_has(
            &p,
            "deployments.d.aws_access_key_id: bedrock needs credentials",
        );
        let p = problems(&one(
            "provider = \"openai\"\napi_version = \"2024-10-21\"\naws_region = \"us-east-1\"",
        ));
        assert_has(
            &p,
            "deployments.d.api_version: only applies to provider = \"azure\"",
        );
        assert_has(
            &p,
            "deployments.d.aws_region: only applies to provider = \"bedrock\"",
        );
        let p = problems(&one("provider = \"azure\""));
        assert_has(
            &p,
            "deployments.d.api_base: is required for provider = \"azure\"",
        );
        let p = problems(&one("provider = \"vertex\""));
        assert_has(&p, "deployments.d.vertex_project: is required for vertex");
        let p = problems(&one(
            "provider = \"bedrock\"\naws_region = \"us-east-1\"\naws_access_key_id = \"AKID\"",
        ));
        assert_has(
            &p,
            "aws_access_key_id and aws_secret_access_key go together",
        );
        let p = problems(&one(
            "provider = \"azure\"\napi_base = \"https://r.example\"\nazure_auth = \"token\"",
        ));
        assert_has(&p, "deployments.d.azure_auth = \"token\"");
    }

    #[test]
    fn minimal_config_gets_every_default() {
        let c = parse(MINIMAL).expect("minimal config is valid");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:4000");
        assert_eq!(c.server.max_body_bytes, 4 << 20);
        assert_eq!(c.router.num_retries, 3);
        assert_eq!(c.router.backoff_base, Duration::from_secs(1));
        assert_eq!(c.router.max_fallbacks, 3);
        assert_eq!(c.breaker.consecutive_failures, 5);
        assert_eq!(c.breaker.cooldown, Duration::from_secs(30));
        let d = &c.deployments[0];
        assert_eq!(&*d.endpoint, "https://api.openai.com/v1/chat/completions");
        assert_eq!(&*d.upstream_model, "gpt-4o");
        assert_eq!(d.weight, 1);
        assert!(d.api_key.is_none());
        assert_eq!(c.groups.len(), 1);
        assert_eq!(
            c.group_by_name("gpt-4o").map(|g| g.deployments.clone()),
            Some(vec![0])
        );
    }

    #[test]
    fn the_reference_config_is_valid_and_matches_the_defaults() {
        let text = include_str!("../../config/switchyard.toml");
        let c = parse_with_env(text, &|_| Some("from-env".to_owned()))
            .expect("config/switchyard.toml is valid");
        assert_eq!(c.deployments.len(), 2);
        assert_eq!(c.groups[0].fallbacks, vec![1]);
    }

    #[test]
    fn the_demo_config_is_valid_without_any_environment() {
        let text = include_str!("../../config/demo.toml");
        parse_with_env(text, &|_| None).expect("config/demo.toml needs no environment");
    }

    #[test]
    fn prices_are_pico_dollars_per_token() {
        let c = parse(
            r#"
[[deployments]]
id = "a"
model = "m"
provider = "openai"
input_cost_per_mtok = 2.50
output_cost_per_mtok = 10.0
"#,
        )
        .expect("valid");
        let prices = c.deployments[0].prices;
        assert_eq!(prices.input, 2_500_000);
        assert_eq!(prices.cached_input, 2_500_000);
        assert_eq!(prices.output, 10_000_000);
        // 1000 prompt tokens + 100 completion tokens = $0.0025 + $0.001 = 3.5e9 pico-dollars.
        assert_eq!(prices.cost(1000, 0, 100), 3_500_000_000);
    }

    #[test]
    fn secrets_come_from_the_environment() {
        let c = parse(
            r#"
[[deployments]]
id = "a"
model = "m"
provider = "openai"
api_key = "${OPENAI_API_KEY}"
"#,
        )
        .expect("valid");
        assert_eq!(
            c.deployments[0].api_key.as_ref().map(|k| k.expose()),
            Some("sk-test")
        );
        assert_eq!(format!("{:?}", c.deployments[0].api_key), "Some(***)");
    }

    #[test]
    fn a_missing_environment_variable_names_the_key() {
        let p = problems(
            r#"
[[deployments]]
id = "anthropic-main"
model = "m"
provider = "anthropic"
api_key = "${ANTHROPIC_API_KEY}"
"#,
        );
        assert_eq!(
            p,
            vec!["deployments.anthropic-main.api_key: environment variable ANTHROPIC_API_KEY is not set"]
        );
    }

    #[test]
    fn an_empty_environment_variable_is_rejected() {
        let p = problems(&MINIMAL.replace(
            "provider = \"openai\"",
            "provider = \"openai\"\napi_key = \"${EMPTY}\"",
        ));
        assert_has(
            &p,
            "deployments.a.api_key: environment variable EMPTY is set but empty",
        );
    }

    #[test]
    fn dollar_dollar_brace_is_a_literal() {
        assert_eq!(
            expand_env("a$${B}c$d", &|_| None),
            Ok("a${B}c$d".to_owned())
        );
        assert!(expand_env("${1BAD}", &|_| None).is_err());
        assert!(expand_env("${OPEN", &|_| None).is_err());
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let p = problems(&format!("{MINIMAL}wieght = 2\n"));
        assert_has(&p, "deployments.a.wieght: unknown field `wieght`");
        let p = problems(&format!("[server]\nlisten_addr = \"x\"\n{MINIMAL}"));
        assert_has(&p, "server.listen_addr: unknown field `listen_addr`");
        let p = problems(&format!("[routing]\nx = 1\n{MINIMAL}"));
        assert_has(&p, "routing: unknown section");
    }

    #[test]
    fn type_errors_name_the_key() {
        let p = problems(&format!("[server]\nworkers = \"two\"\n{MINIMAL}"));
        assert_has(&p, "server.workers: invalid type: string \"two\"");
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let p = problems(
            r#"
[server]
listen = "nowhere"
[router]
strategy = "fastest"
num_retries = 99
[breaker]
consecutive_failures = 0
[[deployments]]
id = "a"
model = "m"
provider = "openai"
weight = 0
[[deployments]]
id = "a"
model = "m"
provider = "cohere-ish"
api_base = "ftp://x"
[[fallbacks]]
from = "m"
to = ["nope", "m"]
"#,
        );
        assert_has(&p, "server.listen = \"nowhere\": must be an address");
        assert_has(&p, "router.strategy = \"fastest\": unknown strategy");
        assert_has(&p, "router.num_retries = 99: must be <= 10");
        assert_has(&p, "breaker.consecutive_failures = 0: must be >= 1");
        assert_has(
            &p,
            "deployments.a.weight = 0: must be between 1 and 1000000",
        );
        assert_has(&p, "deployments.a.id = \"a\": duplicate deployment id");
        assert_has(
            &p,
            "deployments.a.provider = \"cohere-ish\": unknown provider",
        );
        assert_has(
            &p,
            "fallbacks.m.to[0] = \"nope\": no deployment serves this model",
        );
        assert_has(
            &p,
            "fallbacks.m.to[1] = \"m\": a model cannot fall back to itself",
        );
        assert!(p.len() >= 9, "{p:#?}");
    }

    #[test]
    fn several_problems_in_one_section_are_all_reported() {
        let p = problems(
            r#"
[server]
listen = "nope"
max_body_bytes = 0
workerz = 2
workers = "two"
[[deployments]]
id = "a"
model = "m"
provider = "azure-ish"
api_base = "ftp://x"
weight = "heavy"
rpm = 0
[[fallbacks]]
from = "m"
to = ["nothing"]
"#,
        );
        assert_has(&p, "server.workerz: unknown field `workerz`");
        assert_has(&p, "server.workers: invalid type: string \"two\"");
        assert_has(&p, "server.listen = \"nope\": must be an address");
        assert_has(&p, "server.max_body_bytes = 0: must be >= 1");
        assert_has(&p, "deployments.a.weight: invalid type: string \"heavy\"");
        assert_has(
            &p,
            "deployments.a.provider = \"azure-ish\": unknown provider",
        );
        assert_has(
            &p,
            "deployments.a.api_base = \"ftp://x\": must be an absolute",
        );
        assert_has(&p, "deployments.a.rpm = 0: must be >= 1");
        assert_has(
            &p,
            "fallbacks.m.to[0] = \"nothing\": no deployment serves this model",
        );
        assert_eq!(p.len(), 9, "{p:#?}");
    }

    #[test]
    fn a_required_key_with_a_bad_type_is_reported_once() {
        let p = problems("[[deployments]]\nid = 7\nmodel = \"m\"\nprovider = \"openai\"\n");
        assert_eq!(
            p,
            vec!["deployments[0].id: invalid type: integer `7`, expected a string"]
        );
    }

    #[test]
    fn bad_urls_and_ids_are_rejected() {
        let p = problems(
            r#"
[[deployments]]
id = "has space"
model = "m"
provider = "openai"
api_base = "not a url"
[[deployments]]
id = "b"
model = "m"
provider = "openai"
api_base = "https://x.example/v1?key=1"
"#,
        );
        assert_has(
            &p,
            "deployments.has space.id = \"has space\": must be 1-64 characters",
        );
        assert_has(
            &p,
            "deployments.has space.api_base = \"not a url\": must be an absolute",
        );
        assert_has(
            &p,
            "deployments.b.api_base = \"https://x.example/v1?key=1\": must not have a query",
        );
    }

    #[test]
    fn limits_must_be_positive() {
        let p = problems(&format!(
            "[server]\nmax_body_bytes = 0\n[router]\ntimeout_ms = 0\nbackoff_base_ms = 10\nbackoff_max_ms = 5\n{MINIMAL}rpm = 0\nmax_concurrency = 0\n"
        ));
        assert_has(&p, "server.max_body_bytes = 0: must be >= 1");
        assert_has(&p, "router.timeout_ms = 0: must be >= 1");
        assert_has(
            &p,
            "router.backoff_max_ms = 5: must be >= router.backoff_base_ms",
        );
        assert_has(&p, "deployments.a.rpm = 0: must be >= 1");
        assert_has(&p, "deployments.a.max_concurrency = 0: must be >= 1");
    }

    #[test]
    fn no_deployments_is_an_error() {
        let p = problems("[server]\nlisten = \"127.0.0.1:1\"\n");
        assert_has(
            &p,
            "deployments: at least one [[deployments]] entry is required",
        );
    }

    #[test]
    fn syntax_errors_are_reported_with_a_position() {
        let p = problems("[server\n");
        assert!(p[0].starts_with("(syntax): "), "{p:?}");
        assert!(p[0].contains("line 1"), "{p:?}");
    }

    #[test]
    fn fallbacks_are_cut_to_max_fallbacks() {
        let c = parse(
            r#"
[router]
max_fallbacks = 1
[[deployments]]
id = "a"
model = "m1"
provider = "openai"
[[deployments]]
id = "b"
model = "m2"
provider = "openai"
[[deployments]]
id = "c"
model = "m3"
provider = "anthropic"
[[fallbacks]]
from = "m1"
to = ["m2", "m3"]
"#,
        )
        .expect("valid");
        assert_eq!(c.groups[0].fallbacks, vec![1]);
        assert_eq!(
            &*c.deployments[2].endpoint,
            "https://api.anthropic.com/v1/messages"
        );
    }

    const ROUTING: &str = r#"
[router]
strategy = "latency"
num_retries = 2

[groups."gpt-4o"]
strategy = "round-robin"
hedge = true
hedge_delay_ms = 250

[breaker]
consecutive_failures = 4

[[deployments]]
id = "a"
model = "gpt-4o"
provider = "openai"
order = 2
region = "eu"
tpm = 1000
adaptive_concurrency = true
max_concurrency = 8
breaker = { consecutive_failures = 2, probe_interval_ms = 0 }

[[deployments]]
id = "b"
model = "claude"
provider = "anthropic"

[[deployments]]
id = "c"
model = "openai/*"
provider = "openai"

[[fallbacks]]
from = "gpt-4o"
to = ["claude"]
on = "context_window"

[aliases]
"gpt-4" = "gpt-4o"
"mini" = "openai/gpt-4.1-mini"

[[keys]]
name = "team-a"
key = "0123456789abcdef"
tenant = "tenant-a"
region = "eu"

[[rules]]
model = "gpt-4o"
headers = { "X-Tier" = "premium" }
prefer = ["a"]
"#;

    #[test]
    fn routing_sections_resolve_into_group_policies_deployment_overrides_and_lookups() {
        let c = parse(ROUTING).unwrap();
        let g = c.group_by_name("gpt-4o").unwrap();
        assert_eq!(g.policy.strategy, Strategy::RoundRobin);
        assert!(g.policy.hedge);
        assert_eq!(g.policy.hedge_delay, Some(Duration::from_millis(250)));
        // Not overridden in the group: inherited from [router].
        assert_eq!(g.policy.num_retries, 2);
        assert_eq!(
            c.group_by_name("claude").unwrap().policy.strategy,
            Strategy::Latency
        );
        assert!(g.fallbacks.is_empty());
        assert_eq!(g.context_window_fallbacks, vec![1]);
        let a = &c.deployments[0];
        assert_eq!((a.order, a.region.as_deref()), (2, Some("eu")));
        assert_eq!(a.tpm.map(NonZeroU32::get), Some(1000));
        assert_eq!(a.adaptive, Some((1, 8)));
        assert_eq!(a.breaker.consecutive_failures, 2);
        assert_eq!(a.breaker.probe_interval, Duration::ZERO);
        // Not overridden for the deployment: from [breaker], then the defaults.
        assert_eq!(c.deployments[1].breaker.consecutive_failures, 4);
        assert_eq!(
            c.deployments[1].breaker.probe_interval,
            Duration::from_secs(10)
        );
        assert_eq!(c.resolve("gpt-4").unwrap().name.as_ref(), "gpt-4o");
        assert_eq!(c.resolve("mini").unwrap().name.as_ref(), "openai/*");
        assert_eq!(c.resolve("openai/o3").unwrap().name.as_ref(), "openai/*");
        assert!(c.resolve("openai/").is_none());
        assert!(c.deployments[2].wildcard);
        assert_eq!(c.tenant_of("tenant-a/gpt-4o"), Some("tenant-a"));
        assert_eq!(c.tenant_of("openai/o3"), None);
        assert_eq!(
            c.rules[0].headers,
            vec![("x-tier".to_owned(), "premium".to_owned())]
        );
        assert_eq!(c.rules[0].prefer, vec![0]);
    }

    #[test]
    fn routing_sections_name_every_problem() {
        let p = problems(
            r#"
[groups."gpt-4o"]
connect_timeout_ms = 10
[groups."nope"]
strategy = "latency"

[[deployments]]
id = "a"
model = "gpt-4o"
provider = "openai"
adaptive_concurrency = true
breaker = { failure_rate = 2.0 }

[[fallbacks]]
from = "gpt-4o"
to = ["gpt-4o"]
on = "sometimes"

[aliases]
"gpt-4o" = "gpt-4o"
"x" = "missing"

[[keys]]
name = "k"
key = "short"

[[rules]]
model = "gpt-4o"
prefer = ["ghost"]
"#,
        );
        assert_has(
            &p,
            "groups.gpt-4o.connect_timeout_ms: can only be set in [router]",
        );
        assert_has(&p, "groups.nope: no deployment serves this model");
        assert_has(
            &p,
            "deployments.a.adaptive_concurrency: needs max_concurrency",
        );
        assert_has(
            &p,
            "deployments.a.breaker.failure_rate = 2: must be in (0, 1]",
        );
        assert_has(&p, "fallbacks.gpt-4o.on = \"sometimes\"");
        assert_has(
            &p,
            "aliases.gpt-4o = \"gpt-4o\": a model group of this name exists",
        );
        assert_has(
            &p,
            "aliases.x = \"missing\": no deployment serves this model",
        );
        assert_has(&p, "keys.k.key: must be at least 16");
        assert_has(&p, "rules[0].prefer[0] = \"ghost\": no such deployment");
        assert!(
            !p.iter().any(|m| m.contains("short")),
            "a key's value never appears in a problem: {p:#?}"
        );
    }
}
