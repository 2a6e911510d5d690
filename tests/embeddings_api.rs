//! `POST /v1/embeddings` end to end through `openai`, `azure` (dated deployment URL) and `voyage`
//! deployments on the mock upstream: string and array inputs, `dimensions`, base64 encoding,
//! usage and cost, validation, fallback and cooldown, retries, the breaker, rpm limits, endpoint
//! mismatches and malformed upstream bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use switchyard_loadtests::mock::embedding_value;

const EMBED: &str = "/v1/embeddings";

async fn embed(gw: &Gateway, body: &Value) -> Answer {
    post(gw, EMBED, body, &[]).await
}

fn voyage_base(mock: &MockUpstream, route: &str) -> String {
    format!("{}/voyage/v1", mock.route_url(route))
}

/// The float vectors of a float answer.
fn floats(body: &Value) -> Vec<Vec<f32>> {
    body["data"]
        .as_array()
        .expect("data is an array")
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .expect("a float embedding")
                .iter()
                .map(|x| x.as_f64().expect("a number") as f32)
                .collect()
        })
        .collect()
}

/// The vectors of a base64 answer, decoded as little-endian f32.
fn decoded(body: &Value) -> Vec<Vec<f32>> {
    body["data"]
        .as_array()
        .expect("data is an array")
        .iter()
        .map(|d| {
            let bytes = BASE64
                .decode(d["embedding"].as_str().expect("a base64 string"))
                .expect("valid base64");
            assert_eq!(bytes.len() % 4, 0, "whole f32s");
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        })
        .collect()
}

/// What the mock sends for `inputs` inputs of length `dims`.
fn expected(inputs: usize, dims: usize) -> Vec<Vec<f32>> {
    (0..inputs)
        .map(|k| (0..dims).map(|i| embedding_value(k, i)).collect())
        .collect()
}

/// OpenAI's list shape: `object`, one item per input with `index` in order, `model`, usage.
fn assert_list(body: &Value, inputs: usize, model: &str, prompt_tokens: u64) {
    assert_eq!(body["object"], "list", "{body}");
    assert_eq!(body["model"], model, "{body}");
    let data = body["data"].as_array().expect("data is an array");
    assert_eq!(data.len(), inputs, "one vector per input: {body}");
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i as u64, "index kept in order");
    }
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens})
    );
}

fn openai_config(mock: &MockUpstream) -> String {
    format!(
        "{FAST_ROUTER}{}",
        deployment(
            "oa",
            "embed-small",
            "openai",
            &openai_base(mock, "o"),
            "upstream_model = \"text-embedding-3-small\"\napi_key = \"sk-upstream\"\ninput_cost_per_mtok = 2.0",
        )
    )
}

#[actix_web::test]
async fn openai_embeddings_of_a_string_and_an_array_with_dimensions_and_base64() {
    let mock = mock().await;
    mock.set_behavior("o", Behavior::default().with_usage(50, 0));
    let gw = start_gateway(&openai_config(&mock));

    // A string: one vector of the default length (8).
    let r = embed(&gw, &json!({"model": "embed-small", "input": "hello"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_list(&r.body, 1, "text-embedding-3-small", 50);
    assert_eq!(floats(&r.body), expected(1, 8));
    // 50 tokens × $2 / Mtok = $0.0001.
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.0001"));
    assert_eq!(r.header("x-switchyard-deployment"), Some("oa"));
    let seen = &mock.requests("o")[0];
    assert_eq!(seen.path, "/o/v1/embeddings");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-upstream"));
    assert_eq!(
        seen.json(),
        json!({"model": "text-embedding-3-small", "input": ["hello"], "encoding_format": "float"})
    );

    // An array with dimensions: three vectors, in order, of the asked length.
    let req =
        json!({"model": "embed-small", "input": ["a", "b", "c"], "dimensions": 16, "user": "u-1"});
    let r = embed(&gw, &req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_list(&r.body, 3, "text-embedding-3-small", 50);
    let float_answer = floats(&r.body);
    assert_eq!(float_answer, expected(3, 16));
    assert_eq!(
        mock.requests("o")[1].json(),
        json!({"model": "text-embedding-3-small", "input": ["a", "b", "c"], "dimensions": 16,
               "encoding_format": "float", "user": "u-1"})
    );

    // Strings with JSON escapes and non-ASCII text reach the upstream unchanged.
    let tricky = json!([
        "quote \" and \\ slash",
        "line\nbreak\ttab",
        "héllo 👋 \u{1}"
    ]);
    let r = embed(&gw, &json!({"model": "embed-small", "input": tricky})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_list(&r.body, 3, "text-embedding-3-small", 50);
    assert_eq!(mock.requests("o")[2].json()["input"], tricky);

    // The same request in base64: the gateway asks upstream for floats and encodes them itself.
    let mut b64 = req.clone();
    b64["encoding_format"] = json!("base64");
    let r = embed(&gw, &b64).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_list(&r.body, 3, "text-embedding-3-small", 50);
    assert_eq!(decoded(&r.body), float_answer);
    assert_eq!(mock.requests("o")[3].json()["encoding_format"], "float");

    // Four answers of 50 tokens at $2 / Mtok: 400,000 nanodollars.
    assert_eq!(
        metric(
            &gw,
            "gateway_cost_nanodollars_total",
            &[("deployment", "oa")]
        )
        .await,
        400_000.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_tokens_total",
            &[("deployment", "oa"), ("direction", "input")]
        )
        .await,
        200.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn azure_embeddings_go_to_the_dated_deployment_url() {
    let mock = mock().await;
    mock.set_behavior("az", Behavior::default().with_usage(12, 0));
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}",
        deployment(
            "azure-emb",
            "embed-small",
            "azure",
            &mock.route_url("az"),
            "upstream_model = \"emb-3\"\napi_key = \"az-key\"\napi_version = \"2024-10-21\"\ninput_cost_per_mtok = 0.5",
        )
    ));
    let req = json!({"model": "embed-small", "input": ["x", "y"], "dimensions": 4});
    let r = embed(&gw, &req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_list(&r.body, 2, "emb-3", 12);
    let float_answer = floats(&r.body);
    assert_eq!(float_answer, expected(2, 4));
    // 12 tokens × $0.5 / Mtok = $0.000006.
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.000006"));

    let seen = &mock.requests("az")[0];
    assert_eq!(
        seen.path,
        "/az/openai/deployments/emb-3/embeddings?api-version=2024-10-21"
    );
    assert_eq!(seen.header("api-key"), Some("az-key"));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(
        seen.json(),
        json!({"model": "emb-3", "input": ["x", "y"], "dimensions": 4, "encoding_format": "float"})
    );

    let mut b64 = req.clone();
    b64["encoding_format"] = json!("base64");
    let r = embed(&gw, &b64).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(decoded(&r.body), float_answer);
    gw.stop(true).await;
}

#[actix_web::test]
async fn voyage_embeddings_send_output_dimension_and_bill_total_tokens() {
    let mock = mock().await;
    mock.set_behavior("v", Behavior::default().with_usage(30, 0));
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}",
        deployment(
            "voyage",
            "voyage-lite-02-instruct",
            "voyage",
            &voyage_base(&mock, "v"),
            "api_key = \"pa-key\"\ninput_cost_per_mtok = 1.0",
        )
    ));
    let req = json!({"model": "voyage-lite-02-instruct", "input": ["first", "second"],
                     "dimensions": 32, "input_type": "query"});
    let r = embed(&gw, &req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Voyage reports only `total_tokens`: it becomes prompt_tokens.
    assert_list(&r.body, 2, "voyage-lite-02-instruct", 30);
    let float_answer = floats(&r.body);
    assert_eq!(float_answer, expected(2, 32));
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.00003"));

    let seen = &mock.requests("v")[0];
    assert_eq!(seen.path, "/v/voyage/v1/embeddings");
    assert_eq!(seen.header("authorization"), Some("Bearer pa-key"));
    assert_eq!(
        seen.json(),
        json!({"input": ["first", "second"], "model": "voyage-lite-02-instruct",
               "input_type": "query", "output_dimension": 32})
    );

    let mut b64 = req.clone();
    b64["encoding_format"] = json!("base64");
    let r = embed(&gw, &b64).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(decoded(&r.body), float_answer);
    assert_eq!(
        mock.requests("v")[1].json().get("encoding_format"),
        None,
        "voyage is asked for floats"
    );

    // A string input is sent as a one-element list.
    let r = embed(
        &gw,
        &json!({"model": "voyage-lite-02-instruct", "input": "solo"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_list(&r.body, 1, "voyage-lite-02-instruct", 30);
    assert_eq!(mock.requests("v")[2].json()["input"], json!(["solo"]));
    gw.stop(true).await;
}

#[actix_web::test]
async fn invalid_embeddings_requests_are_400s_naming_the_param() {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{}{}",
        openai_config(&mock),
        deployment(
            "voyage",
            "voyage-lite-02-instruct",
            "voyage",
            &voyage_base(&mock, "v"),
            ""
        )
    ));
    let too_many: Vec<String> = (0..2049).map(|i| format!("t{i}")).collect();
    let cases = [
        (json!({"model": "embed-small", "input": ""}), "input"),
        (json!({"model": "embed-small", "input": []}), "input"),
        (
            json!({"model": "embed-small", "input": ["ok", ""]}),
            "input[1]",
        ),
        (json!({"model": "embed-small"}), "input"),
        (
            json!({"model": "embed-small", "input": "x", "encoding_format": "int8"}),
            "encoding_format",
        ),
        (
            json!({"model": "embed-small", "input": "x", "dimensions": 0}),
            "dimensions",
        ),
        (
            json!({"model": "embed-small", "input": "x", "dimensions": -3}),
            "dimensions",
        ),
        (json!({"model": "embed-small", "input": too_many}), "input"),
        // Voyage's own limits and input types, checked before anything is sent.
        (
            json!({"model": "voyage-lite-02-instruct", "input": vec!["v"; 1001]}),
            "input",
        ),
        (
            json!({"model": "voyage-lite-02-instruct", "input": "x", "input_type": "classification"}),
            "input_type",
        ),
        // Token ids go only to OpenAI-shaped upstreams.
        (
            json!({"model": "voyage-lite-02-instruct", "input": [1, 2, 3]}),
            "input",
        ),
    ];
    for (body, param) in cases {
        let r = embed(&gw, &body).await;
        let shown = body.to_string();
        let shown = &shown[..shown.len().min(120)];
        assert_eq!(r.status, 400, "{shown}: {}", r.body);
        assert_eq!(r.body["error"]["type"], "invalid_request_error", "{shown}");
        assert_eq!(r.body["error"]["param"], param, "{shown}: {}", r.body);
    }
    // A key given twice is refused: the gateway and the upstream could read different values.
    let r = post_raw(
        &gw,
        EMBED,
        br#"{"model":"embed-small","input":"a","input":["b","c"]}"#.to_vec(),
        &[],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["param"], "input");
    assert_eq!(mock.request_count("o"), 0);
    assert_eq!(mock.request_count("v"), 0);
    // 2048 inputs are fine.
    let max: Vec<String> = (0..2048).map(|i| format!("t{i}")).collect();
    let r = embed(
        &gw,
        &json!({"model": "embed-small", "input": max, "dimensions": 2}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2048);
    assert_eq!(r.body["data"][2047]["index"], 2047);
    gw.stop(true).await;
}

#[actix_web::test]
async fn quota_exhausted_openai_falls_back_to_voyage_and_stays_cooled_down() {
    let mock = mock().await;
    mock.set_behavior("o", Behavior::error(ErrorPreset::QuotaExhausted));
    mock.set_behavior("v", Behavior::default().with_usage(20, 0));
    let gw = start_gateway(&format!(
        "{}{}{}\n[[fallbacks]]\nfrom = \"text-embedding-3-small\"\nto = [\"voyage-lite-02-instruct\"]\n",
        settings("num_retries = 2\nlong_cooldown_ms = 120000", ""),
        deployment(
            "oa",
            "text-embedding-3-small",
            "openai",
            &openai_base(&mock, "o"),
            "api_key = \"sk-upstream\"\ninput_cost_per_mtok = 0.02"
        ),
        deployment(
            "voyage",
            "voyage-lite-02-instruct",
            "voyage",
            &voyage_base(&mock, "v"),
            "api_key = \"pa-key\"\ninput_cost_per_mtok = 1.0"
        ),
    ));
    let req =
        json!({"model": "text-embedding-3-small", "input": ["alpha", "beta"], "dimensions": 8});
    let r = embed(&gw, &req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("voyage"));
    assert_eq!(
        r.header("x-switchyard-model-group"),
        Some("voyage-lite-02-instruct")
    );
    assert_eq!(r.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.00002"));
    assert_list(&r.body, 2, "voyage-lite-02-instruct", 20);
    assert_eq!(floats(&r.body), expected(2, 8));
    assert_eq!(mock.request_count("o"), 1, "quota exhausted: not retried");
    assert_eq!(
        mock.requests("v")[0].json()["output_dimension"],
        8,
        "the fallback gets dimensions in voyage's name"
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[("deployment", "oa"), ("outcome", "quota_exhausted")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_deployment_alerts_total",
            &[("deployment", "oa"), ("reason", "quota_exhausted")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_fallbacks_total",
            &[
                ("from", "text-embedding-3-small"),
                ("to", "voyage-lite-02-instruct")
            ]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_cost_nanodollars_total",
            &[("deployment", "oa")]
        )
        .await,
        0.0
    );

    // The openai deployment cools down: the next requests go straight to voyage.
    gw.clock().advance(Duration::from_secs(60));
    for _ in 0..3 {
        let r = embed(&gw, &req).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-switchyard-deployment"), Some("voyage"));
        assert_eq!(r.header("x-switchyard-attempts"), Some("1"));
    }
    assert_eq!(
        mock.request_count("o"),
        1,
        "cooling down: the openai route got nothing more"
    );
    assert_eq!(mock.request_count("v"), 4);

    // After long_cooldown_ms it is asked again (and has been topped up).
    mock.set_behavior("o", Behavior::default());
    gw.clock().advance(Duration::from_secs(61));
    let r = embed(&gw, &req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("oa"));
    assert_eq!(mock.request_count("o"), 2);
    gw.stop(true).await;
}

/// Two openai deployments of `embed-small`: `first` (tier 1) and `second` (tier 2).
fn pair(mock: &MockUpstream, router: &str, sections: &str, first_extra: &str) -> String {
    format!(
        "{}{}{}",
        settings(router, sections),
        deployment(
            "first",
            "embed-small",
            "openai",
            &openai_base(mock, "first"),
            &format!("order = 1\ninput_cost_per_mtok = 3.0\n{first_extra}")
        ),
        deployment(
            "second",
            "embed-small",
            "openai",
            &openai_base(mock, "second"),
            "order = 2\ninput_cost_per_mtok = 3.0"
        ),
    )
}

#[actix_web::test]
async fn a_500_is_retried_on_the_other_deployment_of_the_group() {
    let mock = mock().await;
    mock.set_behavior("first", Behavior::error(ErrorPreset::ServerError));
    let gw = start_gateway(&pair(&mock, "num_retries = 1", "", ""));
    let r = embed(
        &gw,
        &json!({"model": "embed-small", "input": ["p", "q"], "dimensions": 3}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("second"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("embed-small"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(floats(&r.body), expected(2, 3));
    assert_eq!(mock.request_count("first"), 1);
    assert_eq!(mock.request_count("second"), 1);
    // The retried request is the same translated body.
    assert_eq!(
        mock.requests("first")[0].json(),
        mock.requests("second")[0].json()
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[("deployment", "first"), ("outcome", "server_error")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_retries_total",
            &[("model_group", "embed-small")]
        )
        .await,
        1.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn the_breaker_opens_on_a_failing_embeddings_deployment() {
    let mock = mock().await;
    mock.set_behavior("first", Behavior::error(ErrorPreset::Overloaded));
    let gw = start_gateway(&pair(
        &mock,
        "num_retries = 1",
        "",
        "breaker = { consecutive_failures = 2, cooldown_ms = 30000, jitter = 0.0, probe_interval_ms = 0, half_open_probes = 1 }",
    ));
    let req = json!({"model": "embed-small", "input": "text"});
    for i in 0..2 {
        let r = embed(&gw, &req).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.header("x-switchyard-deployment"), Some("second"));
    }
    assert_eq!(mock.request_count("first"), 2);
    assert_eq!(
        metric_until(
            &gw,
            "gateway_breaker_state",
            &[("deployment", "first")],
            2.0
        )
        .await,
        2.0
    );
    // 20 s into the 30 s ejection (the rest is a margin for the requests' real time, which the
    // gateway's clock counts too): nothing reaches `first`.
    gw.clock().advance(Duration::from_secs(20));
    for _ in 0..10 {
        let r = embed(&gw, &req).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-switchyard-deployment"), Some("second"));
        assert_eq!(r.header("x-switchyard-attempts"), Some("1"));
    }
    assert_eq!(mock.request_count("first"), 2);
    // It recovers: after the ejection one probe goes through and closes the breaker.
    mock.set_behavior("first", Behavior::default());
    gw.clock().advance(Duration::from_secs(11));
    let r = embed(&gw, &req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-deployment"), Some("first"));
    assert_eq!(
        metric_until(
            &gw,
            "gateway_breaker_state",
            &[("deployment", "first")],
            0.0
        )
        .await,
        0.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn an_rpm_limit_moves_embeddings_to_the_other_deployment_or_answers_429() {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{}{}",
        pair(&mock, "num_retries = 1", "", "rpm = 1"),
        deployment(
            "lonely",
            "embed-solo",
            "openai",
            &openai_base(&mock, "solo"),
            "rpm = 1"
        ),
    ));
    let req = json!({"model": "embed-small", "input": "text"});
    let r = embed(&gw, &req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("first"));
    let r = embed(&gw, &req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("x-switchyard-deployment"),
        Some("second"),
        "first is out of rpm: the other deployment serves"
    );
    assert_eq!(mock.request_count("first"), 1);
    assert_eq!(
        metric(
            &gw,
            "gateway_deployment_declines_total",
            &[("deployment", "first"), ("reason", "rate_limited")]
        )
        .await,
        1.0
    );

    // A group with only the limited deployment: 429 with Retry-After, the upstream not called.
    let solo = json!({"model": "embed-solo", "input": "text"});
    assert_eq!(embed(&gw, &solo).await.status, 200);
    let r = embed(&gw, &solo).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["error"]["type"], "rate_limit_error");
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.header("x-switchyard-cost-usd"), None);
    assert_eq!(mock.request_count("solo"), 1);
    gw.clock().advance(Duration::from_secs(60));
    assert_eq!(embed(&gw, &solo).await.status, 200);
    gw.stop(true).await;
}

#[actix_web::test]
async fn deployments_that_cannot_serve_the_endpoint_are_skipped_or_the_client_gets_a_400() {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}{}{}{}",
        deployment(
            "claude",
            "claude-sonnet",
            "anthropic",
            &anthropic_base(&mock, "a"),
            "api_key = \"sk-ant\""
        ),
        deployment(
            "voyage",
            "voyage-lite-02-instruct",
            "voyage",
            &voyage_base(&mock, "v"),
            ""
        ),
        // A mixed group: voyage first, openai second.
        deployment(
            "mixed-voyage",
            "mixed",
            "voyage",
            &voyage_base(&mock, "mv"),
            "order = 1"
        ),
        deployment(
            "mixed-openai",
            "mixed",
            "openai",
            &openai_base(&mock, "mo"),
            "order = 2"
        ),
    ));
    // Token ids: voyage cannot take them and is skipped, without an attempt; openai serves.
    let r = embed(&gw, &json!({"model": "mixed", "input": [[1, 2], [3]]})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("mixed-openai"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("1"));
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(mock.requests("mo")[0].json()["input"], json!([[1, 2], [3]]));
    assert_eq!(mock.request_count("mv"), 0);
    // Text goes to voyage, tier 1.
    let r = embed(&gw, &json!({"model": "mixed", "input": "text"})).await;
    assert_eq!(r.header("x-switchyard-deployment"), Some("mixed-voyage"));

    let r = embed(&gw, &json!({"model": "claude-sonnet", "input": "hi"})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert_eq!(r.body["error"]["param"], "model", "{}", r.body);

    let r = chat(&gw, &user_message("voyage-lite-02-instruct", "hi")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert_eq!(r.body["error"]["param"], "model", "{}", r.body);

    assert_eq!(mock.request_count("a"), 0);
    assert_eq!(mock.request_count("v"), 0);
    // Neither is a failure of the deployment.
    for dep in ["claude", "voyage"] {
        assert_eq!(
            metric(&gw, "gateway_breaker_state", &[("deployment", dep)]).await,
            0.0
        );
    }
    gw.stop(true).await;
}

#[actix_web::test]
async fn malformed_upstream_bodies_are_server_errors_retried_elsewhere_and_never_billed() {
    let mock = mock().await;
    for (fault, name) in [
        (Fault::InvalidJsonEvent { after_chunks: 0 }, "invalid json"),
        (Fault::WrongContentType, "wrong content type"),
    ] {
        mock.set_behavior("first", Behavior::default().with_fault(fault.clone()));
        mock.set_behavior("second", Behavior::default().with_usage(40, 0));
        mock.set_behavior("solo", Behavior::default().with_fault(fault));
        mock.clear("first");
        mock.clear("second");
        mock.clear("solo");
        let gw = start_gateway(&format!(
            "{}{}",
            pair(
                &mock,
                "num_retries = 1",
                "[groups.\"embed-solo\"]\nnum_retries = 0\n",
                ""
            ),
            deployment(
                "lonely",
                "embed-solo",
                "openai",
                &openai_base(&mock, "solo"),
                "input_cost_per_mtok = 3.0"
            ),
        ));
        let r = embed(&gw, &json!({"model": "embed-small", "input": ["a", "b"]})).await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert_eq!(
            r.header("x-switchyard-deployment"),
            Some("second"),
            "{name}"
        );
        assert_eq!(r.header("x-switchyard-attempts"), Some("2"), "{name}");
        assert_list(&r.body, 2, "embed-small", 40);
        // Only the answer that served is billed: 40 × $3 / Mtok.
        assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.00012"), "{name}");
        assert_eq!(mock.request_count("first"), 1, "{name}");
        assert_eq!(
            metric(
                &gw,
                "gateway_upstream_attempts_total",
                &[("deployment", "first"), ("outcome", "server_error")]
            )
            .await,
            1.0,
            "{name}"
        );
        assert_eq!(
            metric(
                &gw,
                "gateway_cost_nanodollars_total",
                &[("deployment", "first")]
            )
            .await,
            0.0,
            "{name}"
        );
        assert_eq!(
            metric(
                &gw,
                "gateway_cost_nanodollars_total",
                &[("deployment", "second")]
            )
            .await,
            120_000.0,
            "{name}"
        );

        // With nowhere else to go the client gets a 502, without a cost header.
        let r = embed(&gw, &json!({"model": "embed-solo", "input": "a"})).await;
        assert_eq!(r.status, 502, "{name}: {}", r.body);
        assert_eq!(r.body["error"]["type"], "server_error", "{name}");
        assert_eq!(r.header("x-switchyard-cost-usd"), None, "{name}");
        assert_eq!(mock.request_count("solo"), 1, "{name}");
        assert_eq!(
            metric(
                &gw,
                "gateway_upstream_attempts_total",
                &[("deployment", "lonely"), ("outcome", "server_error")]
            )
            .await,
            1.0,
            "{name}"
        );
        assert_eq!(
            metric(
                &gw,
                "gateway_cost_nanodollars_total",
                &[("deployment", "lonely")]
            )
            .await,
            0.0,
            "{name}"
        );
        assert_eq!(
            metric(
                &gw,
                "gateway_tokens_total",
                &[("deployment", "lonely"), ("direction", "input")]
            )
            .await,
            0.0,
            "{name}"
        );
        gw.stop(true).await;
    }
}
