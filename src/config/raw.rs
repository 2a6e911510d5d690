//! `Raw*` types mirror the TOML file exactly: every struct denies unknown keys and every default
//! is a named function, so `config/switchyard.toml` and this file can be checked against each
//! other. Nothing here is validated; see `validate.rs`.

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// 0 = one per CPU core.
    #[serde(default)]
    pub workers: u32,
    #[serde(default = "default_actor_threads")]
    pub actor_threads: u32,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    #[serde(default = "default_client_request_timeout_ms")]
    pub client_request_timeout_ms: u64,
    #[serde(default = "default_keep_alive_ms")]
    pub keep_alive_ms: u64,
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
    #[serde(default)]
    pub master_key: Option<String>,
}

pub fn default_listen() -> String {
    "127.0.0.1:4000".to_owned()
}
pub fn default_actor_threads() -> u32 {
    1
}
pub fn default_max_body_bytes() -> u64 {
    4 * 1024 * 1024
}
pub fn default_body_read_timeout_ms() -> u64 {
    30_000
}
pub fn default_client_request_timeout_ms() -> u64 {
    5_000
}
pub fn default_keep_alive_ms() -> u64 {
    5_000
}
pub fn default_shutdown_timeout_ms() -> u64 {
    30_000
}
pub fn default_max_connections() -> u64 {
    25_000
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRouter {
    #[serde(default = "default_strategy")]
    pub strategy: String,
    #[serde(default = "default_num_retries")]
    pub num_retries: u32,
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    #[serde(default = "default_max_retry_wait_ms")]
    pub max_retry_wait_ms: u64,
    #[serde(default = "default_max_fallbacks")]
    pub max_fallbacks: u32,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_per_try_timeout_ms")]
    pub per_try_timeout_ms: u64,
    #[serde(default = "default_first_token_timeout_ms")]
    pub first_token_timeout_ms: u64,
    #[serde(default = "default_stream_idle_timeout_ms")]
    pub stream_idle_timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    #[serde(default = "default_stream_buffer_chunks")]
    pub stream_buffer_chunks: u32,
    #[serde(default = "default_mailbox_timeout_ms")]
    pub mailbox_timeout_ms: u64,
    #[serde(default = "default_max_connections_per_worker")]
    pub max_connections_per_worker: u32,
    #[serde(default = "default_rate_limit_cooldown_ms")]
    pub rate_limit_cooldown_ms: u64,
    #[serde(default = "default_long_cooldown_ms")]
    pub long_cooldown_ms: u64,
    #[serde(default = "default_retry_budget_ratio")]
    pub retry_budget_ratio: f64,
    #[serde(default = "default_retry_budget_min_per_sec")]
    pub retry_budget_min_per_sec: u32,
    #[serde(default = "default_retry_budget_window_ms")]
    pub retry_budget_window_ms: u64,
    #[serde(default)]
    pub hedge: bool,
    /// Unset: the group's p95 time to first token.
    #[serde(default)]
    pub hedge_delay_ms: Option<u64>,
    #[serde(default = "default_max_pending")]
    pub max_pending: u32,
    #[serde(default = "default_pending_timeout_ms")]
    pub pending_timeout_ms: u64,
}

/// `[router]` keys that only make sense once per gateway, not per model group.
pub const GLOBAL_ONLY_ROUTER_KEYS: &[&str] = &[
    "connect_timeout_ms",
    "max_response_bytes",
    "stream_buffer_chunks",
    "mailbox_timeout_ms",
    "max_connections_per_worker",
    "rate_limit_cooldown_ms",
    "long_cooldown_ms",
];

pub fn default_retry_budget_ratio() -> f64 {
    0.2
}
pub fn default_retry_budget_min_per_sec() -> u32 {
    10
}
pub fn default_retry_budget_window_ms() -> u64 {
    10_000
}
pub fn default_max_pending() -> u32 {
    256
}
pub fn default_pending_timeout_ms() -> u64 {
    1_000
}

pub fn default_strategy() -> String {
    "simple-shuffle".to_owned()
}
pub fn default_num_retries() -> u32 {
    3
}
pub fn default_backoff_base_ms() -> u64 {
    1_000
}
pub fn default_backoff_max_ms() -> u64 {
    8_000
}
pub fn default_max_retry_wait_ms() -> u64 {
    5_000
}
pub fn default_max_fallbacks() -> u32 {
    3
}
pub fn default_timeout_ms() -> u64 {
    600_000
}
pub fn default_per_try_timeout_ms() -> u64 {
    300_000
}
pub fn default_first_token_timeout_ms() -> u64 {
    60_000
}
pub fn default_stream_idle_timeout_ms() -> u64 {
    60_000
}
pub fn default_connect_timeout_ms() -> u64 {
    5_000
}
pub fn default_max_response_bytes() -> u64 {
    16 * 1024 * 1024
}
pub fn default_stream_buffer_chunks() -> u32 {
    16
}
pub fn default_mailbox_timeout_ms() -> u64 {
    1_000
}
pub fn default_max_connections_per_worker() -> u32 {
    1_024
}
pub fn default_rate_limit_cooldown_ms() -> u64 {
    10_000
}
pub fn default_long_cooldown_ms() -> u64 {
    300_000
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "default_failure_rate")]
    pub failure_rate: f64,
    #[serde(default = "default_min_calls")]
    pub min_calls: u32,
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
    #[serde(default = "default_max_cooldown_ms")]
    pub max_cooldown_ms: u64,
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    #[serde(default = "default_half_open_probes")]
    pub half_open_probes: u32,
    /// Unset: the router's `per_try_timeout_ms`.
    #[serde(default)]
    pub probe_timeout_ms: Option<u64>,
}

pub fn default_consecutive_failures() -> u32 {
    5
}
pub fn default_cooldown_ms() -> u64 {
    30_000
}
pub fn default_half_open_probes() -> u32 {
    3
}
pub fn default_failure_rate() -> f64 {
    0.5
}
pub fn default_min_calls() -> u32 {
    20
}
pub fn default_window_ms() -> u64 {
    30_000
}
pub fn default_max_cooldown_ms() -> u64 {
    300_000
}
pub fn default_jitter() -> f64 {
    0.1
}
pub fn default_probe_interval_ms() -> u64 {
    10_000
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default = "default_log_format")]
    pub format: String,
    #[serde(default = "default_log_requests")]
    pub requests: bool,
}

pub fn default_log_level() -> String {
    "info".to_owned()
}
pub fn default_log_format() -> String {
    "json".to_owned()
}
pub fn default_log_requests() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    pub id: String,
    pub model: String,
    pub provider: String,
    #[serde(default)]
    pub upstream_model: Option<String>,
    #[serde(default)]
    pub api_base: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub rpm: Option<u32>,
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    #[serde(default)]
    pub input_cost_per_mtok: f64,
    #[serde(default)]
    pub output_cost_per_mtok: f64,
    #[serde(default)]
    pub cached_input_cost_per_mtok: Option<f64>,
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u32,
    #[serde(default = "default_anthropic_version")]
    pub anthropic_version: String,
    /// Azure: the dated API version; without it the v1 API (`/openai/v1/...`) is used.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Azure: `api-key` (default) or `bearer`.
    #[serde(default)]
    pub azure_auth: Option<String>,
    /// Bedrock: region (default `AWS_REGION`, then `AWS_DEFAULT_REGION`).
    #[serde(default)]
    pub aws_region: Option<String>,
    /// Bedrock: credentials (default `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
    /// `AWS_SESSION_TOKEN`).
    #[serde(default)]
    pub aws_access_key_id: Option<String>,
    #[serde(default)]
    pub aws_secret_access_key: Option<String>,
    #[serde(default)]
    pub aws_session_token: Option<String>,
    /// Vertex: project and location (default `us-central1`).
    #[serde(default)]
    pub vertex_project: Option<String>,
    #[serde(default)]
    pub vertex_location: Option<String>,
    #[serde(default = "default_order")]
    pub order: u32,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub tpm: Option<u32>,
    #[serde(default)]
    pub adaptive_concurrency: bool,
    #[serde(default = "default_min_concurrency")]
    pub min_concurrency: u32,
    #[serde(default)]
    pub per_try_timeout_ms: Option<u64>,
    #[serde(default)]
    pub first_token_timeout_ms: Option<u64>,
    #[serde(default)]
    pub stream_idle_timeout_ms: Option<u64>,
    #[serde(default)]
    pub rate_limit_cooldown_ms: Option<u64>,
    #[serde(default)]
    pub long_cooldown_ms: Option<u64>,
    /// Overrides of `[breaker]` keys for this deployment (merged before validation).
    #[serde(default)]
    pub breaker: Option<toml::Table>,
}

pub fn default_order() -> u32 {
    1
}
pub fn default_min_concurrency() -> u32 {
    1
}

pub fn default_weight() -> u32 {
    1
}
pub fn default_max_tokens() -> u32 {
    4_096
}
pub fn default_anthropic_version() -> String {
    "2023-06-01".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFallback {
    pub from: String,
    pub to: Vec<String>,
    /// default | context_window | content_policy
    #[serde(default = "default_fallback_on")]
    pub on: String,
}

pub fn default_fallback_on() -> String {
    "default".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub name: String,
    pub key: String,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub prefer: Vec<String>,
    #[serde(default)]
    pub only: Vec<String>,
}
