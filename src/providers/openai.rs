//! The `openai` kind: OpenAI itself and every OpenAI-compatible server (providers.md §1, §8).
//! The client's body is forwarded with the model rewritten, gateway-only fields dropped and, for
//! streams, `stream_options.include_usage` forced on so spend is always known. Responses are
//! relayed as raw bytes; only usage, finish and errors are read. No I/O here.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

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
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
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

impl From<OaiUsage> for Usage {
    fn from(u: OaiUsage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write_tokens: 0,
            reasoning_tokens: u
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

/// Checks a 2xx non-streaming body and reads its usage; the body itself is relayed unchanged.
pub fn parse_response(body: &[u8]) -> Result<Usage, UpstreamError> {
    #[derive(Deserialize)]
    struct Resp {
        choices: Count,
        #[serde(default)]
        usage: Option<OaiUsage>,
    }
    // Some servers (DeepSeek under load) send blank lines before the JSON.
    let body = body.trim_ascii_start();
    // The body is relayed as is, so it must be UTF-8 throughout; checking it in one pass is
    // cheaper than letting the parser check every string it skips.
    let parsed = std::str::from_utf8(body)
        .ok()
        .and_then(|text| serde_json::from_str::<Resp>(text).ok());
    match parsed {
        Some(r) if r.choices.0 > 0 => Ok(r.usage.map(Usage::from).unwrap_or_default()),
        Some(_) => Err(UpstreamError::new(
            ErrorClass::ServerError,
            "upstream returned a completion with no choices",
        )),
        None => Err(UpstreamError::new(
            ErrorClass::ServerError,
            "upstream returned a malformed completion body",
        )),
    }
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
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

/// Reads `{"error": {...}}` or `{"error": "text"}`; absent or malformed gives defaults.
fn read_error(body: &[u8]) -> (String, Option<String>, Option<String>, Option<i64>) {
    let Ok(env) = serde_json::from_slice::<ErrorEnvelope>(body.trim_ascii_start()) else {
        return (String::new(), None, None, None);
    };
    let Some(raw) = env.error else {
        return (String::new(), None, None, None);
    };
    if let Ok(text) = serde_json::from_str::<Cow<str>>(raw.get()) {
        return (text.into_owned(), None, None, None);
    }
    let obj = serde_json::from_str::<ErrorObject>(raw.get()).unwrap_or_default();
    let (code, numeric) = match obj.code {
        Some(serde_json::Value::String(s)) => (Some(s), None),
        Some(serde_json::Value::Number(n)) => (None, n.as_i64()),
        _ => (None, None),
    };
    (
        obj.message.map(Cow::into_owned).unwrap_or_default(),
        obj.kind.map(Cow::into_owned),
        code,
        numeric,
    )
}

/// Classifies a non-2xx response from an OpenAI-shaped upstream.
pub fn classify_error(status: u16, retry_after: Option<Duration>, body: &[u8]) -> UpstreamError {
    let (message, kind, code, _) = read_error(body);
    let is = |needle: &str| code.as_deref() == Some(needle) || kind.as_deref() == Some(needle);
    let class = match status {
        429 if is("insufficient_quota") => ErrorClass::QuotaExhausted,
        429 => ErrorClass::RateLimited,
        402 => ErrorClass::QuotaExhausted,
        400 | 413 | 422 => {
            if is("context_length_exceeded") || is_context_window_message(&message) {
                ErrorClass::ContextWindow
            } else if is("content_policy_violation") || is("content_filter") || is("invalid_prompt")
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
    status_error(class, status, &message, code, retry_after)
}

/// Relays an OpenAI-shaped SSE stream: events pass through byte for byte, except the usage chunk
/// when the client did not ask for it, and events that are not JSON (skipped and counted).
#[derive(Debug)]
pub struct Relay {
    include_usage: bool,
    finished: bool,
    done: bool,
    usage: Usage,
    invalid_events: u32,
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
    pub fn new(include_usage: bool) -> Self {
        Relay {
            include_usage,
            finished: false,
            done: false,
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
        if let Some(u) = chunk.usage {
            self.usage = u.into();
        }
        let mut progress = Progress::NOTHING;
        match &chunk.choices {
            Some(choices) if !choices.is_empty() => {
                for c in choices {
                    if c.delta.as_ref().is_some_and(ChunkDelta::is_meaningful) {
                        progress.meaningful = true;
                    }
                    if c.finish_reason.as_deref().is_some_and(|r| !r.is_empty()) {
                        self.finished = true;
                        progress.finished = true;
                    }
                }
            }
            // The usage chunk: only for clients that asked for it.
            _ if !self.include_usage => return Ok(progress),
            _ => {}
        }
        oai::write_data_event(out, data);
        Ok(progress)
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

/// An error object sent inside a 200 stream (`data: {"error": {...}}`, e.g. OpenRouter).
fn in_band_error(raw: &[u8]) -> UpstreamError {
    let mut wrapped = Vec::with_capacity(raw.len() + 10);
    wrapped.extend_from_slice(b"{\"error\":");
    wrapped.extend_from_slice(raw);
    wrapped.push(b'}');
    let (message, kind, code, numeric) = read_error(&wrapped);
    let status = numeric
        .and_then(|n| u16::try_from(n).ok())
        .filter(|s| (400..600).contains(s));
    let overloaded = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains("overloaded"));
    let class = if overloaded(&code)
        || overloaded(&kind)
        || message.to_ascii_lowercase().contains("overloaded")
    {
        ErrorClass::Overloaded
    } else if code.as_deref() == Some("rate_limit_exceeded") || status == Some(429) {
        ErrorClass::RateLimited
    } else if let Some(s) = status {
        classify_error(s, None, &wrapped).class
    } else {
        ErrorClass::ServerError
    };
    let message = if message.is_empty() {
        "upstream sent an error event".to_owned()
    } else {
        truncate_message(&message)
    };
    UpstreamError::new(class, message).with_code(code.filter(|c| is_identifier(c)))
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
        let usage = parse_response(resp).expect("valid");
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 1045,
                completion_tokens: 3,
                cached_tokens: 1024,
                ..Usage::default()
            }
        );
        assert!(parse_response(b"\n\n{\"choices\":[{}]}").is_ok());
        assert_eq!(
            parse_response(b"<html>").map_err(|e| e.class),
            Err(ErrorClass::ServerError)
        );
        assert_eq!(
            parse_response(b"{\"choices\":[]}").map_err(|e| e.class),
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

    fn new_relay(include_usage: bool) -> StreamTranslator {
        StreamTranslator::OpenAi(Relay::new(include_usage))
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
}
