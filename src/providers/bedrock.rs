//! The `bedrock` kind: OpenAI Chat Completions <-> AWS Bedrock Runtime Converse /
//! ConverseStream (providers.md §4): request mapping, the model path, SigV4 signing of a request
//! the caller assembled, the Converse response and errors back to OpenAI shape, and the binary
//! event stream (`application/vnd.amazon.eventstream`) turned into `SseEvent`s and then into
//! OpenAI chunks. Pure functions and state machines; no I/O.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign as sigv4_sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::event_stream::Message;
use bytes::{Buf, Bytes, BytesMut};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::oai::{ChunkWriter, Completion, Delta, RoleOnce, ToolCallDelta, ToolCallOut, Usage};
use super::request::{ChatRequest, Content, Message as ChatMessage, Part, Role, ToolChoice};
use super::sse::SseEvent;
use super::{
    is_context_window_message, status_error, truncate_message, Progress, RespMeta, TranslateError,
};
use crate::error::{ErrorClass, UpstreamError};
use crate::secret::Secret;

// === paths ===

/// Everything but RFC 3986 unreserved characters is escaped, so a model id or ARN stays one
/// path segment (`:` -> `%3A`, `/` -> `%2F`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encoded_model(model: &str) -> String {
    utf8_percent_encode(model, SEGMENT).to_string()
}

/// The request path for chat: `/model/<model>/converse` or `/model/<model>/converse-stream`.
pub fn path(model: &str, stream: bool) -> String {
    let op = if stream {
        "converse-stream"
    } else {
        "converse"
    };
    format!("/model/{}/{op}", encoded_model(model))
}

/// The InvokeModel path (`/model/<model>/invoke`), used for embeddings.
pub fn invoke_path(model: &str) -> String {
    format!("/model/{}/invoke", encoded_model(model))
}

// === request ===

/// The tool a `response_format` is forced through (providers.md §3.2, §4.4). Its input comes
/// back as the message content, so clients may not define a tool of that name.
pub const JSON_TOOL: &str = "json_tool_call";

/// Bedrock needs an input schema; a tool without parameters takes an empty object.
const EMPTY_SCHEMA: &str = r#"{"type":"object","properties":{}}"#;
/// The schema of the forced tool for `response_format: json_object`: any object.
const ANY_OBJECT_SCHEMA: &str = r#"{"type":"object"}"#;
const EMPTY_OBJECT: &str = "{}";
const JSON_TOOL_DESCRIPTION: &str = "Return the final answer as this tool's input.";

/// Bedrock needs the conversation to open with a user turn.
const OPENING_USER_TURN: &str = ".";

#[derive(Serialize)]
struct Request<'r> {
    messages: Vec<Msg<'r>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<SystemBlock<'r>>,
    #[serde(rename = "inferenceConfig")]
    inference_config: InferenceConfig<'r>,
    #[serde(rename = "toolConfig", skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'r>>,
}

#[derive(Serialize)]
struct SystemBlock<'r> {
    text: &'r str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig<'r> {
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'r str>,
}

#[derive(Serialize)]
struct Msg<'r> {
    role: &'static str,
    content: Vec<Block<'r>>,
}

/// A Converse content block: an object with exactly one key naming its kind.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Block<'r> {
    Text(&'r str),
    Image(Image<'r>),
    ToolUse(ToolUse<'r>),
    ToolResult(ToolResult<'r>),
}

#[derive(Serialize)]
struct Image<'r> {
    format: &'static str,
    source: ImageSource<'r>,
}

#[derive(Serialize)]
struct ImageSource<'r> {
    /// Base64 text, as the JSON protocol carries blobs.
    bytes: &'r str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolUse<'r> {
    tool_use_id: &'r str,
    name: &'r str,
    input: &'r RawValue,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolResult<'r> {
    tool_use_id: &'r str,
    content: Vec<Block<'r>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'r> {
    tools: Vec<ToolEntry<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<BToolChoice<'r>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolEntry<'r> {
    tool_spec: ToolSpec<'r>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolSpec<'r> {
    name: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'r str>,
    input_schema: InputSchema<'r>,
}

#[derive(Serialize)]
struct InputSchema<'r> {
    json: &'r RawValue,
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum BToolChoice<'r> {
    Auto(Empty),
    Any(Empty),
    Tool(Named<'r>),
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Named<'r> {
    name: &'r str,
}

/// `response_format.json_schema` as OpenAI defines it.
#[derive(Deserialize)]
struct JsonSchemaSpec<'a> {
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
}

/// Builds the Converse / ConverseStream body for `req`. The model is not part of the body (it is
/// in the path, see [`path`]), nor is `stream` (the path chooses).
pub fn build_request(
    req: &ChatRequest<'_>,
    upstream_model: &str,
    default_max_tokens: u32,
) -> Result<Vec<u8>, TranslateError> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(TranslateError::unsupported("n", "n > 1"));
    }
    if req.logprobs {
        return Err(TranslateError::unsupported("logprobs", "logprobs"));
    }
    for (i, t) in req.tools.iter().enumerate() {
        if t.function.name == JSON_TOOL {
            return Err(TranslateError::new(
                format!("tools[{i}].function.name"),
                format!("\"{JSON_TOOL}\" is reserved by the gateway on this provider"),
            ));
        }
    }
    let empty_schema = raw(EMPTY_SCHEMA)?;

    // The forced tool of a JSON response_format: (schema, description).
    let json_spec: Option<JsonSchemaSpec> = match &req.response_format {
        None => None,
        Some(rf) => match rf.kind.as_ref() {
            "text" => None,
            "json_object" => Some(JsonSchemaSpec {
                schema: Some(raw(ANY_OBJECT_SCHEMA)?),
                description: None,
            }),
            "json_schema" => {
                let spec = rf
                    .json_schema
                    .and_then(|r| serde_json::from_str::<JsonSchemaSpec>(r.get()).ok())
                    .filter(|s| s.schema.is_some())
                    .ok_or_else(|| {
                        TranslateError::new(
                            "response_format.json_schema.schema",
                            "a JSON schema is required",
                        )
                    })?;
                Some(spec)
            }
            _ => {
                return Err(TranslateError::unsupported(
                    "response_format.type",
                    "this response_format type",
                ))
            }
        },
    };
    if json_spec.is_some()
        && !req.tools.is_empty()
        && !matches!(req.tool_choice, Some(ToolChoice::None))
    {
        return Err(TranslateError::unsupported(
            "response_format",
            "response_format together with tools",
        ));
    }

    let mut system: Vec<SystemBlock> = Vec::new();
    let mut messages: Vec<Msg> = Vec::new();
    // Names of the tools the history calls, and whether it holds tool blocks at all: Bedrock
    // refuses toolUse/toolResult blocks without a toolConfig.
    let mut history_tools: Vec<&str> = Vec::new();
    let mut history_has_tools = false;
    for (i, m) in req.messages.iter().enumerate() {
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => {
                if let Some(c) = &m.content {
                    for text in text_parts(c) {
                        system.push(SystemBlock { text });
                    }
                }
                continue;
            }
            Role::User => ("user", user_blocks(i, m.content.as_ref(), "content")?),
            Role::Assistant => {
                let blocks = assistant_blocks(i, m)?;
                for b in &blocks {
                    if let Block::ToolUse(t) = b {
                        history_has_tools = true;
                        if !history_tools.contains(&t.name) {
                            history_tools.push(t.name);
                        }
                    }
                }
                ("assistant", blocks)
            }
            Role::Tool => {
                history_has_tools = true;
                let mut content = user_blocks(i, m.content.as_ref(), "content")?;
                if content.is_empty() {
                    content.push(Block::Text(""));
                }
                (
                    "user",
                    vec![Block::ToolResult(ToolResult {
                        tool_use_id: m.tool_call_id.as_deref().unwrap_or_default(),
                        content,
                    })],
                )
            }
            Role::Function => {
                return Err(TranslateError::unsupported(
                    format!("messages[{i}].role"),
                    "the legacy function role",
                ))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // Roles must alternate: consecutive turns of one role become one message.
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(Msg {
                role,
                content: blocks,
            }),
        }
    }
    if messages.is_empty() {
        return Err(TranslateError::new(
            "messages",
            "at least one user or assistant message with content is required",
        ));
    }
    if messages[0].role != "user" {
        messages.insert(
            0,
            Msg {
                role: "user",
                content: vec![Block::Text(OPENING_USER_TURN)],
            },
        );
    }
    // A final assistant turn (a prefill) may not end in whitespace.
    if let Some(last) = messages.last_mut().filter(|m| m.role == "assistant") {
        if let Some(Block::Text(t)) = last.content.last_mut() {
            *t = t.trim_end();
            if t.is_empty() && last.content.len() > 1 {
                last.content.pop();
            }
        }
    }

    let client_tools = || -> Vec<ToolEntry> {
        req.tools
            .iter()
            .map(|t| ToolEntry {
                tool_spec: ToolSpec {
                    name: &t.function.name,
                    description: t.function.description.as_deref(),
                    input_schema: InputSchema {
                        json: t.function.parameters.unwrap_or(empty_schema),
                    },
                },
            })
            .collect()
    };
    // The tools the history needs declared: the client's, else stand-ins named after the calls.
    let history_declarations = || -> Vec<ToolEntry> {
        if !req.tools.is_empty() {
            return client_tools();
        }
        history_tools
            .iter()
            .map(|name| ToolEntry {
                tool_spec: ToolSpec {
                    name,
                    description: None,
                    input_schema: InputSchema { json: empty_schema },
                },
            })
            .collect()
    };
    let tool_config = if let Some(spec) = &json_spec {
        let mut tools = if history_has_tools {
            history_declarations()
        } else {
            Vec::new()
        };
        tools.push(ToolEntry {
            tool_spec: ToolSpec {
                name: JSON_TOOL,
                description: Some(spec.description.as_deref().unwrap_or(JSON_TOOL_DESCRIPTION)),
                input_schema: InputSchema {
                    json: spec.schema.unwrap_or(empty_schema),
                },
            },
        });
        Some(ToolConfig {
            tools,
            tool_choice: Some(BToolChoice::Tool(Named { name: JSON_TOOL })),
        })
    } else if req.tools.is_empty() || matches!(req.tool_choice, Some(ToolChoice::None)) {
        // Converse has no "none": leave the tools out, unless the history needs them declared.
        let tools = if history_has_tools {
            history_declarations()
        } else {
            Vec::new()
        };
        (!tools.is_empty()).then_some(ToolConfig {
            tools,
            tool_choice: None,
        })
    } else {
        let tool_choice = match &req.tool_choice {
            None | Some(ToolChoice::None) => None,
            Some(ToolChoice::Auto) => Some(BToolChoice::Auto(Empty {})),
            Some(ToolChoice::Required) => Some(BToolChoice::Any(Empty {})),
            Some(ToolChoice::Function(name)) => Some(BToolChoice::Tool(Named { name })),
        };
        Some(ToolConfig {
            tools: client_tools(),
            tool_choice,
        })
    };

    // Converse's temperature range is 0-1 (OpenAI's is 0-2). Claude models on Bedrock refuse
    // temperature and top_p together (as on Anthropic's API): send temperature, or top_p alone.
    let temperature = req.temperature.map(|t| t.min(1.0));
    let top_p = if temperature.is_some() && upstream_model.contains("anthropic.") {
        None
    } else {
        req.top_p
    };
    let inference_config = InferenceConfig {
        max_tokens: req.max_tokens.unwrap_or(default_max_tokens),
        temperature,
        top_p,
        stop_sequences: req
            .stop
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| !s.trim().is_empty())
            .collect(),
    };

    let body = Request {
        messages,
        system,
        inference_config,
        tool_config,
    };
    serde_json::to_vec(&body).map_err(|e| TranslateError::new("", e.to_string()))
}

fn raw(s: &'static str) -> Result<&'static RawValue, TranslateError> {
    serde_json::from_str(s).map_err(|e| TranslateError::new("", e.to_string()))
}

/// The non-empty texts of a content value.
fn text_parts<'r>(c: &'r Content<'_>) -> Vec<&'r str> {
    match c {
        Content::Text(t) if !t.is_empty() => vec![t.as_ref()],
        Content::Text(_) => Vec::new(),
        Content::Parts(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Part::Text { text } if !text.is_empty() => Some(text.as_ref()),
                _ => None,
            })
            .collect(),
    }
}

/// Text and image blocks of a user (or tool result) content; empty texts are dropped.
fn user_blocks<'r>(
    i: usize,
    c: Option<&'r Content<'_>>,
    field: &str,
) -> Result<Vec<Block<'r>>, TranslateError> {
    Ok(match c {
        None => Vec::new(),
        Some(Content::Text(t)) if t.is_empty() => Vec::new(),
        Some(Content::Text(t)) => vec![Block::Text(t)],
        Some(Content::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let param = || format!("messages[{i}].{field}[{j}]");
                match p {
                    Part::Text { text } if text.is_empty() => {}
                    Part::Text { text } => blocks.push(Block::Text(text)),
                    Part::ImageUrl { image_url } => blocks
                        .push(Block::Image(image(&image_url.url, || {
                            format!("{}.image_url.url", param())
                        })?)),
                    Part::InputAudio { .. } => {
                        return Err(TranslateError::unsupported(param(), "input_audio parts"))
                    }
                    Part::File { .. } => {
                        return Err(TranslateError::unsupported(param(), "file parts"))
                    }
                }
            }
            blocks
        }
    })
}

/// An image block from a base64 data URL. Converse takes no image URLs and the gateway does not
/// fetch them (that would let clients make it request arbitrary addresses).
fn image<'r>(url: &'r str, param: impl Fn() -> String) -> Result<Image<'r>, TranslateError> {
    if url.starts_with("https://") || url.starts_with("http://") {
        return Err(TranslateError::unsupported(
            param(),
            "an image URL (send the image as a base64 data URL)",
        ));
    }
    let parsed = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(','))
        .and_then(|(meta, data)| {
            let format = match meta.strip_suffix(";base64")? {
                "image/png" => "png",
                "image/jpeg" | "image/jpg" => "jpeg",
                "image/gif" => "gif",
                "image/webp" => "webp",
                _ => return None,
            };
            Some(Image {
                format,
                source: ImageSource { bytes: data },
            })
        });
    parsed.ok_or_else(|| {
        TranslateError::new(
            param(),
            "must be a base64 data URL of a png, jpeg, gif or webp image",
        )
    })
}

fn assistant_blocks<'r>(
    i: usize,
    m: &'r ChatMessage<'_>,
) -> Result<Vec<Block<'r>>, TranslateError> {
    // Only text survives from assistant content (no images in assistant turns).
    let mut blocks: Vec<Block> = m
        .content
        .as_ref()
        .map(text_parts)
        .unwrap_or_default()
        .into_iter()
        .map(Block::Text)
        .collect();
    for (j, call) in m
        .tool_calls
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let input = super::tool_arguments(i, j, &call.function.arguments)?;
        blocks.push(Block::ToolUse(ToolUse {
            tool_use_id: &call.id,
            name: &call.function.name,
            input,
        }));
    }
    Ok(blocks)
}

// === SigV4 ===

/// Long-term or temporary AWS credentials for SigV4.
#[derive(Debug, Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// Signs a `POST` of `body` to `url` (absolute, path already percent-encoded as [`path`] makes
/// it) for the `bedrock` service in `region`, at `time`. `headers` are the other headers the
/// request will carry (`content-type`, optionally `host`); they are signed. Returns the headers to
/// add: `authorization`, `x-amz-date` and, with a session token, `x-amz-security-token` (whose
/// value is secret). Any of those three in `headers` is ignored: the returned ones replace them.
/// Error messages never contain the secret key or the session token.
pub fn sign(
    creds: &AwsCredentials,
    region: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>, String> {
    // aws-sigv4 panics on a URL without a host (when no host header is given) and on times its
    // calendar cannot represent; refuse both here.
    if !has_host(url) {
        return Err("SigV4: the URL must be absolute (http or https, with a host)".to_owned());
    }
    const YEAR_9999_END: u64 = 253_402_300_799;
    if time
        .duration_since(UNIX_EPOCH)
        .map_or(true, |d| d.as_secs() > YEAR_9999_END)
    {
        return Err("SigV4: the signing time is out of range".to_owned());
    }
    let redact = |msg: String| -> String {
        let mut msg = msg;
        for secret in std::iter::once(&creds.secret_access_key).chain(&creds.session_token) {
            if !secret.expose().is_empty() {
                msg = msg.replace(secret.expose(), "***");
            }
        }
        msg
    };
    let identity: Identity = Credentials::new(
        creds.access_key_id.as_str(),
        creds.secret_access_key.expose(),
        creds.session_token.as_ref().map(|t| t.expose().to_owned()),
        None,
        "switchyard",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| redact(format!("SigV4 parameters: {e}")))?
        .into();
    let signed_headers = headers.iter().copied().filter(|(name, _)| {
        !["authorization", "x-amz-date", "x-amz-security-token"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
    });
    let request = SignableRequest::new("POST", url, signed_headers, SignableBody::Bytes(body))
        .map_err(|e| redact(format!("SigV4 request: {e}")))?;
    let (instructions, _signature) = sigv4_sign(request, &params)
        .map_err(|e| redact(format!("SigV4 signing failed: {e}")))?
        .into_parts();
    let (out, _params) = instructions.into_parts();
    Ok(out
        .into_iter()
        .map(|h| (h.name(), h.value().to_owned()))
        .collect())
}

/// `http(s)://` followed by a non-empty host.
fn has_host(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        host
    } else {
        host.split(':').next().unwrap_or_default()
    };
    !host.is_empty()
}

// === response ===

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct BUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_write_input_tokens: Option<u64>,
}

impl BUsage {
    /// `inputTokens` excludes cache reads and writes (providers.md §4.5): the prompt is the sum.
    fn to_usage(&self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let write = self.cache_write_input_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(write),
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_tokens: read,
            cache_write_tokens: write,
            reasoning_tokens: 0,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseResponse<'a> {
    #[serde(borrow)]
    output: Output<'a>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: BUsage,
}

#[derive(Deserialize)]
struct Output<'a> {
    #[serde(borrow, default)]
    message: Option<OutMessage<'a>>,
}

#[derive(Deserialize)]
struct OutMessage<'a> {
    #[serde(borrow, default)]
    content: Vec<OutBlock<'a>>,
}

/// A content block of a response: one of its keys is set. `reasoningContent` and other kinds
/// are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutBlock<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_use: Option<OutToolUse<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutToolUse<'a> {
    #[serde(borrow, default)]
    tool_use_id: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

/// Bedrock `stopReason` -> OpenAI `finish_reason` (providers.md §0.5). `malformed_model_output`
/// and `malformed_tool_use` end the answer as `stop`; unknown reasons too.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("guardrail_intervened") | Some("content_filtered") => "content_filter",
        _ => "stop",
    }
}

/// `tool_calls` only when the client sees tool calls: the forced JSON tool is content.
fn client_finish_reason(stop_reason: Option<&str>, client_tool_calls: bool) -> &'static str {
    match finish_reason(stop_reason) {
        "tool_calls" if !client_tool_calls => "stop",
        reason => reason,
    }
}

fn response_id(meta: &RespMeta<'_>) -> String {
    match meta.request_id.filter(|id| !id.is_empty()) {
        Some(id) => format!("chatcmpl-{id}"),
        None => format!(
            "chatcmpl-{:016x}{:016x}",
            fastrand::u64(..),
            fastrand::u64(..)
        ),
    }
}

/// Translates a 2xx Converse response into a `chat.completion` body. Bedrock's response names
/// neither an id nor the model: the id is `chatcmpl-<x-amzn-RequestId>` (or minted), the model
/// is `meta.model`.
pub fn parse_response(
    body: &[u8],
    meta: &RespMeta<'_>,
) -> Result<(BytesMut, Usage), UpstreamError> {
    let resp: ConverseResponse = serde_json::from_slice(body).map_err(|_| {
        UpstreamError::new(
            ErrorClass::ServerError,
            "upstream returned a malformed Converse body",
        )
    })?;
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in resp.output.message.iter().flat_map(|m| &m.content) {
        if let Some(t) = &block.text {
            text.get_or_insert_with(String::new).push_str(t);
        } else if let Some(tu) = &block.tool_use {
            let arguments = tu.input.map_or(EMPTY_OBJECT, |i| i.get());
            if tu.name == JSON_TOOL {
                text.get_or_insert_with(String::new).push_str(arguments);
            } else {
                tool_calls.push(ToolCallOut {
                    id: tu.tool_use_id.clone().into_owned(),
                    name: tu.name.clone().into_owned(),
                    arguments: arguments.to_owned(),
                });
            }
        }
    }
    let usage = resp.usage.to_usage();
    let completion = Completion {
        id: response_id(meta),
        created: meta.created,
        model: meta.model.to_owned(),
        content: text,
        finish_reason: client_finish_reason(resp.stop_reason.as_deref(), !tool_calls.is_empty()),
        tool_calls,
        usage,
    };
    Ok((completion.to_json(), usage))
}

// === errors ===

#[derive(Deserialize, Default)]
struct ErrorBody<'a> {
    #[serde(borrow, default, alias = "Message")]
    message: Cow<'a, str>,
}

fn error_message(body: &[u8]) -> Cow<'_, str> {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.message)
        .unwrap_or_default()
}

/// The class of a Bedrock error type, `ThrottlingException` (header) or `throttlingException`
/// (stream) alike; `None` for types this table does not know.
fn class_of_type(kind: &str, message: &str) -> Option<ErrorClass> {
    const TABLE: &[(&str, ErrorClass)] = &[
        ("ThrottlingException", ErrorClass::RateLimited),
        ("ServiceQuotaExceededException", ErrorClass::QuotaExhausted),
        ("AccessDeniedException", ErrorClass::UpstreamAuth),
        ("UnrecognizedClientException", ErrorClass::UpstreamAuth),
        ("ResourceNotFoundException", ErrorClass::UpstreamAuth),
        ("InvalidSignatureException", ErrorClass::UpstreamAuth),
        ("IncompleteSignatureException", ErrorClass::UpstreamAuth),
        (
            "MissingAuthenticationTokenException",
            ErrorClass::UpstreamAuth,
        ),
        ("ExpiredTokenException", ErrorClass::UpstreamAuth),
        ("ModelTimeoutException", ErrorClass::Timeout),
        ("ModelErrorException", ErrorClass::ServerError),
        ("ModelStreamErrorException", ErrorClass::ServerError),
        ("ModelNotReadyException", ErrorClass::ServerError),
        ("InternalServerException", ErrorClass::ServerError),
        ("ServiceUnavailableException", ErrorClass::Overloaded),
    ];
    if kind.eq_ignore_ascii_case("ValidationException") {
        return Some(validation_class(message));
    }
    TABLE
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(kind))
        .map(|(_, class)| *class)
}

/// A ValidationException: the prompt too long, our configuration (a model id that is wrong or
/// needs an inference profile), or the client's request.
fn validation_class(message: &str) -> ErrorClass {
    let lower = message.to_ascii_lowercase();
    if is_context_window_message(message) {
        ErrorClass::ContextWindow
    } else if lower.contains("model identifier is invalid")
        || lower.contains("on-demand throughput isn")
    {
        ErrorClass::UpstreamAuth
    } else {
        ErrorClass::BadRequest
    }
}

/// Classifies a non-2xx Bedrock response (providers.md §4.7, §0.3) from its
/// `x-amzn-ErrorType` header (`meta.error_type`), else from the status.
pub fn classify_error(
    status: u16,
    retry_after: Option<Duration>,
    meta: &RespMeta<'_>,
    body: &[u8],
) -> UpstreamError {
    let message = error_message(body);
    let kind = meta
        .error_type
        .and_then(|t| t.split(':').next())
        .map(str::trim)
        .unwrap_or_default();
    let class = class_of_type(kind, &message).unwrap_or(match status {
        429 => ErrorClass::RateLimited,
        401 | 403 | 404 => ErrorClass::UpstreamAuth,
        408 => ErrorClass::Timeout,
        503 => ErrorClass::Overloaded,
        400 | 413 | 422 => validation_class(&message),
        500..=599 => ErrorClass::ServerError,
        400..=499 => ErrorClass::BadRequest,
        _ => ErrorClass::ServerError,
    });
    let code = (!kind.is_empty()).then(|| kind.to_owned());
    status_error(class, status, &message, code, retry_after)
}

// === event-stream framing ===

/// Upper bound on one event-stream frame; an upstream announcing more is broken.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// total_len + headers_len + prelude CRC.
const PRELUDE_BYTES: usize = 12;
/// Prelude + message CRC.
const FRAME_OVERHEAD: usize = 16;

/// Decodes the binary `application/vnd.amazon.eventstream` framing of ConverseStream into
/// [`SseEvent`]s: an event frame becomes `event` = its `:event-type`, `data` = its payload; an
/// exception or error frame becomes `event` = `exception:<:exception-type or :error-code>`.
/// Feed it bytes as they arrive; frames may straddle reads.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    decoder: MessageFrameDecoder,
    /// A broken frame was seen: the stream cannot be resynchronized.
    failed: bool,
}

fn frame_error(what: &str) -> UpstreamError {
    UpstreamError::new(
        ErrorClass::ServerError,
        format!("upstream sent a malformed event-stream frame: {what}"),
    )
}

/// CRC-32 (IEEE, as zlib) of the 8 prelude bytes, to reject garbage before waiting for the
/// length it announces.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn header_str<'m>(m: &'m Message, name: &str) -> Option<&'m str> {
    m.headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the upstream.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete frame as an event, if the bytes fed so far hold one. A frame that is
    /// too large, fails its CRC or does not parse is a `ServerError`, now and on every later call.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, UpstreamError> {
        loop {
            if self.failed {
                return Err(frame_error("the stream is out of sync"));
            }
            match self.next_frame() {
                Ok(None) => return Ok(None),
                Ok(Some(message)) => {
                    if let Some(ev) = to_event(&message) {
                        return Ok(Some(ev));
                    }
                }
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
    }

    fn next_frame(&mut self) -> Result<Option<Message>, UpstreamError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let total = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let total = usize::try_from(total).unwrap_or(usize::MAX);
        if total > MAX_FRAME_BYTES {
            return Err(frame_error(&format!(
                "frame of {total} bytes is over the {MAX_FRAME_BYTES}-byte limit"
            )));
        }
        if total < FRAME_OVERHEAD {
            return Err(frame_error("frame shorter than its prelude"));
        }
        if self.buf.len() < PRELUDE_BYTES {
            return Ok(None);
        }
        let announced = u32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]]);
        if crc32(&self.buf[..8]) != announced {
            return Err(frame_error("prelude checksum mismatch"));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        // The whole frame is buffered, so the decoder reads it in one call and is reset after.
        let mut frame = self.buf.split_to(total).freeze();
        match self.decoder.decode_frame(&mut frame) {
            Ok(DecodedFrame::Complete(m)) if !frame.has_remaining() => Ok(Some(m)),
            Ok(_) => Err(frame_error("frame length mismatch")),
            Err(e) => Err(frame_error(&e.to_string())),
        }
    }
}

/// The event of one frame; `None` for message types other than event, exception and error.
fn to_event(m: &Message) -> Option<SseEvent> {
    let message_type = header_str(m, ":message-type").unwrap_or("event");
    match message_type {
        "event" => Some(SseEvent {
            event: Bytes::copy_from_slice(
                header_str(m, ":event-type").unwrap_or_default().as_bytes(),
            ),
            data: m.payload().clone(),
        }),
        "exception" | "error" => {
            let kind = if message_type == "exception" {
                header_str(m, ":exception-type")
            } else {
                header_str(m, ":error-code")
            };
            let mut data = m.payload().clone();
            // Error frames may carry their message in a header and no payload.
            if data.is_empty() {
                if let Some(msg) = header_str(m, ":error-message") {
                    data = serde_json::to_vec(&serde_json::json!({ "message": msg }))
                        .map(Bytes::from)
                        .unwrap_or_default();
                }
            }
            Some(SseEvent {
                event: Bytes::from(format!("exception:{}", kind.unwrap_or_default())),
                data,
            })
        }
        _ => None,
    }
}

// === stream ===

#[derive(Debug, Clone, Copy)]
enum BlockKind {
    Text,
    Tool {
        oai_index: u32,
        args_seen: bool,
    },
    /// The forced tool of a JSON response_format: its input is the content.
    JsonTool {
        args_seen: bool,
    },
    Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStartEvent<'a> {
    #[serde(default)]
    content_block_index: usize,
    #[serde(borrow, default)]
    start: Option<StartBody<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartBody<'a> {
    #[serde(borrow, default)]
    tool_use: Option<StartTool<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartTool<'a> {
    #[serde(borrow, default)]
    tool_use_id: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockDeltaEvent<'a> {
    #[serde(default)]
    content_block_index: usize,
    #[serde(borrow, default)]
    delta: Option<DeltaBody<'a>>,
}

/// One of its keys is set; `reasoningContent` and other kinds are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeltaBody<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_use: Option<ToolInputDelta<'a>>,
}

#[derive(Deserialize)]
struct ToolInputDelta<'a> {
    #[serde(borrow, default)]
    input: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStopEvent {
    #[serde(default)]
    content_block_index: usize,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageStopEvent<'a> {
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MetadataEvent {
    #[serde(default)]
    usage: Option<BUsage>,
}

/// Turns ConverseStream events (from [`FrameDecoder`]) into OpenAI chunks (providers.md §4.6).
/// Complete after both `messageStop` and `metadata`, or at EOF after `messageStop`.
#[derive(Debug)]
pub struct StreamTranslator {
    writer: ChunkWriter,
    role: RoleOnce,
    usage: Usage,
    metadata_seen: bool,
    finished: bool,
    done: bool,
    /// Indexed by Bedrock's `contentBlockIndex`.
    blocks: Vec<BlockKind>,
    next_tool_index: u32,
    invalid_events: u32,
}

impl StreamTranslator {
    pub fn new(include_usage: bool, meta: &RespMeta<'_>) -> Self {
        StreamTranslator {
            writer: ChunkWriter {
                id: response_id(meta),
                created: meta.created,
                model: meta.model.to_owned(),
                include_usage,
            },
            role: RoleOnce::default(),
            usage: Usage::default(),
            metadata_seen: false,
            finished: false,
            done: false,
            blocks: Vec::new(),
            next_tool_index: 0,
            invalid_events: 0,
        }
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Nothing more is needed from the upstream; the terminator has been written.
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn invalid_events(&self) -> u32 {
        self.invalid_events
    }

    /// The role chunk goes out with the first text (see [`RoleOnce`]).
    fn ensure_role(&mut self, out: &mut BytesMut) {
        self.role.before_text(&self.writer, out);
    }

    fn content(&mut self, out: &mut BytesMut, text: &str) {
        self.ensure_role(out);
        self.writer.delta(
            out,
            Delta {
                content: Some(text),
                ..Delta::default()
            },
        );
    }

    fn arguments(&self, out: &mut BytesMut, oai_index: u32, arguments: &str) {
        self.writer.delta(
            out,
            Delta {
                tool_call: Some(ToolCallDelta {
                    index: oai_index,
                    id_and_name: None,
                    arguments,
                }),
                ..Delta::default()
            },
        );
    }

    fn block(&self, index: usize) -> BlockKind {
        self.blocks.get(index).copied().unwrap_or(BlockKind::Other)
    }

    fn set_block(&mut self, index: usize, kind: BlockKind) {
        if index >= self.blocks.len() {
            // Indices are small and dense; an absurd one is treated as unknown.
            if index > 1024 {
                return;
            }
            self.blocks.resize(index + 1, BlockKind::Other);
        }
        self.blocks[index] = kind;
    }

    /// Writes the usage chunk (if asked for) and `[DONE]` once the finish and the usage are in.
    fn maybe_end(&mut self, out: &mut BytesMut) {
        if self.finished && self.metadata_seen && !self.done {
            self.writer.end(out, &self.usage);
            self.done = true;
        }
    }

    pub fn on_event(
        &mut self,
        ev: &SseEvent,
        out: &mut BytesMut,
    ) -> Result<Progress, UpstreamError> {
        if let Some(kind) = ev.event.strip_prefix(b"exception:") {
            return Err(stream_exception(kind, &ev.data));
        }
        if self.done {
            return Ok(Progress::NOTHING);
        }
        let mut progress = Progress::NOTHING;
        match &ev.event[..] {
            // The role chunk waits for the first output (see `ensure_role`).
            b"messageStart"
                if serde_json::from_slice::<serde::de::IgnoredAny>(&ev.data).is_err() =>
            {
                self.invalid_events += 1;
            }
            b"contentBlockStart" => {
                let Ok(e) = serde_json::from_slice::<BlockStartEvent>(&ev.data) else {
                    self.invalid_events += 1;
                    return Ok(progress);
                };
                let Some(tool) = e.start.and_then(|s| s.tool_use) else {
                    return Ok(progress);
                };
                if tool.name == JSON_TOOL {
                    self.set_block(
                        e.content_block_index,
                        BlockKind::JsonTool { args_seen: false },
                    );
                    return Ok(progress);
                }
                let oai_index = self.next_tool_index;
                self.next_tool_index += 1;
                self.set_block(
                    e.content_block_index,
                    BlockKind::Tool {
                        oai_index,
                        args_seen: false,
                    },
                );
                self.role.tool_head(
                    &self.writer,
                    out,
                    oai_index,
                    &tool.tool_use_id,
                    &tool.name,
                    "",
                );
                progress.meaningful = true;
            }
            b"contentBlockDelta" => {
                let Ok(e) = serde_json::from_slice::<BlockDeltaEvent>(&ev.data) else {
                    self.invalid_events += 1;
                    return Ok(progress);
                };
                let index = e.content_block_index;
                let Some(delta) = e.delta else {
                    return Ok(progress);
                };
                if let Some(text) = delta.text.filter(|t| !t.is_empty()) {
                    if matches!(self.block(index), BlockKind::Other) {
                        self.set_block(index, BlockKind::Text);
                    }
                    self.content(out, &text);
                    progress.meaningful = true;
                } else if let Some(input) =
                    delta.tool_use.map(|t| t.input).filter(|i| !i.is_empty())
                {
                    match self.block(index) {
                        BlockKind::Tool { oai_index, .. } => {
                            self.set_block(
                                index,
                                BlockKind::Tool {
                                    oai_index,
                                    args_seen: true,
                                },
                            );
                            self.arguments(out, oai_index, &input);
                            progress.meaningful = true;
                        }
                        BlockKind::JsonTool { .. } => {
                            self.set_block(index, BlockKind::JsonTool { args_seen: true });
                            self.content(out, &input);
                            progress.meaningful = true;
                        }
                        BlockKind::Text | BlockKind::Other => {}
                    }
                }
            }
            b"contentBlockStop" => {
                let Ok(e) = serde_json::from_slice::<BlockStopEvent>(&ev.data) else {
                    self.invalid_events += 1;
                    return Ok(progress);
                };
                // A tool with no arguments still needs parseable arguments.
                match self.block(e.content_block_index) {
                    BlockKind::Tool {
                        oai_index,
                        args_seen: false,
                    } => {
                        self.arguments(out, oai_index, EMPTY_OBJECT);
                        progress.meaningful = true;
                    }
                    BlockKind::JsonTool { args_seen: false } => {
                        self.content(out, EMPTY_OBJECT);
                        progress.meaningful = true;
                    }
                    _ => {}
                }
            }
            b"messageStop" => {
                let Ok(e) = serde_json::from_slice::<MessageStopEvent>(&ev.data) else {
                    self.invalid_events += 1;
                    return Ok(progress);
                };
                if !self.finished {
                    self.ensure_role(out);
                    let reason =
                        client_finish_reason(e.stop_reason.as_deref(), self.next_tool_index > 0);
                    self.writer.finish(out, reason);
                    self.finished = true;
                    progress.finished = true;
                    self.maybe_end(out);
                }
            }
            b"metadata" => {
                let Ok(e) = serde_json::from_slice::<MetadataEvent>(&ev.data) else {
                    self.invalid_events += 1;
                    return Ok(progress);
                };
                if let Some(u) = &e.usage {
                    self.usage = u.to_usage();
                }
                self.metadata_seen = true;
                self.maybe_end(out);
                if self.done {
                    progress.finished = true;
                }
            }
            _ => {} // unknown events are ignored
        }
        Ok(progress)
    }

    /// The upstream closed the stream: complete after `messageStop` (the usage chunk, if asked
    /// for, then carries what was seen); truncated otherwise.
    pub fn on_eof(&mut self, out: &mut BytesMut) -> Result<(), UpstreamError> {
        if self.done {
            return Ok(());
        }
        if self.finished {
            self.writer.end(out, &self.usage);
            self.done = true;
            return Ok(());
        }
        Err(UpstreamError::new(
            ErrorClass::ServerError,
            "upstream closed the stream before messageStop",
        ))
    }
}

/// An exception frame of a ConverseStream (providers.md §4.6, §0.4).
fn stream_exception(kind: &[u8], data: &[u8]) -> UpstreamError {
    let kind = std::str::from_utf8(kind).unwrap_or_default();
    let message = error_message(data);
    let class = class_of_type(kind, &message).unwrap_or(ErrorClass::ServerError);
    let message = if message.is_empty() {
        format!(
            "upstream sent a {} exception",
            if kind.is_empty() { "stream" } else { kind }
        )
    } else {
        truncate_message(&message)
    };
    let message = if class == ErrorClass::UpstreamAuth {
        "the upstream rejected the gateway's credentials or model".to_owned()
    } else {
        message
    };
    let code = Some(kind.to_owned()).filter(|k| super::is_identifier(k));
    UpstreamError::new(class, message).with_code(code)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::providers::request::ChatBody;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue};
    use serde_json::{json, Value};

    const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";
    const REQUEST_ID: &str = "3f0d6a52-6a7e-4b7d-9a51-0c1d2e3f4a5b";

    fn translate(req_json: &str) -> Result<Value, TranslateError> {
        let body = ChatBody::parse(Bytes::copy_from_slice(req_json.as_bytes()))
            .expect("valid OpenAI request");
        let req = ChatRequest::from_body(&body).expect("typed");
        build_request(&req, MODEL, 4096)
            .map(|b| serde_json::from_slice(&b).expect("the body is JSON"))
    }

    fn meta() -> RespMeta<'static> {
        RespMeta {
            model: MODEL,
            created: 1735689604,
            request_id: Some(REQUEST_ID),
            ..RespMeta::default()
        }
    }

    // --- request ---

    #[test]
    fn the_c1_request_matches_the_9_4_vector() {
        let got = translate(r#"{"model":"<alias>","messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"Say hello."}],"temperature":0.2,"max_tokens":64,"stop":["END"],"user":"u-123"}"#).expect("translates");
        let want = json!({"messages":[{"role":"user","content":[{"text":"Say hello."}]}],"system":[{"text":"You are a terse assistant."}],"inferenceConfig":{"maxTokens":64,"temperature":0.2,"stopSequences":["END"]}});
        assert_eq!(got, want);
        assert!(got.get("model").is_none() && got.get("stream").is_none());
    }

    #[test]
    fn the_c2_tools_become_the_9_4_tool_config() {
        let got = translate(r#"{"model":"<alias>","messages":[{"role":"user","content":"What's the weather in Paris?"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Get current weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],"tool_choice":"auto","max_tokens":256,"stream":true}"#).expect("translates");
        let want = json!({"messages":[{"role":"user","content":[{"text":"What's the weather in Paris?"}]}],"inferenceConfig":{"maxTokens":256},"toolConfig":{"tools":[{"toolSpec":{"name":"get_weather","description":"Get current weather for a city","inputSchema":{"json":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}}],"toolChoice":{"auto":{}}}});
        assert_eq!(got, want);
    }

    #[test]
    fn roles_alternate_start_with_user_and_tool_turns_become_tool_results() {
        let got = translate(r#"{"model":"m","messages":[
            {"role":"developer","content":"Be brief."},
            {"role":"assistant","content":"Hi."},
            {"role":"user","content":"a"},
            {"role":"user","content":[{"type":"text","text":"b"},{"type":"text","text":""}]},
            {"role":"assistant","content":"Let me look.","tool_calls":[
                {"id":"t1","type":"function","function":{"name":"f","arguments":"{\"x\": 1}"}},
                {"id":"t2","type":"function","function":{"name":"g","arguments":""}}]},
            {"role":"tool","tool_call_id":"t1","content":"one"},
            {"role":"tool","tool_call_id":"t2","content":[{"type":"text","text":"two"}]},
            {"role":"user","content":"thanks"},
            {"role":"system","content":"Late rule."},
            {"role":"assistant","content":"Sure  "}],
            "tools":[{"type":"function","function":{"name":"f"}},{"type":"function","function":{"name":"g","parameters":{"type":"object"}}}]}"#)
        .expect("translates");
        assert_eq!(
            got["system"],
            json!([{"text":"Be brief."},{"text":"Late rule."}])
        );
        assert_eq!(
            got["messages"],
            json!([
                {"role":"user","content":[{"text":"."}]},
                {"role":"assistant","content":[{"text":"Hi."}]},
                {"role":"user","content":[{"text":"a"},{"text":"b"}]},
                {"role":"assistant","content":[{"text":"Let me look."},
                    {"toolUse":{"toolUseId":"t1","name":"f","input":{"x":1}}},
                    {"toolUse":{"toolUseId":"t2","name":"g","input":{}}}]},
                {"role":"user","content":[
                    {"toolResult":{"toolUseId":"t1","content":[{"text":"one"}]}},
                    {"toolResult":{"toolUseId":"t2","content":[{"text":"two"}]}},
                    {"text":"thanks"}]},
                {"role":"assistant","content":[{"text":"Sure"}]}
            ])
        );
        assert_eq!(
            got["toolConfig"],
            json!({"tools":[
                {"toolSpec":{"name":"f","inputSchema":{"json":{"type":"object","properties":{}}}}},
                {"toolSpec":{"name":"g","inputSchema":{"json":{"type":"object"}}}}]})
        );
        assert_eq!(got["inferenceConfig"], json!({"maxTokens":4096}));
    }

    #[test]
    fn images_must_be_data_urls() {
        let got = translate(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"Here:"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,/9j/4A=="}}]}]}"#).expect("translates");
        assert_eq!(
            got["messages"][0]["content"],
            json!([{"text":"Here:"},
                   {"image":{"format":"png","source":{"bytes":"iVBORw0KGgo="}}},
                   {"image":{"format":"jpeg","source":{"bytes":"/9j/4A=="}}}])
        );
        let e = translate(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://169.254.169.254/latest/cat.png"}}]}]}"#)
            .expect_err("the gateway does not fetch URLs");
        assert_eq!(e.param, "messages[0].content[0].image_url.url");
        assert!(e.message.contains("not supported"), "{e}");
        let e = translate(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x"},{"type":"image_url","image_url":{"url":"data:application/pdf;base64,AAAA"}}]}]}"#)
            .expect_err("pdf is not an image");
        assert_eq!(e.param, "messages[0].content[1].image_url.url");
        let e = translate(r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"tool","tool_call_id":"a","content":[{"type":"image_url","image_url":{"url":"http://example.com/a.png"}}]}]}"#)
            .expect_err("tool results too");
        assert_eq!(e.param, "messages[1].content[0].image_url.url");
    }

    #[test]
    fn untranslatable_requests_name_the_field() {
        let e = translate(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#)
            .expect_err("n>1");
        assert_eq!(e.param, "n");
        let e = translate(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":true}"#,
        )
        .expect_err("logprobs");
        assert_eq!(e.param, "logprobs");
        let e = translate(r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{oops"}}]}]}"#)
            .expect_err("bad arguments");
        assert_eq!(e.param, "messages[1].tool_calls[0].function.arguments");
        let e = translate(r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"[1]"}}]}]}"#)
            .expect_err("arguments must be an object");
        assert_eq!(e.param, "messages[1].tool_calls[0].function.arguments");
        let e = translate(r#"{"model":"m","messages":[{"role":"system","content":"only"}]}"#)
            .expect_err("no turns");
        assert_eq!(e.param, "messages");
        let e = translate(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"json_tool_call"}}]}"#)
            .expect_err("reserved tool name");
        assert_eq!(e.param, "tools[0].function.name");
    }

    #[test]
    fn tool_choice_maps_to_auto_any_tool_and_none_drops_tools() {
        let base = r#""messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}]"#;
        let with = |choice: &str| {
            translate(&format!(r#"{{"model":"m",{base},"tool_choice":{choice}}}"#))
                .expect("translates")
        };
        assert_eq!(
            with(r#""required""#)["toolConfig"]["toolChoice"],
            json!({"any":{}})
        );
        assert_eq!(
            with(r#"{"type":"function","function":{"name":"f"}}"#)["toolConfig"]["toolChoice"],
            json!({"tool":{"name":"f"}})
        );
        assert!(with(r#""none""#).get("toolConfig").is_none());
        let unset = translate(&format!(r#"{{"model":"m",{base}}}"#)).expect("translates");
        assert!(unset["toolConfig"].get("toolChoice").is_none());
        assert_eq!(unset["toolConfig"]["tools"][0]["toolSpec"]["name"], "f");
    }

    #[test]
    fn tool_history_keeps_a_tool_config_even_without_tools() {
        let history = r#"{"role":"user","content":"x"},{"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"lookup","arguments":"{}"}},{"id":"b","type":"function","function":{"name":"lookup","arguments":"{}"}}]},{"role":"tool","tool_call_id":"a","content":""},{"role":"tool","tool_call_id":"b","content":"ok"}"#;
        // tool_choice none with tools: the client's tools stay declared, no choice.
        let got = translate(&format!(r#"{{"model":"m","messages":[{history}],"tools":[{{"type":"function","function":{{"name":"lookup","description":"d"}}}}],"tool_choice":"none"}}"#)).expect("translates");
        assert_eq!(
            got["toolConfig"],
            json!({"tools":[{"toolSpec":{"name":"lookup","description":"d","inputSchema":{"json":{"type":"object","properties":{}}}}}]})
        );
        // No tools at all: stand-ins named after the calls in the history.
        let got =
            translate(&format!(r#"{{"model":"m","messages":[{history}]}}"#)).expect("translates");
        assert_eq!(
            got["toolConfig"],
            json!({"tools":[{"toolSpec":{"name":"lookup","inputSchema":{"json":{"type":"object","properties":{}}}}}]})
        );
        // An empty tool result still has a content block.
        assert_eq!(
            got["messages"][2]["content"][0],
            json!({"toolResult":{"toolUseId":"a","content":[{"text":""}]}})
        );
    }

    #[test]
    fn a_json_response_format_is_a_forced_tool() {
        let got = translate(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"answer","schema":{"type":"object","properties":{"a":{"type":"integer"}}},"strict":true}}}"#).expect("translates");
        assert_eq!(
            got["toolConfig"],
            json!({"tools":[{"toolSpec":{"name":"json_tool_call","description":"Return the final answer as this tool's input.","inputSchema":{"json":{"type":"object","properties":{"a":{"type":"integer"}}}}}}],"toolChoice":{"tool":{"name":"json_tool_call"}}})
        );
        let got = translate(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#).expect("translates");
        assert_eq!(
            got["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"],
            json!({"json":{"type":"object"}})
        );
        let got = translate(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"text"}}"#).expect("translates");
        assert!(got.get("toolConfig").is_none());
        let e = translate(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"n"}}}"#).expect_err("no schema");
        assert_eq!(e.param, "response_format.json_schema.schema");
        let e = translate(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"response_format":{"type":"json_object"}}"#).expect_err("tools and a forced tool");
        assert_eq!(e.param, "response_format");
    }

    #[test]
    fn sampling_parameters_follow_the_converse_ranges() {
        let got = translate(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":1.5,"top_p":0.9,"stop":"  "}"#).expect("translates");
        assert_eq!(
            got["inferenceConfig"],
            json!({"maxTokens":4096,"temperature":1.0}),
            "temperature is clamped to 1; Claude takes temperature or top_p; blank stops dropped"
        );
        let body = ChatBody::parse(Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":0.5,"top_p":0.9,"max_completion_tokens":7}"#)).expect("valid");
        let req = ChatRequest::from_body(&body).expect("typed");
        let got: Value = serde_json::from_slice(
            &build_request(&req, "meta.llama3-8b-instruct-v1:0", 1).expect("ok"),
        )
        .expect("json");
        assert_eq!(
            got["inferenceConfig"],
            json!({"maxTokens":7,"temperature":0.5,"topP":0.9})
        );
    }

    #[test]
    fn model_ids_are_one_path_segment() {
        assert_eq!(
            path(MODEL, false),
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
        );
        assert_eq!(
            path("us.anthropic.claude-sonnet-4-5-20250929-v1:0", true),
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse-stream"
        );
        assert_eq!(
            path("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.x~y_z", false),
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.x~y_z/converse"
        );
        assert_eq!(
            invoke_path("amazon.titan-embed-text-v2:0"),
            "/model/amazon.titan-embed-text-v2%3A0/invoke"
        );
        assert_eq!(path("a b?#%", false), "/model/a%20b%3F%23%25/converse");
    }

    // --- SigV4 ---

    fn vector_creds(session_token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: session_token.map(Secret::new),
        }
    }

    fn vector_time() -> SystemTime {
        // 2025-01-01T00:00:00Z
        UNIX_EPOCH + Duration::from_secs(1_735_689_600)
    }

    const SIGV4_URL: &str = "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
    const SIGV4_BODY: &[u8] = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;

    #[test]
    fn sigv4_reproduces_the_9_4_vector() {
        assert_eq!(
            format!(
                "https://bedrock-runtime.us-east-1.amazonaws.com{}",
                path(MODEL, false)
            ),
            SIGV4_URL
        );
        let headers = sign(
            &vector_creds(None),
            "us-east-1",
            SIGV4_URL,
            &[
                ("content-type", "application/json"),
                ("host", "bedrock-runtime.us-east-1.amazonaws.com"),
            ],
            SIGV4_BODY,
            vector_time(),
        )
        .expect("signs");
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("x-amz-date"), Some("20250101T000000Z"));
        assert_eq!(
            get("authorization"),
            Some("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=229262f88c48cccf94b4168237b5cba8281cd1a9e3956c5daf6bc1bfb490ceed")
        );
        assert_eq!(get("x-amz-security-token"), None);
        assert_eq!(headers.len(), 2);

        // The host comes from the URL when no host header is given: same signature.
        let without_host = sign(
            &vector_creds(None),
            "us-east-1",
            SIGV4_URL,
            &[
                ("content-type", "application/json"),
                ("X-Amz-Date", "stale"),
            ],
            SIGV4_BODY,
            vector_time(),
        )
        .expect("signs");
        assert_eq!(without_host, headers);
    }

    #[test]
    fn sigv4_with_a_session_token_signs_and_returns_it() {
        let headers = sign(
            &vector_creds(Some("FwoGZXIvYXdzEXAMPLETOKEN")),
            "us-east-1",
            SIGV4_URL,
            &[("content-type", "application/json")],
            SIGV4_BODY,
            vector_time(),
        )
        .expect("signs");
        let auth = &headers
            .iter()
            .find(|(n, _)| *n == "authorization")
            .expect("authorization")
            .1;
        assert!(
            auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"),
            "{auth}"
        );
        assert!(headers.contains(&(
            "x-amz-security-token",
            "FwoGZXIvYXdzEXAMPLETOKEN".to_owned()
        )));
    }

    #[test]
    fn sigv4_errors_never_show_the_secrets() {
        let creds = vector_creds(Some("bad\ntoken"));
        let e = sign(
            &creds,
            "us-east-1",
            SIGV4_URL,
            &[],
            SIGV4_BODY,
            vector_time(),
        )
        .expect_err("a newline is not a header value");
        assert!(
            !e.contains("bad\ntoken") && !e.contains("EXAMPLEKEY"),
            "{e}"
        );
        for url in [
            "/model/x/converse",
            "https:///x",
            "https://:443/x",
            "ftp://h/x",
        ] {
            let e = sign(&creds, "us-east-1", url, &[], SIGV4_BODY, vector_time())
                .expect_err("not an absolute URL");
            assert!(!e.contains("EXAMPLEKEY"), "{e}");
        }
        let e = sign(
            &vector_creds(None),
            "us-east-1",
            SIGV4_URL,
            &[("bad header", "x")],
            SIGV4_BODY,
            vector_time(),
        )
        .expect_err("invalid header name");
        assert!(!e.contains("EXAMPLEKEY"), "{e}");
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert!(sign(&vector_creds(None), "us-east-1", SIGV4_URL, &[], b"", far).is_err());
    }

    // --- response ---

    #[test]
    fn the_9_4_response_translates_to_the_expected_output() {
        let upstream = br#"{"output":{"message":{"role":"assistant","content":[{"text":"Hello."}]}},"stopReason":"end_turn","usage":{"inputTokens":21,"outputTokens":4,"totalTokens":25},"metrics":{"latencyMs":412}}"#;
        let (out, usage) = parse_response(upstream, &meta()).expect("translates");
        let got: Value = serde_json::from_slice(&out).expect("json");
        let want = json!({"id":"chatcmpl-3f0d6a52-6a7e-4b7d-9a51-0c1d2e3f4a5b","object":"chat.completion","created":1735689604,"model":"anthropic.claude-3-haiku-20240307-v1:0","choices":[{"index":0,"message":{"role":"assistant","content":"Hello."},"finish_reason":"stop"}],"usage":{"prompt_tokens":21,"completion_tokens":4,"total_tokens":25,"prompt_tokens_details":{"cached_tokens":0}}});
        assert_eq!(got, want);
        assert_eq!(usage.total(), 25);
    }

    #[test]
    fn responses_with_tools_cache_reasoning_and_guardrails() {
        let upstream = br#"{"output":{"message":{"role":"assistant","content":[{"reasoningContent":{"reasoningText":{"text":"hmm","signature":"s"}}},{"text":"Let me check."},{"toolUse":{"toolUseId":"tooluse_1","name":"get_weather","input":{"city":"Paris"}}},{"toolUse":{"toolUseId":"tooluse_2","name":"now","input":{}}}]}},"stopReason":"tool_use","usage":{"inputTokens":12,"outputTokens":58,"totalTokens":470,"cacheReadInputTokens":400,"cacheWriteInputTokens":10}}"#;
        let m = RespMeta {
            request_id: None,
            ..meta()
        };
        let (out, usage) = parse_response(upstream, &m).expect("translates");
        let got: Value = serde_json::from_slice(&out).expect("json");
        let id = got["id"].as_str().expect("id");
        assert!(
            id.len() == 9 + 32 && id[9..].bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        assert!(id.starts_with("chatcmpl-"));
        assert_eq!(
            got["choices"][0]["message"],
            json!({"role":"assistant","content":"Let me check.","tool_calls":[
                {"id":"tooluse_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                {"id":"tooluse_2","type":"function","function":{"name":"now","arguments":"{}"}}]})
        );
        assert_eq!(got["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            got["usage"],
            json!({"prompt_tokens":422,"completion_tokens":58,"total_tokens":480,"prompt_tokens_details":{"cached_tokens":400,"cache_write_tokens":10}})
        );
        assert_eq!(usage.cached_tokens, 400);

        let filtered = br#"{"output":{"message":{"role":"assistant","content":[{"text":"Sorry."}]}},"stopReason":"guardrail_intervened","usage":{"inputTokens":5,"outputTokens":1}}"#;
        let (out, _) = parse_response(filtered, &meta()).expect("translates");
        let got: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(got["choices"][0]["finish_reason"], "content_filter");
        for (reason, want) in [
            ("content_filtered", "content_filter"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("stop_sequence", "stop"),
            ("malformed_model_output", "stop"),
            ("something_new", "stop"),
        ] {
            assert_eq!(finish_reason(Some(reason)), want, "{reason}");
        }

        let forced = br#"{"output":{"message":{"role":"assistant","content":[{"toolUse":{"toolUseId":"t","name":"json_tool_call","input":{"a":1}}}]}},"stopReason":"tool_use","usage":{}}"#;
        let (out, _) = parse_response(forced, &meta()).expect("translates");
        let got: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            got["choices"][0]["message"],
            json!({"role":"assistant","content":"{\"a\":1}"})
        );
        assert_eq!(got["choices"][0]["finish_reason"], "stop");

        for bad in [&b"{\"nope\":1}"[..], b"not json", b""] {
            let e = parse_response(bad, &meta()).expect_err("malformed");
            assert_eq!(e.class, ErrorClass::ServerError);
        }
    }

    // --- errors ---

    #[test]
    fn errors_are_classified_from_the_error_type_header_then_the_status() {
        let with_type = |t: &'static str| RespMeta {
            error_type: Some(t),
            ..meta()
        };
        let body = br#"{"message":"Too many requests, please wait before trying again."}"#;
        let e = classify_error(
            429,
            None,
            &with_type("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            body,
        );
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.status, Some(429));
        assert_eq!(e.code.as_deref(), Some("ThrottlingException"));
        assert_eq!(
            e.message,
            "Too many requests, please wait before trying again."
        );
        let cases: &[(u16, &str, &str, ErrorClass)] = &[
            (
                400,
                "ServiceQuotaExceededException",
                "quota",
                ErrorClass::QuotaExhausted,
            ),
            (
                400,
                "ValidationException",
                "Input is too long for requested model.",
                ErrorClass::ContextWindow,
            ),
            (
                400,
                "ValidationException",
                "too many input tokens",
                ErrorClass::ContextWindow,
            ),
            (
                400,
                "ValidationException",
                "Malformed input request",
                ErrorClass::BadRequest,
            ),
            (
                400,
                "ValidationException",
                "The provided model identifier is invalid.",
                ErrorClass::UpstreamAuth,
            ),
            (
                403,
                "AccessDeniedException",
                "You don't have access to the model",
                ErrorClass::UpstreamAuth,
            ),
            (
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
                ErrorClass::UpstreamAuth,
            ),
            (
                404,
                "ResourceNotFoundException",
                "no such model",
                ErrorClass::UpstreamAuth,
            ),
            (408, "ModelTimeoutException", "slow", ErrorClass::Timeout),
            (
                424,
                "ModelErrorException",
                "model failed",
                ErrorClass::ServerError,
            ),
            (
                429,
                "ModelNotReadyException",
                "warming",
                ErrorClass::ServerError,
            ),
            (
                500,
                "InternalServerException",
                "oops",
                ErrorClass::ServerError,
            ),
            (
                503,
                "ServiceUnavailableException",
                "busy",
                ErrorClass::Overloaded,
            ),
        ];
        for &(status, kind, message, class) in cases {
            let body = serde_json::to_vec(&json!({ "message": message })).expect("json");
            let e = classify_error(status, None, &with_type(kind), &body);
            assert_eq!(e.class, class, "{kind}: {message}");
            assert_eq!(e.code.as_deref(), Some(kind));
            if class == ErrorClass::UpstreamAuth {
                assert!(!e.message.contains(message), "auth errors in our words");
            }
        }
        // No header: the status decides.
        let by_status: &[(u16, &[u8], ErrorClass)] = &[
            (429, b"{}", ErrorClass::RateLimited),
            (
                403,
                br#"{"Message":"Signature expired"}"#,
                ErrorClass::UpstreamAuth,
            ),
            (401, b"", ErrorClass::UpstreamAuth),
            (
                400,
                br#"{"message":"prompt is too long"}"#,
                ErrorClass::ContextWindow,
            ),
            (400, br#"{"message":"bad"}"#, ErrorClass::BadRequest),
            (408, b"", ErrorClass::Timeout),
            (503, b"", ErrorClass::Overloaded),
            (502, b"<html>", ErrorClass::ServerError),
            (418, b"", ErrorClass::BadRequest),
        ];
        for &(status, body, class) in by_status {
            let e = classify_error(status, Some(Duration::from_secs(3)), &meta(), body);
            assert_eq!(e.class, class, "{status}");
            assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
            assert_eq!(e.code, None);
        }
        // An unknown type falls back on the status too.
        let e = classify_error(503, None, &with_type("BrandNewException"), b"{}");
        assert_eq!(e.class, ErrorClass::Overloaded);
        assert_eq!(e.message, "upstream returned HTTP 503");
    }

    // --- frames ---

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    const FRAME_NO_HEADERS: &str = "0000001e00000000baf2f68a7b22666f6f223a2022626172227dae7258e4";
    const FRAME_DELTA: &str = "0000009700000057f30be03e0b3a6576656e742d74797065070011636f6e74656e74426c6f636b44656c74610d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e0d3a6d6573736167652d747970650700056576656e747b22636f6e74656e74426c6f636b496e646578223a302c2264656c7461223a7b2274657874223a2248656c6c6f227d7d67623831";
    const FRAME_THROTTLING: &str = "000000b2000000613590d5d30f3a657863657074696f6e2d747970650700137468726f74746c696e67457863657074696f6e0d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e0d3a6d6573736167652d74797065070009657863657074696f6e7b226d657373616765223a22546f6f206d616e792072657175657374732c20706c656173652077616974206265666f726520747279696e6720616761696e2e227de8ffb26a";

    fn decode_in_parts(input: &[u8], split: usize) -> Result<Vec<(String, String)>, UpstreamError> {
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for part in [&input[..split], &input[split..]] {
            d.feed(part);
            while let Some(ev) = d.next_event()? {
                got.push((
                    String::from_utf8(ev.event.to_vec()).expect("utf8"),
                    String::from_utf8(ev.data.to_vec()).expect("utf8"),
                ));
            }
        }
        Ok(got)
    }

    #[test]
    fn the_9_4_frame_vectors_decode_whole_and_split_anywhere() {
        let frames = [
            (FRAME_NO_HEADERS, 30, "", r#"{"foo": "bar"}"#),
            (
                FRAME_DELTA,
                151,
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"text":"Hello"}}"#,
            ),
            (
                FRAME_THROTTLING,
                178,
                "exception:throttlingException",
                r#"{"message":"Too many requests, please wait before trying again."}"#,
            ),
        ];
        let mut all = Vec::new();
        let mut want_all = Vec::new();
        for (hex, len, event, data) in frames {
            let bytes = unhex(hex);
            assert_eq!(bytes.len(), len);
            let want = vec![(event.to_owned(), data.to_owned())];
            for split in 0..=bytes.len() {
                assert_eq!(
                    decode_in_parts(&bytes, split).expect("decodes"),
                    want,
                    "split at {split}"
                );
            }
            all.extend_from_slice(&bytes);
            want_all.extend(want);
        }
        // All three back to back, split anywhere, and fed one byte at a time.
        for split in 0..=all.len() {
            assert_eq!(decode_in_parts(&all, split).expect("decodes"), want_all);
        }
        let mut d = FrameDecoder::new();
        let mut n = 0;
        for b in &all {
            d.feed(std::slice::from_ref(b));
            while d.next_event().expect("decodes").is_some() {
                n += 1;
            }
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn broken_frames_are_server_errors() {
        let good = unhex(FRAME_DELTA);
        // A flipped payload byte: message CRC mismatch.
        let mut bad = good.clone();
        bad[120] ^= 1;
        let e = decode_in_parts(&bad, 0).expect_err("crc");
        assert_eq!(e.class, ErrorClass::ServerError);
        // A flipped length byte: prelude CRC mismatch, detected before the frame is complete.
        let mut bad = good.clone();
        bad[3] ^= 1;
        let mut d = FrameDecoder::new();
        d.feed(&bad[..12]);
        assert_eq!(
            d.next_event().map_err(|e| e.class).err(),
            Some(ErrorClass::ServerError)
        );
        assert!(d.next_event().is_err(), "the decoder stays failed");
        // Garbage (an HTML error page) and an oversized frame.
        assert!(decode_in_parts(b"<html><body>503 Service Unavailable</body></html>", 0).is_err());
        let mut d = FrameDecoder::new();
        d.feed(&[0x01, 0x00, 0x00, 0x01]);
        let e = d.next_event().expect_err("over 16 MiB");
        assert!(e.message.contains("limit"), "{}", e.message);
        let mut d = FrameDecoder::new();
        d.feed(&[0, 0, 0, 8]);
        assert!(d.next_event().is_err(), "shorter than a prelude");
        // Exactly at the limit is allowed (waits for the bytes).
        let mut d = FrameDecoder::new();
        let total = u32::try_from(MAX_FRAME_BYTES).expect("fits");
        let mut prelude = total.to_be_bytes().to_vec();
        prelude.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32(&prelude);
        prelude.extend_from_slice(&crc.to_be_bytes());
        d.feed(&prelude);
        assert!(matches!(d.next_event(), Ok(None)));
    }

    // --- stream ---

    fn frame(message_type: &str, kind: &str, payload: &str) -> Vec<u8> {
        let type_header = match message_type {
            "event" => ":event-type",
            "exception" => ":exception-type",
            _ => ":error-code",
        };
        let m = Message::new(Bytes::copy_from_slice(payload.as_bytes()))
            .add_header(Header::new(
                type_header,
                HeaderValue::String(kind.to_owned().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String(message_type.to_owned().into()),
            ));
        let mut out = Vec::new();
        write_message_to(&m, &mut out).expect("encodes");
        out
    }

    fn event(kind: &str, payload: &str) -> Vec<u8> {
        frame("event", kind, payload)
    }

    const TRANSCRIPT: &[(&str, &str)] = &[
        ("messageStart", r#"{"role":"assistant"}"#),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"Checking."}}"#,
        ),
        ("contentBlockStop", r#"{"contentBlockIndex":0}"#),
        (
            "contentBlockStart",
            r#"{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"tooluse_GwVec0001","name":"get_weather"}}}"#,
        ),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"city\":"}}}"#,
        ),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"\"Paris\"}"}}}"#,
        ),
        ("contentBlockStop", r#"{"contentBlockIndex":1}"#),
        ("messageStop", r#"{"stopReason":"tool_use"}"#),
        (
            "metadata",
            r#"{"usage":{"inputTokens":380,"outputTokens":42,"totalTokens":422},"metrics":{"latencyMs":900}}"#,
        ),
    ];

    fn transcript(frames: &[(&str, &str)]) -> Vec<u8> {
        frames.iter().flat_map(|(k, p)| event(k, p)).collect()
    }

    struct Run {
        chunks: Vec<Value>,
        progress: Vec<Progress>,
        end: Result<(), UpstreamError>,
        t: StreamTranslator,
    }

    /// Feeds `input` in reads of `read` bytes through a FrameDecoder and a translator, then EOF.
    fn run(input: &[u8], include_usage: bool, read: usize) -> Run {
        let mut t = StreamTranslator::new(include_usage, &meta());
        let d = crate::providers::StreamDecoder::Aws(FrameDecoder::new());
        let (text, progress, end) =
            crate::providers::test_support::feed_steps(&mut t, d, input, read);
        Run {
            chunks: crate::providers::test_support::chunks(&text),
            progress,
            end,
            t,
        }
    }

    fn deltas(chunks: &[Value]) -> Vec<Value> {
        chunks
            .iter()
            .filter_map(|c| c["choices"].get(0).map(|ch| ch["delta"].clone()))
            .collect()
    }

    #[test]
    fn the_9_4_stream_becomes_the_expected_chunks() {
        let input = transcript(TRANSCRIPT);
        let whole = run(&input, true, input.len());
        assert!(whole.end.is_ok());
        assert!(whole.t.is_done());
        let c = &whole.chunks;
        assert_eq!(c.len(), 8, "{c:#?}");
        for chunk in &c[..7] {
            assert_eq!(chunk["id"], "chatcmpl-3f0d6a52-6a7e-4b7d-9a51-0c1d2e3f4a5b");
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["created"], 1735689604);
            assert_eq!(chunk["model"], MODEL);
        }
        assert_eq!(
            c[0],
            json!({"id":"chatcmpl-3f0d6a52-6a7e-4b7d-9a51-0c1d2e3f4a5b","object":"chat.completion.chunk","created":1735689604,"model":MODEL,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null})
        );
        assert_eq!(
            deltas(&c[1..6]),
            vec![
                json!({"content":"Checking."}),
                json!({"tool_calls":[{"index":0,"id":"tooluse_GwVec0001","type":"function","function":{"name":"get_weather","arguments":""}}]}),
                json!({"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}),
                json!({"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}),
                json!({}),
            ]
        );
        assert_eq!(c[5]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c[6]["choices"], json!([]));
        assert_eq!(
            c[6]["usage"],
            json!({"prompt_tokens":380,"completion_tokens":42,"total_tokens":422,"prompt_tokens_details":{"cached_tokens":0}})
        );
        assert_eq!(c[7], "[DONE]");
        assert_eq!(whole.t.usage().total(), 422);
        assert_eq!(whole.t.invalid_events(), 0);
        // messageStart is not output; the text is the commit point; messageStop finishes.
        assert_eq!(whole.progress[0], Progress::NOTHING);
        assert!(whole.progress[1].meaningful);
        assert!(whole.progress[7].finished);
        // Any read size gives the same output.
        for read in [1, 2, 7, 100] {
            let r = run(&input, true, read);
            assert!(r.end.is_ok());
            assert_eq!(r.chunks, whole.chunks, "reads of {read}");
        }
        let no_usage = run(&input, false, input.len());
        assert!(no_usage.end.is_ok());
        assert_eq!(no_usage.chunks.len(), 7);
        assert!(no_usage.chunks.iter().all(|c| c.get("usage").is_none()));
        assert_eq!(no_usage.chunks[6], "[DONE]");
    }

    #[test]
    fn an_exception_mid_stream_fails_with_its_class() {
        let throttle = unhex(FRAME_THROTTLING);
        let mut input = transcript(&TRANSCRIPT[..2]);
        input.extend_from_slice(&throttle);
        input.extend(transcript(&TRANSCRIPT[2..]));
        let r = run(&input, true, input.len());
        let e = r.end.expect_err("throttled");
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.code.as_deref(), Some("throttlingException"));
        assert_eq!(
            e.message,
            "Too many requests, please wait before trying again."
        );
        assert_eq!(r.chunks.len(), 2, "role and content went out before");
        // Before any content: the same error, nothing written.
        let mut input = transcript(&TRANSCRIPT[..1]);
        input.extend_from_slice(&throttle);
        let r = run(&input, false, 5);
        assert_eq!(r.end.map_err(|e| e.class), Err(ErrorClass::RateLimited));
        assert!(r.chunks.is_empty());
        let cases = [
            (
                "serviceUnavailableException",
                "busy",
                ErrorClass::Overloaded,
            ),
            (
                "validationException",
                "Input is too long for requested model.",
                ErrorClass::ContextWindow,
            ),
            ("validationException", "bad field", ErrorClass::BadRequest),
            (
                "modelStreamErrorException",
                "model broke",
                ErrorClass::ServerError,
            ),
            ("internalServerException", "oops", ErrorClass::ServerError),
            ("modelTimeoutException", "slow", ErrorClass::Timeout),
            ("somethingNewException", "?", ErrorClass::ServerError),
        ];
        for (kind, message, class) in cases {
            let mut input = transcript(&TRANSCRIPT[..2]);
            input.extend(frame(
                "exception",
                kind,
                &json!({ "message": message }).to_string(),
            ));
            let r = run(&input, false, 3);
            assert_eq!(r.end.map_err(|e| e.class), Err(class), "{kind}");
        }
        // An error frame carrying its message in a header.
        let m = Message::new(Bytes::new())
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("error".into()),
            ))
            .add_header(Header::new(
                ":error-code",
                HeaderValue::String("InternalFailure".into()),
            ))
            .add_header(Header::new(
                ":error-message",
                HeaderValue::String("it broke".into()),
            ));
        let mut input = Vec::new();
        write_message_to(&m, &mut input).expect("encodes");
        let e = run(&input, false, 1).end.expect_err("error frame");
        assert_eq!(e.class, ErrorClass::ServerError);
        assert_eq!(e.message, "it broke");
        assert_eq!(e.code.as_deref(), Some("InternalFailure"));
    }

    #[test]
    fn a_tool_first_answer_has_content_null_and_empty_inputs_become_empty_objects() {
        let input = transcript(&[
            ("messageStart", r#"{"role":"assistant"}"#),
            (
                "contentBlockStart",
                r#"{"contentBlockIndex":0,"start":{"toolUse":{"toolUseId":"t0","name":"now"}}}"#,
            ),
            ("contentBlockStop", r#"{"contentBlockIndex":0}"#),
            (
                "contentBlockStart",
                r#"{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"t1","name":"f"}}}"#,
            ),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":""}}}"#,
            ),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"a\":1}"}}}"#,
            ),
            ("contentBlockStop", r#"{"contentBlockIndex":1}"#),
            ("messageStop", r#"{"stopReason":"tool_use"}"#),
            (
                "metadata",
                r#"{"usage":{"inputTokens":5,"outputTokens":6,"cacheReadInputTokens":100,"cacheWriteInputTokens":7}}"#,
            ),
        ]);
        let r = run(&input, true, 9);
        assert!(r.end.is_ok());
        assert_eq!(
            deltas(&r.chunks),
            vec![
                json!({"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"t0","type":"function","function":{"name":"now","arguments":""}}]}),
                json!({"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}),
                json!({"tool_calls":[{"index":1,"id":"t1","type":"function","function":{"name":"f","arguments":""}}]}),
                json!({"tool_calls":[{"index":1,"function":{"arguments":"{\"a\":1}"}}]}),
                json!({}),
            ]
        );
        assert_eq!(
            r.chunks[5]["usage"],
            json!({"prompt_tokens":112,"completion_tokens":6,"total_tokens":118,"prompt_tokens_details":{"cached_tokens":100,"cache_write_tokens":7}})
        );
        assert!(r.progress[1].meaningful);
    }

    #[test]
    fn the_forced_json_tool_streams_as_content() {
        let input = transcript(&[
            ("messageStart", r#"{"role":"assistant"}"#),
            (
                "contentBlockStart",
                r#"{"contentBlockIndex":0,"start":{"toolUse":{"toolUseId":"t","name":"json_tool_call"}}}"#,
            ),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"toolUse":{"input":"{\"a\":"}}}"#,
            ),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"toolUse":{"input":"1}"}}}"#,
            ),
            ("contentBlockStop", r#"{"contentBlockIndex":0}"#),
            ("messageStop", r#"{"stopReason":"tool_use"}"#),
        ]);
        let r = run(&input, false, 4);
        assert!(r.end.is_ok(), "EOF after messageStop is complete");
        assert_eq!(
            deltas(&r.chunks),
            vec![
                json!({"role":"assistant","content":""}),
                json!({"content":"{\"a\":"}),
                json!({"content":"1}"}),
                json!({}),
            ]
        );
        assert_eq!(r.chunks[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(r.chunks[4], "[DONE]");
    }

    #[test]
    fn unknown_events_are_ignored_and_invalid_payloads_counted() {
        let mut frames: Vec<(&str, &str)> = TRANSCRIPT.to_vec();
        frames.insert(1, ("somethingNew", r#"{"x":1}"#));
        frames.insert(2, ("contentBlockDelta", "{oops"));
        frames.insert(3, ("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"thinking"}},"p":"abcdef"}"#));
        frames.insert(4, ("messageStart", "not json"));
        let input = transcript(&frames);
        let r = run(&input, true, input.len());
        assert!(r.end.is_ok());
        assert_eq!(r.t.invalid_events(), 2);
        let want = run(&transcript(TRANSCRIPT), true, 1000);
        assert_eq!(r.chunks, want.chunks);
    }

    #[test]
    fn a_truncated_stream_is_an_error_and_an_empty_answer_still_gets_a_role() {
        let input = transcript(&TRANSCRIPT[..6]);
        let r = run(&input, true, input.len());
        let e = r.end.expect_err("no messageStop");
        assert_eq!(e.class, ErrorClass::ServerError);
        assert!(!r.t.is_done());
        // Cut in the middle of a frame.
        let mut input = transcript(&TRANSCRIPT[..2]);
        let next = event(TRANSCRIPT[2].0, TRANSCRIPT[2].1);
        input.extend_from_slice(&next[..next.len() / 2]);
        assert!(run(&input, false, 3).end.is_err());
        // messageStop without metadata: complete at EOF, usage chunk with what was seen.
        let input = transcript(&[
            ("messageStart", "{}"),
            ("messageStop", r#"{"stopReason":"end_turn"}"#),
        ]);
        let r = run(&input, true, 2);
        assert!(r.end.is_ok());
        assert_eq!(
            deltas(&r.chunks),
            vec![json!({"role":"assistant","content":""}), json!({})]
        );
        assert_eq!(r.chunks[1]["choices"][0]["finish_reason"], "stop");
        assert_eq!(r.chunks[2]["choices"], json!([]));
        assert_eq!(r.chunks[3], "[DONE]");
        // metadata before messageStop also completes the stream.
        let input = transcript(&[
            (
                "metadata",
                r#"{"usage":{"inputTokens":1,"outputTokens":2}}"#,
            ),
            ("messageStop", r#"{"stopReason":"max_tokens"}"#),
        ]);
        let r = run(&input, false, 1000);
        assert!(r.t.is_done() && r.end.is_ok());
        assert_eq!(r.chunks[1]["choices"][0]["finish_reason"], "length");
        assert_eq!(r.t.usage().total(), 3);
    }

    #[test]
    fn multi_byte_text_split_across_reads_survives() {
        let input = transcript(&[
            ("messageStart", "{}"),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"text":"héllo wörld ✓"}}"#,
            ),
            ("messageStop", r#"{"stopReason":"end_turn"}"#),
            ("metadata", "{}"),
        ]);
        for read in 1..8 {
            let r = run(&input, false, read);
            assert!(r.end.is_ok());
            assert_eq!(deltas(&r.chunks)[1], json!({"content":"héllo wörld ✓"}));
        }
    }
}
