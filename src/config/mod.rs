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

#[derive(Debug)]
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
}

/// Deployments that serve the same client-facing model name, and where to go when they fail.
#[derive(Debug)]
pub struct ModelGroup {
    pub index: usize,
    pub name: Arc<str>,
    pub deployments: Vec<usize>,
    /// Ordered fallback groups (indices), already cut to `router.max_fallbacks`.
    pub fallbacks: Vec<usize>,
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
