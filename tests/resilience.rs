//! Routing resilience end to end, through the HTTP API against the mock upstream: the breaker's
//! failure-rate trip, escalating ejections and in-ejection probes; 429, quota and auth
//! cooldowns; the context-window and content-policy fallback chains, max_fallbacks; the retry
//! budget; client, first-token and per-try timeouts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Two deployments of `gpt-4o`: `sick` (priority tier 1, always tried first while available)
/// and `healthy` (tier 2), on mock routes of the same names.
fn pair(mock: &MockUpstream, router: &str, breaker: &str) -> String {
    format!(
        "{}{}{}",
        settings(router, &format!("[breaker]\n{breaker}\n")),
        deployment(
            "sick",
            "gpt-4o",
            "openai",
            &openai_base(mock, "sick"),
            "order = 1"
        ),
        deployment(
            "healthy",
            "gpt-4o",
            "openai",
            &openai_base(mock, "healthy"),
            "order = 2"
        ),
    )
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

async fn breaker_state(gw: &Gateway, id: &str) -> f64 {
    metric(gw, "gateway_breaker_state", &[("deployment", id)]).await
}

/// Sends `n` requests; each must be answered 200 by `by`.
async fn all_served_by(gw: &Gateway, n: usize, by: &str) {
    for i in 0..n {
        let r = chat(gw, &user_message("gpt-4o", "hi")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.header("x-switchyard-deployment"), Some(by), "request {i}");
    }
}

#[actix_web::test]
async fn the_breaker_ejects_a_deployment_failing_half_its_calls_after_min_calls_and_sends_it_nothing_during_the_ejection(
) {
    let mock = mock().await;
    // Fails every other request: never two failures in a row.
    let alternating: Vec<Behavior> = (0..40)
        .map(|i| {
            if i % 2 == 0 {
                Behavior::error(ErrorPreset::ServerError)
            } else {
                Behavior::text("fine")
            }
        })
        .collect();
    mock.push_behaviors("sick", alternating);
    let gw = start_gateway(&pair(
        &mock,
        "num_retries = 1",
        "consecutive_failures = 100\nfailure_rate = 0.5\nmin_calls = 20\nwindow_ms = 30000\n\
         cooldown_ms = 30000\njitter = 0.0\nprobe_interval_ms = 0\nhalf_open_probes = 1",
    ));

    let mut client_errors = 0;
    let mut sick_calls_at_ejection = None;
    for _ in 0..40 {
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        if r.status != 200 {
            client_errors += 1;
        }
        if breaker_state(&gw, "sick").await == 2.0 {
            sick_calls_at_ejection = Some(mock.request_count("sick"));
            break;
        }
        let run = snapshot(&gw, "sick").await["consecutive_failures"].clone();
        assert!(
            run.as_u64().unwrap() <= 1,
            "failures never come two in a row: {run}"
        );
    }
    assert_eq!(client_errors, 0, "each failure fell back to `healthy`");
    assert_eq!(
        sick_calls_at_ejection,
        Some(20),
        "ejected when the window held min_calls = 20 calls, 10 of them failed"
    );
    assert_eq!(
        mock.request_count("healthy"),
        10,
        "the 10 failures fell back"
    );

    // 20 s into the 30 s ejection (the gateway's clock also runs in real time: the margin is
    // for the 50 requests under CI load): every request goes to `healthy`, none to `sick`.
    gw.clock().advance(Duration::from_secs(20));
    all_served_by(&gw, 50, "healthy").await;
    assert_eq!(
        mock.request_count("sick"),
        20,
        "during the ejection the failing deployment received 0 requests"
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn the_second_ejection_lasts_twice_the_cooldown_after_a_failed_half_open_probe() {
    let mock = mock().await;
    mock.set_behavior("sick", Behavior::error(ErrorPreset::ServerError));
    let gw = start_gateway(&pair(
        &mock,
        "num_retries = 1",
        "consecutive_failures = 1\ncooldown_ms = 30000\njitter = 0.0\nprobe_interval_ms = 0\n\
         half_open_probes = 1",
    ));
    // Ejection 1 (30 s).
    all_served_by(&gw, 1, "healthy").await;
    assert_eq!(mock.request_count("sick"), 1);
    assert_eq!(breaker_state(&gw, "sick").await, 2.0);

    // Half-open after 30 s: the probe fails (invisibly) and ejection 2 starts: 2 x 30 s.
    gw.clock().advance(Duration::from_secs(30));
    all_served_by(&gw, 1, "healthy").await;
    assert_eq!(mock.request_count("sick"), 2, "one half-open probe");
    assert_eq!(snapshot(&gw, "sick").await["ejections"], 2);

    // 50 s: past the first 30 s, and with a margin for the requests' real time.
    gw.clock().advance(Duration::from_secs(50));
    all_served_by(&gw, 20, "healthy").await;
    assert_eq!(
        mock.request_count("sick"),
        2,
        "50 s into the 60 s second ejection: 0 requests to the sick deployment"
    );

    // 61 s: the ejection is over, a probe goes through (and, the deployment having recovered,
    // closes the breaker).
    mock.set_behavior("sick", Behavior::text("better"));
    gw.clock().advance(Duration::from_secs(11));
    all_served_by(&gw, 1, "sick").await;
    assert_eq!(mock.request_count("sick"), 3);
    assert_eq!(
        metric_until(&gw, "gateway_breaker_state", &[("deployment", "sick")], 0.0).await,
        0.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn during_a_long_ejection_one_probe_per_interval_reaches_the_deployment_and_a_successful_probe_closes_the_breaker_early(
) {
    let mock = mock().await;
    mock.set_behavior("sick", Behavior::error(ErrorPreset::ServerError));
    let gw = start_gateway(&pair(
        &mock,
        "num_retries = 1",
        "consecutive_failures = 1\ncooldown_ms = 3000000\nmax_cooldown_ms = 3000000\njitter = 0.0\n\
         probe_interval_ms = 100000\nhalf_open_probes = 1",
    ));
    // Ejected for 3000 s. The gateway's clock also runs in real time; steps of 10 s against a
    // 100 s probe interval keep the requests' real time negligible under CI load.
    all_served_by(&gw, 1, "healthy").await;
    assert_eq!(mock.request_count("sick"), 1);

    // 600 s of virtual time, 10 s steps, 3 requests per step.
    let mut client_errors = 0;
    let mut probe_steps = Vec::new();
    for step in 1..=60 {
        gw.clock().advance(Duration::from_secs(10));
        for _ in 0..3 {
            let before = mock.request_count("sick");
            let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
            if r.status != 200 {
                client_errors += 1;
            }
            assert_eq!(r.header("x-switchyard-deployment"), Some("healthy"));
            if mock.request_count("sick") > before {
                probe_steps.push(step);
            }
        }
    }
    eprintln!("in-ejection probes at virtual seconds {probe_steps:?}");
    assert_eq!(client_errors, 0, "every failed probe fell back invisibly");
    assert_eq!(
        probe_steps.len(),
        6,
        "one probe per 100 s over 600 s (180 requests): steps {probe_steps:?}"
    );
    assert!(
        probe_steps.windows(2).all(|w| w[1] - w[0] >= 9),
        "never two probes within one interval: steps {probe_steps:?}"
    );
    assert_eq!(mock.request_count("sick"), 7);
    assert_eq!(
        breaker_state(&gw, "sick").await,
        2.0,
        "still ejected after failed probes"
    );

    // The deployment recovers: the next probe (within 100 s) closes the breaker, with about
    // 2400 s of the ejection left.
    mock.set_behavior("sick", Behavior::text("recovered"));
    let mut waited = 0;
    loop {
        gw.clock().advance(Duration::from_secs(10));
        waited += 10;
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        assert_eq!(r.status, 200);
        if r.header("x-switchyard-deployment") == Some("sick") {
            break;
        }
        assert!(waited <= 100, "no probe within 100 s");
    }
    eprintln!("recovered deployment served again after {waited} s of virtual time");
    assert_eq!(
        metric_until(&gw, "gateway_breaker_state", &[("deployment", "sick")], 0.0).await,
        0.0,
        "the successful probe closed the breaker"
    );
    all_served_by(&gw, 5, "sick").await;
    gw.stop(true).await;
}

#[actix_web::test]
async fn when_every_deployment_of_a_group_is_ejected_the_fallback_group_serves_before_any_503() {
    let mock = mock().await;
    mock.set_behavior("a1", Behavior::error(ErrorPreset::ServerError));
    mock.set_behavior("a2", Behavior::error(ErrorPreset::ServerError));
    let gw = start_gateway(&format!(
        "{}{}{}{}\n[[fallbacks]]\nfrom = \"gpt-4o\"\nto = [\"backup\"]\n",
        settings(
            "num_retries = 1",
            "[breaker]\nconsecutive_failures = 1\ncooldown_ms = 30000\nprobe_interval_ms = 0\n"
        ),
        deployment("a1", "gpt-4o", "openai", &openai_base(&mock, "a1"), ""),
        deployment("a2", "gpt-4o", "openai", &openai_base(&mock, "a2"), ""),
        deployment("b1", "backup", "openai", &openai_base(&mock, "b1"), ""),
    ));
    let mut client_errors = 0;
    for _ in 0..20 {
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        if r.status != 200 {
            client_errors += 1;
        }
        assert_eq!(
            r.header("x-switchyard-deployment"),
            Some("b1"),
            "{}",
            r.body
        );
        assert_eq!(r.header("x-switchyard-model-group"), Some("backup"));
    }
    assert_eq!(client_errors, 0, "the fallback group served every request");
    assert_eq!(
        mock.request_count("a1"),
        1,
        "a1 ejected after its one failure"
    );
    assert_eq!(
        mock.request_count("a2"),
        1,
        "a2 ejected after its one failure"
    );
    assert_eq!(breaker_state(&gw, "a1").await, 2.0);
    assert_eq!(breaker_state(&gw, "a2").await, 2.0);
    assert_eq!(mock.request_count("b1"), 20);
    assert_eq!(
        metric(
            &gw,
            "gateway_fallbacks_total",
            &[("from", "gpt-4o"), ("to", "backup")]
        )
        .await,
        20.0
    );

    // Only once the fallback is ejected too does a client see an error: 502 for the request
    // whose attempt failed, then 503.
    mock.set_behavior("b1", Behavior::error(ErrorPreset::ServerError));
    assert_eq!(chat(&gw, &user_message("gpt-4o", "hi")).await.status, 502);
    let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "no_deployment_available");
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_429_cools_only_that_deployment_for_its_retry_after_and_is_not_a_breaker_failure() {
    let mock = mock().await;
    mock.set_behavior(
        "sick",
        Behavior::error(ErrorPreset::RateLimited {
            retry_after: Some(5),
        }),
    );
    let gw = start_gateway(&pair(
        &mock,
        "num_retries = 1",
        "consecutive_failures = 2\ncooldown_ms = 30000\nprobe_interval_ms = 0",
    ));
    // Four 429s, twice consecutive_failures, each after the previous Retry-After ran out.
    for round in 1..=4 {
        all_served_by(&gw, 1, "healthy").await;
        assert_eq!(mock.request_count("sick"), round, "one 429 per round");
        // Cooling for 5 s: 2 s in (a margin for the requests' real time), `sick` gets nothing
        // and `healthy` serves.
        gw.clock().advance(Duration::from_secs(2));
        all_served_by(&gw, 10, "healthy").await;
        assert_eq!(
            mock.request_count("sick"),
            round,
            "cooling: 0 requests to the rate-limited deployment"
        );
        assert_eq!(breaker_state(&gw, "sick").await, 0.0, "round {round}");
        gw.clock().advance(Duration::from_secs(3));
    }
    let s = snapshot(&gw, "sick").await;
    assert_eq!(s["breaker"], "closed", "{s}");
    assert_eq!(s["consecutive_failures"], 0, "{s}");
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[("deployment", "sick"), ("outcome", "rate_limited")]
        )
        .await,
        4.0
    );
    // After the Retry-After it takes traffic again.
    mock.set_behavior("sick", Behavior::text("ok again"));
    all_served_by(&gw, 3, "sick").await;
    assert_eq!(mock.request_count("sick"), 7);
    gw.stop(true).await;
}

#[actix_web::test]
async fn quota_exhausted_and_upstream_auth_failures_cool_the_deployment_for_long_cooldown_and_raise_an_alert(
) {
    let mock = mock().await;
    mock.set_behavior("quota", Behavior::error(ErrorPreset::QuotaExhausted));
    mock.set_behavior("auth", Behavior::error(ErrorPreset::Unauthorized));
    let gw = start_gateway(&format!(
        "{}{}{}{}",
        settings(
            "num_retries = 3\nlong_cooldown_ms = 120000",
            "[breaker]\nconsecutive_failures = 1\n"
        ),
        deployment(
            "quota",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "quota"),
            "order = 1"
        ),
        deployment(
            "auth",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "auth"),
            "order = 2"
        ),
        deployment(
            "good",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "good"),
            "order = 3"
        ),
    ));
    let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("good"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("3"));
    assert_eq!(mock.request_count("quota"), 1);
    assert_eq!(mock.request_count("auth"), 1);

    // 110 s of the 120 s long cooldown: neither is called again.
    gw.clock().advance(Duration::from_secs(110));
    all_served_by(&gw, 10, "good").await;
    assert_eq!(mock.request_count("quota"), 1);
    assert_eq!(mock.request_count("auth"), 1);
    for (dep, reason) in [("quota", "quota_exhausted"), ("auth", "upstream_auth")] {
        assert_eq!(
            metric(
                &gw,
                "gateway_deployment_alerts_total",
                &[("deployment", dep), ("reason", reason)]
            )
            .await,
            1.0,
            "{dep}: {reason} alert"
        );
        let s = snapshot(&gw, dep).await;
        assert_eq!(s["breaker"], "closed", "not a breaker failure: {s}");
    }

    // After the long cooldown both take traffic again.
    mock.set_behavior("quota", Behavior::text("topped up"));
    gw.clock().advance(Duration::from_secs(11));
    all_served_by(&gw, 1, "quota").await;
    assert_eq!(mock.request_count("quota"), 2);
    let s = snapshot(&gw, "auth").await;
    assert_eq!(s["available"], true, "auth's cooldown is over too: {s}");
    gw.stop(true).await;
}

fn context_config(mock: &MockUpstream, context_chain: bool) -> String {
    let chain = if context_chain {
        "\n[[fallbacks]]\nfrom = \"small\"\nto = [\"large\"]\non = \"context_window\"\n"
    } else {
        ""
    };
    format!(
        "{}{}{}{}{}\n[[fallbacks]]\nfrom = \"small\"\nto = [\"other\"]\n{chain}",
        settings("num_retries = 3", ""),
        deployment(
            "small-1",
            "small",
            "openai",
            &openai_base(mock, "small1"),
            "order = 1"
        ),
        deployment(
            "small-2",
            "small",
            "openai",
            &openai_base(mock, "small2"),
            "order = 2"
        ),
        deployment(
            "large-1",
            "large",
            "openai",
            &openai_base(mock, "large"),
            ""
        ),
        deployment(
            "other-1",
            "other",
            "openai",
            &openai_base(mock, "other"),
            ""
        ),
    )
}

#[actix_web::test]
async fn a_context_window_error_takes_the_context_window_chain_not_the_default_one_and_is_never_retried(
) {
    let mock = mock().await;
    mock.set_behavior("small1", Behavior::error(ErrorPreset::ContextLength));
    mock.set_behavior("small2", Behavior::error(ErrorPreset::ContextLength));
    let gw = start_gateway(&context_config(&mock, true));
    let r = chat(&gw, &user_message("small", "a very long prompt")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("large-1"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("large"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(
        mock.request_count("small1"),
        1,
        "not retried on the same deployment"
    );
    assert_eq!(
        mock.request_count("small2"),
        0,
        "nor on the group's other one"
    );
    assert_eq!(
        mock.request_count("other"),
        0,
        "the default chain is not used"
    );
    assert_eq!(mock.request_count("large"), 1);
    assert_eq!(
        metric(
            &gw,
            "gateway_fallbacks_total",
            &[("from", "small"), ("to", "large")]
        )
        .await,
        1.0
    );
    gw.stop(true).await;

    // Without a context-window chain the default chain is taken.
    let mock = common::mock().await;
    mock.set_behavior("small1", Behavior::error(ErrorPreset::ContextLength));
    mock.set_behavior("small2", Behavior::error(ErrorPreset::ContextLength));
    let gw = start_gateway(&context_config(&mock, false));
    let r = chat(&gw, &user_message("small", "a very long prompt")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("other-1"));
    assert_eq!(mock.request_count("small1"), 1);
    assert_eq!(mock.request_count("small2"), 0);
    assert_eq!(mock.request_count("large"), 0);
    assert_eq!(mock.request_count("other"), 1);
    gw.stop(true).await;
}

const CONTENT_POLICY_BODY: &str = r#"{"error":{"message":"Your request was rejected as a result of our safety system.","type":"invalid_request_error","param":"prompt","code":"content_policy_violation"}}"#;

fn policy_config(mock: &MockUpstream, policy_chain: bool) -> String {
    let chain = if policy_chain {
        "\n[[fallbacks]]\nfrom = \"gpt-4o\"\nto = [\"lenient\"]\non = \"content_policy\"\n"
    } else {
        ""
    };
    format!(
        "{}{}{}{}{}\n[[fallbacks]]\nfrom = \"gpt-4o\"\nto = [\"other\"]\n{chain}",
        settings("num_retries = 3", ""),
        deployment(
            "strict-1",
            "gpt-4o",
            "openai",
            &openai_base(mock, "strict1"),
            "order = 1"
        ),
        deployment(
            "strict-2",
            "gpt-4o",
            "openai",
            &openai_base(mock, "strict2"),
            "order = 2"
        ),
        deployment(
            "lenient-1",
            "lenient",
            "openai",
            &openai_base(mock, "lenient"),
            ""
        ),
        deployment(
            "other-1",
            "other",
            "openai",
            &openai_base(mock, "other"),
            ""
        ),
    )
}

fn refusal() -> Behavior {
    Behavior::error(ErrorPreset::Custom {
        status: 400,
        body: CONTENT_POLICY_BODY.to_owned(),
        headers: Vec::new(),
    })
}

#[actix_web::test]
async fn a_content_policy_refusal_returns_400_without_a_content_policy_chain_and_takes_the_chain_when_configured(
) {
    let mock = mock().await;
    mock.set_behavior("strict1", refusal());
    let gw = start_gateway(&policy_config(&mock, false));
    let r = chat(&gw, &user_message("gpt-4o", "something spicy")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert_eq!(r.body["error"]["code"], "content_policy_violation");
    assert_eq!(mock.request_count("strict1"), 1);
    assert_eq!(
        mock.request_count("strict2"),
        0,
        "the group's other deployment is not tried"
    );
    assert_eq!(
        mock.request_count("other"),
        0,
        "nor the default fallback chain"
    );
    gw.stop(true).await;

    let mock = common::mock().await;
    mock.set_behavior("strict1", refusal());
    let gw = start_gateway(&policy_config(&mock, true));
    let r = chat(&gw, &user_message("gpt-4o", "something spicy")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("lenient-1"));
    assert_eq!(mock.request_count("strict1"), 1);
    assert_eq!(mock.request_count("strict2"), 0);
    assert_eq!(mock.request_count("other"), 0);
    assert_eq!(mock.request_count("lenient"), 1);
    gw.stop(true).await;
}

#[actix_web::test]
async fn max_fallbacks_cuts_the_chain_and_a_failed_fallback_group_is_not_retried() {
    let mock = mock().await;
    mock.set_behavior("primary", Behavior::error(ErrorPreset::ServerError));
    mock.set_behavior("fb1", Behavior::error(ErrorPreset::ServerError));
    let gw = start_gateway(&format!(
        "{}{}{}{}\n[groups.\"gpt-4o\"]\nnum_retries = 0\n\n[[fallbacks]]\nfrom = \"gpt-4o\"\nto = [\"fb1\", \"fb2\"]\n",
        settings(
            "num_retries = 3\nmax_fallbacks = 1",
            "[breaker]\nconsecutive_failures = 100\n"
        ),
        deployment(
            "primary-1",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "primary"),
            ""
        ),
        deployment("fb1-1", "fb1", "openai", &openai_base(&mock, "fb1"), ""),
        deployment("fb2-1", "fb2", "openai", &openai_base(&mock, "fb2"), ""),
    ));
    for i in 1..=3 {
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        assert_eq!(r.status, 502, "{}", r.body);
        assert_eq!(r.header("x-switchyard-attempts"), Some("2"));
        assert!(r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fb1-1"));
        assert_eq!(mock.request_count("primary"), i);
        assert_eq!(
            mock.request_count("fb1"),
            i,
            "the fallback group got one pass, although its num_retries is 3"
        );
        assert_eq!(
            mock.request_count("fb2"),
            0,
            "max_fallbacks = 1: the second fallback is never tried"
        );
    }
    assert_eq!(
        metric(
            &gw,
            "gateway_fallbacks_total",
            &[("from", "gpt-4o"), ("to", "fb1")]
        )
        .await,
        3.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_fallbacks_total",
            &[("from", "gpt-4o"), ("to", "fb2")]
        )
        .await,
        0.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn the_retry_budget_stops_a_retry_storm_when_every_deployment_fails() {
    let mock = mock().await;
    mock.set_behavior("", Behavior::error(ErrorPreset::ServerError));
    let mut toml = settings(
        "num_retries = 3\nretry_budget_ratio = 0.2\nretry_budget_min_per_sec = 1\n\
         retry_budget_window_ms = 10000",
        "[breaker]\nconsecutive_failures = 1000\nmin_calls = 1000000\n",
    );
    // Four deployments: each retry goes to another one at once, no backoff wait.
    for id in ["d1", "d2", "d3", "d4"] {
        toml.push_str(&deployment(
            id,
            "gpt-4o",
            "openai",
            &openai_base(&mock, ""),
            "",
        ));
    }
    let gw = start_gateway(&toml);
    let n = 50;
    let mut statuses = Vec::new();
    for _ in 0..n {
        statuses.push(chat(&gw, &user_message("gpt-4o", "hi")).await.status);
    }
    assert!(statuses.iter().all(|&s| s == 502), "{statuses:?}");
    let attempts = mock.request_count("");
    // retries <= ratio * requests + min_per_sec * window = 0.2 * 50 + 1 * 10 = 20; slack of
    // one bucket (1 s of reserve + 0.2 x its requests) on top.
    let bound = n + 20 + 1 + n / 5;
    assert!(
        attempts <= bound,
        "{attempts} upstream attempts for {n} requests (bound {bound}; without a budget {})",
        n * 4
    );
    assert!(
        attempts >= n + 10,
        "the reserve of 10 retries is spent: {attempts}"
    );
    let exhausted = metric(
        &gw,
        "gateway_retry_budget_exhausted_total",
        &[("model_group", "gpt-4o")],
    )
    .await;
    assert!(exhausted > 0.0, "budget exhaustion counted: {exhausted}");
    eprintln!("retry budget: {attempts} upstream attempts for {n} requests, exhausted {exhausted}");
    gw.stop(true).await;
}

#[actix_web::test]
async fn the_client_timeout_header_cuts_a_slow_upstream_to_504_and_a_bad_value_is_a_400() {
    let mock = mock().await;
    mock.set_behavior(
        "",
        Behavior::text("slow").with_latency(Duration::from_secs(3)),
    );
    let gw = start_gateway(&format!(
        "{}{}",
        settings("num_retries = 3", ""),
        deployment("slow", "gpt-4o", "openai", &openai_base(&mock, ""), ""),
    ));
    let body = serde_json::to_vec(&user_message("gpt-4o", "hi")).unwrap();

    let started = Instant::now();
    let r = chat_raw(&gw, body.clone(), &[("x-switchyard-timeout", "0.3")]).await;
    let took = started.elapsed();
    eprintln!(
        "x-switchyard-timeout 0.3: status {} after {took:?}",
        r.status
    );
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "timeout");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
        "504 after {took:?}, well before the 3 s answer"
    );
    assert_eq!(
        mock.request_count(""),
        1,
        "a timed-out attempt is not retried"
    );

    // Without the header the 3 s answer is served.
    let started = Instant::now();
    let r = chat_raw(&gw, body.clone(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(mock.request_count(""), 2);

    for bad in ["soon", "0", "-1", "NaN"] {
        let r = chat_raw(&gw, body.clone(), &[("x-switchyard-timeout", bad)]).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.body);
        assert_eq!(r.body["error"]["type"], "invalid_request_error");
    }
    assert_eq!(
        mock.request_count(""),
        2,
        "bad values never reach the upstream"
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_first_token_timeout_falls_back_to_the_next_deployment_before_the_stream_is_committed() {
    let mock = mock().await;
    mock.set_behavior(
        "slow",
        Behavior::text("too late").with_ttft(Duration::from_secs(5)),
    );
    let gw = start_gateway(&format!(
        "{}{}{}",
        settings("num_retries = 3", "[breaker]\nconsecutive_failures = 100\n"),
        deployment(
            "slow",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "slow"),
            "order = 1\nfirst_token_timeout_ms = 300"
        ),
        deployment(
            "fast",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "fast"),
            "order = 2"
        ),
    ));
    for i in 1..=3 {
        let started = Instant::now();
        let s = chat_stream(&gw, &stream_request("gpt-4o", true)).await;
        let took = started.elapsed();
        eprintln!(
            "stream {i}: served by {:?} after {took:?}",
            s.header("x-switchyard-deployment")
        );
        assert_openai_stream(&s, true);
        assert!(s.error_event().is_none(), "no error event: {}", s.raw);
        assert!(!s.broken);
        assert_eq!(s.header("x-switchyard-deployment"), Some("fast"));
        assert_eq!(s.header("x-switchyard-attempts"), Some("2"));
        assert_eq!(s.content(), DEFAULT_TEXT);
        assert!(
            took < Duration::from_secs(3),
            "the first token timeout (300 ms) moved on, long before the 5 s first token: \
             took {took:?}"
        );
        // The mock may read the request after the gateway gave up on it (a stalled machine).
        eventually(|| mock.request_count("slow") == i).await;
        assert_eq!(mock.request_count("fast"), i);
    }
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[("deployment", "slow"), ("outcome", "timeout")]
        )
        .await,
        3.0
    );
    gw.stop(true).await;
}

const DEFAULT_TEXT: &str = switchyard_loadtests::mock::DEFAULT_REPLY_TEXT;

#[actix_web::test]
async fn a_timed_out_deployment_is_not_retried_while_the_next_one_is() {
    let mock = mock().await;
    mock.set_behavior(
        "slow",
        Behavior::text("too late").with_latency(Duration::from_secs(2)),
    );
    // `fast` fails once with a retryable 500, so the plan does retry within the group.
    mock.push_behaviors("fast", [Behavior::error(ErrorPreset::ServerError)]);
    let gw = start_gateway(&format!(
        "{}{}{}",
        settings("num_retries = 3", "[breaker]\nconsecutive_failures = 100\n"),
        deployment(
            "slow",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "slow"),
            "order = 1\nper_try_timeout_ms = 300"
        ),
        deployment(
            "fast",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "fast"),
            "order = 2"
        ),
    ));
    let clock = gw.clock().clone();
    let url = gw.url();
    let pending = actix_web::rt::spawn(async move {
        let mut resp = client()
            .post(format!("{url}/v1/chat/completions"))
            .send_json(&user_message("gpt-4o", "hi"))
            .await
            .unwrap();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let (dep, attempts) = (
            header("x-switchyard-deployment"),
            header("x-switchyard-attempts"),
        );
        let status = resp.status().as_u16();
        let _ = resp.body().await;
        (status, dep, attempts)
    });
    // slow times out (300 ms), fast fails, then the plan waits its backoff (at most 2 s)
    // before trying fast again; slow is not in the running.
    eventually(|| mock.request_count("fast") == 1).await;
    actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    clock.advance(Duration::from_secs(5));
    let (status, dep, attempts) = pending.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(dep.as_deref(), Some("fast"));
    assert_eq!(attempts.as_deref(), Some("3"));
    assert_eq!(mock.request_count("fast"), 2);
    assert_eq!(
        mock.request_count("slow"),
        1,
        "the timed-out deployment got exactly one request"
    );

    // Request after request: one attempt on slow each, then fast serves.
    for i in 2..=4 {
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-switchyard-deployment"), Some("fast"));
        // The mock may read the request after the gateway gave up on it (a stalled machine).
        eventually(|| mock.request_count("slow") == i).await;
    }
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[("deployment", "slow"), ("outcome", "timeout")]
        )
        .await,
        4.0
    );
    gw.stop(true).await;
}
