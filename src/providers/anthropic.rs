//! The `anthropic` kind: OpenAI Chat Completions <-> Anthropic Messages API, both ways
//! (providers.md §3): request mapping, response and usage mapping, the named-event stream turned
//! into OpenAI chunks, and error classification. Pure functions; no I/O.

use std::borrow::Cow;
use std::time::Duration;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::oai::{ChunkWriter, Completion, Delta, RoleOnce, ToolCallDelta, ToolCallOut, Usage};
use super::request::{ChatRequest, Content, Part, Role, ToolChoice};
use super::sse::SseEvent;
use super::{is_context_window_message, status_error, truncate_message, Progress, TranslateError};
use crate::error::{ErrorClass, UpstreamError};

// === request ===

#[derive(Serialize)]
struct Request<'r> {
    model: &'r str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<System<'r>>,
    messages: Vec<Msg<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'r str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolDef<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<AToolChoice<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'r>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum System<'r> {
    Text(&'r str),
    Blocks(Vec<Block<'r>>),
}

#[derive(Serialize)]
struct Msg<'r> {
    role: &'static str,
    content: MsgContent<'r>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum MsgContent<'r> {
    Text(&'r str),
    Blocks(Vec<Block<'r>>),
}

impl<'r> MsgContent<'r> {
    fn into_blocks(self) -> Vec<Block<'r>> {
        match self {
            MsgContent::Text(t) => vec![Block::Text { text: t }],
            MsgContent::Blocks(b) => b,
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'r> {
    Text {
        text: &'r str,
    },
    Image {
        source: ImageSource<'r>,
    },
    ToolUse {
        id: &'r str,
        name: &'r str,
        input: &'r RawValue,
    },
    ToolResult {
        tool_use_id: &'r str,
        content: MsgContent<'r>,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource<'r> {
    Base64 { media_type: &'r str, data: &'r str },
    Url { url: &'r str },
}

#[derive(Serialize)]
struct ToolDef<'r> {
    name: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'r str>,
    input_schema: &'r RawValue,
}

#[derive(Serialize)]
struct AToolChoice<'r> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'r str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disable_parallel_tool_use: bool,
}

#[derive(Serialize)]
struct Metadata<'r> {
    user_id: &'r str,
}

/// Anthropic requires `input_schema`; a tool without parameters takes an empty object.
const EMPTY_SCHEMA: &str = r#"{"type":"object","properties":{}}"#;
const EMPTY_OBJECT: &str = "{}";

/// Anthropic needs the conversation to open with a user turn.
const OPENING_USER_TURN: &str = ".";

/// Builds the Messages API body for `req`.
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
    if let Some(rf) = &req.response_format {
        if rf.kind != "text" {
            return Err(TranslateError::unsupported(
                "response_format",
                "response_format other than text",
            ));
        }
    }
    let empty_schema = raw(EMPTY_SCHEMA)?;

    let mut system_texts: Vec<&str> = Vec::new();
    let mut messages: Vec<Msg> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let (role, content) = match m.role {
            Role::System | Role::Developer => {
                if let Some(c) = &m.content {
                    push_text_parts(c, &mut system_texts);
                }
                continue;
            }
            Role::User => ("user", user_content(i, m.content.as_ref())?),
            Role::Assistant => ("assistant", assistant_content(i, m)?),
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let content = match &m.content {
                    Some(c) => user_content(i, Some(c))?,
                    None => MsgContent::Blocks(Vec::new()),
                };
                (
                    "user",
                    MsgContent::Blocks(vec![Block::ToolResult {
                        tool_use_id: id,
                        content,
                    }]),
                )
            }
            Role::Function => {
                return Err(TranslateError::unsupported(
                    format!("messages[{i}].role"),
                    "the legacy function role",
                ))
            }
        };
        if is_empty(&content) {
            continue;
        }
        // Consecutive turns of one role are merged: Anthropic wants them alternating.
        match messages.last_mut() {
            Some(last) if last.role == role => {
                let prev = std::mem::replace(&mut last.content, MsgContent::Blocks(Vec::new()));
                let mut blocks = prev.into_blocks();
                blocks.extend(content.into_blocks());
                last.content = MsgContent::Blocks(blocks);
            }
            _ => messages.push(Msg { role, content }),
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
                content: MsgContent::Text(OPENING_USER_TURN),
            },
        );
    }

    let system = match system_texts.len() {
        0 => None,
        1 => Some(System::Text(system_texts[0])),
        _ => Some(System::Blocks(
            system_texts
                .iter()
                .map(|t| Block::Text { text: t })
                .collect(),
        )),
    };

    let tools: Vec<ToolDef> = req
        .tools
        .iter()
        .map(|t| ToolDef {
            name: &t.function.name,
            description: t.function.description.as_deref(),
            input_schema: t.function.parameters.unwrap_or(empty_schema),
        })
        .collect();
    let disable_parallel = req.parallel_tool_calls == Some(false);
    let tool_choice = if tools.is_empty() {
        None
    } else {
        let (kind, name) = match &req.tool_choice {
            None | Some(ToolChoice::Auto) => ("auto", None),
            Some(ToolChoice::Required) => ("any", None),
            Some(ToolChoice::None) => ("none", None),
            Some(ToolChoice::Function(n)) => ("tool", Some(n.as_ref())),
        };
        if req.tool_choice.is_none() && !disable_parallel {
            None
        } else {
            Some(AToolChoice {
                kind,
                name,
                disable_parallel_tool_use: disable_parallel && kind != "none",
            })
        }
    };

    // Anthropic's temperature range is 0-1 (OpenAI's is 0-2), and newer models refuse
    // temperature and top_p together: send temperature, or top_p when it is alone.
    let temperature = req.temperature.map(|t| t.min(1.0));
    let top_p = if temperature.is_none() {
        req.top_p
    } else {
        None
    };
    let stop_sequences = req
        .stop
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| !s.trim().is_empty())
        .collect();
    // Anthropic refuses personal data in user_id; an e-mail address is the common case.
    let metadata = req
        .user
        .as_deref()
        .filter(|u| !u.is_empty() && !u.contains('@'))
        .map(|user_id| Metadata { user_id });

    let body = Request {
        model: upstream_model,
        max_tokens: req.max_tokens.unwrap_or(default_max_tokens),
        system,
        messages,
        temperature,
        top_p,
        stop_sequences,
        tools,
        tool_choice,
        metadata,
        stream: req.stream,
    };
    serde_json::to_vec(&body).map_err(|e| TranslateError::new("", e.to_string()))
}

fn raw(s: &'static str) -> Result<&'static RawValue, TranslateError> {
    serde_json::from_str(s).map_err(|e| TranslateError::new("", e.to_string()))
}

fn is_empty(c: &MsgContent<'_>) -> bool {
    match c {
        MsgContent::Text(t) => t.is_empty(),
        MsgContent::Blocks(b) => b.is_empty(),
    }
}

fn push_text_parts<'r>(c: &'r Content<'_>, out: &mut Vec<&'r str>) {
    match c {
        Content::Text(t) if !t.is_empty() => out.push(t),
        Content::Text(_) => {}
        Content::Parts(parts) => {
            for p in parts {
                if let Part::Text { text } = p {
                    if !text.is_empty() {
                        out.push(text);
                    }
                }
            }
        }
    }
}

fn user_content<'r>(
    i: usize,
    c: Option<&'r Content<'_>>,
) -> Result<MsgContent<'r>, TranslateError> {
    Ok(match c {
        None => MsgContent::Blocks(Vec::new()),
        Some(Content::Text(t)) => MsgContent::Text(t),
        Some(Content::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                match p {
                    Part::Text { text } if text.is_empty() => {}
                    Part::Text { text } => blocks.push(Block::Text { text }),
                    Part::ImageUrl { image_url } => blocks.push(Block::Image {
                        source: image_source(&image_url.url).ok_or_else(|| {
                            TranslateError::new(
                                format!("messages[{i}].content[{j}].image_url.url"),
                                "must be an http(s) URL or a base64 data URL of a jpeg, png, gif or webp image",
                            )
                        })?,
                    }),
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
            MsgContent::Blocks(blocks)
        }
    })
}

fn image_source(url: &str) -> Option<ImageSource<'_>> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',')?;
        let media_type = meta.strip_suffix(";base64")?;
        matches!(
            media_type,
            "image/jpeg" | "image/png" | "image/gif" | "image/webp"
        )
        .then_some(ImageSource::Base64 { media_type, data })
    } else if url.starts_with("https://") || url.starts_with("http://") {
        Some(ImageSource::Url { url })
    } else {
        None
    }
}

fn assistant_content<'r>(
    i: usize,
    m: &'r super::request::Message<'_>,
) -> Result<MsgContent<'r>, TranslateError> {
    let calls = m.tool_calls.as_deref().unwrap_or_default();
    if calls.is_empty() {
        return user_content(i, m.content.as_ref()).map(|c| match c {
            // Assistant content cannot carry images; only text survives.
            MsgContent::Blocks(b) => MsgContent::Blocks(
                b.into_iter()
                    .filter(|b| matches!(b, Block::Text { .. }))
                    .collect(),
            ),
            text => text,
        });
    }
    let mut blocks = Vec::with_capacity(calls.len() + 1);
    if let Some(c) = &m.content {
        let mut texts = Vec::new();
        push_text_parts(c, &mut texts);
        blocks.extend(texts.into_iter().map(|text| Block::Text { text }));
    }
    for (j, call) in calls.iter().enumerate() {
        let input = super::tool_arguments(i, j, &call.function.arguments)?;
        blocks.push(Block::ToolUse {
            id: &call.id,
            name: &call.function.name,
            input,
        });
    }
    Ok(MsgContent::Blocks(blocks))
}

// === response ===

#[derive(Deserialize, Default)]
struct AUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

/// Input-side counts as Anthropic reports them; `input_tokens` excludes cache reads and writes.
#[derive(Debug, Default, Clone, Copy)]
struct InputUsage {
    input: u64,
    cache_write: u64,
    cache_read: u64,
}

impl InputUsage {
    fn update(&mut self, u: &AUsage) {
        if let Some(n) = u.input_tokens {
            self.input = n;
        }
        if let Some(n) = u.cache_creation_input_tokens {
            self.cache_write = n;
        }
        if let Some(n) = u.cache_read_input_tokens {
            self.cache_read = n;
        }
    }

    fn with_output(&self, output: u64) -> Usage {
        Usage {
            prompt_tokens: self
                .input
                .saturating_add(self.cache_write)
                .saturating_add(self.cache_read),
            completion_tokens: output,
            cached_tokens: self.cache_read,
            cache_write_tokens: self.cache_write,
            reasoning_tokens: 0,
        }
    }
}

/// A content block of a response. Flat rather than a tagged enum: serde buffers tagged enums,
/// and a buffered value cannot be borrowed as raw JSON (`input`).
#[derive(Deserialize)]
struct OutBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    content: Vec<OutBlock<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: AUsage,
}

/// Anthropic `stop_reason` -> OpenAI `finish_reason` (providers.md §0.5).
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// Translates a 2xx Messages response into a `chat.completion` body.
pub fn parse_response(body: &[u8], created: u64) -> Result<(BytesMut, Usage), UpstreamError> {
    let resp: Response = serde_json::from_slice(body).map_err(|_| {
        UpstreamError::new(
            ErrorClass::ServerError,
            "upstream returned a malformed Messages body",
        )
    })?;
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in &resp.content {
        match block.kind.as_ref() {
            "text" => {
                if let Some(t) = &block.text {
                    text.get_or_insert_with(String::new).push_str(t);
                }
            }
            "tool_use" => tool_calls.push(ToolCallOut {
                id: block.id.as_deref().unwrap_or_default().to_owned(),
                name: block.name.as_deref().unwrap_or_default().to_owned(),
                arguments: block.input.map_or(EMPTY_OBJECT, |i| i.get()).to_owned(),
            }),
            // thinking, redacted_thinking, server tools: not part of the OpenAI message.
            _ => {}
        }
    }
    let mut input = InputUsage::default();
    input.update(&resp.usage);
    let usage = input.with_output(resp.usage.output_tokens.unwrap_or(0));
    let completion = Completion {
        id: resp.id.into_owned(),
        created,
        model: resp.model.into_owned(),
        content: text,
        tool_calls,
        finish_reason: finish_reason(resp.stop_reason.as_deref()),
        usage,
    };
    Ok((completion.to_json(), usage))
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    error: ErrorDetail<'a>,
}

#[derive(Deserialize, Default)]
struct ErrorDetail<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    message: Cow<'a, str>,
}

fn read_error(body: &[u8]) -> (String, String) {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error.kind.into_owned(), b.error.message.into_owned()),
        Err(_) => (String::new(), String::new()),
    }
}

/// Classifies a non-2xx response from the Messages API (providers.md §3.5).
pub fn classify_error(status: u16, retry_after: Option<Duration>, body: &[u8]) -> UpstreamError {
    let (kind, message) = read_error(body);
    let lower = message.to_ascii_lowercase();
    let class = match (status, kind.as_str()) {
        (429, _) if lower.contains("spend limit") || lower.contains("credit balance") => {
            ErrorClass::QuotaExhausted
        }
        (429, _) | (_, "rate_limit_error") => ErrorClass::RateLimited,
        (529, _) | (503, _) | (_, "overloaded_error") => ErrorClass::Overloaded,
        (402, _) | (_, "billing_error") => ErrorClass::QuotaExhausted,
        (401 | 403 | 404, _) | (_, "authentication_error" | "permission_error") => {
            ErrorClass::UpstreamAuth
        }
        (400 | 413, _) => {
            if is_context_window_message(&message) {
                ErrorClass::ContextWindow
            } else if lower.contains("content filtering policy") {
                ErrorClass::ContentPolicy
            } else {
                ErrorClass::BadRequest
            }
        }
        (408, _) => ErrorClass::Timeout,
        (500..=599, _) => ErrorClass::ServerError,
        (400..=499, _) => ErrorClass::BadRequest,
        _ => ErrorClass::ServerError,
    };
    status_error(class, status, &message, Some(kind), retry_after)
}

// === stream ===

fn not_started() -> UpstreamError {
    UpstreamError::new(
        ErrorClass::ServerError,
        "upstream stream did not start with message_start",
    )
}

#[derive(Debug, Clone, Copy)]
enum BlockKind {
    Text,
    Tool { oai_index: u32, args_seen: bool },
    Other,
}

/// Turns Anthropic's named events into OpenAI chunks (providers.md §3.4).
#[derive(Debug)]
pub struct StreamTranslator {
    writer: Option<ChunkWriter>,
    include_usage: bool,
    created: u64,
    role: RoleOnce,
    input: InputUsage,
    output_tokens: u64,
    finished: bool,
    done: bool,
    /// Indexed by Anthropic's block index.
    blocks: Vec<BlockKind>,
    next_tool_index: u32,
    invalid_events: u32,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    MessageStart {
        #[serde(borrow)]
        message: StartMessage<'a>,
    },
    ContentBlockStart {
        index: usize,
        #[serde(borrow)]
        content_block: StartBlock<'a>,
    },
    ContentBlockDelta {
        index: usize,
        #[serde(borrow)]
        delta: BlockDelta<'a>,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        #[serde(borrow)]
        delta: MessageDeltaBody<'a>,
        #[serde(default)]
        usage: Option<AUsage>,
    },
    MessageStop,
    Ping,
    Error {
        #[serde(borrow)]
        error: ErrorDetail<'a>,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(default)]
    usage: AUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock<'a> {
    Text {
        #[serde(borrow, default)]
        text: Cow<'a, str>,
    },
    ToolUse {
        #[serde(borrow)]
        id: Cow<'a, str>,
        #[serde(borrow)]
        name: Cow<'a, str>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta<'a> {
    TextDelta {
        #[serde(borrow)]
        text: Cow<'a, str>,
    },
    InputJsonDelta {
        #[serde(borrow)]
        partial_json: Cow<'a, str>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody<'a> {
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

impl StreamTranslator {
    pub fn new(include_usage: bool, created: u64) -> Self {
        StreamTranslator {
            writer: None,
            include_usage,
            created,
            role: RoleOnce::default(),
            input: InputUsage::default(),
            output_tokens: 0,
            finished: false,
            done: false,
            blocks: Vec::new(),
            next_tool_index: 0,
            invalid_events: 0,
        }
    }

    pub fn usage(&self) -> Usage {
        self.input.with_output(self.output_tokens)
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn invalid_events(&self) -> u32 {
        self.invalid_events
    }

    fn writer(&mut self) -> Result<&ChunkWriter, UpstreamError> {
        self.writer.as_ref().ok_or_else(not_started)
    }

    /// The role chunk goes out with the first text (see [`RoleOnce`]).
    fn ensure_role(&mut self, out: &mut BytesMut) -> Result<(), UpstreamError> {
        let w = self.writer.as_ref().ok_or_else(not_started)?;
        self.role.before_text(w, out);
        Ok(())
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

    pub fn on_event(
        &mut self,
        ev: &SseEvent,
        out: &mut BytesMut,
    ) -> Result<Progress, UpstreamError> {
        let Ok(event) = serde_json::from_slice::<Event>(&ev.data) else {
            self.invalid_events += 1;
            return Ok(Progress::NOTHING);
        };
        let mut progress = Progress::NOTHING;
        match event {
            Event::MessageStart { message } => {
                self.input.update(&message.usage);
                self.output_tokens = message.usage.output_tokens.unwrap_or(0);
                self.writer = Some(ChunkWriter {
                    id: message.id.into_owned(),
                    created: self.created,
                    model: message.model.into_owned(),
                    include_usage: self.include_usage,
                });
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                StartBlock::Text { text } => {
                    self.set_block(index, BlockKind::Text);
                    self.ensure_role(out)?;
                    if !text.is_empty() {
                        self.writer()?.delta(
                            out,
                            Delta {
                                content: Some(&text),
                                ..Delta::default()
                            },
                        );
                        progress.meaningful = true;
                    }
                }
                StartBlock::ToolUse { id, name } => {
                    let oai_index = self.next_tool_index;
                    self.next_tool_index += 1;
                    self.set_block(
                        index,
                        BlockKind::Tool {
                            oai_index,
                            args_seen: false,
                        },
                    );
                    let w = self.writer.as_ref().ok_or_else(not_started)?;
                    self.role.tool_head(w, out, oai_index, &id, &name, "");
                    progress.meaningful = true;
                }
                StartBlock::Other => self.set_block(index, BlockKind::Other),
            },
            Event::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } if !text.is_empty() => {
                    self.ensure_role(out)?;
                    self.writer()?.delta(
                        out,
                        Delta {
                            content: Some(&text),
                            ..Delta::default()
                        },
                    );
                    progress.meaningful = true;
                }
                BlockDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                    if let Some(BlockKind::Tool {
                        oai_index,
                        args_seen,
                    }) = self.blocks.get_mut(index)
                    {
                        *args_seen = true;
                        let oai_index = *oai_index;
                        self.writer()?.delta(
                            out,
                            Delta {
                                tool_call: Some(ToolCallDelta {
                                    index: oai_index,
                                    id_and_name: None,
                                    arguments: &partial_json,
                                }),
                                ..Delta::default()
                            },
                        );
                        progress.meaningful = true;
                    }
                }
                _ => {}
            },
            Event::ContentBlockStop { index } => {
                if let Some(BlockKind::Tool {
                    oai_index,
                    args_seen: false,
                }) = self.blocks.get(index).copied()
                {
                    // A tool with no arguments still needs parseable arguments.
                    self.writer()?.delta(
                        out,
                        Delta {
                            tool_call: Some(ToolCallDelta {
                                index: oai_index,
                                id_and_name: None,
                                arguments: EMPTY_OBJECT,
                            }),
                            ..Delta::default()
                        },
                    );
                }
            }
            Event::MessageDelta { delta, usage } => {
                if let Some(u) = &usage {
                    self.input.update(u);
                    if let Some(n) = u.output_tokens {
                        self.output_tokens = n;
                    }
                }
                if !self.finished {
                    self.ensure_role(out)?;
                    let reason = finish_reason(delta.stop_reason.as_deref());
                    self.writer()?.finish(out, reason);
                    self.finished = true;
                    progress.finished = true;
                }
            }
            Event::MessageStop => {
                if !self.finished {
                    self.ensure_role(out)?;
                    self.writer()?.finish(out, "stop");
                    self.finished = true;
                }
                let usage = self.usage();
                self.writer()?.end(out, &usage);
                self.done = true;
                progress.finished = true;
            }
            Event::Ping | Event::Unknown => {}
            Event::Error { error } => {
                let class = match error.kind.as_ref() {
                    "overloaded_error" => ErrorClass::Overloaded,
                    "rate_limit_error" => ErrorClass::RateLimited,
                    "timeout_error" => ErrorClass::Timeout,
                    _ => ErrorClass::ServerError,
                };
                let message = if error.message.is_empty() {
                    "upstream sent an error event".to_owned()
                } else {
                    truncate_message(&error.message)
                };
                let code = Some(error.kind.into_owned()).filter(|k| super::is_identifier(k));
                return Err(UpstreamError::new(class, message).with_code(code));
            }
        }
        Ok(progress)
    }

    /// The upstream closed the stream: complete only after `message_stop`.
    pub fn on_eof(&mut self, _out: &mut BytesMut) -> Result<(), UpstreamError> {
        if self.done {
            Ok(())
        } else {
            Err(UpstreamError::new(
                ErrorClass::ServerError,
                "upstream closed the stream before message_stop",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::request::ChatBody;
    use bytes::Bytes;
    use serde_json::{json, Value};

    fn translate(req_json: &str) -> Result<Value, TranslateError> {
        let body = ChatBody::parse(Bytes::copy_from_slice(req_json.as_bytes()))
            .expect("valid OpenAI request");
        let req = ChatRequest::from_body(&body).expect("typed");
        build_request(&req, "claude-sonnet-4-5", 4096)
            .map(|b| serde_json::from_slice(&b).expect("valid JSON"))
    }

    /// The vectors write a lone text turn sometimes as a string, sometimes as one text block;
    /// Anthropic treats both the same, so compare with strings turned into blocks.
    fn normalize(mut v: Value) -> Value {
        if let Some(msgs) = v.get_mut("messages").and_then(Value::as_array_mut) {
            for m in msgs {
                if let Some(s) = m.get("content").and_then(Value::as_str).map(str::to_owned) {
                    m["content"] = json!([{"type":"text","text": s}]);
                }
            }
        }
        v
    }

    const C1: &str = r#"{"model":"claude","messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"Say hello."}],"temperature":0.2,"max_tokens":64,"stop":["END"],"user":"u-123"}"#;
    const C2: &str = r#"{"model":"claude","messages":[{"role":"user","content":"What's the weather in Paris?"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Get current weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],"tool_choice":"auto","max_tokens":256}"#;

    #[test]
    fn c2_translates_to_the_9_2_request() {
        let got = translate(C2).expect("translates");
        let want = json!({"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":[{"type":"text","text":"What's the weather in Paris?"}]}],"tools":[{"name":"get_weather","description":"Get current weather for a city","input_schema":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}],"tool_choice":{"type":"auto"}});
        assert_eq!(normalize(got), normalize(want));
    }

    #[test]
    fn c1_streaming_translates_to_the_9_2_request() {
        let streaming = C1.replacen('{', r#"{"stream":true,"#, 1);
        let got = translate(&streaming).expect("translates");
        let want = json!({"model":"claude-sonnet-4-5","max_tokens":64,"system":"You are a terse assistant.","messages":[{"role":"user","content":"Say hello."}],"temperature":0.2,"stop_sequences":["END"],"metadata":{"user_id":"u-123"},"stream":true});
        assert_eq!(got, want);
    }

    #[test]
    fn max_tokens_defaults_and_multi_turn_tools_round_trip() {
        let got = translate(r#"{"model":"c","messages":[
            {"role":"developer","content":"Be brief."},
            {"role":"system","content":[{"type":"text","text":"Use tools."}]},
            {"role":"user","content":"Weather in Paris and Rome?"},
            {"role":"assistant","content":"Checking.","tool_calls":[
                {"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                {"id":"call_2","type":"function","function":{"name":"get_weather","arguments":""}}]},
            {"role":"tool","tool_call_id":"call_1","content":"18C"},
            {"role":"tool","tool_call_id":"call_2","content":[{"type":"text","text":"21C"}]},
            {"role":"user","content":"Thanks, and tomorrow?"}],
            "tools":[{"type":"function","function":{"name":"get_weather"}}],
            "tool_choice":"required","parallel_tool_calls":false,"temperature":1.7,"top_p":0.9}"#)
        .expect("translates");
        assert_eq!(got["max_tokens"], 4096);
        assert_eq!(
            got["system"],
            json!([{"type":"text","text":"Be brief."},{"type":"text","text":"Use tools."}])
        );
        assert_eq!(got["temperature"], 1.0);
        assert!(
            got.get("top_p").is_none(),
            "never both temperature and top_p"
        );
        assert_eq!(
            got["tool_choice"],
            json!({"type":"any","disable_parallel_tool_use":true})
        );
        assert_eq!(
            got["tools"][0]["input_schema"],
            json!({"type":"object","properties":{}})
        );
        assert_eq!(
            got["messages"],
            json!([
                {"role":"user","content":"Weather in Paris and Rome?"},
                {"role":"assistant","content":[
                    {"type":"text","text":"Checking."},
                    {"type":"tool_use","id":"call_1","name":"get_weather","input":{"city":"Paris"}},
                    {"type":"tool_use","id":"call_2","name":"get_weather","input":{}}]},
                {"role":"user","content":[
                    {"type":"tool_result","tool_use_id":"call_1","content":"18C"},
                    {"type":"tool_result","tool_use_id":"call_2","content":[{"type":"text","text":"21C"}]},
                    {"type":"text","text":"Thanks, and tomorrow?"}]}
            ])
        );
    }

    #[test]
    fn images_and_a_leading_assistant_turn() {
        let got = translate(r#"{"model":"c","messages":[
            {"role":"assistant","content":"Hi, send me a picture."},
            {"role":"user","content":[{"type":"text","text":"Here:"},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},
                {"type":"image_url","image_url":{"url":"https://example.com/cat.jpg","detail":"low"}},
                {"type":"text","text":""}]}]}"#)
        .expect("translates");
        assert_eq!(got["messages"][0], json!({"role":"user","content":"."}));
        assert_eq!(got["messages"][1]["role"], "assistant");
        assert_eq!(
            got["messages"][2]["content"],
            json!([{"type":"text","text":"Here:"},
                   {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},
                   {"type":"image","source":{"type":"url","url":"https://example.com/cat.jpg"}}])
        );
    }

    #[test]
    fn untranslatable_requests_name_the_field() {
        let e = translate(r#"{"model":"c","messages":[{"role":"user","content":"x"}],"n":2}"#)
            .expect_err("n>1 is unsupported");
        assert_eq!(e.param, "n");
        let e = translate(r#"{"model":"c","messages":[{"role":"user","content":"x"},{"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{oops"}}]}]}"#)
            .expect_err("bad arguments");
        assert_eq!(e.param, "messages[1].tool_calls[0].function.arguments");
        let e = translate(r#"{"model":"c","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:application/pdf;base64,AAAA"}}]}]}"#)
            .expect_err("pdf is not an image");
        assert_eq!(e.param, "messages[0].content[0].image_url.url");
        let e =
            translate(r#"{"model":"c","messages":[{"role":"system","content":"only system"}]}"#)
                .expect_err("no turns");
        assert_eq!(e.param, "messages");
        let got = translate(r#"{"model":"c","messages":[{"role":"user","content":"x"}],"user":"bob@example.com","stop":["  ","END"]}"#).expect("translates");
        assert!(
            got.get("metadata").is_none(),
            "e-mail addresses are not sent as user_id"
        );
        assert_eq!(got["stop_sequences"], json!(["END"]));
    }

    #[test]
    fn the_9_2_response_translates_to_the_expected_output() {
        let upstream = br#"{"id":"msg_01GwVecAnth0001","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Let me check."},{"type":"tool_use","id":"toolu_01GwVecTool0001","name":"get_weather","input":{"city":"Paris"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":400,"output_tokens":58}}"#;
        let (out, usage) = parse_response(upstream, 1735689602).expect("translates");
        let got: Value = serde_json::from_slice(&out).expect("json");
        let want = json!({"id":"msg_01GwVecAnth0001","object":"chat.completion","created":1735689602,"model":"claude-sonnet-4-5-20250929","choices":[{"index":0,"message":{"role":"assistant","content":"Let me check.","tool_calls":[{"id":"toolu_01GwVecTool0001","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":412,"completion_tokens":58,"total_tokens":470,"prompt_tokens_details":{"cached_tokens":400}}});
        assert_eq!(got, want);
        assert_eq!(usage.prompt_tokens, 412);
        assert_eq!(usage.cached_tokens, 400);
    }

    #[test]
    fn cache_writes_count_as_prompt_tokens_and_refusals_as_content_filter() {
        let upstream = br#"{"id":"m","model":"c","content":[],"stop_reason":"refusal","usage":{"input_tokens":10,"cache_creation_input_tokens":100,"cache_read_input_tokens":0,"output_tokens":1}}"#;
        let (out, usage) = parse_response(upstream, 1).expect("translates");
        let got: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(got["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(got["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(got["usage"]["prompt_tokens"], 110);
        assert_eq!(
            got["usage"]["prompt_tokens_details"]["cache_write_tokens"],
            100
        );
        assert_eq!(usage.cache_write_tokens, 100);
        assert!(parse_response(b"{\"nope\":1}", 1).is_err());
    }

    #[test]
    fn errors_are_classified() {
        let overloaded = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_GwVec0001"}"#;
        assert_eq!(
            classify_error(529, None, overloaded).class,
            ErrorClass::Overloaded
        );
        let rl = br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#;
        let e = classify_error(429, Some(Duration::from_secs(7)), rl);
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        let ctx = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        assert_eq!(
            classify_error(400, None, ctx).class,
            ErrorClass::ContextWindow
        );
        let bad = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
        let e = classify_error(400, None, bad);
        assert_eq!(e.class, ErrorClass::BadRequest);
        assert_eq!(e.message, "max_tokens: Field required");
        let auth = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        assert_eq!(
            classify_error(401, None, auth).class,
            ErrorClass::UpstreamAuth
        );
        assert!(
            !classify_error(401, None, auth)
                .message
                .contains("x-api-key"),
            "auth failures are described in our words, not the provider's"
        );
        let billing = br#"{"type":"error","error":{"type":"billing_error","message":"no credit"}}"#;
        assert_eq!(
            classify_error(402, None, billing).class,
            ErrorClass::QuotaExhausted
        );
        assert_eq!(
            classify_error(500, None, b"{}").class,
            ErrorClass::ServerError
        );
        assert_eq!(
            classify_error(504, None, b"").class,
            ErrorClass::ServerError
        );
    }

    fn run_stream(
        input: &str,
        include_usage: bool,
    ) -> (
        Vec<Value>,
        Vec<Progress>,
        crate::providers::StreamTranslator,
        Result<(), UpstreamError>,
    ) {
        let mut t = crate::providers::StreamTranslator::Anthropic(StreamTranslator::new(
            include_usage,
            1735689603,
        ));
        let (out, progress, end) = crate::providers::test_support::feed(&mut t, input);
        let chunks = out
            .split("\n\n")
            .filter(|s| !s.is_empty())
            .map(|s| {
                let data = s.strip_prefix("data: ").expect("data line");
                if data == "[DONE]" {
                    json!("[DONE]")
                } else {
                    serde_json::from_str(data).expect("json chunk")
                }
            })
            .collect();
        (chunks, progress, t, end)
    }

    const STREAM_9_2: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01GwVecAnth0002\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":21,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: ping\ndata: {\"type\":\"ping\"}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo.\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":4}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn the_9_2_stream_becomes_the_expected_chunks() {
        let (chunks, progress, t, end) = run_stream(STREAM_9_2, true);
        assert!(end.is_ok());
        assert_eq!(chunks.len(), 6, "{chunks:#?}");
        for c in &chunks[..5] {
            assert_eq!(c["id"], "msg_01GwVecAnth0002");
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["created"], 1735689603);
            assert_eq!(c["model"], "claude-sonnet-4-5-20250929");
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
            json!({"prompt_tokens":21,"completion_tokens":4,"total_tokens":25,"prompt_tokens_details":{"cached_tokens":0}})
        );
        assert_eq!(chunks[5], "[DONE]");
        // message_start, block start, ping: nothing meaningful yet; "Hel" is.
        assert!(!progress[0].meaningful && !progress[1].meaningful && !progress[2].meaningful);
        assert!(progress[3].meaningful);
        assert_eq!(t.usage().total(), 25);
    }

    #[test]
    fn without_include_usage_no_usage_is_sent() {
        let (chunks, _, _, end) = run_stream(STREAM_9_2, false);
        assert!(end.is_ok());
        assert_eq!(chunks.len(), 5);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    }

    #[test]
    fn a_tool_use_stream_becomes_tool_call_chunks_with_oai_indices() {
        let input = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_t\",\"model\":\"claude\",\"usage\":{\"input_tokens\":380,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Checking.\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01GwVecTool0002\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Par\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"is\\\"}\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"now\",\"input\":{}}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":42}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let (chunks, _, t, end) = run_stream(input, false);
        assert!(end.is_ok());
        let deltas: Vec<&Value> = chunks[..chunks.len() - 2]
            .iter()
            .map(|c| &c["choices"][0]["delta"])
            .collect();
        assert_eq!(deltas[0], &json!({"role":"assistant","content":""}));
        assert_eq!(deltas[1], &json!({"content":"Checking."}));
        assert_eq!(
            deltas[2],
            &json!({"tool_calls":[{"index":0,"id":"toolu_01GwVecTool0002","type":"function","function":{"name":"get_weather","arguments":""}}]})
        );
        assert_eq!(
            deltas[3],
            &json!({"tool_calls":[{"index":0,"function":{"arguments":"{\"city\": \"Par"}}]})
        );
        assert_eq!(
            deltas[4],
            &json!({"tool_calls":[{"index":0,"function":{"arguments":"is\"}"}}]})
        );
        assert_eq!(
            deltas[5],
            &json!({"tool_calls":[{"index":1,"id":"toolu_2","type":"function","function":{"name":"now","arguments":""}}]})
        );
        assert_eq!(
            deltas[6],
            &json!({"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]})
        );
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert_eq!(t.usage().completion_tokens, 42);
    }

    #[test]
    fn a_stream_opening_with_a_tool_call_gets_content_null_in_the_role_chunk() {
        let input = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\n";
        let (chunks, progress, _, end) = run_stream(input, false);
        assert!(end.is_err(), "no message_stop: truncated");
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"t","type":"function","function":{"name":"f","arguments":""}}]})
        );
        assert!(progress[1].meaningful);
    }

    #[test]
    fn in_band_errors_and_truncation_are_failures() {
        let input = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{}}}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let (_, _, _, end) = run_stream(input, false);
        assert_eq!(end.map_err(|e| e.class), Err(ErrorClass::Overloaded));
        let cut = STREAM_9_2
            .split("event: message_delta")
            .next()
            .unwrap_or_default();
        let (_, _, _, end) = run_stream(cut, false);
        assert_eq!(end.map_err(|e| e.class), Err(ErrorClass::ServerError));
    }

    #[test]
    fn invalid_json_events_are_skipped() {
        let input = STREAM_9_2.replacen(
            "event: ping\ndata: {\"type\":\"ping\"}",
            "event: ping\ndata: {oops",
            1,
        );
        let (chunks, _, t, end) = run_stream(&input, false);
        assert!(end.is_ok());
        assert_eq!(t.invalid_events(), 1);
        assert_eq!(chunks.len(), 5);
    }
}
