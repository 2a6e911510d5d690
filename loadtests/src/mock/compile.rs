//! Turns a [`Behavior`] into every byte string it can send, once, when it is set or pushed.
//!
//! The request path then only clones `Bytes` (a refcount) and headers. Nothing here is async
//! and nothing here panics: invalid extra headers are skipped, invalid statuses become 500.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use actix_web::http::StatusCode;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::behavior::{Behavior, ErrorPreset, Fault, Reply};
use super::wire::{self, anthropic as an, openai as oa, EmptyObject};

/// Which API a request speaks; decided by the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    OpenAi,
    Anthropic,
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
#[derive(Debug, Clone, Default)]
pub(crate) struct SseScript {
    pub head: Bytes,
    pub content: Vec<Bytes>,
    pub tail: Bytes,
    pub full: Bytes,
}

impl SseScript {
    fn new(head: Vec<u8>, content: Vec<Vec<u8>>, tail: Vec<u8>) -> Self {
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

/// Everything one format needs to answer under one behaviour.
#[derive(Debug)]
pub(crate) struct FormatSet {
    /// 200 non-stream success.
    pub json: Prepared,
    /// Headers of a 200 stream.
    pub sse_headers: HeaderList,
    /// Success stream without the usage chunk (OpenAI) / the stream (Anthropic).
    pub sse: SseScript,
    /// Success stream with `stream_options.include_usage` (OpenAI); same as `sse` for Anthropic.
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
}

/// A behaviour ready to serve.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub latency: Duration,
    pub ttft: Duration,
    pub chunk_delay: Duration,
    /// In 0.0..=1.0 (NaN became 0).
    pub fail_rate: f64,
    pub fault: FaultPlan,
    pub openai: FormatSet,
    pub anthropic: FormatSet,
}

impl Compiled {
    pub fn format(&self, format: Format) -> &FormatSet {
        match format {
            Format::OpenAi => &self.openai,
            Format::Anthropic => &self.anthropic,
        }
    }

    /// Whether a stream must be paced chunk by chunk instead of sent as one buffer.
    pub fn paced(&self) -> bool {
        !self.ttft.is_zero() || !self.chunk_delay.is_zero()
    }
}

// === headers ===

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream; charset=utf-8");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

pub(crate) fn request_id_header(format: Format) -> HeaderName {
    match format {
        Format::OpenAi => X_REQUEST_ID,
        Format::Anthropic => REQUEST_ID,
    }
}

/// `content-type: application/json` plus the format's request-id header.
pub(crate) fn json_headers(format: Format, request_id: &'static str) -> HeaderList {
    vec![
        (CONTENT_TYPE, JSON),
        (
            request_id_header(format),
            HeaderValue::from_static(request_id),
        ),
    ]
}

fn sse_headers(format: Format) -> HeaderList {
    vec![
        (CONTENT_TYPE, EVENT_STREAM),
        (CACHE_CONTROL, NO_CACHE),
        (
            request_id_header(format),
            HeaderValue::from_static(wire::REQUEST_ID),
        ),
    ]
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

/// Renders an error preset in a wire format (providers.md §1.7, §3.5, §9.1, §9.2).
pub(crate) fn error_prepared(preset: &ErrorPreset, format: Format) -> Prepared {
    let mut headers = json_headers(format, wire::REQUEST_ID);
    let (status, body) = match (preset, format) {
        (ErrorPreset::RateLimited { retry_after }, _) => {
            if let Some(secs) = retry_after {
                headers.push((RETRY_AFTER, HeaderValue::from(*secs)));
            }
            let body = match format {
                Format::OpenAi => {
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
            };
            (StatusCode::TOO_MANY_REQUESTS, body)
        }
        (ErrorPreset::QuotaExhausted, Format::OpenAi) => (
            StatusCode::TOO_MANY_REQUESTS,
            oa::error_body(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                None,
                Some("insufficient_quota"),
            ),
        ),
        (ErrorPreset::QuotaExhausted, Format::Anthropic) => (
            StatusCode::PAYMENT_REQUIRED,
            an::error_body(
                "billing_error",
                "Your credit balance is too low to access the Anthropic API.",
                wire::REQUEST_ID,
            ),
        ),
        (ErrorPreset::Overloaded, Format::OpenAi) => (
            StatusCode::SERVICE_UNAVAILABLE,
            oa::error_body(
                "The server is overloaded or not ready yet.",
                "server_error",
                None,
                None,
            ),
        ),
        (ErrorPreset::Overloaded, Format::Anthropic) => {
            // Byte for byte the §9.2 HTTP error fixture, request id included.
            headers = json_headers(format, wire::FIXTURE_REQUEST_ID);
            (
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                an::error_body("overloaded_error", "Overloaded", wire::FIXTURE_REQUEST_ID),
            )
        }
        (ErrorPreset::ServerError, Format::OpenAi) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            oa::error_body(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
            ),
        ),
        (ErrorPreset::ServerError, Format::Anthropic) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            an::error_body("api_error", "Internal server error", wire::REQUEST_ID),
        ),
        (ErrorPreset::ContextLength, Format::OpenAi) => (
            StatusCode::BAD_REQUEST,
            oa::error_body(
                "This model's maximum context length is 128000 tokens. However, your messages \
                 resulted in 130512 tokens.",
                "invalid_request_error",
                Some("messages"),
                Some("context_length_exceeded"),
            ),
        ),
        (ErrorPreset::ContextLength, Format::Anthropic) => (
            StatusCode::BAD_REQUEST,
            an::error_body(
                "invalid_request_error",
                "prompt is too long: 210000 tokens > 200000 maximum",
                wire::REQUEST_ID,
            ),
        ),
        (ErrorPreset::BadRequest, Format::OpenAi) => (
            StatusCode::BAD_REQUEST,
            oa::error_body(
                "Invalid request: the mock upstream was told to reject this request.",
                "invalid_request_error",
                None,
                None,
            ),
        ),
        (ErrorPreset::BadRequest, Format::Anthropic) => (
            StatusCode::BAD_REQUEST,
            an::error_body(
                "invalid_request_error",
                "Invalid request: the mock upstream was told to reject this request.",
                wire::REQUEST_ID,
            ),
        ),
        (ErrorPreset::Unauthorized, Format::OpenAi) => (
            StatusCode::UNAUTHORIZED,
            oa::error_body(
                "Incorrect API key provided. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
        ),
        (ErrorPreset::Unauthorized, Format::Anthropic) => (
            StatusCode::UNAUTHORIZED,
            an::error_body(
                "authentication_error",
                "invalid x-api-key",
                wire::REQUEST_ID,
            ),
        ),
        (
            ErrorPreset::Custom {
                status,
                body,
                headers: custom,
            },
            _,
        ) => {
            headers = parse_headers(custom);
            if !headers.iter().any(|(n, _)| n == CONTENT_TYPE) {
                headers.insert(0, (CONTENT_TYPE, JSON));
            }
            (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body.clone().into_bytes(),
            )
        }
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
enum Said<'a> {
    Text(&'a str),
    Tool {
        id: &'a str,
        name: &'a str,
        arguments: &'a str,
    },
}

struct Ctx<'a> {
    said: Said<'a>,
    pieces: Vec<&'a str>,
    model: &'a str,
    created: u64,
    prompt: u64,
    cached: u64,
    completion: u64,
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
    };
    let extra = parse_headers(&b.headers);
    let fault = match &b.fault {
        Fault::None => FaultPlan::None,
        Fault::Error(_) => FaultPlan::Error,
        Fault::ResetMidBody { after_chunks } => FaultPlan::ResetMidBody(*after_chunks),
        Fault::CutStream { after_chunks } => FaultPlan::CutStream(*after_chunks),
        Fault::InBandErrorBeforeContent => FaultPlan::InBand,
        Fault::StallAfter { after_chunks } => FaultPlan::StallAfter(*after_chunks),
        Fault::InvalidJsonEvent { after_chunks } => FaultPlan::InvalidJson(*after_chunks),
        Fault::Hang => FaultPlan::Hang,
    };
    let fault_preset = match &b.fault {
        Fault::Error(p) => Some(p.clone()),
        Fault::InBandErrorBeforeContent => Some(ErrorPreset::Overloaded),
        _ => None,
    };
    let fail_rate = if b.fail_rate.is_nan() {
        0.0
    } else {
        b.fail_rate.clamp(0.0, 1.0)
    };
    let set = |format: Format| {
        let with_extra = |mut h: HeaderList| {
            h.extend(extra.iter().cloned());
            h
        };
        let (json, sse, sse_usage, inband, invalid) = match format {
            Format::OpenAi => (
                openai_json(&ctx),
                openai_sse(&ctx, false),
                openai_sse(&ctx, true),
                SseScript::new(
                    Vec::new(),
                    vec![wire::sse_data(
                        br#"{"error":{"message":"The server is overloaded","type":"server_error","param":null,"code":"overloaded"}}"#,
                    )],
                    Vec::new(),
                ),
                Bytes::from_static(b"data: {not json\n\n"),
            ),
            Format::Anthropic => {
                let sse = anthropic_sse(&ctx);
                (
                    anthropic_json(&ctx),
                    sse.clone(),
                    sse,
                    SseScript::new(
                        anthropic_message_start(&ctx),
                        vec![an::Event::Error {
                            error: an::ErrorDetail {
                                kind: "overloaded_error",
                                message: "Overloaded",
                            },
                        }
                        .to_sse()],
                        Vec::new(),
                    ),
                    Bytes::from_static(b"event: content_block_delta\ndata: {not json\n\n"),
                )
            }
        };
        FormatSet {
            json: Prepared {
                status: StatusCode::OK,
                headers: with_extra(json_headers(format, wire::REQUEST_ID)),
                body: json.into(),
            },
            sse_headers: with_extra(sse_headers(format)),
            sse,
            sse_usage,
            inband,
            invalid_event: invalid,
            server_error: error_prepared(&ErrorPreset::ServerError, format),
            fault_error: fault_preset.as_ref().map(|p| error_prepared(p, format)),
        }
    };
    Compiled {
        latency: b.latency,
        ttft: b.ttft,
        chunk_delay: b.chunk_delay,
        fail_rate,
        fault,
        openai: set(Format::OpenAi),
        anthropic: set(Format::Anthropic),
    }
}

// === OpenAI bodies ===

fn openai_json(c: &Ctx) -> Vec<u8> {
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
    })
}

fn openai_sse(c: &Ctx, include_usage: bool) -> SseScript {
    let usage_null = if include_usage { Some(None) } else { None };
    let chunk = |delta: oa::Delta, finish: Option<&'static str>| {
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
            }],
            usage: usage_null,
        }))
    };
    let (head, finish) = match c.said {
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
    SseScript::new(head, content, tail)
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

/// Raw JSON or `{}`.
#[derive(Serialize)]
#[serde(untagged)]
enum Input<'a> {
    Raw(&'a RawValue),
    Empty(EmptyObject),
}

fn anthropic_json(c: &Ctx) -> Vec<u8> {
    #[derive(Serialize)]
    struct Response<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        role: &'static str,
        model: &'a str,
        content: [Block<'a>; 1],
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
    let parsed;
    let (block, stop) = match c.said {
        Said::Text(text) => (Block::Text { text }, "end_turn"),
        Said::Tool {
            id,
            name,
            arguments,
        } => {
            parsed = serde_json::from_str::<&RawValue>(arguments).ok();
            let input = match parsed {
                Some(raw) => Input::Raw(raw),
                None => Input::Empty(EmptyObject {}),
            };
            (Block::ToolUse { id, name, input }, "tool_use")
        }
    };
    wire::to_vec(&Response {
        id: wire::ANTHROPIC_MESSAGE_ID,
        kind: "message",
        role: "assistant",
        model: c.model,
        content: [block],
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

fn anthropic_sse(c: &Ctx) -> SseScript {
    let mut head = anthropic_message_start(c);
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
    tail.extend(
        an::Event::MessageDelta {
            delta: an::MessageDeltaBody {
                stop_reason: stop,
                stop_sequence: (),
            },
            usage: an::OutputUsage {
                output_tokens: c.completion,
            },
        }
        .to_sse(),
    );
    tail.extend(an::Event::MessageStop.to_sse());
    SseScript::new(head, content, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

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
