//! Provider wire formats as pure translation: OpenAI-shaped requests in, each provider's native
//! request out; native responses, streams and errors back to OpenAI shape and [`ErrorClass`]es.
//! No I/O, no actix: `upstream` moves the bytes, this module only transforms them.
//!
//! "providers.md §N" in these modules refers to the team's shared wire-protocol reference,
//! which lives outside this repository; the test vectors used here are copied from it verbatim.

pub mod anthropic;
pub mod bedrock;
pub mod cohere;
pub mod compat;
pub mod embeddings;
pub mod gemini;
pub mod inbound;
pub mod oai;
pub mod openai;
pub mod request;
pub mod sse;

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use std::sync::Arc;

use crate::config::Deployment;
use crate::error::{ErrorClass, UpstreamError};
use crate::secret::Secret;
pub use compat::Preset;
use oai::Usage;
use request::{ChatBody, ChatRequest};
use sse::{SseDecoder, SseEvent};

/// The wire format a deployment speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI and every OpenAI-compatible server (with a [`Preset`] for its quirks).
    OpenAi,
    /// Azure OpenAI: OpenAI bodies, its own URLs and auth.
    Azure,
    /// Anthropic Messages API.
    Anthropic,
    /// AWS Bedrock Converse / ConverseStream (and InvokeModel for embeddings), SigV4-signed.
    Bedrock,
    /// Google AI Studio generateContent.
    Gemini,
    /// Google Vertex AI generateContent (same bodies, project/location URLs, OAuth bearer).
    Vertex,
    /// Cohere v2 chat and embed.
    Cohere,
    /// Voyage AI (embeddings only).
    Voyage,
}

/// Every `provider = "..."` name: the wire format and the OpenAI-compatible preset.
pub const PROVIDER_NAMES: &[&str] = &[
    "openai",
    "azure",
    "anthropic",
    "bedrock",
    "gemini",
    "vertex",
    "cohere",
    "voyage",
    "xai",
    "mistral",
    "groq",
    "deepseek",
    "together",
    "fireworks",
    "openrouter",
    "vllm",
    "ollama",
];

/// Reads a `provider` name from config.
pub fn parse_provider(name: &str) -> Option<(ProviderKind, Preset)> {
    let kind = match name {
        "anthropic" => ProviderKind::Anthropic,
        "bedrock" => ProviderKind::Bedrock,
        "gemini" => ProviderKind::Gemini,
        "vertex" => ProviderKind::Vertex,
        "cohere" => ProviderKind::Cohere,
        "voyage" => ProviderKind::Voyage,
        "azure" => return Some((ProviderKind::Azure, Preset::Azure)),
        other => return Preset::parse(other).map(|p| (ProviderKind::OpenAi, p)),
    };
    Some((kind, Preset::OpenAi))
}

impl ProviderKind {
    /// The default `api_base`; `None` when the config must give one (Azure; Bedrock and
    /// Vertex derive theirs from the region/location).
    pub fn default_api_base(self, preset: Preset) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => preset.default_api_base(),
            ProviderKind::Azure | ProviderKind::Bedrock | ProviderKind::Vertex => None,
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com"),
            ProviderKind::Cohere => Some("https://api.cohere.com"),
            ProviderKind::Voyage => Some("https://api.voyageai.com/v1"),
        }
    }

    /// Whether this provider serves `op` at all.
    pub fn serves(self, op: Op) -> bool {
        match op {
            Op::Chat => self != ProviderKind::Voyage,
            Op::Embeddings => !matches!(self, ProviderKind::Anthropic | ProviderKind::Vertex),
        }
    }
}

/// How to reach one deployment: everything from its config that shapes URLs and headers.
#[derive(Debug, Clone)]
pub struct Wire {
    pub kind: ProviderKind,
    pub preset: Preset,
    /// `provider` as configured (`mistral`, `bedrock`, ...): the metrics label.
    pub name: &'static str,
    /// `api_base` without a trailing `/`, or the provider's default.
    pub base: Arc<str>,
    pub api_key: Option<Secret>,
    /// Azure: `api_version` for the dated `/openai/deployments/...` URLs; `None` = the v1 API.
    pub api_version: Option<Arc<str>>,
    /// Azure: send the key as `Authorization: Bearer` instead of `api-key`.
    pub azure_bearer: bool,
    pub anthropic_version: Arc<str>,
    /// Vertex: project and location.
    pub vertex: Option<(Arc<str>, Arc<str>)>,
    /// Bedrock: region and (unless a Bedrock API key is used) credentials to sign with.
    pub aws: Option<Aws>,
}

#[derive(Debug, Clone)]
pub struct Aws {
    pub region: Arc<str>,
    pub credentials: Option<bedrock::AwsCredentials>,
}

/// A model name as one URL path segment: everything but unreserved characters is escaped, so a
/// passed-through name can never change the path (`../`, `?`, `/`).
fn path_segment(model: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(model, SET).to_string()
}

impl Wire {
    /// The URL for one request. `batch`: Gemini embeddings with more than one input.
    pub fn url(
        &self,
        op: Op,
        model: &str,
        stream: bool,
        batch: bool,
    ) -> Result<String, TranslateError> {
        let base = &*self.base;
        let unsupported = || {
            TranslateError::new(
                "model",
                format!("the {} provider does not serve this endpoint", self.name),
            )
        };
        if !self.kind.serves(op) {
            return Err(unsupported());
        }
        Ok(match (self.kind, op) {
            (ProviderKind::OpenAi, Op::Chat) => format!("{base}/chat/completions"),
            (ProviderKind::OpenAi | ProviderKind::Voyage, Op::Embeddings) => {
                format!("{base}/embeddings")
            }
            (ProviderKind::Azure, op) => {
                let what = match op {
                    Op::Chat => "chat/completions",
                    Op::Embeddings => "embeddings",
                };
                match &self.api_version {
                    Some(v) => format!(
                        "{base}/openai/deployments/{}/{what}?api-version={v}",
                        path_segment(model)
                    ),
                    None => format!("{base}/openai/v1/{what}"),
                }
            }
            (ProviderKind::Anthropic, _) => format!("{base}/v1/messages"),
            (ProviderKind::Bedrock, Op::Chat) => format!("{base}{}", bedrock::path(model, stream)),
            (ProviderKind::Bedrock, Op::Embeddings) => {
                format!("{base}{}", bedrock::invoke_path(model))
            }
            (ProviderKind::Gemini | ProviderKind::Vertex, op) => {
                let method = match (op, stream, batch) {
                    (Op::Chat, false, _) => "generateContent",
                    (Op::Chat, true, _) => "streamGenerateContent?alt=sse",
                    (Op::Embeddings, _, false) => "embedContent",
                    (Op::Embeddings, _, true) => "batchEmbedContents",
                };
                let model = path_segment(model);
                match &self.vertex {
                    Some((project, location)) => format!(
                        "{base}/v1/projects/{}/locations/{}/publishers/google/models/{model}:{method}",
                        path_segment(project),
                        path_segment(location)
                    ),
                    None => format!("{base}/v1beta/models/{model}:{method}"),
                }
            }
            (ProviderKind::Cohere, Op::Chat) => format!("{base}/v2/chat"),
            (ProviderKind::Cohere, Op::Embeddings) => format!("{base}/v2/embed"),
            (ProviderKind::Voyage, Op::Chat) => return Err(unsupported()),
        })
    }

    /// Static headers for every request (auth and versions), as (name, value, secret).
    /// Bedrock with credentials signs each request instead (see `upstream`).
    pub fn headers(&self) -> Vec<(&'static str, String, bool)> {
        let mut h = Vec::with_capacity(2);
        let key = self.api_key.as_ref().map(Secret::expose);
        let bearer = |h: &mut Vec<_>| {
            if let Some(key) = key {
                h.push(("authorization", format!("Bearer {key}"), true));
            }
        };
        match self.kind {
            ProviderKind::OpenAi
            | ProviderKind::Cohere
            | ProviderKind::Voyage
            | ProviderKind::Vertex
            | ProviderKind::Bedrock => bearer(&mut h),
            ProviderKind::Azure if self.azure_bearer => bearer(&mut h),
            ProviderKind::Azure => {
                if let Some(key) = key {
                    h.push(("api-key", key.to_owned(), true));
                }
            }
            ProviderKind::Gemini => {
                if let Some(key) = key {
                    h.push(("x-goog-api-key", key.to_owned(), true));
                }
            }
            ProviderKind::Anthropic => {
                if let Some(key) = key {
                    h.push(("x-api-key", key.to_owned(), true));
                }
                h.push((
                    "anthropic-version",
                    self.anthropic_version.to_string(),
                    false,
                ));
            }
        }
        h
    }

    /// The stream's content type this provider answers with.
    pub fn stream_content_type(&self) -> &'static str {
        match self.kind {
            ProviderKind::Bedrock => "application/vnd.amazon.eventstream",
            _ => "text/event-stream",
        }
    }
}

/// A request the gateway accepted but cannot express for one provider (e.g. `n > 1` for
/// Anthropic). That deployment is skipped; if no deployment can take the request, the client
/// gets a 400 naming `param`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct TranslateError {
    pub param: String,
    pub message: String,
}

impl TranslateError {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        TranslateError {
            param: param.into(),
            message: message.into(),
        }
    }

    pub fn unsupported(param: impl Into<String>, what: &str) -> Self {
        TranslateError::new(param, format!("{what} is not supported by this provider"))
    }
}

/// What one upstream stream event changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The event carried output the client sees (content, a tool call): the commit point.
    pub meaningful: bool,
    /// The upstream sent its finish.
    pub finished: bool,
}

impl Progress {
    pub const NOTHING: Progress = Progress {
        meaningful: false,
        finished: false,
    };
    pub const DONE: Progress = Progress {
        meaningful: false,
        finished: true,
    };
}

/// What a request asks for: which client-facing API it came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Op {
    /// `POST /v1/chat/completions` (and `/v1/messages`, translated to it).
    #[default]
    Chat,
    /// `POST /v1/embeddings`.
    Embeddings,
}

/// Facts about one upstream response that the body does not carry: read from its headers by
/// `upstream`, handed to the translation functions.
#[derive(Debug, Clone, Copy, Default)]
pub struct RespMeta<'a> {
    /// The model name the gateway sent upstream (used when the response names none: Bedrock).
    pub model: &'a str,
    /// `created` for OpenAI-shaped output (Unix seconds).
    pub created: u64,
    /// The provider's request id header (`x-amzn-RequestId` for Bedrock, `x-request-id`, ...).
    pub request_id: Option<&'a str>,
    /// Bedrock's `x-amzn-ErrorType` header, e.g. `ThrottlingException:http://internal...`.
    pub error_type: Option<&'a str>,
    /// Bedrock InvokeModel's `x-amzn-bedrock-input-token-count` header (embeddings usage).
    pub input_token_count: Option<u64>,
}

/// The upstream request body for `dep`, naming `model` (its `upstream_model`, or what a wildcard
/// group passes through).
pub fn build_body(dep: &Deployment, model: &str, body: &ChatBody) -> Result<Bytes, TranslateError> {
    let w = &dep.wire;
    if body.op == Op::Embeddings {
        let req = embeddings::parse_request(&body.bytes)
            .map_err(|e| TranslateError::new("input", e.to_string()))?;
        let target = embed_target(w.kind, model, req.count())?;
        return embeddings::build_request(target, &req, model).map(Bytes::from);
    }
    if w.kind == ProviderKind::OpenAi || w.kind == ProviderKind::Azure {
        return compat::build_request(w.preset, body, model);
    }
    let req = ChatRequest::from_body(body).map_err(|e| TranslateError::new("", e.to_string()))?;
    let built = match w.kind {
        ProviderKind::Anthropic => anthropic::build_request(&req, model, dep.default_max_tokens),
        ProviderKind::Bedrock => bedrock::build_request(&req, model, dep.default_max_tokens),
        ProviderKind::Gemini => gemini::build_request(&req, false),
        ProviderKind::Vertex => gemini::build_request(&req, true),
        ProviderKind::Cohere => cohere::build_request(&req, model),
        ProviderKind::OpenAi | ProviderKind::Azure | ProviderKind::Voyage => {
            Err(TranslateError::new(
                "model",
                format!("the {} provider does not serve chat", w.name),
            ))
        }
    };
    built.map(Bytes::from)
}

/// Which embeddings wire format serves `model` on a `kind` deployment for `inputs` inputs.
pub fn embed_target(
    kind: ProviderKind,
    model: &str,
    inputs: usize,
) -> Result<embeddings::Target, TranslateError> {
    use embeddings::Target;
    Ok(match kind {
        ProviderKind::OpenAi => Target::OpenAi,
        ProviderKind::Azure => Target::Azure,
        ProviderKind::Voyage => Target::Voyage,
        ProviderKind::Cohere => Target::Cohere,
        ProviderKind::Gemini if inputs == 1 => Target::Gemini,
        ProviderKind::Gemini => Target::GeminiBatch,
        ProviderKind::Bedrock => embeddings::bedrock_target(model).ok_or_else(|| {
            TranslateError::new(
                "model",
                "Bedrock embeddings need an amazon.titan-embed or cohere.embed model",
            )
        })?,
        ProviderKind::Anthropic | ProviderKind::Vertex => {
            return Err(TranslateError::new(
                "model",
                "this provider does not serve embeddings",
            ))
        }
    })
}

/// Everything a response needs to be read: the operation and, for embeddings, what the client
/// asked for (to validate and shape the answer).
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    pub op: Op,
    pub embed: Option<(embeddings::Target, embeddings::Ask)>,
}

/// Turns a 2xx non-streaming upstream body into the client's body and its usage.
pub fn parse_response(
    wire: &Wire,
    expect: &Expect,
    body: Bytes,
    meta: &RespMeta<'_>,
) -> Result<(Bytes, Usage), UpstreamError> {
    if let Some((target, ask)) = &expect.embed {
        let (body, usage) = embeddings::parse_response(*target, &body, meta, ask)?;
        check_usage(&usage)?;
        return Ok((body.freeze(), usage));
    }
    let (body, usage) = match wire.kind {
        ProviderKind::OpenAi | ProviderKind::Azure => openai::parse_response(wire.preset, body)?,
        ProviderKind::Anthropic => {
            anthropic::parse_response(&body, meta.created).map(|(b, u)| (b.freeze(), u))?
        }
        ProviderKind::Bedrock => {
            bedrock::parse_response(&body, meta).map(|(b, u)| (b.freeze(), u))?
        }
        ProviderKind::Gemini | ProviderKind::Vertex => {
            gemini::parse_response(&body, meta).map(|(b, u)| (b.freeze(), u))?
        }
        ProviderKind::Cohere => {
            cohere::parse_response(&body, meta).map(|(b, u)| (b.freeze(), u))?
        }
        ProviderKind::Voyage => {
            return Err(UpstreamError::new(
                ErrorClass::ServerError,
                "voyage does not serve chat",
            ))
        }
    };
    check_usage(&usage)?;
    Ok((body, usage))
}

/// No single response bills more tokens than this; a larger number is a broken upstream.
pub const MAX_USAGE_TOKENS: u64 = 100_000_000;

/// Usage that cannot be true (beyond [`MAX_USAGE_TOKENS`], cached above prompt, reasoning
/// above completion) is a server error: never billed blindly.
pub fn check_usage(u: &Usage) -> Result<(), UpstreamError> {
    let absurd = u.prompt_tokens > MAX_USAGE_TOKENS
        || u.completion_tokens > MAX_USAGE_TOKENS
        || u.cached_tokens > u.prompt_tokens
        || u.cache_write_tokens > u.prompt_tokens
        || u.reasoning_tokens > u.completion_tokens;
    if absurd {
        return Err(UpstreamError::new(
            ErrorClass::ServerError,
            format!(
                "upstream reported impossible usage (prompt {}, completion {}, cached {}, \
                 reasoning {})",
                u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.reasoning_tokens
            ),
        ));
    }
    Ok(())
}

/// Classifies a non-2xx upstream response.
pub fn classify_error(
    wire: &Wire,
    status: u16,
    retry_after: Option<Duration>,
    meta: &RespMeta<'_>,
    body: &[u8],
) -> UpstreamError {
    match wire.kind {
        ProviderKind::OpenAi | ProviderKind::Azure => {
            openai::classify_error(status, retry_after, body)
        }
        ProviderKind::Anthropic => anthropic::classify_error(status, retry_after, body),
        ProviderKind::Bedrock => bedrock::classify_error(status, retry_after, meta, body),
        ProviderKind::Gemini | ProviderKind::Vertex => {
            gemini::classify_error(status, retry_after, meta, body)
        }
        ProviderKind::Cohere => cohere::classify_error(status, retry_after, meta, body),
        ProviderKind::Voyage => embeddings::classify_voyage_error(status, retry_after, body),
    }
}

/// Splits an upstream stream body into events: SSE for most, AWS event-stream frames for Bedrock.
#[derive(Debug)]
pub enum StreamDecoder {
    Sse(SseDecoder),
    Aws(bedrock::FrameDecoder),
}

impl StreamDecoder {
    pub fn new(kind: ProviderKind) -> Self {
        match kind {
            ProviderKind::Bedrock => StreamDecoder::Aws(bedrock::FrameDecoder::new()),
            _ => StreamDecoder::Sse(SseDecoder::new()),
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self {
            StreamDecoder::Sse(d) => d.feed(chunk),
            StreamDecoder::Aws(d) => d.feed(chunk),
        }
    }

    pub fn next_event(&mut self) -> Result<Option<SseEvent>, UpstreamError> {
        match self {
            StreamDecoder::Sse(d) => d
                .next_event()
                .map_err(|e| UpstreamError::new(ErrorClass::ServerError, e.to_string())),
            StreamDecoder::Aws(d) => d.next_event(),
        }
    }
}

/// Turns one provider's stream into OpenAI chunks.
#[derive(Debug)]
pub enum StreamTranslator {
    OpenAi(openai::Relay),
    Anthropic(anthropic::StreamTranslator),
    Bedrock(bedrock::StreamTranslator),
    Gemini(gemini::StreamTranslator),
    Cohere(cohere::StreamTranslator),
}

macro_rules! each_translator {
    ($self:expr, $t:ident => $e:expr) => {
        match $self {
            StreamTranslator::OpenAi($t) => $e,
            StreamTranslator::Anthropic($t) => $e,
            StreamTranslator::Bedrock($t) => $e,
            StreamTranslator::Gemini($t) => $e,
            StreamTranslator::Cohere($t) => $e,
        }
    };
}

impl StreamTranslator {
    pub fn new(wire: &Wire, include_usage: bool, meta: &RespMeta<'_>) -> Self {
        match wire.kind {
            ProviderKind::OpenAi | ProviderKind::Azure | ProviderKind::Voyage => {
                StreamTranslator::OpenAi(openai::Relay::new(include_usage, wire.preset))
            }
            ProviderKind::Anthropic => StreamTranslator::Anthropic(
                anthropic::StreamTranslator::new(include_usage, meta.created),
            ),
            ProviderKind::Bedrock => {
                StreamTranslator::Bedrock(bedrock::StreamTranslator::new(include_usage, meta))
            }
            ProviderKind::Gemini | ProviderKind::Vertex => {
                StreamTranslator::Gemini(gemini::StreamTranslator::new(include_usage, meta))
            }
            ProviderKind::Cohere => {
                StreamTranslator::Cohere(cohere::StreamTranslator::new(include_usage, meta))
            }
        }
    }

    pub fn on_event(
        &mut self,
        ev: &SseEvent,
        out: &mut BytesMut,
    ) -> Result<Progress, UpstreamError> {
        each_translator!(self, t => t.on_event(ev, out))
    }

    /// The upstream closed: `Ok` (with any terminator written) if the stream was complete.
    pub fn on_eof(&mut self, out: &mut BytesMut) -> Result<(), UpstreamError> {
        each_translator!(self, t => t.on_eof(out))
    }

    /// Nothing more is needed from the upstream; the terminator has been written.
    pub fn is_done(&self) -> bool {
        each_translator!(self, t => t.is_done())
    }

    pub fn usage(&self) -> Usage {
        each_translator!(self, t => t.usage())
    }

    pub fn invalid_events(&self) -> u32 {
        each_translator!(self, t => t.invalid_events())
    }
}

/// Substrings that mark a context-window error in providers' messages (providers.md §0.3).
pub fn is_context_window_message(message: &str) -> bool {
    const NEEDLES: &[&str] = &[
        "maximum context length",
        "context_length_exceeded",
        "exceed context limit",
        "maximum context limit",
        "is longer than the model's context length",
        "input tokens exceed the configured limit",
        "exceeds the available context size",
        "exceeds the maximum number of tokens allowed",
        "prompt is too long",
        "too many input tokens",
        "input is too long",
    ];
    let lower = message.to_ascii_lowercase();
    !lower.contains("string_above_max_length") && NEEDLES.iter().any(|n| lower.contains(n))
}

/// The classified error of a non-2xx response. For auth failures the provider's text is replaced
/// by ours (it may quote our key); other messages are cut to a sane length; the provider's code
/// is kept only when it is a plain identifier.
pub(crate) fn status_error(
    class: ErrorClass,
    status: u16,
    message: &str,
    code: Option<String>,
    retry_after: Option<Duration>,
) -> UpstreamError {
    let message = match class {
        ErrorClass::UpstreamAuth => {
            format!("the upstream rejected the gateway's credentials or model (HTTP {status})")
        }
        _ if message.is_empty() => format!("upstream returned HTTP {status}"),
        _ => truncate_message(message),
    };
    UpstreamError::new(class, message)
        .with_status(status)
        .with_code(code.filter(|c| is_identifier(c)))
        .with_retry_after(retry_after)
}

/// A `&'static RawValue` of a constant JSON text.
pub(crate) fn raw_json(
    s: &'static str,
) -> Result<&'static serde_json::value::RawValue, TranslateError> {
    serde_json::from_str(s).map_err(|e| TranslateError::new("", e.to_string()))
}

/// The arguments of the `j`-th tool call of message `i` as a JSON object, for providers that
/// take them parsed: empty text is `{}`, anything but an object is the client's error.
pub(crate) fn tool_arguments(
    i: usize,
    j: usize,
    arguments: &str,
) -> Result<&serde_json::value::RawValue, TranslateError> {
    let args = arguments.trim();
    if args.is_empty() {
        return raw_json("{}");
    }
    serde_json::from_str(args)
        .ok()
        .filter(|v: &&serde_json::value::RawValue| v.get().starts_with('{'))
        .ok_or_else(|| {
            TranslateError::new(
                format!("messages[{i}].tool_calls[{j}].function.arguments"),
                "must be a JSON object",
            )
        })
}

/// A provider error code worth passing on: `context_length_exceeded`, not free text.
pub(crate) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Upstream messages shown to clients are cut to a sane length.
pub fn truncate_message(message: &str) -> String {
    const MAX: usize = 1000;
    if message.len() <= MAX {
        return message.to_owned();
    }
    let mut end = MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// Reads `retry-after-ms` (milliseconds) or `retry-after` (seconds or an HTTP date).
pub fn parse_retry_after(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
) -> Option<Duration> {
    if let Some(ms) = retry_after_ms.and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let v = retry_after?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Test helper shared by the provider modules.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// What the stepwise feeder needs of a translator (each provider's, or the enum).
    pub trait Translate {
        fn on_event(
            &mut self,
            ev: &SseEvent,
            out: &mut BytesMut,
        ) -> Result<Progress, UpstreamError>;
        fn on_eof(&mut self, out: &mut BytesMut) -> Result<(), UpstreamError>;
    }

    macro_rules! translate_for {
        ($($t:ty),*) => {$(
            impl Translate for $t {
                fn on_event(
                    &mut self,
                    ev: &SseEvent,
                    out: &mut BytesMut,
                ) -> Result<Progress, UpstreamError> {
                    <$t>::on_event(self, ev, out)
                }
                fn on_eof(&mut self, out: &mut BytesMut) -> Result<(), UpstreamError> {
                    <$t>::on_eof(self, out)
                }
            }
        )*};
    }
    translate_for!(
        StreamTranslator,
        bedrock::StreamTranslator,
        cohere::StreamTranslator,
        gemini::StreamTranslator
    );

    /// Feeds `input` through `d` and `t` in reads of `step` bytes, then closes the stream: the
    /// client-facing output, the progress of each event, and how the stream ended (the first
    /// decoder or translator error ends it).
    pub fn feed_steps<T: Translate>(
        t: &mut T,
        mut d: StreamDecoder,
        input: &[u8],
        step: usize,
    ) -> (String, Vec<Progress>, Result<(), UpstreamError>) {
        let mut out = BytesMut::new();
        let mut progress = Vec::new();
        let mut end = Ok(());
        'reads: for piece in input.chunks(step.max(1)) {
            d.feed(piece);
            loop {
                match d.next_event() {
                    Ok(Some(ev)) => match t.on_event(&ev, &mut out) {
                        Ok(p) => progress.push(p),
                        Err(e) => {
                            end = Err(e);
                            break 'reads;
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        end = Err(e);
                        break 'reads;
                    }
                }
            }
        }
        if end.is_ok() {
            end = t.on_eof(&mut out);
        }
        let text = String::from_utf8(out.to_vec()).expect("output is UTF-8");
        (text, progress, end)
    }

    /// Feeds `input` through `t` as one read, then closes the stream.
    pub fn feed(
        t: &mut StreamTranslator,
        input: &str,
    ) -> (String, Vec<Progress>, Result<(), UpstreamError>) {
        let d = StreamDecoder::Sse(SseDecoder::new());
        feed_steps(t, d, input.as_bytes(), input.len())
    }

    /// The `data:` payloads of an OpenAI stream as JSON (`[DONE]` as the string "[DONE]").
    pub fn chunks(text: &str) -> Vec<serde_json::Value> {
        text.split("\n\n")
            .filter(|s| !s.is_empty())
            .map(|s| {
                let data = s.strip_prefix("data: ").expect("data line");
                if data == "[DONE]" {
                    serde_json::json!("[DONE]")
                } else {
                    serde_json::from_str(data).expect("json chunk")
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            parse_retry_after(None, Some("2")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after(None, Some(" 1.5 ")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after(Some("250"), Some("9")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_retry_after(None, Some("-1")), None);
        assert_eq!(parse_retry_after(None, Some("soon")), None);
        assert_eq!(parse_retry_after(None, None), None);
        assert_eq!(
            parse_retry_after(None, Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(None, Some(&future)).expect("parses");
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }

    #[test]
    fn context_window_messages() {
        assert!(is_context_window_message(
            "This model's maximum context length is 8192 tokens"
        ));
        assert!(is_context_window_message(
            "prompt is too long: 210000 tokens > 200000 maximum"
        ));
        assert!(!is_context_window_message(
            "string_above_max_length: user is too long; maximum context length"
        ));
        assert!(!is_context_window_message("Invalid value for temperature"));
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let s = "é".repeat(800);
        let t = truncate_message(&s);
        assert!(t.len() <= 1004);
        assert!(t.ends_with('…'));
    }

    fn wire(name: &str, base: &str) -> Wire {
        let (kind, preset) = parse_provider(name).expect("known provider");
        Wire {
            kind,
            preset,
            name: PROVIDER_NAMES
                .iter()
                .find(|n| **n == name)
                .copied()
                .unwrap_or("openai"),
            base: base.into(),
            api_key: Some(Secret::new("k".to_owned())),
            api_version: None,
            azure_bearer: false,
            anthropic_version: "2023-06-01".into(),
            vertex: None,
            aws: None,
        }
    }

    #[test]
    fn urls_follow_each_provider() {
        let url = |w: &Wire, op, model, stream, batch| w.url(op, model, stream, batch).unwrap();
        let openai = wire("openai", "http://127.0.0.1:9/v1");
        assert_eq!(
            url(&openai, Op::Chat, "m", false, false),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        assert_eq!(
            url(&openai, Op::Embeddings, "m", false, false),
            "http://127.0.0.1:9/v1/embeddings"
        );
        let anthropic = wire("anthropic", "https://api.anthropic.com");
        assert_eq!(
            url(&anthropic, Op::Chat, "m", true, false),
            "https://api.anthropic.com/v1/messages"
        );
        assert!(anthropic.url(Op::Embeddings, "m", false, false).is_err());

        let mut azure = wire("azure", "https://res.openai.azure.com");
        assert_eq!(
            url(&azure, Op::Chat, "gpt-4o", true, false),
            "https://res.openai.azure.com/openai/v1/chat/completions"
        );
        azure.api_version = Some("2024-10-21".into());
        assert_eq!(
            url(&azure, Op::Embeddings, "emb-3", false, false),
            "https://res.openai.azure.com/openai/deployments/emb-3/embeddings?api-version=2024-10-21"
        );

        let gemini = wire("gemini", "https://generativelanguage.googleapis.com");
        assert_eq!(
            url(&gemini, Op::Chat, "gemini-2.5-flash", true, false),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            url(&gemini, Op::Embeddings, "text-embedding-004", false, true),
            "https://generativelanguage.googleapis.com/v1beta/models/text-embedding-004:batchEmbedContents"
        );
        let mut vertex = wire("vertex", "https://us-central1-aiplatform.googleapis.com");
        vertex.vertex = Some(("proj-1".into(), "us-central1".into()));
        assert_eq!(
            url(&vertex, Op::Chat, "gemini-2.5-pro", false, false),
            "https://us-central1-aiplatform.googleapis.com/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
        );

        let bedrock = wire("bedrock", "https://bedrock-runtime.us-east-1.amazonaws.com");
        assert_eq!(
            url(&bedrock, Op::Chat, "anthropic.claude-3-haiku-20240307-v1:0", false, false),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
        );
        let cohere = wire("cohere", "https://api.cohere.com");
        assert_eq!(
            url(&cohere, Op::Embeddings, "embed-v4.0", false, false),
            "https://api.cohere.com/v2/embed"
        );
        let voyage = wire("voyage", "https://api.voyageai.com/v1");
        assert_eq!(
            url(&voyage, Op::Embeddings, "voyage-3.5", false, false),
            "https://api.voyageai.com/v1/embeddings"
        );
        assert!(voyage.url(Op::Chat, "voyage-3.5", false, false).is_err());
    }

    #[test]
    fn a_passed_through_model_cannot_change_the_path() {
        let gemini = wire("gemini", "https://g.example");
        let u = gemini
            .url(Op::Chat, "../../admin?x=1#y", false, false)
            .unwrap();
        assert_eq!(
            u,
            "https://g.example/v1beta/models/..%2F..%2Fadmin%3Fx%3D1%23y:generateContent"
        );
        let mut azure = wire("azure", "https://a.example");
        azure.api_version = Some("2024-10-21".into());
        let u = azure.url(Op::Chat, "a/b", false, false).unwrap();
        assert!(u.contains("/deployments/a%2Fb/chat"), "{u}");
    }

    #[test]
    fn every_provider_name_parses() {
        for name in PROVIDER_NAMES {
            assert!(parse_provider(name).is_some(), "{name}");
        }
        assert_eq!(
            parse_provider("mistral").map(|(k, _)| k),
            Some(ProviderKind::OpenAi)
        );
        assert!(parse_provider("cohere-ish").is_none());
    }

    #[test]
    fn absurd_usage_is_refused() {
        let ok = Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            cached_tokens: 4,
            ..Usage::default()
        };
        assert!(check_usage(&ok).is_ok());
        for bad in [
            Usage {
                prompt_tokens: MAX_USAGE_TOKENS + 1,
                ..Usage::default()
            },
            Usage {
                completion_tokens: u64::MAX,
                ..Usage::default()
            },
            Usage {
                prompt_tokens: 1,
                cached_tokens: 2,
                ..Usage::default()
            },
            Usage {
                completion_tokens: 1,
                reasoning_tokens: 2,
                ..Usage::default()
            },
        ] {
            let e = check_usage(&bad).unwrap_err();
            assert_eq!(e.class, ErrorClass::ServerError);
        }
    }
}
