//! The `openai` kind: OpenAI itself and every OpenAI-compatible server (providers.md §1, §2, §8).
//! The client's body is forwarded with the model rewritten, gateway-only fields dropped and, for
//! streams, `stream_options.include_usage` forced on so spend is always known (per-provider
//! request scrubs are in `compat.rs`). Responses are relayed as raw bytes; only usage, finish and
//! errors are read, and a body or chunk is rewritten only when the deployment's [`Preset`] has a
//! quirk that breaks the OpenAI contract. No I/O here.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::compat::Preset;
use super::oai::{self, Usage};
use super::request::{ChatBody, KeyText, Known};
use super::sse::SseEvent;
use super::{is_context_window_message, is_identifier, status_error, truncate_message, Progress};
use crate::error::{ErrorClass, UpstreamError};

/// Builds the upstream body from the client's, without re-parsing the messages.
pub fn build_request(body: &ChatBody, upstream_model: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(body.bytes.len() + 64);
    out.put_u8(b'{');
    let mut first = true;
    let mut sep = |out: &mut BytesMut| {
        if !first {
            out.put_u8(b',');
        }
        first = false;
    };
    let mut stream_options: Option<&[u8]> = None;
    for field in &body.fields {
        match field.known {
            Some(Known::GatewayOnly) => continue,
            Some(Known::Model) => {
                sep(&mut out);
                out.put_slice(b"\"model\":");
                write_json_str(&mut out, upstream_model);
            }
            Some(Known::StreamOptions) if body.facts.stream => {
                stream_options = Some(body.value(field));
            }
            _ => {
                sep(&mut out);
                match &field.key {
                    KeyText::Span(r) => {
                        out.put_u8(b'"');
                        out.put_slice(&body.bytes[r.clone()]);
                        out.put_u8(b'"');
                    }
                    KeyText::Owned(k) => write_json_str(&mut out, k),
                }
                out.put_u8(b':');
                out.put_slice(body.value(field));
            }
        }
    }
    if body.facts.stream {
        sep(&mut out);
        out.put_slice(b"\"stream_options\":");
        write_stream_options(&mut out, stream_options);
    }
    out.put_u8(b'}');
    out.freeze()
}

fn write_json_str(out: &mut BytesMut, s: &str) {
    let _ = serde_json::to_writer(out.writer(), s);
}

/// The client's stream options with `include_usage` forced on (the relay drops the usage chunk
/// again if the client did not ask for it).
fn write_stream_options(out: &mut BytesMut, raw: Option<&[u8]>) {
    let mut map = raw
        .and_then(|r| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(r).ok())
        .unwrap_or_default();
    map.insert("include_usage".to_owned(), serde_json::Value::Bool(true));
    let _ = serde_json::to_writer(out.writer(), &map);
}

#[derive(Deserialize, Default)]
pub(super) struct OaiUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
    /// DeepSeek's name for cached prompt tokens.
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl OaiUsage {
    /// The usage normalized to OpenAI's invariants, and whether the upstream's numbers broke
    /// them (xAI counts reasoning outside `completion_tokens` but inside `total_tokens`), in
    /// which case the client's copy must be rewritten too.
    fn normalize(self, preset: Preset) -> (Usage, bool) {
        let cached = self
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .or(self.prompt_cache_hit_tokens)
            .unwrap_or(0);
        let reasoning = self
            .completion_tokens_details
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0);
        let mut completion = self.completion_tokens;
        let fold = preset == Preset::Xai
            && reasoning > 0
            && self.total_tokens
                == Some(
                    self.prompt_tokens
                        .saturating_add(completion)
                        .saturating_add(reasoning),
                );
        if fold {
            completion = completion.saturating_add(reasoning);
        }
        let usage = Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: completion,
            cached_tokens: cached,
            cache_write_tokens: 0,
            reasoning_tokens: reasoning,
        };
        (usage, fold)
    }
}

impl From<OaiUsage> for Usage {
    fn from(u: OaiUsage) -> Usage {
        u.normalize(Preset::OpenAi).0
    }
}

/// Folds `completion_tokens_details.reasoning_tokens` into `completion_tokens` of a usage
/// object (xAI), keeping `total_tokens` at least prompt + completion.
fn fold_reasoning(usage: &mut Value) {
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let reasoning = usage
        .get("completion_tokens_details")
        .map_or(0, |d| num(d, "reasoning_tokens"));
    let completion = num(usage, "completion_tokens").saturating_add(reasoning);
    let total = num(usage, "prompt_tokens").saturating_add(completion);
    let old_total = num(usage, "total_tokens");
    if let Some(u) = usage.as_object_mut() {
        u.insert("completion_tokens".to_owned(), Value::from(completion));
        if old_total < total {
            u.insert("total_tokens".to_owned(), Value::from(total));
        }
    }
}

/// A finish reason that is not one (`""` or `null`, as xAI sends after tool calls).
fn is_blank(reason: Option<&str>) -> bool {
    reason.is_none_or(str::is_empty)
}

/// Checks a 2xx non-streaming body and reads its usage. The body is relayed as is (minus any
/// leading whitespace) unless the preset's quirks need fixing: xAI's blank `finish_reason` after
/// tool calls and its reasoning tokens outside `completion_tokens`. A `content_filter` finish is
/// a successful answer (the OpenAI contract), not an error.
pub fn parse_response(preset: Preset, body: Bytes) -> Result<(Bytes, Usage), UpstreamError> {
    #[derive(Deserialize)]
    struct Resp<'a> {
        #[serde(borrow)]
        choices: Vec<Choice<'a>>,
        #[serde(default)]
        usage: Option<OaiUsage>,
    }
    #[derive(Deserialize)]
    struct Choice<'a> {
        #[serde(borrow, default)]
        finish_reason: Option<Cow<'a, str>>,
        #[serde(default)]
        message: Option<Message>,
    }
    #[derive(Deserialize)]
    struct Message {
        #[serde(default)]
        tool_calls: Option<Count>,
    }
    // Some servers (DeepSeek under load) send blank lines before the JSON.
    let skip = body.len() - body.trim_ascii_start().len();
    let body = body.slice(skip..);
    // The body is relayed as is, so it must be UTF-8 throughout; checking it in one pass is
    // cheaper than letting the parser check every string it skips.
    let parsed = std::str::from_utf8(&body)
        .ok()
        .and_then(|text| serde_json::from_str::<Resp>(text).ok());
    let Some(resp) = parsed else {
        // OpenRouter can answer 200 with only an error object (its numeric `code` is the status
        // the request would have had).
        let error = serde_json::from_slice::<ErrorEnvelope>(&body)
            .ok()
            .and_then(|e| e.error);
        return Err(match error {
            Some(raw) => in_band_error(raw.get().as_bytes()),
            None => malformed(),
        });
    };
    if resp.choices.is_empty() {
        return Err(UpstreamError::new(
            ErrorClass::ServerError,
            "upstream returned a completion with no choices",
        ));
    }
    let (usage, fold) = resp.usage.map(|u| u.normalize(preset)).unwrap_or_default();
    let fix_finish = preset == Preset::Xai
        && resp.choices.iter().any(|c| {
            is_blank(c.finish_reason.as_deref())
                && c.message
                    .as_ref()
                    .and_then(|m| m.tool_calls.as_ref())
                    .is_some_and(|t| t.0 > 0)
        });
    if !fold && !fix_finish {
        return Ok((body, usage));
    }
    let mut value: Value = serde_json::from_slice(&body).map_err(|_| malformed())?;
    if fold {
        if let Some(u) = value.get_mut("usage") {
            fold_reasoning(u);
        }
    }
    if fix_finish {
        let choices = value.get_mut("choices").and_then(Value::as_array_mut);
        for c in choices.into_iter().flatten() {
            let has_calls = c
                .pointer("/message/tool_calls")
                .and_then(Value::as_array)
                .is_some_and(|t| !t.is_empty());
            if has_calls && is_blank(c.get("finish_reason").and_then(Value::as_str)) {
                if let Some(c) = c.as_object_mut() {
                    c.insert("finish_reason".to_owned(), Value::from("tool_calls"));
                }
            }
        }
    }
    let out = serde_json::to_vec(&value).map_err(|_| malformed())?;
    Ok((Bytes::from(out), usage))
}

fn malformed() -> UpstreamError {
    UpstreamError::new(
        ErrorClass::ServerError,
        "upstream returned a malformed completion body",
    )
}

/// The length of a JSON array whose elements are checked for syntax and skipped.
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope<'a> {
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct ErrorObject<'a> {
    /// A string; Mistral's 422 sends an object (pydantic's `detail` list).
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    /// A string (`"rate_limit_exceeded"`, Azure's `"429"`) or a number (OpenRouter).
    #[serde(default)]
    code: Option<Value>,
    /// Azure: `{"code": "ResponsibleAIPolicyViolation", "content_filter_result": {...}}`.
    #[serde(borrow, default)]
    innererror: Option<InnerError<'a>>,
}

#[derive(Deserialize, Default)]
struct InnerError<'a> {
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
}

/// What an OpenAI-shaped error body says; absent or malformed parts are empty.
#[derive(Debug, Default)]
struct ErrorInfo {
    message: String,
    kind: Option<String>,
    code: Option<String>,
    numeric_code: Option<i64>,
    inner_code: Option<String>,
}

/// Reads `{"error": {...}}`, `{"error": "text"}` or Mistral's and vLLM's top-level
/// `{"object": "error", "message", "type", "code"}`.
fn read_error(body: &[u8]) -> ErrorInfo {
    let body = body.trim_ascii_start();
    let Ok(env) = serde_json::from_slice::<ErrorEnvelope>(body) else {
        return ErrorInfo::default();
    };
    let obj = match env.error {
        Some(raw) => {
            if let Ok(text) = serde_json::from_str::<Cow<str>>(raw.get()) {
                return ErrorInfo {
                    message: text.into_owned(),
                    ..ErrorInfo::default()
                };
            }
            serde_json::from_str::<ErrorObject>(raw.get()).unwrap_or_default()
        }
        None => serde_json::from_slice::<ErrorObject>(body).unwrap_or_default(),
    };
    let message = match obj.message {
        None => String::new(),
        Some(raw) => match serde_json::from_str::<Cow<str>>(raw.get()) {
            Ok(text) => text.into_owned(),
            Err(_) if raw.get() == "null" => String::new(),
            Err(_) => raw.get().to_owned(),
        },
    };
    let (code, numeric_code) = match obj.code {
        Some(Value::String(s)) => (Some(s), None),
        Some(Value::Number(n)) => (None, n.as_i64()),
        _ => (None, None),
    };
    ErrorInfo {
        message,
        kind: obj.kind.map(Cow::into_owned),
        code,
        numeric_code,
        inner_code: obj.innererror.and_then(|i| i.code).map(Cow::into_owned),
    }
}

/// Classifies a non-2xx response from an OpenAI-shaped upstream (OpenAI, Azure and the §8
/// compat providers: their differences are in the body, not the status, so no preset is needed).
pub fn classify_error(status: u16, retry_after: Option<Duration>, body: &[u8]) -> UpstreamError {
    let err = read_error(body);
    let is =
        |needle: &str| err.code.as_deref() == Some(needle) || err.kind.as_deref() == Some(needle);
    let lower = err.message.to_ascii_lowercase();
    let class = match status {
        429 if is("insufficient_quota") => ErrorClass::QuotaExhausted,
        // Mistral: "Service tier capacity exceeded for this model."
        _ if lower.contains("service tier capacity exceeded") => ErrorClass::RateLimited,
        429 => ErrorClass::RateLimited,
        402 => ErrorClass::QuotaExhausted,
        400 | 413 | 422 => {
            if is("context_length_exceeded") || is_context_window_message(&err.message) {
                ErrorClass::ContextWindow
            } else if is("content_policy_violation")
                || is("content_filter")
                || is("invalid_prompt")
                || err.inner_code.as_deref() == Some("ResponsibleAIPolicyViolation")
            {
                ErrorClass::ContentPolicy
            } else {
                ErrorClass::BadRequest
            }
        }
        401 | 403 | 404 => ErrorClass::UpstreamAuth,
        408 => ErrorClass::Timeout,
        503 | 529 => ErrorClass::Overloaded,
        500..=599 => ErrorClass::ServerError,
        400..=499 => ErrorClass::BadRequest,
        _ => ErrorClass::ServerError,
    };
    let retry_after = match class {
        ErrorClass::RateLimited => retry_after.or_else(|| retry_hint(&lower)),
        _ => retry_after,
    };
    status_error(class, status, &err.message, err.code, retry_after)
}

/// The wait a rate-limit message asks for when no header did: Azure's "Please retry after 6
/// seconds.", OpenAI's "Please try again in 1.5s" / "in 20ms".
fn retry_hint(lower: &str) -> Option<Duration> {
    let at = ["retry after ", "try again in "]
        .iter()
        .find_map(|p| lower.find(p).map(|i| i + p.len()))?;
    let rest = &lower[at..];
    let len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let n: f64 = rest[..len].parse().ok()?;
    let unit = rest[len..].trim_start();
    let secs = if unit.starts_with("ms") || unit.starts_with("millisecond") {
        n / 1000.0
    } else if unit.starts_with('s') {
        n
    } else {
        return None;
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// Relays an OpenAI-shaped SSE stream: events pass through byte for byte, except the usage chunk
/// when the client did not ask for it, chunks with no choices and no usage (Azure's
/// `prompt_filter_results` annotations: dropped), events that are not JSON (skipped and counted),
/// and chunks the preset's quirks break (xAI: rewritten, see [`Relay::on_event`]).
#[derive(Debug)]
pub struct Relay {
    include_usage: bool,
    preset: Preset,
    finished: bool,
    done: bool,
    /// A tool-call delta has been seen (xAI may then finish with `finish_reason: ""`).
    saw_tool_calls: bool,
    usage: Usage,
    invalid_events: u32,
    /// A usage chunk split off a content chunk, sent after the finish chunk.
    pending_usage: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct Chunk<'a> {
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
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChunkDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    function_call: Option<IgnoredAny>,
}

impl ChunkDelta<'_> {
    fn has_tool_calls(&self) -> bool {
        self.tool_calls.as_ref().is_some_and(|t| !t.is_empty()) || self.function_call.is_some()
    }

    fn is_meaningful(&self) -> bool {
        let text = |t: &Option<Cow<str>>| t.as_deref().is_some_and(|s| !s.is_empty());
        text(&self.content)
            || text(&self.refusal)
            || text(&self.reasoning_content)
            || text(&self.reasoning)
            || self.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
            || self.function_call.is_some()
    }
}

impl Relay {
    pub fn new(include_usage: bool, preset: Preset) -> Self {
        Relay {
            include_usage,
            preset,
            finished: false,
            done: false,
            saw_tool_calls: false,
            pending_usage: None,
            usage: Usage::default(),
            invalid_events: 0,
        }
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn invalid_events(&self) -> u32 {
        self.invalid_events
    }

    /// Relays one event. Chunks are forwarded as received, except: a chunk with no choices is
    /// the usage chunk only if its `usage` is non-null (forwarded if the client asked for
    /// usage), otherwise it is dropped (Azure's content-filter annotations); an `error` object
    /// or `finish_reason: "error"` (OpenRouter) is an `Err`; for xAI, a `finish_reason: ""`
    /// after tool calls becomes `"tool_calls"`, and reasoning tokens are folded into
    /// `completion_tokens` of the usage chunk.
    pub fn on_event(
        &mut self,
        ev: &SseEvent,
        out: &mut BytesMut,
    ) -> Result<Progress, UpstreamError> {
        let data = ev.data.trim_ascii();
        if data == b"[DONE]" {
            if !self.finished {
                return Err(UpstreamError::new(
                    ErrorClass::ServerError,
                    "upstream ended the stream with [DONE] before any finish_reason",
                ));
            }
            out.put_slice(oai::DONE);
            self.done = true;
            return Ok(Progress::DONE);
        }
        let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else {
            self.invalid_events += 1;
            return Ok(Progress::NOTHING);
        };
        if let Some(err) = chunk.error {
            return Err(in_band_error(err.get().as_bytes()));
        }
        let mut fold = false;
        let has_usage = chunk.usage.is_some();
        if let Some(u) = chunk.usage {
            (self.usage, fold) = u.normalize(self.preset);
        }
        let mut progress = Progress::NOTHING;
        let mut fix_finish = false;
        match &chunk.choices {
            Some(choices) if !choices.is_empty() => {
                for c in choices {
                    if let Some(d) = &c.delta {
                        progress.meaningful |= d.is_meaningful();
                        self.saw_tool_calls |= d.has_tool_calls();
                    }
                    match c.finish_reason.as_deref() {
                        Some("error") => {
                            return Err(UpstreamError::new(
                                ErrorClass::ServerError,
                                "upstream ended the stream with finish_reason \"error\"",
                            ))
                        }
                        // xAI ends tool-call streams with an empty finish reason.
                        Some("")
                            if self.preset == Preset::Xai
                                && self.saw_tool_calls
                                && !self.finished =>
                        {
                            fix_finish = true;
                            self.finished = true;
                            progress.finished = true;
                        }
                        None | Some("") => {}
                        Some(_) => {
                            self.finished = true;
                            progress.finished = true;
                        }
                    }
                }
            }
            // No choices and no usage: Azure's prompt_filter_results chunk or a later
            // annotation. Nothing the client needs.
            _ if !has_usage => return Ok(progress),
            // The usage chunk: only for clients that asked for it.
            _ if !self.include_usage => return Ok(progress),
            _ => {}
        }
        let has_choices = chunk.choices.as_ref().is_some_and(|c| !c.is_empty());
        // Mistral cannot be asked for `stream_options` and puts usage on its last content chunk;
        // any upstream that does the same gets the OpenAI contract back: `usage: null` on the
        // chunk (or no usage key when the client did not ask) and a separate usage chunk.
        let split = has_choices && (has_usage || self.preset == Preset::Mistral);
        if fold || fix_finish || split {
            if let Some(mut fixed) = fix_chunk(data, fold, fix_finish) {
                if split {
                    if let Some(usage_chunk) = split_usage(&mut fixed, self.include_usage) {
                        self.pending_usage = Some(usage_chunk);
                    }
                }
                if let Ok(bytes) = serde_json::to_vec(&fixed) {
                    oai::write_data_event(out, &bytes);
                    self.flush_usage(out, progress.finished);
                    return Ok(progress);
                }
            }
        }
        oai::write_data_event(out, data);
        self.flush_usage(out, progress.finished);
        Ok(progress)
    }

    /// The usage chunk split off a content chunk goes out right after the finish chunk.
    fn flush_usage(&mut self, out: &mut BytesMut, finished_now: bool) {
        if finished_now || self.finished {
            if let Some(u) = self.pending_usage.take() {
                oai::write_data_event(out, &u);
            }
        }
    }

    /// The upstream closed the stream. A missing `[DONE]` after the finish is tolerated; a close
    /// before the finish is a truncation.
    pub fn on_eof(&mut self, out: &mut BytesMut) -> Result<(), UpstreamError> {
        if !self.finished {
            return Err(UpstreamError::new(
                ErrorClass::ServerError,
                "upstream closed the stream before its finish_reason",
            ));
        }
        if !self.done {
            out.put_slice(oai::DONE);
            self.done = true;
        }
        Ok(())
    }

    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// Takes the usage off a chunk that also carries choices: `usage: null` stays when the client
/// asked for usage (and the usage chunk `choices: []` is returned), no usage key otherwise.
fn split_usage(chunk: &mut Value, include_usage: bool) -> Option<Vec<u8>> {
    let obj = chunk.as_object_mut()?;
    let usage = obj.remove("usage").filter(|u| !u.is_null());
    if !include_usage {
        return None;
    }
    obj.insert("usage".to_owned(), Value::Null);
    let usage = usage?;
    let mut usage_chunk = serde_json::Map::new();
    for key in ["id", "object", "created", "model"] {
        if let Some(v) = obj.get(key) {
            usage_chunk.insert(key.to_owned(), v.clone());
        }
    }
    usage_chunk.insert("choices".to_owned(), Value::Array(Vec::new()));
    usage_chunk.insert("usage".to_owned(), usage);
    serde_json::to_vec(&Value::Object(usage_chunk)).ok()
}

/// An xAI chunk with its usage folded and/or its blank finish reasons set to `tool_calls`.
fn fix_chunk(data: &[u8], fold: bool, fix_finish: bool) -> Option<Value> {
    let mut chunk: Value = serde_json::from_slice(data).ok()?;
    if fold {
        if let Some(u) = chunk.get_mut("usage") {
            fold_reasoning(u);
        }
    }
    if fix_finish {
        let choices = chunk.get_mut("choices").and_then(Value::as_array_mut);
        for c in choices
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            if c.get("finish_reason").and_then(Value::as_str) == Some("") {
                c.insert("finish_reason".to_owned(), Value::from("tool_calls"));
            }
        }
    }
    Some(chunk)
}

/// An error object sent inside a 200 stream (`data: {"error": {...}}`, e.g. OpenRouter).
fn in_band_error(raw: &[u8]) -> UpstreamError {
    let mut wrapped = Vec::with_capacity(raw.len() + 10);
    wrapped.extend_from_slice(b"{\"error\":");
    wrapped.extend_from_slice(raw);
    wrapped.push(b'}');
    let err = read_error(&wrapped);
    // OpenRouter puts the HTTP status the request would have had in a numeric `code`.
    let status = err
        .numeric_code
        .and_then(|n| u16::try_from(n).ok())
        .filter(|s| (400..600).contains(s));
    let overloaded = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains("overloaded"));
    let class = if overloaded(&err.code)
        || overloaded(&err.kind)
        || err.message.to_ascii_lowercase().contains("overloaded")
    {
        ErrorClass::Overloaded
    } else if err.code.as_deref() == Some("rate_limit_exceeded") || status == Some(429) {
        ErrorClass::RateLimited
    } else if let Some(s) = status {
        classify_error(s, None, &wrapped).class
    } else {
        ErrorClass::ServerError
    };
    let message = if err.message.is_empty() {
        "upstream sent an error event".to_owned()
    } else {
        truncate_message(&err.message)
    };
    UpstreamError::new(class, message).with_code(err.code.filter(|c| is_identifier(c)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::StreamTranslator;
    use serde_json::{json, Value};

    fn body(s: &str) -> ChatBody {
        ChatBody::parse(Bytes::copy_from_slice(s.as_bytes())).expect("valid request")
    }

    fn json_of(b: &[u8]) -> Value {
        serde_json::from_slice(b).expect("valid JSON")
    }

    const C1: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"Say hello."}],"temperature":0.2,"max_tokens":64,"stop":["END"],"user":"u-123"}"#;

    #[test]
    fn c1_is_forwarded_unchanged_but_for_the_model() {
        let out = build_request(&body(C1), "gpt-4o-mini-2024-07-18");
        let mut want = json_of(C1.as_bytes());
        want["model"] = json!("gpt-4o-mini-2024-07-18");
        assert_eq!(json_of(&out), want);
        // Byte for byte apart from the model: nothing was re-serialized.
        assert_eq!(
            std::str::from_utf8(&out).expect("utf8"),
            C1.replace("\"gpt-4o-mini\"", "\"gpt-4o-mini-2024-07-18\"")
        );
    }

    #[test]
    fn gateway_only_fields_never_reach_the_upstream() {
        let out = build_request(
            &body(
                r#"{"model":"m","api_base":"http://evil","messages":[{"role":"user","content":"x"}],"api_key":"sk-client","seed":1}"#,
            ),
            "up",
        );
        assert_eq!(
            json_of(&out),
            json!({"model":"up","messages":[{"role":"user","content":"x"}],"seed":1})
        );
    }

    #[test]
    fn streams_always_ask_for_usage_and_keep_other_stream_options() {
        let out = build_request(
            &body(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}"#),
            "up",
        );
        assert_eq!(
            json_of(&out)["stream_options"],
            json!({"include_usage":true})
        );
        let out = build_request(
            &body(
                r#"{"model":"m","stream_options":{"include_obfuscation":false},"messages":[{"role":"user","content":"x"}],"stream":true}"#,
            ),
            "up",
        );
        assert_eq!(
            json_of(&out)["stream_options"],
            json!({"include_usage":true,"include_obfuscation":false})
        );
    }

    #[test]
    fn escaped_keys_are_re_escaped() {
        let out = build_request(
            &body(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"a\"b":1}"#),
            "up",
        );
        assert_eq!(json_of(&out)["a\"b"], json!(1));
    }

    #[test]
    fn the_9_1_response_is_relayed_and_its_usage_read() {
        let resp = br#"{"id":"chatcmpl-GwVec0001","object":"chat.completion","created":1735689600,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1045,"completion_tokens":3,"total_tokens":1048,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_gwvec01"}"#;
        let (out, usage) = parse(Preset::OpenAi, resp).expect("valid");
        assert_eq!(&out[..], &resp[..], "relayed unchanged");
        let e = parse(
            Preset::OpenRouter,
            br#"{"error":{"code":429,"message":"Rate limit exceeded: free-models-per-min"}}"#,
        )
        .expect_err("an error body is no answer");
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert!(e.message.starts_with("Rate limit exceeded"));
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 1045,
                completion_tokens: 3,
                cached_tokens: 1024,
                ..Usage::default()
            }
        );
        assert!(parse(Preset::OpenAi, b"\n\n{\"choices\":[{}]}").is_ok());
        assert_eq!(
            parse(Preset::OpenAi, b"<html>").map_err(|e| e.class),
            Err(ErrorClass::ServerError)
        );
        assert_eq!(
            parse(Preset::OpenAi, b"{\"choices\":[]}").map_err(|e| e.class),
            Err(ErrorClass::ServerError)
        );
    }

    #[test]
    fn errors_are_classified_per_the_design_table() {
        let rate = br#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        let e = classify_error(429, Some(Duration::from_secs(2)), rate);
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(e.code.as_deref(), Some("rate_limit_exceeded"));
        let quota = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        assert_eq!(
            classify_error(429, None, quota).class,
            ErrorClass::QuotaExhausted
        );
        let ctx = br#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130512 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let e = classify_error(400, None, ctx);
        assert_eq!(e.class, ErrorClass::ContextWindow);
        assert!(e.message.starts_with("This model's maximum context length"));
        let ctx_by_text = br#"{"object":"error","error":{"message":"This model's maximum context length is 4096 tokens"}}"#;
        assert_eq!(
            classify_error(400, None, ctx_by_text).class,
            ErrorClass::ContextWindow
        );
        let policy = br#"{"error":{"message":"filtered","type":null,"param":"prompt","code":"content_filter","status":400}}"#;
        assert_eq!(
            classify_error(400, None, policy).class,
            ErrorClass::ContentPolicy
        );
        let bad = br#"{"error":{"message":"Invalid value for 'temperature'","type":"invalid_request_error","param":"temperature","code":null}}"#;
        let e = classify_error(400, None, bad);
        assert_eq!(e.class, ErrorClass::BadRequest);
        assert_eq!(e.message, "Invalid value for 'temperature'");
        let auth = br#"{"error":{"message":"Incorrect API key provided: sk-abc***xyz","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let e = classify_error(401, None, auth);
        assert_eq!(e.class, ErrorClass::UpstreamAuth);
        assert!(!e.message.contains("sk-"), "{}", e.message);
        assert_eq!(
            classify_error(500, None, b"oops").class,
            ErrorClass::ServerError
        );
        assert_eq!(classify_error(503, None, b"").class, ErrorClass::Overloaded);
        assert_eq!(
            classify_error(502, None, b"").message,
            "upstream returned HTTP 502"
        );
        assert_eq!(
            classify_error(402, None, b"{\"error\":\"no credits\"}").class,
            ErrorClass::QuotaExhausted
        );
        assert_eq!(
            classify_error(422, None, b"{}").class,
            ErrorClass::BadRequest
        );
    }

    fn relay_all(
        relay: &mut StreamTranslator,
        input: &str,
    ) -> (String, Vec<Progress>, Result<(), UpstreamError>) {
        crate::providers::test_support::feed(relay, input)
    }

    fn parse(preset: Preset, body: &'static [u8]) -> Result<(Bytes, Usage), UpstreamError> {
        parse_response(preset, Bytes::from_static(body))
    }

    fn new_relay(include_usage: bool) -> StreamTranslator {
        preset_relay(include_usage, Preset::OpenAi)
    }

    fn preset_relay(include_usage: bool, preset: Preset) -> StreamTranslator {
        StreamTranslator::OpenAi(Relay::new(include_usage, preset))
    }

    const VECTOR_9_1_STREAM: &str = "data: {\"id\":\"chatcmpl-GwVec0002\",\"object\":\"chat.completion.chunk\",\"created\":1735689601,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_GwVecTool0001\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\ndata: {\"id\":\"chatcmpl-GwVec0002\",\"object\":\"chat.completion.chunk\",\"created\":1735689601,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\ndata: {\"id\":\"chatcmpl-GwVec0002\",\"object\":\"chat.completion.chunk\",\"created\":1735689601,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\ndata: {\"id\":\"chatcmpl-GwVec0002\",\"object\":\"chat.completion.chunk\",\"created\":1735689601,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\ndata: {\"id\":\"chatcmpl-GwVec0002\",\"object\":\"chat.completion.chunk\",\"created\":1735689601,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":62,\"completion_tokens\":15,\"total_tokens\":77,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\ndata: [DONE]\n\n";

    #[test]
    fn the_9_1_stream_is_relayed_byte_for_byte_when_usage_was_asked() {
        let mut relay = new_relay(true);
        let (out, progress, end) = relay_all(&mut relay, VECTOR_9_1_STREAM);
        assert!(end.is_ok());
        assert_eq!(out, VECTOR_9_1_STREAM);
        assert!(
            progress[0].meaningful,
            "a tool-call header is the first meaningful event"
        );
        assert!(progress[3].finished);
        assert_eq!(relay.usage().prompt_tokens, 62);
        assert_eq!(relay.usage().completion_tokens, 15);
    }

    #[test]
    fn the_usage_chunk_is_dropped_when_the_client_did_not_ask() {
        let mut relay = new_relay(false);
        let (out, _, end) = relay_all(&mut relay, VECTOR_9_1_STREAM);
        assert!(end.is_ok());
        assert!(!out.contains("\"choices\":[]"));
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(
            relay.usage().total(),
            77,
            "usage is still captured for billing"
        );
    }

    const MISTRAL_STREAM: &str = "data: {\"id\":\"m1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"mistral-large\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"m1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"mistral-large\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\ndata: [DONE]\n\n";

    #[test]
    fn usage_on_a_content_chunk_becomes_the_separate_usage_chunk() {
        let mut relay = preset_relay(true, Preset::Mistral);
        let (out, _, end) = relay_all(&mut relay, MISTRAL_STREAM);
        assert!(end.is_ok());
        let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 4, "{out}");
        for e in &events[..2] {
            let v: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(
                v["usage"],
                Value::Null,
                "usage: null on every choice chunk: {e}"
            );
            assert!(v.get("usage").is_some());
        }
        let u: Value = serde_json::from_str(events[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(u["choices"], serde_json::json!([]));
        assert_eq!(u["usage"]["total_tokens"], 6);
        assert_eq!(u["id"], "m1");
        assert_eq!(events[3], "data: [DONE]");
        assert_eq!(relay.usage().total(), 6);

        let mut relay = preset_relay(false, Preset::Mistral);
        let (out, _, end) = relay_all(&mut relay, MISTRAL_STREAM);
        assert!(end.is_ok());
        assert!(!out.contains("usage"), "no usage when not asked: {out}");
        assert_eq!(relay.usage().total(), 6, "still billed");
    }

    #[test]
    fn a_role_chunk_is_not_meaningful_but_content_is() {
        let mut relay = new_relay(false);
        let (_, progress, _) = relay_all(
            &mut relay,
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        );
        assert!(!progress[0].meaningful);
        assert!(progress[1].meaningful);
    }

    #[test]
    fn a_close_before_the_finish_is_a_truncation_and_a_missing_done_is_tolerated() {
        let mut relay = new_relay(false);
        let (_, _, end) = relay_all(
            &mut relay,
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        );
        assert_eq!(end.map_err(|e| e.class), Err(ErrorClass::ServerError));
        let mut relay = new_relay(false);
        let (out, _, end) = relay_all(
            &mut relay,
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n",
        );
        assert!(end.is_ok());
        assert!(out.ends_with("data: [DONE]\n\n"));
        let mut relay = new_relay(false);
        let (_, _, end) = relay_all(
            &mut relay,
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n",
        );
        assert!(end.is_err(), "[DONE] without a finish is a truncation too");
    }

    #[test]
    fn invalid_json_events_are_skipped_and_counted() {
        let mut relay = new_relay(false);
        let (out, _, end) = relay_all(
            &mut relay,
            "data: {not json\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        );
        assert!(end.is_ok());
        assert_eq!(relay.invalid_events(), 1);
        assert!(!out.contains("not json"));
    }

    #[test]
    fn in_band_errors_are_classified() {
        let mut relay = new_relay(false);
        let (_, _, end) = relay_all(
            &mut relay,
            "data: {\"error\":{\"message\":\"The server is overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":\"overloaded\"}}\n\n",
        );
        assert_eq!(end.map_err(|e| e.class), Err(ErrorClass::Overloaded));
        let mut relay = new_relay(false);
        let (_, _, end) = relay_all(
            &mut relay,
            "data: {\"error\":{\"code\":502,\"message\":\"Provider returned error\",\"metadata\":{}}}\n\n",
        );
        assert_eq!(end.map_err(|e| e.class), Err(ErrorClass::ServerError));
    }

    // --- presets: non-streaming responses ---

    #[test]
    fn leading_whitespace_is_trimmed_without_a_copy() {
        let body = Bytes::from_static(b"\n\n\r\n  {\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}");
        let (out, _) = parse_response(Preset::DeepSeek, body.clone()).expect("valid");
        assert!(out.starts_with(b"{\"object\""));
        assert_eq!(out.as_ptr(), body[6..].as_ptr(), "a slice of the input");
    }

    #[test]
    fn a_content_filter_finish_is_a_successful_answer() {
        // Azure: output filtered (providers.md §2.3), with its annotations left in place.
        let resp = br#"{"id":"chatcmpl-az1","object":"chat.completion","created":1735689600,"model":"gpt-4o-2024-08-06","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}],"choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"content_filter","content_filter_results":{"violence":{"filtered":true,"severity":"high"}}}],"usage":{"prompt_tokens":20,"completion_tokens":0,"total_tokens":20}}"#;
        let (out, usage) = parse(Preset::Azure, resp).expect("a 200 answer");
        assert_eq!(&out[..], &resp[..]);
        assert_eq!(usage.prompt_tokens, 20);
    }

    #[test]
    fn deepseek_cache_hits_are_cached_tokens() {
        let resp = br#"{"id":"d1","object":"chat.completion","created":1,"model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"Hello.","reasoning_content":null},"finish_reason":"stop"}],"usage":{"prompt_tokens":1045,"completion_tokens":3,"total_tokens":1048,"prompt_cache_hit_tokens":1024,"prompt_cache_miss_tokens":21}}"#;
        let (out, usage) = parse(Preset::DeepSeek, resp).expect("valid");
        assert_eq!(
            &out[..],
            &resp[..],
            "usage is read, the body is not rewritten"
        );
        assert_eq!(usage.cached_tokens, 1024);
        assert_eq!(usage.prompt_tokens, 1045);
        // prompt_tokens_details wins when both are present.
        let resp = br#"{"choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":4},"prompt_cache_hit_tokens":8}}"#;
        assert_eq!(
            parse(Preset::DeepSeek, resp)
                .expect("valid")
                .1
                .cached_tokens,
            4
        );
    }

    #[test]
    fn xai_blank_finish_after_tool_calls_and_reasoning_outside_completion_are_fixed() {
        let resp = br#"{"id":"x1","object":"chat.completion","created":1,"model":"grok-4-0709","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"finish_reason":""}],"usage":{"prompt_tokens":32,"completion_tokens":9,"total_tokens":135,"prompt_tokens_details":{"cached_tokens":6},"completion_tokens_details":{"reasoning_tokens":94}}}"#;
        let (out, usage) = parse(Preset::Xai, resp).expect("valid");
        let v = json_of(&out);
        assert_eq!(v["choices"][0]["finish_reason"], json!("tool_calls"));
        assert_eq!(v["usage"]["completion_tokens"], json!(103));
        assert_eq!(v["usage"]["total_tokens"], json!(135));
        assert_eq!(
            v["usage"]["completion_tokens_details"]["reasoning_tokens"],
            json!(94)
        );
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            json!("{\"city\":\"Paris\"}")
        );
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 32,
                completion_tokens: 103,
                cached_tokens: 6,
                cache_write_tokens: 0,
                reasoning_tokens: 94,
            }
        );
        // The same body from another preset is left alone.
        let (out, usage) = parse(Preset::OpenAi, resp).expect("valid");
        assert_eq!(&out[..], &resp[..]);
        assert_eq!(usage.completion_tokens, 9);
    }

    #[test]
    fn xai_bodies_that_follow_the_contract_are_not_rewritten() {
        // Reasoning already inside completion_tokens (total = prompt + completion): no fold.
        let resp = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":50,"total_tokens":60,"completion_tokens_details":{"reasoning_tokens":40}}}"#;
        let (out, usage) = parse(Preset::Xai, resp).expect("valid");
        assert_eq!(&out[..], &resp[..]);
        assert_eq!(usage.completion_tokens, 50);
        // A blank finish without tool calls is not guessed at.
        let resp = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":""}]}"#;
        let (out, _) = parse(Preset::Xai, resp).expect("valid");
        assert_eq!(&out[..], &resp[..]);
    }

    // --- presets: errors ---

    #[test]
    fn azure_errors() {
        let filtered = br#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":true,"severity":"high"}}}}}"#;
        let e = classify_error(400, None, filtered);
        assert_eq!(e.class, ErrorClass::ContentPolicy);
        assert_eq!(e.code.as_deref(), Some("content_filter"));
        let inner_only = br#"{"error":{"message":"filtered","code":"invalid_request_error","innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#;
        assert_eq!(
            classify_error(400, None, inner_only).class,
            ErrorClass::ContentPolicy
        );
        let rate = br#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds."}}"#;
        let e = classify_error(429, None, rate);
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.code.as_deref(), Some("429"));
        assert_eq!(
            e.retry_after,
            Some(Duration::from_secs(6)),
            "from the message"
        );
        // The header (retry-after-ms, read by parse_retry_after) wins over the message.
        let e = classify_error(429, Some(Duration::from_millis(5500)), rate);
        assert_eq!(e.retry_after, Some(Duration::from_millis(5500)));
        let ctx = br#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        assert_eq!(
            classify_error(400, None, ctx).class,
            ErrorClass::ContextWindow
        );
    }

    #[test]
    fn retry_hints_in_messages() {
        assert_eq!(
            retry_hint("please try again in 1.5s."),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_hint("please try again in 20ms."),
            Some(Duration::from_millis(20))
        );
        assert_eq!(
            retry_hint("please retry after 6 seconds."),
            Some(Duration::from_secs(6))
        );
        assert_eq!(retry_hint("please try again in 5 minutes"), None);
        assert_eq!(retry_hint("please retry after ."), None);
        assert_eq!(retry_hint("rate limited"), None);
    }

    #[test]
    fn compat_provider_errors() {
        // DeepSeek and OpenRouter: 402 is out of money.
        let deepseek = br#"{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}"#;
        assert_eq!(
            classify_error(402, None, deepseek).class,
            ErrorClass::QuotaExhausted
        );
        let openrouter = br#"{"error":{"code":402,"message":"Insufficient credits. Add more using https://openrouter.ai/settings/credits"}}"#;
        let e = classify_error(402, None, openrouter);
        assert_eq!(e.class, ErrorClass::QuotaExhausted);
        assert!(e.message.starts_with("Insufficient credits"));
        // DeepSeek 503: overloaded.
        let busy = br#"{"error":{"message":"Server overloaded, please try again later","type":"server_error"}}"#;
        assert_eq!(
            classify_error(503, None, busy).class,
            ErrorClass::Overloaded
        );
        // Mistral: the error object is the top level; 422 `extra_forbidden` has an object message.
        let extra = br#"{"object":"error","message":{"detail":[{"type":"extra_forbidden","loc":["body","user"],"msg":"Extra inputs are not permitted","input":"u-1"}]},"type":"invalid_request_message_error","param":null,"code":null}"#;
        let e = classify_error(422, None, extra);
        assert_eq!(e.class, ErrorClass::BadRequest);
        assert!(e.message.contains("extra_forbidden"), "{}", e.message);
        let mistral_ctx = br#"{"object":"error","message":"Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 maximum context length","type":"invalid_request_error","param":null,"code":"3051"}"#;
        assert_eq!(
            classify_error(400, None, mistral_ctx).class,
            ErrorClass::ContextWindow
        );
        let capacity = br#"{"object":"error","message":"Service tier capacity exceeded for this model.","type":"service_tier_capacity_exceeded","param":null,"code":"3505"}"#;
        let e = classify_error(429, None, capacity);
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.message, "Service tier capacity exceeded for this model.");
        assert_eq!(
            classify_error(503, None, capacity).class,
            ErrorClass::RateLimited,
            "the text decides whatever the status"
        );
        // vLLM's body has the same top-level shape.
        let vllm = br#"{"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.","type":"BadRequestError","param":null,"code":400}"#;
        assert_eq!(
            classify_error(400, None, vllm).class,
            ErrorClass::ContextWindow
        );
        // Groq's 400 for a field it refuses.
        let groq = br#"{"error":{"message":"'messages.0' : for 'role:user' the following must be satisfied[('messages.0.name' : property 'name' is unsupported)]","type":"invalid_request_error"}}"#;
        assert_eq!(
            classify_error(400, None, groq).class,
            ErrorClass::BadRequest
        );
    }

    // --- presets: streams ---

    const AZURE_STREAM: &str = "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"},\"self_harm\":{\"filtered\":false,\"severity\":\"safe\"},\"sexual\":{\"filtered\":false,\"severity\":\"safe\"},\"violence\":{\"filtered\":false,\"severity\":\"safe\"}}}]}\n\n\
data: {\"choices\":[{\"content_filter_results\":{},\"delta\":{\"content\":\"\",\"role\":\"assistant\"},\"finish_reason\":null,\"index\":0}],\"created\":1735689601,\"id\":\"chatcmpl-az2\",\"model\":\"gpt-4o-2024-08-06\",\"object\":\"chat.completion.chunk\",\"usage\":null}\n\n\
data: {\"choices\":[{\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"}},\"delta\":{\"content\":\"Hello.\"},\"finish_reason\":null,\"index\":0}],\"created\":1735689601,\"id\":\"chatcmpl-az2\",\"model\":\"gpt-4o-2024-08-06\",\"object\":\"chat.completion.chunk\",\"usage\":null}\n\n\
data: {\"choices\":[{\"content_filter_results\":{},\"delta\":{},\"finish_reason\":\"stop\",\"index\":0}],\"created\":1735689601,\"id\":\"chatcmpl-az2\",\"model\":\"gpt-4o-2024-08-06\",\"object\":\"chat.completion.chunk\",\"usage\":null}\n\n\
data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"usage\":null,\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}]}\n\n\
data: {\"choices\":[],\"created\":1735689601,\"id\":\"chatcmpl-az2\",\"model\":\"gpt-4o-2024-08-06\",\"object\":\"chat.completion.chunk\",\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":3,\"total_tokens\":23}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn azure_filter_chunks_are_dropped_and_the_usage_chunk_kept() {
        let mut relay = preset_relay(true, Preset::Azure);
        let (out, progress, end) = relay_all(&mut relay, AZURE_STREAM);
        assert!(end.is_ok());
        assert!(!out.contains("prompt_filter_results"), "{out}");
        assert!(!progress[0].meaningful && !progress[0].finished);
        assert!(progress[2].meaningful);
        assert!(progress[3].finished);
        let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(
            events.len(),
            5,
            "role, content, finish, usage, [DONE]: {out}"
        );
        assert!(
            events[3].contains("\"choices\":[],") && events[3].contains("\"prompt_tokens\":20")
        );
        assert_eq!(relay.usage().total(), 23);
        let mut relay = preset_relay(false, Preset::Azure);
        let (out, _, end) = relay_all(&mut relay, AZURE_STREAM);
        assert!(end.is_ok());
        assert!(!out.contains("\"choices\":[]"), "{out}");
        assert_eq!(relay.usage().total(), 23);
    }

    #[test]
    fn openrouter_comments_and_mid_stream_errors() {
        let head = "data: {\"id\":\"gen-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n";
        for (error, class) in [
            (
                "{\"code\":429,\"message\":\"Rate limit exceeded\",\"metadata\":{}}",
                ErrorClass::RateLimited,
            ),
            (
                "{\"code\":402,\"message\":\"Insufficient credits\"}",
                ErrorClass::QuotaExhausted,
            ),
            (
                "{\"code\":503,\"message\":\"No instances available\"}",
                ErrorClass::Overloaded,
            ),
            (
                "{\"code\":502,\"message\":\"Provider returned error\"}",
                ErrorClass::ServerError,
            ),
            (
                "{\"code\":\"server_error\",\"message\":\"Provider disconnected unexpectedly\"}",
                ErrorClass::ServerError,
            ),
        ] {
            let mut relay = preset_relay(false, Preset::OpenRouter);
            let input = format!(
                ": OPENROUTER PROCESSING\n\n{head}: OPENROUTER PROCESSING\n\ndata: {{\"id\":\"gen-1\",\"object\":\"chat.completion.chunk\",\"error\":{error},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"\"}},\"finish_reason\":\"error\"}}]}}\n\n"
            );
            let (out, progress, end) = relay_all(&mut relay, &input);
            assert_eq!(progress.len(), 1, "comments are not events");
            assert!(out.contains("\"role\":\"assistant\""));
            let e = end.expect_err("an error chunk fails the stream");
            assert_eq!(e.class, class, "{error}");
            assert!(!e.message.is_empty());
        }
        // finish_reason "error" alone fails too; `"error": null` on a normal chunk does not.
        let mut relay = preset_relay(false, Preset::OpenRouter);
        let (_, _, end) = relay_all(
            &mut relay,
            "data: {\"error\":null,\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"error\"}]}\n\n",
        );
        assert_eq!(end.map_err(|e| e.class), Err(ErrorClass::ServerError));
        let mut relay = preset_relay(false, Preset::OpenRouter);
        let (_, _, end) = relay_all(
            &mut relay,
            "data: {\"error\":null,\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        );
        assert!(end.is_ok());
    }

    #[test]
    fn deepseek_keep_alives_and_blank_lines_are_ignored() {
        let input = ": keep-alive\n\n\n\n: keep-alive\n\ndata: {\"id\":\"d2\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\n: keep-alive\n\ndata: {\"id\":\"d2\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n: keep-alive\n\ndata: {\"id\":\"d2\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":1,\"total_tokens\":13,\"prompt_cache_hit_tokens\":8,\"prompt_cache_miss_tokens\":4}}\n\ndata: [DONE]\n\n";
        let mut relay = preset_relay(true, Preset::DeepSeek);
        let (out, progress, end) = relay_all(&mut relay, input);
        assert!(end.is_ok());
        assert_eq!(progress.len(), 4, "three chunks and [DONE]");
        assert_eq!(relay.invalid_events(), 0);
        assert!(!out.contains("keep-alive"));
        assert_eq!(out.matches("data: ").count(), 4);
        assert_eq!(relay.usage().cached_tokens, 8);
        assert_eq!(relay.usage().total(), 13);
    }

    #[test]
    fn xai_tool_streams_get_a_real_finish_and_folded_usage() {
        let input = "data: {\"id\":\"x2\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}}]},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"x2\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"\"}]}\n\n\
data: {\"id\":\"x2\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":32,\"completion_tokens\":9,\"total_tokens\":135,\"completion_tokens_details\":{\"reasoning_tokens\":94}}}\n\n\
data: [DONE]\n\n";
        let mut relay = preset_relay(true, Preset::Xai);
        let (out, progress, end) = relay_all(&mut relay, input);
        assert!(end.is_ok(), "{end:?}");
        assert!(progress[0].meaningful);
        assert!(progress[1].finished);
        let events: Vec<Value> = out
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|e| *e != "[DONE]")
            .map(|e| json_of(e.as_bytes()))
            .collect();
        assert_eq!(
            events[1]["choices"][0]["finish_reason"],
            json!("tool_calls")
        );
        assert_eq!(events[2]["usage"]["completion_tokens"], json!(103));
        assert_eq!(events[2]["usage"]["total_tokens"], json!(135));
        assert_eq!(relay.usage().completion_tokens, 103);
        assert_eq!(relay.usage().reasoning_tokens, 94);
        // The same stream from another preset: "" is no finish, so [DONE] is a truncation.
        let mut relay = preset_relay(true, Preset::OpenAi);
        let (_, _, end) = relay_all(&mut relay, input);
        assert!(end.is_err());
    }

    #[test]
    fn xai_text_streams_pass_through() {
        let input = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let mut relay = preset_relay(false, Preset::Xai);
        let (out, _, end) = relay_all(&mut relay, input);
        assert!(end.is_ok());
        assert_eq!(out, input);
    }
}
