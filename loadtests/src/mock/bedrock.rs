//! Bedrock Runtime Converse and ConverseStream (providers.md §4, §9.4): JSON bodies, event-stream
//! frames (`eventstream.rs`), and errors as `{"message"}` with the type in `x-amzn-ErrorType`.
//!
//! Usage: `inputTokens = prompt - cached`, `cacheReadInputTokens = cached` (sent when non-zero),
//! so that `inputTokens + cacheReadInputTokens` is the behaviour's prompt (§4.5).

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use bytes::Bytes;
use serde::Serialize;

use super::behavior::ErrorPreset;
use super::compile::{arguments_json, json_headers, Ctx, Format, Input, Prepared, Said, SseScript};
use super::eventstream;
use super::wire;

pub(crate) const ERROR_TYPE: HeaderName = HeaderName::from_static("x-amzn-errortype");
/// Header of InvokeModel answers with the input token count (§4, RespMeta).
pub(crate) const INPUT_TOKEN_COUNT: HeaderName =
    HeaderName::from_static("x-amzn-bedrock-input-token-count");

/// Default blocked-input message of a Bedrock guardrail, sent with `guardrail_intervened`.
pub(crate) const GUARDRAIL_MESSAGE: &str = "Sorry, the model cannot answer this question.";

const OVERLOADED_MESSAGE: &str = "Bedrock is unable to process your request.";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Usage {
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_read_input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_write_input_tokens: Option<u64>,
}

fn usage(c: &Ctx) -> Usage {
    let cached = (c.cached > 0).then_some(c.cached);
    Usage {
        input_tokens: c.prompt.saturating_sub(c.cached),
        output_tokens: c.completion,
        total_tokens: c.total(),
        cache_read_input_tokens: cached,
        cache_write_input_tokens: cached.map(|_| 0),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Metrics {
    latency_ms: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Block<'a> {
    Text(&'a str),
    ToolUse(ToolUse<'a>),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolUse<'a> {
    tool_use_id: &'a str,
    name: &'a str,
    input: Input<'a>,
}

fn stop_reason(c: &Ctx) -> &'static str {
    match c.said {
        _ if c.filtered => "guardrail_intervened",
        Said::Text(_) => "end_turn",
        Said::Tool { .. } => "tool_use",
    }
}

/// The Converse body.
pub(crate) fn json(c: &Ctx) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Response<'a> {
        output: Output<'a>,
        stop_reason: &'static str,
        usage: Usage,
        metrics: Metrics,
    }
    #[derive(Serialize)]
    struct Output<'a> {
        message: Message<'a>,
    }
    #[derive(Serialize)]
    struct Message<'a> {
        role: &'static str,
        content: [Block<'a>; 1],
    }
    let block = match c.said {
        _ if c.filtered => Block::Text(GUARDRAIL_MESSAGE),
        Said::Text(t) => Block::Text(t),
        Said::Tool {
            id,
            name,
            arguments,
        } => Block::ToolUse(ToolUse {
            tool_use_id: id,
            name,
            input: arguments_json(arguments),
        }),
    };
    wire::to_vec(&Response {
        output: Output {
            message: Message {
                role: "assistant",
                content: [block],
            },
        },
        stop_reason: stop_reason(c),
        usage: usage(c),
        metrics: Metrics {
            latency_ms: c.latency_ms,
        },
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlockIndex {
    content_block_index: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlockDelta<'a> {
    content_block_index: u32,
    delta: Delta<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Delta<'a> {
    Text(&'a str),
    ToolUse { input: &'a str },
}

fn delta(json: &BlockDelta<'_>) -> Vec<u8> {
    eventstream::event("contentBlockDelta", &wire::to_vec(json))
}

/// ConverseStream: `messageStart` [+ `contentBlockStart` for a tool] | `contentBlockDelta`* |
/// `contentBlockStop`, `messageStop`, `metadata`. A filtered answer sends the guardrail text.
pub(crate) fn stream(c: &Ctx) -> SseScript {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct BlockStart<'a> {
        content_block_index: u32,
        start: Start<'a>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Start<'a> {
        tool_use: ToolStart<'a>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ToolStart<'a> {
        tool_use_id: &'a str,
        name: &'a str,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct MessageStop {
        stop_reason: &'static str,
    }
    #[derive(Serialize)]
    struct Metadata {
        usage: Usage,
        metrics: Metrics,
    }
    let mut head = message_start();
    let content = match c.said {
        _ if c.filtered => vec![delta(&BlockDelta {
            content_block_index: 0,
            delta: Delta::Text(GUARDRAIL_MESSAGE),
        })],
        Said::Text(_) => c
            .pieces
            .iter()
            .map(|piece| {
                delta(&BlockDelta {
                    content_block_index: 0,
                    delta: Delta::Text(piece),
                })
            })
            .collect(),
        Said::Tool { id, name, .. } => {
            head.extend(eventstream::event(
                "contentBlockStart",
                &wire::to_vec(&BlockStart {
                    content_block_index: 0,
                    start: Start {
                        tool_use: ToolStart {
                            tool_use_id: id,
                            name,
                        },
                    },
                }),
            ));
            c.pieces
                .iter()
                .map(|piece| {
                    delta(&BlockDelta {
                        content_block_index: 0,
                        delta: Delta::ToolUse { input: piece },
                    })
                })
                .collect()
        }
    };
    let mut tail = eventstream::event(
        "contentBlockStop",
        &wire::to_vec(&BlockIndex {
            content_block_index: 0,
        }),
    );
    tail.extend(eventstream::event(
        "messageStop",
        &wire::to_vec(&MessageStop {
            stop_reason: stop_reason(c),
        }),
    ));
    tail.extend(eventstream::event(
        "metadata",
        &wire::to_vec(&Metadata {
            usage: usage(c),
            metrics: Metrics {
                latency_ms: c.latency_ms,
            },
        }),
    ));
    SseScript::new(head, content, tail)
}

fn message_start() -> Vec<u8> {
    eventstream::event("messageStart", br#"{"role":"assistant"}"#)
}

#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

/// `Fault::InBandErrorBeforeContent`: `messageStart`, then a `serviceUnavailableException`
/// frame.
pub(crate) fn inband() -> SseScript {
    let exception = eventstream::exception(
        "serviceUnavailableException",
        &wire::to_vec(&Message {
            message: OVERLOADED_MESSAGE,
        }),
    );
    SseScript::new(message_start(), vec![exception], Vec::new())
}

/// `Fault::InvalidJsonEvent`: a well-framed `contentBlockDelta` whose payload is not JSON.
pub(crate) fn invalid_event() -> Bytes {
    Bytes::from(eventstream::event("contentBlockDelta", b"{not json"))
}

/// Headers and body of an error: `{"message"}`, the type in `x-amzn-ErrorType` (§4.7).
pub(crate) fn error_parts(status: StatusCode, error_type: &'static str, message: &str) -> Prepared {
    let mut headers = json_headers(Format::Bedrock);
    headers.push((ERROR_TYPE, HeaderValue::from_static(error_type)));
    Prepared {
        status,
        headers,
        body: Bytes::from(wire::to_vec(&Message { message })),
    }
}

pub(crate) fn error(preset: &ErrorPreset) -> Prepared {
    macro_rules! typed {
        ($name:literal) => {
            concat!(
                $name,
                ":http://internal.amazon.com/coral/com.amazon.bedrock/"
            )
        };
    }
    let (status, error_type, message) = match preset {
        ErrorPreset::RateLimited { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            typed!("ThrottlingException"),
            "Too many requests, please wait before trying again.",
        ),
        ErrorPreset::QuotaExhausted => (
            StatusCode::BAD_REQUEST,
            typed!("ServiceQuotaExceededException"),
            "Your request exceeds the service quota for your account. You can view your quotas \
             at https://docs.aws.amazon.com/servicequotas/latest/userguide/gs-request-quota.html.",
        ),
        ErrorPreset::Overloaded => (
            StatusCode::SERVICE_UNAVAILABLE,
            typed!("ServiceUnavailableException"),
            OVERLOADED_MESSAGE,
        ),
        ErrorPreset::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            typed!("InternalServerException"),
            "The server encountered an internal error while processing the request.",
        ),
        ErrorPreset::ContextLength => (
            StatusCode::BAD_REQUEST,
            typed!("ValidationException"),
            "Input is too long for requested model.",
        ),
        ErrorPreset::BadRequest => (
            StatusCode::BAD_REQUEST,
            typed!("ValidationException"),
            "Malformed input request: the mock upstream was told to reject this request.",
        ),
        ErrorPreset::Unauthorized => (
            StatusCode::FORBIDDEN,
            typed!("AccessDeniedException"),
            "You don't have access to the model with the specified model ID.",
        ),
        // Embeddings only: chat answers a 200 `guardrail_intervened`.
        ErrorPreset::ContentFiltered => (
            StatusCode::BAD_REQUEST,
            typed!("ValidationException"),
            "The request was blocked by the content filters of a guardrail.",
        ),
        // Rendered by `compile::error_prepared`.
        ErrorPreset::Custom { .. } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            typed!("InternalServerException"),
            "custom error",
        ),
    };
    error_parts(status, error_type, message)
}

/// The auth errors of the SigV4 / key check (§4.7).
pub(crate) fn auth_error(kind: AuthError, message: &str) -> Prepared {
    let error_type = match kind {
        AuthError::Missing => {
            "MissingAuthenticationTokenException:http://internal.amazon.com/coral/com.amazon.coral.service/"
        }
        AuthError::UnknownKey => {
            "UnrecognizedClientException:http://internal.amazon.com/coral/com.amazon.coral.service/"
        }
        AuthError::BadSignature => {
            "InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/"
        }
    };
    error_parts(StatusCode::FORBIDDEN, error_type, message)
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum AuthError {
    Missing,
    UnknownKey,
    BadSignature,
}
