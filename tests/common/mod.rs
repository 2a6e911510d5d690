//! Shared test harness: start mock upstreams and a gateway on ephemeral loopback ports, send
//! requests, decode streams, and check responses against what the OpenAI SDK expects.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::net::TcpListener;
use std::time::Duration;

use awc::http::header::HeaderMap;
use serde_json::{json, Value};
pub use switchyard::{Gateway, Options};
pub use switchyard_loadtests::{Behavior, ErrorPreset, Fault, MockConfig, MockUpstream, Reply};

/// Router settings that keep tests fast: short network timeouts, quiet logs.
pub const FAST_ROUTER: &str = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[router]
first_token_timeout_ms = 2000
per_try_timeout_ms = 5000
stream_idle_timeout_ms = 2000
connect_timeout_ms = 1000
backoff_base_ms = 1000
backoff_max_ms = 4000
[log]
requests = false
"#;

/// `FAST_ROUTER` with extra `[router]` keys (e.g. `"num_retries = 0"`) and extra sections.
pub fn settings(router_extra: &str, sections: &str) -> String {
    format!(
        "{}\n{sections}\n",
        FAST_ROUTER.replace("[router]\n", &format!("[router]\n{router_extra}\n"))
    )
}

/// A `[[deployments]]` entry.
pub fn deployment(id: &str, model: &str, provider: &str, api_base: &str, extra: &str) -> String {
    format!(
        "\n[[deployments]]\nid = \"{id}\"\nmodel = \"{model}\"\nprovider = \"{provider}\"\napi_base = \"{api_base}\"\n{extra}\n"
    )
}

/// The api_base of an OpenAI-kind deployment on a mock route.
pub fn openai_base(mock: &MockUpstream, route: &str) -> String {
    format!("{}/v1", mock.route_url(route))
}

/// The api_base of an Anthropic-kind deployment on a mock route.
pub fn anthropic_base(mock: &MockUpstream, route: &str) -> String {
    mock.route_url(route)
}

pub async fn mock() -> MockUpstream {
    MockUpstream::start(MockConfig::default())
        .await
        .expect("mock upstream starts")
}

pub fn start_gateway(toml: &str) -> Gateway {
    let config = switchyard::config::Config::from_toml(toml).expect("test config is valid");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    Gateway::start(
        config,
        listener,
        Options {
            handle_signals: false,
            ..Options::default()
        },
    )
    .expect("gateway starts")
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Waits until every deployment actor has handled every outcome reported so far (outcomes are
/// fire and forget, and successes wait in the worker's outbox for up to 10 ms). The request
/// helpers below call it after each answer, so a test's next step (a clock advance, the next
/// request) sees the state those outcomes produced.
pub async fn settle(gw: &Gateway) {
    let registry = gw.registry();
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < deadline {
        if (0..registry.len()).all(|d| registry.board(d).outcomes_pending() == 0) {
            return;
        }
        actix_web::rt::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("outcomes not handled by the deployment actors within {PATIENCE:?}");
}

/// How long the polling helpers wait for something that lands asynchronously. Generous: a
/// condition that holds returns at once, and a loaded CI machine can stall for seconds.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// POSTs a JSON body to the gateway's chat endpoint; returns status, headers and JSON body.
pub async fn chat(gw: &Gateway, body: &Value) -> Answer {
    chat_raw(gw, serde_json::to_vec(body).unwrap(), &[]).await
}

pub async fn chat_raw(gw: &Gateway, body: Vec<u8>, headers: &[(&str, &str)]) -> Answer {
    post_raw(gw, "/v1/chat/completions", body, headers).await
}

/// POSTs a JSON body to any gateway path (`/v1/embeddings`, `/v1/messages`, ...).
pub async fn post(gw: &Gateway, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
    post_raw(gw, path, serde_json::to_vec(body).unwrap(), headers).await
}

/// POSTs to `path` and reads the whole body as text (for streams in other formats).
pub async fn post_text(gw: &Gateway, path: &str, body: &Value) -> (u16, HeaderMap, String) {
    let mut resp = client()
        .post(format!("{}{path}", gw.url()))
        .insert_header(("content-type", "application/json"))
        .send_body(serde_json::to_vec(body).unwrap())
        .await
        .expect("gateway answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.body().limit(64 << 20).await.expect("body");
    settle(gw).await;
    (
        status,
        headers,
        String::from_utf8(bytes.to_vec()).expect("utf8"),
    )
}

pub async fn post_raw(gw: &Gateway, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Answer {
    let mut req = client()
        .post(format!("{}{path}", gw.url()))
        .insert_header(("content-type", "application/json"));
    for h in headers {
        req = req.insert_header(*h);
    }
    let mut resp = req.send_body(body).await.expect("gateway answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.body().limit(64 << 20).await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "gateway body is JSON (status {status}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    settle(gw).await;
    Answer {
        status,
        headers,
        body,
    }
}

/// One event of a stream from the gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum Sse {
    Json(Value),
    Done,
}

pub struct StreamReply {
    pub status: u16,
    pub headers: HeaderMap,
    pub events: Vec<Sse>,
    /// The raw text, for framing checks.
    pub raw: String,
    /// The body ended with a transport error (the connection broke).
    pub broken: bool,
}

impl StreamReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn chunks(&self) -> Vec<&Value> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Sse::Json(v) => Some(v),
                Sse::Done => None,
            })
            .collect()
    }

    /// Concatenated `delta.content` of every chunk.
    pub fn content(&self) -> String {
        self.chunks()
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect()
    }

    pub fn ends_with_done(&self) -> bool {
        self.events.last() == Some(&Sse::Done)
    }

    pub fn error_event(&self) -> Option<&Value> {
        self.chunks().into_iter().find(|c| c.get("error").is_some())
    }
}

/// POSTs a streaming request and reads the whole event stream.
pub async fn chat_stream(gw: &Gateway, body: &Value) -> StreamReply {
    use futures_util::StreamExt;
    let mut resp = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .insert_header(("content-type", "application/json"))
        .send_body(serde_json::to_vec(body).unwrap())
        .await
        .expect("gateway answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut raw = Vec::new();
    let mut broken = false;
    while let Some(chunk) = resp.next().await {
        match chunk {
            Ok(c) => raw.extend_from_slice(&c),
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    let raw = String::from_utf8(raw).expect("utf8 stream");
    settle(gw).await;
    let events = if status == 200 {
        parse_sse(&raw)
    } else {
        vec![Sse::Json(
            serde_json::from_str(&raw).expect("error body is JSON"),
        )]
    };
    StreamReply {
        status,
        headers,
        events,
        raw,
        broken,
    }
}

/// Splits `data: ...\n\n` events; panics on anything the OpenAI SDK would not accept.
pub fn parse_sse(raw: &str) -> Vec<Sse> {
    raw.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without `data: `: {e:?}"));
            assert!(!data.contains('\n'), "multi-line event: {e:?}");
            if data == "[DONE]" {
                Sse::Done
            } else {
                Sse::Json(serde_json::from_str(data).unwrap_or_else(|_| panic!("not JSON: {data}")))
            }
        })
        .collect()
}

/// Field-by-field check of a `chat.completion` against the OpenAI SDK's model
/// (`ChatCompletion`): required fields present with the right types and values.
pub fn assert_openai_completion(v: &Value) {
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()), "id: {v}");
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert!(v["created"].as_u64().is_some(), "created: {v}");
    assert!(
        v["model"].as_str().is_some_and(|s| !s.is_empty()),
        "model: {v}"
    );
    let choices = v["choices"].as_array().expect("choices is an array");
    assert!(!choices.is_empty());
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i as u64, "{c}");
        assert_eq!(c["message"]["role"], "assistant", "{c}");
        let content = &c["message"]["content"];
        assert!(content.is_string() || content.is_null(), "content: {c}");
        let finish = c["finish_reason"].as_str().expect("finish_reason");
        assert!(
            [
                "stop",
                "length",
                "tool_calls",
                "content_filter",
                "function_call"
            ]
            .contains(&finish),
            "finish_reason {finish}"
        );
        if let Some(calls) = c["message"].get("tool_calls").filter(|t| !t.is_null()) {
            for call in calls.as_array().expect("tool_calls is an array") {
                assert!(call["id"].as_str().is_some_and(|s| !s.is_empty()));
                assert_eq!(call["type"], "function");
                assert!(call["function"]["name"].as_str().is_some());
                let args = call["function"]["arguments"]
                    .as_str()
                    .expect("arguments is a string");
                serde_json::from_str::<Value>(args).expect("arguments parse as JSON");
            }
        }
    }
    assert_usage(&v["usage"]);
}

pub fn assert_usage(u: &Value) {
    let p = u["prompt_tokens"].as_u64().expect("prompt_tokens");
    let c = u["completion_tokens"].as_u64().expect("completion_tokens");
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(p + c),
        "total = prompt + completion: {u}"
    );
}

/// Checks a complete stream against the OpenAI streaming contract (providers.md §0.1).
pub fn assert_openai_stream(s: &StreamReply, include_usage: bool) {
    assert_eq!(s.status, 200, "{}", s.raw);
    assert!(
        s.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "content-type"
    );
    assert!(s.ends_with_done(), "stream ends with [DONE]: {}", s.raw);
    assert_eq!(
        s.events.iter().filter(|e| **e == Sse::Done).count(),
        1,
        "exactly one [DONE]"
    );
    let chunks = s.chunks();
    assert!(!chunks.is_empty());
    let (id, created, model) = (&chunks[0]["id"], &chunks[0]["created"], &chunks[0]["model"]);
    assert!(id.as_str().is_some_and(|s| !s.is_empty()));
    assert!(created.as_u64().is_some());
    let mut finish_seen = false;
    let mut usage_chunks = 0;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(&c["id"], id, "same id on every chunk");
        assert_eq!(&c["created"], created, "same created on every chunk");
        assert_eq!(&c["model"], model, "same model on every chunk");
        let choices = c["choices"].as_array().expect("choices array");
        if choices.is_empty() {
            usage_chunks += 1;
            assert!(include_usage, "usage chunk only when asked: {c}");
            assert!(finish_seen, "usage chunk comes after the finish");
            assert_eq!(i, chunks.len() - 1, "usage chunk is the last chunk");
            assert_usage(&c["usage"]);
            continue;
        }
        if include_usage {
            assert!(
                c.get("usage").is_some_and(Value::is_null),
                "usage: null on {c}"
            );
        } else {
            assert!(
                c.get("usage").is_none_or(Value::is_null),
                "no usage without include_usage: {c}"
            );
        }
        let choice = &choices[0];
        assert_eq!(choice["index"], 0);
        assert!(choice["delta"].is_object(), "delta object: {c}");
        if let Some(f) = choice["finish_reason"].as_str() {
            finish_seen = true;
            assert!(["stop", "length", "tool_calls", "content_filter"].contains(&f));
        }
    }
    assert!(finish_seen, "a finish chunk: {}", s.raw);
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["role"], "assistant",
        "first delta has the role"
    );
    assert_eq!(
        usage_chunks,
        usize::from(include_usage),
        "usage chunk count"
    );
}

/// Checks a stream that opens with one tool call named `name` (providers.md §0.1): the first
/// delta carries the role, `content: null` and the call's head (index 0, id, type, name); the id
/// is sent once; every fragment is index 0; the finish is `tool_calls`.
/// Returns the call's id and its arguments (all fragments joined).
pub fn assert_tool_call_stream(s: &StreamReply, name: &str) -> (String, String) {
    let chunks = s.chunks();
    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant", "{}", s.raw);
    assert_eq!(
        first["content"],
        Value::Null,
        "a stream opening with a tool call has content null: {}",
        s.raw
    );
    let head = &first["tool_calls"][0];
    assert_eq!(head["index"], 0);
    assert_eq!(head["type"], "function");
    assert_eq!(head["function"]["name"], name);
    let id = head["id"].as_str().expect("the head has an id").to_owned();
    let fragments: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    for f in &fragments[1..] {
        assert_eq!(f["index"], 0, "{f}");
        assert!(f.get("id").is_none_or(Value::is_null), "id only once: {f}");
    }
    let args: String = fragments
        .iter()
        .filter_map(|f| f["function"]["arguments"].as_str())
        .collect();
    let finish: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["tool_calls"], "{}", s.raw);
    (id, args)
}

pub fn user_message(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

pub fn stream_request(model: &str, include_usage: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": true,
        "stream_options": {"include_usage": include_usage}
    })
}

/// The value of one series in the gateway's `/metrics` (0 if absent).
pub async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = metrics_text(gw).await;
    metric_in(&text, name, labels)
}

pub async fn metrics_text(gw: &Gateway) -> String {
    let mut resp = client()
        .get(format!("{}/metrics", gw.url()))
        .send()
        .await
        .expect("metrics answers");
    let body = resp.body().limit(16 << 20).await.expect("metrics body");
    String::from_utf8(body.to_vec()).expect("utf8")
}

pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric_name, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric_name != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Polls `/metrics` until `done(text)` holds (effects such as a stream's outcome reach the
/// deployment actor asynchronously), up to [`PATIENCE`]; returns the last text either way, so the
/// caller's assertion reports what was there.
pub async fn metrics_until<F: Fn(&str) -> bool>(gw: &Gateway, done: F) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let text = metrics_text(gw).await;
        if done(&text) || std::time::Instant::now() >= deadline {
            return text;
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One series' value once it equals `want` (or its last value after [`PATIENCE`]).
pub async fn metric_until(gw: &Gateway, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let text = metrics_until(gw, |t| metric_in(t, name, labels) == want).await;
    metric_in(&text, name, labels)
}

/// Polls until `f` holds, up to [`PATIENCE`] of real time (for effects that land
/// asynchronously, such as a stream's outcome reaching its deployment actor).
pub async fn eventually<F: FnMut() -> bool>(mut f: F) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached within {PATIENCE:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}
