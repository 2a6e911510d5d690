//! Configuration: `raw.rs` mirrors the TOML file, `validate.rs` turns it into the [`Config`] below
//! (resolved durations, URLs, indices, secrets) or into a list of every problem found. Handlers and
//! actors only ever see `Config`.

mod raw;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::policy::breaker::BreakerConfig;
use crate::policy::scoring::Strategy;
use crate::providers::ProviderKind;
use crate::secret::Secret;

pub use validate::parse_with_env;

/// The validated configuration. Immutable once built; shared as `Arc<Config>`.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub router: RouterConfig,
    pub breaker: BreakerConfig,
    pub log: LogConfig,
    /// Indexed by `Deployment::index`.
    pub deployments: Vec<Arc<Deployment>>,
    /// Indexed by `ModelGroup::index`, in order of first appearance in the file.
    pub groups: Vec<ModelGroup>,
    group_index: HashMap<Arc<str>, usize>,
    /// Requested name -> model group name.
    pub aliases: HashMap<Arc<str>, Arc<str>>,
    /// Wildcard groups as (prefix, group), longest prefix first.
    pub wildcards: Vec<(Arc<str>, usize)>,
    pub keys: Vec<ApiKey>,
    pub rules: Vec<Rule>,
    /// Every tenant named by a key.
    pub tenants: Vec<Arc<str>>,
}

#[derive(Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// HTTP worker threads; each runs its own RouterActor and upstream client.
    pub workers: usize,
    /// Arbiter threads hosting the deployment actors.
    pub actor_threads: usize,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub client_request_timeout: Duration,
    pub keep_alive: Duration,
    pub shutdown_timeout: Duration,
    /// Per worker.
    pub max_connections: usize,
    pub master_key: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub strategy: Strategy,
    pub num_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub max_retry_wait: Duration,
    pub max_fallbacks: usize,
    /// Overall deadline of one client request, all attempts and waits included.
    pub timeout: Duration,
    pub per_try_timeout: Duration,
    pub first_token_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_response_bytes: usize,
    pub stream_buffer_chunks: usize,
    pub mailbox_timeout: Duration,
    pub max_connections_per_worker: usize,
    pub rate_limit_cooldown: Duration,
    pub long_cooldown: Duration,
    /// Retries (every attempt after a request's first) may be at most this share of the
    /// requests over `retry_budget_window`, plus `retry_budget_min_per_sec` per second.
    pub retry_budget_ratio: f64,
    pub retry_budget_min_per_sec: u32,
    pub retry_budget_window: Duration,
    /// Start a second attempt when the first has not produced its first token in time.
    pub hedge: bool,
    /// `None`: the group's p95 time to first token (no hedging before it is known).
    pub hedge_delay: Option<Duration>,
    /// Requests that may wait for a deployment at its concurrency limit, per model group.
    pub max_pending: u32,
    /// How long such a request waits before it gets a 429.
    pub pending_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
    /// One structured line per request.
    pub requests: bool,
}

/// Prices in pico-dollars per token (`$2.50 / Mtok` = 2_500_000): integers, never `f64` money.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prices {
    pub input: u64,
    pub cached_input: u64,
    pub output: u64,
}

impl Prices {
    /// Cost of one request in pico-dollars. `cached` is the part of `prompt` read from cache.
    pub fn cost(&self, prompt: u64, cached: u64, completion: u64) -> u64 {
        let cached = cached.min(prompt);
        (prompt - cached)
            .saturating_mul(self.input)
            .saturating_add(cached.saturating_mul(self.cached_input))
            .saturating_add(completion.saturating_mul(self.output))
    }
}

/// One upstream deployment, as configured.
#[derive(Debug)]
pub struct Deployment {
    pub index: usize,
    pub id: Arc<str>,
    /// Index of its model group.
    pub group: usize,
    pub model: Arc<str>,
    pub provider: ProviderKind,
    /// URLs, auth and provider settings.
    pub wire: crate::providers::Wire,
    pub upstream_model: Arc<str>,
    /// The full URL requests are posted to, derived from `api_base`.
    pub endpoint: Arc<str>,
    pub api_key: Option<Secret>,
    pub weight: u32,
    pub rpm: Option<NonZeroU32>,
    pub max_concurrency: Option<u32>,
    pub prices: Prices,
    pub default_max_tokens: u32,
    pub anthropic_version: Arc<str>,
    /// Priority tier: lower first.
    pub order: u32,
    pub region: Option<Arc<str>>,
    pub tpm: Option<NonZeroU32>,
    /// AIMD concurrency limit between these bounds (`max_concurrency` is the upper).
    pub adaptive: Option<(u32, u32)>,
    pub per_try_timeout: Option<Duration>,
    pub first_token_timeout: Option<Duration>,
    pub stream_idle_timeout: Option<Duration>,
    pub rate_limit_cooldown: Duration,
    pub long_cooldown: Duration,
    pub breaker: BreakerConfig,
    /// For a wildcard group (`openai/*`): the requested model's part after the prefix is sent
    /// upstream.
    pub wildcard: bool,
}

/// Deployments that serve the same client-facing model name, and where to go when they fail.
#[derive(Debug)]
pub struct ModelGroup {
    pub index: usize,
    pub name: Arc<str>,
    pub deployments: Vec<usize>,
    /// Ordered fallback groups (indices) per error class, already cut to `max_fallbacks`.
    pub fallbacks: Vec<usize>,
    /// Used after a `context_window` failure; empty = the default chain.
    pub context_window_fallbacks: Vec<usize>,
    /// Used after a `content_policy` refusal; empty = the refusal goes back as a 400.
    pub content_policy_fallbacks: Vec<usize>,
    /// The group's routing policy: `[router]` with the `[groups.NAME]` overrides applied.
    pub policy: Arc<RouterConfig>,
    /// `Some(prefix)` for a wildcard group named `prefix*`.
    pub wildcard: Option<Arc<str>>,
}

/// A client key from `[[keys]]`, with the restrictions that travel with it.
#[derive(Debug)]
pub struct ApiKey {
    pub name: Arc<str>,
    pub key: Secret,
    pub tenant: Option<Arc<str>>,
    pub region: Option<Arc<str>>,
}

/// A conditional routing rule from `[[rules]]`: when every condition holds, the deployments
/// in `prefer` are tried first (the rest after), or only those in `only` are used.
#[derive(Debug)]
pub struct Rule {
    pub name: Arc<str>,
    /// Model group the rule applies to; `None` = every group.
    pub group: Option<usize>,
    pub user: Option<String>,
    /// Key name.
    pub key: Option<String>,
    /// Lower-case header name and exact value.
    pub headers: Vec<(String, String)>,
    pub tags: Vec<String>,
    pub prefer: Vec<usize>,
    pub only: Vec<usize>,
}

impl Config {
    /// Reads and validates a file; `${VAR}` is taken from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::single(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        parse_with_env(&text, &|name| std::env::var(name).ok())
    }

    /// Validates TOML text; `${VAR}` is taken from the process environment.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        parse_with_env(text, &|name| std::env::var(name).ok())
    }

    pub fn group_by_name(&self, name: &str) -> Option<&ModelGroup> {
        self.group_index.get(name).map(|&i| &self.groups[i])
    }

    /// Resolves a requested model name, without tenant rules: an alias, then a group, then the
    /// longest matching wildcard group.
    pub fn resolve(&self, name: &str) -> Option<&ModelGroup> {
        let name = self.aliases.get(name).map_or(name, |t| &**t);
        self.group_by_name(name).or_else(|| {
            self.wildcards
                .iter()
                .find(|(prefix, _)| name.len() > prefix.len() && name.starts_with(&**prefix))
                .map(|&(_, g)| &self.groups[g])
        })
    }

    /// The tenant a name is namespaced in (`tenant-a/gpt-4o` -> `tenant-a`), if it is a known one.
    pub fn tenant_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        let (prefix, _) = name.split_once('/')?;
        self.tenants
            .iter()
            .any(|t| **t == *prefix)
            .then_some(prefix)
    }
}

/// One problem in a config file, named by its dotted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl ConfigErrors {
    pub fn single(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigProblem {
            key: key.into(),
            message: message.into(),
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
