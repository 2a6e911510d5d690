//! An in-process mock of the LLM provider APIs the gateway talks to: OpenAI, Azure OpenAI,
//! Anthropic, AWS Bedrock (Converse, ConverseStream, InvokeModel embeddings), Gemini / Vertex,
//! Cohere v2 and Voyage.
//!
//! It speaks the wire formats of `shared/docs/providers.md` (§0–§7, with the §9 vectors byte for
//! byte where they exist) and shares no code with the gateway (its event-stream framing and
//! SigV4 check are written here on `crc32fast`, `hmac` and `sha2`), so the gateway's tests can
//! use it as an independent upstream.
//!
//! # Routes
//!
//! A path is an API path, optionally under one route segment: `/{route}/{api path}`. Without a
//! segment the route is `""` (the default route). Every route serves every format and shares
//! one behaviour, queue, counter and recording between them.
//!
//! | API path (`POST`) | format |
//! |---|---|
//! | `/v1/chat/completions`, `/chat/completions` | OpenAI chat |
//! | `/v1/embeddings`, `/embeddings` | OpenAI embeddings |
//! | `/v1/messages` | Anthropic |
//! | `/openai/deployments/{deployment}/chat/completions?api-version=…` | Azure chat (400 without `api-version`) |
//! | `/openai/deployments/{deployment}/embeddings?api-version=…` | Azure embeddings |
//! | `/openai/v1/chat/completions`, `/openai/v1/embeddings` | Azure v1 API (`model` required); **only under a route**: `/openai/v1/…` alone stays OpenAI on route `openai` |
//! | `/model/{modelId}/converse` | Bedrock Converse |
//! | `/model/{modelId}/converse-stream` | Bedrock ConverseStream (`application/vnd.amazon.eventstream`) |
//! | `/model/{modelId}/invoke` | Bedrock embeddings: Cohere if the id contains `cohere.`, else Titan |
//! | `/v1beta/models/{model}:generateContent` (also `/v1/models/…`) | Gemini |
//! | `/v1beta/models/{model}:streamGenerateContent?alt=sse` | Gemini stream (400 without `alt=sse`) |
//! | `/v1beta/models/{model}:embedContent`, `:batchEmbedContents` | Gemini embeddings |
//! | `/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent`, `:streamGenerateContent?alt=sse` (also `v1beta1`) | Vertex (Gemini bodies) |
//! | `/v2/chat` | Cohere chat (`"stream": true` streams) |
//! | `/v2/embed` | Cohere embeddings |
//! | `/voyage/v1/embeddings` | Voyage (the `voyage` segment tells it from OpenAI) |
//!
//! Anything else (or another method) is a 404 with an OpenAI-style error body. A route that was
//! never configured answers with `MockConfig::default_behavior` and is counted like any other.
//! Bodies over 16 MiB get a 413 in the endpoint's format (Gemini: 400, as Google answers).
//!
//! # Auth
//!
//! With `MockConfig::require_api_key`: OpenAI, Cohere and Voyage want `Authorization: Bearer k`;
//! Anthropic `x-api-key`; Azure `api-key` or `Authorization: Bearer`; Gemini (AI Studio)
//! `x-goog-api-key` or `?key=` (missing: 403 `PERMISSION_DENIED`, wrong: 400 `API key not
//! valid`); Vertex `Authorization: Bearer` (else 401 `UNAUTHENTICATED`); Bedrock a Bedrock API key
//! as `Authorization: Bearer` (else 403). With `MockConfig::aws_credentials`, Bedrock verifies
//! SigV4 instead (providers.md §4.2, double-encoded path segments) and answers 403
//! `MissingAuthenticationTokenException`, `UnrecognizedClientException` (other access key) or
//! `InvalidSignatureException` (wrong signature, scope, or `x-amz-date` off by over 5 minutes).
//!
//! # Formats
//!
//! Stream selection: OpenAI, Azure, Anthropic and Cohere by the body's `"stream": true`;
//! Bedrock and Gemini by the path. OpenAI and Azure send the usage chunk only with
//! `stream_options.include_usage`. Every behaviour is rendered in every format:
//!
//! - Azure: OpenAI bodies plus `prompt_filter_results` and per-choice `content_filter_results`;
//!   streams start with a `"choices":[]` chunk carrying only `prompt_filter_results`
//!   (`"usage":null` with include_usage), §2.3.
//! - Bedrock: usage `inputTokens = prompt - cached`, `cacheReadInputTokens = cached` (when
//!   non-zero); header `x-amzn-RequestId`. Streams: `messageStart` [`contentBlockStart` for a
//!   tool], `contentBlockDelta` per piece, `contentBlockStop`, `messageStop`, `metadata`.
//! - Gemini: CRLF SSE, no `[DONE]`; each content event carries `usageMetadata` with running
//!   totals, a final event carries `finishReason: STOP` and the complete usage. A tool call is one
//!   `functionCall` part (whole `args`, one event) with `thoughtSignature` [`THOUGHT_SIGNATURE`].
//! - Cohere: `event: <type>` lines whose JSON repeats `type` (`message-start`, `content-*` or
//!   `tool-plan-delta` + `tool-call-*`, `message-end` with `finish_reason` and usage
//!   `{billed_units, tokens}`).
//!
//! Embeddings (all formats): vector `k` (request order) has value `i` =
//! [`embedding_value`]`(k, i)`; its length is the request's (`dimensions`, `output_dimension`,
//! `outputDimensionality`, at most [`MAX_DIMS`]), else `Behavior::embedding_dims` (default 8).
//! `encoding_format: "base64"` (OpenAI, Azure, Voyage) sends base64 of little-endian `f32`s.
//! Usage is `Behavior::prompt_tokens` (OpenAI `prompt_tokens`/`total_tokens`, Voyage
//! `total_tokens`, Titan `inputTextTokenCount`, Cohere `meta.billed_units.input_tokens`, Bedrock
//! header `x-amzn-bedrock-input-token-count`; Gemini reports none). Faults play as for a
//! non-stream chat answer.
//!
//! # Error presets
//!
//! | preset | Azure | Bedrock (`x-amzn-ErrorType`) | Gemini (`status`) | Cohere | Voyage |
//! |---|---|---|---|---|---|
//! | `RateLimited` | 429 `code:"429"`, `retry-after` + `retry-after-ms` if given | 429 `ThrottlingException` | 429 `RESOURCE_EXHAUSTED`, `RetryInfo` if given (`Some(27)` = §9.3 fixture) | 429 | 429 |
//! | `QuotaExhausted` | 429 `insufficient_quota` | 400 `ServiceQuotaExceededException` | 429 `RESOURCE_EXHAUSTED` + `QuotaFailure` | 402 | 403 |
//! | `Overloaded` | 503 | 503 `ServiceUnavailableException` | 503 `UNAVAILABLE` | 503 | 503 |
//! | `ServerError` | 500 | 500 `InternalServerException` | 500 `INTERNAL` | 500 | 500 |
//! | `ContextLength` | 400 `context_length_exceeded` | 400 `ValidationException` "Input is too long for requested model." | 400 `INVALID_ARGUMENT` "…exceeds the maximum number of tokens allowed…" | 400 "too many tokens: …" | 400 |
//! | `BadRequest` | 400 | 400 `ValidationException` | 400 `INVALID_ARGUMENT` | 400 | 400 |
//! | `Unauthorized` | 401 `code:"401"` | 403 `AccessDeniedException` | 400 `API key not valid` | 401 | 401 |
//! | `ContentFiltered` | 400 `content_filter` (§2.3 body) | chat: 200 `guardrail_intervened`; embeddings: 400 | chat: 200 `promptFeedback.blockReason: SAFETY`, no candidates; embeddings: 400 | 400 "blocked input: …" | 400 |
//!
//! OpenAI: `ContentFiltered` is 400 `content_policy_violation`; Anthropic: a 200 with
//! `stop_reason: refusal` and no content. Bodies: Azure `{"error":{"code","message"}}` (model
//! errors in OpenAI's shape), Bedrock `{"message"}`, Gemini `{"error":{"code","message","status",
//! "details"?}}`, Cohere `{"id","message"}`, Voyage `{"detail"}`.
//!
//! In-band errors (`Fault::InBandErrorBeforeContent`): Azure like OpenAI (after the prompt-filter
//! chunk); Bedrock `messageStart` then a `serviceUnavailableException` exception frame; Gemini
//! `data: {"error":{…"UNAVAILABLE"}}`; Cohere `message-start` then `message-end` with
//! `finish_reason: ERROR` and an `error` text. `Fault::InvalidJsonEvent` sends `{not json` as an
//! event of the format (Bedrock: in a well-framed `contentBlockDelta`).
//!
//! Each behaviour is compiled into its response bytes when it is set or pushed
//! (`compile.rs`); the request path (`server.rs`) only clones `Bytes` and reads atomics
//! (`state.rs`). Embeddings bodies depend on the request and are built per request (`embed.rs`).

mod azure;
mod bedrock;
mod behavior;
mod cohere;
mod compile;
mod embed;
pub mod eventstream;
mod gemini;
mod path;
mod record;
mod server;
mod sigv4;
mod state;
mod validate;
mod wire;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::KeepAlive;
use actix_web::{web, App, HttpServer};

pub use behavior::{Behavior, ErrorPreset, Fault, Reply, DEFAULT_REPLY_TEXT, MOCK_TOOL_CALL_ID};
pub use embed::{embedding_value, MAX_DIMS, MAX_INPUTS};
pub use gemini::THOUGHT_SIGNATURE;
pub use record::RecordedRequest;
pub use server::BODY_LIMIT;

use compile::compile;
use state::Shared;

/// How long `stop` waits for in-flight requests before closing connections anyway.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Idle keep-alive of the mock's connections. Longer than awc's pool default (15 s) so that a
/// client never reuses a connection the mock has just closed.
const KEEP_ALIVE: Duration = Duration::from_secs(75);

/// Configuration of a [`MockUpstream`].
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Address to bind; default `127.0.0.1:0` (an ephemeral port).
    pub listen: SocketAddr,
    /// actix worker threads; default 1 (0 is treated as 1).
    pub workers: usize,
    /// Keep every request for [`MockUpstream::requests`]; default true.
    pub record: bool,
    /// If set, every format checks this key where its provider carries it (see "Auth" in the
    /// module docs) and answers its own 401/403 otherwise.
    pub require_api_key: Option<String>,
    /// `(access key id, secret access key)`: if set, Bedrock routes verify the SigV4
    /// `Authorization` header (service `bedrock`, any region, `x-amz-date` within 5 minutes) and
    /// answer 403 `UnrecognizedClientException` / `InvalidSignatureException` /
    /// `MissingAuthenticationTokenException` otherwise. Takes precedence over
    /// `require_api_key` on Bedrock routes.
    pub aws_credentials: Option<(String, String)>,
    /// Behaviour of every route that has none set.
    pub default_behavior: Behavior,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            workers: 1,
            record: true,
            require_api_key: None,
            aws_credentials: None,
            default_behavior: Behavior::default(),
        }
    }
}

/// A running mock upstream. Dropping it stops the server (without waiting).
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    handle: ServerHandle,
}

impl MockUpstream {
    /// Binds `config.listen` and starts serving inside the current actix `System` (for example
    /// under `#[actix_web::test]` or `#[actix_web::main]`); the server future is spawned.
    /// Fails with `io::ErrorKind::Other` outside an actix `System`.
    pub async fn start(config: MockConfig) -> io::Result<MockUpstream> {
        if actix_web::rt::System::try_current().is_none() {
            return Err(io::Error::other(
                "MockUpstream::start must run inside an actix System",
            ));
        }
        let default = Arc::new(compile(&config.default_behavior));
        let shared = Arc::new(Shared::new(
            config.record,
            config.require_api_key.clone(),
            config.aws_credentials.clone(),
            default,
        ));
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(server::handle))
        })
        .on_connect(abortive_close)
        .workers(config.workers.max(1))
        // Paced SSE chunks are small: do not let Nagle hold them back.
        .tcp_nodelay(true)
        .backlog(2048)
        .keep_alive(KeepAlive::Timeout(KEEP_ALIVE))
        // A client that half-closes has gone away: drop its hung or stalled response.
        .h1_allow_half_closed(false)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(config.listen)?;
        let addr = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| io::Error::other("the mock upstream bound no address"))?;
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Ok(MockUpstream {
            addr,
            shared,
            handle,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/{route}`; route `""` gives [`url`](Self::url).
    pub fn route_url(&self, route: &str) -> String {
        if route.is_empty() {
            self.url()
        } else {
            format!("http://{}/{route}", self.addr)
        }
    }

    /// Replaces the default behaviour of a route (creating the route if needed).
    /// Route `""` is the default route.
    pub fn set_behavior(&self, route: &str, behavior: Behavior) {
        self.shared.route(route).set(Arc::new(compile(&behavior)));
    }

    /// The next requests on that route take these behaviours, in order, before falling back
    /// to the route's default.
    pub fn push_behaviors(&self, route: &str, behaviors: impl IntoIterator<Item = Behavior>) {
        let compiled: Vec<_> = behaviors
            .into_iter()
            .map(|b| Arc::new(compile(&b)))
            .collect();
        self.shared.route(route).push(compiled);
    }

    /// Requests recorded on the route (empty if recording is off).
    pub fn requests(&self, route: &str) -> Vec<RecordedRequest> {
        self.shared
            .find(route)
            .map(|r| r.recorded())
            .unwrap_or_default()
    }

    /// Number of requests the route received (counted even when recording is off, including
    /// requests later rejected by auth, validation or the body limit).
    pub fn request_count(&self, route: &str) -> usize {
        self.shared.find(route).map_or(0, |r| r.count())
    }

    /// Forgets recorded requests and the count of a route (queued behaviours stay).
    pub fn clear(&self, route: &str) {
        if let Some(r) = self.shared.find(route) {
            r.clear();
        }
    }

    /// Graceful stop: stops accepting, waits (up to 5 s) for requests being answered to finish
    /// (hung and stalled ones excluded), then closes the remaining connections.
    pub async fn stop(self) {
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        self.handle.pause().await;
        while self.shared.inflight.load(Ordering::Acquire) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.handle.stop(false).await;
    }
}

/// Sets `SO_LINGER` 0 on every accepted connection, so that closing it sends a TCP reset.
///
/// Why: awc (and so the gateway) reads a body that ends with a clean FIN as complete, even when
/// it is cut mid-chunk or short of its `content-length`. Only a reset makes
/// `Fault::ResetMidBody` visible as an error. Normal traffic is unaffected as long as the client
/// keeps connections alive or closes them itself (every HTTP/1.1 client does); a client that
/// reads until the server closes (HTTP/1.0 style) sees a reset after the complete response.
fn abortive_close(conn: &dyn std::any::Any, _: &mut actix_web::dev::Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        // The command is sent at once; the returned future only waits for completion.
        drop(self.handle.stop(false));
    }
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}
