//! The inbound chat request (OpenAI Chat Completions shape), parsed in two layers:
//!
//! 1. [`ChatBody`]: the raw bytes plus the byte span of every top-level field. It is owned, cheap
//!    (a `Bytes` and a small `Vec` of ranges) and crosses actor boundaries. The OpenAI-kind
//!    upstream body is rebuilt from these spans without parsing the messages again.
//! 2. [`ChatRequest`]: typed fields borrowed from a `ChatBody`, for validation (every field the
//!    gateway knows is type-checked, so a client gets "messages[0].content: invalid type" instead
//!    of an upstream error) and for translation into other providers' formats.
//!
//! No I/O here.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::GatewayError;

/// Top-level fields the gateway understands or strips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Model,
    Messages,
    Stream,
    StreamOptions,
    MaxTokens,
    MaxCompletionTokens,
    Temperature,
    TopP,
    N,
    Stop,
    Tools,
    ToolChoice,
    ParallelToolCalls,
    User,
    PresencePenalty,
    FrequencyPenalty,
    Seed,
    Logprobs,
    TopLogprobs,
    LogitBias,
    ResponseFormat,
    Metadata,
    /// Fields that would choose where a call goes or with which credentials (`api_base`,
    /// `api_key`, ...). They never reach an upstream and never change routing.
    GatewayOnly,
}

impl Known {
    fn from_key(key: &str) -> Option<Known> {
        Some(match key {
            "model" => Known::Model,
            "messages" => Known::Messages,
            "stream" => Known::Stream,
            "stream_options" => Known::StreamOptions,
            "max_tokens" => Known::MaxTokens,
            "max_completion_tokens" => Known::MaxCompletionTokens,
            "temperature" => Known::Temperature,
            "top_p" => Known::TopP,
            "n" => Known::N,
            "stop" => Known::Stop,
            "tools" => Known::Tools,
            "tool_choice" => Known::ToolChoice,
            "parallel_tool_calls" => Known::ParallelToolCalls,
            "user" => Known::User,
            "presence_penalty" => Known::PresencePenalty,
            "frequency_penalty" => Known::FrequencyPenalty,
            "seed" => Known::Seed,
            "logprobs" => Known::Logprobs,
            "top_logprobs" => Known::TopLogprobs,
            "logit_bias" => Known::LogitBias,
            "response_format" => Known::ResponseFormat,
            "metadata" => Known::Metadata,
            "api_base"
            | "base_url"
            | "api_key"
            | "api_version"
            | "organization"
            | "custom_llm_provider"
            | "extra_headers"
            | "deployment_id" => Known::GatewayOnly,
            _ => return None,
        })
    }
}

/// Where a top-level key's text is.
#[derive(Debug, Clone)]
pub enum KeyText {
    /// Byte range of the key's characters (without quotes) in the body; they need no escaping.
    Span(Range<usize>),
    /// The key contained escapes; kept decoded.
    Owned(Box<str>),
}

#[derive(Debug, Clone)]
pub struct Field {
    pub known: Option<Known>,
    pub key: KeyText,
    /// Byte range of the value's JSON text in the body.
    pub value: Range<usize>,
}

/// The facts the router needs without looking at the body again.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub stream: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Rough prompt size, for limits and cost estimates: a quarter of the body's bytes.
    pub est_prompt_tokens: u32,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u32>,
    /// The `user` field, for conditional routing rules.
    pub user: Option<Box<str>>,
    /// Embeddings: what the client asked for (input count, encoding, dimensions).
    pub embed: Option<super::embeddings::Ask>,
}

/// A validated request body and the spans of its top-level fields.
#[derive(Debug, Clone)]
pub struct ChatBody {
    /// Which API the body is for; embeddings bodies are validated by `providers::embeddings`.
    pub op: super::Op,
    pub bytes: Bytes,
    pub fields: Vec<Field>,
    pub model: Box<str>,
    pub facts: Facts,
}

impl ChatBody {
    /// Parses and validates a request body. Errors are client errors (400) naming the field.
    pub fn parse(bytes: Bytes) -> Result<ChatBody, GatewayError> {
        let fields = scan_top_level(&bytes)?;
        let mut body = ChatBody {
            op: super::Op::Chat,
            bytes,
            fields,
            model: Box::from(""),
            facts: Facts::default(),
        };
        let req = ChatRequest::from_body(&body)?;
        let model: Box<str> = req.model.as_ref().into();
        let facts = Facts {
            stream: req.stream,
            include_usage: req.include_usage,
            est_prompt_tokens: u32::try_from(body.bytes.len() / 4).unwrap_or(u32::MAX),
            max_tokens: req.max_tokens,
            user: req.user.as_deref().map(Box::from),
            embed: None,
        };
        drop(req);
        body.model = model;
        body.facts = facts;
        Ok(body)
    }

    /// Parses and validates an embeddings request body (`POST /v1/embeddings`).
    pub fn parse_embeddings(bytes: Bytes) -> Result<ChatBody, GatewayError> {
        let req = super::embeddings::parse_request(&bytes)?;
        let model: Box<str> = req.model.as_ref().into();
        let est = req.estimate_tokens();
        let facts = Facts {
            stream: false,
            include_usage: false,
            est_prompt_tokens: est,
            max_tokens: Some(0),
            user: req.user.as_deref().map(Box::from),
            embed: Some(super::embeddings::Ask {
                inputs: req.count(),
                encoding: req.encoding,
                est_tokens: est,
                dimensions: req.dimensions,
            }),
        };
        drop(req);
        Ok(ChatBody {
            op: super::Op::Embeddings,
            bytes,
            fields: Vec::new(),
            model,
            facts,
        })
    }

    pub fn value(&self, field: &Field) -> &[u8] {
        &self.bytes[field.value.clone()]
    }

    pub fn key<'s>(&'s self, field: &'s Field) -> Cow<'s, str> {
        match &field.key {
            KeyText::Span(r) => String::from_utf8_lossy(&self.bytes[r.clone()]),
            KeyText::Owned(s) => Cow::Borrowed(s),
        }
    }

    pub fn field(&self, known: Known) -> Option<&Field> {
        self.fields.iter().find(|f| f.known == Some(known))
    }
}

/// Reads the top-level object into (key, value span) pairs, validating the JSON syntax of the
/// whole body on the way.
fn scan_top_level(bytes: &[u8]) -> Result<Vec<Field>, GatewayError> {
    struct TopLevel<'de>(Vec<(Cow<'de, str>, &'de RawValue)>);

    impl<'de> Deserialize<'de> for TopLevel<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = TopLevel<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                    while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                        let value: &'de RawValue = map.next_value()?;
                        out.push((key, value));
                    }
                    Ok(TopLevel(out))
                }
            }
            d.deserialize_map(V)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = TopLevel::deserialize(&mut de).and_then(|t| de.end().map(|()| t));
    let top = parsed.map_err(|e| {
        let message = if e.is_syntax() || e.is_eof() {
            format!("request body is not valid JSON: {e}")
        } else {
            "request body must be a JSON object".to_owned()
        };
        GatewayError::bad_request(message, None)
    })?;

    // A key given twice would route by one value and send both upstream; refuse it.
    for (i, (key, _)) in top.0.iter().enumerate() {
        if top.0[..i].iter().any(|(k, _)| k == key) {
            return Err(GatewayError::bad_request(
                format!("{key}: the key appears more than once in the request body"),
                Some(key.to_string()),
            ));
        }
    }
    let base = bytes.as_ptr() as usize;
    let span_of = |s: &str| -> Option<Range<usize>> {
        let start = (s.as_ptr() as usize).checked_sub(base)?;
        let end = start + s.len();
        (end <= bytes.len() && &bytes[start..end] == s.as_bytes()).then_some(start..end)
    };
    top.0
        .into_iter()
        .map(|(key, value)| {
            let value_span = span_of(value.get()).ok_or_else(|| {
                GatewayError::Internal("request value is not a slice of the body".to_owned())
            })?;
            let known = Known::from_key(&key);
            let key = match key {
                Cow::Borrowed(k) => span_of(k)
                    .map(KeyText::Span)
                    .unwrap_or_else(|| KeyText::Owned(k.into())),
                Cow::Owned(k) => KeyText::Owned(k.into()),
            };
            Ok(Field {
                known,
                key,
                value: value_span,
            })
        })
        .collect()
}

// === typed view ===

/// The typed request. Borrowed from a [`ChatBody`]; strings are borrowed unless they had escapes.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    pub model: Cow<'a, str>,
    pub messages: Vec<Message<'a>>,
    pub stream: bool,
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<u32>,
    pub stop: Vec<Cow<'a, str>>,
    pub tools: Vec<Tool<'a>>,
    pub tool_choice: Option<ToolChoice<'a>>,
    pub parallel_tool_calls: Option<bool>,
    pub user: Option<Cow<'a, str>>,
    pub logprobs: bool,
    pub response_format: Option<ResponseFormat<'a>>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

#[derive(Debug, Deserialize)]
pub struct Message<'a> {
    pub role: Role,
    #[serde(borrow, default)]
    pub content: Option<Content<'a>>,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(borrow, default)]
    pub tool_call_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub refusal: Option<Cow<'a, str>>,
}

/// Message content: a string or an array of parts.
#[derive(Debug)]
pub enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part<'a> {
    Text {
        #[serde(borrow)]
        text: Cow<'a, str>,
    },
    ImageUrl {
        #[serde(borrow)]
        image_url: ImageUrl<'a>,
    },
    /// Audio and file parts are forwarded untouched to OpenAI-shaped upstreams and refused by
    /// the others, so their contents are only checked to be present. (A borrowed `RawValue`
    /// cannot sit in an internally tagged enum: serde buffers the fields first.)
    InputAudio {
        #[allow(dead_code, reason = "presence is what is validated")]
        input_audio: serde::de::IgnoredAny,
    },
    File {
        #[allow(dead_code, reason = "presence is what is validated")]
        file: serde::de::IgnoredAny,
    },
}

#[derive(Debug, Deserialize)]
pub struct ImageUrl<'a> {
    #[serde(borrow)]
    pub url: Cow<'a, str>,
    #[serde(borrow, default)]
    pub detail: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub struct ToolCall<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub function: FunctionCall<'a>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCall<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub arguments: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
pub struct Tool<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub function: FunctionDef<'a>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionDef<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub parameters: Option<&'a RawValue>,
    #[serde(default)]
    pub strict: Option<bool>,
}

#[derive(Debug, PartialEq)]
pub enum ToolChoice<'a> {
    None,
    Auto,
    Required,
    Function(Cow<'a, str>),
}

#[derive(Debug, Deserialize)]
pub struct ResponseFormat<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub json_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// `stop`: a string or an array of strings.
struct Stop<'a>(Vec<Cow<'a, str>>);

impl<'a> ChatRequest<'a> {
    /// Type-checks every known field of `body` and the rules between them.
    pub fn from_body(body: &'a ChatBody) -> Result<ChatRequest<'a>, GatewayError> {
        let mut model = None;
        let mut messages = None;
        let mut req = ChatRequest {
            model: Cow::Borrowed(""),
            messages: Vec::new(),
            stream: false,
            include_usage: false,
            max_tokens: None,
            temperature: None,
            top_p: None,
            n: None,
            stop: Vec::new(),
            tools: Vec::new(),
            tool_choice: None,
            parallel_tool_calls: None,
            user: None,
            logprobs: false,
            response_format: None,
            seed: None,
            presence_penalty: None,
            frequency_penalty: None,
        };
        let mut max_tokens = None;
        let mut max_completion_tokens = None;

        for field in &body.fields {
            let Some(known) = field.known else { continue };
            let raw = body.value(field);
            let name = body.key(field);
            let null = raw == b"null";
            match known {
                Known::Model => model = Some(typed::<Cow<'a, str>>(&name, raw)?),
                Known::Messages => {
                    let list = typed::<Vec<Object<Message<'a>>>>(&name, raw)?;
                    messages = Some(list.into_iter().map(|m| m.0).collect());
                }
                Known::Stream => req.stream = typed::<Option<bool>>(&name, raw)?.unwrap_or(false),
                Known::StreamOptions => {
                    if let Some(o) = typed::<Option<StreamOptions>>(&name, raw)? {
                        req.include_usage = o.include_usage.unwrap_or(false);
                    }
                }
                Known::MaxTokens => max_tokens = typed::<Option<u32>>(&name, raw)?,
                Known::MaxCompletionTokens => {
                    max_completion_tokens = typed::<Option<u32>>(&name, raw)?
                }
                Known::Temperature => {
                    req.temperature = typed::<Option<f64>>(&name, raw)?;
                    range(&name, req.temperature, 0.0, 2.0)?;
                }
                Known::TopP => {
                    req.top_p = typed::<Option<f64>>(&name, raw)?;
                    range(&name, req.top_p, 0.0, 1.0)?;
                }
                Known::N => {
                    req.n = typed::<Option<u32>>(&name, raw)?;
                    range(&name, req.n.map(f64::from), 1.0, 128.0)?;
                }
                Known::Stop => {
                    if !null {
                        req.stop = typed::<Stop<'a>>(&name, raw)?.0;
                    }
                }
                Known::Tools => {
                    let list = typed::<Option<Vec<Object<Tool<'a>>>>>(&name, raw)?;
                    req.tools = list.unwrap_or_default().into_iter().map(|t| t.0).collect();
                }
                Known::ToolChoice => req.tool_choice = typed::<Option<ToolChoice<'a>>>(&name, raw)?,
                Known::ParallelToolCalls => {
                    req.parallel_tool_calls = typed::<Option<bool>>(&name, raw)?
                }
                Known::User => req.user = typed::<Option<Cow<'a, str>>>(&name, raw)?,
                Known::PresencePenalty | Known::FrequencyPenalty => {
                    let penalty = typed::<Option<f64>>(&name, raw)?;
                    range(&name, penalty, -2.0, 2.0)?;
                    if known == Known::PresencePenalty {
                        req.presence_penalty = penalty;
                    } else {
                        req.frequency_penalty = penalty;
                    }
                }
                Known::Seed => req.seed = typed::<Option<i64>>(&name, raw)?,
                Known::Logprobs => {
                    req.logprobs = typed::<Option<bool>>(&name, raw)?.unwrap_or(false)
                }
                Known::TopLogprobs => {
                    range(
                        &name,
                        typed::<Option<u32>>(&name, raw)?.map(f64::from),
                        0.0,
                        20.0,
                    )?;
                }
                Known::LogitBias => {
                    typed::<Option<std::collections::HashMap<Cow<'a, str>, f64>>>(&name, raw)?;
                }
                Known::ResponseFormat => {
                    req.response_format = typed::<Option<ResponseFormat<'a>>>(&name, raw)?
                }
                Known::Metadata => {
                    typed::<Option<std::collections::HashMap<Cow<'a, str>, &'a RawValue>>>(
                        &name, raw,
                    )?;
                }
                Known::GatewayOnly => {}
            }
        }

        req.model = model.ok_or_else(|| missing("model"))?;
        if req.model.is_empty() {
            return Err(GatewayError::bad_request(
                "model: must not be empty",
                Some("model".to_owned()),
            ));
        }
        req.messages = messages.ok_or_else(|| missing("messages"))?;
        if req.messages.is_empty() {
            return Err(GatewayError::bad_request(
                "messages: must contain at least one message",
                Some("messages".to_owned()),
            ));
        }
        req.max_tokens = max_completion_tokens.or(max_tokens);
        if req.max_tokens == Some(0) {
            return Err(GatewayError::bad_request(
                "max_tokens: must be at least 1",
                Some("max_tokens".to_owned()),
            ));
        }
        for (i, m) in req.messages.iter().enumerate() {
            validate_message(i, m)?;
        }
        for (i, t) in req.tools.iter().enumerate() {
            if t.kind != "function" {
                return Err(GatewayError::bad_request(
                    format!("tools[{i}].type: only \"function\" tools are supported"),
                    Some(format!("tools[{i}].type")),
                ));
            }
        }
        Ok(req)
    }
}

fn validate_message(i: usize, m: &Message<'_>) -> Result<(), GatewayError> {
    let field = |f: &str| format!("messages[{i}].{f}");
    let bad = |f: &str, why: &str| {
        Err(GatewayError::bad_request(
            format!("{}: {why}", field(f)),
            Some(field(f)),
        ))
    };
    match m.role {
        Role::System | Role::Developer | Role::User | Role::Function if m.content.is_none() => {
            bad("content", "is required for this role")
        }
        Role::Tool if m.tool_call_id.is_none() => bad("tool_call_id", "is required for role tool"),
        Role::Tool if m.content.is_none() => bad("content", "is required for role tool"),
        Role::Assistant
            if m.content.is_none()
                && m.tool_calls.as_ref().is_none_or(Vec::is_empty)
                && m.refusal.is_none() =>
        {
            bad(
                "content",
                "an assistant message needs content or tool_calls",
            )
        }
        Role::System | Role::Developer => match &m.content {
            Some(Content::Parts(parts))
                if parts.iter().any(|p| !matches!(p, Part::Text { .. })) =>
            {
                bad("content", "system messages may only contain text parts")
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

fn missing(field: &str) -> GatewayError {
    GatewayError::bad_request(
        format!("{field}: this field is required"),
        Some(field.to_owned()),
    )
}

fn range(name: &str, v: Option<f64>, min: f64, max: f64) -> Result<(), GatewayError> {
    match v {
        Some(x) if !(min..=max).contains(&x) => Err(GatewayError::bad_request(
            format!("{name}: {x} is out of range ({min} to {max})"),
            Some(name.to_owned()),
        )),
        _ => Ok(()),
    }
}

/// Deserializes one top-level value, naming the full path of any error (`messages[0].role`).
fn typed<'a, T: Deserialize<'a>>(name: &str, raw: &'a [u8]) -> Result<T, GatewayError> {
    // Valid input is the common case: parse it plainly, and only parse again with path tracking
    // (which costs about as much as the parse itself) to explain an error.
    let mut de = serde_json::Deserializer::from_slice(raw);
    if let Ok(v) = T::deserialize(&mut de) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner().to_string();
        // serde_json appends " at line L column C", meaningless for a value cut out of the body.
        let inner = match inner.rfind(" at line ") {
            Some(pos) => inner[..pos].to_owned(),
            None => inner,
        };
        let path = e.path().to_string();
        let param = if path == "." {
            name.to_owned()
        } else if path.starts_with('[') {
            format!("{name}{path}")
        } else {
            format!("{name}.{path}")
        };
        GatewayError::bad_request(format!("{param}: {inner}"), Some(param))
    })
}

// === hand-written visitors, for clear error messages and no buffering ===

/// A struct that must be written as a JSON object. Serde's derive also accepts an array of the
/// fields in order (`["user", "hi"]` as a message); the API never means that.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(p) = seq.next_element::<Part<'a>>()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Stop<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Stop<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Stop(vec![Cow::Borrowed(v)]))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Stop(vec![Cow::Owned(v.to_owned())]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<Cow<'a, str>>()? {
                    out.push(s);
                }
                Ok(Stop(out))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ToolChoice<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Named<'a> {
            #[serde(rename = "type", borrow)]
            kind: Cow<'a, str>,
            #[serde(borrow)]
            function: NamedFn<'a>,
        }
        #[derive(Deserialize)]
        struct NamedFn<'a> {
            #[serde(borrow)]
            name: Cow<'a, str>,
        }
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ToolChoice<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"none\", \"auto\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "none" => Ok(ToolChoice::None),
                    "auto" => Ok(ToolChoice::Auto),
                    "required" => Ok(ToolChoice::Required),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let named = Named::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if named.kind != "function" {
                    return Err(de::Error::custom("tool_choice.type must be \"function\""));
                }
                Ok(ToolChoice::Function(named.function.name))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl Content<'_> {
    /// All text of the content, parts joined with no separator; non-text parts are skipped.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Content::Text(t) => Cow::Borrowed(t),
            Content::Parts(parts) => {
                let mut s = String::new();
                for p in parts {
                    if let Part::Text { text } = p {
                        s.push_str(text);
                    }
                }
                Cow::Owned(s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ChatBody, GatewayError> {
        ChatBody::parse(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn err(s: &str) -> (String, Option<String>) {
        match parse(s) {
            Ok(_) => panic!("expected {s} to be rejected"),
            Err(GatewayError::BadRequest { message, param, .. }) => (message, param),
            Err(other) => panic!("expected a bad request, got {other:?}"),
        }
    }

    const C1: &str = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"Say hello."}],"temperature":0.2,"max_tokens":64,"stop":["END"],"user":"u-123"}"#;

    #[test]
    fn parses_spans_and_facts() {
        let body = parse(C1).expect("C1 is valid");
        assert_eq!(&*body.model, "gpt-4o");
        assert!(!body.facts.stream);
        let f = body.field(Known::Model).expect("model field");
        assert_eq!(body.value(f), br#""gpt-4o""#);
        assert_eq!(body.key(f), "model");
        let f = body.field(Known::Stop).expect("stop field");
        assert_eq!(body.value(f), br#"["END"]"#);
        let req = ChatRequest::from_body(&body).expect("typed");
        assert_eq!(req.messages.len(), 2);
        assert_eq!(req.max_tokens, Some(64));
        assert_eq!(req.stop, vec!["END"]);
        assert_eq!(req.user.as_deref(), Some("u-123"));
        assert!(matches!(
            req.messages[1].content,
            Some(Content::Text(Cow::Borrowed("Say hello.")))
        ));
    }

    #[test]
    fn stream_and_include_usage_are_facts() {
        let body = parse(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#).expect("valid");
        assert!(body.facts.stream);
        assert!(body.facts.include_usage);
    }

    #[test]
    fn keys_with_escapes_are_kept_decoded() {
        let body =
            parse(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"we\u0069rd":1}"#)
                .expect("valid");
        let f = body
            .fields
            .iter()
            .find(|f| f.known.is_none())
            .expect("unknown field");
        assert_eq!(body.key(f), "weird");
        assert!(matches!(f.key, KeyText::Owned(_)));
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let (m, p) = err(r#"{"model": "m", "messages": [}"#);
        assert!(m.starts_with("request body is not valid JSON"), "{m}");
        assert_eq!(p, None);
        let (m, _) = err(r#"{"model":"m","messages":[]} trailing"#);
        assert!(m.contains("not valid JSON"), "{m}");
        let (m, _) = err(r#"[1,2]"#);
        assert_eq!(m, "request body must be a JSON object");
        let (m, _) = err("");
        assert!(m.contains("not valid JSON"), "{m}");
    }

    #[test]
    fn missing_and_empty_fields_are_named() {
        assert_eq!(
            err(r#"{"messages":[{"role":"user","content":"x"}]}"#)
                .1
                .as_deref(),
            Some("model")
        );
        let (m, p) = err(r#"{"model":"m"}"#);
        assert_eq!(m, "messages: this field is required");
        assert_eq!(p.as_deref(), Some("messages"));
        let (m, _) = err(r#"{"model":"m","messages":[]}"#);
        assert_eq!(m, "messages: must contain at least one message");
    }

    #[test]
    fn ill_typed_fields_are_named_with_their_path() {
        let (m, p) =
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#);
        assert_eq!(p.as_deref(), Some("temperature"));
        assert!(
            m.starts_with("temperature: invalid type: string \"hot\", expected f64"),
            "{m}"
        );
        let (m, p) = err(
            r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"bot","content":"y"}]}"#,
        );
        assert_eq!(p.as_deref(), Some("messages[1].role"));
        assert!(m.contains("unknown variant `bot`"), "{m}");
        let (m, p) = err(r#"{"model":"m","messages":[{"role":"user","content":42}]}"#);
        assert_eq!(p.as_deref(), Some("messages[0].content"));
        assert!(
            m.contains("expected a string or an array of content parts"),
            "{m}"
        );
        let (_, p) = err(r#"{"model":7,"messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(p.as_deref(), Some("model"));
        let (_, p) =
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#);
        assert_eq!(p.as_deref(), Some("stream"));
        // Parts are internally tagged, which serde buffers: the path stops at the part.
        let (m, p) = err(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#,
        );
        assert_eq!(p.as_deref(), Some("messages[0].content[0]"));
        assert!(m.contains("missing field `url`"), "{m}");
    }

    #[test]
    fn duplicate_keys_and_array_shaped_objects_are_rejected() {
        let (m, p) =
            err(r#"{"model":"nope","model":"m","messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(p.as_deref(), Some("model"));
        assert_eq!(
            m,
            "model: the key appears more than once in the request body"
        );
        let (m, p) = err(r#"{"model":"m","messages":[["user","hi"]]}"#);
        assert_eq!(p.as_deref(), Some("messages[0]"));
        assert!(m.contains("expected an object"), "{m}");
        let (_, p) = err(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[["function",{}]]}"#,
        );
        assert_eq!(p.as_deref(), Some("tools[0]"));
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let (m, _) =
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#);
        assert_eq!(m, "temperature: 3 is out of range (0 to 2)");
        let (m, _) =
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#);
        assert_eq!(m, "max_tokens: must be at least 1");
    }

    #[test]
    fn message_rules_are_enforced() {
        let (m, _) = err(r#"{"model":"m","messages":[{"role":"user"}]}"#);
        assert_eq!(m, "messages[0].content: is required for this role");
        let (m, _) = err(r#"{"model":"m","messages":[{"role":"tool","content":"r"}]}"#);
        assert_eq!(m, "messages[0].tool_call_id: is required for role tool");
        let (m, _) = err(r#"{"model":"m","messages":[{"role":"assistant","content":null}]}"#);
        assert_eq!(
            m,
            "messages[0].content: an assistant message needs content or tool_calls"
        );
        parse(r#"{"model":"m","messages":[{"role":"user","content":"q"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"r"}]}"#).expect("tool round trip is valid");
    }

    #[test]
    fn tool_choice_forms() {
        for (s, want) in [
            (r#""auto""#, ToolChoice::Auto),
            (r#""none""#, ToolChoice::None),
            (r#""required""#, ToolChoice::Required),
            (
                r#"{"type":"function","function":{"name":"f"}}"#,
                ToolChoice::Function(Cow::Borrowed("f")),
            ),
        ] {
            let text = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"tool_choice":{s}}}"#
            );
            let body = parse(&text).expect("valid");
            let req = ChatRequest::from_body(&body).expect("typed");
            assert_eq!(req.tool_choice, Some(want));
        }
        let (_, p) = err(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"sometimes"}"#,
        );
        assert_eq!(p.as_deref(), Some("tool_choice"));
    }

    #[test]
    fn gateway_only_fields_are_marked() {
        let body = parse(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"api_base":"http://evil.example","api_key":"sk-client"}"#).expect("valid");
        let n = body
            .fields
            .iter()
            .filter(|f| f.known == Some(Known::GatewayOnly))
            .count();
        assert_eq!(n, 2);
    }
}
