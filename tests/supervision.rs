//! A deployment actor that stops is restarted by its supervisor; one that panics (mailbox
//! closed) is respawned from config. Requests meanwhile go elsewhere and none hangs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use switchyard::actors::deployment::Crash;

fn config(mock: &MockUpstream) -> String {
    format!(
        "{}{}{}",
        settings("", ""),
        deployment(
            "a",
            "gpt-4o",
            "openai",
            &openai_base(mock, "a"),
            "weight = 1000"
        ),
        deployment(
            "b",
            "gpt-4o",
            "openai",
            &openai_base(mock, "b"),
            "weight = 1"
        ),
    )
}

#[actix_web::test]
async fn a_panicked_deployment_actor_is_respawned_and_requests_keep_flowing() {
    let mock = mock().await;
    let gw = start_gateway(&config(&mock));
    let before = gw.registry().addr(0);
    before.do_send(Crash { panic: true });
    eventually(|| !before.connected()).await;

    // The next request finds the mailbox closed: `a` is skipped (served by `b`) and respawned.
    let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-deployment"), Some("b"));
    assert!(gw.registry().addr(0).connected(), "a fresh actor runs");
    assert_eq!(
        metric(&gw, "gateway_actor_respawns_total", &[("deployment", "a")]).await,
        1.0
    );

    // The respawned actor serves again.
    let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-deployment"), Some("a"));
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_stopped_deployment_actor_is_restarted_by_its_supervisor() {
    let mock = mock().await;
    let gw = start_gateway(&config(&mock));
    let addr = gw.registry().addr(0);
    addr.send(Crash { panic: false }).await.unwrap();
    for _ in 0..5 {
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        assert_eq!(r.status, 200);
    }
    assert!(addr.connected(), "same mailbox, restarted actor");
    assert_eq!(
        metric(&gw, "gateway_actor_respawns_total", &[("deployment", "a")]).await,
        0.0
    );
    assert!(mock.request_count("a") >= 4);
    gw.stop(true).await;
}
