//! The inbound Anthropic Messages API (`POST /v1/messages`), so Anthropic SDK clients can use
//! the gateway: an Anthropic request becomes an OpenAI Chat Completions body (the inverse of
//! providers.md §3.2), which is routed like any chat request; the gateway's own OpenAI-shaped
//! output (a `chat.completion`, or `chat.completion.chunk` events ending in `data: [DONE]` or an
//! error event) is turned back into an Anthropic message or event stream (§3.3, §3.4), and
//! gateway errors into Anthropic error bodies (§3.5).
//!
//! Pure translation: no I/O, no actix. Client input is checked strictly (a 400 names the
//! Anthropic field); the gateway's output is read leniently and Anthropic JSON is emitted strictly.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use bytes::{BufMut, BytesMut};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::sse::SseDecoder;
use crate::error::GatewayError;

// === request: Anthropic -> OpenAI ===

/// An Anthropic request translated for the chat pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// OpenAI Chat Completions body (JSON).
    pub body: Vec<u8>,
    /// The client asked for a stream (the body then asks for the usage chunk too).
    pub stream: bool,
    /// The model the client named.
    pub model: String,
}

#[derive(Deserialize)]
struct ARequest<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(borrow, default)]
    system: Option<StrOrSeq<'a, ABlock<'a>>>,
    #[serde(borrow, default)]
    messages: Option<Vec<AMessage<'a>>>,
    #[serde(borrow, default)]
    tools: Option<Vec<ATool<'a>>>,
    #[serde(borrow, default)]
    tool_choice: Option<AToolChoice<'a>>,
    #[serde(borrow, default)]
    stop_sequences: Option<Vec<Str<'a>>>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(borrow, default)]
    metadata: Option<AMetadata<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    // top_k, thinking, service_tier and unknown fields are dropped: OpenAI has no equivalent.
}

#[derive(Deserialize)]
struct AMessage<'a> {
    #[serde(borrow)]
    role: Str<'a>,
    #[serde(borrow)]
    content: StrOrSeq<'a, ABlock<'a>>,
}

/// A content block of any type, flat: which fields matter depends on `type`, checked by hand so
/// an error names the block. Fields whose shape varies between block types stay raw.
#[derive(Deserialize)]
struct ABlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_use_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ASource<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(borrow, default)]
    media_type: Option<Str<'a>>,
    #[serde(borrow, default)]
    data: Option<Str<'a>>,
    #[serde(borrow, default)]
    url: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ATool<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    description: Option<Str<'a>>,
    #[serde(borrow, default)]
    input_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AToolChoice<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(default)]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
struct AMetadata<'a> {
    #[serde(borrow, default)]
    user_id: Option<Str<'a>>,
}

#[derive(Serialize)]
struct OaiRequest<'a> {
    model: Cow<'a, str>,
    messages: Vec<OaiMessage<'a>>,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop: Vec<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<OaiTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<OaiToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct OaiMessage<'a> {
    role: &'static str,
    /// `None` is written as `null` (an assistant turn that only calls tools).
    content: Option<OaiContent<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OaiToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<Cow<'a, str>>,
}

impl<'a> OaiMessage<'a> {
    fn new(role: &'static str, content: OaiContent<'a>) -> Self {
        OaiMessage {
            role,
            content: Some(content),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum OaiContent<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<OaiPart<'a>>),
}

impl<'a> OaiContent<'a> {
    /// One text part is sent as a plain string (what most OpenAI-compatible servers expect).
    fn from_parts(mut parts: Vec<OaiPart<'a>>) -> Self {
        if parts.len() == 1 && matches!(parts[0], OaiPart::Text { .. }) {
            if let Some(OaiPart::Text { text }) = parts.pop() {
                return OaiContent::Text(text);
            }
        }
        OaiContent::Parts(parts)
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OaiPart<'a> {
    Text { text: Cow<'a, str> },
    ImageUrl { image_url: ImageUrl<'a> },
}

#[derive(Serialize)]
struct ImageUrl<'a> {
    /// Written with `collect_str`: a base64 image becomes a data URL without an extra copy.
    #[serde(serialize_with = "serialize_display")]
    url: Url<'a>,
}

enum Url<'a> {
    Data {
        media_type: Cow<'a, str>,
        data: Cow<'a, str>,
    },
    Http(Cow<'a, str>),
}

impl fmt::Display for Url<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Url::Data { media_type, data } => write!(f, "data:{media_type};base64,{data}"),
            Url::Http(url) => f.write_str(url),
        }
    }
}

fn serialize_display<T: fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[derive(Serialize)]
struct OaiToolCall<'a> {
    id: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: &'static str,
    function: OaiFunctionCall<'a>,
}

#[derive(Serialize)]
struct OaiFunctionCall<'a> {
    name: Cow<'a, str>,
    /// JSON text of the tool input.
    arguments: &'a str,
}

#[derive(Serialize)]
struct OaiTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: OaiFunctionDef<'a>,
}

#[derive(Serialize)]
struct OaiFunctionDef<'a> {
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Cow<'a, str>>,
    parameters: Schema<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Schema<'a> {
    Raw(&'a RawValue),
    /// A tool without `input_schema` takes no arguments.
    Empty {
        #[serde(rename = "type")]
        kind: &'static str,
        properties: Empty,
    },
}

/// Serializes as `{}`.
#[derive(Serialize, Clone, Copy)]
struct Empty {}

#[derive(Serialize)]
#[serde(untagged)]
enum OaiToolChoice<'a> {
    Mode(&'static str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: NamedFunction<'a>,
    },
}

#[derive(Serialize)]
struct NamedFunction<'a> {
    name: Cow<'a, str>,
}

/// Translates an Anthropic Messages request into an OpenAI Chat Completions body. Errors are
/// 400s naming the Anthropic field (`messages[2].content[0].type`).
pub fn to_openai(bytes: &[u8]) -> Result<Inbound, GatewayError> {
    // Serde's derive would also take an array of the fields in order; the API never means that.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(GatewayError::bad_request(
            "request body must be a JSON object",
            None,
        ));
    }
    let req: ARequest = parse_at(bytes, "")?;

    let model = req
        .model
        .map(|m| m.0)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("model", "this field is required"))?;
    let max_tokens = req
        .max_tokens
        .ok_or_else(|| invalid("max_tokens", "this field is required"))?;
    if max_tokens == 0 {
        return Err(invalid("max_tokens", "must be at least 1"));
    }
    let turns = req
        .messages
        .ok_or_else(|| invalid("messages", "this field is required"))?;
    if turns.is_empty() {
        return Err(invalid("messages", "must contain at least one message"));
    }

    let mut messages = Vec::with_capacity(turns.len() + 1);
    if let Some(system) = req.system {
        if let Some(content) = system_content(system)? {
            messages.push(OaiMessage::new("system", content));
        }
    }
    for (i, turn) in turns.into_iter().enumerate() {
        match turn.role.0.as_ref() {
            "user" => user_turn(i, turn.content, &mut messages)?,
            "assistant" => assistant_turn(i, turn.content, &mut messages)?,
            other => {
                return Err(invalid(
                    format!("messages[{i}].role"),
                    format!("must be \"user\" or \"assistant\", not {other:?}"),
                ))
            }
        }
    }
    if messages.iter().all(|m| m.role == "system") {
        return Err(invalid("messages", "no message has any content"));
    }

    let mut tools = Vec::new();
    for (i, t) in req.tools.unwrap_or_default().into_iter().enumerate() {
        if let Some(kind) = t.kind.as_ref().map(|k| k.0.as_ref()) {
            if kind != "custom" {
                return Err(invalid(
                    format!("tools[{i}].type"),
                    format!("server tools ({kind:?}) are not supported by this gateway"),
                ));
            }
        }
        let name = t
            .name
            .map(|n| n.0)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid(format!("tools[{i}].name"), "this field is required"))?;
        tools.push(OaiTool {
            kind: "function",
            function: OaiFunctionDef {
                name,
                description: t.description.map(|d| d.0),
                parameters: match t.input_schema {
                    Some(schema) => Schema::Raw(schema),
                    None => Schema::Empty {
                        kind: "object",
                        properties: Empty {},
                    },
                },
            },
        });
    }

    let mut tool_choice = None;
    let mut parallel_tool_calls = None;
    if let Some(tc) = req.tool_choice {
        let choice =
            match tc.kind.0.as_ref() {
                "auto" => OaiToolChoice::Mode("auto"),
                "any" => OaiToolChoice::Mode("required"),
                "none" => OaiToolChoice::Mode("none"),
                "tool" => {
                    OaiToolChoice::Function {
                        kind: "function",
                        function: NamedFunction {
                            name: tc.name.map(|n| n.0).filter(|n| !n.is_empty()).ok_or_else(
                                || invalid("tool_choice.name", "is required when type is \"tool\""),
                            )?,
                        },
                    }
                }
                other => {
                    return Err(invalid(
                        "tool_choice.type",
                        format!("must be \"auto\", \"any\", \"tool\" or \"none\", not {other:?}"),
                    ))
                }
            };
        // OpenAI refuses tool_choice and parallel_tool_calls without tools; they mean nothing then.
        if !tools.is_empty() {
            tool_choice = Some(choice);
            if tc.disable_parallel_tool_use == Some(true) {
                parallel_tool_calls = Some(false);
            }
        }
    }

    let stream = req.stream.unwrap_or(false);
    let body = OaiRequest {
        model: model.clone(),
        messages,
        max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        stop: req
            .stop_sequences
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.0)
            .collect(),
        tools,
        tool_choice,
        parallel_tool_calls,
        user: req
            .metadata
            .and_then(|m| m.user_id)
            .map(|u| u.0)
            .filter(|u| !u.is_empty()),
        stream,
        // Always: the usage chunk is the only place a stream's token counts come from.
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
    };
    let body = serde_json::to_vec(&body).map_err(|e| GatewayError::Internal(e.to_string()))?;
    Ok(Inbound {
        body,
        stream,
        model: model.into_owned(),
    })
}

/// `system`: a string or text blocks. Several blocks stay separate text parts.
fn system_content<'a>(
    system: StrOrSeq<'a, ABlock<'a>>,
) -> Result<Option<OaiContent<'a>>, GatewayError> {
    let blocks = match system {
        StrOrSeq::Str(s) if s.is_empty() => return Ok(None),
        StrOrSeq::Str(s) => return Ok(Some(OaiContent::Text(s))),
        StrOrSeq::Seq(blocks) => blocks,
    };
    let mut parts = Vec::with_capacity(blocks.len());
    for (k, b) in blocks.into_iter().enumerate() {
        if b.kind.0 != "text" {
            return Err(invalid(
                format!("system[{k}].type"),
                "system blocks must be of type \"text\"",
            ));
        }
        let text = required_text(b.text, || format!("system[{k}]"))?;
        if !text.is_empty() {
            parts.push(OaiPart::Text { text });
        }
    }
    Ok((!parts.is_empty()).then(|| OaiContent::from_parts(parts)))
}

/// A user turn. Its `tool_result` blocks become `role:"tool"` messages, written first (OpenAI
/// wants them right after the assistant's tool calls); text and images follow as one user
/// message, including images a tool returned (a tool message can only carry text).
fn user_turn<'a>(
    i: usize,
    content: StrOrSeq<'a, ABlock<'a>>,
    out: &mut Vec<OaiMessage<'a>>,
) -> Result<(), GatewayError> {
    let blocks = match content {
        StrOrSeq::Str(s) => {
            out.push(OaiMessage::new("user", OaiContent::Text(s)));
            return Ok(());
        }
        StrOrSeq::Seq(blocks) => blocks,
    };
    let mut parts = Vec::new();
    for (j, b) in blocks.into_iter().enumerate() {
        let at = || format!("messages[{i}].content[{j}]");
        match b.kind.0.as_ref() {
            "text" => parts.push(OaiPart::Text {
                text: required_text(b.text, at)?,
            }),
            "image" => parts.push(image_part(b.source, &at())?),
            "tool_result" => {
                let id = b
                    .tool_use_id
                    .map(|id| id.0)
                    .ok_or_else(|| invalid(format!("{}.tool_use_id", at()), "is required"))?;
                // `is_error` has no OpenAI equivalent; the content says what went wrong.
                let text = tool_result_text(b.content, &at(), &mut parts)?;
                out.push(OaiMessage {
                    role: "tool",
                    content: Some(OaiContent::Text(text)),
                    tool_calls: Vec::new(),
                    tool_call_id: Some(id),
                });
            }
            "thinking" | "redacted_thinking" => {}
            "tool_use" => {
                return Err(invalid(
                    format!("{}.type", at()),
                    "tool_use blocks belong in assistant messages",
                ))
            }
            other => return Err(unsupported_block(&at(), other)),
        }
    }
    if !parts.is_empty() {
        out.push(OaiMessage::new("user", OaiContent::from_parts(parts)));
    }
    Ok(())
}

/// The text of a `tool_result` (a string, or text blocks joined by newlines); its images go to
/// `images`.
fn tool_result_text<'a>(
    content: Option<&'a RawValue>,
    at: &str,
    images: &mut Vec<OaiPart<'a>>,
) -> Result<Cow<'a, str>, GatewayError> {
    let Some(raw) = content else {
        return Ok(Cow::Borrowed(""));
    };
    let at = format!("{at}.content");
    let blocks = match parse_at::<StrOrSeq<ABlock>>(raw.get().as_bytes(), &at)? {
        StrOrSeq::Str(s) => return Ok(s),
        StrOrSeq::Seq(blocks) => blocks,
    };
    let mut texts: Vec<Cow<'a, str>> = Vec::new();
    for (k, b) in blocks.into_iter().enumerate() {
        let here = || format!("{at}[{k}]");
        match b.kind.0.as_ref() {
            "text" => texts.push(required_text(b.text, here)?),
            "image" => images.push(image_part(b.source, &here())?),
            other => return Err(unsupported_block(&here(), other)),
        }
    }
    Ok(match texts.len() {
        0 => Cow::Borrowed(""),
        1 => texts.swap_remove(0),
        _ => Cow::Owned(texts.join("\n")),
    })
}

fn image_part<'a>(source: Option<&'a RawValue>, at: &str) -> Result<OaiPart<'a>, GatewayError> {
    let at = format!("{at}.source");
    let raw = source.ok_or_else(|| invalid(at.as_str(), "is required"))?;
    let src: ASource = parse_at(raw.get().as_bytes(), &at)?;
    let field = |name: &str, v: Option<Str<'a>>| {
        v.map(|s| s.0)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(format!("{at}.{name}"), "is required"))
    };
    let url = match src.kind.0.as_ref() {
        "base64" => Url::Data {
            media_type: field("media_type", src.media_type)?,
            data: field("data", src.data)?,
        },
        "url" => Url::Http(field("url", src.url)?),
        other => {
            return Err(invalid(
                format!("{at}.type"),
                format!("image sources of type {other:?} are not supported by this gateway"),
            ))
        }
    };
    Ok(OaiPart::ImageUrl {
        image_url: ImageUrl { url },
    })
}

/// An assistant turn: text, then `tool_use` blocks as `tool_calls`; thinking is dropped (other
/// providers cannot verify its signature). A turn left with nothing is skipped.
fn assistant_turn<'a>(
    i: usize,
    content: StrOrSeq<'a, ABlock<'a>>,
    out: &mut Vec<OaiMessage<'a>>,
) -> Result<(), GatewayError> {
    let blocks = match content {
        StrOrSeq::Str(s) => {
            out.push(OaiMessage::new("assistant", OaiContent::Text(s)));
            return Ok(());
        }
        StrOrSeq::Seq(blocks) => blocks,
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.into_iter().enumerate() {
        let at = || format!("messages[{i}].content[{j}]");
        match b.kind.0.as_ref() {
            "text" => {
                let text = required_text(b.text, at)?;
                if !text.is_empty() {
                    parts.push(OaiPart::Text { text });
                }
            }
            "tool_use" => {
                let id =
                    b.id.map(|s| s.0)
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| invalid(format!("{}.id", at()), "is required"))?;
                let name = b
                    .name
                    .map(|s| s.0)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| invalid(format!("{}.name", at()), "is required"))?;
                let arguments = match b.input {
                    None => "{}",
                    Some(raw) if raw.get().starts_with('{') => raw.get(),
                    Some(_) => {
                        return Err(invalid(format!("{}.input", at()), "must be a JSON object"))
                    }
                };
                calls.push(OaiToolCall {
                    id,
                    kind: "function",
                    function: OaiFunctionCall { name, arguments },
                });
            }
            "thinking" | "redacted_thinking" => {}
            "tool_result" => {
                return Err(invalid(
                    format!("{}.type", at()),
                    "tool_result blocks belong in user messages",
                ))
            }
            other => return Err(unsupported_block(&at(), other)),
        }
    }
    if parts.is_empty() && calls.is_empty() {
        return Ok(());
    }
    out.push(OaiMessage {
        role: "assistant",
        content: (!parts.is_empty()).then(|| OaiContent::from_parts(parts)),
        tool_calls: calls,
        tool_call_id: None,
    });
    Ok(())
}

fn required_text<'a>(
    text: Option<Str<'a>>,
    at: impl FnOnce() -> String,
) -> Result<Cow<'a, str>, GatewayError> {
    text.map(|t| t.0)
        .ok_or_else(|| invalid(format!("{}.text", at()), "is required"))
}

fn unsupported_block(at: &str, kind: &str) -> GatewayError {
    invalid(
        format!("{at}.type"),
        format!("content blocks of type {kind:?} are not supported here"),
    )
}

/// A 400 naming `param`, worded like the OpenAI side's (`param: why`).
fn invalid(param: impl Into<String>, why: impl fmt::Display) -> GatewayError {
    let param = param.into();
    GatewayError::bad_request(format!("{param}: {why}"), Some(param))
}

/// Deserializes `json`, which sits at `at` in the request (`""` for the whole body), naming the
/// full path of a type error (`messages[0].content[1].source.data`).
fn parse_at<'a, T: Deserialize<'a>>(json: &'a [u8], at: &str) -> Result<T, GatewayError> {
    // Valid input is the common case: path tracking costs about a second parse, so it is only
    // paid to explain an error.
    let plain = match serde_json::from_slice(json) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    let (path, inner) = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(e) => (e.path().to_string(), e.into_inner()),
        // The value itself was fine: what follows it is not (trailing characters).
        Ok(_) => (".".to_owned(), plain),
    };
    if at.is_empty() && (inner.is_syntax() || inner.is_eof()) {
        return Err(GatewayError::bad_request(
            format!("request body is not valid JSON: {inner}"),
            None,
        ));
    }
    let inner = inner.to_string();
    // serde_json appends " at line L column C"; the path says more.
    let inner = inner
        .rfind(" at line ")
        .map_or(inner.as_str(), |pos| &inner[..pos]);
    let param = match (at.is_empty(), path.as_str()) {
        (true, ".") => {
            return Err(GatewayError::bad_request(
                format!("request body: {inner}"),
                None,
            ))
        }
        (true, p) => p.to_owned(),
        (false, ".") => at.to_owned(),
        (false, p) if p.starts_with('[') => format!("{at}{p}"),
        (false, p) => format!("{at}.{p}"),
    };
    Err(invalid(param, inner))
}

// === borrowed JSON strings ===

/// A JSON string, borrowed from the input unless it had escapes. (`Option<Cow<str>>` would
/// always copy: serde only borrows a `Cow` that is the field's whole type.)
struct Str<'a>(Cow<'a, str>);

/// A string or an array of `T` (message content, `system`, `tool_result` content).
enum StrOrSeq<'a, T> {
    Str(Cow<'a, str>),
    Seq(Vec<T>),
}

struct StrVisitor<'a, T>(PhantomData<(&'a (), T)>);

impl<'de: 'a, 'a, T: Deserialize<'de>> Visitor<'de> for StrVisitor<'a, T> {
    type Value = StrOrSeq<'a, T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an array of content blocks")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(StrOrSeq::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(StrOrSeq::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(StrOrSeq::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(2));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(StrOrSeq::Seq(items))
    }
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for StrOrSeq<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrVisitor(PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

// === OpenAI output, read leniently ===

#[derive(Deserialize)]
struct OaiCompletion<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    choices: Option<Vec<OaiChoice<'a>>>,
    #[serde(default)]
    usage: Option<OaiUsage>,
}

#[derive(Deserialize)]
struct OaiChoice<'a> {
    #[serde(borrow, default)]
    message: Option<OaiMessageIn<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct OaiMessageIn<'a> {
    #[serde(borrow, default)]
    content: Option<StrOrSeq<'a, OaiTextPart<'a>>>,
    #[serde(borrow, default)]
    refusal: Option<Str<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<OaiToolCallIn<'a>>>,
}

#[derive(Deserialize)]
struct OaiTextPart<'a> {
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct OaiToolCallIn<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    function: Option<OaiFunctionIn<'a>>,
}

#[derive(Deserialize)]
struct OaiFunctionIn<'a> {
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Str<'a>>,
}

#[derive(Deserialize, Default)]
struct OaiUsage {
    #[serde(default, deserialize_with = "lenient_u64")]
    prompt_tokens: u64,
    #[serde(default, deserialize_with = "lenient_u64")]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<OaiPromptDetails>,
}

#[derive(Deserialize, Default)]
struct OaiPromptDetails {
    #[serde(default, deserialize_with = "lenient_u64")]
    cached_tokens: u64,
    #[serde(default, deserialize_with = "lenient_u64")]
    cache_write_tokens: u64,
}

/// A token count: null, negative or non-numeric counts read as 0.
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        .unwrap_or(0))
}

// === Anthropic output ===

/// Anthropic usage. `input_tokens` excludes cache reads and writes (the inverse of §3.3).
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
struct AUsage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
}

impl From<&OaiUsage> for AUsage {
    fn from(u: &OaiUsage) -> Self {
        let (cached, written) = u
            .prompt_tokens_details
            .as_ref()
            .map_or((0, 0), |d| (d.cached_tokens, d.cache_write_tokens));
        AUsage {
            input_tokens: u
                .prompt_tokens
                .saturating_sub(cached)
                .saturating_sub(written),
            cache_creation_input_tokens: written,
            cache_read_input_tokens: cached,
            output_tokens: u.completion_tokens,
        }
    }
}

#[derive(Serialize)]
struct AMessageOut<'r> {
    id: &'r str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'r str,
    content: Vec<AContent<'r>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<()>,
    usage: AUsage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AContent<'r> {
    Text {
        text: &'r str,
    },
    ToolUse {
        id: &'r str,
        name: &'r str,
        input: Input<'r>,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum Input<'r> {
    Raw(&'r RawValue),
    Empty(Empty),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'r> {
    MessageStart {
        message: AMessageOut<'r>,
    },
    ContentBlockStart {
        index: u32,
        content_block: AContent<'r>,
    },
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta<'r>,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: StopDelta,
        usage: AUsage,
    },
    MessageStop,
    Error {
        error: AError<'r>,
    },
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::MessageStart { .. } => "message_start",
            Event::ContentBlockStart { .. } => "content_block_start",
            Event::ContentBlockDelta { .. } => "content_block_delta",
            Event::ContentBlockStop { .. } => "content_block_stop",
            Event::MessageDelta { .. } => "message_delta",
            Event::MessageStop => "message_stop",
            Event::Error { .. } => "error",
        }
    }

    /// `event: <name>\ndata: <json>\n\n`.
    fn write(&self, out: &mut BytesMut) {
        out.put_slice(b"event: ");
        out.put_slice(self.name().as_bytes());
        out.put_slice(b"\ndata: ");
        // Plain structs with string keys: serializing cannot fail.
        let _ = serde_json::to_writer(out.writer(), self);
        out.put_slice(b"\n\n");
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta<'r> {
    TextDelta { text: &'r str },
    InputJsonDelta { partial_json: &'r str },
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct AError<'r> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'r str,
}

/// OpenAI `finish_reason` -> Anthropic `stop_reason` (§0.5 backwards). Some OpenAI-compatible
/// servers finish a tool-calling message with `stop`; Anthropic clients run tools on `tool_use`.
fn stop_reason(finish_reason: Option<&str>, has_tool_calls: bool) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ if has_tool_calls => "tool_use",
        _ => "end_turn",
    }
}

/// Anthropic message ids start with `msg_`; others get the prefix, a missing one is minted.
fn message_id(id: Option<&str>) -> String {
    match id {
        Some(id) if id.starts_with("msg_") => id.to_owned(),
        Some(id) if !id.is_empty() => format!("msg_{id}"),
        _ => mint_id("msg_"),
    }
}

fn mint_id(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 24);
    s.push_str(prefix);
    s.extend(std::iter::repeat_with(fastrand::alphanumeric).take(24));
    s
}

/// Parses tool-call arguments as the `input` object; anything else is `{}`.
fn tool_input(arguments: &str) -> Input<'_> {
    serde_json::from_str::<&RawValue>(arguments)
        .ok()
        .filter(|v| v.get().starts_with('{'))
        .map_or(Input::Empty(Empty {}), Input::Raw)
}

/// Translates an OpenAI `chat.completion` body into an Anthropic message, naming `model`.
/// `Err` says why the body could not be read.
pub fn message_from_completion(oai: &[u8], model: &str) -> Result<Vec<u8>, String> {
    let resp: OaiCompletion = serde_json::from_slice(oai.trim_ascii_start())
        .map_err(|e| format!("malformed chat.completion body: {e}"))?;
    let choice = resp
        .choices
        .and_then(|c| c.into_iter().next())
        .ok_or_else(|| "chat.completion body has no choices".to_owned())?;
    let message = choice.message;
    let (text, refusal, calls) = match message {
        Some(m) => (m.content, m.refusal, m.tool_calls.unwrap_or_default()),
        None => (None, None, Vec::new()),
    };
    let text: Cow<str> = match text {
        None => Cow::Borrowed(""),
        Some(StrOrSeq::Str(s)) => s,
        Some(StrOrSeq::Seq(parts)) => Cow::Owned(
            parts
                .iter()
                .filter_map(|p| p.text.as_ref().map(|t| t.0.as_ref()))
                .collect(),
        ),
    };
    let text = if text.is_empty() {
        refusal.map_or(text, |r| r.0)
    } else {
        text
    };

    struct Call<'a> {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        arguments: Cow<'a, str>,
    }
    let calls: Vec<Call> = calls
        .into_iter()
        .map(|c| {
            let (name, arguments) = match c.function {
                Some(f) => (f.name.map(|n| n.0), f.arguments.map(|a| a.0)),
                None => (None, None),
            };
            Call {
                id: c
                    .id
                    .map(|i| i.0)
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| Cow::Owned(mint_id("toolu_"))),
                name: name.unwrap_or_default(),
                arguments: arguments.unwrap_or_default(),
            }
        })
        .collect();

    let mut content = Vec::with_capacity(calls.len() + 1);
    if !text.is_empty() {
        content.push(AContent::Text { text: &text });
    }
    for c in &calls {
        content.push(AContent::ToolUse {
            id: &c.id,
            name: &c.name,
            input: tool_input(&c.arguments),
        });
    }
    let finish_reason = choice.finish_reason.as_ref().map(|f| f.0.as_ref());
    let id = message_id(resp.id.as_ref().map(|i| i.0.as_ref()));
    let out = AMessageOut {
        id: &id,
        kind: "message",
        role: "assistant",
        model,
        content,
        stop_reason: Some(stop_reason(finish_reason, !calls.is_empty())),
        stop_sequence: None,
        usage: resp.usage.as_ref().map(AUsage::from).unwrap_or_default(),
    };
    serde_json::to_vec(&out).map_err(|e| e.to_string())
}

/// Anthropic `error.type` for an HTTP status (§3.5).
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// An Anthropic error body: `{"type":"error","error":{"type","message"}}`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    let ev = Event::Error {
        error: AError {
            kind: error_type_for_status(status),
            message,
        },
    };
    serde_json::to_vec(&ev).unwrap_or_default()
}

// === stream: OpenAI chunks -> Anthropic events ===

#[derive(Deserialize)]
struct ChunkIn<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    choices: Option<Vec<ChunkChoice<'a>>>,
    #[serde(default)]
    usage: Option<OaiUsage>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<ChunkDelta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ChunkDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Str<'a>>,
    #[serde(borrow, default)]
    refusal: Option<Str<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallChunk<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallChunk<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    function: Option<OaiFunctionIn<'a>>,
}

#[derive(Deserialize, Default)]
struct ErrorIn<'a> {
    #[serde(borrow, default)]
    message: Option<Str<'a>>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

/// Anthropic `error.type` for an OpenAI-shaped stream error: the gateway's codes first
/// (`upstream_overloaded`, ...), then a numeric code as an HTTP status, then `type`.
fn stream_error_type(kind: Option<&str>, code: Option<&serde_json::Value>) -> &'static str {
    let status = code.and_then(|c| {
        c.as_u64()
            .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
    });
    if let Some(status) = status.and_then(|s| u16::try_from(s).ok()) {
        if (400..600).contains(&status) {
            return error_type_for_status(status);
        }
    }
    match code.and_then(|c| c.as_str()) {
        Some("rate_limit_exceeded" | "upstream_rate_limited" | "rate_limited") => {
            return "rate_limit_error"
        }
        Some("upstream_overloaded" | "overloaded" | "overloaded_error") => {
            return "overloaded_error"
        }
        Some("upstream_timeout" | "timeout") => return "timeout_error",
        Some("insufficient_quota") => return "billing_error",
        _ => {}
    }
    match kind {
        Some("rate_limit_error" | "requests" | "tokens") => "rate_limit_error",
        Some("overloaded_error") => "overloaded_error",
        Some("timeout_error") => "timeout_error",
        Some("invalid_request_error") => "invalid_request_error",
        Some("authentication_error") => "authentication_error",
        Some("permission_error") => "permission_error",
        Some("not_found_error") => "not_found_error",
        Some("insufficient_quota" | "billing_error") => "billing_error",
        // server_error and anything unknown
        _ => "api_error",
    }
}

/// The content block being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text { index: u32 },
    Tool { index: u32 },
}

impl Open {
    fn index(self) -> u32 {
        match self {
            Open::Text { index } | Open::Tool { index } => index,
        }
    }
}

/// Turns the gateway's OpenAI SSE output into Anthropic's named events (§3.4):
/// `message_start`, per block `content_block_start`/`_delta`*/`_stop`, `message_delta` (stop
/// reason and usage), `message_stop`; or an `error` event, after which nothing is written.
#[derive(Debug)]
pub struct StreamToAnthropic {
    model: String,
    decoder: SseDecoder,
    started: bool,
    open: Option<Open>,
    /// Index of the next content block.
    next_index: u32,
    /// (OpenAI tool-call index, Anthropic block index) of every call started.
    tool_blocks: Vec<(u32, u32)>,
    /// The OpenAI index of the call that got the last fragment (for fragments without `index`).
    last_call: Option<u32>,
    finish_reason: Option<&'static str>,
    usage: Option<AUsage>,
    /// `message_delta` was written: no more content.
    delta_sent: bool,
    /// `message_stop` or `error` was written: nothing more at all.
    ended: bool,
}

impl StreamToAnthropic {
    /// `model` is named in `message_start`.
    pub fn new(model: &str) -> Self {
        StreamToAnthropic {
            model: model.to_owned(),
            decoder: SseDecoder::new(),
            started: false,
            open: None,
            next_index: 0,
            tool_blocks: Vec::new(),
            last_call: None,
            finish_reason: None,
            usage: None,
            delta_sent: false,
            ended: false,
        }
    }

    /// Takes OpenAI SSE bytes as the gateway emits them (events may be split across calls or
    /// several to a call) and writes the Anthropic events they complete.
    pub fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) {
        if self.ended {
            return;
        }
        self.decoder.feed(chunk);
        self.drain(out);
    }

    /// The OpenAI side ended. A stream that got its finish is completed (`message_delta`,
    /// `message_stop`); one cut before it ends with an `error` event.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        // An event whose blank line never came still counts (a cut-off one is invalid JSON).
        self.decoder.feed(b"\n\n");
        self.drain(out);
        if self.ended {
            return;
        }
        if self.finish_reason.is_some() {
            self.complete(out);
        } else {
            self.fail(
                out,
                "api_error",
                "the upstream response ended before it was complete",
            );
        }
    }

    /// `message_stop` or `error` has been written.
    pub fn is_done(&self) -> bool {
        self.ended
    }

    fn drain(&mut self, out: &mut BytesMut) {
        while !self.ended {
            match self.decoder.next_event() {
                Ok(Some(ev)) => self.on_data(&ev.data, out),
                Ok(None) => break,
                Err(e) => self.fail(out, "api_error", &e.to_string()),
            }
        }
    }

    fn on_data(&mut self, data: &[u8], out: &mut BytesMut) {
        if data.trim_ascii() == b"[DONE]" {
            self.complete(out);
            return;
        }
        // The gateway writes valid chunks; anything else is skipped, not fatal.
        let Ok(chunk) = serde_json::from_slice::<ChunkIn>(data) else {
            return;
        };
        if let Some(raw) = chunk.error {
            let err = match serde_json::from_str::<Str>(raw.get()) {
                Ok(message) => ErrorIn {
                    message: Some(message),
                    ..ErrorIn::default()
                },
                Err(_) => serde_json::from_str(raw.get()).unwrap_or_default(),
            };
            let kind =
                stream_error_type(err.kind.as_ref().map(|k| k.0.as_ref()), err.code.as_ref());
            let message = err
                .message
                .as_ref()
                .map_or("upstream error", |m| m.0.as_ref());
            self.fail(out, kind, message);
            return;
        }
        self.start(chunk.id.as_ref().map(|i| i.0.as_ref()), out);
        if let Some(choice) = chunk.choices.and_then(|c| c.into_iter().next()) {
            if let (Some(delta), false) = (choice.delta, self.delta_sent) {
                let text = delta.content.or(delta.refusal);
                if let Some(text) = text {
                    self.text(&text.0, out);
                }
                for call in delta.tool_calls.unwrap_or_default() {
                    self.tool_call(call, out);
                }
            }
            if let (Some(reason), None) = (choice.finish_reason, self.finish_reason) {
                self.finish_reason = Some(match reason.0.as_ref() {
                    "length" => "length",
                    "tool_calls" | "function_call" => "tool_calls",
                    "content_filter" => "content_filter",
                    _ => "stop",
                });
                self.close(out);
            }
        }
        if let Some(usage) = &chunk.usage {
            self.usage = Some(AUsage::from(usage));
        }
        if self.finish_reason.is_some() && self.usage.is_some() && !self.delta_sent {
            self.message_delta(out);
        }
    }

    fn start(&mut self, id: Option<&str>, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let id = message_id(id);
        Event::MessageStart {
            message: AMessageOut {
                id: &id,
                kind: "message",
                role: "assistant",
                model: &self.model,
                content: Vec::new(),
                stop_reason: None,
                stop_sequence: None,
                // The real counts come in message_delta.
                usage: AUsage::default(),
            },
        }
        .write(out);
    }

    fn open_block(&mut self, open: impl FnOnce(u32) -> Open, out: &mut BytesMut) -> u32 {
        self.close(out);
        let index = self.next_index;
        self.next_index = self.next_index.saturating_add(1);
        self.open = Some(open(index));
        index
    }

    fn close(&mut self, out: &mut BytesMut) {
        if let Some(open) = self.open.take() {
            Event::ContentBlockStop {
                index: open.index(),
            }
            .write(out);
        }
    }

    fn text(&mut self, text: &str, out: &mut BytesMut) {
        if text.is_empty() {
            return;
        }
        let index = match self.open {
            Some(Open::Text { index }) => index,
            _ => {
                let index = self.open_block(|index| Open::Text { index }, out);
                Event::ContentBlockStart {
                    index,
                    content_block: AContent::Text { text: "" },
                }
                .write(out);
                index
            }
        };
        Event::ContentBlockDelta {
            index,
            delta: BlockDelta::TextDelta { text },
        }
        .write(out);
    }

    fn tool_call(&mut self, call: ToolCallChunk<'_>, out: &mut BytesMut) {
        // A fragment without `index` continues the last call, unless it names a new one.
        let ordinal = call
            .index
            .unwrap_or_else(|| match (&call.id, self.last_call) {
                (None, Some(last)) => last,
                _ => u32::try_from(self.tool_blocks.len()).unwrap_or(u32::MAX),
            });
        self.last_call = Some(ordinal);
        let (name, arguments) = match call.function {
            Some(f) => (f.name, f.arguments),
            None => (None, None),
        };
        let known = self
            .tool_blocks
            .iter()
            .find(|(o, _)| *o == ordinal)
            .copied();
        let index = match known {
            // OpenAI sends each call's fragments together; should a late fragment come for a
            // call already closed, it still goes to that call's block rather than being lost.
            Some((_, index)) => index,
            None => {
                let index = self.open_block(|index| Open::Tool { index }, out);
                self.tool_blocks.push((ordinal, index));
                let id = call
                    .id
                    .map(|i| i.0)
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| Cow::Owned(mint_id("toolu_")));
                Event::ContentBlockStart {
                    index,
                    content_block: AContent::ToolUse {
                        id: &id,
                        name: name.as_ref().map_or("", |n| n.0.as_ref()),
                        input: Input::Empty(Empty {}),
                    },
                }
                .write(out);
                index
            }
        };
        if let Some(args) = arguments.filter(|a| !a.0.is_empty()) {
            Event::ContentBlockDelta {
                index,
                delta: BlockDelta::InputJsonDelta {
                    partial_json: &args.0,
                },
            }
            .write(out);
        }
    }

    fn message_delta(&mut self, out: &mut BytesMut) {
        self.close(out);
        self.delta_sent = true;
        Event::MessageDelta {
            delta: StopDelta {
                stop_reason: stop_reason(self.finish_reason, !self.tool_blocks.is_empty()),
                stop_sequence: None,
            },
            usage: self.usage.unwrap_or_default(),
        }
        .write(out);
    }

    /// `[DONE]`: whatever is still missing, then `message_stop`.
    fn complete(&mut self, out: &mut BytesMut) {
        self.start(None, out);
        if !self.delta_sent {
            self.message_delta(out);
        }
        Event::MessageStop.write(out);
        self.ended = true;
    }

    fn fail(&mut self, out: &mut BytesMut, kind: &'static str, message: &str) {
        Event::Error {
            error: AError { kind, message },
        }
        .write(out);
        self.ended = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::oai::{ChunkWriter, Delta, Usage};
    use crate::providers::request::{ChatBody, ChatRequest};
    use bytes::Bytes;
    use serde_json::{json, Value};

    /// Translates `req` and checks the result is a request the chat pipeline accepts.
    fn oai(req: &str) -> (Value, Inbound) {
        let inbound = to_openai(req.as_bytes()).expect("valid Anthropic request");
        ChatBody::parse(Bytes::copy_from_slice(&inbound.body))
            .expect("the OpenAI body passes the gateway's own validation");
        let v = serde_json::from_slice(&inbound.body).expect("JSON body");
        (v, inbound)
    }

    fn rejected(req: &str) -> (String, Option<String>) {
        match to_openai(req.as_bytes()) {
            Err(GatewayError::BadRequest { message, param, .. }) => (message, param),
            other => panic!("expected a 400 for {req}, got {other:?}"),
        }
    }

    const C1_OAI: &str = r#"{"model":"<alias>","messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"Say hello."}],"temperature":0.2,"max_tokens":64,"stop":["END"],"user":"u-123"}"#;
    const C2_OAI: &str = r#"{"model":"<alias>","messages":[{"role":"user","content":"What's the weather in Paris?"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Get current weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],"tool_choice":"auto","max_tokens":256}"#;
    const C1_ANTH: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"system":"You are a terse assistant.","messages":[{"role":"user","content":"Say hello."}],"temperature":0.2,"stop_sequences":["END"],"metadata":{"user_id":"u-123"},"stream":true}"#;
    const C2_ANTH: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":[{"type":"text","text":"What's the weather in Paris?"}]}],"tools":[{"name":"get_weather","description":"Get current weather for a city","input_schema":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}],"tool_choice":{"type":"auto"}}"#;

    fn expected(oai_json: &str, model: &str) -> Value {
        let mut v: Value = serde_json::from_str(oai_json).expect("vector");
        v["model"] = json!(model);
        v
    }

    #[test]
    fn c1_anthropic_request_becomes_c1_streaming_with_usage() {
        let (got, inbound) = oai(C1_ANTH);
        let mut want = expected(C1_OAI, "claude-sonnet-4-5");
        want["stream"] = json!(true);
        want["stream_options"] = json!({"include_usage": true});
        assert_eq!(got, want);
        assert!(inbound.stream);
        assert_eq!(inbound.model, "claude-sonnet-4-5");
    }

    #[test]
    fn c2_anthropic_request_becomes_c2() {
        let (got, inbound) = oai(C2_ANTH);
        assert_eq!(got, expected(C2_OAI, "claude-sonnet-4-5"));
        assert!(!inbound.stream);
    }

    #[test]
    fn openai_to_anthropic_and_back_is_the_identity_for_c1_and_c2() {
        for vector in [C1_OAI, C2_OAI] {
            let body = ChatBody::parse(Bytes::from_static(vector.as_bytes())).expect("valid");
            let req = ChatRequest::from_body(&body).expect("typed");
            let anth = crate::providers::anthropic::build_request(&req, "claude-x", 4096)
                .expect("expressible");
            let (got, _) = oai(std::str::from_utf8(&anth).expect("utf8"));
            assert_eq!(got, expected(vector, "claude-x"));
        }
    }

    #[test]
    fn tool_results_come_before_the_rest_of_the_user_turn() {
        let req = r#"{"model":"m","max_tokens":100,"messages":[
            {"role":"user","content":"Weather in Paris and Rome?"},
            {"role":"assistant","content":[
                {"type":"thinking","thinking":"two calls","signature":"sig"},
                {"type":"text","text":"Checking."},
                {"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}},
                {"type":"tool_use","id":"toolu_2","name":"get_weather","input":{}}]},
            {"role":"user","content":[
                {"type":"text","text":"Here you go."},
                {"type":"tool_result","tool_use_id":"toolu_1","content":"18C"},
                {"type":"tool_result","tool_use_id":"toolu_2","is_error":true,
                 "content":[{"type":"text","text":"city missing"},{"type":"text","text":"try again"}]},
                {"type":"text","text":"Thanks."}]},
            {"role":"assistant","content":[{"type":"redacted_thinking","data":"xyz"}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_3"}]}]}"#;
        let (got, _) = oai(req);
        assert_eq!(
            got["messages"],
            json!([
                {"role":"user","content":"Weather in Paris and Rome?"},
                {"role":"assistant","content":"Checking.","tool_calls":[
                    {"id":"toolu_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                    {"id":"toolu_2","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"toolu_1","content":"18C"},
                {"role":"tool","tool_call_id":"toolu_2","content":"city missing\ntry again"},
                {"role":"user","content":[{"type":"text","text":"Here you go."},{"type":"text","text":"Thanks."}]},
                // The assistant turn holding only thinking is gone.
                {"role":"tool","tool_call_id":"toolu_3","content":""}
            ])
        );
    }

    #[test]
    fn an_assistant_turn_that_only_calls_tools_has_null_content() {
        let req = r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"x"},
            {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{"a":[1,2]}}]}]}"#;
        let (got, _) = oai(req);
        assert_eq!(
            got["messages"][1],
            json!({"role":"assistant","content":null,"tool_calls":[{"id":"t1","type":"function","function":{"name":"f","arguments":"{\"a\":[1,2]}"}}]})
        );
    }

    #[test]
    fn images_become_data_urls_and_http_urls() {
        let req = r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":[
            {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},
            {"type":"image","source":{"type":"url","url":"https://example.com/cat.jpg"}},
            {"type":"text","text":"What are these?"}]},
            {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"screenshot","input":{}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[
                {"type":"text","text":"done"},
                {"type":"image","source":{"type":"base64","media_type":"image/jpeg","data":"/9j/4AAQ"}}]}]}]}"#;
        let (got, _) = oai(req);
        assert_eq!(
            got["messages"][0]["content"],
            json!([
                {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},
                {"type":"image_url","image_url":{"url":"https://example.com/cat.jpg"}},
                {"type":"text","text":"What are these?"}
            ])
        );
        // A tool message carries only text: the image it returned follows in a user message.
        assert_eq!(
            got["messages"][2],
            json!({"role":"tool","tool_call_id":"t1","content":"done"})
        );
        assert_eq!(
            got["messages"][3],
            json!({"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,/9j/4AAQ"}}]})
        );
    }

    #[test]
    fn system_blocks_tools_tool_choice_and_sampling_fields_map() {
        let req = r#"{"model":"m","max_tokens":10,"top_k":5,"top_p":0.9,"thinking":{"type":"enabled","budget_tokens":2000},
            "system":[{"type":"text","text":"A","cache_control":{"type":"ephemeral"}},{"type":"text","text":"B"}],
            "messages":[{"role":"user","content":"x"}],
            "tools":[{"name":"f","input_schema":{"type":"object"}},{"type":"custom","name":"g","description":"G"},{"name":"h","input_schema":{}}],
            "tool_choice":{"type":"tool","name":"g","disable_parallel_tool_use":true},
            "metadata":{"user_id":null},"stream":false}"#;
        let (got, _) = oai(req);
        assert_eq!(
            got,
            json!({"model":"m","max_tokens":10,"top_p":0.9,
                "messages":[{"role":"system","content":[{"type":"text","text":"A"},{"type":"text","text":"B"}]},{"role":"user","content":"x"}],
                "tools":[
                    {"type":"function","function":{"name":"f","parameters":{"type":"object"}}},
                    {"type":"function","function":{"name":"g","description":"G","parameters":{"type":"object","properties":{}}}},
                    {"type":"function","function":{"name":"h","parameters":{}}}],
                "tool_choice":{"type":"function","function":{"name":"g"}},
                "parallel_tool_calls":false})
        );
        let choice = |c: &str| {
            let req = format!(
                r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"user","content":"x"}}],"tools":[{{"name":"f","input_schema":{{"type":"object"}}}}],"tool_choice":{c}}}"#
            );
            oai(&req).0["tool_choice"].clone()
        };
        assert_eq!(choice(r#"{"type":"auto"}"#), "auto");
        assert_eq!(choice(r#"{"type":"any"}"#), "required");
        assert_eq!(choice(r#"{"type":"none"}"#), "none");
        // Without tools, tool_choice means nothing and OpenAI would refuse it.
        let (got, _) = oai(
            r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"any","disable_parallel_tool_use":true}}"#,
        );
        assert!(got.get("tool_choice").is_none() && got.get("parallel_tool_calls").is_none());
    }

    #[test]
    fn invalid_requests_are_400s_naming_the_anthropic_field() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
                "max_tokens",
            ),
            (
                r#"{"max_tokens":1,"messages":[{"role":"user","content":"x"}]}"#,
                "model",
            ),
            (r#"{"model":"m","max_tokens":1}"#, "messages"),
            (r#"{"model":"m","max_tokens":1,"messages":[]}"#, "messages"),
            (
                r#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","max_tokens":"9","messages":[{"role":"user","content":"x"}]}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"system","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y"},{"role":"user","content":[{"type":"document","source":{}}]}]}"#,
                "messages[2].content[0].type",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"text","text":"x"},{"type":"tool_use","id":"a","name":"b","input":{}}]}]}"#,
                "messages[0].content[1].type",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"text","text":7}]}]}"#,
                "messages[0].content[0].text",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png"}}]}]}"#,
                "messages[0].content[0].source.data",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"file","file_id":"f"}}]}]}"#,
                "messages[0].content[0].source.type",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":1}]}]}]}"#,
                "messages[0].content[0].content[0].text",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_result","content":"x"}]}]}"#,
                "messages[0].content[0].tool_use_id",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":[1]}]}]}"#,
                "messages[0].content[0].input",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search_20250305","name":"web_search"}]}"#,
                "tools[0].type",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tools":[{"input_schema":{}}]}"#,
                "tools[0].name",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"tool"}}"#,
                "tool_choice.name",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"some"}}"#,
                "tool_choice.type",
            ),
            (
                r#"{"model":"m","max_tokens":1,"system":[{"type":"image"}],"messages":[{"role":"user","content":"x"}]}"#,
                "system[0].type",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"t"}]}]}"#,
                "messages",
            ),
        ];
        for (req, param) in cases {
            let (message, got) = rejected(req);
            assert_eq!(got.as_deref(), Some(*param), "{req}: {message}");
            assert!(message.starts_with(param), "{message}");
        }
        let (message, param) = rejected(
            r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}]} x"#,
        );
        assert!(
            message.starts_with("request body is not valid JSON"),
            "{message}"
        );
        assert_eq!(param, None);
        let (_, param) = rejected("[1]");
        assert_eq!(param, None);
    }

    // === responses ===

    #[test]
    fn completion_with_a_tool_call_becomes_a_tool_use_message() {
        let oai = br#"{"id":"chatcmpl-9","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Let me check.","tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}},{"id":"call_2","type":"function","function":{"name":"noop","arguments":"not json"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":412,"completion_tokens":58,"total_tokens":470,"prompt_tokens_details":{"cached_tokens":400}}}"#;
        let msg = message_from_completion(oai, "claude-sonnet-4-5").expect("translates");
        let got: Value = serde_json::from_slice(&msg).expect("json");
        assert_eq!(
            got,
            json!({"id":"msg_chatcmpl-9","type":"message","role":"assistant","model":"claude-sonnet-4-5",
                "content":[
                    {"type":"text","text":"Let me check."},
                    {"type":"tool_use","id":"call_1","name":"get_weather","input":{"city":"Paris"}},
                    {"type":"tool_use","id":"call_2","name":"noop","input":{}}],
                "stop_reason":"tool_use","stop_sequence":null,
                "usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":400,"output_tokens":58}})
        );
    }

    #[test]
    fn completion_text_ids_stop_reasons_and_cached_usage() {
        // providers.md §9.1, non-streaming.
        let oai = br#"{"id":"chatcmpl-GwVec0001","object":"chat.completion","created":1735689600,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1045,"completion_tokens":3,"total_tokens":1048,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_gwvec01"}"#;
        let got: Value =
            serde_json::from_slice(&message_from_completion(oai, "m").expect("ok")).expect("json");
        assert_eq!(got["id"], "msg_chatcmpl-GwVec0001");
        assert_eq!(got["content"], json!([{"type":"text","text":"Hello."}]));
        assert_eq!(got["stop_reason"], "end_turn");
        assert_eq!(
            got["usage"],
            json!({"input_tokens":21,"cache_creation_input_tokens":0,"cache_read_input_tokens":1024,"output_tokens":3})
        );

        let with = |finish: &str, extra: &str| -> Value {
            let body = format!(
                r#"{{"id":"msg_01X","choices":[{{"message":{{"role":"assistant","content":"","tool_calls":null}},"finish_reason":{finish}}}]{extra}}}"#
            );
            serde_json::from_slice(&message_from_completion(body.as_bytes(), "m").expect("ok"))
                .expect("json")
        };
        let v = with(r#""length""#, "");
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(v["id"], "msg_01X", "an Anthropic id is kept");
        assert_eq!(v["content"], json!([]), "no empty text block");
        assert_eq!(
            v["usage"],
            json!({"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0})
        );
        assert_eq!(with(r#""content_filter""#, "")["stop_reason"], "refusal");
        assert_eq!(with("null", "")["stop_reason"], "end_turn");
        // Cache writes are part of prompt_tokens (§3.3) and not of Anthropic's input_tokens.
        let v = with(
            r#""stop""#,
            r#","usage":{"prompt_tokens":500,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":400,"cache_write_tokens":50}}"#,
        );
        assert_eq!(
            v["usage"],
            json!({"input_tokens":50,"cache_creation_input_tokens":50,"cache_read_input_tokens":400,"output_tokens":7})
        );

        assert!(message_from_completion(b"not json", "m").is_err());
        assert!(message_from_completion(br#"{"choices":[]}"#, "m").is_err());
        let minted: Value = serde_json::from_slice(
            &message_from_completion(br#"{"choices":[{"message":{"content":"hi"}}]}"#, "m")
                .expect("ok"),
        )
        .expect("json");
        assert!(minted["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("msg_") && id.len() == 28));
    }

    #[test]
    fn error_bodies_follow_the_status_table() {
        let table = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (402, "billing_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (408, "invalid_request_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
            (504, "timeout_error"),
        ];
        for (status, kind) in table {
            let v: Value = serde_json::from_slice(&error_body(status, "boom \"x\"")).expect("json");
            assert_eq!(
                v,
                json!({"type":"error","error":{"type":kind,"message":"boom \"x\""}}),
                "{status}"
            );
        }
    }

    // === streams ===

    fn run(parts: &[&[u8]]) -> String {
        let mut t = StreamToAnthropic::new("claude-sonnet-4-5");
        let mut out = BytesMut::new();
        for p in parts {
            t.feed(p, &mut out);
        }
        t.finish(&mut out);
        assert!(t.is_done());
        String::from_utf8(out.to_vec()).expect("utf8")
    }

    fn events(s: &str) -> Vec<(String, Value)> {
        s.split_terminator("\n\n")
            .map(|e| {
                let (name, data) = e
                    .strip_prefix("event: ")
                    .and_then(|e| e.split_once("\ndata: "))
                    .expect("event: and data: lines");
                (
                    name.to_owned(),
                    serde_json::from_str(data).expect("json data"),
                )
            })
            .collect()
    }

    /// The gateway's text stream for C1 (what `oai::ChunkWriter` writes), with cached tokens.
    fn text_stream() -> Vec<u8> {
        let w = ChunkWriter {
            id: "chatcmpl-GwVec0003".into(),
            created: 1735689601,
            model: "gpt-4o-mini-2024-07-18".into(),
            include_usage: true,
        };
        let mut out = BytesMut::new();
        w.delta(
            &mut out,
            Delta {
                role: true,
                content: Some(""),
                ..Delta::default()
            },
        );
        for piece in ["Hel", "lo."] {
            w.delta(
                &mut out,
                Delta {
                    content: Some(piece),
                    ..Delta::default()
                },
            );
        }
        w.finish(&mut out, "stop");
        w.end(
            &mut out,
            &Usage {
                prompt_tokens: 1045,
                completion_tokens: 3,
                cached_tokens: 1024,
                ..Usage::default()
            },
        );
        out.to_vec()
    }

    /// providers.md §9.1, streaming (C2).
    const TOOL_STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-GwVec0002\",\"object\":\"chat.completion.chunk\",\"created\":1735689601,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_GwVecTool0001\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-GwVec0002\",\"object\":\"chat.completion.chunk\",\"created\":1735689601,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-GwVec0002\",\"object\":\"chat.completion.chunk\",\"created\":1735689601,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-GwVec0002\",\"object\":\"chat.completion.chunk\",\"created\":1735689601,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-GwVec0002\",\"object\":\"chat.completion.chunk\",\"created\":1735689601,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":62,\"completion_tokens\":15,\"total_tokens\":77,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );

    const TEXT_EVENTS: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_chatcmpl-GwVec0003\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":0,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":0}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo.\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":21,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":1024,\"output_tokens\":3}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    const TOOL_EVENTS: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_chatcmpl-GwVec0002\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":0,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":0}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"call_GwVecTool0001\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\":\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":62,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":15}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn text_stream_becomes_the_exact_anthropic_event_sequence() {
        assert_eq!(run(&[&text_stream()]), TEXT_EVENTS);
    }

    #[test]
    fn tool_stream_becomes_the_exact_anthropic_event_sequence() {
        assert_eq!(run(&[TOOL_STREAM.as_bytes()]), TOOL_EVENTS);
    }

    #[test]
    fn every_chunk_boundary_gives_the_same_output() {
        for (input, want) in [
            (text_stream(), TEXT_EVENTS),
            (TOOL_STREAM.as_bytes().to_vec(), TOOL_EVENTS),
        ] {
            for i in 0..=input.len() {
                assert_eq!(run(&[&input[..i], &input[i..]]), want, "split at {i}");
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(run(&bytes), want, "one byte at a time");
        }
    }

    #[test]
    fn text_then_several_tool_calls_get_one_block_each() {
        let c = |delta: &str, finish: &str| {
            format!("data: {{\"id\":\"x\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n")
        };
        let input = [
            c(r#"{"role":"assistant","content":""}"#, "null"),
            c(r#"{"content":"Checking both."}"#, "null"),
            c(r#"{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"f","arguments":""}}]}"#, "null"),
            c(r#"{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}"#, "null"),
            c(r#"{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"g","arguments":"{\"q\":1}"}}]}"#, "null"),
            c("{}", r#""tool_calls""#),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let got = events(&run(&[input.as_bytes()]));
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(got[0].1["message"]["id"], "msg_x");
        assert_eq!(
            got[4].1,
            json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_a","name":"f","input":{}}})
        );
        assert_eq!(
            got[8].1,
            json!({"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"q\":1}"}})
        );
        assert_eq!(got[9].1, json!({"type":"content_block_stop","index":2}));
        // No usage chunk came: message_delta at [DONE], with zero counts.
        assert_eq!(
            got[10].1,
            json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0}})
        );
    }

    #[test]
    fn an_error_event_mid_stream_ends_the_anthropic_stream() {
        let text = text_stream();
        let text = std::str::from_utf8(&text).expect("utf8");
        // Role and "Hel" chunks, then the gateway's error event, then anything at all.
        let head: String = text.split_inclusive("\n\n").take(2).collect();
        let err = "data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":\"upstream_overloaded\"}}\n\n";
        let out = run(&[head.as_bytes(), err.as_bytes(), b"data: [DONE]\n\n"]);
        let got = events(&out);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "error"
            ]
        );
        assert_eq!(
            got[3].1,
            json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}})
        );

        let kind = |error: &str| {
            let out = run(&[format!("data: {{\"error\":{error}}}\n\n").as_bytes()]);
            events(&out)[0].1["error"]["type"].clone()
        };
        assert_eq!(
            kind(r#"{"message":"m","type":"server_error","code":"upstream_error"}"#),
            "api_error"
        );
        assert_eq!(
            kind(r#"{"message":"m","type":"server_error","code":"upstream_rate_limited"}"#),
            "rate_limit_error"
        );
        assert_eq!(
            kind(r#"{"message":"m","type":"server_error","code":"upstream_timeout"}"#),
            "timeout_error"
        );
        assert_eq!(
            kind(r#"{"message":"m","type":"requests","code":"rate_limit_exceeded"}"#),
            "rate_limit_error"
        );
        assert_eq!(kind(r#"{"message":"m","code":529}"#), "overloaded_error");
        assert_eq!(kind(r#""plain text""#), "api_error");
    }

    #[test]
    fn a_stream_cut_before_its_finish_ends_with_an_error_event() {
        let text = text_stream();
        let text = std::str::from_utf8(&text).expect("utf8");
        let head: String = text.split_inclusive("\n\n").take(3).collect();
        let got = events(&run(&[head.as_bytes()]));
        assert_eq!(got.len(), 5);
        assert_eq!(got[4].0, "error");
        assert_eq!(got[4].1["error"]["type"], "api_error");
        // Nothing at all: just the error.
        let got = events(&run(&[]));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "error");
    }

    #[test]
    fn a_stream_that_finished_but_lost_its_done_is_completed() {
        let text = text_stream();
        let without_done = &text[..text.len() - b"data: [DONE]\n\n".len()];
        assert_eq!(run(&[without_done]), TEXT_EVENTS);
        // [DONE] without its blank line still counts.
        let unterminated = &text[..text.len() - 2];
        assert_eq!(run(&[unterminated]), TEXT_EVENTS);
    }

    #[test]
    fn invalid_and_unknown_events_are_skipped_and_nothing_follows_message_stop() {
        let input = [
            ": keep-alive\n\n",
            "data: {not json\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"h\\u00e9\"},\"finish_reason\":null}],\"usage\":null}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n",
            "data: [DONE]\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"late\"}}]}\n\n",
        ]
        .concat();
        let got = events(&run(&[input.as_bytes()]));
        assert_eq!(got.len(), 6);
        assert_eq!(got[2].1["delta"]["text"], "hé");
        assert_eq!(got[4].1["delta"]["stop_reason"], "max_tokens");
        assert_eq!(got[4].1["usage"]["input_tokens"], 5);
        assert_eq!(got[5].0, "message_stop");
    }
}
