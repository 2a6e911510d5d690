//! Turns a [`Behavior`] into every byte string it can send, once, when it is set or pushed.
//!
//! The request path then only clones `Bytes` (a refcount) and headers; only embeddings bodies
//! (whose size depends on the request) are built per request, in `embed.rs`. Nothing here is
//! async and nothing here panics: invalid extra headers are skipped, invalid statuses become 500.
//!
//! OpenAI, Azure (the OpenAI renderer with Azure's extra fields) and Anthropic bodies are here;
//! Bedrock, Gemini and Cohere have their own modules.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use actix_web::http::StatusCode;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::behavior::{Behavior, ErrorPreset, Fault, Reply};
use super::wire::{self, anthropic as an, openai as oa, EmptyObject};
use super::{azure, bedrock, cohere, embed, gemini};

/// Which API a request speaks; decided by the path. `Voyage` has embeddings only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    OpenAi,
    Anthropic,
    Azure,
    Bedrock,
    Gemini,
    Cohere,
    Voyage,
}

impl Format {
    /// Whether the provider signals filtered content with a 200 (providers.md §0.3), so that
    /// `ErrorPreset::ContentFiltered` on a chat request is a successful answer.
    fn filters_with_200(self) -> bool {
        matches!(self, Format::Anthropic | Format::Bedrock | Format::Gemini)
    }
}

pub(crate) type HeaderList = Vec<(HeaderName, HeaderValue)>;

/// A complete non-streaming response.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub status: StatusCode,
    pub headers: HeaderList,
    pub body: Bytes,
}

/// The events of one stream, split where delays may go: `head` is sent with the headers,
/// `ttft` is waited before `content[0]`, `chunk_delay` between content chunks, `tail` follows the
/// last content chunk at once. `full` is all of it in one buffer (the no-delay fast path).
/// Events are SSE text, or event-stream frames for Bedrock.
#[derive(Debug, Clone, Default)]
pub(crate) struct SseScript {
    pub head: Bytes,
    pub content: Vec<Bytes>,
    pub tail: Bytes,
    pub full: Bytes,
}

impl SseScript {
    pub(crate) fn new(head: Vec<u8>, content: Vec<Vec<u8>>, tail: Vec<u8>) -> Self {
        let mut full = Vec::with_capacity(
            head.len() + content.iter().map(Vec::len).sum::<usize>() + tail.len(),
        );
        full.extend_from_slice(&head);
        for c in &content {
            full.extend_from_slice(c);
        }
        full.extend_from_slice(&tail);
        SseScript {
            head: head.into(),
            content: content.into_iter().map(Bytes::from).collect(),
            tail: tail.into(),
            full: full.into(),
        }
    }
}

/// Everything one chat format needs to answer under one behaviour.
#[derive(Debug)]
pub(crate) struct FormatSet {
    /// The fault as this format plays it (a 200-style content filter is no fault: `json` and
    /// the scripts are then the filtered answer).
    pub fault: FaultPlan,
    /// 200 non-stream success.
    pub json: Prepared,
    /// Headers of a 200 stream.
    pub sse_headers: HeaderList,
    /// Success stream without the usage chunk (OpenAI, Azure) / the stream (others).
    pub sse: SseScript,
    /// Success stream with `stream_options.include_usage` (OpenAI, Azure); same as `sse` for
    /// the others.
    pub sse_usage: SseScript,
    /// `Fault::InBandErrorBeforeContent` stream: `content[0]` is the error event.
    pub inband: SseScript,
    /// `Fault::InvalidJsonEvent`: the broken event.
    pub invalid_event: Bytes,
    /// Answer when the `fail_rate` roll fails.
    pub server_error: Prepared,
    /// `Fault::Error(preset)`, or Overloaded for `Fault::InBandErrorBeforeContent` (non-stream).
    pub fault_error: Option<Prepared>,
}

impl FormatSet {
    pub fn script(&self, include_usage: bool) -> &SseScript {
        if include_usage {
            &self.sse_usage
        } else {
            &self.sse
        }
    }
}

/// What one embeddings format needs besides the per-request body.
#[derive(Debug)]
pub(crate) struct EmbedSet {
    pub fault: FaultPlan,
    /// Headers of a 200.
    pub headers: HeaderList,
    pub server_error: Prepared,
    pub fault_error: Option<Prepared>,
}

/// The behaviour's numbers that embeddings bodies are built from, per request.
#[derive(Debug)]
pub(crate) struct EmbedParams {
    pub model: Box<str>,
    pub prompt_tokens: u64,
    /// At least 1.
    pub default_dims: usize,
}

/// Fault without its payload (the payload is precompiled into `FormatSet`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum FaultPlan {
    None,
    Error,
    ResetMidBody(usize),
    CutStream(usize),
    InBand,
    StallAfter(usize),
    InvalidJson(usize),
    Hang,
    WrongContentType,
}

/// A behaviour ready to serve.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub latency: Duration,
    pub ttft: Duration,
    pub chunk_delay: Duration,
    pub end_delay: Duration,
    /// In 0.0..=1.0 (NaN became 0).
    pub fail_rate: f64,
    pub openai: FormatSet,
    pub anthropic: FormatSet,
    pub azure: FormatSet,
    pub bedrock: FormatSet,
    pub gemini: FormatSet,
    pub cohere: FormatSet,
    pub embed: EmbedParams,
    pub embed_openai: EmbedSet,
    pub embed_azure: EmbedSet,
    pub embed_bedrock: EmbedSet,
    pub embed_gemini: EmbedSet,
    pub embed_cohere: EmbedSet,
    pub embed_voyage: EmbedSet,
}

impl Compiled {
    /// The chat set of a format (Voyage has no chat endpoint; it is never asked for).
    pub fn format(&self, format: Format) -> &FormatSet {
        match format {
            Format::OpenAi | Format::Voyage => &self.openai,
            Format::Anthropic => &self.anthropic,
            Format::Azure => &self.azure,
            Format::Bedrock => &self.bedrock,
            Format::Gemini => &self.gemini,
            Format::Cohere => &self.cohere,
        }
    }

    /// The embeddings set of a format (Anthropic has no embeddings endpoint; never asked for).
    pub fn embed_set(&self, format: Format) -> &EmbedSet {
        match format {
            Format::OpenAi | Format::Anthropic => &self.embed_openai,
            Format::Azure => &self.embed_azure,
            Format::Bedrock => &self.embed_bedrock,
            Format::Gemini => &self.embed_gemini,
            Format::Cohere => &self.embed_cohere,
            Format::Voyage => &self.embed_voyage,
        }
    }

    /// Whether a stream must be paced chunk by chunk instead of sent as one buffer.
    pub fn paced(&self) -> bool {
        !self.ttft.is_zero() || !self.chunk_delay.is_zero() || !self.end_delay.is_zero()
    }
}

// === headers ===

pub(crate) const JSON: HeaderValue = HeaderValue::from_static("application/json");
const GOOGLE_JSON: HeaderValue = HeaderValue::from_static("application/json; charset=UTF-8");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream; charset=utf-8");
const AMZ_EVENT_STREAM: HeaderValue =
    HeaderValue::from_static("application/vnd.amazon.eventstream");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
pub(crate) const X_AMZN_REQUEST_ID: HeaderName = HeaderName::from_static("x-amzn-requestid");

/// The format's request-id header and the mock's fixed value, if the provider sends one.
pub(crate) fn request_id_header(format: Format) -> Option<(HeaderName, HeaderValue)> {
    match format {
        Format::OpenAi | Format::Azure => {
            Some((X_REQUEST_ID, HeaderValue::from_static(wire::REQUEST_ID)))
        }
        Format::Anthropic => Some((REQUEST_ID, HeaderValue::from_static(wire::REQUEST_ID))),
        Format::Bedrock => Some((
            X_AMZN_REQUEST_ID,
            HeaderValue::from_static(wire::AWS_REQUEST_ID),
        )),
        Format::Gemini | Format::Cohere | Format::Voyage => None,
    }
}

/// `content-type` of the format's JSON bodies plus its request-id header.
pub(crate) fn json_headers(format: Format) -> HeaderList {
    let content_type = if format == Format::Gemini {
        GOOGLE_JSON
    } else {
        JSON
    };
    let mut h = vec![(CONTENT_TYPE, content_type)];
    h.extend(request_id_header(format));
    h
}

fn sse_headers(format: Format) -> HeaderList {
    let mut h = if format == Format::Bedrock {
        vec![(CONTENT_TYPE, AMZ_EVENT_STREAM)]
    } else {
        vec![(CONTENT_TYPE, EVENT_STREAM), (CACHE_CONTROL, NO_CACHE)]
    };
    h.extend(request_id_header(format));
    h
}

/// Parses user-given headers, skipping invalid ones (a mock must not panic on a typo).
fn parse_headers(pairs: &[(String, String)]) -> HeaderList {
    pairs
        .iter()
        .filter_map(|(n, v)| {
            let name = HeaderName::from_bytes(n.trim().as_bytes()).ok()?;
            let value = HeaderValue::from_str(v).ok()?;
            Some((name, value))
        })
        .collect()
}

// === error presets ===

/// Renders an error preset in a wire format (providers.md §1.7, §2.3, §3.5, §4.7, §5.5, §6, §7,
/// §9). `ContentFiltered` is always an error here; chat sets of 200-style formats replace it by
/// a filtered success (see `chat_set`).
pub(crate) fn error_prepared(preset: &ErrorPreset, format: Format) -> Prepared {
    if let ErrorPreset::Custom {
        status,
        body,
        headers: custom,
    } = preset
    {
        let mut headers = parse_headers(custom);
        if !headers.iter().any(|(n, _)| n == CONTENT_TYPE) {
            headers.insert(0, (CONTENT_TYPE, JSON));
        }
        return Prepared {
            status: StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers,
            body: Bytes::from(body.clone()),
        };
    }
    match format {
        Format::OpenAi | Format::Anthropic => classic_error(preset, format),
        Format::Azure => azure::error(preset),
        Format::Bedrock => bedrock::error(preset),
        Format::Gemini => gemini::error(preset),
        Format::Cohere => cohere::error(preset),
        Format::Voyage => embed::voyage_error(preset),
    }
}

/// OpenAI and Anthropic errors.
fn classic_error(preset: &ErrorPreset, format: Format) -> Prepared {
    let mut headers = json_headers(format);
    let anthropic = format == Format::Anthropic;
    let (status, body) = match (preset, anthropic) {
        (ErrorPreset::RateLimited { retry_after }, _) => {
            if let Some(secs) = retry_after {
                headers.push((RETRY_AFTER, HeaderValue::from(*secs)));
            }
            let body = match format {
                Format::Anthropic => {
                    headers.push((
                        HeaderName::from_static("anthropic-ratelimit-requests-remaining"),
                        HeaderValue::from_static("0"),
                    ));
                    an::error_body(
                        "rate_limit_error",
                        "This request would exceed the rate limit for your organization. \
                         Please try again later.",
                        wire::REQUEST_ID,
                    )
                }
                _ => {
                    headers.push((
                        HeaderName::from_static("x-ratelimit-remaining-requests"),
                        HeaderValue::from_static("0"),
                    ));
                    headers.push((
                        HeaderName::from_static("x-ratelimit-reset-requests"),
                        HeaderValue::from_static("2s"),
                    ));
                    oa::error_body(
                        "Rate limit reached for requests",
                        "requests",
                        None,
                        Some("rate_limit_exceeded"),
                    )
                }
            };
            (StatusCode::TOO_MANY_REQUESTS, body)
        }
        (ErrorPreset::QuotaExhausted, false) => (
            StatusCode::TOO_MANY_REQUESTS,
            oa::error_body(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                None,
                Some("insufficient_quota"),
            ),
        ),
        (ErrorPreset::QuotaExhausted, true) => (
            StatusCode::PAYMENT_REQUIRED,
            an::error_body(
                "billing_error",
                "Your credit balance is too low to access the Anthropic API.",
                wire::REQUEST_ID,
            ),
        ),
        (ErrorPreset::Overloaded, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            oa::error_body(
                "The server is overloaded or not ready yet.",
                "server_error",
                None,
                None,
            ),
        ),
        (ErrorPreset::Overloaded, true) => {
            // Byte for byte the §9.2 HTTP error fixture, request id included.
            headers = vec![
                (CONTENT_TYPE, JSON),
                (
                    REQUEST_ID,
                    HeaderValue::from_static(wire::FIXTURE_REQUEST_ID),
                ),
            ];
            (
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                an::error_body("overloaded_error", "Overloaded", wire::FIXTURE_REQUEST_ID),
            )
        }
        (ErrorPreset::ServerError, false) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            oa::error_body(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
            ),
        ),
        (ErrorPreset::ServerError, true) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            an::error_body("api_error", "Internal server error", wire::REQUEST_ID),
        ),
        (ErrorPreset::ContextLength, false) => (
            StatusCode::BAD_REQUEST,
            oa::error_body(
                "This model's maximum context length is 128000 tokens. However, your messages \
                 resulted in 130512 tokens.",
                "invalid_request_error",
                Some("messages"),
                Some("context_length_exceeded"),
            ),
        ),
        (ErrorPreset::ContextLength, true) => (
            StatusCode::BAD_REQUEST,
            an::error_body(
                "invalid_request_error",
                "prompt is too long: 210000 tokens > 200000 maximum",
                wire::REQUEST_ID,
            ),
        ),
        (ErrorPreset::BadRequest, false) => (
            StatusCode::BAD_REQUEST,
            oa::error_body(
                "Invalid request: the mock upstream was told to reject this request.",
                "invalid_request_error",
                None,
                None,
            ),
        ),
        (ErrorPreset::BadRequest, true) => (
            StatusCode::BAD_REQUEST,
            an::error_body(
                "invalid_request_error",
                "Invalid request: the mock upstream was told to reject this request.",
                wire::REQUEST_ID,
            ),
        ),
        (ErrorPreset::Unauthorized, false) => (
            StatusCode::UNAUTHORIZED,
            oa::error_body(
                "Incorrect API key provided. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
        ),
        (ErrorPreset::Unauthorized, true) => (
            StatusCode::UNAUTHORIZED,
            an::error_body(
                "authentication_error",
                "invalid x-api-key",
                wire::REQUEST_ID,
            ),
        ),
        (ErrorPreset::ContentFiltered, true) => (
            StatusCode::BAD_REQUEST,
            an::error_body(
                "invalid_request_error",
                "Output blocked by content filtering policy",
                wire::REQUEST_ID,
            ),
        ),
        (ErrorPreset::ContentFiltered, _) => (
            StatusCode::BAD_REQUEST,
            oa::error_body(
                "Your request was rejected as a result of our safety system. Your request may \
                 contain content that is not allowed by our safety system.",
                "invalid_request_error",
                None,
                Some("content_policy_violation"),
            ),
        ),
        (ErrorPreset::Custom { .. }, _) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            oa::error_body(
                "unreachable: custom errors are rendered by error_prepared",
                "server_error",
                None,
                None,
            ),
        ),
    };
    Prepared {
        status,
        headers,
        body: body.into(),
    }
}

// === behaviour ===

/// Splits `s` into at most `n` (at least 1) consecutive pieces of nearly equal character count.
/// A text shorter than `n` characters gives one piece per character; an empty text one empty piece.
pub(crate) fn split_pieces(s: &str, n: usize) -> Vec<&str> {
    let bounds: Vec<usize> = s
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()))
        .collect();
    let chars = bounds.len().saturating_sub(1);
    if chars == 0 {
        return vec![s];
    }
    let n = n.clamp(1, chars);
    let at = |k: usize| -> usize {
        // u128: k * chars cannot overflow.
        let idx = (k as u128 * chars as u128 / n as u128) as usize;
        bounds.get(idx).copied().unwrap_or(s.len())
    };
    (0..n)
        .map(|k| s.get(at(k)..at(k + 1)).unwrap_or(""))
        .collect()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What is said, borrowed from the behaviour.
#[derive(Clone, Copy)]
pub(crate) enum Said<'a> {
    Text(&'a str),
    Tool {
        id: &'a str,
        name: &'a str,
        arguments: &'a str,
    },
}

/// What a format renderer needs from the behaviour.
#[derive(Clone)]
pub(crate) struct Ctx<'a> {
    pub said: Said<'a>,
    /// The reply text or the tool arguments, split into content pieces.
    pub pieces: Vec<&'a str>,
    pub model: &'a str,
    pub created: u64,
    /// OpenAI meaning: cached tokens included.
    pub prompt: u64,
    pub cached: u64,
    pub completion: u64,
    /// `Behavior::latency` in ms (Bedrock `metrics.latencyMs`).
    pub latency_ms: u64,
    /// Render the provider's 200-style content filter instead of `said` (Anthropic, Bedrock,
    /// Gemini only).
    pub filtered: bool,
}

impl Ctx<'_> {
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

/// Raw JSON or `{}`.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Input<'a> {
    Raw(&'a RawValue),
    Empty(EmptyObject),
}

/// Tool arguments as a JSON value: the text itself if it parses, else `{}`.
pub(crate) fn arguments_json(arguments: &str) -> Input<'_> {
    match serde_json::from_str::<&RawValue>(arguments) {
        Ok(raw) => Input::Raw(raw),
        Err(_) => Input::Empty(EmptyObject {}),
    }
}

pub(crate) fn compile(b: &Behavior) -> Compiled {
    let (said, whole) = match &b.reply {
        Reply::Text(t) => (Said::Text(t), t.as_str()),
        Reply::ToolCall {
            id,
            name,
            arguments,
        } => (
            Said::Tool {
                id,
                name,
                arguments,
            },
            arguments.as_str(),
        ),
    };
    let pieces = split_pieces(whole, b.chunks);
    let completion = match b.completion_tokens {
        Some(n) => u64::from(n),
        None => pieces.len() as u64,
    };
    let ctx = Ctx {
        said,
        pieces,
        model: &b.model,
        created: now_unix(),
        prompt: u64::from(b.prompt_tokens),
        cached: u64::from(b.cached_tokens),
        completion,
        latency_ms: u64::try_from(b.latency.as_millis()).unwrap_or(u64::MAX),
        filtered: false,
    };
    // Nothing was generated when the content is filtered, unless told otherwise.
    let filtered = Ctx {
        filtered: true,
        completion: b.completion_tokens.map_or(0, u64::from),
        ..ctx.clone()
    };
    let extra = parse_headers(&b.headers);
    let plan = match &b.fault {
        Fault::None => FaultPlan::None,
        Fault::Error(_) => FaultPlan::Error,
        Fault::ResetMidBody { after_chunks } => FaultPlan::ResetMidBody(*after_chunks),
        Fault::CutStream { after_chunks } => FaultPlan::CutStream(*after_chunks),
        Fault::InBandErrorBeforeContent => FaultPlan::InBand,
        Fault::StallAfter { after_chunks } => FaultPlan::StallAfter(*after_chunks),
        Fault::InvalidJsonEvent { after_chunks } => FaultPlan::InvalidJson(*after_chunks),
        Fault::Hang => FaultPlan::Hang,
        Fault::WrongContentType => FaultPlan::WrongContentType,
    };
    let fault_preset = match &b.fault {
        Fault::Error(p) => Some(p.clone()),
        Fault::InBandErrorBeforeContent => Some(ErrorPreset::Overloaded),
        _ => None,
    };
    let content_filtered = matches!(b.fault, Fault::Error(ErrorPreset::ContentFiltered));
    let fail_rate = if b.fail_rate.is_nan() {
        0.0
    } else {
        b.fail_rate.clamp(0.0, 1.0)
    };
    let with_extra = |mut h: HeaderList| {
        h.extend(extra.iter().cloned());
        h
    };
    let chat = |format: Format| {
        let filter_ok = content_filtered && format.filters_with_200();
        let c = if filter_ok { &filtered } else { &ctx };
        let (json, sse, sse_usage, inband, invalid): (_, _, _, _, Bytes) = match format {
            Format::OpenAi | Format::Azure | Format::Voyage => {
                let azure = format == Format::Azure;
                (
                    openai_json(c, azure),
                    openai_sse(c, false, azure),
                    openai_sse(c, true, azure),
                    openai_inband(azure),
                    Bytes::from_static(b"data: {not json\n\n"),
                )
            }
            Format::Anthropic => {
                let sse = anthropic_sse(c);
                (
                    anthropic_json(c),
                    sse.clone(),
                    sse,
                    anthropic_inband(c),
                    Bytes::from_static(b"event: content_block_delta\ndata: {not json\n\n"),
                )
            }
            Format::Bedrock => {
                let sse = bedrock::stream(c);
                (
                    bedrock::json(c),
                    sse.clone(),
                    sse,
                    bedrock::inband(),
                    bedrock::invalid_event(),
                )
            }
            Format::Gemini => {
                let sse = gemini::stream(c);
                (
                    gemini::json(c),
                    sse.clone(),
                    sse,
                    gemini::inband(),
                    Bytes::from_static(gemini::INVALID_EVENT),
                )
            }
            Format::Cohere => {
                let sse = cohere::stream(c);
                (
                    cohere::json(c),
                    sse.clone(),
                    sse,
                    cohere::inband(c),
                    Bytes::from_static(cohere::INVALID_EVENT),
                )
            }
        };
        FormatSet {
            fault: if filter_ok { FaultPlan::None } else { plan },
            json: Prepared {
                status: StatusCode::OK,
                headers: with_extra(json_headers(format)),
                body: json.into(),
            },
            sse_headers: with_extra(sse_headers(format)),
            sse,
            sse_usage,
            inband,
            invalid_event: invalid,
            server_error: error_prepared(&ErrorPreset::ServerError, format),
            fault_error: if filter_ok {
                None
            } else {
                fault_preset.as_ref().map(|p| error_prepared(p, format))
            },
        }
    };
    let embed_set = |format: Format| EmbedSet {
        fault: plan,
        headers: with_extra(embed::headers(format, ctx.prompt)),
        server_error: error_prepared(&ErrorPreset::ServerError, format),
        fault_error: fault_preset.as_ref().map(|p| error_prepared(p, format)),
    };
    Compiled {
        latency: b.latency,
        ttft: b.ttft,
        chunk_delay: b.chunk_delay,
        end_delay: b.end_delay,
        fail_rate,
        openai: chat(Format::OpenAi),
        anthropic: chat(Format::Anthropic),
        azure: chat(Format::Azure),
        bedrock: chat(Format::Bedrock),
        gemini: chat(Format::Gemini),
        cohere: chat(Format::Cohere),
        embed: EmbedParams {
            model: b.model.as_str().into(),
            prompt_tokens: ctx.prompt,
            default_dims: b.embedding_dims.max(1),
        },
        embed_openai: embed_set(Format::OpenAi),
        embed_azure: embed_set(Format::Azure),
        embed_bedrock: embed_set(Format::Bedrock),
        embed_gemini: embed_set(Format::Gemini),
        embed_cohere: embed_set(Format::Cohere),
        embed_voyage: embed_set(Format::Voyage),
    }
}

// === OpenAI bodies ===

/// OpenAI, or Azure (`azure`: filter results on the prompt and the choice).
fn openai_json(c: &Ctx, azure: bool) -> Vec<u8> {
    let (content, tool_calls, finish) = match c.said {
        Said::Text(t) => (Some(t), None, "stop"),
        Said::Tool {
            id,
            name,
            arguments,
        } => (
            None,
            Some([oa::ToolCall {
                id,
                kind: "function",
                function: oa::FunctionCall { name, arguments },
            }]),
            "tool_calls",
        ),
    };
    wire::to_vec(&oa::Completion {
        id: wire::OPENAI_COMPLETION_ID,
        object: "chat.completion",
        created: c.created,
        model: c.model,
        choices: [oa::CompletionChoice {
            index: 0,
            message: oa::Message {
                role: "assistant",
                content,
                tool_calls,
                refusal: (),
            },
            logprobs: (),
            finish_reason: finish,
            content_filter_results: azure.then_some(oa::ALL_SAFE),
        }],
        usage: oa::FullUsage {
            prompt_tokens: c.prompt,
            completion_tokens: c.completion,
            total_tokens: c.prompt.saturating_add(c.completion),
            prompt_tokens_details: oa::FullPromptDetails {
                cached_tokens: c.cached,
                audio_tokens: 0,
            },
            completion_tokens_details: oa::FullCompletionDetails {
                reasoning_tokens: 0,
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            },
        },
        service_tier: "default",
        system_fingerprint: "fp_mock0001",
        prompt_filter_results: azure.then_some([oa::PROMPT_FILTER]),
    })
}

/// Azure's first chunk (§2.3): `choices: []` with the prompt filter results.
fn azure_prompt_filter_chunk(include_usage: bool) -> Vec<u8> {
    wire::sse_data(&wire::to_vec(&oa::PromptFilterChunk {
        choices: [],
        created: 0,
        id: "",
        model: "",
        object: "",
        prompt_filter_results: [oa::PROMPT_FILTER],
        usage: include_usage.then_some(()),
    }))
}

/// OpenAI, or Azure (`azure`: a prompt-filter chunk first, filter results on every choice).
fn openai_sse(c: &Ctx, include_usage: bool, azure: bool) -> SseScript {
    let usage_null = if include_usage { Some(None) } else { None };
    let chunk = |delta: oa::Delta, finish: Option<&'static str>| {
        // Azure annotates content chunks; the role and finish chunks carry `{}`.
        let filter = match (azure, &delta) {
            (false, _) => None,
            (
                true,
                oa::Delta {
                    role: None,
                    content: Some(_),
                    ..
                },
            )
            | (
                true,
                oa::Delta {
                    role: None,
                    tool_calls: Some(_),
                    ..
                },
            ) => Some(oa::ALL_SAFE),
            (true, _) => Some(oa::FilterResults::Empty(EmptyObject {})),
        };
        wire::sse_data(&wire::to_vec(&oa::Chunk {
            id: wire::OPENAI_COMPLETION_ID,
            object: "chat.completion.chunk",
            created: c.created,
            model: c.model,
            choices: &[oa::ChunkChoice {
                index: 0,
                delta,
                logprobs: (),
                finish_reason: finish,
                content_filter_results: filter,
            }],
            usage: usage_null,
        }))
    };
    let (role, finish) = match c.said {
        Said::Text(_) => (
            chunk(
                oa::Delta {
                    role: Some("assistant"),
                    content: Some(Some("")),
                    tool_calls: None,
                },
                None,
            ),
            "stop",
        ),
        Said::Tool { id, name, .. } => (
            chunk(
                oa::Delta {
                    role: Some("assistant"),
                    content: Some(None),
                    tool_calls: Some([oa::ToolCallDelta {
                        index: 0,
                        id: Some(id),
                        kind: Some("function"),
                        function: oa::FunctionDelta {
                            name: Some(name),
                            arguments: "",
                        },
                    }]),
                },
                None,
            ),
            "tool_calls",
        ),
    };
    let content = c
        .pieces
        .iter()
        .map(|piece| {
            let delta = match c.said {
                Said::Text(_) => oa::Delta {
                    content: Some(Some(piece)),
                    ..oa::Delta::default()
                },
                Said::Tool { .. } => oa::Delta {
                    tool_calls: Some([oa::ToolCallDelta {
                        index: 0,
                        id: None,
                        kind: None,
                        function: oa::FunctionDelta {
                            name: None,
                            arguments: piece,
                        },
                    }]),
                    ..oa::Delta::default()
                },
            };
            chunk(delta, None)
        })
        .collect();
    let mut tail = chunk(oa::Delta::default(), Some(finish));
    if include_usage {
        let usage = oa::StreamUsage {
            prompt_tokens: c.prompt,
            completion_tokens: c.completion,
            total_tokens: c.prompt.saturating_add(c.completion),
            prompt_tokens_details: oa::StreamPromptDetails {
                cached_tokens: c.cached,
            },
            completion_tokens_details: oa::StreamCompletionDetails {
                reasoning_tokens: 0,
            },
        };
        tail.extend(wire::sse_data(&wire::to_vec(&oa::Chunk {
            id: wire::OPENAI_COMPLETION_ID,
            object: "chat.completion.chunk",
            created: c.created,
            model: c.model,
            choices: &[],
            usage: Some(Some(&usage)),
        })));
    }
    tail.extend_from_slice(b"data: [DONE]\n\n");
    let mut head = if azure {
        azure_prompt_filter_chunk(include_usage)
    } else {
        Vec::new()
    };
    head.extend(role);
    SseScript::new(head, content, tail)
}

/// `Fault::InBandErrorBeforeContent`: an OpenAI error object as an event (Azure: after the
/// prompt-filter chunk).
fn openai_inband(azure: bool) -> SseScript {
    let head = if azure {
        azure_prompt_filter_chunk(false)
    } else {
        Vec::new()
    };
    SseScript::new(
        head,
        vec![wire::sse_data(
            br#"{"error":{"message":"The server is overloaded","type":"server_error","param":null,"code":"overloaded"}}"#,
        )],
        Vec::new(),
    )
}

// === Anthropic bodies ===

/// `input_tokens` excludes cache reads (providers.md §3.3); see `Behavior` docs.
fn anthropic_usage(c: &Ctx, output_tokens: u64) -> an::Usage {
    an::Usage {
        input_tokens: c.prompt.saturating_sub(c.cached),
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: c.cached,
        output_tokens,
    }
}

fn anthropic_json(c: &Ctx) -> Vec<u8> {
    #[derive(Serialize)]
    struct Response<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        role: &'static str,
        model: &'a str,
        content: Vec<Block<'a>>,
        stop_reason: &'static str,
        stop_sequence: (),
        usage: an::Usage,
    }
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Block<'a> {
        Text {
            text: &'a str,
        },
        ToolUse {
            id: &'a str,
            name: &'a str,
            input: Input<'a>,
        },
    }
    let (block, stop) = match c.said {
        // A refusal (providers.md §3.5): no content.
        _ if c.filtered => (None, "refusal"),
        Said::Text(text) => (Some(Block::Text { text }), "end_turn"),
        Said::Tool {
            id,
            name,
            arguments,
        } => {
            let input = arguments_json(arguments);
            (Some(Block::ToolUse { id, name, input }), "tool_use")
        }
    };
    wire::to_vec(&Response {
        id: wire::ANTHROPIC_MESSAGE_ID,
        kind: "message",
        role: "assistant",
        model: c.model,
        content: block.into_iter().collect(),
        stop_reason: stop,
        stop_sequence: (),
        usage: anthropic_usage(c, c.completion),
    })
}

fn anthropic_message_start(c: &Ctx) -> Vec<u8> {
    an::Event::MessageStart {
        message: an::StartMessage {
            id: wire::ANTHROPIC_MESSAGE_ID,
            kind: "message",
            role: "assistant",
            model: c.model,
            content: [],
            stop_reason: (),
            stop_sequence: (),
            usage: anthropic_usage(c, 1),
        },
    }
    .to_sse()
}

/// `message_delta` with the stop reason and the output usage, then `message_stop`.
fn anthropic_ending(c: &Ctx, stop: &'static str) -> Vec<u8> {
    let mut out = an::Event::MessageDelta {
        delta: an::MessageDeltaBody {
            stop_reason: stop,
            stop_sequence: (),
        },
        usage: an::OutputUsage {
            output_tokens: c.completion,
        },
    }
    .to_sse();
    out.extend(an::Event::MessageStop.to_sse());
    out
}

fn anthropic_sse(c: &Ctx) -> SseScript {
    let mut head = anthropic_message_start(c);
    if c.filtered {
        // A refusal: no content block at all.
        return SseScript::new(head, Vec::new(), anthropic_ending(c, "refusal"));
    }
    let (start_block, stop) = match c.said {
        Said::Text(_) => (an::StartBlock::Text { text: "" }, "end_turn"),
        Said::Tool { id, name, .. } => (
            an::StartBlock::ToolUse {
                id,
                name,
                input: EmptyObject {},
            },
            "tool_use",
        ),
    };
    head.extend(
        an::Event::ContentBlockStart {
            index: 0,
            content_block: start_block,
        }
        .to_sse(),
    );
    head.extend(an::Event::Ping.to_sse());
    let delta = |piece| match c.said {
        Said::Text(_) => an::BlockDelta::TextDelta { text: piece },
        Said::Tool { .. } => an::BlockDelta::InputJsonDelta {
            partial_json: piece,
        },
    };
    if let Said::Tool { .. } = c.said {
        // Anthropic opens a tool_use block with an empty partial_json (§3.4, §9.2).
        head.extend(
            an::Event::ContentBlockDelta {
                index: 0,
                delta: delta(""),
            }
            .to_sse(),
        );
    }
    let content = c
        .pieces
        .iter()
        .map(|piece| {
            an::Event::ContentBlockDelta {
                index: 0,
                delta: delta(piece),
            }
            .to_sse()
        })
        .collect();
    let mut tail = an::Event::ContentBlockStop { index: 0 }.to_sse();
    tail.extend(anthropic_ending(c, stop));
    SseScript::new(head, content, tail)
}

/// `Fault::InBandErrorBeforeContent`: `message_start`, then an `overloaded_error` event.
fn anthropic_inband(c: &Ctx) -> SseScript {
    SseScript::new(
        anthropic_message_start(c),
        vec![an::Event::Error {
            error: an::ErrorDetail {
                kind: "overloaded_error",
                message: "Overloaded",
            },
        }
        .to_sse()],
        Vec::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::eventstream::decode_frames;
    use super::*;

    const CHAT: [Format; 6] = [
        Format::OpenAi,
        Format::Anthropic,
        Format::Azure,
        Format::Bedrock,
        Format::Gemini,
        Format::Cohere,
    ];

    /// The JSON payloads of `bytes`, which must be whole events of the format.
    fn events(format: Format, bytes: &[u8]) -> Vec<String> {
        if format == Format::Bedrock {
            return decode_frames(bytes)
                .unwrap()
                .into_iter()
                .map(|f| String::from_utf8(f.payload).unwrap())
                .collect();
        }
        let text = std::str::from_utf8(bytes).unwrap();
        let sep = if format == Format::Gemini {
            // CRLF everywhere: no bare LF.
            assert!(!text.replace("\r\n", "").contains('\n'), "{text:?}");
            "\r\n\r\n"
        } else {
            assert!(!text.contains('\r'), "{text:?}");
            "\n\n"
        };
        assert!(text.is_empty() || text.ends_with(sep), "{text:?}");
        text.split(sep)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                if let Some(name) = e.lines().find_map(|l| l.strip_prefix("event: ")) {
                    // Anthropic and Cohere name each event after its JSON `type`.
                    if data.starts_with('{') && !data.starts_with("{not") {
                        let v: serde_json::Value = serde_json::from_str(data).unwrap();
                        assert_eq!(v["type"], name, "{e}");
                    }
                }
                data.to_owned()
            })
            .collect()
    }

    #[test]
    fn every_script_piece_is_whole_events_in_every_format() {
        for behavior in [
            Behavior::text("Hello, wörld.").with_chunks(3),
            Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#),
            Behavior::error(ErrorPreset::ContentFiltered),
        ] {
            let c = compile(&behavior);
            for format in CHAT {
                let set = c.format(format);
                for script in [&set.sse, &set.sse_usage, &set.inband] {
                    let mut all = events(format, &script.head);
                    for piece in &script.content {
                        all.extend(events(format, piece));
                    }
                    all.extend(events(format, &script.tail));
                    assert_eq!(all, events(format, &script.full), "{format:?}");
                    for data in all.iter().filter(|d| *d != "[DONE]") {
                        serde_json::from_str::<serde_json::Value>(data)
                            .unwrap_or_else(|e| panic!("{format:?}: {e}: {data}"));
                    }
                }
                assert_eq!(events(format, &set.invalid_event), ["{not json"]);
                serde_json::from_slice::<serde_json::Value>(&set.json.body).unwrap();
            }
        }
    }

    #[test]
    fn content_filtered_is_a_success_only_where_the_provider_says_so() {
        let c = compile(&Behavior::error(ErrorPreset::ContentFiltered));
        for format in CHAT {
            let set = c.format(format);
            let ok = matches!(set.fault, FaultPlan::None);
            assert_eq!(ok, format.filters_with_200(), "{format:?}");
            assert_eq!(set.fault_error.is_none(), ok, "{format:?}");
            if let Some(e) = &set.fault_error {
                assert_eq!(e.status, StatusCode::BAD_REQUEST, "{format:?}");
            }
        }
        for format in [Format::Bedrock, Format::Gemini, Format::Voyage] {
            let set = c.embed_set(format);
            assert!(matches!(set.fault, FaultPlan::Error));
            assert_eq!(
                set.fault_error.as_ref().unwrap().status,
                StatusCode::BAD_REQUEST
            );
        }
    }

    #[test]
    fn splits_like_the_reference_vectors() {
        assert_eq!(split_pieces("Hello.", 2), ["Hel", "lo."]);
        assert_eq!(
            split_pieces(r#"{"city":"Paris"}"#, 2),
            [r#"{"city":"#, r#""Paris"}"#]
        );
        assert_eq!(split_pieces("", 4), [""]);
        assert_eq!(split_pieces("ab", 5), ["a", "b"]);
        assert_eq!(split_pieces("héllo wörld", 0), ["héllo wörld"]);
        assert_eq!(split_pieces("ééé", 3), ["é", "é", "é"]);
    }
}
