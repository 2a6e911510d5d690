//! OpenAI-compatible providers (providers.md §2, §8): which one a deployment is (its `preset`),
//! and the per-provider scrub of the client's request. OpenAI, Azure, vLLM, Ollama and OpenRouter
//! take the client's body as is (the zero-copy [`openai::build_request`]); the others reject
//! fields or shapes OpenAI accepts, so their body is re-serialized through `serde_json::Value`
//! with those fixed. The response side (usage and finish quirks) lives in `openai.rs`.
//! No I/O here.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::openai;
use super::request::{ChatBody, Known};
use super::TranslateError;

/// Which OpenAI-compatible server a deployment of kind `openai` talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preset {
    #[default]
    OpenAi,
    Azure,
    Xai,
    Mistral,
    Groq,
    DeepSeek,
    Together,
    Fireworks,
    OpenRouter,
    Vllm,
    Ollama,
}

impl Preset {
    pub const NAMES: &'static [&'static str] = &[
        "openai",
        "azure",
        "xai",
        "mistral",
        "groq",
        "deepseek",
        "together",
        "fireworks",
        "openrouter",
        "vllm",
        "ollama",
    ];

    pub fn parse(s: &str) -> Option<Preset> {
        Some(match s {
            "openai" => Preset::OpenAi,
            "azure" => Preset::Azure,
            "xai" => Preset::Xai,
            "mistral" => Preset::Mistral,
            "groq" => Preset::Groq,
            "deepseek" => Preset::DeepSeek,
            "together" => Preset::Together,
            "fireworks" => Preset::Fireworks,
            "openrouter" => Preset::OpenRouter,
            "vllm" => Preset::Vllm,
            "ollama" => Preset::Ollama,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Preset::OpenAi => "openai",
            Preset::Azure => "azure",
            Preset::Xai => "xai",
            Preset::Mistral => "mistral",
            Preset::Groq => "groq",
            Preset::DeepSeek => "deepseek",
            Preset::Together => "together",
            Preset::Fireworks => "fireworks",
            Preset::OpenRouter => "openrouter",
            Preset::Vllm => "vllm",
            Preset::Ollama => "ollama",
        }
    }

    /// The provider's public base URL (providers.md §8). `None` for Azure and vLLM, whose base is
    /// per resource / per host: the config must give `api_base`.
    pub fn default_api_base(self) -> Option<&'static str> {
        match self {
            Preset::OpenAi => Some("https://api.openai.com/v1"),
            Preset::Azure | Preset::Vllm => None,
            Preset::Xai => Some("https://api.x.ai/v1"),
            Preset::Mistral => Some("https://api.mistral.ai/v1"),
            Preset::Groq => Some("https://api.groq.com/openai/v1"),
            Preset::DeepSeek => Some("https://api.deepseek.com"),
            Preset::Together => Some("https://api.together.xyz/v1"),
            Preset::Fireworks => Some("https://api.fireworks.ai/inference/v1"),
            Preset::OpenRouter => Some("https://openrouter.ai/api/v1"),
            Preset::Ollama => Some("http://localhost:11434/v1"),
        }
    }
}

type Obj = Map<String, Value>;

/// The upstream body for a deployment with this preset. Presets without request quirks get the
/// client's body with only `model` and `stream_options` rewritten (no re-parse); the others are
/// scrubbed as providers.md §8 says. `Err` when the provider cannot express the request (Groq
/// `n`≠1).
pub fn build_request(
    preset: Preset,
    body: &ChatBody,
    model: &str,
) -> Result<Bytes, TranslateError> {
    let model: Cow<str> = match preset {
        Preset::Fireworks if !model.contains('/') => {
            Cow::Owned(format!("accounts/fireworks/models/{model}"))
        }
        _ => Cow::Borrowed(model),
    };
    let base = openai::build_request(body, &model);
    let scrub: fn(&mut Obj, &str) -> Result<(), TranslateError> = match preset {
        // DeepSeek takes only `type: "function"` tools, which request validation already
        // guarantees for every provider.
        Preset::OpenAi
        | Preset::Azure
        | Preset::Vllm
        | Preset::Ollama
        | Preset::OpenRouter
        | Preset::DeepSeek => return Ok(base),
        Preset::Together if body.field(Known::ResponseFormat).is_none() => return Ok(base),
        Preset::Fireworks if !contains(&body.bytes, b"cache_control") => return Ok(base),
        Preset::Xai => scrub_xai,
        Preset::Mistral => scrub_mistral,
        Preset::Groq => scrub_groq,
        Preset::Together => scrub_together,
        Preset::Fireworks => scrub_fireworks,
    };
    let mut obj: Obj = serde_json::from_slice(&base)
        .map_err(|e| TranslateError::new("", format!("request body could not be re-read: {e}")))?;
    scrub(&mut obj, &model)?;
    serde_json::to_vec(&obj)
        .map(Bytes::from)
        .map_err(|e| TranslateError::new("", format!("request body could not be written: {e}")))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

fn messages_mut(obj: &mut Obj) -> impl Iterator<Item = &mut Obj> {
    obj.get_mut("messages")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

fn tool_functions_mut(obj: &mut Obj) -> impl Iterator<Item = &mut Obj> {
    obj.get_mut("tools")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get_mut("function"))
        .filter_map(Value::as_object_mut)
}

fn drop_message_names(obj: &mut Obj) {
    for m in messages_mut(obj) {
        m.remove("name");
    }
}

/// xAI: reasoning models reject `stop`, grok-4 rejects penalties, `strict` in tool definitions,
/// message `name` and `web_search_options` are refused.
fn scrub_xai(obj: &mut Obj, model: &str) -> Result<(), TranslateError> {
    let name = model.to_ascii_lowercase();
    let grok4 = name.contains("grok-4");
    if grok4 || name.contains("grok-3-mini") || name.contains("grok-code-fast") {
        obj.remove("stop");
    }
    if grok4 {
        obj.remove("frequency_penalty");
        obj.remove("presence_penalty");
    }
    obj.remove("web_search_options");
    for f in tool_functions_mut(obj) {
        f.remove("strict");
    }
    drop_message_names(obj);
    Ok(())
}

/// Top-level fields Mistral's chat API accepts; anything else is a 422 `extra_forbidden`.
const MISTRAL_FIELDS: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "stream",
    "stop",
    "random_seed",
    "response_format",
    "tools",
    "tool_choice",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "prediction",
    "parallel_tool_calls",
    "prompt_mode",
    "safe_prompt",
];

/// Message fields Mistral accepts (`name` is dropped on purpose).
const MISTRAL_MESSAGE_FIELDS: &[&str] =
    &["role", "content", "tool_calls", "tool_call_id", "prefix"];

/// Mistral: only known, non-null fields; `seed` → `random_seed`; `max_completion_tokens` →
/// `max_tokens`; `tool_choice` `required` or named → `any`; `developer` → `system`; no message
/// `name`, no empty assistant messages; tool-call ids rewritten to 9 alphanumerics.
fn scrub_mistral(obj: &mut Obj, _model: &str) -> Result<(), TranslateError> {
    obj.retain(|_, v| !v.is_null());
    if let Some(seed) = obj.remove("seed") {
        obj.entry("random_seed").or_insert(seed);
    }
    if let Some(max) = obj.remove("max_completion_tokens") {
        obj.entry("max_tokens").or_insert(max);
    }
    obj.retain(|k, _| MISTRAL_FIELDS.contains(&k.as_str()));
    if let Some(choice) = obj.get_mut("tool_choice") {
        let keep = matches!(choice.as_str(), Some("auto" | "none" | "any"));
        if !keep {
            *choice = Value::from("any");
        }
    }
    if let Some(Value::Array(messages)) = obj.get_mut("messages") {
        messages.retain(|m| !is_empty_assistant(m));
        for m in messages.iter_mut().filter_map(Value::as_object_mut) {
            m.retain(|k, v| !v.is_null() && MISTRAL_MESSAGE_FIELDS.contains(&k.as_str()));
            if m.get("role").and_then(Value::as_str) == Some("developer") {
                m.insert("role".to_owned(), Value::from("system"));
            }
            if let Some(Value::String(id)) = m.get_mut("tool_call_id") {
                mistral_id(id);
            }
            let calls = m.get_mut("tool_calls").and_then(Value::as_array_mut);
            for call in calls.into_iter().flatten().filter_map(Value::as_object_mut) {
                call.retain(|_, v| !v.is_null());
                if let Some(Value::String(id)) = call.get_mut("id") {
                    mistral_id(id);
                }
            }
        }
    }
    Ok(())
}

/// An assistant message with neither text nor tool calls (Mistral rejects it).
fn is_empty_assistant(m: &Value) -> bool {
    if m.get("role").and_then(Value::as_str) != Some("assistant") {
        return false;
    }
    let empty = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    empty(m.get("content")) && empty(m.get("tool_calls"))
}

/// Replaces a tool-call id Mistral would refuse by a deterministic one of 9 characters from
/// `[a-zA-Z0-9]`: the same original id always gives the same new id, so an assistant's
/// `tool_calls[].id` and the `tool` message answering it still match. Valid ids are kept.
fn mistral_id(id: &mut String) {
    if id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return;
    }
    const ALPHABET: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    // FNV-1a, then a 64-bit finalizer (splitmix64) to spread short, similar ids.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let mut out = String::with_capacity(9);
    for _ in 0..9 {
        out.push(char::from(ALPHABET[(h % 62) as usize]));
        h /= 62;
    }
    *id = out;
}

/// Groq: 400 on `logprobs`, `top_logprobs`, `logit_bias`, message `name`, `n`≠1 and on
/// `function_call: null` in assistant messages.
fn scrub_groq(obj: &mut Obj, _model: &str) -> Result<(), TranslateError> {
    match obj.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_f64() == Some(1.0) => {}
        Some(_) => return Err(TranslateError::unsupported("n", "n other than 1")),
    }
    for key in ["logprobs", "top_logprobs", "logit_bias"] {
        obj.remove(key);
    }
    for m in messages_mut(obj) {
        m.remove("name");
        if m.get("function_call").is_some_and(Value::is_null) {
            m.remove("function_call");
        }
    }
    Ok(())
}

/// Together: `response_format: {"type":"text"}` is refused by models without JSON mode.
fn scrub_together(obj: &mut Obj, _model: &str) -> Result<(), TranslateError> {
    let text_only = obj.get("response_format").is_some_and(|f| {
        f.as_object()
            .is_some_and(|f| f.len() == 1 && f.get("type").and_then(Value::as_str) == Some("text"))
    });
    if text_only {
        obj.remove("response_format");
    }
    Ok(())
}

/// Fireworks: "Not permitted, field: cache_control" on messages and content parts (the model
/// prefix is added before the body is built).
fn scrub_fireworks(obj: &mut Obj, _model: &str) -> Result<(), TranslateError> {
    for m in messages_mut(obj) {
        m.remove("cache_control");
        if let Some(Value::Array(parts)) = m.get_mut("content") {
            for p in parts.iter_mut().filter_map(Value::as_object_mut) {
                p.remove("cache_control");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> ChatBody {
        ChatBody::parse(Bytes::from(serde_json::to_vec(&v).unwrap())).expect("valid request")
    }

    fn build(preset: Preset, v: Value, model: &str) -> Value {
        let out = build_request(preset, &body(v), model).expect("translates");
        serde_json::from_slice(&out).expect("valid JSON")
    }

    const C1: &str = r#"{"model":"alias","messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"Say hello."}],"temperature":0.2,"max_tokens":64,"stop":["END"],"user":"u-123"}"#;

    #[test]
    fn names_round_trip_and_bases_follow_the_table() {
        for name in Preset::NAMES {
            let p = Preset::parse(name).expect("known");
            assert_eq!(p.as_str(), *name);
        }
        assert_eq!(Preset::parse("OpenAI"), None);
        assert_eq!(Preset::default(), Preset::OpenAi);
        assert_eq!(Preset::Azure.default_api_base(), None);
        assert_eq!(Preset::Vllm.default_api_base(), None);
        assert_eq!(
            Preset::Ollama.default_api_base(),
            Some("http://localhost:11434/v1")
        );
        assert_eq!(
            Preset::Groq.default_api_base(),
            Some("https://api.groq.com/openai/v1")
        );
        assert_eq!(
            Preset::DeepSeek.default_api_base(),
            Some("https://api.deepseek.com")
        );
        assert_eq!(
            Preset::Fireworks.default_api_base(),
            Some("https://api.fireworks.ai/inference/v1")
        );
    }

    #[test]
    fn pass_through_presets_keep_the_bytes() {
        let b = ChatBody::parse(Bytes::from_static(C1.as_bytes())).unwrap();
        let want = C1.replace("\"alias\"", "\"up\"");
        for p in [
            Preset::OpenAi,
            Preset::Azure,
            Preset::Vllm,
            Preset::Ollama,
            Preset::OpenRouter,
        ] {
            let out = build_request(p, &b, "up").unwrap();
            assert_eq!(std::str::from_utf8(&out).unwrap(), want, "{p:?}");
        }
        // Together and Fireworks without anything to scrub: no re-parse either.
        assert_eq!(
            std::str::from_utf8(&build_request(Preset::Together, &b, "up").unwrap()).unwrap(),
            want
        );
        assert_eq!(
            std::str::from_utf8(&build_request(Preset::Fireworks, &b, "a/b").unwrap()).unwrap(),
            C1.replace("\"alias\"", "\"a/b\"")
        );
        assert_eq!(
            std::str::from_utf8(&build_request(Preset::Fireworks, &b, "llama").unwrap()).unwrap(),
            C1.replace("\"alias\"", "\"accounts/fireworks/models/llama\"")
        );
    }

    #[test]
    fn xai_drops_stop_on_reasoning_models_and_penalties_on_grok_4() {
        let req = json!({"model":"m","messages":[{"role":"user","content":"hi","name":"bob"}],
            "stop":["END"],"frequency_penalty":0.5,"presence_penalty":0.1,
            "web_search_options":{},"tools":[{"type":"function","function":{"name":"f","parameters":{},"strict":true}}]});
        let out = build(Preset::Xai, req.clone(), "grok-4-0709");
        assert_eq!(
            out,
            json!({"model":"grok-4-0709","messages":[{"role":"user","content":"hi"}],
                "tools":[{"type":"function","function":{"name":"f","parameters":{}}}]})
        );
        let out = build(Preset::Xai, req.clone(), "grok-3-mini");
        assert!(out.get("stop").is_none());
        assert_eq!(out["frequency_penalty"], json!(0.5));
        assert!(out.get("web_search_options").is_none());
        let out = build(Preset::Xai, req.clone(), "grok-code-fast-1");
        assert!(out.get("stop").is_none());
        let out = build(Preset::Xai, req, "grok-3");
        assert_eq!(out["stop"], json!(["END"]));
        assert_eq!(out["presence_penalty"], json!(0.1));
        assert!(out["messages"][0].get("name").is_none());
    }

    #[test]
    fn mistral_gets_only_known_non_null_fields() {
        let out = build(
            Preset::Mistral,
            json!({"model":"m","messages":[{"role":"developer","content":"be brief","name":"x"},
                {"role":"user","content":"hi","name":"bob"},
                {"role":"assistant","content":"","refusal":null},
                {"role":"assistant","content":null,"refusal":"I can't"},
                {"role":"assistant","content":"ok","function_call":null}],
                "seed":7,"user":"u-1","logprobs":false,"temperature":null,"top_p":0.9,
                "max_completion_tokens":100,"metadata":{"a":"b"},"stream":true,
                "stream_options":{"include_usage":true},"safe_prompt":true}),
            "mistral-large-latest",
        );
        assert_eq!(
            out,
            json!({"model":"mistral-large-latest","messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":"hi"},{"role":"assistant","content":"ok"}],
                "random_seed":7,"top_p":0.9,"max_tokens":100,"stream":true,"safe_prompt":true})
        );
    }

    #[test]
    fn mistral_tool_choice_maps_to_any() {
        let tools = json!([{"type":"function","function":{"name":"f","parameters":{}}}]);
        for (given, want) in [
            (json!("required"), json!("any")),
            (
                json!({"type":"function","function":{"name":"f"}}),
                json!("any"),
            ),
            (json!("auto"), json!("auto")),
            (json!("none"), json!("none")),
        ] {
            let out = build(
                Preset::Mistral,
                json!({"model":"m","messages":[{"role":"user","content":"x"}],"tools":tools,"tool_choice":given}),
                "mistral-small",
            );
            assert_eq!(out["tool_choice"], want);
            assert_eq!(out["tools"], tools);
        }
    }

    #[test]
    fn mistral_tool_call_ids_are_rewritten_consistently() {
        let out = build(
            Preset::Mistral,
            json!({"model":"m","messages":[
                {"role":"user","content":"weather?"},
                {"role":"assistant","content":null,"tool_calls":[
                    {"id":"call_GwVecTool0001","type":"function","function":{"name":"w","arguments":"{}"}},
                    {"id":"toolu_01XYZ","type":"function","function":{"name":"w","arguments":"{}"}},
                    {"id":"abcDEF123","type":"function","function":{"name":"w","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"call_GwVecTool0001","content":"sunny","name":"w"},
                {"role":"tool","tool_call_id":"toolu_01XYZ","content":"rain"},
                {"role":"tool","tool_call_id":"abcDEF123","content":"snow"}]}),
            "mistral-large-latest",
        );
        let msgs = out["messages"].as_array().unwrap();
        let calls = msgs[1]["tool_calls"].as_array().unwrap();
        let ids: Vec<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
        for id in &ids {
            assert_eq!(id.len(), 9, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
        assert_eq!(ids[2], "abcDEF123", "valid ids are kept");
        assert_ne!(ids[0], ids[1]);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(msgs[2 + i]["tool_call_id"].as_str(), Some(*id));
        }
        assert!(msgs[2].get("name").is_none());
        // Deterministic across requests (and processes: no random hasher keys).
        let mut again = "call_GwVecTool0001".to_owned();
        mistral_id(&mut again);
        assert_eq!(again, ids[0]);
    }

    #[test]
    fn groq_refuses_n_and_drops_what_it_rejects() {
        let err = build_request(
            Preset::Groq,
            &body(json!({"model":"m","messages":[{"role":"user","content":"x"}],"n":2})),
            "llama",
        )
        .unwrap_err();
        assert_eq!(err.param, "n");
        let out = build(
            Preset::Groq,
            json!({"model":"m","messages":[{"role":"user","content":"x","name":"bob"},
                {"role":"assistant","content":"y","function_call":null}],
                "n":1,"logprobs":true,"top_logprobs":2,"logit_bias":{"50256":-100},"temperature":0}),
            "llama-3.3-70b-versatile",
        );
        assert_eq!(
            out,
            json!({"model":"llama-3.3-70b-versatile","messages":[{"role":"user","content":"x"},
                {"role":"assistant","content":"y"}],"n":1,"temperature":0})
        );
    }

    #[test]
    fn deepseek_bodies_pass_through() {
        let req = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}]}"#;
        let b = ChatBody::parse(Bytes::from_static(req.as_bytes())).unwrap();
        let out = build_request(Preset::DeepSeek, &b, "deepseek-chat").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            req.replace("\"m\"", "\"deepseek-chat\"")
        );
        // Only function tools reach any provider: validation refuses the rest.
        let other = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"code_interpreter","function":{"name":"g"}}]}"#;
        assert!(ChatBody::parse(Bytes::from_static(other.as_bytes())).is_err());
    }

    #[test]
    fn together_drops_a_text_response_format_only() {
        let out = build(
            Preset::Together,
            json!({"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"text"}}),
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        );
        assert!(out.get("response_format").is_none());
        let out = build(
            Preset::Together,
            json!({"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}),
            "m",
        );
        assert_eq!(out["response_format"], json!({"type":"json_object"}));
    }

    #[test]
    fn fireworks_prefixes_bare_models_and_drops_cache_control() {
        let out = build(
            Preset::Fireworks,
            json!({"model":"m","messages":[
                {"role":"system","content":"sys","cache_control":{"type":"ephemeral"}},
                {"role":"user","content":[{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}]}]}),
            "llama-v3p1-8b-instruct",
        );
        assert_eq!(
            out,
            json!({"model":"accounts/fireworks/models/llama-v3p1-8b-instruct","messages":[
                {"role":"system","content":"sys"},
                {"role":"user","content":[{"type":"text","text":"x"}]}]})
        );
        let out = build(
            Preset::Fireworks,
            json!({"model":"m","messages":[{"role":"user","content":"x"}]}),
            "accounts/me/models/tuned",
        );
        assert_eq!(out["model"], json!("accounts/me/models/tuned"));
    }

    #[test]
    fn scrubbed_streams_still_ask_for_usage_except_mistral() {
        let req = json!({"model":"m","messages":[{"role":"user","content":"x"}],"stream":true});
        let out = build(Preset::Groq, req.clone(), "g");
        assert_eq!(out["stream_options"], json!({"include_usage":true}));
        let out = build(Preset::Mistral, req, "mistral-small");
        assert!(out.get("stream_options").is_none());
        assert_eq!(out["stream"], json!(true));
    }

    #[test]
    fn gateway_only_fields_are_dropped_on_the_scrub_path_too() {
        let out = build(
            Preset::Xai,
            json!({"model":"m","messages":[{"role":"user","content":"x"}],"api_key":"sk-client","api_base":"http://evil"}),
            "grok-3",
        );
        assert_eq!(
            out,
            json!({"model":"grok-3","messages":[{"role":"user","content":"x"}]})
        );
    }
}
