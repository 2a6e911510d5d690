//! Helpers shared by the mock upstream tests: start a mock, post requests with awc, parse SSE.
#![allow(dead_code)]

use std::time::Duration;

use awc::http::header::HeaderMap;
use awc::http::StatusCode;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use switchyard_loadtests::{Behavior, MockConfig, MockUpstream};

pub async fn start() -> MockUpstream {
    MockUpstream::start(MockConfig::default())
        .await
        .expect("mock starts")
}

pub async fn start_with(default_behavior: Behavior) -> MockUpstream {
    MockUpstream::start(MockConfig {
        default_behavior,
        ..MockConfig::default()
    })
    .await
    .expect("mock starts")
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(5))
        .disable_redirects()
        .finish()
}

/// A valid OpenAI chat request (providers.md §9 C1).
pub fn openai_body(stream: bool, include_usage: Option<bool>) -> Value {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Say hello."}
        ],
        "temperature": 0.2,
        "max_tokens": 64
    });
    if stream {
        body["stream"] = json!(true);
    }
    if let Some(u) = include_usage {
        body["stream_options"] = json!({ "include_usage": u });
    }
    body
}

/// A valid Anthropic messages request (providers.md §9.2 C1 as Anthropic).
pub fn anthropic_body(stream: bool) -> Value {
    let mut body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": "You are a terse assistant.",
        "messages": [{"role": "user", "content": "Say hello."}]
    });
    if stream {
        body["stream"] = json!(true);
    }
    body
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }
}

/// POSTs `body` (raw text) with extra headers and reads the whole answer.
pub async fn post_raw(url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
    let mut req = client()
        .post(url)
        .insert_header(("content-type", "application/json"));
    for (n, v) in headers {
        req = req.insert_header((*n, *v));
    }
    let mut resp = req.send_body(body.into()).await.expect("response");
    let body = resp.body().limit(64 << 20).await.expect("whole body");
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        body,
    }
}

pub async fn post_openai(mock: &MockUpstream, route: &str, body: &Value) -> Answer {
    let url = format!("{}/v1/chat/completions", mock.route_url(route));
    post_raw(&url, &[], body.to_string()).await
}

pub async fn post_anthropic(mock: &MockUpstream, route: &str, body: &Value) -> Answer {
    let url = format!("{}/v1/messages", mock.route_url(route));
    post_raw(
        &url,
        &[("anthropic-version", "2023-06-01"), ("x-api-key", "k")],
        body.to_string(),
    )
    .await
}

/// Sends a request and returns the open response (for reading the body chunk by chunk).
pub async fn open(
    url: &str,
    headers: &[(&str, &str)],
    body: &Value,
    timeout: Duration,
) -> Result<awc::ClientResponse, awc::error::SendRequestError> {
    let mut req = client()
        .post(url)
        .timeout(timeout)
        .insert_header(("content-type", "application/json"));
    for (n, v) in headers {
        req = req.insert_header((*n, *v));
    }
    req.send_body(body.to_string()).await
}

/// Reads body chunks until the body ends, fails, or `idle` passes without data.
pub async fn read_chunks(resp: &mut awc::ClientResponse, idle: Duration) -> (Vec<u8>, BodyEnd) {
    let mut data = Vec::new();
    loop {
        match tokio::time::timeout(idle, resp.next()).await {
            Err(_) => return (data, BodyEnd::Stalled),
            Ok(None) => return (data, BodyEnd::Complete),
            Ok(Some(Err(e))) => return (data, BodyEnd::Failed(e.to_string())),
            Ok(Some(Ok(chunk))) => data.extend_from_slice(&chunk),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum BodyEnd {
    Complete,
    Failed(String),
    Stalled,
}

/// One SSE event: its `event:` name (if any) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

/// Splits an SSE body into events (the mock uses `\n` line ends and one data line per event).
/// Asserts that the body is made only of complete events.
pub fn parse_sse(body: &str) -> Vec<Event> {
    assert!(
        body.is_empty() || body.ends_with("\n\n"),
        "SSE body must end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    assert!(data.is_none(), "one data line per event: {block:?}");
                    data = Some(v.to_owned());
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            Event {
                name,
                data: data.expect("event has data"),
            }
        })
        .collect()
}
