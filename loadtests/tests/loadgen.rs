#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The load generator against the in-process mock upstream, over real loopback connections.
//! `loadgen::run` blocks, so it runs on a blocking thread while the mock serves from the actix
//! System of the test.

use std::time::{Duration, Instant};

use switchyard_loadtests::loadgen::{self, LoadError, LoadSpec, Mode, Report};
use switchyard_loadtests::{Behavior, ErrorPreset, MockConfig, MockUpstream};

const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}"#;
const STREAM_BODY: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"stream":true}"#;

async fn mock() -> MockUpstream {
    MockUpstream::start(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await
    .expect("mock starts")
}

fn openai_url(mock: &MockUpstream, route: &str) -> String {
    format!("{}/v1/chat/completions", mock.route_url(route))
}

async fn run(spec: LoadSpec) -> Result<Report, LoadError> {
    actix_rt::task::spawn_blocking(move || loadgen::run(&spec))
        .await
        .expect("loadgen thread")
}

#[actix_rt::test]
async fn closed_loop_succeeds() {
    let mock = mock().await;
    let mut spec = LoadSpec::new(
        openai_url(&mock, ""),
        BODY,
        Mode::closed(4, Duration::from_millis(500)),
    );
    spec.warmup = Duration::from_millis(100);
    let r = run(spec).await.unwrap();
    assert_eq!(r.mode, "closed");
    assert_eq!(r.connections, Some(4));
    assert!(r.ok > 0, "{r:?}");
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert_eq!(r.sent, r.ok);
    assert_eq!(r.success_rate, 1.0);
    assert_eq!(r.status_counts.get(&200), Some(&r.ok));
    assert_eq!(r.latency.count, r.ok);
    assert!(r.latency.p50 > 0.0 && r.latency.p50 <= r.latency.max);
    assert!(r.ttft.is_none() && r.gap.is_none());
    assert!((r.duration_s - 0.5).abs() < 1e-9);
    assert!(r.achieved_rate > 0.0);
    // The warmup requests are not in the report.
    assert!(mock.request_count("") as u64 > r.sent);
    mock.stop().await;
}

#[actix_rt::test]
async fn closed_loop_on_two_threads() {
    let mock = mock().await;
    let mut spec = LoadSpec::new(
        openai_url(&mock, ""),
        BODY,
        Mode::closed(3, Duration::from_millis(300)),
    );
    spec.threads = 2;
    let r = run(spec).await.unwrap();
    assert!(r.ok > 0);
    assert_eq!(r.success_rate, 1.0, "{:?}", r.errors);
    mock.stop().await;
}

#[actix_rt::test]
async fn open_loop_achieves_its_rate() {
    let mock = mock().await;
    let spec = LoadSpec::new(
        openai_url(&mock, ""),
        BODY,
        Mode::open(200.0, Duration::from_secs(1)),
    );
    let r = run(spec).await.unwrap();
    assert_eq!(r.mode, "open");
    assert_eq!(r.target_rate, Some(200.0));
    assert_eq!(r.sent, 200);
    assert_eq!(r.ok, 200, "{:?}", r.errors);
    assert!(
        (150.0..=250.0).contains(&r.achieved_rate),
        "achieved {}",
        r.achieved_rate
    );
    assert_eq!(r.timeline.len(), 1);
    assert_eq!(r.timeline[0].sent, 200);
    mock.stop().await;
}

#[actix_rt::test]
async fn open_loop_phases_warmup_and_max_requests() {
    let mock = mock().await;
    let mode = Mode::Open {
        phases: vec![
            loadgen::Phase {
                duration: Duration::from_millis(500),
                rate: 40.0,
            },
            loadgen::Phase {
                duration: Duration::from_millis(500),
                rate: 100.0,
            },
        ],
        max_in_flight: 100,
    };
    let mut spec = LoadSpec::new(openai_url(&mock, ""), BODY, mode.clone());
    spec.warmup = Duration::from_millis(250);
    spec.threads = 2;
    let r = run(spec).await.unwrap();
    // Warmup: 10 requests at 40/s, not recorded; then 20 + 50.
    assert_eq!(r.sent, 70);
    assert_eq!(r.ok, 70, "{:?}", r.errors);
    assert_eq!(r.target_rate, Some(70.0));
    assert_eq!(mock.request_count(""), 80);

    // The budget counts warmup requests.
    let mut spec = LoadSpec::new(openai_url(&mock, "capped"), BODY, mode);
    spec.warmup = Duration::from_millis(250);
    spec.max_requests = 30;
    let r = run(spec).await.unwrap();
    assert_eq!(mock.request_count("capped"), 30);
    assert_eq!(r.sent, 20);
    mock.stop().await;
}

#[actix_rt::test]
async fn streams_have_ttft_and_gaps() {
    let mock = mock().await;
    mock.set_behavior(
        "s",
        Behavior::text("Hello there, streaming world.")
            .with_ttft(Duration::from_millis(20))
            .with_chunk_delay(Duration::from_millis(5))
            .with_chunks(4),
    );
    let mut spec = LoadSpec::new(
        openai_url(&mock, "s"),
        STREAM_BODY,
        Mode::closed(4, Duration::from_millis(500)),
    );
    spec.stream = true;
    let r = run(spec).await.unwrap();
    assert!(r.ok > 0);
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    let ttft = r.ttft.unwrap();
    let gap = r.gap.unwrap();
    assert_eq!(ttft.count, r.ok);
    assert!(ttft.p50 >= 19.0, "{ttft:?}");
    assert!(ttft.p50 < r.latency.p50, "{ttft:?} {:?}", r.latency);
    // 3 gaps of ~5 ms between 4 content chunks, then the finish chunk and [DONE].
    assert!(gap.count >= 3 * r.ok, "{gap:?}");
    assert!(gap.max >= 4.0, "{gap:?}");

    // Anthropic streams end with message_stop.
    let mut spec = LoadSpec::new(
        format!("{}/v1/messages", mock.route_url("s")),
        r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Hi"}]}"#,
        Mode::closed(2, Duration::from_millis(300)),
    );
    spec.stream = true;
    spec.headers = vec![("anthropic-version".into(), "2023-06-01".into())];
    let r = run(spec).await.unwrap();
    assert!(r.ok > 0);
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert!(r.ttft.unwrap().p50 >= 19.0);
    mock.stop().await;
}

#[actix_rt::test]
async fn cut_stream_is_a_bad_stream() {
    let mock = mock().await;
    mock.set_behavior(
        "cut",
        Behavior::default().with_fault(switchyard_loadtests::Fault::CutStream { after_chunks: 2 }),
    );
    let mut spec = LoadSpec::new(
        openai_url(&mock, "cut"),
        STREAM_BODY,
        Mode::closed(2, Duration::from_millis(200)),
    );
    spec.stream = true;
    let r = run(spec).await.unwrap();
    assert_eq!(r.ok, 0);
    assert!(r.failed > 0);
    assert_eq!(
        r.errors.get("bad stream"),
        Some(&r.failed),
        "{:?}",
        r.errors
    );
    assert_eq!(r.success_rate, 0.0);
    mock.stop().await;
}

#[actix_rt::test]
async fn error_statuses_are_counted() {
    let mock = mock().await;
    mock.set_behavior("e500", Behavior::error(ErrorPreset::ServerError));
    mock.set_behavior(
        "e429",
        Behavior::error(ErrorPreset::RateLimited { retry_after: None }),
    );
    for (route, key, status) in [("e500", "status 500", 500u16), ("e429", "status 429", 429)] {
        let spec = LoadSpec::new(
            openai_url(&mock, route),
            BODY,
            Mode::open(100.0, Duration::from_millis(300)),
        );
        let r = run(spec).await.unwrap();
        assert_eq!(r.sent, 30);
        assert_eq!(r.ok, 0);
        assert_eq!(r.failed, 30);
        assert_eq!(r.errors.get(key), Some(&30), "{:?}", r.errors);
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert_eq!(r.status_counts.get(&status), Some(&30));
        assert_eq!(r.success_rate, 0.0);
        assert_eq!(r.failed_latency.count, 30);
        assert_eq!(r.latency.count, 0);
    }
    mock.stop().await;
}

#[actix_rt::test]
async fn no_coordinated_omission() {
    let mock = mock().await;
    mock.set_behavior(
        "slow",
        Behavior::default().with_latency(Duration::from_millis(100)),
    );
    // 50 req/s on one connection that serves 10 req/s: requests queue, and the wait counts.
    let mut spec = LoadSpec::new(
        openai_url(&mock, "slow"),
        BODY,
        Mode::Open {
            phases: vec![loadgen::Phase {
                duration: Duration::from_secs(1),
                rate: 50.0,
            }],
            max_in_flight: 1,
        },
    );
    spec.timeout = Duration::from_millis(1200);
    let started = Instant::now();
    let r = run(spec).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(2800));
    assert_eq!(r.sent, 50);
    assert!(r.ok >= 8, "{r:?}");
    assert!(r.latency.p50 > 200.0, "{:?}", r.latency);
    assert!(r.latency.p99 > 700.0, "{:?}", r.latency);
    // The rest timed out, most of them while waiting for the connection.
    assert_eq!(r.errors.get("timeout").copied().unwrap_or(0), r.failed);
    assert_eq!(r.ok + r.failed, 50);
    mock.stop().await;
}

#[actix_rt::test]
async fn timeouts_are_counted_and_bounded() {
    let mock = mock().await;
    mock.set_behavior(
        "hang",
        Behavior::default().with_fault(switchyard_loadtests::Fault::Hang),
    );
    let mut spec = LoadSpec::new(
        openai_url(&mock, "hang"),
        BODY,
        Mode::open(20.0, Duration::from_millis(500)),
    );
    spec.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let r = run(spec).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(r.sent, 10);
    assert_eq!(r.errors.get("timeout"), Some(&10), "{:?}", r.errors);
    assert!(r.failed_latency.p50 >= 299.0, "{:?}", r.failed_latency);
    mock.stop().await;
}

#[actix_rt::test]
async fn timeline_counts_tracked_header_per_second() {
    let mock = mock().await;
    mock.set_behavior(
        "tagged",
        Behavior::default().with_header("x-served-by", "mock-a"),
    );
    let mut spec = LoadSpec::new(
        openai_url(&mock, "tagged"),
        BODY,
        Mode::open(50.0, Duration::from_secs(2)),
    );
    spec.track_header = Some("x-served-by".into());
    let r = run(spec).await.unwrap();
    assert_eq!(r.timeline.len(), 2);
    for (i, t) in r.timeline.iter().enumerate() {
        assert_eq!(t.second, i as u64);
        assert_eq!(t.sent, 50);
        assert_eq!(t.ok, 50);
        assert_eq!(t.headers.get("mock-a"), Some(&50), "{:?}", t.headers);
        assert!(t.p50_ms > 0.0 && t.p50_ms <= t.p99_ms);
    }
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["timeline"][1]["headers"]["mock-a"], 50);
    assert_eq!(json["mode"], "open");
    mock.stop().await;
}

#[actix_rt::test]
async fn absent_tracked_header_counts_as_dash() {
    let mock = mock().await;
    let mut spec = LoadSpec::new(
        openai_url(&mock, ""),
        BODY,
        Mode::open(20.0, Duration::from_millis(500)),
    );
    spec.track_header = Some("x-served-by".into());
    let r = run(spec).await.unwrap();
    assert_eq!(r.timeline.len(), 1);
    assert_eq!(r.timeline[0].headers.get("-"), Some(&10));
    mock.stop().await;
}

#[test]
fn non_loopback_targets_are_refused() {
    for url in [
        "http://10.1.2.3:80/v1/chat/completions",
        "http://example.com/v1/chat/completions",
        "http://192.168.0.1/",
    ] {
        let spec = LoadSpec::new(url, BODY, Mode::closed(1, Duration::from_millis(100)));
        match loadgen::run(&spec) {
            Err(LoadError::NotLoopback(_)) => {}
            other => panic!("{url}: {other:?}"),
        }
    }
    let spec = LoadSpec::new(
        "https://127.0.0.1/",
        BODY,
        Mode::closed(1, Duration::from_millis(100)),
    );
    assert!(matches!(loadgen::run(&spec), Err(LoadError::BadUrl(_))));
}

#[test]
fn nothing_listening_is_an_error() {
    // Bind then drop, to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = LoadSpec::new(
        format!("http://127.0.0.1:{port}/v1/chat/completions"),
        BODY,
        Mode::closed(1, Duration::from_millis(100)),
    );
    let e = loadgen::run(&spec).unwrap_err();
    assert!(matches!(e, LoadError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("cannot connect"));
}

#[test]
fn invalid_specs_are_refused() {
    let url = "http://127.0.0.1:1/";
    for mode in [
        Mode::open(0.0, Duration::from_secs(1)),
        Mode::open(f64::NAN, Duration::from_secs(1)),
        Mode::Open {
            phases: vec![],
            max_in_flight: 1,
        },
        Mode::closed(0, Duration::from_secs(1)),
    ] {
        let spec = LoadSpec::new(url, BODY, mode.clone());
        assert!(
            matches!(loadgen::run(&spec), Err(LoadError::InvalidSpec(_))),
            "{mode:?}"
        );
    }
}

#[test]
fn markdown_table_has_one_row_per_report() {
    let empty = |label: &str, ttft| Report {
        label: label.into(),
        mode: "open".into(),
        target_rate: Some(100.0),
        connections: None,
        duration_s: 1.0,
        sent: 100,
        ok: 99,
        failed: 1,
        success_rate: 0.99,
        achieved_rate: 100.0,
        errors: Default::default(),
        latency: loadgen::Summary {
            count: 99,
            mean: 1.0,
            p50: 1.0,
            p90: 2.0,
            p99: 3.0,
            p999: 4.0,
            max: 5.0,
        },
        failed_latency: Default::default(),
        ttft,
        gap: None,
        timeline: vec![],
        status_counts: Default::default(),
    };
    let a = empty("a", None);
    let b = empty("b", Some(loadgen::Summary::default()));
    let t = Report::markdown_table(&[&a]);
    assert_eq!(t.lines().count(), 3, "{t}");
    assert!(!t.contains("ttft"));
    assert!(
        t.contains("| a | open | 100.0 | 100.0 | 99.00% | 1.00 | 2.00 | 3.00 | 5.00 |"),
        "{t}"
    );
    let t = Report::markdown_table(&[&a, &b]);
    assert_eq!(t.lines().count(), 4, "{t}");
    assert!(t.lines().next().unwrap().contains("ttft p50"));
    assert!(t.contains(" - | - |"));
}
