//! Cohere v2 chat (providers.md §6): JSON body, SSE stream with `event:` lines whose JSON also
//! names its `type`, and errors as `{"id","message"}`.
//!
//! Usage: `usage.tokens` and `usage.billed_units` both report the behaviour's prompt and
//! completion; `cached_tokens` is added when non-zero.

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use bytes::Bytes;
use serde::Serialize;

use super::behavior::ErrorPreset;
use super::compile::{json_headers, Ctx, Format, Prepared, Said, SseScript};
use super::wire::{self, EmptyObject};

pub(crate) const RESPONSE_ID: &str = "5c0e6d0a-6d6f-4b63-8b00-000000000001";
pub(crate) const INVALID_EVENT: &[u8] = b"event: content-delta\ndata: {not json\n\n";

#[derive(Serialize)]
struct Tokens {
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize)]
struct Usage {
    billed_units: Tokens,
    tokens: Tokens,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached_tokens: Option<u64>,
}

fn usage(c: &Ctx) -> Usage {
    Usage {
        billed_units: Tokens {
            input_tokens: c.prompt,
            output_tokens: c.completion,
        },
        tokens: Tokens {
            input_tokens: c.prompt,
            output_tokens: c.completion,
        },
        cached_tokens: (c.cached > 0).then_some(c.cached),
    }
}

#[derive(Serialize)]
struct ToolCall<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: Function<'a>,
}

#[derive(Serialize)]
struct Function<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

fn tool_plan(name: &str) -> String {
    format!("I will use the {name} tool.")
}

fn finish_reason(c: &Ctx) -> &'static str {
    match c.said {
        Said::Text(_) => "COMPLETE",
        Said::Tool { .. } => "TOOL_CALL",
    }
}

/// The `/v2/chat` body.
pub(crate) fn json(c: &Ctx) -> Vec<u8> {
    #[derive(Serialize)]
    struct Response<'a> {
        id: &'static str,
        message: Message<'a>,
        finish_reason: &'static str,
        usage: Usage,
    }
    #[derive(Serialize)]
    struct Message<'a> {
        role: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<[TextBlock<'a>; 1]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tool_plan: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tool_calls: Option<[ToolCall<'a>; 1]>,
    }
    #[derive(Serialize)]
    struct TextBlock<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        text: &'a str,
    }
    let message = match c.said {
        Said::Text(text) => Message {
            role: "assistant",
            content: Some([TextBlock { kind: "text", text }]),
            tool_plan: None,
            tool_calls: None,
        },
        Said::Tool {
            id,
            name,
            arguments,
        } => Message {
            role: "assistant",
            content: None,
            tool_plan: Some(tool_plan(name)),
            tool_calls: Some([ToolCall {
                id: Some(id),
                kind: Some("function"),
                function: Function {
                    name: Some(name),
                    arguments,
                },
            }]),
        },
    };
    wire::to_vec(&Response {
        id: RESPONSE_ID,
        message,
        finish_reason: finish_reason(c),
        usage: usage(c),
    })
}

/// Stream events (§6); serialized with their `type` first, then framed with `event: <type>`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Event<'a> {
    MessageStart {
        id: &'static str,
        delta: StartDelta,
    },
    ContentStart {
        index: u32,
        delta: ContentDelta<'a>,
    },
    ContentDelta {
        index: u32,
        delta: ContentDelta<'a>,
    },
    ContentEnd {
        index: u32,
    },
    ToolPlanDelta {
        delta: ToolPlanDelta<'a>,
    },
    ToolCallStart {
        index: u32,
        delta: ToolCallDelta<'a>,
    },
    ToolCallDelta {
        index: u32,
        delta: ToolCallDelta<'a>,
    },
    ToolCallEnd {
        index: u32,
    },
    MessageEnd {
        delta: EndDelta<'a>,
    },
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::MessageStart { .. } => "message-start",
            Event::ContentStart { .. } => "content-start",
            Event::ContentDelta { .. } => "content-delta",
            Event::ContentEnd { .. } => "content-end",
            Event::ToolPlanDelta { .. } => "tool-plan-delta",
            Event::ToolCallStart { .. } => "tool-call-start",
            Event::ToolCallDelta { .. } => "tool-call-delta",
            Event::ToolCallEnd { .. } => "tool-call-end",
            Event::MessageEnd { .. } => "message-end",
        }
    }

    fn to_sse(&self) -> Vec<u8> {
        wire::sse_event(self.name(), &wire::to_vec(self))
    }
}

#[derive(Serialize)]
struct StartDelta {
    message: StartMessage,
}

#[derive(Serialize)]
struct StartMessage {
    role: &'static str,
    content: [EmptyObject; 0],
    tool_plan: &'static str,
    tool_calls: [EmptyObject; 0],
    citations: [EmptyObject; 0],
}

#[derive(Serialize)]
struct ContentDelta<'a> {
    message: ContentMessage<'a>,
}

#[derive(Serialize)]
struct ContentMessage<'a> {
    content: ContentPart<'a>,
}

#[derive(Serialize)]
struct ContentPart<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    text: &'a str,
}

#[derive(Serialize)]
struct ToolPlanDelta<'a> {
    message: ToolPlanMessage<'a>,
}

#[derive(Serialize)]
struct ToolPlanMessage<'a> {
    tool_plan: &'a str,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    message: ToolCallMessage<'a>,
}

#[derive(Serialize)]
struct ToolCallMessage<'a> {
    tool_calls: ToolCall<'a>,
}

#[derive(Serialize)]
struct EndDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    finish_reason: &'static str,
    usage: Usage,
}

fn message_start() -> Vec<u8> {
    Event::MessageStart {
        id: RESPONSE_ID,
        delta: StartDelta {
            message: StartMessage {
                role: "assistant",
                content: [],
                tool_plan: "",
                tool_calls: [],
                citations: [],
            },
        },
    }
    .to_sse()
}

/// The `/v2/chat` stream: `message-start`, `content-start` | `content-delta`* | `content-end`,
/// `message-end`; a tool call has `tool-plan-delta`, `tool-call-start` | `tool-call-delta`* |
/// `tool-call-end` instead.
pub(crate) fn stream(c: &Ctx) -> SseScript {
    let mut head = message_start();
    let plan;
    let (content, mut tail): (Vec<Vec<u8>>, _) = match c.said {
        Said::Text(_) => {
            head.extend(
                Event::ContentStart {
                    index: 0,
                    delta: ContentDelta {
                        message: ContentMessage {
                            content: ContentPart {
                                kind: Some("text"),
                                text: "",
                            },
                        },
                    },
                }
                .to_sse(),
            );
            let content = c
                .pieces
                .iter()
                .map(|text| {
                    Event::ContentDelta {
                        index: 0,
                        delta: ContentDelta {
                            message: ContentMessage {
                                content: ContentPart { kind: None, text },
                            },
                        },
                    }
                    .to_sse()
                })
                .collect();
            (content, Event::ContentEnd { index: 0 }.to_sse())
        }
        Said::Tool { id, name, .. } => {
            plan = tool_plan(name);
            head.extend(
                Event::ToolPlanDelta {
                    delta: ToolPlanDelta {
                        message: ToolPlanMessage { tool_plan: &plan },
                    },
                }
                .to_sse(),
            );
            head.extend(
                Event::ToolCallStart {
                    index: 0,
                    delta: ToolCallDelta {
                        message: ToolCallMessage {
                            tool_calls: ToolCall {
                                id: Some(id),
                                kind: Some("function"),
                                function: Function {
                                    name: Some(name),
                                    arguments: "",
                                },
                            },
                        },
                    },
                }
                .to_sse(),
            );
            let content = c
                .pieces
                .iter()
                .map(|arguments| {
                    Event::ToolCallDelta {
                        index: 0,
                        delta: ToolCallDelta {
                            message: ToolCallMessage {
                                tool_calls: ToolCall {
                                    id: None,
                                    kind: None,
                                    function: Function {
                                        name: None,
                                        arguments,
                                    },
                                },
                            },
                        },
                    }
                    .to_sse()
                })
                .collect();
            (content, Event::ToolCallEnd { index: 0 }.to_sse())
        }
    };
    tail.extend(
        Event::MessageEnd {
            delta: EndDelta {
                error: None,
                finish_reason: finish_reason(c),
                usage: usage(c),
            },
        }
        .to_sse(),
    );
    SseScript::new(head, content, tail)
}

/// `Fault::InBandErrorBeforeContent`: `message-start`, then `message-end` with
/// `finish_reason: ERROR` and an `error` text.
pub(crate) fn inband(c: &Ctx) -> SseScript {
    let end = Event::MessageEnd {
        delta: EndDelta {
            error: Some("The model is overloaded, please try again later."),
            finish_reason: "ERROR",
            usage: usage(&Ctx {
                completion: 0,
                ..c.clone()
            }),
        },
    };
    SseScript::new(message_start(), vec![end.to_sse()], Vec::new())
}

// === errors ===

/// `{"id","message"}`.
pub(crate) fn error_body(message: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        id: &'static str,
        message: &'a str,
    }
    wire::to_vec(&Body {
        id: RESPONSE_ID,
        message,
    })
}

pub(crate) fn error_prepared(status: StatusCode, message: &str) -> Prepared {
    Prepared {
        status,
        headers: json_headers(Format::Cohere),
        body: Bytes::from(error_body(message)),
    }
}

pub(crate) fn error(preset: &ErrorPreset) -> Prepared {
    let (status, message) = match preset {
        ErrorPreset::RateLimited { retry_after } => {
            let mut p = error_prepared(
                StatusCode::TOO_MANY_REQUESTS,
                "You are past the per minute request limit, please wait and try again later.",
            );
            if let Some(secs) = retry_after {
                p.headers.push((RETRY_AFTER, HeaderValue::from(*secs)));
            }
            return p;
        }
        ErrorPreset::QuotaExhausted => (
            StatusCode::PAYMENT_REQUIRED,
            "Please add or update your payment method at \
             https://dashboard.cohere.com/billing?tab=payment to continue",
        ),
        ErrorPreset::Overloaded => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is currently overloaded, please try again later.",
        ),
        ErrorPreset::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error, this has been reported to our developers",
        ),
        ErrorPreset::ContextLength => (
            StatusCode::BAD_REQUEST,
            "too many tokens: total number of tokens in the prompt cannot exceed 128000 - \
             received 130512. Try using a shorter prompt or enabling prompt truncating.",
        ),
        ErrorPreset::BadRequest => (
            StatusCode::BAD_REQUEST,
            "invalid request: the mock upstream was told to reject this request.",
        ),
        ErrorPreset::Unauthorized => (StatusCode::UNAUTHORIZED, "invalid api token"),
        ErrorPreset::ContentFiltered => (
            StatusCode::BAD_REQUEST,
            "blocked input: please adjust your prompt and try again, as it may be a potential \
             violation of our Usage Guidelines (https://docs.cohere.com/docs/usage-guidelines).",
        ),
        // Rendered by `compile::error_prepared`.
        ErrorPreset::Custom { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "custom error"),
    };
    error_prepared(status, message)
}
