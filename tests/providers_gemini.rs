//! Chat completions and embeddings through `gemini` (AI Studio) and `vertex` deployments: the
//! request is translated to `generateContent` / `embedContent` / `batchEmbedContents`, the
//! answer (JSON or the CRLF `alt=sse` stream) back to OpenAI's shape; thought signatures ride in
//! the tool call ids and go back to Gemini on replay; Google RPC errors drive the routing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use switchyard_loadtests::mock::{embedding_value, MOCK_TOOL_CALL_ID, THOUGHT_SIGNATURE};

/// The AI Studio key the mock insists on (`x-goog-api-key`).
const GEMINI_KEY: &str = "AIza-test-key-0001";
/// The Vertex OAuth access token the mock insists on (`Authorization: Bearer`).
const VERTEX_TOKEN: &str = "ya29.vertex-token";

async fn keyed_mock(key: &str) -> MockUpstream {
    MockUpstream::start(MockConfig {
        require_api_key: Some(key.to_owned()),
        ..MockConfig::default()
    })
    .await
    .expect("mock upstream starts")
}

/// A `gemini` deployment of group `model` on the mock route `route`.
fn gemini(id: &str, model: &str, mock: &MockUpstream, route: &str, upstream: &str) -> String {
    deployment(
        id,
        model,
        "gemini",
        &mock.route_url(route),
        &format!(
            "upstream_model = \"{upstream}\"\napi_key = \"{GEMINI_KEY}\"\n\
             input_cost_per_mtok = 1.0\noutput_cost_per_mtok = 4.0"
        ),
    )
}

/// One `gemini-flash` group on route `g`.
fn flash_config(mock: &MockUpstream) -> String {
    format!(
        "{FAST_ROUTER}{}",
        gemini("gem", "gemini-flash", mock, "g", "gemini-2.5-flash")
    )
}

fn weather_request(stream: bool) -> Value {
    json!({
        "model": "gemini-flash",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What's the weather in Paris?"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": "auto",
        "stream": stream,
        "stream_options": {"include_usage": true}
    })
}

/// The client's next turn: the assistant's tool call replayed with the id the gateway gave it,
/// and the tool's result.
fn replay_request(call_id: &str, arguments: &str) -> Value {
    json!({
        "model": "gemini-flash",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What's the weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": call_id, "type": "function",
                "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "18C and sunny"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    })
}

/// The contents Gemini must receive for `replay_request`: the signature back on the
/// `functionCall` part, the result named after the call it answers.
fn replayed_contents() -> Value {
    json!([
        {"role": "user", "parts": [{"text": "What's the weather in Paris?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
            "thoughtSignature": THOUGHT_SIGNATURE}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
            "response": {"result": "18C and sunny"}}}]}
    ])
}

/// A tool call id the gateway synthesized: `call_<12 hex>__thought__<signature>`.
fn assert_signed_call_id(id: &str) {
    assert_ne!(
        id, MOCK_TOOL_CALL_ID,
        "Gemini sends no id: the gateway mints one"
    );
    let (head, sig) = id
        .split_once("__thought__")
        .unwrap_or_else(|| panic!("the signature rides in the id: {id}"));
    assert_eq!(sig, THOUGHT_SIGNATURE, "{id}");
    assert!(
        head.len() == 17
            && head.starts_with("call_")
            && head[5..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
}

/// The `/health/ready` entry of one deployment.
async fn snapshot(gw: &Gateway, id: &str) -> Value {
    let mut resp = client()
        .get(format!("{}/health/ready", gw.url()))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    body["deployments"]
        .as_array()
        .expect("deployments array")
        .iter()
        .find(|d| d["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no deployment {id} in {body}"))
}

#[actix_web::test]
async fn non_streamed_chat_reaches_ai_studio_with_its_key_and_a_translated_body() {
    let mock = keyed_mock(GEMINI_KEY).await;
    mock.set_behavior(
        "g",
        Behavior::text("HELLO.")
            .with_model("gemini-2.5-flash-001")
            .with_usage(1000, 100)
            .with_cached_tokens(400),
    );
    let gw = start_gateway(&flash_config(&mock));
    let r = chat(
        &gw,
        &json!({"model": "gemini-flash", "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Again, louder."}],
            "temperature": 0.2, "top_p": 0.9, "max_tokens": 64, "stop": ["END"], "user": "u-123",
            "seed": 7, "presence_penalty": 0.5, "frequency_penalty": 0}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.body["id"], "mockGem0001", "Gemini's responseId");
    assert_eq!(
        r.body["model"], "gemini-2.5-flash-001",
        "Gemini's modelVersion"
    );
    assert_eq!(r.body["choices"][0]["message"]["content"], "HELLO.");
    assert_eq!(r.body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        r.body["usage"],
        json!({"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100,
               "prompt_tokens_details": {"cached_tokens": 400}})
    );
    assert_eq!(r.header("x-switchyard-deployment"), Some("gem"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("1"));
    // 1000 prompt tokens at $1/M + 100 completion tokens at $4/M.
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.0014"));

    let seen = mock.requests("g");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].path,
        "/g/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(seen[0].header("x-goog-api-key"), Some(GEMINI_KEY));
    assert_eq!(seen[0].header("authorization"), None);
    // No `labels` on AI Studio (Vertex only), no `model` or `stream` in the body.
    assert_eq!(
        seen[0].json(),
        json!({
            "systemInstruction": {"parts": [{"text": "You are a terse assistant."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Say hello."}]},
                {"role": "model", "parts": [{"text": "Hello."}]},
                {"role": "user", "parts": [{"text": "Again, louder."}]}
            ],
            "generationConfig": {"temperature": 0.2, "topP": 0.9, "maxOutputTokens": 64,
                                 "stopSequences": ["END"], "seed": 7, "presencePenalty": 0.5}
        })
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[
                ("deployment", "gem"),
                ("provider", "gemini"),
                ("outcome", "success")
            ]
        )
        .await,
        1.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn streamed_chat_reports_the_last_usage_metadata_never_a_sum() {
    let mock = keyed_mock(GEMINI_KEY).await;
    // Four content events with running totals (2, 4, 6, 8 candidates tokens), then the final
    // event with STOP and the complete usage (8): a sum would say 28.
    mock.set_behavior(
        "g",
        Behavior::text("Hello there, friend.")
            .with_chunks(4)
            .with_usage(30, 8),
    );
    let gw = start_gateway(&flash_config(&mock));
    for include_usage in [true, false] {
        let mut req = stream_request("gemini-flash", include_usage);
        req["messages"] = json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello."}
        ]);
        let s = chat_stream(&gw, &req).await;
        assert_openai_stream(&s, include_usage);
        assert_eq!(s.content(), "Hello there, friend.");
        assert_eq!(s.header("x-switchyard-deployment"), Some("gem"));
        let chunks = s.chunks();
        assert_eq!(chunks[0]["id"], "mockGem0001");
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let finish: Vec<&str> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
            .collect();
        assert_eq!(finish, ["stop"], "one finish");
        if include_usage {
            assert_eq!(
                chunks.last().unwrap()["usage"],
                json!({"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38,
                       "prompt_tokens_details": {"cached_tokens": 0}})
            );
        }
    }
    let seen = mock.requests("g");
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(
            s.path,
            "/g/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(s.header("x-goog-api-key"), Some(GEMINI_KEY));
        assert_eq!(
            s.json(),
            json!({"systemInstruction": {"parts": [{"text": "Be brief."}]},
                   "contents": [{"role": "user", "parts": [{"text": "Say hello."}]}]}),
            "no stream flag or stream_options in the body"
        );
    }
    // The streams' outcomes reach the deployment: two successes, billed with the last usage of
    // each stream (30 + 8 tokens each, not the 28 completion tokens a sum would give).
    let ok = [("deployment", "gem"), ("outcome", "success")];
    assert_eq!(
        metric_until(&gw, "gateway_upstream_attempts_total", &ok, 2.0).await,
        2.0,
        "both streams succeeded: {}",
        metrics_text(&gw).await
    );
    for (direction, want) in [("input", 60.0), ("output", 16.0)] {
        let labels = [("deployment", "gem"), ("direction", direction)];
        assert_eq!(
            metric_until(&gw, "gateway_tokens_total", &labels, want).await,
            want,
            "{direction} tokens"
        );
    }
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_non_streamed_tool_call_gets_an_id_whose_thought_signature_goes_back_on_replay() {
    let mock = keyed_mock(GEMINI_KEY).await;
    mock.set_behavior(
        "g",
        Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#).with_usage(41, 6),
    );
    let gw = start_gateway(&flash_config(&mock));
    let r = chat(&gw, &weather_request(false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    // Gemini finishes a tool call with STOP: the gateway says tool_calls.
    assert_eq!(r.body["choices"][0]["finish_reason"], "tool_calls");
    let msg = &r.body["choices"][0]["message"];
    assert_eq!(msg["content"], Value::Null);
    let calls = msg["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], r#"{"city":"Paris"}"#);
    let id = calls[0]["id"].as_str().unwrap();
    assert_signed_call_id(id);

    let first = mock.requests("g")[0].json();
    assert_eq!(
        first["tools"],
        json!([{"functionDeclarations": [{"name": "get_weather", "description": "Get current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}])
    );
    assert_eq!(
        first["toolConfig"],
        json!({"functionCallingConfig": {"mode": "AUTO"}})
    );
    assert_eq!(
        first["systemInstruction"],
        json!({"parts": [{"text": "You are a terse assistant."}]})
    );

    // The client replays the call with the id it got and sends the result.
    mock.set_behavior("g", Behavior::text("It is 18C and sunny in Paris."));
    let r = chat(&gw, &replay_request(id, r#"{"city":"Paris"}"#)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["choices"][0]["message"]["content"],
        "It is 18C and sunny in Paris."
    );
    let second = &mock.requests("g")[1];
    assert_eq!(
        second.path,
        "/g/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(second.json()["contents"], replayed_contents());
    assert_eq!(
        second.json()["systemInstruction"],
        json!({"parts": [{"text": "You are a terse assistant."}]})
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_streamed_tool_call_gets_an_id_whose_thought_signature_goes_back_on_replay() {
    let mock = keyed_mock(GEMINI_KEY).await;
    mock.set_behavior(
        "g",
        Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#).with_usage(41, 6),
    );
    let gw = start_gateway(&flash_config(&mock));
    let s = chat_stream(&gw, &weather_request(true)).await;
    assert_openai_stream(&s, true);
    let (id, args) = assert_tool_call_stream(&s, "get_weather");
    assert_signed_call_id(&id);
    assert_eq!(args, r#"{"city":"Paris"}"#);
    assert_eq!(s.content(), "", "the final empty text part adds nothing");
    let chunks = s.chunks();
    assert_eq!(
        chunks.last().unwrap()["usage"],
        json!({"prompt_tokens": 41, "completion_tokens": 6, "total_tokens": 47,
               "prompt_tokens_details": {"cached_tokens": 0}})
    );
    assert_eq!(
        mock.requests("g")[0].path,
        "/g/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );

    // The replay, streamed this time: the signature goes back all the same.
    mock.set_behavior("g", Behavior::text("18C and sunny.").with_chunks(2));
    let mut next = replay_request(&id, &args);
    next["stream"] = json!(true);
    let s = chat_stream(&gw, &next).await;
    assert_openai_stream(&s, false);
    assert_eq!(s.content(), "18C and sunny.");
    let second = &mock.requests("g")[1];
    assert_eq!(
        second.path,
        "/g/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(second.json()["contents"], replayed_contents());
    gw.stop(true).await;
}

#[actix_web::test]
async fn resource_exhausted_with_retry_info_falls_back_and_cools_the_deployment_for_the_retry_delay(
) {
    let mock = keyed_mock(GEMINI_KEY).await;
    // 429 RESOURCE_EXHAUSTED with RetryInfo.retryDelay "27s" and no Retry-After header.
    mock.set_behavior(
        "g",
        Behavior::error(ErrorPreset::RateLimited {
            retry_after: Some(27),
        }),
    );
    mock.set_behavior("b", Behavior::text("Served by the backup."));
    let gw = start_gateway(&format!(
        "{}{}{}\n[[fallbacks]]\nfrom = \"gemini-flash\"\nto = [\"backup\"]\n",
        settings("rate_limit_cooldown_ms = 10000", ""),
        gemini("gem", "gemini-flash", &mock, "g", "gemini-2.5-flash"),
        deployment(
            "backup-1",
            "backup",
            "openai",
            &openai_base(&mock, "b"),
            &format!("api_key = \"{GEMINI_KEY}\"")
        ),
    ));
    let r = chat(&gw, &user_message("gemini-flash", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["choices"][0]["message"]["content"],
        "Served by the backup."
    );
    assert_eq!(r.header("x-switchyard-deployment"), Some("backup-1"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("backup"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(
        mock.request_count("g"),
        1,
        "a 27 s wait is beyond max_retry_wait_ms: no retry"
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[
                ("deployment", "gem"),
                ("provider", "gemini"),
                ("outcome", "rate_limited")
            ]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_fallbacks_total",
            &[("from", "gemini-flash"), ("to", "backup")]
        )
        .await,
        1.0
    );
    let s = snapshot(&gw, "gem").await;
    assert_eq!(s["decline"], "cooling_down", "{s}");
    assert_eq!(
        s["breaker"], "closed",
        "a 429 is not a breaker failure: {s}"
    );
    let retry_in = s["retry_in_ms"].as_u64().unwrap();
    assert!(
        (20_000..=27_000).contains(&retry_in),
        "cooling for RetryInfo's 27 s, not rate_limit_cooldown_ms (10 s): {s}"
    );

    // 20 s in (a margin for real time, which the gateway's clock counts too): still cooling,
    // the fallback serves without calling Gemini.
    gw.clock().advance(Duration::from_secs(20));
    let r = chat(&gw, &user_message("gemini-flash", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("backup-1"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("1"));
    assert_eq!(mock.request_count("g"), 1, "cooling: not called");

    // After the 27 s Gemini serves again.
    gw.clock().advance(Duration::from_secs(8));
    mock.set_behavior("g", Behavior::text("Gemini again."));
    let r = chat(&gw, &user_message("gemini-flash", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("gem"));
    assert_eq!(r.body["choices"][0]["message"]["content"], "Gemini again.");
    assert_eq!(mock.request_count("b"), 2);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_blocked_prompt_is_a_200_with_finish_reason_content_filter_and_no_fallback() {
    let mock = keyed_mock(GEMINI_KEY).await;
    // A 200 with `promptFeedback.blockReason: SAFETY` and no candidates.
    mock.set_behavior(
        "g",
        Behavior::error(ErrorPreset::ContentFiltered).with_usage(7, 0),
    );
    mock.set_behavior("b", Behavior::text("should not be used"));
    let gw = start_gateway(&format!(
        "{}{}{}\n[[fallbacks]]\nfrom = \"gemini-flash\"\nto = [\"backup\"]\n",
        FAST_ROUTER,
        gemini("gem", "gemini-flash", &mock, "g", "gemini-2.5-flash"),
        deployment(
            "backup-1",
            "backup",
            "openai",
            &openai_base(&mock, "b"),
            &format!("api_key = \"{GEMINI_KEY}\"")
        ),
    ));
    let r = chat(&gw, &user_message("gemini-flash", "something unsafe")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.body["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(r.body["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(r.body["usage"]["prompt_tokens"], 7);
    assert_eq!(r.body["usage"]["completion_tokens"], 0);
    assert_eq!(r.header("x-switchyard-deployment"), Some("gem"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("1"));
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[("deployment", "gem"), ("outcome", "success")]
        )
        .await,
        1.0,
        "a successful attempt, not content_policy"
    );

    let s = chat_stream(&gw, &stream_request("gemini-flash", true)).await;
    assert_openai_stream(&s, true);
    assert_eq!(s.content(), "");
    let finish: Vec<&str> = s
        .chunks()
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["content_filter"]);
    assert_eq!(s.chunks().last().unwrap()["usage"]["prompt_tokens"], 7);

    assert_eq!(mock.request_count("g"), 2);
    assert_eq!(
        mock.request_count("b"),
        0,
        "an answer, not a failure: no fallback"
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn vertex_builds_the_project_url_and_sends_the_access_token_as_bearer() {
    let mock = keyed_mock(VERTEX_TOKEN).await;
    mock.set_behavior(
        "vx",
        Behavior::text("Hello from Vertex.")
            .with_chunks(3)
            .with_usage(12, 3),
    );
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}",
        deployment(
            "vertex-pro",
            "gemini-pro",
            "vertex",
            &mock.route_url("vx"),
            &format!(
                "upstream_model = \"gemini-2.5-pro\"\napi_key = \"{VERTEX_TOKEN}\"\n\
                 vertex_project = \"my-project\"\nvertex_location = \"europe-west4\""
            ),
        )
    ));
    let mut req = user_message("gemini-pro", "Say hello.");
    req["user"] = json!("u-123");
    let r = chat(&gw, &req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(
        r.body["choices"][0]["message"]["content"],
        "Hello from Vertex."
    );
    assert_eq!(r.header("x-switchyard-deployment"), Some("vertex-pro"));

    let mut stream = stream_request("gemini-pro", true);
    stream["user"] = json!("Not A Label");
    let s = chat_stream(&gw, &stream).await;
    assert_openai_stream(&s, true);
    assert_eq!(s.content(), "Hello from Vertex.");
    assert_eq!(s.chunks().last().unwrap()["usage"]["completion_tokens"], 3);

    let seen = mock.requests("vx");
    assert_eq!(seen.len(), 2);
    let base =
        "/vx/v1/projects/my-project/locations/europe-west4/publishers/google/models/gemini-2.5-pro";
    assert_eq!(seen[0].path, format!("{base}:generateContent"));
    assert_eq!(
        seen[1].path,
        format!("{base}:streamGenerateContent?alt=sse")
    );
    for s in &seen {
        assert_eq!(
            s.header("authorization"),
            Some(format!("Bearer {VERTEX_TOKEN}").as_str())
        );
        assert_eq!(s.header("x-goog-api-key"), None);
    }
    assert_eq!(
        seen[0].json(),
        json!({"contents": [{"role": "user", "parts": [{"text": "Say hello."}]}],
               "labels": {"user": "u-123"}}),
        "a valid label value becomes labels.user on Vertex"
    );
    assert!(
        seen[1].json().get("labels").is_none(),
        "not a valid label value: {}",
        seen[1].json()
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn embeddings_use_embed_content_for_one_input_and_batch_embed_contents_for_many() {
    let mock = keyed_mock(GEMINI_KEY).await;
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}",
        gemini(
            "gem-embed",
            "gemini-embed",
            &mock,
            "e",
            "gemini-embedding-001"
        )
    ));

    // One string, `dimensions` -> embedContent with outputDimensionality.
    let r = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "gemini-embed", "input": "Hello world", "dimensions": 4}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["object"], "list");
    let data = r.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["object"], "embedding");
    assert_eq!(data[0]["index"], 0);
    let want: Vec<f64> = (0..4).map(|i| f64::from(embedding_value(0, i))).collect();
    let got: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(got, want);
    // Gemini reports no usage: the gateway's estimate, a quarter of the characters (11 -> 3).
    assert_eq!(r.body["usage"]["prompt_tokens"], 3);
    assert_eq!(r.body["usage"]["total_tokens"], 3);
    assert_eq!(r.header("x-switchyard-deployment"), Some("gem-embed"));
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.000003"));
    let seen = &mock.requests("e")[0];
    assert_eq!(
        seen.path,
        "/e/v1beta/models/gemini-embedding-001:embedContent"
    );
    assert_eq!(seen.header("x-goog-api-key"), Some(GEMINI_KEY));
    assert_eq!(
        seen.json(),
        json!({"content": {"parts": [{"text": "Hello world"}]}, "outputDimensionality": 4})
    );

    // An array -> batchEmbedContents, each request naming the model; base64 encoded by the
    // gateway (Gemini only answers floats).
    let texts = ["alpha", "beta", "gamma delta"];
    let r = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "gemini-embed", "input": texts, "dimensions": 3,
                "encoding_format": "base64", "input_type": "query"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let data = r.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (k, item) in data.iter().enumerate() {
        assert_eq!(item["index"], k);
        let b64 = item["embedding"].as_str().expect("a base64 string");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let want: Vec<f32> = (0..3).map(|i| embedding_value(k, i)).collect();
        assert_eq!(floats, want, "vector {k}");
    }
    // 5/4 -> 2, 4/4 -> 1, 11/4 -> 3.
    assert_eq!(r.body["usage"]["prompt_tokens"], 6);
    let seen = &mock.requests("e")[1];
    assert_eq!(
        seen.path,
        "/e/v1beta/models/gemini-embedding-001:batchEmbedContents"
    );
    let request = |text: &str| {
        json!({"model": "models/gemini-embedding-001", "content": {"parts": [{"text": text}]},
               "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 3})
    };
    assert_eq!(
        seen.json(),
        json!({"requests": texts.iter().map(|t| request(t)).collect::<Vec<_>>()})
    );

    // Without dimensions: the model's own length (the mock's default 8), floats.
    let r = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "gemini-embed", "input": ["one", "two"]}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for (k, item) in r.body["data"].as_array().unwrap().iter().enumerate() {
        let got: Vec<f64> = item["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let want: Vec<f64> = (0..8).map(|i| f64::from(embedding_value(k, i))).collect();
        assert_eq!(got, want, "vector {k}");
    }
    assert!(mock.requests("e")[2].json()["requests"][0]
        .get("outputDimensionality")
        .is_none());
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_pydantic_tool_schema_reaches_gemini_with_its_refs_inlined_and_a_recursive_one_is_a_400()
{
    let mock = keyed_mock(GEMINI_KEY).await;
    mock.set_behavior("g", Behavior::text("ok"));
    let gw = start_gateway(&flash_config(&mock));
    // What Pydantic v2 writes for `class Person(BaseModel): home: Address; work: Address | None`.
    let person = json!({
        "$defs": {"Address": {"properties": {"city": {"title": "City", "type": "string"}},
                              "required": ["city"], "title": "Address", "type": "object"}},
        "properties": {"home": {"$ref": "#/$defs/Address"},
                       "work": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}], "default": null}},
        "required": ["home"], "title": "Person", "type": "object"
    });
    let request = |schema: &Value| {
        json!({"model": "gemini-flash", "messages": [{"role": "user", "content": "Who?"}],
               "tools": [{"type": "function", "function": {"name": "save_person", "parameters": schema}}]})
    };
    let r = chat(&gw, &request(&person)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = mock.requests("g");
    assert_eq!(seen.len(), 1);
    let address = json!({"properties": {"city": {"title": "City", "type": "string"}},
                         "required": ["city"], "title": "Address", "type": "object"});
    assert_eq!(
        seen[0].json()["tools"][0]["functionDeclarations"][0]["parameters"],
        json!({"properties": {"home": address, "work": {"anyOf": [address, {"type": "null"}], "default": null}},
               "required": ["home"], "title": "Person", "type": "object"})
    );

    // A recursive model cannot be written without `$ref`: refused before anything is sent.
    let tree = json!({
        "$defs": {"Node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}},
        "$ref": "#/$defs/Node"
    });
    let r = chat(&gw, &request(&tree)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert_eq!(r.body["error"]["param"], "tools[0].function.parameters");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("recursive")),
        "{}",
        r.body
    );
    assert_eq!(
        mock.request_count("g"),
        1,
        "the recursive schema was never sent"
    );
    gw.stop(true).await;
}
