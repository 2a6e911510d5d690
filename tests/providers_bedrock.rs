//! Chat completions and embeddings through `bedrock`-kind deployments: the request is translated
//! to Converse / ConverseStream / InvokeModel, signed with SigV4 (the mock verifies every
//! signature independently, double-encoded `:` in the model id included), and the answer (JSON
//! or binary event-stream frames) comes back in OpenAI's shape.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::{json, Value};
use switchyard_loadtests::mock::{embedding_value, MOCK_TOOL_CALL_ID};
use switchyard_loadtests::RecordedRequest;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";
/// The model id as one path segment (`:` percent-encoded once on the wire).
const HAIKU_SEGMENT: &str = "anthropic.claude-3-haiku-20240307-v1%3A0";
/// The mock's `x-amzn-RequestId`.
const AWS_REQUEST_ID: &str = "3f0d6a52-6a7e-4b7d-9a51-0c1d2e3f4a5b";

/// A mock that checks SigV4 against the example credentials on every Bedrock route.
async fn aws_mock() -> MockUpstream {
    MockUpstream::start(MockConfig {
        aws_credentials: Some((AKID.into(), SECRET.into())),
        ..MockConfig::default()
    })
    .await
    .expect("mock upstream starts")
}

/// A bedrock deployment of `upstream_model` in group `group`, on mock route `route`, signing
/// with `secret`.
fn bedrock(
    mock: &MockUpstream,
    id: &str,
    group: &str,
    route: &str,
    upstream_model: &str,
    secret: &str,
) -> String {
    deployment(
        id,
        group,
        "bedrock",
        &mock.route_url(route),
        &format!(
            "upstream_model = \"{upstream_model}\"\naws_region = \"us-east-1\"\n\
             aws_access_key_id = \"{AKID}\"\naws_secret_access_key = \"{secret}\"\n\
             default_max_tokens = 512\ninput_cost_per_mtok = 3.0\n\
             cached_input_cost_per_mtok = 0.3\noutput_cost_per_mtok = 15.0"
        ),
    )
}

/// `haiku` on route `b`, alone.
fn single(mock: &MockUpstream) -> String {
    format!(
        "{}{}",
        settings("num_retries = 0", ""),
        bedrock(mock, "bedrock-main", "haiku", "b", HAIKU, SECRET)
    )
}

/// `haiku` (deployment `primary`, route `p`, signing with `primary_secret`) falling back to
/// `haiku-backup` (deployment `backup`, route `bk`).
fn with_fallback(mock: &MockUpstream, router_extra: &str, primary_secret: &str) -> String {
    format!(
        "{}{}{}\n[[fallbacks]]\nfrom = \"haiku\"\nto = [\"haiku-backup\"]\n",
        settings(router_extra, ""),
        bedrock(mock, "primary", "haiku", "p", HAIKU, primary_secret),
        bedrock(mock, "backup", "haiku-backup", "bk", HAIKU, SECRET),
    )
}

/// The request reached the mock signed with SigV4 for `bedrock` in `us-east-1`, as JSON.
fn assert_signed(seen: &RecordedRequest) {
    let auth = seen.header("authorization").expect("authorization header");
    let date = seen.header("x-amz-date").expect("x-amz-date header");
    assert_eq!(date.len(), 16, "x-amz-date is YYYYMMDDTHHMMSSZ: {date}");
    assert!(
        auth.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential={AKID}/{}/us-east-1/bedrock/aws4_request, SignedHeaders=",
            &date[..8]
        )),
        "{auth}"
    );
    assert!(auth.contains("x-amz-date"), "x-amz-date is signed: {auth}");
    assert!(!auth.contains(SECRET));
    assert_eq!(seen.header("x-amz-security-token"), None);
    assert_eq!(seen.header("content-type"), Some("application/json"));
}

fn weather_request(stream: bool) -> Value {
    json!({
        "model": "haiku",
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

#[actix_web::test]
async fn non_streamed_chat_is_signed_and_translated_both_ways() {
    let mock = aws_mock().await;
    mock.set_behavior(
        "b",
        Behavior::text("Hello.")
            .with_usage(1200, 40)
            .with_cached_tokens(1000),
    );
    let gw = start_gateway(&single(&mock));
    let r = chat(
        &gw,
        &json!({"model": "haiku", "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Say hello."}],
            "temperature": 0.2, "top_p": 0.9, "stop": ["END"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(
        r.body["id"],
        format!("chatcmpl-{AWS_REQUEST_ID}"),
        "id from x-amzn-RequestId"
    );
    assert_eq!(r.body["model"], HAIKU);
    assert_eq!(r.body["choices"][0]["message"]["content"], "Hello.");
    assert_eq!(r.body["choices"][0]["finish_reason"], "stop");
    // inputTokens 200 + cacheReadInputTokens 1000 (+ cacheWriteInputTokens 0).
    assert_eq!(r.body["usage"]["prompt_tokens"], 1200);
    assert_eq!(
        r.body["usage"]["prompt_tokens_details"]["cached_tokens"],
        1000
    );
    assert_eq!(r.body["usage"]["completion_tokens"], 40);
    assert_eq!(r.body["usage"]["total_tokens"], 1240);
    // 200 × $3 + 1000 × $0.30 + 40 × $15 per Mtok.
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.0015"));
    assert_eq!(r.header("x-switchyard-deployment"), Some("bedrock-main"));

    let seen = &mock.requests("b")[0];
    assert_eq!(seen.path, format!("/b/model/{HAIKU_SEGMENT}/converse"));
    assert_signed(seen);
    // System blocks apart, content as blocks, temperature kept and top_p dropped (Claude on
    // Bedrock refuses both), max_tokens from default_max_tokens; no model or stream in the body.
    assert_eq!(
        seen.json(),
        json!({
            "messages": [{"role": "user", "content": [{"text": "Say hello."}]}],
            "system": [{"text": "You are a terse assistant."}],
            "inferenceConfig": {"maxTokens": 512, "temperature": 0.2, "stopSequences": ["END"]}
        })
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[("deployment", "bedrock-main"), ("outcome", "success")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_cost_nanodollars_total",
            &[("deployment", "bedrock-main")]
        )
        .await,
        1_500_000.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn streamed_chat_decodes_event_stream_frames_into_openai_chunks() {
    let mock = aws_mock().await;
    mock.set_behavior(
        "b",
        Behavior::text("Hello there, friend.")
            .with_chunks(4)
            .with_usage(21, 4),
    );
    let gw = start_gateway(&single(&mock));
    for include_usage in [true, false] {
        let mut req = stream_request("haiku", include_usage);
        req["max_tokens"] = json!(100);
        let s = chat_stream(&gw, &req).await;
        assert_openai_stream(&s, include_usage);
        assert_eq!(s.content(), "Hello there, friend.");
        assert_eq!(s.header("x-switchyard-deployment"), Some("bedrock-main"));
        let chunks = s.chunks();
        assert_eq!(chunks[0]["id"], format!("chatcmpl-{AWS_REQUEST_ID}"));
        assert_eq!(chunks[0]["model"], HAIKU);
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert!(
            chunks
                .iter()
                .filter(|c| c["choices"][0]["delta"]["content"].is_string())
                .count()
                >= 4,
            "one chunk per contentBlockDelta: {}",
            s.raw
        );
        let finish = chunks
            .iter()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str());
        assert_eq!(finish, Some("stop"));
        if include_usage {
            assert_eq!(
                chunks.last().unwrap()["usage"],
                json!({"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25,
                       "prompt_tokens_details": {"cached_tokens": 0}})
            );
        }
    }
    let seen = mock.requests("b");
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.path, format!("/b/model/{HAIKU_SEGMENT}/converse-stream"));
        assert_signed(s);
        assert_eq!(s.json()["inferenceConfig"], json!({"maxTokens": 100}));
        assert_eq!(s.json().get("stream"), None, "the path chooses streaming");
    }
    // Both streams are billed from the metadata frame's usage: 2 × (21 × $3 + 4 × $15) / Mtok
    // = $0.000246.
    let text = metrics_until(&gw, |t| {
        metric_in(
            t,
            "gateway_cost_nanodollars_total",
            &[("deployment", "bedrock-main")],
        ) > 0.0
            && metric_in(
                t,
                "gateway_tokens_total",
                &[("deployment", "bedrock-main"), ("direction", "output")],
            ) == 8.0
    })
    .await;
    assert_eq!(
        metric_in(
            &text,
            "gateway_tokens_total",
            &[("deployment", "bedrock-main"), ("direction", "input")]
        ),
        42.0
    );
    assert_eq!(
        metric_in(
            &text,
            "gateway_cost_nanodollars_total",
            &[("deployment", "bedrock-main")]
        ),
        246_000.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn tool_calls_are_translated_non_streamed() {
    let mock = aws_mock().await;
    mock.set_behavior(
        "b",
        Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#).with_usage(30, 12),
    );
    let gw = start_gateway(&single(&mock));
    let r = chat(&gw, &weather_request(false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.body["choices"][0]["finish_reason"], "tool_calls");
    let msg = &r.body["choices"][0]["message"];
    assert_eq!(msg["content"], Value::Null);
    let calls = msg["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["id"], MOCK_TOOL_CALL_ID);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(r.body["usage"]["prompt_tokens"], 30);
    assert_eq!(r.body["usage"]["completion_tokens"], 12);

    let sent = mock.requests("b")[0].json();
    assert_eq!(
        sent["toolConfig"],
        json!({
            "tools": [{"toolSpec": {"name": "get_weather", "description": "Get current weather for a city",
                "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}],
            "toolChoice": {"auto": {}}
        })
    );
    assert_eq!(
        sent["system"],
        json!([{"text": "You are a terse assistant."}])
    );
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": [{"text": "What's the weather in Paris?"}]}])
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn tool_calls_are_translated_streamed() {
    let mock = aws_mock().await;
    mock.set_behavior(
        "b",
        Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#)
            .with_chunks(3)
            .with_usage(30, 12),
    );
    let gw = start_gateway(&single(&mock));
    let s = chat_stream(&gw, &weather_request(true)).await;
    assert_openai_stream(&s, true);
    let (id, args) = assert_tool_call_stream(&s, "get_weather");
    assert_eq!(id, MOCK_TOOL_CALL_ID);
    assert_eq!(args, r#"{"city":"Paris"}"#);
    let chunks = s.chunks();
    let fragments = chunks
        .iter()
        .skip(1)
        .filter(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
        .count();
    assert_eq!(fragments, 3, "one fragment per toolUse delta: {}", s.raw);
    assert_eq!(
        chunks.last().unwrap()["usage"]["total_tokens"],
        42,
        "{}",
        s.raw
    );
    let seen = &mock.requests("b")[0];
    assert_eq!(
        seen.path,
        format!("/b/model/{HAIKU_SEGMENT}/converse-stream")
    );
    assert_eq!(seen.json()["toolConfig"]["toolChoice"], json!({"auto": {}}));
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_wrong_secret_gets_the_mocks_403_and_falls_back_without_a_retry() {
    let mock = aws_mock().await;
    let gw = start_gateway(&with_fallback(
        &mock,
        "num_retries = 2",
        "wrong/K7MDENG+bPxRfiCYEXAMPLEKEY",
    ));
    let r = chat(&gw, &user_message("haiku", "Say hello.")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("backup"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("haiku-backup"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(
        mock.request_count("p"),
        1,
        "upstream_auth is not retried on the same deployment"
    );
    let rejected = &mock.requests("p")[0];
    assert_eq!(rejected.path, format!("/p/model/{HAIKU_SEGMENT}/converse"));
    assert!(rejected
        .header("authorization")
        .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")));
    assert_eq!(mock.request_count("bk"), 1);
    assert_signed(&mock.requests("bk")[0]);
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[("deployment", "primary"), ("outcome", "upstream_auth")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_deployment_alerts_total",
            &[("deployment", "primary"), ("reason", "upstream_auth")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_fallbacks_total",
            &[("from", "haiku"), ("to", "haiku-backup")]
        )
        .await,
        1.0
    );
    // The deployment is disabled: the next request goes straight to the fallback.
    let r = chat(&gw, &user_message("haiku", "Again.")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("backup"));
    assert_eq!(mock.request_count("p"), 1);
    gw.stop(true).await;

    // Without a fallback the client sees what the mock answered: a 403
    // InvalidSignatureException (the access key is known, the signature is not).
    let gw = start_gateway(&format!(
        "{}{}",
        settings("num_retries = 2", ""),
        bedrock(
            &mock,
            "solo",
            "haiku",
            "s",
            HAIKU,
            "wrong/K7MDENG+bPxRfiCYEXAMPLEKEY"
        ),
    ));
    let r = chat(&gw, &user_message("haiku", "Say hello.")).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.body["error"]["type"], "server_error");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("upstream_auth (HTTP 403)"), "{message}");
    assert!(
        !message.contains("wrong/"),
        "no secret in the message: {message}"
    );
    assert_eq!(mock.request_count("s"), 1, "not retried: {message}");
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_throttling_429_falls_back_to_the_second_group() {
    let mock = aws_mock().await;
    mock.set_behavior(
        "p",
        Behavior::error(ErrorPreset::RateLimited { retry_after: None }),
    );
    mock.set_behavior("bk", Behavior::text("From the backup.").with_usage(10, 5));
    let gw = start_gateway(&with_fallback(&mock, "num_retries = 2", SECRET));
    let r = chat(&gw, &user_message("haiku", "Say hello.")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["choices"][0]["message"]["content"],
        "From the backup."
    );
    assert_eq!(r.header("x-switchyard-deployment"), Some("backup"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("haiku-backup"));
    // Only the serving deployment is billed: 10 × $3 + 5 × $15 per Mtok.
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.000105"));
    assert_eq!(
        mock.request_count("p"),
        1,
        "no Retry-After: not the same deployment again"
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[("deployment", "primary"), ("outcome", "rate_limited")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_fallbacks_total",
            &[("from", "haiku"), ("to", "haiku-backup")]
        )
        .await,
        1.0
    );
    // The throttled deployment cools down: the next request skips it.
    let r = chat(&gw, &user_message("haiku", "Again.")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("backup"));
    assert_eq!(mock.request_count("p"), 1);
    assert_eq!(
        metric(
            &gw,
            "gateway_deployment_declines_total",
            &[("deployment", "primary"), ("reason", "cooling_down")]
        )
        .await,
        1.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn an_in_band_exception_before_content_is_retried_invisibly() {
    let mock = aws_mock().await;
    // Once on the primary: its retry (after backoff) serves the stream.
    mock.push_behaviors(
        "p",
        [Behavior::default().with_fault(Fault::InBandErrorBeforeContent)],
    );
    mock.set_behavior("p", Behavior::text("Hello from the primary."));
    mock.set_behavior("bk", Behavior::text("Hello from the backup."));
    let gw = start_gateway(&with_fallback(&mock, "num_retries = 1", SECRET));
    let s = chat_stream(&gw, &stream_request("haiku", true)).await;
    assert_openai_stream(&s, true);
    assert!(s.error_event().is_none(), "{}", s.raw);
    assert_eq!(s.content(), "Hello from the primary.");
    assert_eq!(s.header("x-switchyard-deployment"), Some("primary"));
    assert_eq!(s.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(mock.request_count("p"), 2);
    assert_eq!(mock.request_count("bk"), 0);
    // serviceUnavailableException is `overloaded`.
    assert_eq!(
        metric_until(
            &gw,
            "gateway_upstream_attempts_total",
            &[("deployment", "primary"), ("outcome", "overloaded")],
            1.0
        )
        .await,
        1.0
    );

    // Always on the primary: the fallback group serves, still without a trace of the error.
    mock.set_behavior(
        "p",
        Behavior::default().with_fault(Fault::InBandErrorBeforeContent),
    );
    mock.clear("p");
    let s = chat_stream(&gw, &stream_request("haiku", false)).await;
    assert_openai_stream(&s, false);
    assert!(s.error_event().is_none(), "{}", s.raw);
    assert_eq!(s.content(), "Hello from the backup.");
    assert_eq!(s.header("x-switchyard-deployment"), Some("backup"));
    assert_eq!(s.header("x-switchyard-model-group"), Some("haiku-backup"));
    assert_eq!(mock.request_count("p"), 2, "tried, then retried once");
    assert_eq!(mock.request_count("bk"), 1);
    assert_eq!(
        metric_until(
            &gw,
            "gateway_upstream_attempts_total",
            &[("deployment", "primary"), ("outcome", "overloaded")],
            3.0
        )
        .await,
        3.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_guardrail_intervention_is_a_content_filter_answer_not_a_fallback() {
    let mock = aws_mock().await;
    mock.set_behavior("p", Behavior::error(ErrorPreset::ContentFiltered));
    let gw = start_gateway(&with_fallback(&mock, "num_retries = 2", SECRET));
    let r = chat(
        &gw,
        &user_message("haiku", "Something the guardrail blocks."),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.body["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(
        r.body["choices"][0]["message"]["content"],
        "Sorry, the model cannot answer this question."
    );
    assert_eq!(r.header("x-switchyard-deployment"), Some("primary"));
    assert_eq!(mock.request_count("p"), 1);
    assert_eq!(mock.request_count("bk"), 0);

    let s = chat_stream(&gw, &stream_request("haiku", true)).await;
    assert_openai_stream(&s, true);
    assert_eq!(s.content(), "Sorry, the model cannot answer this question.");
    let finish = s
        .chunks()
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("content_filter"));
    assert_eq!(mock.request_count("bk"), 0);
    gw.stop(true).await;
}

fn embeddings_config(mock: &MockUpstream) -> String {
    format!(
        "{}{}{}",
        settings("num_retries = 0", ""),
        bedrock(
            mock,
            "titan",
            "titan-embed",
            "e",
            "amazon.titan-embed-text-v2:0",
            SECRET
        ),
        bedrock(
            mock,
            "cohere-bedrock",
            "cohere-embed",
            "ce",
            "cohere.embed-english-v3",
            SECRET
        ),
    )
}

#[actix_web::test]
async fn titan_embeddings_go_through_a_signed_invoke_model() {
    let mock = aws_mock().await;
    mock.set_behavior("e", Behavior::default().with_usage(7, 0));
    let gw = start_gateway(&embeddings_config(&mock));
    let r = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "titan-embed", "input": "The food was delicious.", "dimensions": 256}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["object"], "list");
    assert_eq!(r.body["model"], "amazon.titan-embed-text-v2:0");
    let data = r.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["object"], "embedding");
    assert_eq!(data[0]["index"], 0);
    let v: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(v.len(), 256);
    for (i, x) in v.iter().enumerate() {
        assert_eq!(*x, f64::from(embedding_value(0, i)), "value {i}");
    }
    assert_eq!(
        r.body["usage"],
        json!({"prompt_tokens": 7, "total_tokens": 7})
    );
    // 7 × $3 per Mtok.
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.000021"));
    assert_eq!(r.header("x-switchyard-deployment"), Some("titan"));

    let seen = &mock.requests("e")[0];
    assert_eq!(seen.path, "/e/model/amazon.titan-embed-text-v2%3A0/invoke");
    assert_signed(seen);
    assert_eq!(
        seen.json(),
        json!({"inputText": "The food was delicious.", "dimensions": 256, "normalize": true})
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn cohere_embeddings_on_bedrock_take_several_inputs() {
    let mock = aws_mock().await;
    mock.set_behavior(
        "ce",
        Behavior::default()
            .with_usage(11, 0)
            .with_embedding_dims(16),
    );
    let gw = start_gateway(&embeddings_config(&mock));
    let r = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "cohere-embed", "input": ["first text", "second text"]}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let data = r.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (k, item) in data.iter().enumerate() {
        assert_eq!(item["index"], k as u64);
        let v = item["embedding"].as_array().unwrap();
        assert_eq!(v.len(), 16);
        for (i, x) in v.iter().enumerate() {
            assert_eq!(x.as_f64().unwrap(), f64::from(embedding_value(k, i)));
        }
    }
    // The Cohere body on Bedrock carries no usage: x-amzn-bedrock-input-token-count does.
    assert_eq!(r.body["usage"]["prompt_tokens"], 11);
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.000033"));

    let seen = &mock.requests("ce")[0];
    assert_eq!(seen.path, "/ce/model/cohere.embed-english-v3/invoke");
    assert_signed(seen);
    assert_eq!(
        seen.json(),
        json!({"texts": ["first text", "second text"], "input_type": "search_document",
               "embedding_types": ["float"]})
    );
    gw.stop(true).await;
}
