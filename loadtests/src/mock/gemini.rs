//! Gemini `generateContent` / `streamGenerateContent?alt=sse` (AI Studio and Vertex, providers.md
//! §5, §9.3), and Google RPC errors (§5.5).
//!
//! Streams: every line ends CRLF and events are separated by `\r\n\r\n`; no `[DONE]`. Each
//! content event repeats `usageMetadata` with running totals (`candidatesTokenCount` grows with
//! the pieces sent); the last event carries `finishReason: STOP` and the complete usage. A tool
//! call is one `functionCall` part with the whole `args` and a `thoughtSignature`.

use actix_web::http::StatusCode;
use bytes::Bytes;
use serde::Serialize;

use super::behavior::ErrorPreset;
use super::compile::{arguments_json, json_headers, Ctx, Format, Input, Prepared, Said, SseScript};
use super::wire;

/// The `thoughtSignature` on every `functionCall` part ("sig-mock" in base64).
pub const THOUGHT_SIGNATURE: &str = "c2lnLW1vY2s=";
pub(crate) const RESPONSE_ID: &str = "mockGem0001";
pub(crate) const INVALID_EVENT: &[u8] = b"data: {not json\r\n\r\n";

/// `data: <json>\r\n\r\n`
fn sse_data(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 10);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\r\n\r\n");
    out
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    candidates: Option<[Candidate<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: UsageMetadata,
    model_version: &'a str,
    response_id: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    content: Content<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'static str>,
    index: u32,
}

#[derive(Serialize)]
struct Content<'a> {
    role: &'static str,
    parts: [Part<'a>; 1],
}

#[derive(Serialize)]
#[serde(untagged)]
enum Part<'a> {
    Text {
        text: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    Call {
        function_call: FunctionCall<'a>,
        thought_signature: &'static str,
    },
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    args: Input<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidates_token_count: Option<u64>,
    total_token_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached_content_token_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<[ModalityCount; 1]>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModalityCount {
    modality: &'static str,
    token_count: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: &'static str,
    safety_ratings: [SafetyRating; 1],
}

#[derive(Serialize)]
struct SafetyRating {
    category: &'static str,
    probability: &'static str,
    blocked: bool,
}

/// Usage with `candidates` output tokens so far; complete when `final_`.
fn usage(c: &Ctx, candidates: Option<u64>, final_: bool) -> UsageMetadata {
    UsageMetadata {
        prompt_token_count: c.prompt,
        candidates_token_count: candidates,
        total_token_count: c.prompt.saturating_add(candidates.unwrap_or(0)),
        cached_content_token_count: (final_ && c.cached > 0).then_some(c.cached),
        prompt_tokens_details: final_.then_some([ModalityCount {
            modality: "TEXT",
            token_count: c.prompt,
        }]),
    }
}

fn response<'a>(
    c: &'a Ctx,
    part: Part<'a>,
    finish: Option<&'static str>,
    usage: UsageMetadata,
) -> Vec<u8> {
    wire::to_vec(&Response {
        candidates: Some([Candidate {
            content: Content {
                role: "model",
                parts: [part],
            },
            finish_reason: finish,
            index: 0,
        }]),
        prompt_feedback: None,
        usage_metadata: usage,
        model_version: c.model,
        response_id: RESPONSE_ID,
    })
}

/// A prompt blocked for safety: no candidates (§5.3).
fn blocked(c: &Ctx) -> Vec<u8> {
    wire::to_vec(&Response {
        candidates: None,
        prompt_feedback: Some(PromptFeedback {
            block_reason: "SAFETY",
            safety_ratings: [SafetyRating {
                category: "HARM_CATEGORY_DANGEROUS_CONTENT",
                probability: "HIGH",
                blocked: true,
            }],
        }),
        usage_metadata: usage(c, None, true),
        model_version: c.model,
        response_id: RESPONSE_ID,
    })
}

fn whole_part<'a>(c: &Ctx<'a>) -> Part<'a> {
    match c.said {
        Said::Text(text) => Part::Text { text },
        Said::Tool {
            name, arguments, ..
        } => Part::Call {
            function_call: FunctionCall {
                name,
                args: arguments_json(arguments),
            },
            thought_signature: THOUGHT_SIGNATURE,
        },
    }
}

/// The `generateContent` body. Tool calls also finish with `STOP` (§0.5).
pub(crate) fn json(c: &Ctx) -> Vec<u8> {
    if c.filtered {
        return blocked(c);
    }
    response(
        c,
        whole_part(c),
        Some("STOP"),
        usage(c, Some(c.completion), true),
    )
}

/// The `streamGenerateContent?alt=sse` body.
pub(crate) fn stream(c: &Ctx) -> SseScript {
    if c.filtered {
        return SseScript::new(Vec::new(), Vec::new(), sse_data(&blocked(c)));
    }
    let content = match c.said {
        Said::Text(_) => {
            let n = c.pieces.len().max(1) as u128;
            c.pieces
                .iter()
                .enumerate()
                .map(|(k, text)| {
                    // Running total: the share of the completion sent so far.
                    let so_far = (u128::from(c.completion) * (k as u128 + 1) / n) as u64;
                    sse_data(&response(
                        c,
                        Part::Text { text },
                        None,
                        usage(c, Some(so_far), false),
                    ))
                })
                .collect()
        }
        // The whole call in one event.
        Said::Tool { .. } => vec![sse_data(&response(
            c,
            whole_part(c),
            None,
            usage(c, Some(c.completion), false),
        ))],
    };
    let tail = sse_data(&response(
        c,
        Part::Text { text: "" },
        Some("STOP"),
        usage(c, Some(c.completion), true),
    ));
    SseScript::new(Vec::new(), content, tail)
}

/// `Fault::InBandErrorBeforeContent`: `data: {"error":{...UNAVAILABLE}}` (§0.4, unverified).
pub(crate) fn inband() -> SseScript {
    SseScript::new(
        Vec::new(),
        vec![sse_data(&rpc_error(
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
            &[],
        ))],
        Vec::new(),
    )
}

// === errors ===

#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Detail {
    RetryInfo {
        #[serde(rename = "@type")]
        kind: &'static str,
        #[serde(rename = "retryDelay")]
        retry_delay: String,
    },
    QuotaFailure {
        #[serde(rename = "@type")]
        kind: &'static str,
        violations: [QuotaViolation; 1],
    },
    ErrorInfo {
        #[serde(rename = "@type")]
        kind: &'static str,
        reason: &'static str,
        domain: &'static str,
        metadata: ErrorMetadata,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QuotaViolation {
    quota_metric: &'static str,
    quota_id: &'static str,
}

#[derive(Serialize)]
pub(crate) struct ErrorMetadata {
    service: &'static str,
}

/// `{"error":{"code","message","status","details"?}}` (details omitted when empty).
pub(crate) fn rpc_error(code: u16, status: &str, message: &str, details: &[Detail]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        error: Inner<'a>,
    }
    #[derive(Serialize)]
    struct Inner<'a> {
        code: u16,
        message: &'a str,
        status: &'a str,
        #[serde(skip_serializing_if = "<[Detail]>::is_empty")]
        details: &'a [Detail],
    }
    wire::to_vec(&Body {
        error: Inner {
            code,
            message,
            status,
            details,
        },
    })
}

fn prepared(code: u16, status: &str, message: &str, details: &[Detail]) -> Prepared {
    Prepared {
        status: StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        headers: json_headers(Format::Gemini),
        body: Bytes::from(rpc_error(code, status, message, details)),
    }
}

/// 400 `API key not valid` (AI Studio, wrong `x-goog-api-key`).
pub(crate) fn invalid_key() -> Prepared {
    prepared(
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        &[Detail::ErrorInfo {
            kind: "type.googleapis.com/google.rpc.ErrorInfo",
            reason: "API_KEY_INVALID",
            domain: "googleapis.com",
            metadata: ErrorMetadata {
                service: "generativelanguage.googleapis.com",
            },
        }],
    )
}

/// 403 without any key (AI Studio).
pub(crate) fn missing_key() -> Prepared {
    prepared(
        403,
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers (callers without established identity). \
         Please use API Key or other form of API consumer identity to call this API.",
        &[],
    )
}

/// 401 for a missing or wrong bearer token (Vertex).
pub(crate) fn unauthenticated() -> Prepared {
    prepared(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login \
         cookie or other valid authentication credential. See \
         https://developers.google.com/identity/sign-in/web/devconsole-project.",
        &[],
    )
}

/// 400 `INVALID_ARGUMENT` with this message.
pub(crate) fn invalid_argument(message: &str) -> Prepared {
    prepared(400, "INVALID_ARGUMENT", message, &[])
}

pub(crate) fn error(preset: &ErrorPreset) -> Prepared {
    match preset {
        // `Some(27)` is the §9.3 fixture byte for byte.
        ErrorPreset::RateLimited { retry_after } => {
            let details: Vec<Detail> = retry_after
                .iter()
                .map(|secs| Detail::RetryInfo {
                    kind: "type.googleapis.com/google.rpc.RetryInfo",
                    retry_delay: format!("{secs}s"),
                })
                .collect();
            prepared(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                &details,
            )
        }
        ErrorPreset::QuotaExhausted => prepared(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            &[Detail::QuotaFailure {
                kind: "type.googleapis.com/google.rpc.QuotaFailure",
                violations: [QuotaViolation {
                    quota_metric: "generativelanguage.googleapis.com/generate_content_requests",
                    quota_id: "GenerateRequestsPerDayPerProjectPerModel",
                }],
            }],
        ),
        ErrorPreset::Overloaded => prepared(
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
            &[],
        ),
        ErrorPreset::ServerError => prepared(
            500,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in \
             https://developers.generativeai.google/guide/troubleshooting",
            &[],
        ),
        ErrorPreset::ContextLength => invalid_argument(
            "The input token count (1200000) exceeds the maximum number of tokens allowed \
             (1048576).",
        ),
        ErrorPreset::BadRequest => invalid_argument("Request contains an invalid argument."),
        ErrorPreset::Unauthorized => invalid_key(),
        // Embeddings only: chat answers a 200 with `promptFeedback.blockReason`.
        ErrorPreset::ContentFiltered => {
            invalid_argument("The request was blocked because of safety reasons.")
        }
        // Rendered by `compile::error_prepared`.
        ErrorPreset::Custom { .. } => prepared(500, "INTERNAL", "custom error", &[]),
    }
}
