//! The `cohere` kind: OpenAI Chat Completions <-> Cohere v2 Chat (`POST /v2/chat`), both ways
//! (providers.md §6): request mapping, response and usage mapping, the typed-event stream turned
//! into OpenAI chunks, and error classification. Pure functions; no I/O.
//!
//! Decisions where the reference leaves a choice (or is unverified):
//! - Request: `developer` becomes `system`; an assistant turn with `tool_calls` sends its text
//!   as `tool_plan` (the field Cohere itself pairs with tool calls), not as `content`; tool
//!   results are sent as a string (text parts joined); `top_p` is clamped into Cohere's `p`
//!   range 0.01-0.99 and the penalties into 0-1 (a negative penalty becomes none); `seed` keeps
//!   its name; a tool without `parameters` gets an empty object schema; `strict`,
//!   `user` and `parallel_tool_calls` are dropped (Cohere has no equivalents); `n > 1`,
//!   `logprobs`, a named `tool_choice`, audio/file parts and the legacy `function` role cannot
//!   be expressed ([`TranslateError`]).
//! - Finish: `ERROR` is an [`ErrorClass::ServerError`] and `TIMEOUT` an [`ErrorClass::Timeout`]
//!   failure, in the non-streaming body and in the stream's `message-end`, so the router can
//!   retry or fall back. A response that carries tool calls finishes with `tool_calls` unless it
//!   was cut by `MAX_TOKENS`.
//! - Errors: 429 is [`ErrorClass::RateLimited`], except a trial key's monthly allowance
//!   (message mentions "trial key" and a month), which does not come back within minutes:
//!   [`ErrorClass::QuotaExhausted`]. 400/413/422 whose message says the prompt was blocked
//!   under the usage guidelines are [`ErrorClass::ContentPolicy`] (unverified wording).
//! - Stream: events are keyed on the JSON `type`, falling back to the SSE `event:` name when the
//!   JSON has none. An `error` event, or an untyped event carrying `message`/`error`, fails the
//!   stream with [`ErrorClass::ServerError`]; other untyped or unparsable events are counted as
//!   invalid and skipped; unknown types are ignored.

use std::borrow::Cow;
use std::time::Duration;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::oai::{ChunkWriter, Completion, Delta, RoleOnce, ToolCallDelta, ToolCallOut, Usage};
use super::request::{ChatRequest, Content, Message, Part, Role, ToolChoice};
use super::sse::SseEvent;
use super::{
    is_context_window_message, status_error, truncate_message, Progress, RespMeta, TranslateError,
};
use crate::error::{ErrorClass, UpstreamError};

// === request ===

#[derive(Serialize)]
struct Request<'r> {
    model: &'r str,
    messages: Vec<Msg<'r>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolDef<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormatOut<'r>>,
    stream: bool,
}

#[derive(Serialize)]
struct Msg<'r> {
    role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<MsgContent<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_plan: Option<Cow<'r, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<CallOut<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'r str>,
}

impl<'r> Msg<'r> {
    fn new(role: &'static str, content: Option<MsgContent<'r>>) -> Self {
        Msg {
            role,
            content,
            tool_plan: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum MsgContent<'r> {
    Text(Cow<'r, str>),
    Parts(Vec<PartOut<'r>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum PartOut<'r> {
    Text { text: &'r str },
    ImageUrl { image_url: ImageOut<'r> },
}

#[derive(Serialize)]
struct ImageOut<'r> {
    url: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'r str>,
}

#[derive(Serialize)]
struct CallOut<'r> {
    id: &'r str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'r>,
}

#[derive(Serialize)]
struct FunctionOut<'r> {
    name: &'r str,
    arguments: &'r str,
}

#[derive(Serialize)]
struct ToolDef<'r> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: ToolFunction<'r>,
}

#[derive(Serialize)]
struct ToolFunction<'r> {
    name: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'r str>,
    parameters: &'r RawValue,
}

#[derive(Serialize)]
struct ResponseFormatOut<'r> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_schema: Option<&'r RawValue>,
}

/// OpenAI's `response_format.json_schema` wrapper: `{name, schema, strict, description}`.
#[derive(Deserialize)]
struct JsonSchemaSpec<'a> {
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
}

/// A tool without `parameters` takes an empty object schema.
const EMPTY_SCHEMA: &str = r#"{"type":"object","properties":{}}"#;
const EMPTY_OBJECT: &str = "{}";

/// Cohere's `p` must lie in 0.01-0.99 (docs.cohere.com/reference/chat); OpenAI allows 0-1.
const MIN_P: f64 = 0.01;
const MAX_P: f64 = 0.99;

/// Builds the v2 Chat body for `req`.
pub fn build_request(
    req: &ChatRequest<'_>,
    upstream_model: &str,
) -> Result<Vec<u8>, TranslateError> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(TranslateError::unsupported("n", "n > 1"));
    }
    if req.logprobs {
        return Err(TranslateError::unsupported("logprobs", "logprobs"));
    }
    let empty_schema: &RawValue =
        serde_json::from_str(EMPTY_SCHEMA).map_err(|e| TranslateError::new("", e.to_string()))?;

    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        messages.push(message(i, m)?);
    }

    let tools: Vec<ToolDef> = req
        .tools
        .iter()
        .map(|t| ToolDef {
            kind: "function",
            function: ToolFunction {
                name: &t.function.name,
                description: t.function.description.as_deref(),
                parameters: t.function.parameters.unwrap_or(empty_schema),
            },
        })
        .collect();
    let tool_choice = match &req.tool_choice {
        Some(ToolChoice::Function(_)) => {
            return Err(TranslateError::unsupported(
                "tool_choice",
                "a named tool_choice",
            ))
        }
        _ if tools.is_empty() => None,
        Some(ToolChoice::Required) => Some("REQUIRED"),
        Some(ToolChoice::None) => Some("NONE"),
        Some(ToolChoice::Auto) | None => None,
    };

    let response_format = match &req.response_format {
        None => None,
        Some(rf) => match rf.kind.as_ref() {
            "text" => None,
            "json_object" => Some(ResponseFormatOut {
                kind: "json_object",
                json_schema: None,
            }),
            "json_schema" => {
                let spec = rf
                    .json_schema
                    .and_then(|raw| serde_json::from_str::<JsonSchemaSpec>(raw.get()).ok())
                    .ok_or_else(|| {
                        TranslateError::new(
                            "response_format.json_schema",
                            "must be an object for type json_schema",
                        )
                    })?;
                Some(ResponseFormatOut {
                    kind: "json_object",
                    json_schema: spec.schema,
                })
            }
            _ => {
                return Err(TranslateError::unsupported(
                    "response_format.type",
                    "this response_format type",
                ))
            }
        },
    };

    let body = Request {
        model: upstream_model,
        messages,
        tools,
        tool_choice,
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        p: req.top_p.map(|p| p.clamp(MIN_P, MAX_P)),
        stop_sequences: req
            .stop
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| !s.is_empty())
            .collect(),
        seed: req.seed,
        frequency_penalty: req.frequency_penalty.map(|p| p.clamp(0.0, 1.0)),
        presence_penalty: req.presence_penalty.map(|p| p.clamp(0.0, 1.0)),
        response_format,
        stream: req.stream,
    };
    serde_json::to_vec(&body).map_err(|e| TranslateError::new("", e.to_string()))
}

fn message<'r>(i: usize, m: &'r Message<'_>) -> Result<Msg<'r>, TranslateError> {
    Ok(match m.role {
        // Validation allows only text parts in system messages.
        Role::System | Role::Developer => Msg::new("system", text_content(m.content.as_ref())),
        Role::User => Msg::new("user", user_content(i, m.content.as_ref())?),
        Role::Assistant => {
            let calls = m.tool_calls.as_deref().unwrap_or_default();
            if calls.is_empty() {
                let content = text_content(m.content.as_ref()).or_else(|| {
                    m.refusal
                        .as_deref()
                        .map(|r| MsgContent::Text(Cow::Borrowed(r)))
                });
                Msg::new("assistant", content)
            } else {
                let plan = m
                    .content
                    .as_ref()
                    .map(Content::text)
                    .filter(|t| !t.is_empty());
                let mut msg = Msg::new("assistant", None);
                msg.tool_plan = plan;
                msg.tool_calls = calls
                    .iter()
                    .map(|c| CallOut {
                        id: &c.id,
                        kind: "function",
                        function: FunctionOut {
                            name: &c.function.name,
                            arguments: if c.function.arguments.trim().is_empty() {
                                EMPTY_OBJECT
                            } else {
                                &c.function.arguments
                            },
                        },
                    })
                    .collect();
                msg
            }
        }
        Role::Tool => {
            if let Some(Content::Parts(parts)) = &m.content {
                if let Some(j) = parts.iter().position(|p| !matches!(p, Part::Text { .. })) {
                    return Err(TranslateError::unsupported(
                        format!("messages[{i}].content[{j}]"),
                        "non-text parts in tool results",
                    ));
                }
            }
            let content = m.content.as_ref().map_or(Cow::Borrowed(""), Content::text);
            let mut msg = Msg::new("tool", Some(MsgContent::Text(content)));
            msg.tool_call_id = m.tool_call_id.as_deref();
            msg
        }
        Role::Function => {
            return Err(TranslateError::unsupported(
                format!("messages[{i}].role"),
                "the legacy function role",
            ))
        }
    })
}

/// Text-only content (system, assistant): a string stays a string, parts keep their text parts.
fn text_content<'r>(c: Option<&'r Content<'_>>) -> Option<MsgContent<'r>> {
    Some(match c? {
        Content::Text(t) => MsgContent::Text(Cow::Borrowed(t)),
        Content::Parts(parts) => MsgContent::Parts(
            parts
                .iter()
                .filter_map(|p| match p {
                    Part::Text { text } if !text.is_empty() => Some(PartOut::Text { text }),
                    _ => None,
                })
                .collect(),
        ),
    })
}

fn user_content<'r>(
    i: usize,
    c: Option<&'r Content<'_>>,
) -> Result<Option<MsgContent<'r>>, TranslateError> {
    let Some(c) = c else { return Ok(None) };
    Ok(Some(match c {
        Content::Text(t) => MsgContent::Text(Cow::Borrowed(t)),
        Content::Parts(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                match p {
                    Part::Text { text } if text.is_empty() => {}
                    Part::Text { text } => out.push(PartOut::Text { text }),
                    Part::ImageUrl { image_url } => {
                        if !is_image_url(&image_url.url) {
                            return Err(TranslateError::new(
                                format!("messages[{i}].content[{j}].image_url.url"),
                                "must be an http(s) URL or a base64 data URL of an image",
                            ));
                        }
                        out.push(PartOut::ImageUrl {
                            image_url: ImageOut {
                                url: &image_url.url,
                                detail: image_url.detail.as_deref(),
                            },
                        });
                    }
                    Part::InputAudio { .. } => {
                        return Err(TranslateError::unsupported(
                            format!("messages[{i}].content[{j}]"),
                            "input_audio parts",
                        ))
                    }
                    Part::File { .. } => {
                        return Err(TranslateError::unsupported(
                            format!("messages[{i}].content[{j}]"),
                            "file parts",
                        ))
                    }
                }
            }
            MsgContent::Parts(out)
        }
    }))
}

/// Cohere takes web URLs and base64 data URIs for images.
fn is_image_url(url: &str) -> bool {
    if let Some(rest) = url.strip_prefix("data:") {
        rest.split_once(',')
            .is_some_and(|(meta, _)| meta.starts_with("image/") && meta.ends_with(";base64"))
    } else {
        url.starts_with("https://") || url.starts_with("http://")
    }
}

// === response ===

/// Token counts; Cohere's SDK types them as floats, so they are read as numbers of any kind.
#[derive(Deserialize, Default)]
struct Counts {
    #[serde(default)]
    input_tokens: Option<f64>,
    #[serde(default)]
    output_tokens: Option<f64>,
}

#[derive(Deserialize, Default)]
struct CUsage {
    #[serde(default)]
    tokens: Option<Counts>,
    #[serde(default)]
    billed_units: Option<Counts>,
    #[serde(default)]
    cached_tokens: Option<f64>,
}

fn count(v: Option<f64>) -> Option<u64> {
    // `as` saturates at u64::MAX; negative and non-finite values are ignored.
    v.filter(|x| x.is_finite() && *x >= 0.0).map(|x| x as u64)
}

impl CUsage {
    /// `tokens` is what the model processed; `billed_units` can be lower and is only a fallback.
    fn to_usage(&self) -> Usage {
        let pick = |f: fn(&Counts) -> Option<f64>| {
            count(self.tokens.as_ref().and_then(f))
                .or_else(|| count(self.billed_units.as_ref().and_then(f)))
                .unwrap_or(0)
        };
        let prompt_tokens = pick(|c| c.input_tokens);
        Usage {
            prompt_tokens,
            completion_tokens: pick(|c| c.output_tokens),
            cached_tokens: count(self.cached_tokens).unwrap_or(0).min(prompt_tokens),
            cache_write_tokens: 0,
            reasoning_tokens: 0,
        }
    }
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: OutMessage<'a>,
    #[serde(default)]
    usage: Option<CUsage>,
}

#[derive(Deserialize)]
struct OutMessage<'a> {
    #[serde(borrow, default)]
    content: Option<Vec<OutContent<'a>>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<CallIn<'a>>>,
}

#[derive(Deserialize)]
struct OutContent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// A tool call in a response or a stream event; every field may be missing.
#[derive(Deserialize)]
struct CallIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionIn<'a>>,
}

#[derive(Deserialize)]
struct FunctionIn<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

impl<'a> CallIn<'a> {
    fn name(&self) -> &str {
        self.function
            .as_ref()
            .and_then(|f| f.name.as_deref())
            .unwrap_or_default()
    }

    /// The arguments' JSON text: a string is unescaped, an object (lenient) is taken as is,
    /// anything else is empty.
    fn arguments(&self) -> Cow<'a, str> {
        let Some(raw) = self.function.as_ref().and_then(|f| f.arguments) else {
            return Cow::Borrowed("");
        };
        let text = raw.get();
        if text.starts_with('"') {
            serde_json::from_str::<Cow<'a, str>>(text).unwrap_or_default()
        } else if text.starts_with('{') {
            Cow::Borrowed(text)
        } else {
            Cow::Borrowed("")
        }
    }
}

/// Cohere `finish_reason` -> OpenAI `finish_reason` (providers.md §0.5); `ERROR` and
/// `TIMEOUT` are failures. `detail` is the upstream's error text, if any.
fn finish_reason(
    reason: Option<&str>,
    had_tool_calls: bool,
    detail: Option<&str>,
) -> Result<&'static str, UpstreamError> {
    let failed = |class, what: &str| {
        let message = match detail.filter(|d| !d.is_empty()) {
            Some(d) => truncate_message(d),
            None => format!("upstream finished with {what}"),
        };
        Err(UpstreamError::new(class, message))
    };
    match reason {
        Some("MAX_TOKENS") => Ok("length"),
        Some("ERROR") => failed(ErrorClass::ServerError, "finish_reason ERROR"),
        Some("TIMEOUT") => failed(ErrorClass::Timeout, "finish_reason TIMEOUT"),
        _ if had_tool_calls => Ok("tool_calls"),
        Some("TOOL_CALL") => Ok("tool_calls"),
        // COMPLETE, STOP_SEQUENCE, and anything new.
        _ => Ok("stop"),
    }
}

/// The response id, or one made from the request id when the upstream sent none.
fn fallback_id(meta: &RespMeta<'_>) -> String {
    match meta.request_id {
        Some(r) if !r.is_empty() => format!("chatcmpl-{r}"),
        _ => "chatcmpl-cohere".to_owned(),
    }
}

/// Translates a 2xx v2 Chat response into a `chat.completion` body.
pub fn parse_response(
    body: &[u8],
    meta: &RespMeta<'_>,
) -> Result<(BytesMut, Usage), UpstreamError> {
    let resp: Response = serde_json::from_slice(body).map_err(|_| {
        UpstreamError::new(
            ErrorClass::ServerError,
            "upstream returned a malformed Cohere chat body",
        )
    })?;
    let mut text: Option<String> = None;
    for block in resp.message.content.as_deref().unwrap_or_default() {
        if matches!(block.kind.as_deref(), None | Some("text")) {
            if let Some(t) = &block.text {
                text.get_or_insert_with(String::new).push_str(t);
            }
        }
    }
    let tool_calls: Vec<ToolCallOut> = resp
        .message
        .tool_calls
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let args = c.arguments();
            ToolCallOut {
                id: c
                    .id
                    .as_deref()
                    .filter(|id| !id.is_empty())
                    .map_or_else(|| format!("call_{k}"), str::to_owned),
                name: c.name().to_owned(),
                arguments: if args.trim().is_empty() {
                    EMPTY_OBJECT.to_owned()
                } else {
                    args.into_owned()
                },
            }
        })
        .collect();
    let finish = finish_reason(resp.finish_reason.as_deref(), !tool_calls.is_empty(), None)?;
    let usage = resp
        .usage
        .as_ref()
        .map(CUsage::to_usage)
        .unwrap_or_default();
    let completion = Completion {
        id: resp
            .id
            .filter(|id| !id.is_empty())
            .map_or_else(|| fallback_id(meta), Cow::into_owned),
        created: meta.created,
        model: meta.model.to_owned(),
        content: text,
        tool_calls,
        finish_reason: finish,
        usage,
    };
    Ok((completion.to_json(), usage))
}

// === errors ===

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.message)
        .map(Cow::into_owned)
        .unwrap_or_default()
}

fn is_cohere_context_message(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    is_context_window_message(message)
        || lower.contains("too many tokens")
        || lower.contains("context window")
        || lower.contains("context length")
}

/// Classifies a non-2xx response from v2 Chat (providers.md §6, §0.3).
pub fn classify_error(
    status: u16,
    retry_after: Option<Duration>,
    _meta: &RespMeta<'_>,
    body: &[u8],
) -> UpstreamError {
    let message = error_message(body);
    let lower = message.to_ascii_lowercase();
    let class = match status {
        400 | 413 | 422 => {
            if is_cohere_context_message(&message) {
                ErrorClass::ContextWindow
            } else if lower.starts_with("blocked input")
                || lower.starts_with("blocked output")
                || lower.contains("usage guidelines")
            {
                ErrorClass::ContentPolicy
            } else {
                ErrorClass::BadRequest
            }
        }
        401 | 403 | 404 | 498 => ErrorClass::UpstreamAuth,
        402 => ErrorClass::QuotaExhausted,
        429 if lower.contains("trial key") && lower.contains("month") => ErrorClass::QuotaExhausted,
        429 => ErrorClass::RateLimited,
        503 => ErrorClass::Overloaded,
        408 | 504 => ErrorClass::Timeout,
        // 499 (Cohere's "request cancelled"), 500 and everything else.
        400..=499 if status != 499 => ErrorClass::BadRequest,
        _ => ErrorClass::ServerError,
    };
    status_error(class, status, &message, None, retry_after)
}

// === stream ===

/// The fields every event may have; `delta` is parsed by type.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// `content-start` / `content-delta`: `{"message":{"content":{"text"}}}`.
#[derive(Deserialize)]
struct ContentDelta<'a> {
    #[serde(borrow, default)]
    message: Option<ContentDeltaMessage<'a>>,
}

#[derive(Deserialize)]
struct ContentDeltaMessage<'a> {
    #[serde(borrow, default)]
    content: Option<OutContent<'a>>,
}

/// `tool-call-start` / `tool-call-delta`: `{"message":{"tool_calls":{…}}}` (an array of one
/// is accepted too).
#[derive(Deserialize)]
struct ToolDelta<'a> {
    #[serde(borrow, default)]
    message: Option<ToolDeltaMessage<'a>>,
}

#[derive(Deserialize)]
struct ToolDeltaMessage<'a> {
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

/// `message-end`: `{"finish_reason","usage","error"?}`.
#[derive(Deserialize)]
struct EndDelta<'a> {
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<CUsage>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
}

fn sub<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<T> {
    serde_json::from_str(raw?.get()).ok()
}

/// Error text from a string or an object with `message`.
fn error_text(raw: Option<&RawValue>) -> Option<String> {
    #[derive(Deserialize)]
    struct WithMessage<'a> {
        #[serde(borrow, default)]
        message: Option<Cow<'a, str>>,
    }
    let raw = raw?;
    if let Ok(s) = serde_json::from_str::<Cow<str>>(raw.get()) {
        return Some(s.into_owned());
    }
    serde_json::from_str::<WithMessage>(raw.get())
        .ok()?
        .message
        .map(Cow::into_owned)
}

#[derive(Debug, Clone, Copy)]
struct CallState {
    /// Cohere's `index` of the call, to match its deltas.
    upstream_index: Option<u64>,
    args_seen: bool,
}

/// Turns Cohere's typed events into OpenAI chunks (providers.md §6, §0.1).
#[derive(Debug)]
pub struct StreamTranslator {
    writer: Option<ChunkWriter>,
    include_usage: bool,
    created: u64,
    model: String,
    /// Used when content arrives before `message-start` names the response.
    fallback_id: String,
    role: RoleOnce,
    /// Indexed by the OpenAI ordinal of the call.
    calls: Vec<CallState>,
    usage: Usage,
    done: bool,
    invalid_events: u32,
}

impl StreamTranslator {
    pub fn new(include_usage: bool, meta: &RespMeta<'_>) -> Self {
        StreamTranslator {
            writer: None,
            include_usage,
            created: meta.created,
            model: meta.model.to_owned(),
            fallback_id: fallback_id(meta),
            role: RoleOnce::default(),
            calls: Vec::new(),
            usage: Usage::default(),
            done: false,
            invalid_events: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn invalid_events(&self) -> u32 {
        self.invalid_events
    }

    fn start(&mut self, id: Option<&str>) {
        if self.writer.is_none() {
            self.writer = Some(ChunkWriter {
                id: id
                    .filter(|id| !id.is_empty())
                    .map_or_else(|| self.fallback_id.clone(), str::to_owned),
                created: self.created,
                model: self.model.clone(),
                include_usage: self.include_usage,
            });
        }
    }

    fn write(&mut self, out: &mut BytesMut, delta: Delta<'_>) {
        self.start(None);
        if let Some(w) = &self.writer {
            w.delta(out, delta);
        }
    }

    /// The role chunk goes out with the first text (see [`RoleOnce`]).
    fn ensure_role(&mut self, out: &mut BytesMut) {
        self.start(None);
        if let Some(w) = &self.writer {
            self.role.before_text(w, out);
        }
    }

    fn args_fragment(&mut self, out: &mut BytesMut, ordinal: usize, arguments: &str) {
        self.write(
            out,
            Delta {
                tool_call: Some(ToolCallDelta {
                    index: u32::try_from(ordinal).unwrap_or(u32::MAX),
                    id_and_name: None,
                    arguments,
                }),
                ..Delta::default()
            },
        );
        if let Some(c) = self.calls.get_mut(ordinal) {
            c.args_seen = true;
        }
    }

    /// A tool call with no argument text still needs parseable arguments.
    fn close_calls_without_args(&mut self, out: &mut BytesMut) {
        for k in 0..self.calls.len() {
            if !self.calls[k].args_seen {
                self.args_fragment(out, k, EMPTY_OBJECT);
            }
        }
    }

    pub fn on_event(
        &mut self,
        ev: &SseEvent,
        out: &mut BytesMut,
    ) -> Result<Progress, UpstreamError> {
        if self.done || ev.data.iter().all(u8::is_ascii_whitespace) {
            return Ok(Progress::NOTHING);
        }
        let Ok(head) = serde_json::from_slice::<Head>(&ev.data) else {
            self.invalid_events += 1;
            return Ok(Progress::NOTHING);
        };
        let event_name = std::str::from_utf8(&ev.event).unwrap_or_default();
        let kind = match head.kind.as_deref() {
            Some(k) => k,
            None if !event_name.is_empty() => event_name,
            None => {
                // Untyped: an error body in the stream, or noise.
                if let Some(message) = error_text(head.error).or_else(|| error_text(head.message)) {
                    return Err(stream_error(&message));
                }
                self.invalid_events += 1;
                return Ok(Progress::NOTHING);
            }
        };
        let mut progress = Progress::NOTHING;
        match kind {
            "message-start" => self.start(head.id.as_deref()),
            "content-start" | "content-delta" => {
                let Some(delta) = sub::<ContentDelta>(head.delta) else {
                    self.invalid_events += 1;
                    return Ok(progress);
                };
                let text = delta
                    .message
                    .and_then(|m| m.content)
                    .and_then(|c| c.text)
                    .unwrap_or_default();
                if !text.is_empty() {
                    self.ensure_role(out);
                    self.write(
                        out,
                        Delta {
                            content: Some(&text),
                            ..Delta::default()
                        },
                    );
                    progress.meaningful = true;
                }
            }
            "tool-call-start" => {
                let Some(call) = tool_call(head.delta) else {
                    self.invalid_events += 1;
                    return Ok(progress);
                };
                let ordinal = self.calls.len();
                self.calls.push(CallState {
                    upstream_index: head.index,
                    args_seen: false,
                });
                let id = call
                    .id
                    .as_deref()
                    .filter(|id| !id.is_empty())
                    .map_or_else(|| Cow::Owned(format!("call_{ordinal}")), Cow::Borrowed);
                self.start(None);
                if let Some(w) = &self.writer {
                    let index = u32::try_from(ordinal).unwrap_or(u32::MAX);
                    self.role.tool_head(w, out, index, &id, call.name(), "");
                }
                let args = call.arguments();
                if !args.is_empty() {
                    self.args_fragment(out, ordinal, &args);
                }
                progress.meaningful = true;
            }
            "tool-call-delta" => {
                let Some(call) = tool_call(head.delta) else {
                    self.invalid_events += 1;
                    return Ok(progress);
                };
                let ordinal = head
                    .index
                    .and_then(|i| self.calls.iter().rposition(|c| c.upstream_index == Some(i)))
                    .or_else(|| self.calls.len().checked_sub(1));
                let args = call.arguments();
                if let Some(ordinal) = ordinal.filter(|_| !args.is_empty()) {
                    self.args_fragment(out, ordinal, &args);
                    progress.meaningful = true;
                }
            }
            "message-end" => {
                let delta = sub::<EndDelta>(head.delta);
                if delta.is_none() {
                    self.invalid_events += 1;
                }
                let delta = delta.unwrap_or(EndDelta {
                    finish_reason: None,
                    usage: None,
                    error: None,
                });
                if let Some(u) = &delta.usage {
                    self.usage = u.to_usage();
                }
                let reason = finish_reason(
                    delta.finish_reason.as_deref(),
                    !self.calls.is_empty(),
                    delta.error.as_deref(),
                )?;
                self.close_calls_without_args(out);
                self.ensure_role(out);
                self.start(None);
                if let Some(w) = &self.writer {
                    w.finish(out, reason);
                    w.end(out, &self.usage);
                }
                self.done = true;
                progress.finished = true;
            }
            "error" => {
                let message = error_text(head.message)
                    .or_else(|| error_text(head.error))
                    .or_else(|| {
                        sub::<EndDelta>(head.delta).and_then(|d| d.error.map(Cow::into_owned))
                    })
                    .unwrap_or_default();
                return Err(stream_error(&message));
            }
            // tool-plan-delta, tool-call-end, content-end, citation-start/-end, and new types.
            _ => {}
        }
        Ok(progress)
    }

    /// The upstream closed the stream: complete only after `message-end`.
    pub fn on_eof(&mut self, _out: &mut BytesMut) -> Result<(), UpstreamError> {
        if self.done {
            Ok(())
        } else {
            Err(UpstreamError::new(
                ErrorClass::ServerError,
                "upstream closed the stream before message-end",
            ))
        }
    }
}

fn tool_call(delta: Option<&RawValue>) -> Option<CallIn<'_>> {
    let raw = sub::<ToolDelta>(delta)?.message?.tool_calls?;
    if raw.get().starts_with('[') {
        serde_json::from_str::<Vec<CallIn>>(raw.get())
            .ok()?
            .into_iter()
            .next()
    } else {
        serde_json::from_str(raw.get()).ok()
    }
}

fn stream_error(message: &str) -> UpstreamError {
    let message = if message.is_empty() {
        "upstream sent an error event".to_owned()
    } else {
        truncate_message(message)
    };
    UpstreamError::new(ErrorClass::ServerError, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::request::ChatBody;
    use crate::providers::sse::SseDecoder;
    use bytes::Bytes;
    use serde_json::{json, Value};

    const MODEL: &str = "command-a-03-2025";

    fn meta() -> RespMeta<'static> {
        RespMeta {
            model: MODEL,
            created: 1735689604,
            request_id: Some("req-7f3c"),
            ..RespMeta::default()
        }
    }

    fn translate(req_json: &str) -> Result<Value, TranslateError> {
        let body = ChatBody::parse(Bytes::copy_from_slice(req_json.as_bytes()))
            .expect("valid OpenAI request");
        let req = ChatRequest::from_body(&body).expect("typed");
        build_request(&req, MODEL).map(|b| serde_json::from_slice(&b).expect("valid JSON"))
    }

    const C1: &str = r#"{"model":"cmd","messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"Say hello."}],"temperature":0.2,"max_tokens":64,"stop":["END"],"user":"u-123"}"#;
    const C2: &str = r#"{"model":"cmd","messages":[{"role":"user","content":"What's the weather in Paris?"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Get current weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],"tool_choice":"auto","max_tokens":256}"#;

    // === request ===

    #[test]
    fn c1_translates_to_a_v2_chat_request() {
        let got = translate(C1).expect("translates");
        let want = json!({"model":MODEL,"messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"Say hello."}],"max_tokens":64,"temperature":0.2,"stop_sequences":["END"],"stream":false});
        assert_eq!(got, want);
        let streaming = C1.replacen(
            '{',
            r#"{"stream":true,"stream_options":{"include_usage":true},"#,
            1,
        );
        assert_eq!(translate(&streaming).expect("translates")["stream"], true);
    }

    #[test]
    fn c2_keeps_openai_shaped_tools_and_omits_auto_tool_choice() {
        let got = translate(C2).expect("translates");
        let want = json!({"model":MODEL,"messages":[{"role":"user","content":"What's the weather in Paris?"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Get current weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],"max_tokens":256,"stream":false});
        assert_eq!(got, want);
    }

    #[test]
    fn tool_choice_strict_and_parameterless_tools() {
        let tools = r#""tools":[{"type":"function","function":{"name":"now","strict":true}}]"#;
        let req = |choice: &str| {
            format!(
                r#"{{"model":"c","messages":[{{"role":"user","content":"x"}}],{tools},"tool_choice":{choice}}}"#
            )
        };
        let got = translate(&req(r#""required""#)).expect("translates");
        assert_eq!(got["tool_choice"], "REQUIRED");
        assert_eq!(
            got["tools"],
            json!([{"type":"function","function":{"name":"now","parameters":{"type":"object","properties":{}}}}]),
            "strict is dropped, a missing schema becomes an empty object"
        );
        assert_eq!(
            translate(&req(r#""none""#)).expect("ok")["tool_choice"],
            "NONE"
        );
        assert!(translate(&req(r#""auto""#))
            .expect("ok")
            .get("tool_choice")
            .is_none());
        let e = translate(&req(r#"{"type":"function","function":{"name":"now"}}"#))
            .expect_err("named tool_choice");
        assert_eq!(e.param, "tool_choice");
        let no_tools = translate(
            r#"{"model":"c","messages":[{"role":"user","content":"x"}],"tool_choice":"required"}"#,
        )
        .expect("ok");
        assert!(no_tools.get("tool_choice").is_none() && no_tools.get("tools").is_none());
    }

    #[test]
    fn multi_turn_tool_conversation_and_sampling_fields() {
        let got = translate(r#"{"model":"c","messages":[
            {"role":"developer","content":"Be brief."},
            {"role":"system","content":[{"type":"text","text":"Use tools."}]},
            {"role":"user","content":"Weather in Paris and Rome?","name":"ann"},
            {"role":"assistant","content":"Checking both.","tool_calls":[
                {"id":"get_weather_a1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                {"id":"get_weather_b2","type":"function","function":{"name":"get_weather","arguments":""}}]},
            {"role":"tool","tool_call_id":"get_weather_a1","content":"18C"},
            {"role":"tool","tool_call_id":"get_weather_b2","content":[{"type":"text","text":"21"},{"type":"text","text":"C"}]},
            {"role":"assistant","content":[{"type":"text","text":"Paris 18C, Rome 21C."}]},
            {"role":"user","content":"Thanks"}],
            "top_p":1,"max_completion_tokens":100,"parallel_tool_calls":false,"stop":"END"}"#)
        .expect("translates");
        assert_eq!(
            got["messages"],
            json!([
                {"role":"system","content":"Be brief."},
                {"role":"system","content":[{"type":"text","text":"Use tools."}]},
                {"role":"user","content":"Weather in Paris and Rome?"},
                {"role":"assistant","tool_plan":"Checking both.","tool_calls":[
                    {"id":"get_weather_a1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                    {"id":"get_weather_b2","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"get_weather_a1","content":"18C"},
                {"role":"tool","tool_call_id":"get_weather_b2","content":"21C"},
                {"role":"assistant","content":[{"type":"text","text":"Paris 18C, Rome 21C."}]},
                {"role":"user","content":"Thanks"}
            ])
        );
        assert_eq!(got["p"], 0.99, "top_p is clamped into Cohere's range");
        assert_eq!(got["max_tokens"], 100);
        assert_eq!(got["stop_sequences"], json!(["END"]));
        assert!(got.get("parallel_tool_calls").is_none() && got.get("top_p").is_none());
        let low =
            translate(r#"{"model":"c","messages":[{"role":"user","content":"x"}],"top_p":0}"#)
                .expect("ok");
        assert_eq!(low["p"], 0.01);
        let tuned = translate(r#"{"model":"c","messages":[{"role":"user","content":"x"}],"seed":42,"frequency_penalty":1.5,"presence_penalty":-0.5}"#)
            .expect("ok");
        assert_eq!(
            (
                &tuned["seed"],
                &tuned["frequency_penalty"],
                &tuned["presence_penalty"]
            ),
            (&json!(42), &json!(1.0), &json!(0.0)),
            "seed keeps its name; penalties are clamped into Cohere's 0-1"
        );
    }

    #[test]
    fn images_as_data_urls_and_http_urls() {
        let got = translate(
            r#"{"model":"c","messages":[{"role":"user","content":[
            {"type":"text","text":"Compare:"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},
            {"type":"image_url","image_url":{"url":"https://example.com/cat.jpg","detail":"low"}},
            {"type":"text","text":""}]}]}"#,
        )
        .expect("translates");
        assert_eq!(
            got["messages"][0]["content"],
            json!([{"type":"text","text":"Compare:"},
                   {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},
                   {"type":"image_url","image_url":{"url":"https://example.com/cat.jpg","detail":"low"}}])
        );
        let e = translate(r#"{"model":"c","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://x/y.png"}}]}]}"#)
            .expect_err("not an image URL");
        assert_eq!(e.param, "messages[0].content[0].image_url.url");
        let e = translate(r#"{"model":"c","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:application/pdf;base64,AAAA"}}]}]}"#)
            .expect_err("pdf is not an image");
        assert_eq!(e.param, "messages[0].content[0].image_url.url");
    }

    #[test]
    fn response_formats() {
        let base = r#"{"model":"c","messages":[{"role":"user","content":"x"}],"response_format":"#;
        let got = translate(&format!(r#"{base}{{"type":"json_object"}}}}"#)).expect("ok");
        assert_eq!(got["response_format"], json!({"type":"json_object"}));
        let got = translate(&format!(
            r#"{base}{{"type":"json_schema","json_schema":{{"name":"w","strict":true,"schema":{{"type":"object","properties":{{"city":{{"type":"string"}}}}}}}}}}}}"#
        ))
        .expect("ok");
        assert_eq!(
            got["response_format"],
            json!({"type":"json_object","json_schema":{"type":"object","properties":{"city":{"type":"string"}}}})
        );
        let got = translate(&format!(r#"{base}{{"type":"text"}}}}"#)).expect("ok");
        assert!(got.get("response_format").is_none());
        let e = translate(&format!(r#"{base}{{"type":"json_schema"}}}}"#)).expect_err("no schema");
        assert_eq!(e.param, "response_format.json_schema");
    }

    #[test]
    fn untranslatable_requests_name_the_field() {
        let e = translate(r#"{"model":"c","messages":[{"role":"user","content":"x"}],"n":2}"#)
            .expect_err("n>1");
        assert_eq!(e.param, "n");
        let e = translate(
            r#"{"model":"c","messages":[{"role":"user","content":"x"}],"logprobs":true}"#,
        )
        .expect_err("logprobs");
        assert_eq!(e.param, "logprobs");
        let e =
            translate(r#"{"model":"c","messages":[{"role":"function","name":"f","content":"x"}]}"#)
                .expect_err("function role");
        assert_eq!(e.param, "messages[0].role");
        // input_audio/file parts map to TranslateError here, but the gateway's own validation
        // (request.rs) cannot read them yet: a `&RawValue` inside an internally tagged enum.
        let e = translate(r#"{"model":"c","messages":[{"role":"user","content":"x"},{"role":"tool","tool_call_id":"t","content":[{"type":"image_url","image_url":{"url":"https://e.com/a.png"}}]}]}"#)
            .expect_err("image tool result");
        assert_eq!(e.param, "messages[1].content[0]");
        assert!(
            translate(r#"{"model":"c","messages":[{"role":"user","content":"x"}],"n":1}"#).is_ok()
        );
    }

    // === response ===

    const TEXT_RESPONSE: &[u8] = br#"{"id":"5a1e7f0c-3d2b-4c89-a6f1-0b9e2d7c4a51","finish_reason":"COMPLETE","message":{"role":"assistant","content":[{"type":"text","text":"Hello"},{"type":"text","text":" there."}]},"usage":{"billed_units":{"input_tokens":9,"output_tokens":3},"tokens":{"input_tokens":215,"output_tokens":3},"cached_tokens":128}}"#;
    const TOOL_RESPONSE: &[u8] = br#"{"id":"8c2d4b6e-1f3a-4e5d-9b7c-6a8e0f2d4c13","finish_reason":"TOOL_CALL","message":{"role":"assistant","tool_plan":"I will look up the weather in Paris.","tool_calls":[{"id":"get_weather_x1y2z3","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},{"id":"now_q9","type":"function","function":{"name":"now","arguments":""}},{"id":"today_r8","type":"function","function":{"name":"today"}}]},"usage":{"billed_units":{"input_tokens":37,"output_tokens":21},"tokens":{"input_tokens":1203,"output_tokens":48}}}"#;

    fn parsed(body: &[u8]) -> (Value, Usage) {
        let (out, usage) = parse_response(body, &meta()).expect("translates");
        (serde_json::from_slice(&out).expect("json"), usage)
    }

    #[test]
    fn a_text_response_becomes_a_chat_completion() {
        let (got, usage) = parsed(TEXT_RESPONSE);
        let want = json!({"id":"5a1e7f0c-3d2b-4c89-a6f1-0b9e2d7c4a51","object":"chat.completion","created":1735689604,"model":MODEL,"choices":[{"index":0,"message":{"role":"assistant","content":"Hello there."},"finish_reason":"stop"}],"usage":{"prompt_tokens":215,"completion_tokens":3,"total_tokens":218,"prompt_tokens_details":{"cached_tokens":128}}});
        assert_eq!(got, want);
        assert_eq!(usage.cached_tokens, 128);
    }

    #[test]
    fn a_tool_response_passes_calls_on_with_object_arguments() {
        let (got, usage) = parsed(TOOL_RESPONSE);
        assert_eq!(got["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(got["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            got["choices"][0]["message"]["tool_calls"],
            json!([
                {"id":"get_weather_x1y2z3","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                {"id":"now_q9","type":"function","function":{"name":"now","arguments":"{}"}},
                {"id":"today_r8","type":"function","function":{"name":"today","arguments":"{}"}}
            ])
        );
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (1203, 48));
    }

    #[test]
    fn finish_reasons_usage_fallbacks_and_failures() {
        let body = |finish: &str, usage: &str| {
            format!(
                r#"{{"id":"r","finish_reason":"{finish}","message":{{"role":"assistant","content":[{{"type":"text","text":"x"}}]}},"usage":{usage}}}"#
            )
        };
        let (got, usage) = parsed(
            body(
                "MAX_TOKENS",
                r#"{"billed_units":{"input_tokens":5.0,"output_tokens":7},"cached_tokens":99}"#,
            )
            .as_bytes(),
        );
        assert_eq!(got["choices"][0]["finish_reason"], "length");
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens
            ),
            (5, 7, 5),
            "billed_units is the fallback; cached never exceeds prompt"
        );
        let (got, _) = parsed(body("STOP_SEQUENCE", "{}").as_bytes());
        assert_eq!(got["choices"][0]["finish_reason"], "stop");
        let e = parse_response(body("ERROR", "{}").as_bytes(), &meta()).expect_err("ERROR");
        assert_eq!(e.class, ErrorClass::ServerError);
        let e = parse_response(body("TIMEOUT", "{}").as_bytes(), &meta()).expect_err("TIMEOUT");
        assert_eq!(e.class, ErrorClass::Timeout);
        let (got, usage) = parsed(br#"{"message":{"role":"assistant","content":[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"ok"}]}}"#);
        assert_eq!(
            got["id"], "chatcmpl-req-7f3c",
            "no id: made from the request id"
        );
        assert_eq!(got["choices"][0]["message"]["content"], "ok");
        assert_eq!(usage, Usage::default());
        for bad in [
            &b"{\"nope\":1}"[..],
            b"",
            b"<html>502</html>",
            b"{\"message\":7}",
        ] {
            let e = parse_response(bad, &meta()).expect_err("malformed");
            assert_eq!(e.class, ErrorClass::ServerError);
        }
    }

    // === errors ===

    #[test]
    fn errors_are_classified() {
        let cases: &[(u16, &str, ErrorClass)] = &[
            (
                400,
                r#"{"id":"e1","message":"too many tokens: size limit exceeded by 1534 tokens. Try using shorter or fewer inputs, or setting prompt_truncation='AUTO'."}"#,
                ErrorClass::ContextWindow,
            ),
            (
                422,
                r#"{"message":"The input is longer than the model's context length"}"#,
                ErrorClass::ContextWindow,
            ),
            (
                400,
                r#"{"id":"e2","message":"invalid request: message must be at least 1 token long or tool results must be specified."}"#,
                ErrorClass::BadRequest,
            ),
            (
                422,
                r#"{"message":"invalid request: p must be between 0.01 and 0.99"}"#,
                ErrorClass::BadRequest,
            ),
            (
                400,
                r#"{"message":"blocked input: please adjust your prompt and try again, as it may be a potential violation of our Usage Guidelines"}"#,
                ErrorClass::ContentPolicy,
            ),
            (
                401,
                r#"{"message":"invalid api token"}"#,
                ErrorClass::UpstreamAuth,
            ),
            (403, r#"{"message":"forbidden"}"#, ErrorClass::UpstreamAuth),
            (
                404,
                r#"{"message":"model 'command-x' not found, make sure the correct model ID was used and that you have access to the model."}"#,
                ErrorClass::UpstreamAuth,
            ),
            (
                498,
                r#"{"message":"invalid api token"}"#,
                ErrorClass::UpstreamAuth,
            ),
            (
                402,
                r#"{"message":"Please add or update your payment method at https://dashboard.cohere.com/billing"}"#,
                ErrorClass::QuotaExhausted,
            ),
            (
                429,
                r#"{"id":"e3","message":"You are using a Trial key, which is limited to 20 API calls / minute. You can continue to use the Trial key for free or upgrade to a Production key with higher rate limits."}"#,
                ErrorClass::RateLimited,
            ),
            (
                429,
                r#"{"id":"e4","message":"You are using a Trial key, which is limited to 1000 API calls / month. You can continue to use the Trial key for free or upgrade to a Production key with higher rate limits."}"#,
                ErrorClass::QuotaExhausted,
            ),
            (
                429,
                r#"{"message":"rate limit exceeded"}"#,
                ErrorClass::RateLimited,
            ),
            (
                499,
                r#"{"message":"request cancelled"}"#,
                ErrorClass::ServerError,
            ),
            (
                500,
                r#"{"message":"internal server error, this has been reported to our developers. id 1f4a"}"#,
                ErrorClass::ServerError,
            ),
            (502, "<html>bad gateway</html>", ErrorClass::ServerError),
            (
                503,
                r#"{"message":"service unavailable"}"#,
                ErrorClass::Overloaded,
            ),
            (504, "", ErrorClass::Timeout),
            (418, "{}", ErrorClass::BadRequest),
        ];
        for (status, body, class) in cases {
            let e = classify_error(*status, None, &meta(), body.as_bytes());
            assert_eq!(e.class, *class, "{status} {body}");
            assert_eq!(e.status, Some(*status));
        }
        let e = classify_error(
            429,
            Some(Duration::from_secs(3)),
            &meta(),
            br#"{"message":"slow down"}"#,
        );
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(e.message, "slow down");
        let e = classify_error(
            498,
            None,
            &meta(),
            br#"{"message":"invalid api token co-abc123"}"#,
        );
        assert!(!e.message.contains("co-abc123"), "auth messages are ours");
        let e = classify_error(500, None, &meta(), b"not json");
        assert_eq!(e.message, "upstream returned HTTP 500");
    }

    // === stream ===

    /// Feeds `input` in `step`-byte reads through the SSE decoder and `t`, then closes it.
    fn feed(
        t: &mut StreamTranslator,
        input: &[u8],
        step: usize,
    ) -> (Vec<Value>, Vec<Progress>, Result<(), UpstreamError>) {
        let d = crate::providers::StreamDecoder::Sse(SseDecoder::new());
        let (text, progress, end) = crate::providers::test_support::feed_steps(t, d, input, step);
        (crate::providers::test_support::chunks(&text), progress, end)
    }

    fn run(
        input: &str,
        include_usage: bool,
    ) -> (
        Vec<Value>,
        Vec<Progress>,
        StreamTranslator,
        Result<(), UpstreamError>,
    ) {
        let mut t = StreamTranslator::new(include_usage, &meta());
        let (chunks, progress, end) = feed(&mut t, input.as_bytes(), usize::MAX);
        (chunks, progress, t, end)
    }

    fn deltas(chunks: &[Value]) -> Vec<Value> {
        chunks
            .iter()
            .filter(|c| c["choices"][0]["finish_reason"].is_null() && c["choices"].get(0).is_some())
            .map(|c| c["choices"][0]["delta"].clone())
            .collect()
    }

    const TEXT_STREAM: &str = r##"event: message-start
data: {"id":"c5e4a1d2-7b3f-4e8a-9c61-2f0d8b7a4e10","type":"message-start","delta":{"message":{"role":"assistant","content":[],"tool_plan":"","tool_calls":[],"citations":[]}}}

event: content-start
data: {"type":"content-start","index":0,"delta":{"message":{"content":{"type":"text","text":""}}}}

event: content-delta
data: {"type":"content-delta","index":0,"delta":{"message":{"content":{"text":"Hel"}}}}

event: content-delta
data: {"type":"content-delta","index":0,"delta":{"message":{"content":{"text":"lo."}}}}

event: content-end
data: {"type":"content-end","index":0}

event: message-end
data: {"type":"message-end","delta":{"finish_reason":"COMPLETE","usage":{"billed_units":{"input_tokens":9,"output_tokens":3},"tokens":{"input_tokens":215,"output_tokens":3},"cached_tokens":128}}}

"##;

    const TOOL_STREAM: &str = r##"event: message-start
data: {"id":"9d3f6a2b-4e1c-47b8-8a5d-3c7e9f1b2d64","type":"message-start","delta":{"message":{"role":"assistant","content":[],"tool_plan":"","tool_calls":[],"citations":[]}}}

event: tool-plan-delta
data: {"type":"tool-plan-delta","delta":{"message":{"tool_plan":"I will look up"}}}

event: tool-plan-delta
data: {"type":"tool-plan-delta","delta":{"message":{"tool_plan":" the weather in Paris."}}}

event: tool-call-start
data: {"type":"tool-call-start","index":0,"delta":{"message":{"tool_calls":{"id":"get_weather_x1y2z3","type":"function","function":{"name":"get_weather","arguments":""}}}}}

event: tool-call-delta
data: {"type":"tool-call-delta","index":0,"delta":{"message":{"tool_calls":{"function":{"arguments":"{\"city\":"}}}}}

event: tool-call-delta
data: {"type":"tool-call-delta","index":0,"delta":{"message":{"tool_calls":{"function":{"arguments":"\"Paris\"}"}}}}}

event: tool-call-end
data: {"type":"tool-call-end","index":0}

event: message-end
data: {"type":"message-end","delta":{"finish_reason":"TOOL_CALL","usage":{"billed_units":{"input_tokens":37,"output_tokens":21},"tokens":{"input_tokens":1203,"output_tokens":48}}}}

"##;

    #[test]
    fn a_text_stream_becomes_the_expected_chunks() {
        let (chunks, progress, t, end) = run(TEXT_STREAM, true);
        assert!(end.is_ok(), "{end:?}");
        assert!(t.is_done());
        assert_eq!(chunks.len(), 6, "{chunks:#?}");
        for c in &chunks[..5] {
            assert_eq!(c["id"], "c5e4a1d2-7b3f-4e8a-9c61-2f0d8b7a4e10");
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["created"], 1735689604);
            assert_eq!(c["model"], MODEL);
        }
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role":"assistant","content":""})
        );
        assert_eq!(chunks[0]["usage"], Value::Null);
        assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content":"Hel"}));
        assert_eq!(chunks[2]["choices"][0]["delta"], json!({"content":"lo."}));
        assert_eq!(chunks[3]["choices"][0]["delta"], json!({}));
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[4]["choices"], json!([]));
        assert_eq!(
            chunks[4]["usage"],
            json!({"prompt_tokens":215,"completion_tokens":3,"total_tokens":218,"prompt_tokens_details":{"cached_tokens":128}})
        );
        assert_eq!(chunks[5], "[DONE]");
        let meaningful: Vec<bool> = progress.iter().map(|p| p.meaningful).collect();
        assert_eq!(meaningful, [false, false, true, true, false, false]);
        assert!(progress[5].finished);
        assert_eq!(t.usage().total(), 218);
        assert_eq!(t.invalid_events(), 0);
    }

    #[test]
    fn without_include_usage_no_usage_is_sent() {
        let (chunks, _, t, end) = run(TEXT_STREAM, false);
        assert!(end.is_ok());
        assert_eq!(chunks.len(), 5);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert_eq!(chunks[4], "[DONE]");
        assert_eq!(
            t.usage().prompt_tokens,
            215,
            "usage is still counted for billing"
        );
    }

    #[test]
    fn a_tool_call_stream_becomes_tool_call_chunks() {
        let (chunks, progress, t, end) = run(TOOL_STREAM, false);
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(
            deltas(&chunks),
            vec![
                json!({"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"get_weather_x1y2z3","type":"function","function":{"name":"get_weather","arguments":""}}]}),
                json!({"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}),
                json!({"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}),
            ]
        );
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert_eq!(chunks[chunks.len() - 1], "[DONE]");
        assert!(
            !progress[1].meaningful && !progress[2].meaningful,
            "tool plans are not output"
        );
        assert!(progress[3].meaningful);
        assert_eq!(
            (t.usage().prompt_tokens, t.usage().completion_tokens),
            (1203, 48)
        );
    }

    #[test]
    fn calls_without_arguments_get_an_empty_object_and_start_arguments_are_a_fragment() {
        let input = r##"data: {"id":"m2","type":"message-start","delta":{"message":{"role":"assistant"}}}

data: {"type":"content-delta","index":0,"delta":{"message":{"content":{"text":"Checking."}}}}

data: {"type":"tool-call-start","index":0,"delta":{"message":{"tool_calls":{"id":"now_1","type":"function","function":{"name":"now","arguments":""}}}}}

data: {"type":"tool-call-end","index":0}

data: {"type":"tool-call-start","index":1,"delta":{"message":{"tool_calls":{"id":"get_weather_2","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Rome\"}"}}}}}

data: {"type":"tool-call-end","index":1}

data: {"type":"message-end","delta":{"finish_reason":"TOOL_CALL","usage":{"tokens":{"input_tokens":10,"output_tokens":20}}}}

"##;
        let (chunks, _, _, end) = run(input, false);
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(
            deltas(&chunks),
            vec![
                json!({"role":"assistant","content":""}),
                json!({"content":"Checking."}),
                json!({"tool_calls":[{"index":0,"id":"now_1","type":"function","function":{"name":"now","arguments":""}}]}),
                json!({"tool_calls":[{"index":1,"id":"get_weather_2","type":"function","function":{"name":"get_weather","arguments":""}}]}),
                json!({"tool_calls":[{"index":1,"function":{"arguments":"{\"city\":\"Rome\"}"}}]}),
                json!({"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}),
            ]
        );
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert_eq!(chunks[0]["id"], "m2");
    }

    #[test]
    fn unknown_events_are_ignored_and_citations_change_nothing() {
        let extra = r##"event: citation-start
data: {"type":"citation-start","index":0,"delta":{"message":{"citations":{"start":0,"end":3,"text":"Hel","sources":[]}}}}

event: citation-end
data: {"type":"citation-end","index":0}

event: debug
data: {"type":"debug","prompt":"..."}

: keep-alive

"##;
        let input = TEXT_STREAM.replacen(
            "event: content-end",
            &format!("{extra}event: content-end"),
            1,
        );
        let (chunks, _, t, end) = run(&input, false);
        assert!(end.is_ok());
        assert_eq!(chunks, run(TEXT_STREAM, false).0);
        assert_eq!(t.invalid_events(), 0);
    }

    #[test]
    fn multi_byte_text_survives_every_split() {
        let input = TEXT_STREAM
            .replace(r#""text":"Hel""#, r#""text":"Grüße, 東京 ""#)
            .replace(r#""text":"lo.""#, r#""text":"🌧️ heute.""#);
        let (whole, _, _, end) = run(&input, true);
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(whole[1]["choices"][0]["delta"]["content"], "Grüße, 東京 ");
        assert_eq!(whole[2]["choices"][0]["delta"]["content"], "🌧️ heute.");
        for step in [1, 2, 3, 5, 7] {
            let mut t = StreamTranslator::new(true, &meta());
            let (chunks, _, end) = feed(&mut t, input.as_bytes(), step);
            assert!(end.is_ok());
            assert_eq!(chunks, whole, "split every {step} bytes");
        }
    }

    #[test]
    fn invalid_json_and_untyped_events_are_counted_and_skipped() {
        let input = TEXT_STREAM
            .replacen(
                "event: content-end\ndata: {\"type\":\"content-end\",\"index\":0}",
                "event: content-end\ndata: {oops",
                1,
            )
            .replacen(
                "event: content-start\n",
                "data: {\"index\":3}\n\nevent: content-start\n",
                1,
            );
        let (chunks, _, t, end) = run(&input, false);
        assert!(end.is_ok());
        assert_eq!(t.invalid_events(), 2);
        assert_eq!(chunks, run(TEXT_STREAM, false).0);
    }

    #[test]
    fn events_are_keyed_on_json_type_not_the_event_line() {
        let input = TEXT_STREAM.replace("event: content-delta", "event: mystery");
        let (chunks, _, _, end) = run(&input, false);
        assert!(end.is_ok());
        assert_eq!(chunks, run(TEXT_STREAM, false).0);
    }

    #[test]
    fn truncation_and_in_band_errors_fail_the_stream() {
        let cut = TEXT_STREAM
            .split("event: message-end")
            .next()
            .unwrap_or_default();
        let (chunks, _, t, end) = run(cut, false);
        assert_eq!(end.map_err(|e| e.class), Err(ErrorClass::ServerError));
        assert!(!t.is_done());
        assert!(!chunks.iter().any(|c| c == "[DONE]"));

        let error_event = "event: message-start\ndata: {\"id\":\"m\",\"type\":\"message-start\"}\n\nevent: error\ndata: {\"type\":\"error\",\"message\":\"internal error\"}\n\n";
        let (_, _, _, end) = run(error_event, false);
        let e = end.expect_err("error event");
        assert_eq!(
            (e.class, e.message.as_str()),
            (ErrorClass::ServerError, "internal error")
        );

        let untyped = "data: {\"message\":\"too many requests\"}\n\n";
        let (_, _, _, end) = run(untyped, false);
        assert_eq!(end.map_err(|e| e.class), Err(ErrorClass::ServerError));

        let end_with = |reason: &str| {
            TEXT_STREAM.replace(
                r#""finish_reason":"COMPLETE""#,
                &format!(r#""finish_reason":"{reason}","error":"model stalled""#),
            )
        };
        let (_, _, t, end) = run(&end_with("TIMEOUT"), true);
        let e = end.expect_err("TIMEOUT");
        assert_eq!(
            (e.class, e.message.as_str()),
            (ErrorClass::Timeout, "model stalled")
        );
        assert_eq!(
            t.usage().prompt_tokens,
            215,
            "usage seen before the failure is kept"
        );
        let (_, _, _, end) = run(&end_with("ERROR"), true);
        assert_eq!(end.map_err(|e| e.class), Err(ErrorClass::ServerError));
        let (chunks, _, _, end) = run(&end_with("MAX_TOKENS"), false);
        assert!(end.is_ok());
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            "length"
        );
    }

    #[test]
    fn an_empty_answer_still_gets_a_role_chunk_and_nothing_follows_done() {
        let input = "data: {\"id\":\"m\",\"type\":\"message-start\"}\n\ndata: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"COMPLETE\"}}\n\ndata: {\"type\":\"content-delta\",\"delta\":{\"message\":{\"content\":{\"text\":\"late\"}}}}\n\n";
        let (chunks, progress, _, end) = run(input, false);
        assert!(end.is_ok());
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role":"assistant","content":""})
        );
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "stop");
        assert_eq!(progress[2], Progress::NOTHING);
    }
}
