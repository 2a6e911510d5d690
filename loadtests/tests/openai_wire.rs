//! OpenAI wire format of the mock, checked against providers.md §0.1, §1 and the §9.1 vectors.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use switchyard_loadtests::{Behavior, Reply};

/// §9.1 streaming vector, verbatim.
const VECTOR_9_1_STREAM: &str = r#"data: {"id":"chatcmpl-GwVec0002","object":"chat.completion.chunk","created":1735689601,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_GwVecTool0001","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-GwVec0002","object":"chat.completion.chunk","created":1735689601,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-GwVec0002","object":"chat.completion.chunk","created":1735689601,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-GwVec0002","object":"chat.completion.chunk","created":1735689601,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}

data: {"id":"chatcmpl-GwVec0002","object":"chat.completion.chunk","created":1735689601,"model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":62,"completion_tokens":15,"total_tokens":77,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}

data: [DONE]

"#;

#[actix_web::test]
async fn non_stream_text_matches_the_9_1_vector_field_by_field() {
    let mock = start_with(
        Behavior::text("Hello.")
            .with_model("gpt-4o-mini-2024-07-18")
            .with_usage(1045, 3)
            .with_cached_tokens(1024),
    )
    .await;
    let a = post_openai(&mock, "", &openai_body(false, None)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("x-request-id"), Some("req_mock0001"));
    assert_eq!(a.header("request-id"), None);
    assert_eq!(a.header("cache-control"), None);
    let v = a.json();
    let created = v["created"].as_u64().expect("created is an integer");
    assert!(created > 1_700_000_000, "created is a unix time: {created}");
    assert_eq!(
        v,
        json!({
            "id": "chatcmpl-mock0001",
            "object": "chat.completion",
            "created": created,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello.", "refusal": null},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": 1045,
                "completion_tokens": 3,
                "total_tokens": 1048,
                "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0
                }
            },
            "service_tier": "default",
            "system_fingerprint": "fp_mock0001"
        })
    );
}

#[actix_web::test]
async fn non_stream_tool_call_has_null_content_and_tool_calls() {
    let mock = start_with(Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#)).await;
    let v = post_openai(&mock, "", &openai_body(false, None))
        .await
        .json();
    let choice = &v["choices"][0];
    assert_eq!(
        choice["message"],
        json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": "call_mock0001",
                "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}
            }],
            "refusal": null
        })
    );
    assert_eq!(choice["finish_reason"], "tool_calls");
    // Default completion_tokens = number of content pieces (4 by default).
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["usage"]["prompt_tokens"], 10);
    assert_eq!(v["usage"]["total_tokens"], 14);
}

#[actix_web::test]
async fn default_behavior_says_hello_in_four_chunks() {
    let mock = start().await;
    let v = post_openai(&mock, "", &openai_body(false, None))
        .await
        .json();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the mock upstream."
    );
    assert_eq!(v["model"], "mock-model");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    let a = post_openai(&mock, "", &openai_body(true, None)).await;
    let contents: Vec<String> = parse_sse(a.text())
        .iter()
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| {
            e.json()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(contents.len(), 4);
    assert_eq!(contents.concat(), "Hello from the mock upstream.");
}

#[actix_web::test]
async fn stream_without_include_usage_omits_usage_entirely() {
    let mock = start_with(Behavior::text("Hello.").with_chunks(2)).await;
    for body in [openai_body(true, None), openai_body(true, Some(false))] {
        let a = post_openai(&mock, "", &body).await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.header("content-type"),
            Some("text/event-stream; charset=utf-8")
        );
        assert_eq!(a.header("cache-control"), Some("no-cache"));
        assert_eq!(a.header("x-request-id"), Some("req_mock0001"));
        assert_eq!(a.header("transfer-encoding"), Some("chunked"));
        let events = parse_sse(a.text());
        assert!(events.iter().all(|e| e.name.is_none()), "no event: lines");
        assert_eq!(events.len(), 5, "{events:#?}");
        assert_eq!(events[4].data, "[DONE]");
        let chunks: Vec<_> = events[..4].iter().map(Event::json).collect();
        for c in &chunks {
            assert_eq!(c["id"], "chatcmpl-mock0001");
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["created"], chunks[0]["created"]);
            assert_eq!(c["model"], "mock-model");
            assert!(c.get("usage").is_none(), "no usage key: {c}");
            assert_eq!(c["choices"][0]["index"], 0);
            assert_eq!(c["choices"][0]["logprobs"], json!(null));
        }
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(chunks[0]["choices"][0]["finish_reason"], json!(null));
        assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "Hel"}));
        assert_eq!(chunks[2]["choices"][0]["delta"], json!({"content": "lo."}));
        assert_eq!(chunks[3]["choices"][0]["delta"], json!({}));
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    }
}

#[actix_web::test]
async fn stream_with_include_usage_sends_null_usage_then_a_usage_chunk() {
    let mock = start_with(
        Behavior::text("Hello.")
            .with_chunks(2)
            .with_usage(21, 4)
            .with_cached_tokens(5),
    )
    .await;
    let a = post_openai(&mock, "", &openai_body(true, Some(true))).await;
    let events = parse_sse(a.text());
    assert_eq!(events.len(), 6, "{events:#?}");
    assert_eq!(events[5].data, "[DONE]");
    let chunks: Vec<_> = events[..5].iter().map(Event::json).collect();
    for c in &chunks[..4] {
        assert_eq!(c["usage"], json!(null));
        assert!(c.get("usage").is_some());
    }
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(chunks[4]["id"], "chatcmpl-mock0001");
    assert_eq!(
        chunks[4]["usage"],
        json!({
            "prompt_tokens": 21,
            "completion_tokens": 4,
            "total_tokens": 25,
            "prompt_tokens_details": {"cached_tokens": 5},
            "completion_tokens_details": {"reasoning_tokens": 0}
        })
    );
}

#[actix_web::test]
async fn tool_call_stream_is_byte_for_byte_the_9_1_vector() {
    let mock = start_with(
        Behavior {
            reply: Reply::ToolCall {
                id: "call_GwVecTool0001".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            },
            ..Behavior::default()
        }
        .with_chunks(2)
        .with_model("gpt-4o-mini-2024-07-18")
        .with_usage(62, 15),
    )
    .await;
    let a = post_openai(&mock, "", &openai_body(true, Some(true))).await;
    let first = parse_sse(a.text())[0].json();
    let created = first["created"].as_u64().expect("created");
    let expected = VECTOR_9_1_STREAM
        .replace("chatcmpl-GwVec0002", "chatcmpl-mock0001")
        .replace("\"created\":1735689601", &format!("\"created\":{created}"));
    assert_eq!(a.text(), expected);
}

#[actix_web::test]
async fn tool_call_stream_without_usage_has_the_same_chunks_minus_usage() {
    let mock =
        start_with(Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#).with_chunks(3)).await;
    let a = post_openai(&mock, "", &openai_body(true, None)).await;
    let events = parse_sse(a.text());
    assert_eq!(events.len(), 1 + 3 + 1 + 1);
    let head = events[0].json();
    assert_eq!(
        head["choices"][0]["delta"],
        json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{"index": 0, "id": "call_mock0001", "type": "function",
                            "function": {"name": "get_weather", "arguments": ""}}]
        })
    );
    let args: String = events[1..4]
        .iter()
        .map(|e| {
            let v = e.json();
            let call = &v["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(call["index"], 0);
            assert!(call.get("id").is_none());
            assert!(call["function"].get("name").is_none());
            call["function"]["arguments"]
                .as_str()
                .expect("fragment")
                .to_owned()
        })
        .collect();
    assert_eq!(args, r#"{"city":"Paris"}"#);
    assert_eq!(
        events[4].json()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    assert_eq!(events[5].data, "[DONE]");
}

#[actix_web::test]
async fn all_openai_paths_reach_their_route() {
    let mock = start().await;
    mock.set_behavior("r", Behavior::text("from r"));
    let body = openai_body(false, None).to_string();
    for (path, expected) in [
        ("/v1/chat/completions", "Hello from the mock upstream."),
        ("/chat/completions", "Hello from the mock upstream."),
        ("/r/v1/chat/completions", "from r"),
        ("/r/chat/completions", "from r"),
    ] {
        let a = post_raw(&format!("{}{path}", mock.url()), &[], body.clone()).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(
            a.json()["choices"][0]["message"]["content"],
            expected,
            "{path}"
        );
    }
    assert_eq!(mock.request_count(""), 2);
    assert_eq!(mock.request_count("r"), 2);
}

#[actix_web::test]
async fn paced_stream_sends_role_chunk_first_then_waits_ttft_and_chunk_delay() {
    let mock = start_with(
        Behavior::text("abc")
            .with_chunks(3)
            .with_ttft(Duration::from_millis(150))
            .with_chunk_delay(Duration::from_millis(40)),
    )
    .await;
    let url = format!("{}/v1/chat/completions", mock.url());
    let t0 = Instant::now();
    let mut resp = open(&url, &[], &openai_body(true, None), Duration::from_secs(5))
        .await
        .expect("response");
    let first = futures_util::StreamExt::next(&mut resp)
        .await
        .expect("a chunk")
        .expect("ok chunk");
    let first_at = t0.elapsed();
    assert!(
        std::str::from_utf8(&first)
            .expect("utf8")
            .contains(r#""role":"assistant""#),
        "role chunk first"
    );
    assert!(
        first_at < Duration::from_millis(120),
        "role chunk before ttft: {first_at:?}"
    );
    let (rest, end) = read_chunks(&mut resp, Duration::from_secs(2)).await;
    assert_eq!(end, BodyEnd::Complete);
    let total = t0.elapsed();
    assert!(total >= Duration::from_millis(150 + 2 * 40), "{total:?}");
    let mut all = first.to_vec();
    all.extend(rest);
    let events = parse_sse(std::str::from_utf8(&all).expect("utf8"));
    assert_eq!(events.len(), 1 + 3 + 1 + 1);
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
}

#[actix_web::test]
async fn latency_delays_the_whole_answer() {
    let mock = start_with(Behavior::default().with_latency(Duration::from_millis(120))).await;
    let t0 = Instant::now();
    let a = post_openai(&mock, "", &openai_body(false, None)).await;
    assert_eq!(a.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(120));
}

#[actix_web::test]
async fn extra_headers_are_sent_on_success_only() {
    let mock = start_with(
        Behavior::default()
            .with_header("x-ratelimit-remaining-requests", "42")
            .with_header("bad header name", "skipped"),
    )
    .await;
    let a = post_openai(&mock, "", &openai_body(false, None)).await;
    assert_eq!(a.header("x-ratelimit-remaining-requests"), Some("42"));
    let a = post_openai(&mock, "", &openai_body(true, None)).await;
    assert_eq!(a.header("x-ratelimit-remaining-requests"), Some("42"));
    mock.set_behavior(
        "",
        Behavior::error(switchyard_loadtests::ErrorPreset::ServerError)
            .with_header("x-ratelimit-remaining-requests", "42"),
    );
    let a = post_openai(&mock, "", &openai_body(false, None)).await;
    assert_eq!(a.status, 500);
    assert_eq!(a.header("x-ratelimit-remaining-requests"), None);
}
