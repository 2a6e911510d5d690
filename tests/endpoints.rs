//! `/health`, `/health/ready`, `/v1/models` and `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

#[actix_web::test]
async fn health_models_ready_and_metrics_answer() {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{}{}{}\n[[fallbacks]]\nfrom = \"gpt-4o\"\nto = [\"claude-sonnet\"]\n",
        settings("", ""),
        deployment("a", "gpt-4o", "openai", &openai_base(&mock, ""), ""),
        deployment(
            "b",
            "claude-sonnet",
            "anthropic",
            &anthropic_base(&mock, ""),
            ""
        ),
    ));
    let c = client();
    let mut r = c.get(format!("{}/health", gw.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["status"], "ok");

    let mut r = c
        .get(format!("{}/v1/models", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["gpt-4o", "claude-sonnet"]);
    assert_eq!(v["data"][0]["object"], "model");
    assert!(v["data"][0]["created"].as_u64().is_some());

    let mut r = c
        .get(format!("{}/health/ready", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["deployments"].as_array().unwrap().len(), 2);
    assert_eq!(v["deployments"][0]["breaker"], "closed");
    assert_eq!(
        mock.request_count(""),
        0,
        "health checks never call upstreams"
    );

    chat(&gw, &user_message("gpt-4o", "hi")).await;
    let text = metrics_text(&gw).await;
    for (name, _) in switchyard::metrics::DESCRIPTIONS {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} is described"
        );
    }
    assert!(
        text.contains("gateway_overhead_seconds_bucket"),
        "the overhead histogram has buckets"
    );
    assert!(text.contains("gateway_upstream_latency_seconds_bucket{deployment=\"a\""));
    assert_eq!(
        metric_in(
            &text,
            "gateway_upstream_attempts_total",
            &[("deployment", "a"), ("outcome", "success")]
        ),
        1.0
    );
    assert_eq!(
        metric_in(&text, "gateway_inflight_requests", &[("deployment", "a")]),
        0.0
    );
    gw.stop(true).await;
}
