//! Request resolution end to end: conditional routing rules, region pinning (by header and by
//! key), tenant namespaces, aliases, wildcard groups, client keys, and the config checks behind
//! them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};

const MASTER_KEY: &str = "sk-master-0123456789abcdef";
const EU_KEY: &str = "sk-team-eu-0123456789abcdef";
const TENANT_A_KEY: &str = "sk-tenant-a-0123456789abcdef";
const TENANT_B_KEY: &str = "sk-tenant-b-0123456789abcdef";
const SHARED_KEY: &str = "sk-shared-0123456789abcdef";

/// `settings(router_extra, sections)` with extra `[server]` keys as well.
fn settings_with_server(server_extra: &str, router_extra: &str, sections: &str) -> String {
    settings(router_extra, sections).replace("[server]\n", &format!("[server]\n{server_extra}\n"))
}

/// An OpenAI-kind deployment of `model` on the mock route named like its id.
fn oai(mock: &MockUpstream, id: &str, model: &str, extra: &str) -> String {
    deployment(id, model, "openai", &openai_base(mock, id), extra)
}

/// Sends `body` with the given key (if any) and extra headers.
async fn send(gw: &Gateway, body: &Value, key: Option<&str>, headers: &[(&str, &str)]) -> Answer {
    let bearer = key.map(|k| format!("Bearer {k}"));
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(b) = &bearer {
        all.push(("authorization", b));
    }
    chat_raw(gw, serde_json::to_vec(body).unwrap(), &all).await
}

/// Sends `n` requests and counts the serving deployment of each (`"<status>"` for a failure).
async fn spread(
    gw: &Gateway,
    n: usize,
    body: &Value,
    key: Option<&str>,
    headers: &[(&str, &str)],
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = send(gw, body, key, headers).await;
        let label = if r.status == 200 {
            r.header("x-switchyard-deployment")
                .expect("x-switchyard-deployment on a 200")
                .to_owned()
        } else {
            format!("<{}>", r.status)
        };
        *seen.entry(label).or_insert(0) += 1;
    }
    seen
}

fn count(seen: &BTreeMap<String, usize>, label: &str) -> usize {
    seen.get(label).copied().unwrap_or(0)
}

fn error_message(a: &Answer) -> &str {
    a.body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("an error envelope: {}", a.body))
}

// === 1. conditional rules on a header ===

fn tiered_gateway(mock: &MockUpstream) -> Gateway {
    start_gateway(&format!(
        "{}{}{}{}{}",
        settings("num_retries = 2", ""),
        oai(mock, "azure-1", "gpt-4", ""),
        oai(mock, "azure-2", "gpt-4", ""),
        oai(mock, "bedrock", "gpt-4", ""),
        r#"
[[rules]]
name = "premium-to-azure"
model = "gpt-4"
headers = { "x-tier" = "premium" }
prefer = ["azure-1", "azure-2"]

[[rules]]
name = "everyone-else-to-bedrock"
model = "gpt-4"
prefer = ["bedrock"]
"#,
    ))
}

#[actix_web::test]
async fn premium_requests_for_gpt_4_all_go_to_the_azure_deployments_and_the_rest_to_bedrock() {
    let mock = mock().await;
    let gw = tiered_gateway(&mock);
    let body = user_message("gpt-4", "hi");

    let premium = spread(&gw, 40, &body, None, &[("x-tier", "premium")]).await;
    assert_eq!(
        count(&premium, "azure-1") + count(&premium, "azure-2"),
        40,
        "premium: {premium:?}"
    );
    assert!(
        count(&premium, "azure-1") > 0 && count(&premium, "azure-2") > 0,
        "both preferred deployments share the premium traffic: {premium:?}"
    );

    let basic = spread(&gw, 20, &body, None, &[("x-tier", "basic")]).await;
    assert_eq!(count(&basic, "bedrock"), 20, "x-tier basic: {basic:?}");
    let plain = spread(&gw, 20, &body, None, &[]).await;
    assert_eq!(count(&plain, "bedrock"), 20, "no x-tier: {plain:?}");

    assert_eq!(
        mock.request_count("azure-1") + mock.request_count("azure-2"),
        40
    );
    assert_eq!(mock.request_count("bedrock"), 40);
    gw.stop(true).await;
}

#[actix_web::test]
async fn premium_requests_fall_to_bedrock_with_zero_client_errors_when_both_azure_deployments_fail()
{
    let mock = mock().await;
    mock.set_behavior("azure-1", Behavior::error(ErrorPreset::ServerError));
    mock.set_behavior("azure-2", Behavior::error(ErrorPreset::ServerError));
    let gw = tiered_gateway(&mock);

    let premium = spread(
        &gw,
        20,
        &user_message("gpt-4", "hi"),
        None,
        &[("x-tier", "premium")],
    )
    .await;
    assert_eq!(
        count(&premium, "bedrock"),
        20,
        "0 client errors: {premium:?}"
    );
    assert_eq!(mock.request_count("bedrock"), 20);
    // The preferred deployments were tried first (until their breakers opened).
    assert!(mock.request_count("azure-1") >= 1, "azure-1 tried");
    assert!(mock.request_count("azure-2") >= 1, "azure-2 tried");
    gw.stop(true).await;
}

// === 2. rules on `user`, on tags, and `only` ===

fn three_way(mock: &MockUpstream, router_extra: &str, rules: &str) -> Gateway {
    start_gateway(&format!(
        "{}{}{}{}{rules}",
        settings(router_extra, ""),
        oai(mock, "d1", "gpt-4o", ""),
        oai(mock, "d2", "gpt-4o", ""),
        oai(mock, "d3", "gpt-4o", ""),
    ))
}

#[actix_web::test]
async fn a_rule_on_the_user_body_field_sends_alice_to_her_preferred_deployment_only() {
    let mock = mock().await;
    let gw = three_way(
        &mock,
        "",
        "\n[[rules]]\nname = \"alice\"\nuser = \"alice\"\nprefer = [\"d3\"]\n",
    );
    let mut alice = user_message("gpt-4o", "hi");
    alice["user"] = json!("alice");
    let mut bob = user_message("gpt-4o", "hi");
    bob["user"] = json!("bob");

    let a = spread(&gw, 30, &alice, None, &[]).await;
    assert_eq!(count(&a, "d3"), 30, "alice: {a:?}");
    let b = spread(&gw, 60, &bob, None, &[]).await;
    for d in ["d1", "d2", "d3"] {
        assert!(count(&b, d) > 0, "bob is spread over all three: {b:?}");
    }
    assert_eq!(count(&b, "d1") + count(&b, "d2") + count(&b, "d3"), 60);
    assert_eq!(mock.request_count("d3"), 30 + count(&b, "d3"));
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_rule_on_the_tags_header_sends_batch_traffic_only_to_the_listed_deployment() {
    let mock = mock().await;
    let gw = three_way(
        &mock,
        "",
        "\n[[rules]]\nname = \"batch\"\ntags = [\"batch\"]\nonly = [\"d1\"]\n",
    );
    let body = user_message("gpt-4o", "hi");
    let batch = spread(
        &gw,
        30,
        &body,
        None,
        &[("x-switchyard-tags", "low-priority, batch")],
    )
    .await;
    assert_eq!(count(&batch, "d1"), 30, "tagged batch: {batch:?}");

    let other = spread(
        &gw,
        60,
        &body,
        None,
        &[("x-switchyard-tags", "interactive")],
    )
    .await;
    for d in ["d1", "d2", "d3"] {
        assert!(
            count(&other, d) > 0,
            "untagged traffic is spread: {other:?}"
        );
    }
    assert_eq!(
        mock.request_count("d2") + mock.request_count("d3"),
        60 - count(&other, "d1")
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn an_only_rule_never_uses_an_unlisted_deployment_even_when_the_listed_one_fails() {
    let mock = mock().await;
    mock.set_behavior("d1", Behavior::error(ErrorPreset::ServerError));
    let gw = three_way(
        &mock,
        "num_retries = 0",
        "\n[[rules]]\nname = \"pinned\"\nmodel = \"gpt-4o\"\nuser = \"pinned\"\nonly = [\"d1\"]\n",
    );
    let mut pinned = user_message("gpt-4o", "hi");
    pinned["user"] = json!("pinned");
    let seen = spread(&gw, 4, &pinned, None, &[]).await;
    assert_eq!(
        count(&seen, "<502>"),
        4,
        "the only deployment fails: {seen:?}"
    );
    assert_eq!(mock.request_count("d1"), 4);
    assert_eq!(mock.request_count("d2"), 0);
    assert_eq!(mock.request_count("d3"), 0);

    // Without the rule's condition the healthy deployments serve.
    let free = spread(&gw, 10, &user_message("gpt-4o", "hi"), None, &[]).await;
    assert_eq!(
        count(&free, "d2") + count(&free, "d3") + count(&free, "<502>"),
        10,
        "{free:?}"
    );
    assert_eq!(count(&free, "d1"), 0);
    assert_eq!(mock.request_count("d1"), 4 + count(&free, "<502>"));
    gw.stop(true).await;
}

// === 3. region pinning by request header ===

fn regional_gateway(mock: &MockUpstream) -> Gateway {
    start_gateway(&format!(
        "{}{}{}{}{}\n[[fallbacks]]\nfrom = \"gpt-4o\"\nto = [\"backup\"]\n",
        settings("num_retries = 1", ""),
        oai(mock, "eu-1", "gpt-4o", "region = \"eu\""),
        oai(mock, "eu-2", "gpt-4o", "region = \"eu\""),
        oai(mock, "us-1", "gpt-4o", "region = \"us\""),
        oai(mock, "us-backup", "backup", "region = \"us\""),
    ))
}

#[actix_web::test]
async fn a_request_pinned_to_eu_by_header_never_reaches_a_us_deployment_even_on_fallback() {
    let mock = mock().await;
    mock.set_behavior("eu-1", Behavior::error(ErrorPreset::ServerError));
    mock.set_behavior("eu-2", Behavior::error(ErrorPreset::ServerError));
    let gw = regional_gateway(&mock);
    let body = user_message("gpt-4o", "hi");

    // 4 requests: 8 failures, fewer than 5 in a row on either EU deployment (no ejection).
    let seen = spread(&gw, 4, &body, None, &[("x-switchyard-region", "eu")]).await;
    assert_eq!(
        count(&seen, "us-1") + count(&seen, "us-backup"),
        0,
        "{seen:?}"
    );
    assert_eq!(mock.request_count("us-1"), 0);
    assert_eq!(mock.request_count("us-backup"), 0);
    assert_eq!(seen.values().sum::<usize>(), 4);
    assert!(
        seen.keys().all(|k| k.starts_with('<')),
        "every EU request fails: {seen:?}"
    );
    assert_eq!(
        mock.request_count("eu-1") + mock.request_count("eu-2"),
        8,
        "both EU deployments tried once per request"
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[("deployment", "us-1")]
        )
        .await,
        0.0
    );

    // Unpinned requests do use the rest of the group and the fallback.
    let free = spread(&gw, 10, &body, None, &[]).await;
    assert_eq!(
        count(&free, "us-1") + count(&free, "us-backup"),
        10,
        "{free:?}"
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_request_pinned_to_eu_whose_eu_deployments_fail_gets_a_503_naming_the_region() {
    let mock = mock().await;
    mock.set_behavior("eu-1", Behavior::error(ErrorPreset::ServerError));
    mock.set_behavior("eu-2", Behavior::error(ErrorPreset::ServerError));
    let gw = regional_gateway(&mock);
    let r = send(
        &gw,
        &user_message("gpt-4o", "hi"),
        None,
        &[("x-switchyard-region", "eu")],
    )
    .await;
    assert_eq!(
        mock.request_count("us-1") + mock.request_count("us-backup"),
        0
    );
    assert_eq!(r.status, 503, "{}", r.body);
    let message = error_message(&r);
    assert!(
        message.contains("region `eu`"),
        "the message names the region: {message}"
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_request_pinned_to_a_region_without_deployments_gets_a_503_naming_the_region() {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{}{}{}\n[[fallbacks]]\nfrom = \"gpt-4o\"\nto = [\"backup\"]\n",
        FAST_ROUTER,
        oai(&mock, "us-1", "gpt-4o", "region = \"us\""),
        oai(&mock, "us-backup", "backup", "region = \"us\""),
    ));
    let r = send(
        &gw,
        &user_message("gpt-4o", "hi"),
        None,
        &[("x-switchyard-region", "eu")],
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "no_deployment_available");
    let message = error_message(&r);
    assert!(message.contains("region `eu`"), "{message}");
    assert!(message.contains("gpt-4o"), "{message}");
    assert_eq!(
        mock.request_count("us-1") + mock.request_count("us-backup"),
        0
    );
    gw.stop(true).await;
}

// === 4. region pinning by key ===

fn keyed_regional_gateway(mock: &MockUpstream) -> Gateway {
    start_gateway(&format!(
        "{}{}{}\n[[keys]]\nname = \"team-eu\"\nkey = \"{EU_KEY}\"\nregion = \"eu\"\n",
        settings_with_server(&format!("master_key = \"{MASTER_KEY}\""), "", ""),
        oai(mock, "eu-1", "gpt-4o", "region = \"eu\""),
        oai(mock, "us-1", "gpt-4o", "region = \"us\""),
    ))
}

#[actix_web::test]
async fn a_key_pinned_to_eu_only_reaches_eu_deployments() {
    let mock = mock().await;
    let gw = keyed_regional_gateway(&mock);
    let body = user_message("gpt-4o", "hi");
    let seen = spread(&gw, 30, &body, Some(EU_KEY), &[]).await;
    assert_eq!(count(&seen, "eu-1"), 30, "{seen:?}");
    let asked_eu = spread(
        &gw,
        5,
        &body,
        Some(EU_KEY),
        &[("x-switchyard-region", "eu")],
    )
    .await;
    assert_eq!(count(&asked_eu, "eu-1"), 5, "{asked_eu:?}");
    assert_eq!(mock.request_count("eu-1"), 35);
    assert_eq!(mock.request_count("us-1"), 0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_key_pinned_to_eu_asking_for_us_gets_400_region_not_allowed() {
    let mock = mock().await;
    let gw = keyed_regional_gateway(&mock);
    let r = send(
        &gw,
        &user_message("gpt-4o", "hi"),
        Some(EU_KEY),
        &[("x-switchyard-region", "us")],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "region_not_allowed");
    let message = error_message(&r);
    assert!(
        message.contains("`eu`") && message.contains("`us`"),
        "{message}"
    );
    assert_eq!(mock.request_count("eu-1") + mock.request_count("us-1"), 0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn the_master_key_is_not_pinned_to_any_region() {
    let mock = mock().await;
    let gw = keyed_regional_gateway(&mock);
    let body = user_message("gpt-4o", "hi");
    let seen = spread(&gw, 40, &body, Some(MASTER_KEY), &[]).await;
    assert_eq!(count(&seen, "eu-1") + count(&seen, "us-1"), 40, "{seen:?}");
    assert!(count(&seen, "us-1") > 0, "{seen:?}");
    assert!(count(&seen, "eu-1") > 0, "{seen:?}");
    let us = spread(
        &gw,
        5,
        &body,
        Some(MASTER_KEY),
        &[("x-switchyard-region", "us")],
    )
    .await;
    assert_eq!(count(&us, "us-1"), 5, "{us:?}");
    gw.stop(true).await;
}

// === 5. tenant namespaces ===

fn tenant_gateway(mock: &MockUpstream) -> Gateway {
    start_gateway(&format!(
        "{}{}{}{}",
        settings_with_server(&format!("master_key = \"{MASTER_KEY}\""), "", ""),
        oai(mock, "tenant-a-4o", "tenant-a/gpt-4o", ""),
        oai(mock, "shared-4o", "gpt-4o", ""),
        format_args!(
            "\n[[keys]]\nname = \"a\"\nkey = \"{TENANT_A_KEY}\"\ntenant = \"tenant-a\"\n\
             \n[[keys]]\nname = \"b\"\nkey = \"{TENANT_B_KEY}\"\ntenant = \"tenant-b\"\n\
             \n[[keys]]\nname = \"shared\"\nkey = \"{SHARED_KEY}\"\n"
        ),
    ))
}

#[actix_web::test]
async fn a_tenant_key_asking_gpt_4o_is_served_by_its_own_tenant_group() {
    let mock = mock().await;
    let gw = tenant_gateway(&mock);
    for _ in 0..10 {
        let r = send(&gw, &user_message("gpt-4o", "hi"), Some(TENANT_A_KEY), &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-switchyard-deployment"), Some("tenant-a-4o"));
        assert_eq!(
            r.header("x-switchyard-model-group"),
            Some("tenant-a/gpt-4o")
        );
    }
    // Its full name works too.
    let r = send(
        &gw,
        &user_message("tenant-a/gpt-4o", "hi"),
        Some(TENANT_A_KEY),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.request_count("tenant-a-4o"), 11);
    assert_eq!(mock.request_count("shared-4o"), 0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn another_tenants_key_asking_for_tenant_a_s_group_gets_404() {
    let mock = mock().await;
    let gw = tenant_gateway(&mock);
    for key in [TENANT_B_KEY, SHARED_KEY] {
        let r = send(&gw, &user_message("tenant-a/gpt-4o", "hi"), Some(key), &[]).await;
        assert_eq!(r.status, 404, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "model_not_found");
    }
    // Tenant b has no group of its own: it gets the shared one.
    let r = send(&gw, &user_message("gpt-4o", "hi"), Some(TENANT_B_KEY), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("shared-4o"));
    assert_eq!(mock.request_count("tenant-a-4o"), 0);
    assert_eq!(mock.request_count("shared-4o"), 1);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_key_without_a_tenant_gets_the_shared_gpt_4o() {
    let mock = mock().await;
    let gw = tenant_gateway(&mock);
    for key in [SHARED_KEY, MASTER_KEY] {
        for _ in 0..5 {
            let r = send(&gw, &user_message("gpt-4o", "hi"), Some(key), &[]).await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.header("x-switchyard-deployment"), Some("shared-4o"));
            assert_eq!(r.header("x-switchyard-model-group"), Some("gpt-4o"));
        }
    }
    assert_eq!(mock.request_count("shared-4o"), 10);
    assert_eq!(mock.request_count("tenant-a-4o"), 0);
    // The master key may address any tenant's group by its full name.
    let r = send(
        &gw,
        &user_message("tenant-a/gpt-4o", "hi"),
        Some(MASTER_KEY),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("tenant-a-4o"));
    gw.stop(true).await;
}

// === 6. aliases ===

#[actix_web::test]
async fn an_alias_routes_gpt_4o_to_the_claude_sonnet_group() {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}{}\n[aliases]\n\"gpt-4o\" = \"claude-sonnet\"\n",
        deployment(
            "claude",
            "claude-sonnet",
            "anthropic",
            &anthropic_base(&mock, "claude"),
            ""
        ),
        oai(&mock, "mini", "gpt-4o-mini", ""),
    ));
    for _ in 0..5 {
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_openai_completion(&r.body);
        assert_eq!(r.header("x-switchyard-model-group"), Some("claude-sonnet"));
        assert_eq!(r.header("x-switchyard-deployment"), Some("claude"));
    }
    assert_eq!(mock.request_count("claude"), 5);
    assert_eq!(mock.request_count("mini"), 0);
    let sent = mock.requests("claude");
    assert_eq!(sent.len(), 5);
    assert!(sent[0].path.ends_with("/v1/messages"), "{}", sent[0].path);
    assert_eq!(sent[0].json()["model"], "claude-sonnet");
    gw.stop(true).await;
}

// === 7. wildcard groups ===

#[actix_web::test]
async fn a_wildcard_group_serves_openai_gpt_4_1_mini_and_sends_gpt_4_1_mini_upstream() {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}",
        oai(&mock, "oa", "openai/*", ""),
    ));
    let r = chat(&gw, &user_message("openai/gpt-4.1-mini", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("oa"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("openai/*"));
    let r = chat(&gw, &user_message("openai/gpt-4o", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let sent = mock.requests("oa");
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].json()["model"], "gpt-4.1-mini");
    assert_eq!(sent[1].json()["model"], "gpt-4o");

    // Names outside the prefix, or the bare prefix, are not served.
    for name in ["anthropic/claude", "openai/", "gpt-4.1-mini"] {
        let r = chat(&gw, &user_message(name, "hi")).await;
        assert_eq!(r.status, 404, "{name}: {}", r.body);
    }
    assert_eq!(mock.request_count("oa"), 2);
    gw.stop(true).await;
}

// === 8. keys and config validation ===

#[actix_web::test]
async fn an_unknown_or_missing_key_gets_401() {
    let mock = mock().await;
    let gw = keyed_regional_gateway(&mock);
    let body = user_message("gpt-4o", "hi");
    let r = send(&gw, &body, Some("sk-not-a-key-0123456789abcdef"), &[]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "invalid_api_key");
    let r = send(&gw, &body, None, &[]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(mock.request_count("eu-1") + mock.request_count("us-1"), 0);
    let r = send(&gw, &body, Some(EU_KEY), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    gw.stop(true).await;
}

fn config_error(toml: &str) -> String {
    switchyard::config::Config::from_toml(toml)
        .unwrap_err()
        .to_string()
}

const TWO_DEPLOYMENTS: &str = r#"
[[deployments]]
id = "d1"
model = "gpt-4o"
provider = "openai"
api_base = "http://127.0.0.1:9/v1"

[[deployments]]
id = "c1"
model = "claude-sonnet"
provider = "anthropic"
api_base = "http://127.0.0.1:9"
"#;

#[test]
fn a_rule_naming_an_unknown_deployment_is_rejected_naming_the_key() {
    let e = config_error(&format!(
        "{TWO_DEPLOYMENTS}\n[[rules]]\nname = \"r\"\nmodel = \"gpt-4o\"\nprefer = [\"d1\", \"nope\"]\n"
    ));
    assert!(e.contains("rules[0].prefer[1]"), "{e}");
    assert!(e.contains("\"nope\""), "{e}");
    assert!(e.contains("no such deployment"), "{e}");
    // A deployment of another group is named too.
    let e = config_error(&format!(
        "{TWO_DEPLOYMENTS}\n[[rules]]\nmodel = \"gpt-4o\"\nonly = [\"c1\"]\n"
    ));
    assert!(e.contains("rules[0].only[0]"), "{e}");
    assert!(e.contains("does not serve the rule's model"), "{e}");
}

#[test]
fn an_alias_shadowing_a_group_is_rejected_naming_the_key() {
    let e = config_error(&format!(
        "{TWO_DEPLOYMENTS}\n[aliases]\n\"gpt-4o\" = \"claude-sonnet\"\n"
    ));
    assert!(e.contains("aliases.gpt-4o"), "{e}");
    assert!(e.contains("may not shadow"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn a_group_override_of_a_global_only_key_is_rejected_naming_the_key() {
    let e = config_error(&format!(
        "{TWO_DEPLOYMENTS}\n[groups.\"gpt-4o\"]\nnum_retries = 1\nconnect_timeout_ms = 100\n"
    ));
    assert!(e.contains("groups.gpt-4o.connect_timeout_ms"), "{e}");
    assert!(e.contains("can only be set in [router]"), "{e}");
    assert_eq!(
        e.lines().count(),
        1,
        "only the global-only key is a problem: {e}"
    );
    // The same override of a per-group key is fine.
    assert!(switchyard::config::Config::from_toml(&format!(
        "{TWO_DEPLOYMENTS}\n[groups.\"gpt-4o\"]\nnum_retries = 1\n"
    ))
    .is_ok());
}
