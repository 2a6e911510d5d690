//! The `gemini` kind: OpenAI Chat Completions <-> Google `generateContent` (providers.md §5),
//! both ways. One body serves the Gemini API (AI Studio) and Vertex AI; the model, URL and auth
//! are `upstream`'s. Request mapping, response and usage mapping, the `alt=sse` stream turned
//! into OpenAI chunks, and Google RPC error classification. Pure functions; no I/O.
//!
//! Thought signatures: Gemini returns an opaque `thoughtSignature` on `functionCall` parts that
//! must come back on the replayed call. OpenAI clients only echo the tool call id, so the
//! signature rides in it: `call_<12 hex>__thought__<signature>` (`call_<12 hex>` without one).
//!
//! Decisions where the reference is silent:
//! - Only the first candidate becomes a choice. `n` is still sent as `candidateCount` (and the
//!   usage covers every candidate), but the gateway's output has one choice.
//! - `MALFORMED_FUNCTION_CALL`, `UNEXPECTED_TOOL_CALL`, `TOO_MANY_TOOL_CALLS`,
//!   `MISSING_THOUGHT_SIGNATURE` and unknown finish reasons become `stop` (the 200 answer is
//!   passed on, not retried).
//! - Thought parts (`thought: true`) are dropped: the OpenAI shape we emit has no place for them.
//! - Tool results are text: a result that is a JSON object is sent as the `response` object,
//!   anything else as `{"result": "<text>"}`; image parts of a tool message are not sent.
//! - A tool whose schema is an object without properties is declared without `parameters`
//!   (Gemini rejects `properties: {}` on an OBJECT).
//! - Vertex only: the request's `user` becomes `labels.user` when it is a valid label value.
//! - `seed` is wrapped into Gemini's int32; a zero penalty is not sent (it changes nothing, and
//!   some models reject the field).
//! - Tool and response schemas: local `$ref`s are inlined (Gemini's schema has no `$ref`); a
//!   recursive or non-local one is a [`TranslateError`] naming the schema.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use bytes::BytesMut;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{Error as _, SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::oai::{ChunkWriter, Completion, Delta, RoleOnce, ToolCallOut, Usage};
use super::request::{ChatRequest, Content, Message, Part, Role, ToolChoice};
use super::sse::SseEvent;
use super::{
    is_context_window_message, is_identifier, status_error, truncate_message, Progress, RespMeta,
    TranslateError,
};
use crate::error::{ErrorClass, UpstreamError};

/// Separates the random part of a tool call id from the Gemini thought signature it carries.
const THOUGHT_SEPARATOR: &str = "__thought__";
const EMPTY_OBJECT: &str = "{}";

// === request ===

#[derive(Serialize)]
struct Request<'r> {
    contents: Vec<GContent<'r>>,
    #[serde(rename = "systemInstruction", skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstruction<'r>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<GTools<'r>>,
    #[serde(rename = "toolConfig", skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'r>>,
    #[serde(
        rename = "generationConfig",
        skip_serializing_if = "GenerationConfig::is_empty"
    )]
    generation_config: GenerationConfig<'r>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<Labels<'r>>,
}

#[derive(Serialize)]
struct SystemInstruction<'r> {
    parts: Vec<GPart<'r>>,
}

#[derive(Serialize)]
struct GContent<'r> {
    /// Always set: Vertex requires it.
    role: &'static str,
    parts: Vec<GPart<'r>>,
}

enum GPart<'r> {
    Text(&'r str),
    InlineData {
        mime_type: &'r str,
        data: &'r str,
    },
    FileData {
        mime_type: &'static str,
        file_uri: &'r str,
    },
    FunctionCall {
        name: &'r str,
        args: &'r RawValue,
        thought_signature: Option<&'r str>,
    },
    FunctionResponse {
        name: &'r str,
        response: ToolResult<'r>,
    },
}

impl Serialize for GPart<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Blob<'a> {
            #[serde(rename = "mimeType")]
            mime_type: &'a str,
            data: &'a str,
        }
        #[derive(Serialize)]
        struct FileData<'a> {
            #[serde(rename = "mimeType")]
            mime_type: &'a str,
            #[serde(rename = "fileUri")]
            file_uri: &'a str,
        }
        #[derive(Serialize)]
        struct Call<'a> {
            name: &'a str,
            args: &'a RawValue,
        }
        #[derive(Serialize)]
        struct Response<'a> {
            name: &'a str,
            response: &'a ToolResult<'a>,
        }
        let mut m = s.serialize_map(None)?;
        match self {
            GPart::Text(text) => m.serialize_entry("text", text)?,
            GPart::InlineData { mime_type, data } => {
                m.serialize_entry("inlineData", &Blob { mime_type, data })?
            }
            GPart::FileData {
                mime_type,
                file_uri,
            } => m.serialize_entry(
                "fileData",
                &FileData {
                    mime_type,
                    file_uri,
                },
            )?,
            GPart::FunctionCall {
                name,
                args,
                thought_signature,
            } => {
                m.serialize_entry("functionCall", &Call { name, args })?;
                if let Some(sig) = thought_signature {
                    m.serialize_entry("thoughtSignature", sig)?;
                }
            }
            GPart::FunctionResponse { name, response } => {
                m.serialize_entry("functionResponse", &Response { name, response })?
            }
        }
        m.end()
    }
}

/// A tool message's text: sent as the `response` object when it is a JSON object, else wrapped
/// as `{"result": text}` (`response` must be an object).
struct ToolResult<'r> {
    text: Cow<'r, str>,
    is_object: bool,
}

impl Serialize for ToolResult<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_object {
            let raw: &RawValue = serde_json::from_str(&self.text).map_err(S::Error::custom)?;
            raw.serialize(s)
        } else {
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry("result", &self.text)?;
            m.end()
        }
    }
}

#[derive(Serialize)]
struct GTools<'r> {
    #[serde(rename = "functionDeclarations")]
    function_declarations: Vec<FunctionDeclaration<'r>>,
}

#[derive(Serialize)]
struct FunctionDeclaration<'r> {
    name: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<CleanSchema<'r>>,
}

#[derive(Serialize)]
struct ToolConfig<'r> {
    #[serde(rename = "functionCallingConfig")]
    function_calling_config: FunctionCallingConfig<'r>,
}

#[derive(Serialize)]
struct FunctionCallingConfig<'r> {
    mode: &'static str,
    #[serde(
        rename = "allowedFunctionNames",
        skip_serializing_if = "Option::is_none"
    )]
    allowed_function_names: Option<[&'r str; 1]>,
}

#[derive(Serialize, Default)]
struct GenerationConfig<'r> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(rename = "topP", skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(rename = "maxOutputTokens", skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(rename = "stopSequences", skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'r str>,
    #[serde(rename = "candidateCount", skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i32>,
    #[serde(rename = "presencePenalty", skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(rename = "frequencyPenalty", skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(rename = "responseMimeType", skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(rename = "responseSchema", skip_serializing_if = "Option::is_none")]
    response_schema: Option<CleanSchema<'r>>,
}

impl GenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.max_output_tokens.is_none()
            && self.stop_sequences.is_empty()
            && self.candidate_count.is_none()
            && self.seed.is_none()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
            && self.response_mime_type.is_none()
            && self.response_schema.is_none()
    }
}

#[derive(Serialize)]
struct Labels<'r> {
    user: &'r str,
}

/// Builds the `generateContent` / `streamGenerateContent` body for `req` (the model and the
/// stream flag are in the URL). `vertex` selects Vertex AI extras (`labels`).
pub fn build_request(req: &ChatRequest<'_>, vertex: bool) -> Result<Vec<u8>, TranslateError> {
    if req.logprobs {
        return Err(TranslateError::unsupported("logprobs", "logprobs"));
    }

    let mut system_parts: Vec<GPart> = Vec::new();
    let mut contents: Vec<GContent> = Vec::new();
    // Tool call id -> function name: Gemini matches results to calls by name.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for (i, m) in req.messages.iter().enumerate() {
        let (role, parts) = match m.role {
            Role::System | Role::Developer => {
                if let Some(c) = &m.content {
                    push_text_parts(c, &mut system_parts);
                }
                continue;
            }
            Role::User => ("user", content_parts(i, m.content.as_ref())?),
            Role::Assistant => ("model", assistant_parts(i, m, &mut call_names)?),
            Role::Tool => ("user", vec![tool_response(i, m, &call_names)?]),
            Role::Function => {
                return Err(TranslateError::unsupported(
                    format!("messages[{i}].role"),
                    "the legacy function role",
                ))
            }
        };
        if parts.is_empty() {
            continue;
        }
        // Consecutive turns of one role are merged; the results of one turn's tool calls end
        // up in one user content, as Gemini wants.
        match contents.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => contents.push(GContent { role, parts }),
        }
    }
    if contents.is_empty() {
        return Err(TranslateError::new(
            "messages",
            "at least one user or assistant message with content is required",
        ));
    }

    let mut declarations = Vec::with_capacity(req.tools.len());
    for (i, t) in req.tools.iter().enumerate() {
        let parameters = match t.function.parameters {
            Some(p) if !is_empty_object_schema(p) => Some(CleanSchema::new(
                p,
                &format!("tools[{i}].function.parameters"),
            )?),
            _ => None,
        };
        declarations.push(FunctionDeclaration {
            name: &t.function.name,
            description: t.function.description.as_deref().filter(|d| !d.is_empty()),
            parameters,
        });
    }
    let tool_config = match (&req.tool_choice, declarations.is_empty()) {
        (Some(choice), false) => {
            let (mode, allowed) = match choice {
                ToolChoice::Auto => ("AUTO", None),
                ToolChoice::None => ("NONE", None),
                ToolChoice::Required => ("ANY", None),
                ToolChoice::Function(name) => ("ANY", Some([name.as_ref()])),
            };
            Some(ToolConfig {
                function_calling_config: FunctionCallingConfig {
                    mode,
                    allowed_function_names: allowed,
                },
            })
        }
        _ => None,
    };
    let tools = if declarations.is_empty() {
        Vec::new()
    } else {
        vec![GTools {
            function_declarations: declarations,
        }]
    };

    let mut generation_config = GenerationConfig {
        temperature: req.temperature,
        top_p: req.top_p,
        max_output_tokens: req.max_tokens,
        stop_sequences: req
            .stop
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| !s.is_empty())
            .collect(),
        candidate_count: req.n,
        // Gemini's seed is an int32: a larger one is wrapped into it, so the same seed still
        // means the same thing.
        seed: req.seed.map(|seed| seed as i32),
        // Zero is no penalty, and some models refuse the field itself.
        presence_penalty: req.presence_penalty.filter(|p| *p != 0.0),
        frequency_penalty: req.frequency_penalty.filter(|p| *p != 0.0),
        ..GenerationConfig::default()
    };
    if let Some(rf) = &req.response_format {
        match rf.kind.as_ref() {
            "text" => {}
            "json_object" => generation_config.response_mime_type = Some("application/json"),
            "json_schema" => {
                generation_config.response_mime_type = Some("application/json");
                generation_config.response_schema = json_schema_of(rf.json_schema)?;
            }
            _ => {
                return Err(TranslateError::unsupported(
                    "response_format.type",
                    "this response_format type",
                ))
            }
        }
    }

    let labels = if vertex {
        req.user
            .as_deref()
            .filter(|u| is_label_value(u))
            .map(|user| Labels { user })
    } else {
        None
    };

    let body = Request {
        contents,
        system_instruction: (!system_parts.is_empty()).then_some(SystemInstruction {
            parts: system_parts,
        }),
        tools,
        tool_config,
        generation_config,
        labels,
    };
    serde_json::to_vec(&body).map_err(|e| TranslateError::new("", e.to_string()))
}

/// Vertex label values: at most 63 lowercase letters, digits, `_` or `-`.
fn is_label_value(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn push_text_parts<'r>(c: &'r Content<'_>, out: &mut Vec<GPart<'r>>) {
    match c {
        Content::Text(t) if !t.is_empty() => out.push(GPart::Text(t)),
        Content::Text(_) => {}
        Content::Parts(parts) => {
            for p in parts {
                if let Part::Text { text } = p {
                    if !text.is_empty() {
                        out.push(GPart::Text(text));
                    }
                }
            }
        }
    }
}

fn content_parts<'r>(
    i: usize,
    c: Option<&'r Content<'_>>,
) -> Result<Vec<GPart<'r>>, TranslateError> {
    let mut out = Vec::new();
    match c {
        None => {}
        Some(Content::Text(t)) if t.is_empty() => {}
        Some(Content::Text(t)) => out.push(GPart::Text(t)),
        Some(Content::Parts(parts)) => {
            out.reserve(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let param = || format!("messages[{i}].content[{j}]");
                match p {
                    Part::Text { text } if text.is_empty() => {}
                    Part::Text { text } => out.push(GPart::Text(text)),
                    Part::ImageUrl { image_url } => {
                        out.push(image_part(&image_url.url).ok_or_else(|| {
                            TranslateError::new(
                                format!("{}.image_url.url", param()),
                                "must be a base64 data URL or an http(s) or gs:// URL",
                            )
                        })?)
                    }
                    Part::InputAudio { .. } => {
                        return Err(TranslateError::unsupported(param(), "input_audio parts"))
                    }
                    Part::File { .. } => {
                        return Err(TranslateError::unsupported(param(), "file parts"))
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `data:<mime>;base64,<data>` as inline data, or an http(s)/gs URL as file data.
fn image_part(url: &str) -> Option<GPart<'_>> {
    if url.starts_with("data:") {
        let (mime_type, data) = parse_data_url(url)?;
        Some(GPart::InlineData { mime_type, data })
    } else if url.starts_with("https://") || url.starts_with("http://") || url.starts_with("gs://")
    {
        Some(GPart::FileData {
            mime_type: guess_mime(url),
            file_uri: url,
        })
    } else {
        None
    }
}

fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let (meta, data) = url.strip_prefix("data:")?.split_once(',')?;
    let mime_type = meta.strip_suffix(";base64")?;
    (!mime_type.is_empty() && !data.is_empty()).then_some((mime_type, data))
}

/// The MIME type of a file URL from its extension; Gemini requires one, and most image URLs
/// without an extension serve JPEG.
fn guess_mime(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let file = path.rsplit('/').next().unwrap_or(path);
    let ext = file.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => "image/jpeg",
    }
}

fn assistant_parts<'r>(
    i: usize,
    m: &'r Message<'_>,
    call_names: &mut HashMap<&'r str, &'r str>,
) -> Result<Vec<GPart<'r>>, TranslateError> {
    let mut parts = content_parts(i, m.content.as_ref())?;
    if m.content.is_none() {
        if let Some(r) = m.refusal.as_deref().filter(|r| !r.is_empty()) {
            parts.push(GPart::Text(r));
        }
    }
    for (j, call) in m
        .tool_calls
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let args = super::tool_arguments(i, j, &call.function.arguments)?;
        call_names.insert(&call.id, &call.function.name);
        parts.push(GPart::FunctionCall {
            name: &call.function.name,
            args,
            thought_signature: thought_signature(&call.id),
        });
    }
    Ok(parts)
}

fn tool_response<'r>(
    i: usize,
    m: &'r Message<'_>,
    call_names: &HashMap<&'r str, &'r str>,
) -> Result<GPart<'r>, TranslateError> {
    let id = m.tool_call_id.as_deref().unwrap_or_default();
    let name = call_names.get(id).copied().ok_or_else(|| {
        TranslateError::new(
            format!("messages[{i}].tool_call_id"),
            "does not match a tool call of an earlier assistant message",
        )
    })?;
    let text = m.content.as_ref().map_or(Cow::Borrowed(""), Content::text);
    let is_object =
        text.trim_start().starts_with('{') && serde_json::from_str::<&RawValue>(&text).is_ok();
    Ok(GPart::FunctionResponse {
        name,
        response: ToolResult { text, is_object },
    })
}

/// The schema of a `json_schema` response format (`{"name", "schema", "strict"}`).
fn json_schema_of(raw: Option<&RawValue>) -> Result<Option<CleanSchema<'_>>, TranslateError> {
    #[derive(Deserialize)]
    struct Spec<'a> {
        #[serde(borrow, default)]
        schema: Option<&'a RawValue>,
    }
    let Some(raw) = raw else { return Ok(None) };
    let spec: Spec = serde_json::from_str(raw.get())
        .map_err(|_| TranslateError::new("response_format.json_schema", "must be a JSON object"))?;
    spec.schema
        .filter(|s| s.get() != "null")
        .map(|s| CleanSchema::new(s, "response_format.json_schema.schema"))
        .transpose()
}

// === JSON Schema cleaning ===

/// Schema keywords Gemini's OpenAPI-subset schema rejects. `$defs`/`definitions` go too: the
/// `$ref`s that point into them are inlined.
const STRIPPED_KEYWORDS: &[&str] = &[
    "$schema",
    "additionalProperties",
    "strict",
    "$id",
    "$comment",
    "$defs",
    "definitions",
];

/// At most this many `$ref`s are inlined into one schema: a schema whose definitions refer to
/// each other several times per level would otherwise grow exponentially.
const MAX_REF_EXPANSIONS: usize = 256;

/// What a JSON value inside a schema is, so that only keywords are stripped: a property
/// named `strict` stays, and so does an `enum` value that is an object with such a key.
#[derive(Clone, Copy)]
enum SchemaCtx {
    /// A schema: an object whose keys are keywords.
    Schema,
    /// An object whose keys are names and whose values are schemas (`properties`).
    Named,
    /// Data (`enum`, `const`, `default`, `required`, ...): copied as is.
    Data,
}

impl SchemaCtx {
    fn of_keyword(key: &str) -> SchemaCtx {
        match key {
            "properties" | "patternProperties" | "dependentSchemas" => SchemaCtx::Named,
            "enum" | "const" | "default" | "example" | "examples" | "required" => SchemaCtx::Data,
            _ => SchemaCtx::Schema,
        }
    }
}

/// A client's JSON Schema as Gemini takes it: without the keywords Gemini rejects, and with
/// every local `$ref` (`#/$defs/<name>`, `#/definitions/<name>`) replaced by the definition it
/// points at (Pydantic writes nested models that way). Serialized recursively, keeping the key
/// order (serde_json's `Value` would sort it).
struct CleanSchema<'a> {
    raw: &'a RawValue,
    /// The root's definitions by JSON pointer (`#/$defs/<name>`); `None` without any `$ref`.
    defs: Option<Vec<(String, &'a RawValue)>>,
}

/// One serialization's inlining: the definitions, and the inlining in progress.
struct Refs<'s, 'a> {
    defs: &'s [(String, &'a RawValue)],
    /// The pointers being inlined, outermost first: a pointer met again is a recursive schema.
    expanding: std::cell::RefCell<Vec<String>>,
    expansions: std::cell::Cell<usize>,
}

impl<'a> CleanSchema<'a> {
    /// `param` names the schema in the error for one that cannot be inlined (recursive, or a
    /// `$ref` that is not a local definition).
    fn new(raw: &'a RawValue, param: &str) -> Result<Self, TranslateError> {
        if !raw.get().contains("\"$ref\"") {
            return Ok(CleanSchema { raw, defs: None });
        }
        let mut defs = Vec::new();
        if let Ok(root) = Entries::parse(raw.get()) {
            for (key, value) in root.0 {
                if key == "$defs" || key == "definitions" {
                    let named = Entries::parse(value.get()).map_err(|_| {
                        TranslateError::new(param, format!("`{key}` must be an object"))
                    })?;
                    defs.extend(
                        named
                            .0
                            .into_iter()
                            .map(|(name, def)| (format!("#/{key}/{}", escape_pointer(&name)), def)),
                    );
                }
            }
        }
        let schema = CleanSchema {
            raw,
            defs: Some(defs),
        };
        // Inline once into nothing, so that a schema that cannot be inlined is a translate
        // error naming the parameter rather than a failure to serialize the body.
        serde_json::to_writer(std::io::sink(), &schema)
            .map_err(|e| TranslateError::new(param, e.to_string()))?;
        Ok(schema)
    }
}

/// A JSON Pointer reference token for `name` (RFC 6901: `~` → `~0`, `/` → `~1`).
fn escape_pointer(name: &str) -> Cow<'_, str> {
    if name.contains(['~', '/']) {
        Cow::Owned(name.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(name)
    }
}

impl Serialize for CleanSchema<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let refs = self.defs.as_deref().map(|defs| Refs {
            defs,
            expanding: Default::default(),
            expansions: Default::default(),
        });
        SchemaNode {
            raw: self.raw,
            ctx: SchemaCtx::Schema,
            refs: refs.as_ref(),
        }
        .serialize(s)
    }
}

/// One value inside a [`CleanSchema`].
struct SchemaNode<'s, 'a> {
    raw: &'a RawValue,
    ctx: SchemaCtx,
    refs: Option<&'s Refs<'s, 'a>>,
}

impl<'a> SchemaNode<'_, 'a> {
    fn child(&self, raw: &'a RawValue, ctx: SchemaCtx) -> Self {
        SchemaNode {
            raw,
            ctx,
            refs: self.refs,
        }
    }
}

impl Serialize for SchemaNode<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = self.raw.get().trim_start();
        match (self.ctx, text.as_bytes().first()) {
            (SchemaCtx::Data, _) => self.raw.serialize(s),
            (SchemaCtx::Named, Some(b'{')) => {
                let entries = Entries::parse(text).map_err(S::Error::custom)?;
                let mut m = s.serialize_map(Some(entries.0.len()))?;
                for (key, value) in &entries.0 {
                    m.serialize_entry(key, &self.child(value, SchemaCtx::Schema))?;
                }
                m.end()
            }
            (SchemaCtx::Schema, Some(b'{')) => {
                let entries = Entries::parse(text).map_err(S::Error::custom)?;
                let reference = entries.0.iter().find(|(k, _)| k == "$ref");
                match (reference, self.refs) {
                    (Some((_, pointer)), Some(refs)) => self.inline(s, refs, pointer, entries.0),
                    _ => self.write_schema(s, entries.0.iter()),
                }
            }
            (SchemaCtx::Schema, Some(b'[')) => {
                let items: Vec<&RawValue> = serde_json::from_str(text).map_err(S::Error::custom)?;
                s.collect_seq(items.into_iter().map(|i| self.child(i, SchemaCtx::Schema)))
            }
            _ => self.raw.serialize(s),
        }
    }
}

impl<'a> SchemaNode<'_, 'a> {
    /// A schema object's keywords, without the ones Gemini rejects.
    fn write_schema<'e, S: Serializer>(
        &self,
        s: S,
        entries: impl Iterator<Item = &'e (String, &'a RawValue)>,
    ) -> Result<S::Ok, S::Error>
    where
        'a: 'e,
    {
        let mut m = s.serialize_map(None)?;
        for (key, value) in entries {
            if STRIPPED_KEYWORDS.contains(&key.as_str()) || key == "$ref" {
                continue;
            }
            m.serialize_entry(key, &self.child(value, SchemaCtx::of_keyword(key)))?;
        }
        m.end()
    }

    /// `{"$ref": pointer, ...siblings}` written as the definition it points at, the siblings
    /// (a `description`, say) overriding the definition's own keywords.
    fn inline<S: Serializer>(
        &self,
        s: S,
        refs: &Refs<'_, 'a>,
        pointer: &RawValue,
        siblings: Vec<(String, &'a RawValue)>,
    ) -> Result<S::Ok, S::Error> {
        let pointer: Cow<str> = serde_json::from_str(pointer.get())
            .map_err(|_| S::Error::custom("`$ref` must be a string"))?;
        let Some((_, def)) = refs.defs.iter().find(|(p, _)| *p == pointer) else {
            return Err(S::Error::custom(format!(
                "`$ref` \"{pointer}\" cannot be inlined for Gemini: only references to the \
                 schema's own `$defs` or `definitions` can"
            )));
        };
        if refs.expanding.borrow().iter().any(|p| *p == pointer) {
            return Err(S::Error::custom(format!(
                "`$ref` \"{pointer}\" is recursive; Gemini takes no recursive schemas"
            )));
        }
        let n = refs.expansions.get() + 1;
        if n > MAX_REF_EXPANSIONS {
            return Err(S::Error::custom(format!(
                "more than {MAX_REF_EXPANSIONS} `$ref`s to inline"
            )));
        }
        refs.expansions.set(n);
        let def_entries = match def.get().trim_start().as_bytes().first() {
            Some(b'{') => Entries::parse(def.get()).map_err(S::Error::custom)?.0,
            _ => {
                return Err(S::Error::custom(format!(
                    "`$ref` \"{pointer}\" points at something that is not a schema object"
                )))
            }
        };
        // The definition's keywords in its order, a sibling replacing one of the same name;
        // then the siblings it does not have.
        let sibling = |key: &str| siblings.iter().find(|(k, _)| k == key && k != "$ref");
        let mut merged: Vec<(String, &'a RawValue)> = def_entries
            .into_iter()
            .map(|(k, v)| match sibling(&k) {
                Some((_, own)) => (k, *own),
                None => (k, v),
            })
            .collect();
        for (k, v) in &siblings {
            if k != "$ref" && !merged.iter().any(|(m, _)| m == k) {
                merged.push((k.clone(), v));
            }
        }
        refs.expanding.borrow_mut().push(pointer.into_owned());
        // The definition may itself be a `$ref` (an alias): inline that too.
        let written = match merged.iter().find(|(k, _)| k == "$ref") {
            Some((_, next)) => {
                let next = *next;
                self.inline(s, refs, next, merged)
            }
            None => self.write_schema(s, merged.iter()),
        };
        refs.expanding.borrow_mut().pop();
        written
    }
}

/// A JSON object's members in order, values left unparsed.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'a> Entries<'a> {
    fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(key) = map.next_key::<String>()? {
                    let value: &'de RawValue = map.next_value()?;
                    out.push((key, value));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// `{"type":"object","properties":{}}` and the like: Gemini rejects an OBJECT schema without
/// properties, and a function without `parameters` means the same thing.
fn is_empty_object_schema(raw: &RawValue) -> bool {
    const HARMLESS: &[&str] = &[
        "type",
        "properties",
        "required",
        "title",
        "description",
        "$schema",
        "additionalProperties",
        "strict",
        "$id",
        "$comment",
    ];
    let Ok(entries) = Entries::parse(raw.get()) else {
        return false;
    };
    let mut is_object = false;
    for (key, value) in &entries.0 {
        match key.as_str() {
            "type" => is_object = value.get() == "\"object\"",
            "properties" => {
                if !Entries::parse(value.get()).is_ok_and(|p| p.0.is_empty()) {
                    return false;
                }
            }
            k if HARMLESS.contains(&k) => {}
            _ => return false,
        }
    }
    is_object || entries.0.is_empty()
}

// === thought signatures ===

/// The thought signature carried by a tool call id we minted, if any.
fn thought_signature(id: &str) -> Option<&str> {
    let (_, sig) = id.split_once(THOUGHT_SEPARATOR)?;
    // Signatures are base64; anything else was not written by us and is not sent.
    (!sig.is_empty()
        && sig
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')))
    .then_some(sig)
}

/// A tool call id for the client: `call_<12 hex>`, plus `__thought__<signature>` when Gemini
/// sent one.
fn tool_call_id(signature: Option<&str>) -> String {
    let random = fastrand::u64(..) & 0xffff_ffff_ffff;
    match signature.filter(|s| !s.is_empty()) {
        Some(sig) => format!("call_{random:012x}{THOUGHT_SEPARATOR}{sig}"),
        None => format!("call_{random:012x}"),
    }
}

fn mint_response_id() -> String {
    format!(
        "chatcmpl-{:016x}{:08x}",
        fastrand::u64(..),
        fastrand::u32(..)
    )
}

// === response ===

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GResponse<'a> {
    #[serde(borrow, default)]
    candidates: Option<Vec<Candidate<'a>>>,
    #[serde(borrow, default)]
    prompt_feedback: Option<PromptFeedback<'a>>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(borrow, default)]
    model_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response_id: Option<Cow<'a, str>>,
    /// Only in stream events that report a failure.
    #[serde(borrow, default)]
    error: Option<RpcError<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(borrow, default)]
    content: Option<CandidateContent<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    /// Omitted for the first candidate (proto3 leaves out zero values).
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Deserialize)]
struct CandidateContent<'a> {
    #[serde(borrow, default)]
    parts: Option<Vec<RespPart<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RespPart<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(borrow, default)]
    function_call: Option<RespFunctionCall<'a>>,
    #[serde(borrow, default)]
    thought_signature: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RespFunctionCall<'a> {
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback<'a> {
    #[serde(borrow, default)]
    block_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
    #[serde(default)]
    tool_use_prompt_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
}

impl UsageMetadata {
    /// providers.md §5.3: thoughts count as completion (and reasoning) tokens, tool-use prompt
    /// tokens as prompt tokens; cached tokens are part of the prompt.
    fn to_usage(self) -> Usage {
        let prompt = self
            .prompt_token_count
            .unwrap_or(0)
            .saturating_add(self.tool_use_prompt_token_count.unwrap_or(0));
        let thoughts = self.thoughts_token_count.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: self
                .candidates_token_count
                .unwrap_or(0)
                .saturating_add(thoughts),
            cached_tokens: self.cached_content_token_count.unwrap_or(0).min(prompt),
            cache_write_tokens: 0,
            reasoning_tokens: thoughts,
        }
    }
}

impl<'a> GResponse<'a> {
    /// The candidate that becomes choice 0.
    fn first_candidate(&self) -> Option<&Candidate<'a>> {
        let candidates = self.candidates.as_deref()?;
        candidates
            .iter()
            .find(|c| c.index.unwrap_or(0) == 0)
            .or_else(|| candidates.first())
    }

    fn is_blocked(&self) -> bool {
        self.prompt_feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.as_deref().is_some_and(|r| !r.is_empty()))
    }
}

impl<'a> Candidate<'a> {
    fn parts(&self) -> &[RespPart<'a>] {
        self.content
            .as_ref()
            .and_then(|c| c.parts.as_deref())
            .unwrap_or_default()
    }
}

/// Gemini `finishReason` -> OpenAI `finish_reason` (providers.md §0.5). The malformed or
/// invalid tool call reasons and unknown values are `stop`.
pub fn finish_reason(reason: Option<&str>) -> &'static str {
    match reason {
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "LANGUAGE"
            | "IMAGE_SAFETY" | "OTHER",
        ) => "content_filter",
        _ => "stop",
    }
}

/// `finish_reason` when the candidate made tool calls: Gemini still says `STOP`.
fn with_tool_calls(reason: &'static str, any_call: bool) -> &'static str {
    if any_call && reason == "stop" {
        "tool_calls"
    } else {
        reason
    }
}

/// The arguments of a returned function call as compact JSON text (`{}` when absent).
fn arguments_of(call: &RespFunctionCall<'_>) -> String {
    match call.args {
        Some(raw) if raw.get().trim_start().starts_with('{') => compact_json(raw.get()),
        _ => EMPTY_OBJECT.to_owned(),
    }
}

/// Drops the insignificant whitespace of valid JSON text (Gemini pretty-prints its bodies),
/// keeping key order and string contents.
fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\n' | '\r' | '\t') {
            continue;
        }
        out.push(c);
    }
    out
}

fn malformed() -> UpstreamError {
    UpstreamError::new(
        ErrorClass::ServerError,
        "upstream returned a malformed generateContent body",
    )
}

/// Translates a 2xx `generateContent` body into a `chat.completion` body. Only the first
/// candidate is returned (see the module docs).
pub fn parse_response(
    body: &[u8],
    meta: &RespMeta<'_>,
) -> Result<(BytesMut, Usage), UpstreamError> {
    let resp: GResponse =
        serde_json::from_slice(body.trim_ascii_start()).map_err(|_| malformed())?;
    let usage = resp.usage_metadata.unwrap_or_default().to_usage();
    let (content, tool_calls, finish) = match resp.first_candidate() {
        Some(c) => {
            let mut text: Option<String> = None;
            let mut tool_calls = Vec::new();
            for part in c.parts() {
                if let Some(call) = &part.function_call {
                    tool_calls.push(ToolCallOut {
                        id: tool_call_id(part.thought_signature.as_deref()),
                        name: call.name.clone().into_owned(),
                        arguments: arguments_of(call),
                    });
                } else if let Some(t) = &part.text {
                    if part.thought != Some(true) {
                        text.get_or_insert_with(String::new).push_str(t);
                    }
                }
            }
            if !tool_calls.is_empty() && text.as_deref() == Some("") {
                text = None;
            }
            let reason = finish_reason(c.finish_reason.as_deref());
            let finish = with_tool_calls(reason, !tool_calls.is_empty());
            (text, tool_calls, finish)
        }
        None if resp.is_blocked() => (None, Vec::new(), "content_filter"),
        None => {
            return Err(UpstreamError::new(
                ErrorClass::ServerError,
                "upstream returned no candidates and no block reason",
            ))
        }
    };
    let completion = Completion {
        id: resp
            .response_id
            .filter(|id| !id.is_empty())
            .map_or_else(mint_response_id, Cow::into_owned),
        created: meta.created,
        model: resp
            .model_version
            .filter(|m| !m.is_empty())
            .map_or_else(|| meta.model.to_owned(), Cow::into_owned),
        content,
        tool_calls,
        finish_reason: finish,
        usage,
    };
    Ok((completion.to_json(), usage))
}

// === errors ===

#[derive(Deserialize)]
struct ErrorEnvelope<'a> {
    #[serde(borrow)]
    error: RpcError<'a>,
}

/// A `google.rpc.Status` as JSON.
#[derive(Deserialize, Default)]
struct RpcError<'a> {
    #[serde(default)]
    code: Option<u16>,
    #[serde(borrow, default)]
    message: Cow<'a, str>,
    #[serde(borrow, default)]
    status: Cow<'a, str>,
    /// Each detail is parsed on its own, so an odd one does not hide the rest.
    #[serde(borrow, default)]
    details: Vec<&'a RawValue>,
}

/// What the `details[]` of an error say, as far as classification cares.
#[derive(Debug, Default)]
struct DetailFacts {
    retry_delay: Option<Duration>,
    per_day_quota: bool,
    api_key_invalid: bool,
}

impl RpcError<'_> {
    fn facts(&self) -> DetailFacts {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Detail<'a> {
            #[serde(rename = "@type", borrow, default)]
            kind: Cow<'a, str>,
            #[serde(borrow, default)]
            retry_delay: Option<Cow<'a, str>>,
            #[serde(borrow, default)]
            reason: Option<Cow<'a, str>>,
            #[serde(borrow, default)]
            violations: Vec<Violation<'a>>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Violation<'a> {
            #[serde(borrow, default)]
            quota_id: Cow<'a, str>,
            #[serde(borrow, default)]
            quota_metric: Cow<'a, str>,
            #[serde(borrow, default)]
            description: Cow<'a, str>,
        }
        let mut facts = DetailFacts::default();
        for raw in &self.details {
            let Ok(d) = serde_json::from_str::<Detail>(raw.get()) else {
                continue;
            };
            if d.kind.ends_with("google.rpc.RetryInfo") {
                facts.retry_delay = d.retry_delay.as_deref().and_then(parse_delay);
            } else if d.kind.ends_with("google.rpc.ErrorInfo") {
                facts.api_key_invalid |= d.reason.as_deref() == Some("API_KEY_INVALID");
            } else if d.kind.ends_with("google.rpc.QuotaFailure") {
                facts.per_day_quota |= d.violations.iter().any(|v| {
                    mentions_per_day(&v.quota_id)
                        || mentions_per_day(&v.quota_metric)
                        || mentions_per_day(&v.description)
                });
            }
        }
        facts
    }
}

/// `google.protobuf.Duration` JSON: `"27s"`, `"1.5s"`, `"45.578569677s"`.
fn parse_delay(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

fn mentions_per_day(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    lower.contains("perday") || lower.contains("per_day") || lower.contains("per day")
}

/// `limit: 0` in a quota message: the plan has no quota for this model at all.
fn has_zero_limit(lower: &str) -> bool {
    lower.match_indices("limit: 0").any(|(at, m)| {
        !lower[at + m.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '.')
    })
}

/// A 429 that waiting will not cure: a daily quota, a plan without quota for the model, or
/// billing. Every Gemini API 429 says "check your plan and billing details", so that phrase
/// alone is not taken as a billing problem.
fn is_quota_exhausted(lower: &str, facts: &DetailFacts) -> bool {
    facts.per_day_quota
        || mentions_per_day(lower)
        || has_zero_limit(lower)
        || lower.contains("credits are depleted")
        || lower.contains("prepayment")
        || (lower.contains("billing") && !lower.contains("check your plan and billing details"))
}

fn classify_rpc(status: u16, err: &RpcError<'_>, facts: &DetailFacts) -> ErrorClass {
    let lower = err.message.to_ascii_lowercase();
    let rpc = err.status.as_ref();
    if facts.api_key_invalid
        || lower.contains("api key not valid")
        || lower.contains("api key expired")
        || rpc == "UNAUTHENTICATED"
        || rpc == "PERMISSION_DENIED"
    {
        return ErrorClass::UpstreamAuth;
    }
    match (status, rpc) {
        (429, _) | (_, "RESOURCE_EXHAUSTED") => {
            if is_quota_exhausted(&lower, facts) {
                ErrorClass::QuotaExhausted
            } else {
                ErrorClass::RateLimited
            }
        }
        (401 | 403 | 404, _) | (_, "NOT_FOUND") => ErrorClass::UpstreamAuth,
        (400 | 413, _) | (_, "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE") => {
            if is_context_window_message(&err.message)
                || lower.contains("request payload size exceeds")
            {
                ErrorClass::ContextWindow
            } else if rpc == "FAILED_PRECONDITION" && lower.contains("billing") {
                ErrorClass::QuotaExhausted
            } else if rpc == "FAILED_PRECONDITION"
                && (lower.contains("location") || lower.contains("region"))
            {
                // "User location is not supported for the API use": the deployment's setup.
                ErrorClass::UpstreamAuth
            } else {
                ErrorClass::BadRequest
            }
        }
        (408 | 504, _) | (_, "DEADLINE_EXCEEDED") => ErrorClass::Timeout,
        (503, _) | (_, "UNAVAILABLE") => ErrorClass::Overloaded,
        (499, _) | (_, "CANCELLED") => ErrorClass::ServerError,
        (400..=499, _) => ErrorClass::BadRequest,
        _ => ErrorClass::ServerError,
    }
}

/// Reads a Google RPC error body: `{"error":{...}}`, or Vertex's `[{"error":{...}}]`.
fn read_error(body: &[u8]) -> RpcError<'_> {
    let body = body.trim_ascii_start();
    if body.first() == Some(&b'[') {
        serde_json::from_slice::<Vec<ErrorEnvelope>>(body)
            .ok()
            .and_then(|v| v.into_iter().next())
            .map(|e| e.error)
            .unwrap_or_default()
    } else {
        serde_json::from_slice::<ErrorEnvelope>(body)
            .map(|e| e.error)
            .unwrap_or_default()
    }
}

/// Classifies a non-2xx response from `generateContent` (providers.md §5.5, §0.3). A
/// `Retry-After` header wins over the body's `RetryInfo.retryDelay`.
pub fn classify_error(
    status: u16,
    retry_after: Option<Duration>,
    _meta: &RespMeta<'_>,
    body: &[u8],
) -> UpstreamError {
    let err = read_error(body);
    let facts = err.facts();
    let class = classify_rpc(status, &err, &facts);
    let code = Some(err.status.into_owned());
    status_error(
        class,
        status,
        &err.message,
        code,
        retry_after.or(facts.retry_delay),
    )
}

/// An `{"error":{...}}` event inside a 200 stream.
fn stream_error(err: &RpcError<'_>) -> UpstreamError {
    let facts = err.facts();
    let class = classify_rpc(err.code.unwrap_or(500), err, &facts);
    let message = match class {
        ErrorClass::UpstreamAuth => "the upstream rejected the gateway's credentials or model",
        _ if err.message.is_empty() => "upstream sent an error event",
        _ => &err.message,
    };
    let code = Some(err.status.clone().into_owned()).filter(|c| is_identifier(c));
    UpstreamError::new(class, truncate_message(message))
        .with_code(code)
        .with_retry_after(facts.retry_delay)
}

// === stream ===

/// Turns Gemini's `alt=sse` stream (each event a whole `GenerateContentResponse`) into OpenAI
/// chunks (providers.md §5.4). Gemini sends no terminator: the stream is complete when it ends
/// after a `finishReason`.
#[derive(Debug)]
pub struct StreamTranslator {
    writer: Option<ChunkWriter>,
    include_usage: bool,
    created: u64,
    /// The model sent upstream, for a stream that never names its `modelVersion`.
    model: String,
    role: RoleOnce,
    /// Tool calls emitted so far; the next one's OpenAI `index`.
    tool_calls: u32,
    finished: bool,
    done: bool,
    /// The last `usageMetadata` seen: Gemini repeats running totals.
    usage: Usage,
    invalid_events: u32,
}

impl StreamTranslator {
    pub fn new(include_usage: bool, meta: &RespMeta<'_>) -> Self {
        StreamTranslator {
            writer: None,
            include_usage,
            created: meta.created,
            model: meta.model.to_owned(),
            role: RoleOnce::default(),
            tool_calls: 0,
            finished: false,
            done: false,
            usage: Usage::default(),
            invalid_events: 0,
        }
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn invalid_events(&self) -> u32 {
        self.invalid_events
    }

    /// The writer, created from the first event's id and model.
    fn writer_for(&mut self, resp: &GResponse<'_>) -> &ChunkWriter {
        let (created, include_usage) = (self.created, self.include_usage);
        let model = &self.model;
        self.writer.get_or_insert_with(|| ChunkWriter {
            id: resp
                .response_id
                .as_deref()
                .filter(|id| !id.is_empty())
                .map_or_else(mint_response_id, str::to_owned),
            created,
            model: resp
                .model_version
                .as_deref()
                .filter(|m| !m.is_empty())
                .unwrap_or(model)
                .to_owned(),
            include_usage,
        })
    }

    /// The role chunk goes out with the first text (see [`RoleOnce`]).
    fn ensure_role(&mut self, out: &mut BytesMut) {
        if let Some(w) = &self.writer {
            self.role.before_text(w, out);
        }
    }

    fn finish(&mut self, out: &mut BytesMut, reason: &str) {
        self.ensure_role(out);
        if let Some(w) = &self.writer {
            w.finish(out, reason);
        }
        self.finished = true;
    }

    pub fn on_event(
        &mut self,
        ev: &SseEvent,
        out: &mut BytesMut,
    ) -> Result<Progress, UpstreamError> {
        let data = ev.data.trim_ascii();
        if data.is_empty() || data == b"[DONE]" {
            return Ok(Progress::NOTHING);
        }
        let Ok(resp) = serde_json::from_slice::<GResponse>(data) else {
            self.invalid_events += 1;
            return Ok(Progress::NOTHING);
        };
        if let Some(err) = &resp.error {
            return Err(stream_error(err));
        }
        self.writer_for(&resp);
        if let Some(u) = resp.usage_metadata {
            self.usage = u.to_usage();
        }
        if self.finished {
            // Anything after the finish can only refresh the usage.
            return Ok(Progress::NOTHING);
        }
        let mut progress = Progress::NOTHING;
        match resp.first_candidate() {
            Some(c) => {
                for part in c.parts() {
                    if let Some(call) = &part.function_call {
                        let id = tool_call_id(part.thought_signature.as_deref());
                        let arguments = arguments_of(call);
                        let index = self.tool_calls;
                        self.tool_calls += 1;
                        if let Some(w) = &self.writer {
                            self.role
                                .tool_head(w, out, index, &id, &call.name, &arguments);
                        }
                        progress.meaningful = true;
                    } else if let Some(text) = &part.text {
                        if part.thought == Some(true) || text.is_empty() {
                            continue;
                        }
                        self.ensure_role(out);
                        if let Some(w) = &self.writer {
                            w.delta(
                                out,
                                Delta {
                                    content: Some(text),
                                    ..Delta::default()
                                },
                            );
                        }
                        progress.meaningful = true;
                    }
                }
                if let Some(reason) = c.finish_reason.as_deref().filter(|r| !r.is_empty()) {
                    let reason = with_tool_calls(finish_reason(Some(reason)), self.tool_calls > 0);
                    self.finish(out, reason);
                    progress.finished = true;
                }
            }
            None if resp.is_blocked() => {
                self.finish(out, "content_filter");
                progress.finished = true;
            }
            None => {}
        }
        Ok(progress)
    }

    /// The upstream closed the stream: complete only after a `finishReason`. Writes the usage
    /// chunk (if asked for) and `[DONE]`, which Gemini does not send.
    pub fn on_eof(&mut self, out: &mut BytesMut) -> Result<(), UpstreamError> {
        if self.done {
            return Ok(());
        }
        match (&self.writer, self.finished) {
            (Some(w), true) => {
                w.end(out, &self.usage);
                self.done = true;
                Ok(())
            }
            _ => Err(UpstreamError::new(
                ErrorClass::ServerError,
                "upstream closed the stream before a finishReason",
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::providers::request::ChatBody;
    use crate::providers::sse::SseDecoder;
    use bytes::Bytes;
    use serde_json::{json, Value};

    const META: RespMeta<'static> = RespMeta {
        model: "gemini-2.5-flash",
        created: 1735689604,
        request_id: None,
        error_type: None,
        input_token_count: None,
    };

    fn translate_with(req_json: &str, vertex: bool) -> Result<Value, TranslateError> {
        let body = ChatBody::parse(Bytes::copy_from_slice(req_json.as_bytes()))
            .expect("valid OpenAI request");
        let req = ChatRequest::from_body(&body).expect("typed");
        build_request(&req, vertex).map(|b| serde_json::from_slice(&b).expect("valid JSON"))
    }

    fn translate(req_json: &str) -> Result<Value, TranslateError> {
        translate_with(req_json, false)
    }

    const C1: &str = r#"{"model":"<alias>","messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"Say hello."}],"temperature":0.2,"max_tokens":64,"stop":["END"],"user":"u-123"}"#;
    const C2: &str = r#"{"model":"<alias>","messages":[{"role":"user","content":"What's the weather in Paris?"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Get current weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],"tool_choice":"auto","max_tokens":256}"#;

    #[test]
    fn c2_translates_to_the_9_3_request() {
        let got = translate(C2).expect("translates");
        let want = json!({"contents":[{"role":"user","parts":[{"text":"What's the weather in Paris?"}]}],"tools":[{"functionDeclarations":[{"name":"get_weather","description":"Get current weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}]}],"toolConfig":{"functionCallingConfig":{"mode":"AUTO"}},"generationConfig":{"maxOutputTokens":256}});
        assert_eq!(got, want);
    }

    #[test]
    fn c1_translates_to_the_9_3_request() {
        let streaming = C1.replacen('{', r#"{"stream":true,"#, 1);
        let got = translate(&streaming).expect("translates");
        let want = json!({"systemInstruction":{"parts":[{"text":"You are a terse assistant."}]},"contents":[{"role":"user","parts":[{"text":"Say hello."}]}],"generationConfig":{"temperature":0.2,"maxOutputTokens":64,"stopSequences":["END"]}});
        assert_eq!(got, want);
        let vertex = translate_with(C1, true).expect("translates");
        assert_eq!(vertex["labels"], json!({"user":"u-123"}));
        let odd = translate_with(&C1.replace("u-123", "Bob@Example"), true).expect("translates");
        assert!(odd.get("labels").is_none(), "not a valid label value");
    }

    #[test]
    fn turns_tools_and_results_map_to_gemini_contents() {
        let got = translate(r#"{"model":"g","messages":[
            {"role":"developer","content":"Be brief."},
            {"role":"system","content":[{"type":"text","text":"Use tools."}]},
            {"role":"user","content":"Weather in Paris"},
            {"role":"user","content":"and Rome?"},
            {"role":"assistant","content":"Checking.","tool_calls":[
                {"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                {"id":"call_2","type":"function","function":{"name":"get_time","arguments":""}}]},
            {"role":"tool","tool_call_id":"call_1","content":"18C"},
            {"role":"tool","tool_call_id":"call_2","content":"{\"time\": \"12:00\"}"},
            {"role":"user","content":"Thanks, and tomorrow?"}],
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","additionalProperties":false,"strict":true,
                "properties":{"strict":{"type":"boolean","$comment":"a property named strict stays"},"where":{"type":"object","additionalProperties":false,"properties":{"city":{"type":"string","enum":["Paris","Rome"]}}},"tags":{"type":"array","items":{"$id":"x","type":"string"}},"opts":{"anyOf":[{"type":"string","additionalProperties":{}},{"type":"null"}]},"cfg":{"type":"object","default":{"strict":true},"properties":{"a":{"type":"integer"}}}},"required":["strict"]}}},
                {"type":"function","function":{"name":"get_time","description":"","parameters":{"type":"object","properties":{}}}}],
            "tool_choice":{"type":"function","function":{"name":"get_weather"}},"n":2,"top_p":0.5,
            "response_format":{"type":"json_schema","json_schema":{"name":"r","strict":true,"schema":{"type":"object","additionalProperties":false,"properties":{"answer":{"type":"string"}}}}}}"#)
        .expect("translates");
        assert_eq!(
            got["systemInstruction"],
            json!({"parts":[{"text":"Be brief."},{"text":"Use tools."}]})
        );
        assert_eq!(
            got["contents"],
            json!([
                {"role":"user","parts":[{"text":"Weather in Paris"},{"text":"and Rome?"}]},
                {"role":"model","parts":[
                    {"text":"Checking."},
                    {"functionCall":{"name":"get_weather","args":{"city":"Paris"}}},
                    {"functionCall":{"name":"get_time","args":{}}}]},
                {"role":"user","parts":[
                    {"functionResponse":{"name":"get_weather","response":{"result":"18C"}}},
                    {"functionResponse":{"name":"get_time","response":{"time":"12:00"}}},
                    {"text":"Thanks, and tomorrow?"}]}
            ])
        );
        assert_eq!(
            got["tools"],
            json!([{"functionDeclarations":[
                {"name":"get_weather","parameters":{"type":"object","properties":{
                    "strict":{"type":"boolean"},
                    "where":{"type":"object","properties":{"city":{"type":"string","enum":["Paris","Rome"]}}},
                    "tags":{"type":"array","items":{"type":"string"}},
                    "opts":{"anyOf":[{"type":"string"},{"type":"null"}]},
                    "cfg":{"type":"object","default":{"strict":true},"properties":{"a":{"type":"integer"}}}},
                    "required":["strict"]}},
                {"name":"get_time"}]}])
        );
        assert_eq!(
            got["toolConfig"],
            json!({"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["get_weather"]}})
        );
        assert_eq!(
            got["generationConfig"],
            json!({"topP":0.5,"candidateCount":2,"responseMimeType":"application/json",
                   "responseSchema":{"type":"object","properties":{"answer":{"type":"string"}}}})
        );
    }

    #[test]
    fn cleaned_schemas_keep_their_key_order() {
        let body = ChatBody::parse(Bytes::from_static(br#"{"model":"g","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"string"}},"additionalProperties":false}}}]}"#)).expect("valid");
        let req = ChatRequest::from_body(&body).expect("typed");
        let text = String::from_utf8(build_request(&req, false).expect("builds")).expect("utf8");
        assert!(
            text.contains(r#""parameters":{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"string"}}}"#),
            "{text}"
        );
    }

    /// A request with one tool whose parameters are `schema`.
    fn with_tool_schema(schema: &str) -> String {
        format!(
            r#"{{"model":"g","messages":[{{"role":"user","content":"x"}}],"tools":[{{"type":"function","function":{{"name":"f","parameters":{schema}}}}}]}}"#
        )
    }

    #[test]
    fn local_refs_are_inlined_in_order_with_their_siblings() {
        // What Pydantic writes for a model with a nested model used twice, once optional.
        let schema = r##"{"$defs":{"Address":{"properties":{"city":{"title":"City","type":"string"},"zip":{"type":"string"}},"required":["city"],"title":"Address","type":"object"}},"properties":{"home":{"$ref":"#/$defs/Address"},"work":{"$ref":"#/$defs/Address","description":"Office","title":"Work"},"old":{"anyOf":[{"$ref":"#/$defs/Address"},{"type":"null"}]}},"required":["home"],"title":"Person","type":"object"}"##;
        let body = ChatBody::parse(Bytes::from(with_tool_schema(schema))).expect("valid");
        let req = ChatRequest::from_body(&body).expect("typed");
        let text = String::from_utf8(build_request(&req, false).expect("builds")).expect("utf8");
        let address = r#"{"properties":{"city":{"title":"City","type":"string"},"zip":{"type":"string"}},"required":["city"],"title":"Address","type":"object"}"#;
        let work = r#"{"properties":{"city":{"title":"City","type":"string"},"zip":{"type":"string"}},"required":["city"],"title":"Work","type":"object","description":"Office"}"#;
        let want = format!(
            r#""parameters":{{"properties":{{"home":{address},"work":{work},"old":{{"anyOf":[{address},{{"type":"null"}}]}}}},"required":["home"],"title":"Person","type":"object"}}"#
        );
        assert!(text.contains(&want), "{text}");
        assert!(!text.contains("$ref") && !text.contains("$defs"), "{text}");

        // `definitions` (draft 7), an alias to an alias, and a name that needs escaping.
        let got = translate(&with_tool_schema(r##"{"type":"object","definitions":{"a/b":{"$ref":"#/definitions/c"},"c":{"type":"integer"}},"properties":{"n":{"$ref":"#/definitions/a~1b","description":"count"}}}"##)).expect("translates");
        assert_eq!(
            got["tools"][0]["functionDeclarations"][0]["parameters"],
            json!({"type":"object","properties":{"n":{"type":"integer","description":"count"}}})
        );

        // The response schema is inlined the same way.
        let got = translate(r##"{"model":"g","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"p","schema":{"$defs":{"A":{"type":"string"}},"type":"object","properties":{"a":{"$ref":"#/$defs/A"}}}}}}"##).expect("translates");
        assert_eq!(
            got["generationConfig"]["responseSchema"],
            json!({"type":"object","properties":{"a":{"type":"string"}}})
        );

        // A property that happens to be named `$ref` or `$defs` is data, not a keyword.
        let got = translate(&with_tool_schema(
            r#"{"type":"object","properties":{"$ref":{"type":"string"},"$defs":{"type":"string"}}}"#,
        ))
        .expect("translates");
        assert_eq!(
            got["tools"][0]["functionDeclarations"][0]["parameters"]["properties"],
            json!({"$ref":{"type":"string"},"$defs":{"type":"string"}})
        );
    }

    #[test]
    fn refs_that_cannot_be_inlined_are_translate_errors_naming_the_parameter() {
        let recursive = r##"{"$defs":{"Node":{"type":"object","properties":{"next":{"$ref":"#/$defs/Node"}}}},"type":"object","properties":{"head":{"$ref":"#/$defs/Node"}}}"##;
        let err = translate(&with_tool_schema(recursive)).expect_err("recursive");
        assert_eq!(err.param, "tools[0].function.parameters");
        assert!(err.message.contains("recursive"), "{}", err.message);

        let remote =
            r#"{"type":"object","properties":{"a":{"$ref":"https://example.com/a.json"}}}"#;
        let err = translate(&with_tool_schema(remote)).expect_err("not local");
        assert!(err.message.contains("cannot be inlined"), "{}", err.message);

        let missing = r##"{"type":"object","properties":{"a":{"$ref":"#/$defs/Nope"}}}"##;
        assert!(translate(&with_tool_schema(missing)).is_err());

        // Ten levels that each use the next twice: 2^10 copies. Refused, not built.
        let mut defs = Vec::new();
        for i in 0..10 {
            defs.push(format!(
                r##""D{i}":{{"type":"object","properties":{{"x":{{"$ref":"#/$defs/D{n}"}},"y":{{"$ref":"#/$defs/D{n}"}}}}}}"##,
                n = i + 1
            ));
        }
        defs.push(r#""D10":{"type":"string"}"#.to_owned());
        let bomb = format!(
            r##"{{"$defs":{{{}}},"type":"object","properties":{{"root":{{"$ref":"#/$defs/D0"}}}}}}"##,
            defs.join(",")
        );
        let err = translate(&with_tool_schema(&bomb)).expect_err("too many");
        assert!(err.message.contains("more than 256"), "{}", err.message);
    }

    #[test]
    fn json_object_and_tool_choice_modes() {
        let got = translate(r#"{"model":"g","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#).expect("translates");
        assert_eq!(
            got["generationConfig"],
            json!({"responseMimeType":"application/json"})
        );
        let got = translate(r#"{"model":"g","messages":[{"role":"user","content":"x"}],"seed":4294967297,"presence_penalty":0.5,"frequency_penalty":0}"#).expect("translates");
        assert_eq!(
            got["generationConfig"],
            json!({"seed":1,"presencePenalty":0.5}),
            "seed wrapped into int32; a zero penalty is not sent"
        );
        for (choice, mode) in [
            (r#""none""#, "NONE"),
            (r#""required""#, "ANY"),
            (r#""auto""#, "AUTO"),
        ] {
            let got = translate(&format!(r#"{{"model":"g","messages":[{{"role":"user","content":"x"}}],"tools":[{{"type":"function","function":{{"name":"f"}}}}],"tool_choice":{choice}}}"#)).expect("translates");
            assert_eq!(
                got["toolConfig"]["functionCallingConfig"],
                json!({"mode": mode})
            );
            assert_eq!(
                got["tools"],
                json!([{"functionDeclarations":[{"name":"f"}]}])
            );
        }
        let got = translate(
            r#"{"model":"g","messages":[{"role":"user","content":"x"}],"tool_choice":"none"}"#,
        )
        .expect("translates");
        assert!(got.get("toolConfig").is_none() && got.get("tools").is_none());
    }

    #[test]
    fn images_become_inline_or_file_data() {
        let got = translate(r#"{"model":"g","messages":[{"role":"user","content":[
            {"type":"text","text":"Look:"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},
            {"type":"image_url","image_url":{"url":"https://example.com/cat.WEBP?size=2#x","detail":"low"}},
            {"type":"image_url","image_url":{"url":"https://example.com/photo"}},
            {"type":"image_url","image_url":{"url":"gs://bucket/dir/scan.pdf"}}]}]}"#)
        .expect("translates");
        assert_eq!(
            got["contents"][0]["parts"],
            json!([
                {"text":"Look:"},
                {"inlineData":{"mimeType":"image/png","data":"iVBORw0KGgo="}},
                {"fileData":{"mimeType":"image/webp","fileUri":"https://example.com/cat.WEBP?size=2#x"}},
                {"fileData":{"mimeType":"image/jpeg","fileUri":"https://example.com/photo"}},
                {"fileData":{"mimeType":"application/pdf","fileUri":"gs://bucket/dir/scan.pdf"}}
            ])
        );
    }

    #[test]
    fn untranslatable_requests_name_the_field() {
        let e = translate(
            r#"{"model":"g","messages":[{"role":"user","content":"x"}],"logprobs":true}"#,
        )
        .expect_err("logprobs");
        assert_eq!(e.param, "logprobs");
        let e = translate(r#"{"model":"g","messages":[{"role":"user","content":"x"},{"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{oops"}}]}]}"#)
            .expect_err("bad arguments");
        assert_eq!(e.param, "messages[1].tool_calls[0].function.arguments");
        let e = translate(r#"{"model":"g","messages":[{"role":"user","content":"x"},{"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"[1]"}}]}]}"#)
            .expect_err("arguments must be an object");
        assert_eq!(e.param, "messages[1].tool_calls[0].function.arguments");
        let e = translate(r#"{"model":"g","messages":[{"role":"user","content":"x"},{"role":"tool","tool_call_id":"nope","content":"r"}]}"#)
            .expect_err("unknown tool call id");
        assert_eq!(e.param, "messages[1].tool_call_id");
        let e = translate(r#"{"model":"g","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://x/y.png"}}]}]}"#)
            .expect_err("ftp");
        assert_eq!(e.param, "messages[0].content[0].image_url.url");
        let e = translate(r#"{"model":"g","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png,rawbytes"}}]}]}"#)
            .expect_err("not base64");
        assert_eq!(e.param, "messages[0].content[0].image_url.url");
        let e =
            translate(r#"{"model":"g","messages":[{"role":"system","content":"only system"}]}"#)
                .expect_err("no turns");
        assert_eq!(e.param, "messages");
    }

    #[test]
    fn the_9_3_response_translates_to_the_expected_output() {
        let upstream = br#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":41,"candidatesTokenCount":6,"totalTokenCount":47,"promptTokensDetails":[{"modality":"TEXT","tokenCount":41}]},"modelVersion":"gemini-2.5-flash","responseId":"GwVecGem0001"}"#;
        let (out, usage) = parse_response(upstream, &META).expect("translates");
        let mut got: Value = serde_json::from_slice(&out).expect("json");
        let id = got["choices"][0]["message"]["tool_calls"][0]["id"]
            .as_str()
            .expect("id")
            .to_owned();
        assert!(is_plain_call_id(&id), "{id}");
        got["choices"][0]["message"]["tool_calls"][0]["id"] = json!("<id>");
        let want = json!({"id":"GwVecGem0001","object":"chat.completion","created":1735689604,"model":"gemini-2.5-flash","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"<id>","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":41,"completion_tokens":6,"total_tokens":47,"prompt_tokens_details":{"cached_tokens":0}}});
        assert_eq!(got, want);
        assert_eq!(usage.total(), 47);
    }

    fn is_plain_call_id(id: &str) -> bool {
        id.len() == 17
            && id.starts_with("call_")
            && id[5..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    #[test]
    fn thought_signatures_round_trip_through_the_tool_call_id() {
        // Pretty-printed, as Gemini sends it; unknown fields everywhere.
        let upstream = br#"{
  "candidates": [{
    "content": {"role": "model", "parts": [
      {"text": "Planning the call...", "thought": true},
      {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "units": {"c": true}}}, "thoughtSignature": "CiQB0e2Kb+/sig=="},
      {"functionCall": {"name": "get_time"}, "futureField": 1}
    ]},
    "finishReason": "STOP", "safetyRatings": [], "avgLogprobs": -0.1
  }],
  "usageMetadata": {"promptTokenCount": 100, "toolUsePromptTokenCount": 5, "candidatesTokenCount": 20, "thoughtsTokenCount": 30, "cachedContentTokenCount": 64, "totalTokenCount": 155},
  "somethingNew": {"x": [1, 2]}
}"#;
        let (out, usage) = parse_response(upstream, &META).expect("translates");
        let got: Value = serde_json::from_slice(&out).expect("json");
        assert!(got["id"].as_str().expect("id").starts_with("chatcmpl-"));
        assert_eq!(
            got["model"], "gemini-2.5-flash",
            "meta.model is the fallback"
        );
        let msg = &got["choices"][0]["message"];
        assert_eq!(msg["content"], Value::Null, "thought text is not content");
        let calls = msg["tool_calls"].as_array().expect("calls");
        assert_eq!(
            calls[0]["function"]["arguments"],
            r#"{"city":"Paris","units":{"c":true}}"#
        );
        assert_eq!(calls[1]["function"]["arguments"], "{}", "no args -> {{}}");
        let signed = calls[0]["id"].as_str().expect("id");
        let (head, sig) = signed
            .split_once("__thought__")
            .expect("signature in the id");
        assert!(is_plain_call_id(head), "{head}");
        assert_eq!(sig, "CiQB0e2Kb+/sig==");
        let unsigned = calls[1]["id"].as_str().expect("id");
        assert!(is_plain_call_id(unsigned), "{unsigned}");
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 105,
                completion_tokens: 50,
                cached_tokens: 64,
                cache_write_tokens: 0,
                reasoning_tokens: 30,
            }
        );

        // The client replays the turn with the ids it got; the signature goes back on its part.
        let next = json!({"model":"g","messages":[
            {"role":"user","content":"Weather and time?"},
            {"role":"assistant","content":null,"tool_calls":[
                {"id":signed,"type":"function","function":{"name":"get_weather","arguments":calls[0]["function"]["arguments"]}},
                {"id":unsigned,"type":"function","function":{"name":"get_time","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":signed,"content":"18C"},
            {"role":"tool","tool_call_id":unsigned,"content":"noon"}]});
        let got = translate(&next.to_string()).expect("translates");
        assert_eq!(
            got["contents"][1],
            json!({"role":"model","parts":[
                {"functionCall":{"name":"get_weather","args":{"city":"Paris","units":{"c":true}}},"thoughtSignature":"CiQB0e2Kb+/sig=="},
                {"functionCall":{"name":"get_time","args":{}}}]})
        );
        assert_eq!(
            got["contents"][2]["parts"][0]["functionResponse"]["name"],
            "get_weather"
        );
        assert_eq!(
            got["contents"][2]["parts"][1]["functionResponse"]["name"],
            "get_time"
        );
    }

    #[test]
    fn blocked_prompts_and_safety_stops_are_content_filter() {
        let blocked = br#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT","safetyRatings":[]},"usageMetadata":{"promptTokenCount":7,"totalTokenCount":7},"modelVersion":"gemini-2.5-pro","responseId":"r1"}"#;
        let (out, usage) = parse_response(blocked, &META).expect("a 200 answer");
        let got: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(got["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(got["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(got["model"], "gemini-2.5-pro");
        assert_eq!(usage.prompt_tokens, 7);

        let safety = br#"{"candidates":[{"content":{"parts":[{"text":"Partial "}]},"finishReason":"SAFETY"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1}}"#;
        let (out, _) = parse_response(safety, &META).expect("a 200 answer");
        let got: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(got["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(got["choices"][0]["message"]["content"], "Partial ");

        let long = br#"{"candidates":[{"content":{"parts":[{"text":"a"},{"text":"b"}]},"finishReason":"MAX_TOKENS"}]}"#;
        let (out, _) = parse_response(long, &META).expect("a 200 answer");
        let got: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(got["choices"][0]["finish_reason"], "length");
        assert_eq!(got["choices"][0]["message"]["content"], "ab");

        let malformed_call =
            br#"{"candidates":[{"content":{},"finishReason":"MALFORMED_FUNCTION_CALL"}]}"#;
        let (out, _) = parse_response(malformed_call, &META).expect("a 200 answer");
        let got: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(got["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn bodies_without_candidates_or_not_json_are_server_errors() {
        for body in [
            &br#"{"usageMetadata":{"promptTokenCount":3}}"#[..],
            br#"{"candidates":[]}"#,
            b"<html>oops</html>",
            br#"{"candidates":{}}"#,
        ] {
            let e = parse_response(body, &META).expect_err("no answer");
            assert_eq!(e.class, ErrorClass::ServerError);
        }
    }

    #[test]
    fn only_the_first_candidate_becomes_a_choice() {
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"two"}]},"finishReason":"STOP","index":1},{"content":{"parts":[{"text":"one"}]},"finishReason":"STOP"}]}"#;
        let (out, _) = parse_response(body, &META).expect("translates");
        let got: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(got["choices"].as_array().expect("choices").len(), 1);
        assert_eq!(got["choices"][0]["message"]["content"], "one");
    }

    const FIXTURE_429: &[u8] = br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"27s"}]}}"#;

    #[test]
    fn errors_are_classified() {
        let e = classify_error(429, None, &META, FIXTURE_429);
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(27)));
        assert_eq!(e.code.as_deref(), Some("RESOURCE_EXHAUSTED"));
        assert_eq!(e.status, Some(429));
        let e = classify_error(429, Some(Duration::from_secs(3)), &META, FIXTURE_429);
        assert_eq!(
            e.retry_after,
            Some(Duration::from_secs(3)),
            "the header wins"
        );

        // The usual free-tier per-minute 429 mentions billing; it is still a rate limit.
        let per_minute = r#"{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1.5s"}]}}"#;
        let e = classify_error(429, None, &META, per_minute.as_bytes());
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_millis(1500)));
        let per_day = per_minute.replace("PerMinute", "PerDay");
        assert_eq!(
            classify_error(429, None, &META, per_day.as_bytes()).class,
            ErrorClass::QuotaExhausted
        );
        let zero = br#"{"error":{"code":429,"message":"Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, model: gemini-3-pro","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            classify_error(429, None, &META, zero).class,
            ErrorClass::QuotaExhausted
        );
        let ten = br#"{"error":{"code":429,"message":"Quota exceeded for metric: x, limit: 10, model: m","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            classify_error(429, None, &META, ten).class,
            ErrorClass::RateLimited
        );
        let depleted = br#"{"error":{"code":429,"message":"Your prepayment credits are depleted. Please go to AI Studio to manage your project and billing.","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            classify_error(429, None, &META, depleted).class,
            ErrorClass::QuotaExhausted
        );

        let ctx = br#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#;
        assert_eq!(
            classify_error(400, None, &META, ctx).class,
            ErrorClass::ContextWindow
        );
        let key = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        let e = classify_error(400, None, &META, key);
        assert_eq!(e.class, ErrorClass::UpstreamAuth);
        assert!(!e.message.contains("API key"), "our words: {}", e.message);
        let bad = br#"{"error":{"code":400,"message":"* GenerateContentRequest.contents: contents is not specified","status":"INVALID_ARGUMENT"}}"#;
        let e = classify_error(400, None, &META, bad);
        assert_eq!(e.class, ErrorClass::BadRequest);
        assert!(e.message.contains("contents is not specified"));
        let precondition = br#"{"error":{"code":400,"message":"Precondition check failed.","status":"FAILED_PRECONDITION"}}"#;
        assert_eq!(
            classify_error(400, None, &META, precondition).class,
            ErrorClass::BadRequest
        );
        let location = br#"{"error":{"code":400,"message":"User location is not supported for the API use.","status":"FAILED_PRECONDITION"}}"#;
        assert_eq!(
            classify_error(400, None, &META, location).class,
            ErrorClass::UpstreamAuth
        );
        let denied = br#"{"error":{"code":403,"message":"Method doesn't allow unregistered callers.","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(
            classify_error(403, None, &META, denied).class,
            ErrorClass::UpstreamAuth
        );
        let missing = br#"{"error":{"code":404,"message":"models/gemini-9 is not found for API version v1beta","status":"NOT_FOUND"}}"#;
        assert_eq!(
            classify_error(404, None, &META, missing).class,
            ErrorClass::UpstreamAuth
        );
        assert_eq!(
            classify_error(401, None, &META, b"").class,
            ErrorClass::UpstreamAuth
        );
        let internal = br#"{"error":{"code":500,"message":"An internal error has occurred.","status":"INTERNAL"}}"#;
        assert_eq!(
            classify_error(500, None, &META, internal).class,
            ErrorClass::ServerError
        );
        let overloaded = br#"[{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}]"#;
        let e = classify_error(503, None, &META, overloaded);
        assert_eq!(
            e.class,
            ErrorClass::Overloaded,
            "Vertex wraps errors in an array"
        );
        assert!(e.message.contains("overloaded"));
        let deadline =
            br#"{"error":{"code":504,"message":"Deadline exceeded","status":"DEADLINE_EXCEEDED"}}"#;
        assert_eq!(
            classify_error(504, None, &META, deadline).class,
            ErrorClass::Timeout
        );
        assert_eq!(
            classify_error(502, None, &META, b"<html>").class,
            ErrorClass::ServerError
        );
        // An odd detail does not hide the others.
        let odd = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"x","violations":"nope"},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"2s"}]}}"#;
        assert_eq!(
            classify_error(429, None, &META, odd).retry_after,
            Some(Duration::from_secs(2))
        );
    }

    /// Feeds `input` to a decoder in pieces of `step` bytes, then closes the stream.
    fn run_stream(
        input: &str,
        include_usage: bool,
        step: usize,
    ) -> (
        Vec<Value>,
        Vec<Progress>,
        StreamTranslator,
        Result<(), UpstreamError>,
    ) {
        let mut t = StreamTranslator::new(include_usage, &META);
        let d = crate::providers::StreamDecoder::Sse(SseDecoder::new());
        let (text, progress, end) =
            crate::providers::test_support::feed_steps(&mut t, d, input.as_bytes(), step);
        (
            crate::providers::test_support::chunks(&text),
            progress,
            t,
            end,
        )
    }

    fn crlf(events: &[&str]) -> String {
        events
            .iter()
            .map(|e| format!("data: {e}\r\n\r\n"))
            .collect()
    }

    fn stream_9_3() -> String {
        crlf(&[
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]},"index":0}],"usageMetadata":{"promptTokenCount":9,"totalTokenCount":9},"modelVersion":"gemini-2.5-flash","responseId":"GwVecGem0002"}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"lo."}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":3,"thoughtsTokenCount":12,"totalTokenCount":24},"modelVersion":"gemini-2.5-flash","responseId":"GwVecGem0002"}"#,
        ])
    }

    #[test]
    fn the_9_3_stream_becomes_the_expected_chunks() {
        let (chunks, progress, t, end) = run_stream(&stream_9_3(), true, usize::MAX);
        assert!(end.is_ok(), "{end:?}");
        assert!(t.is_done());
        assert_eq!(chunks.len(), 6, "{chunks:#?}");
        for c in &chunks[..5] {
            assert_eq!(c["id"], "GwVecGem0002");
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["created"], 1735689604);
            assert_eq!(c["model"], "gemini-2.5-flash");
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
            json!({"prompt_tokens":9,"completion_tokens":15,"total_tokens":24,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":12}})
        );
        assert_eq!(chunks[5], "[DONE]");
        assert_eq!(
            progress,
            vec![
                Progress {
                    meaningful: true,
                    finished: false
                },
                Progress {
                    meaningful: true,
                    finished: true
                }
            ]
        );
        assert_eq!(t.usage().total(), 24);
    }

    #[test]
    fn without_include_usage_no_usage_is_sent() {
        let (chunks, _, _, end) = run_stream(&stream_9_3(), false, usize::MAX);
        assert!(end.is_ok());
        assert_eq!(chunks.len(), 5);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert_eq!(chunks[4], "[DONE]");
    }

    #[test]
    fn multi_byte_text_survives_one_byte_reads() {
        let input = crlf(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"Grüße, "}]}}],"responseId":"r"}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"世界 🌍","thought":false},{"text":"hidden","thought":true}]},"finishReason":"STOP"}]}"#,
        ]);
        let (chunks, _, _, end) = run_stream(&input, false, 1);
        assert!(end.is_ok(), "{end:?}");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Grüße, 世界 🌍");
        assert_eq!(
            chunks[0]["model"], "gemini-2.5-flash",
            "meta.model fallback"
        );
    }

    #[test]
    fn function_calls_stream_as_whole_tool_call_chunks() {
        let input = crlf(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"thinking","thought":true}]}}],"responseId":"r2","modelVersion":"gemini-3-pro"}"#,
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}},"thoughtSignature":"c2ln"},{"functionCall":{"name":"now"}}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":""}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":20,"candidatesTokenCount":8}}"#,
            r#"{"usageMetadata":{"promptTokenCount":20,"candidatesTokenCount":9},"futureEvent":true}"#,
        ]);
        let (chunks, progress, t, end) = run_stream(&input, false, 7);
        assert!(end.is_ok(), "{end:?}");
        assert!(!progress[0].meaningful, "thoughts are not output");
        assert!(progress[1].meaningful);
        let first = &chunks[0]["choices"][0]["delta"];
        assert_eq!(first["role"], "assistant");
        assert_eq!(first["content"], Value::Null);
        let call = &first["tool_calls"][0];
        assert_eq!(call["index"], 0);
        assert_eq!(call["type"], "function");
        assert_eq!(
            call["function"],
            json!({"name":"get_weather","arguments":"{\"city\":\"Paris\"}"})
        );
        assert!(call["id"]
            .as_str()
            .expect("id")
            .ends_with("__thought__c2ln"));
        let second = &chunks[1]["choices"][0]["delta"];
        assert!(second.get("role").is_none());
        assert_eq!(second["tool_calls"][0]["index"], 1);
        assert_eq!(
            second["tool_calls"][0]["function"],
            json!({"name":"now","arguments":"{}"})
        );
        assert!(is_plain_call_id(
            second["tool_calls"][0]["id"].as_str().expect("id")
        ));
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[3], "[DONE]");
        assert_eq!(chunks.len(), 4);
        assert_eq!(
            t.usage().completion_tokens,
            9,
            "the last usage block, not a sum"
        );
    }

    #[test]
    fn a_blocked_prompt_streams_a_content_filter_finish() {
        let input = crlf(&[
            r#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":4},"responseId":"b"}"#,
        ]);
        let (chunks, progress, _, end) = run_stream(&input, true, usize::MAX);
        assert!(end.is_ok());
        assert!(progress[0].finished && !progress[0].meaningful);
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role":"assistant","content":""})
        );
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(chunks[2]["usage"]["prompt_tokens"], 4);
        assert_eq!(chunks[3], "[DONE]");
    }

    #[test]
    fn truncated_streams_error_events_and_invalid_json() {
        let cut =
            crlf(&[r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}]}}],"responseId":"r"}"#]);
        let (_, _, t, end) = run_stream(&cut, true, usize::MAX);
        assert_eq!(end.map_err(|e| e.class), Err(ErrorClass::ServerError));
        assert!(!t.is_done());
        let (_, _, _, end) = run_stream("", false, usize::MAX);
        assert!(end.is_err(), "an empty body is not a complete answer");

        let overloaded = crlf(&[
            r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#,
        ]);
        let (_, _, _, end) = run_stream(&overloaded, false, usize::MAX);
        let e = end.expect_err("in-band error");
        assert_eq!(e.class, ErrorClass::Overloaded);
        assert_eq!(e.code.as_deref(), Some("UNAVAILABLE"));
        let limited = crlf(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}]}}]}"#,
            r#"{"error":{"code":429,"message":"slow down","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"4s"}]}}"#,
        ]);
        let (chunks, _, _, end) = run_stream(&limited, false, usize::MAX);
        let e = end.expect_err("in-band error after content");
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(4)));
        assert_eq!(chunks.len(), 2, "role and Hel went out before the error");

        let mut input = String::from("data: {oops\r\n\r\n: keep-alive\r\n\r\n");
        input.push_str(&stream_9_3());
        let (chunks, _, t, end) = run_stream(&input, false, usize::MAX);
        assert!(end.is_ok());
        assert_eq!(t.invalid_events(), 1);
        assert_eq!(chunks.len(), 5);
    }

    #[test]
    fn a_safety_finish_in_a_stream_is_content_filter() {
        let input = crlf(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"Sure"}]}}]}"#,
            r#"{"candidates":[{"finishReason":"SAFETY","safetyRatings":[{"category":"HARM_CATEGORY_HARASSMENT","probability":"HIGH","blocked":true}]}]}"#,
        ]);
        let (chunks, _, _, end) = run_stream(&input, false, usize::MAX);
        assert!(end.is_ok());
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "content_filter");
    }

    #[test]
    fn helpers() {
        assert_eq!(
            compact_json("{ \"a\" : [1, 2],\n \"b\": \"x y\\\" z\" }"),
            r#"{"a":[1,2],"b":"x y\" z"}"#
        );
        assert_eq!(parse_delay("45.5s"), Some(Duration::from_millis(45_500)));
        assert_eq!(parse_delay("27"), None);
        assert_eq!(parse_delay("-1s"), None);
        assert_eq!(
            thought_signature("call_0123456789ab__thought__abc+/="),
            Some("abc+/=")
        );
        assert_eq!(thought_signature("call_0123456789ab"), None);
        assert_eq!(thought_signature("x__thought__not a signature"), None);
        assert!(has_zero_limit("limit: 0, model"));
        assert!(has_zero_limit("limit: 0"));
        assert!(!has_zero_limit("limit: 05"));
    }
}
