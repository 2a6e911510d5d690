//! Azure OpenAI and the OpenAI-compatible presets (mistral, groq, xai, fireworks, deepseek,
//! openrouter) end to end: the upstream URL, auth header and scrubbed body each provider gets,
//! Azure's content-filter annotations and errors, and fallbacks when one of them fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::{json, Value};

const KEY: &str = "sk-upstream";
const API_VERSION: &str = "2024-10-21";

/// A mock that checks every provider's auth header against [`KEY`].
async fn keyed_mock() -> MockUpstream {
    MockUpstream::start(MockConfig {
        require_api_key: Some(KEY.to_owned()),
        ..MockConfig::default()
    })
    .await
    .expect("mock upstream starts")
}

/// The api_base of a preset deployment on a mock route (the mock's OpenAI format).
fn preset_base(mock: &MockUpstream, route: &str) -> String {
    format!("{}/v1", mock.route_url(route))
}

fn azure_dated(id: &str, group: &str, mock: &MockUpstream, route: &str) -> String {
    deployment(
        id,
        group,
        "azure",
        &mock.route_url(route),
        &format!(
            "upstream_model = \"gpt-4o-prod\"\napi_key = \"{KEY}\"\napi_version = \"{API_VERSION}\"\n\
             input_cost_per_mtok = 2.5\noutput_cost_per_mtok = 10.0"
        ),
    )
}

fn azure_v1_bearer(id: &str, group: &str, mock: &MockUpstream, route: &str) -> String {
    deployment(
        id,
        group,
        "azure",
        &mock.route_url(route),
        &format!("upstream_model = \"gpt-4o\"\napi_key = \"{KEY}\"\nazure_auth = \"bearer\""),
    )
}

fn preset(
    id: &str,
    group: &str,
    provider: &str,
    mock: &MockUpstream,
    route: &str,
    model: &str,
) -> String {
    deployment(
        id,
        group,
        provider,
        &preset_base(mock, route),
        &format!(
            "upstream_model = \"{model}\"\napi_key = \"{KEY}\"\n\
             input_cost_per_mtok = 1.0\noutput_cost_per_mtok = 2.0"
        ),
    )
}

fn weather_request(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
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

fn outcome<'a>(deployment: &'a str, outcome: &'a str) -> [(&'a str, &'a str); 2] {
    [("deployment", deployment), ("outcome", outcome)]
}

/// The tool call a complete non-stream answer carries, checked against `get_weather(Paris)`.
fn assert_weather_call(body: &Value) {
    assert_openai_completion(body);
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls", "{body}");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_mock0001");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
}

/// The tool call a stream carries, reassembled from its deltas.
fn assert_weather_call_streamed(s: &StreamReply, include_usage: bool) {
    assert_openai_stream(s, include_usage);
    let chunks = s.chunks();
    let first_call = chunks
        .iter()
        .find_map(|c| c["choices"][0]["delta"]["tool_calls"][0].as_object())
        .expect("a tool call delta");
    assert_eq!(first_call["index"], 0);
    assert_eq!(first_call["id"], "call_mock0001");
    assert_eq!(first_call["function"]["name"], "get_weather");
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
}

#[actix_web::test]
async fn azure_dated_api_uses_the_deployment_path_and_the_api_key_header() {
    let mock = keyed_mock().await;
    mock.set_behavior(
        "az",
        Behavior::text("Hello.")
            .with_model("gpt-4o-2024-08-06")
            .with_usage(1000, 200),
    );
    let gw = start_gateway(&format!(
        "{}{}",
        settings("num_retries = 0", ""),
        azure_dated("az-1", "gpt-4o", &mock, "az")
    ));
    let req = json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Say hello."}], "temperature": 0.2, "stop": ["END"], "user": "u-123"});
    let r = chat(&gw, &req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.body["model"], "gpt-4o-2024-08-06");
    assert_eq!(r.body["choices"][0]["message"]["content"], "Hello.");
    assert_eq!(r.body["choices"][0]["finish_reason"], "stop");
    assert_eq!(r.body["usage"]["prompt_tokens"], 1000);
    assert_eq!(r.body["usage"]["completion_tokens"], 200);
    assert_eq!(r.header("x-switchyard-deployment"), Some("az-1"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("gpt-4o"));
    // 1000 × $2.50/M + 200 × $10/M.
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.0045"));

    let seen = &mock.requests("az")[0];
    assert_eq!(
        seen.path,
        format!("/az/openai/deployments/gpt-4o-prod/chat/completions?api-version={API_VERSION}")
    );
    assert_eq!(seen.header("api-key"), Some(KEY));
    assert_eq!(seen.header("authorization"), None);
    let mut want = req.clone();
    want["model"] = json!("gpt-4o-prod");
    assert_eq!(seen.json(), want, "Azure gets the OpenAI body as is");

    assert_eq!(
        metric(
            &gw,
            "gateway_tokens_total",
            &[("deployment", "az-1"), ("direction", "input")]
        )
        .await,
        1000.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[
                ("deployment", "az-1"),
                ("provider", "azure"),
                ("outcome", "success")
            ]
        )
        .await,
        1.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn azure_streams_drop_the_prompt_filter_chunk_on_both_url_forms() {
    let mock = keyed_mock().await;
    for route in ["azdated", "azv1"] {
        mock.set_behavior(
            route,
            Behavior::text("Hello there, friend.")
                .with_chunks(4)
                .with_usage(21, 4),
        );
    }
    let gw = start_gateway(&format!(
        "{}{}{}",
        settings("num_retries = 0", ""),
        azure_dated("az-dated", "dated", &mock, "azdated"),
        azure_v1_bearer("az-v1", "v1", &mock, "azv1"),
    ));
    for group in ["dated", "v1"] {
        for include_usage in [true, false] {
            let s = chat_stream(&gw, &stream_request(group, include_usage)).await;
            assert_openai_stream(&s, include_usage);
            assert_eq!(s.content(), "Hello there, friend.", "{group}");
            assert!(
                !s.raw.contains("prompt_filter_results"),
                "Azure's annotation chunk is not relayed: {}",
                s.raw
            );
            assert_eq!(
                s.header("x-switchyard-deployment"),
                Some(&*format!("az-{group}"))
            );
            if include_usage {
                let last = s.chunks().last().unwrap()["usage"].clone();
                assert_eq!(last["prompt_tokens"], 21, "{last}");
                assert_eq!(last["completion_tokens"], 4, "{last}");
            }
        }
    }

    let dated = &mock.requests("azdated")[0];
    assert_eq!(
        dated.path,
        format!(
            "/azdated/openai/deployments/gpt-4o-prod/chat/completions?api-version={API_VERSION}"
        )
    );
    assert_eq!(dated.header("api-key"), Some(KEY));
    let v1 = &mock.requests("azv1")[0];
    assert_eq!(v1.path, "/azv1/openai/v1/chat/completions");
    assert_eq!(v1.header("authorization"), Some(&*format!("Bearer {KEY}")));
    assert_eq!(v1.header("api-key"), None);
    for seen in [dated, v1] {
        let body = seen.json();
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
    }
    assert_eq!(
        v1.json()["model"],
        "gpt-4o",
        "the v1 API names the model in the body"
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn azure_tool_calls_non_streamed_and_streamed() {
    let mock = keyed_mock().await;
    mock.set_behavior(
        "az",
        Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#).with_chunks(3),
    );
    let gw = start_gateway(&format!(
        "{}{}",
        settings("num_retries = 0", ""),
        azure_v1_bearer("az-1", "gpt-4o", &mock, "az")
    ));
    let r = chat(&gw, &weather_request("gpt-4o", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_weather_call(&r.body);

    let s = chat_stream(&gw, &weather_request("gpt-4o", true)).await;
    assert_weather_call_streamed(&s, true);
    assert!(!s.raw.contains("prompt_filter_results"), "{}", s.raw);

    for seen in mock.requests("az") {
        assert_eq!(seen.path, "/az/openai/v1/chat/completions");
        let body = seen.json();
        assert_eq!(body["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(body["tool_choice"], "auto");
    }
    gw.stop(true).await;
}

/// `gpt-4o` on Azure (route `cf`, content filtered) with a default chain to `backup` (route
/// `bk`) and, if `policy_chain`, a `content_policy` chain to `safe` (route `safe`).
fn content_filter_config(mock: &MockUpstream, policy_chain: bool) -> String {
    let chain = if policy_chain {
        "\n[[fallbacks]]\nfrom = \"gpt-4o\"\nto = [\"safe\"]\non = \"content_policy\"\n"
    } else {
        ""
    };
    format!(
        "{}{}{}{}\n[[fallbacks]]\nfrom = \"gpt-4o\"\nto = [\"backup\"]\n{chain}",
        settings("num_retries = 2", ""),
        azure_dated("az-1", "gpt-4o", mock, "cf"),
        azure_v1_bearer("bk-1", "backup", mock, "bk"),
        azure_v1_bearer("safe-1", "safe", mock, "safe"),
    )
}

#[actix_web::test]
async fn azure_content_filter_is_a_400_unless_a_content_policy_chain_serves_it() {
    let mock = keyed_mock().await;
    mock.set_behavior("cf", Behavior::error(ErrorPreset::ContentFiltered));
    mock.set_behavior("bk", Behavior::text("from backup"));
    mock.set_behavior("safe", Behavior::text("from the safe group"));

    // No content_policy chain: the refusal goes back as a 400, the default chain is not used and
    // the deployment is not retried.
    let gw = start_gateway(&content_filter_config(&mock, false));
    for stream in [false, true] {
        let mut req = user_message("gpt-4o", "something filtered");
        req["stream"] = json!(stream);
        let r = chat(&gw, &req).await;
        assert_eq!(r.status, 400, "stream {stream}: {}", r.body);
        let err = &r.body["error"];
        assert_eq!(err["type"], "invalid_request_error", "{}", r.body);
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            r.body
        );
        assert_eq!(err["code"], "content_policy_violation", "{}", r.body);
    }
    assert_eq!(
        mock.request_count("cf"),
        2,
        "one attempt per request, no retry"
    );
    assert_eq!(
        mock.request_count("bk"),
        0,
        "the default chain is not for refusals"
    );
    assert_eq!(mock.request_count("safe"), 0);
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &outcome("az-1", "content_policy")
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(&gw, "gateway_breaker_state", &[("deployment", "az-1")]).await,
        0.0
    );
    gw.stop(true).await;

    // With one: the safe group serves, non-streamed and streamed.
    mock.clear("cf");
    let gw = start_gateway(&content_filter_config(&mock, true));
    let r = chat(&gw, &user_message("gpt-4o", "something filtered")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(
        r.body["choices"][0]["message"]["content"],
        "from the safe group"
    );
    assert_eq!(r.header("x-switchyard-deployment"), Some("safe-1"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("safe"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("2"));
    let s = chat_stream(&gw, &stream_request("gpt-4o", true)).await;
    assert_openai_stream(&s, true);
    assert_eq!(s.content(), "from the safe group");
    assert_eq!(s.header("x-switchyard-deployment"), Some("safe-1"));
    assert_eq!(mock.request_count("cf"), 2);
    assert_eq!(mock.request_count("bk"), 0);
    assert_eq!(mock.request_count("safe"), 2);
    assert_eq!(
        metric(
            &gw,
            "gateway_fallbacks_total",
            &[("from", "gpt-4o"), ("to", "safe")]
        )
        .await,
        2.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn an_azure_rate_limit_falls_back_and_cools_the_deployment() {
    let mock = keyed_mock().await;
    mock.set_behavior(
        "az",
        Behavior::error(ErrorPreset::RateLimited {
            retry_after: Some(30),
        }),
    );
    mock.set_behavior("bk", Behavior::text("from backup").with_usage(10, 5));
    let gw = start_gateway(&format!(
        "{}{}{}\n[[fallbacks]]\nfrom = \"gpt-4o\"\nto = [\"backup\"]\n",
        settings("num_retries = 2", ""),
        azure_dated("az-1", "gpt-4o", &mock, "az"),
        preset("ds-1", "backup", "deepseek", &mock, "bk", "deepseek-chat"),
    ));
    let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.body["choices"][0]["message"]["content"], "from backup");
    assert_eq!(r.header("x-switchyard-deployment"), Some("ds-1"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("backup"));
    // 10 × $1/M + 5 × $2/M.
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.00002"));
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &outcome("az-1", "rate_limited")
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_fallbacks_total",
            &[("from", "gpt-4o"), ("to", "backup")]
        )
        .await,
        1.0
    );

    // Retry-After 30 s: the deployment cools down, the next request (a stream) goes straight to
    // the fallback and Azure is not asked again.
    let s = chat_stream(&gw, &stream_request("gpt-4o", true)).await;
    assert_openai_stream(&s, true);
    assert_eq!(s.content(), "from backup");
    assert_eq!(s.header("x-switchyard-deployment"), Some("ds-1"));
    assert_eq!(mock.request_count("az"), 1);
    assert_eq!(mock.request_count("bk"), 2);
    assert!(
        metric(
            &gw,
            "gateway_deployment_declines_total",
            &[("deployment", "az-1"), ("reason", "cooling_down")]
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(&gw, "gateway_breaker_state", &[("deployment", "az-1")]).await,
        0.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn mistral_rewrites_tool_call_ids_consistently_and_scrubs_the_body() {
    let mock = keyed_mock().await;
    mock.set_behavior("m", Behavior::text("It is 18C.").with_usage(30, 6));
    let gw = start_gateway(&format!(
        "{}{}",
        settings("num_retries = 0", ""),
        preset(
            "mi-1",
            "mistral-large",
            "mistral",
            &mock,
            "m",
            "mistral-large-latest"
        ),
    ));
    let call = |id: &str, city: &str| {
        json!({"id": id, "type": "function",
               "function": {"name": "get_weather", "arguments": format!("{{\"city\":\"{city}\"}}")}})
    };
    let req = json!({
        "model": "mistral-large",
        "messages": [
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": "Weather in Paris and Rome?", "name": "bob"},
            {"role": "assistant", "content": null, "tool_calls": [
                call("call_abc123XYZ_paris", "Paris"), call("call_abc123XYZ_rome", "Rome")]},
            {"role": "tool", "tool_call_id": "call_abc123XYZ_paris", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_abc123XYZ_rome", "content": "21C"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": "required",
        "seed": 42,
        "max_completion_tokens": 100,
        "user": "u-123",
        "logit_bias": {"50256": -100},
        "service_tier": "auto",
        "temperature": 0.1
    });
    let r = chat(&gw, &req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.body["choices"][0]["message"]["content"], "It is 18C.");
    // 30 × $1/M + 6 × $2/M.
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.000042"));

    let seen = &mock.requests("m")[0];
    assert_eq!(seen.path, "/m/v1/chat/completions");
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("Bearer {KEY}"))
    );
    let sent = seen.json();
    let keys: Vec<&str> = sent
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for dropped in [
        "seed",
        "user",
        "logit_bias",
        "service_tier",
        "max_completion_tokens",
    ] {
        assert!(!keys.contains(&dropped), "{dropped} dropped: {sent}");
    }
    assert_eq!(sent["model"], "mistral-large-latest");
    assert_eq!(sent["random_seed"], 42);
    assert_eq!(sent["max_tokens"], 100);
    assert_eq!(sent["temperature"], 0.1);
    assert_eq!(sent["tool_choice"], "any");
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 5, "{sent}");
    assert_eq!(
        messages[0],
        json!({"role": "system", "content": "Be terse."})
    );
    assert_eq!(
        messages[1],
        json!({"role": "user", "content": "Weather in Paris and Rome?"})
    );
    let ids: Vec<&str> = messages[2]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    for id in &ids {
        assert!(
            id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "Mistral wants 9 alphanumerics: {id}"
        );
    }
    assert_ne!(ids[0], ids[1], "distinct calls keep distinct ids");
    assert_eq!(
        messages[3]["tool_call_id"], ids[0],
        "the tool answer still matches its call"
    );
    assert_eq!(messages[4]["tool_call_id"], ids[1]);
    assert_eq!(
        messages[2]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );

    // The same conversation sent again gets the same ids (a replay stays consistent).
    let r = chat(&gw, &req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let again = mock.requests("m")[1].json();
    assert_eq!(again["messages"], sent["messages"]);
    gw.stop(true).await;
}

/// A stream as Mistral sends it: it takes no `stream_options`, and always puts `usage` on its
/// finish chunk (no separate `choices: []` usage chunk).
const MISTRAL_STREAM: &str = concat!(
    "data: {\"id\":\"cmpl-e5cc70bb28c444948073e77776eb30ef\",\"object\":\"chat.completion.chunk\",\"created\":1702256327,\"model\":\"mistral-small-latest\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"cmpl-e5cc70bb28c444948073e77776eb30ef\",\"object\":\"chat.completion.chunk\",\"created\":1702256327,\"model\":\"mistral-small-latest\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Bonjour\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"cmpl-e5cc70bb28c444948073e77776eb30ef\",\"object\":\"chat.completion.chunk\",\"created\":1702256327,\"model\":\"mistral-small-latest\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" le monde.\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":10,\"total_tokens\":16,\"completion_tokens\":6}}\n\n",
    "data: [DONE]\n\n",
);

#[actix_web::test]
async fn mistral_tool_calls_non_streamed_and_streamed() {
    let mock = keyed_mock().await;
    mock.set_behavior(
        "m",
        Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#).with_chunks(3),
    );
    let gw = start_gateway(&format!(
        "{}{}",
        settings("num_retries = 0", ""),
        preset(
            "mi-1",
            "mistral-large",
            "mistral",
            &mock,
            "m",
            "mistral-large-latest"
        ),
    ));
    let r = chat(&gw, &weather_request("mistral-large", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_weather_call(&r.body);
    let mut req = weather_request("mistral-large", true);
    req["stream_options"] = json!({"include_usage": false});
    let s = chat_stream(&gw, &req).await;
    assert_weather_call_streamed(&s, false);

    let sent = mock.requests("m")[1].json();
    assert_eq!(sent["stream"], true);
    assert!(
        sent.get("stream_options").is_none(),
        "Mistral refuses stream_options: {sent}"
    );
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(sent["tool_choice"], "auto");
    gw.stop(true).await;
}

/// Mistral cannot be asked for a usage chunk, so the gateway must shape Mistral's stream (usage
/// on the finish chunk) into the OpenAI contract itself: `usage: null` on every chunk and a
/// `choices: []` usage chunk when the client asked for usage, no `usage` at all otherwise.
#[actix_web::test]
async fn a_mistral_stream_follows_the_openai_usage_contract() {
    let mock = keyed_mock().await;
    mock.set_behavior(
        "m",
        Behavior::error(ErrorPreset::Custom {
            status: 200,
            body: MISTRAL_STREAM.to_owned(),
            headers: vec![("content-type".to_owned(), "text/event-stream".to_owned())],
        }),
    );
    let gw = start_gateway(&format!(
        "{}{}",
        settings("num_retries = 0", ""),
        preset(
            "mi-1",
            "mistral-small",
            "mistral",
            &mock,
            "m",
            "mistral-small-latest"
        ),
    ));
    let mut streams = Vec::new();
    for include_usage in [true, false] {
        let s = chat_stream(&gw, &stream_request("mistral-small", include_usage)).await;
        assert_eq!(s.status, 200, "{}", s.raw);
        assert_eq!(s.content(), "Bonjour le monde.", "{}", s.raw);
        assert_eq!(s.header("x-switchyard-deployment"), Some("mi-1"));
        streams.push((include_usage, s));
    }
    // Billed from the usage Mistral sent on its finish chunk, 6 completion tokens per stream.
    assert_eq!(
        metric(
            &gw,
            "gateway_tokens_total",
            &[("deployment", "mi-1"), ("direction", "output")]
        )
        .await,
        12.0
    );
    for (include_usage, s) in &streams {
        assert_openai_stream(s, *include_usage);
        if *include_usage {
            let usage = &s.chunks().last().unwrap()["usage"];
            assert_eq!(usage["prompt_tokens"], 10, "{}", s.raw);
            assert_eq!(usage["completion_tokens"], 6, "{}", s.raw);
        }
    }
    gw.stop(true).await;
}

#[actix_web::test]
async fn groq_refuses_n_and_drops_logprobs_and_an_overloaded_groq_falls_back() {
    let mock = keyed_mock().await;
    mock.set_behavior("g", Behavior::text("fast answer").with_usage(12, 3));
    mock.set_behavior("sick", Behavior::error(ErrorPreset::Overloaded));
    mock.set_behavior("bk", Behavior::text("from openrouter"));
    let gw = start_gateway(&format!(
        "{}{}{}{}\n[[fallbacks]]\nfrom = \"llama-sick\"\nto = [\"llama-backup\"]\n",
        settings("num_retries = 0", ""),
        preset(
            "groq-1",
            "llama",
            "groq",
            &mock,
            "g",
            "llama-3.3-70b-versatile"
        ),
        preset(
            "groq-sick",
            "llama-sick",
            "groq",
            &mock,
            "sick",
            "llama-3.3-70b-versatile"
        ),
        preset(
            "or-1",
            "llama-backup",
            "openrouter",
            &mock,
            "bk",
            "meta-llama/llama-3.3-70b-instruct"
        ),
    ));

    let mut req = user_message("llama", "hi");
    req["n"] = json!(2);
    let r = chat(&gw, &req).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["param"], "n", "{}", r.body);
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert_eq!(mock.request_count("g"), 0, "nothing sent upstream");

    let mut req = user_message("llama", "hi");
    req["logprobs"] = json!(true);
    req["top_logprobs"] = json!(2);
    req["n"] = json!(1);
    req["temperature"] = json!(0);
    let r = chat(&gw, &req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.body["choices"][0]["message"]["content"], "fast answer");
    let seen = &mock.requests("g")[0];
    assert_eq!(seen.path, "/g/v1/chat/completions");
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("Bearer {KEY}"))
    );
    assert_eq!(
        seen.json(),
        json!({"model": "llama-3.3-70b-versatile", "messages": [{"role": "user", "content": "hi"}],
               "n": 1, "temperature": 0})
    );

    let r = chat(&gw, &user_message("llama-sick", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["choices"][0]["message"]["content"],
        "from openrouter"
    );
    assert_eq!(r.header("x-switchyard-deployment"), Some("or-1"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("llama-backup"));
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[
                ("deployment", "groq-sick"),
                ("provider", "groq"),
                ("outcome", "overloaded")
            ]
        )
        .await,
        1.0
    );
    assert_eq!(
        mock.requests("bk")[0].json()["model"],
        "meta-llama/llama-3.3-70b-instruct"
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn xai_and_fireworks_rewrite_and_deepseek_and_openrouter_pass_through() {
    let mock = keyed_mock().await;
    for route in ["x4", "x3", "fw", "ds", "or"] {
        mock.set_behavior(route, Behavior::text("Hello there, friend.").with_chunks(4));
    }
    let gw = start_gateway(&format!(
        "{}{}{}{}{}{}",
        settings("num_retries = 0", ""),
        preset("grok-4", "grok-4", "xai", &mock, "x4", "grok-4"),
        preset("grok-3", "grok-3", "xai", &mock, "x3", "grok-3"),
        preset(
            "fw-1",
            "llama-fw",
            "fireworks",
            &mock,
            "fw",
            "llama-v3p1-8b-instruct"
        ),
        preset("ds-1", "deepseek", "deepseek", &mock, "ds", "deepseek-chat"),
        preset(
            "or-1",
            "openrouter",
            "openrouter",
            &mock,
            "or",
            "anthropic/claude-sonnet-4.5"
        ),
    ));
    let body = |model: &str| {
        json!({"model": model, "messages": [{"role": "user", "content": "Say hello."}],
               "stop": ["END"], "temperature": 0.2, "user": "u-1"})
    };
    for (group, route) in [
        ("grok-4", "x4"),
        ("grok-3", "x3"),
        ("llama-fw", "fw"),
        ("deepseek", "ds"),
        ("openrouter", "or"),
    ] {
        let r = chat(&gw, &body(group)).await;
        assert_eq!(r.status, 200, "{group}: {}", r.body);
        assert_openai_completion(&r.body);
        assert_eq!(
            r.body["choices"][0]["message"]["content"],
            "Hello there, friend."
        );
        let seen = &mock.requests(route)[0];
        assert_eq!(
            seen.path,
            format!("/{route}/v1/chat/completions"),
            "{group}"
        );
        assert_eq!(
            seen.header("authorization"),
            Some(&*format!("Bearer {KEY}"))
        );

        let s = chat_stream(&gw, &stream_request(group, true)).await;
        assert_openai_stream(&s, true);
        assert_eq!(s.content(), "Hello there, friend.", "{group}");
        assert_eq!(
            mock.requests(route)[1].json()["stream_options"],
            json!({"include_usage": true})
        );
    }

    let sent = |route: &str| mock.requests(route)[0].json();
    let mut grok4 = body("grok-4");
    grok4.as_object_mut().unwrap().remove("stop");
    assert_eq!(sent("x4"), grok4, "grok-4 refuses stop");
    assert_eq!(sent("x3"), body("grok-3"), "grok-3 keeps stop");
    assert_eq!(
        sent("fw"),
        body("accounts/fireworks/models/llama-v3p1-8b-instruct")
    );
    assert_eq!(sent("ds"), body("deepseek-chat"));
    assert_eq!(sent("or"), body("anthropic/claude-sonnet-4.5"));
    // Pass-through presets send the client's bytes with only the model replaced.
    let raw = String::from_utf8(mock.requests("or")[0].body.to_vec()).unwrap();
    assert_eq!(
        raw,
        serde_json::to_string(&body("openrouter"))
            .unwrap()
            .replace("\"openrouter\"", "\"anthropic/claude-sonnet-4.5\"")
    );
    gw.stop(true).await;
}
