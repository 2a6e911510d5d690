//! Provider wire formats as pure translation: OpenAI-shaped requests in, each provider's native
//! request out; native responses, streams and errors back to OpenAI shape and [`ErrorClass`]es.
//! No I/O, no actix: `upstream` moves the bytes, this module only transforms them.
//!
//! "providers.md §N" in these modules refers to the team's shared wire-protocol reference,
//! which lives outside this repository; the test vectors used here are copied from it verbatim.

pub mod anthropic;
pub mod oai;
pub mod openai;
pub mod request;
pub mod sse;

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::config::Deployment;
use crate::error::{ErrorClass, UpstreamError};
use oai::Usage;
use request::{ChatBody, ChatRequest};
use sse::SseEvent;

/// The wire format a deployment speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI and every OpenAI-compatible server.
    OpenAi,
    /// Anthropic Messages API.
    Anthropic,
}

impl ProviderKind {
    pub const NAMES: &'static [&'static str] = &["openai", "anthropic"];

    pub fn parse(s: &str) -> Option<ProviderKind> {
        match s {
            "openai" => Some(ProviderKind::OpenAi),
            "anthropic" => Some(ProviderKind::Anthropic),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }

    pub fn default_api_base(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com",
        }
    }

    /// The URL chat requests are posted to, from the configured base.
    pub fn endpoint(self, api_base: &str) -> String {
        let base = api_base.trim_end_matches('/');
        match self {
            ProviderKind::OpenAi => format!("{base}/chat/completions"),
            ProviderKind::Anthropic => format!("{base}/v1/messages"),
        }
    }

    /// Static headers for every request to `dep` (auth and versions), as (name, value) pairs.
    /// The value of an auth header is secret; callers must mark it sensitive.
    pub fn headers(self, dep: &Deployment) -> Vec<(&'static str, String, bool)> {
        let mut h = Vec::with_capacity(2);
        match self {
            ProviderKind::OpenAi => {
                if let Some(key) = &dep.api_key {
                    h.push(("authorization", format!("Bearer {}", key.expose()), true));
                }
            }
            ProviderKind::Anthropic => {
                if let Some(key) = &dep.api_key {
                    h.push(("x-api-key", key.expose().to_owned(), true));
                }
                h.push((
                    "anthropic-version",
                    dep.anthropic_version.to_string(),
                    false,
                ));
            }
        }
        h
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
    match dep.provider {
        ProviderKind::OpenAi => Ok(openai::build_request(body, model)),
        ProviderKind::Anthropic => {
            let req =
                ChatRequest::from_body(body).map_err(|e| TranslateError::new("", e.to_string()))?;
            anthropic::build_request(&req, model, dep.default_max_tokens).map(Bytes::from)
        }
    }
}

/// Turns a 2xx non-streaming upstream body into the client's body and its usage.
pub fn parse_response(kind: ProviderKind, body: Bytes) -> Result<(Bytes, Usage), UpstreamError> {
    match kind {
        ProviderKind::OpenAi => openai::parse_response(&body).map(|u| (body, u)),
        ProviderKind::Anthropic => {
            anthropic::parse_response(&body, oai::unix_now()).map(|(b, u)| (b.freeze(), u))
        }
    }
}

/// Classifies a non-2xx upstream response.
pub fn classify_error(
    kind: ProviderKind,
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> UpstreamError {
    match kind {
        ProviderKind::OpenAi => openai::classify_error(status, retry_after, body),
        ProviderKind::Anthropic => anthropic::classify_error(status, retry_after, body),
    }
}

/// Turns one provider's stream into OpenAI chunks.
#[derive(Debug)]
pub enum StreamTranslator {
    OpenAi(openai::Relay),
    Anthropic(anthropic::StreamTranslator),
}

impl StreamTranslator {
    pub fn new(kind: ProviderKind, include_usage: bool) -> Self {
        match kind {
            ProviderKind::OpenAi => StreamTranslator::OpenAi(openai::Relay::new(include_usage)),
            ProviderKind::Anthropic => StreamTranslator::Anthropic(
                anthropic::StreamTranslator::new(include_usage, oai::unix_now()),
            ),
        }
    }

    pub fn on_event(
        &mut self,
        ev: &SseEvent,
        out: &mut BytesMut,
    ) -> Result<Progress, UpstreamError> {
        match self {
            StreamTranslator::OpenAi(t) => t.on_event(ev, out),
            StreamTranslator::Anthropic(t) => t.on_event(ev, out),
        }
    }

    /// The upstream closed: `Ok` (with any terminator written) if the stream was complete.
    pub fn on_eof(&mut self, out: &mut BytesMut) -> Result<(), UpstreamError> {
        match self {
            StreamTranslator::OpenAi(t) => t.on_eof(out),
            StreamTranslator::Anthropic(t) => t.on_eof(out),
        }
    }

    /// Nothing more is needed from the upstream; the terminator has been written.
    pub fn is_done(&self) -> bool {
        match self {
            StreamTranslator::OpenAi(t) => t.is_done(),
            StreamTranslator::Anthropic(t) => t.is_done(),
        }
    }

    pub fn usage(&self) -> Usage {
        match self {
            StreamTranslator::OpenAi(t) => t.usage(),
            StreamTranslator::Anthropic(t) => t.usage(),
        }
    }

    pub fn invalid_events(&self) -> u32 {
        match self {
            StreamTranslator::OpenAi(t) => t.invalid_events(),
            StreamTranslator::Anthropic(t) => t.invalid_events(),
        }
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
    use sse::SseDecoder;

    /// Feeds `input` through `t` as one read, then closes the stream: the client-facing
    /// output, the progress of each event, and how the stream ended.
    pub fn feed(
        t: &mut StreamTranslator,
        input: &str,
    ) -> (String, Vec<Progress>, Result<(), UpstreamError>) {
        let mut d = SseDecoder::new();
        d.feed(input.as_bytes());
        let mut out = BytesMut::new();
        let mut progress = Vec::new();
        let mut end = Ok(());
        while let Some(ev) = d.next_event().expect("test events are small") {
            match t.on_event(&ev, &mut out) {
                Ok(p) => progress.push(p),
                Err(e) => {
                    end = Err(e);
                    break;
                }
            }
        }
        if end.is_ok() {
            end = t.on_eof(&mut out);
        }
        let text = String::from_utf8(out.to_vec()).expect("output is UTF-8");
        (text, progress, end)
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

    #[test]
    fn endpoints_follow_each_kind() {
        assert_eq!(
            ProviderKind::OpenAi.endpoint("http://127.0.0.1:9/v1/"),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        assert_eq!(
            ProviderKind::Anthropic.endpoint("https://api.anthropic.com"),
            "https://api.anthropic.com/v1/messages"
        );
    }
}
