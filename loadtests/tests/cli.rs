//! Argument parsing of the `mock-upstream` command.

use std::time::Duration;

use switchyard_loadtests::cli::{parse_args, CliOptions, Command};
use switchyard_loadtests::{ErrorPreset, Fault};

fn run(args: &[&str]) -> CliOptions {
    match parse_args(args.iter().copied()) {
        Ok(Command::Run(options)) => *options,
        other => panic!("expected Run for {args:?}, got {other:?}"),
    }
}

fn error(args: &[&str]) -> String {
    match parse_args(args.iter().copied()) {
        Err(e) => e.to_string(),
        other => panic!("expected an error for {args:?}, got {other:?}"),
    }
}

#[test]
fn defaults_listen_on_9100_with_one_worker_and_no_recording() {
    let o = run(&[]);
    assert_eq!(o.config.listen, "127.0.0.1:9100".parse().expect("addr"));
    assert_eq!(o.config.workers, 1);
    assert!(!o.config.record);
    assert_eq!(o.config.require_api_key, None);
    let b = &o.config.default_behavior;
    assert_eq!(b.latency, Duration::ZERO);
    assert_eq!(b.ttft, Duration::ZERO);
    assert_eq!(b.chunk_delay, Duration::ZERO);
    assert_eq!(b.chunks, 4);
    assert_eq!(b.fail_rate, 0.0);
    assert_eq!(b.model, "mock-model");
    assert!(matches!(b.fault, Fault::None));
    assert!(o.routes.is_empty());
}

#[test]
fn every_flag_is_parsed() {
    let o = run(&[
        "--listen",
        "0.0.0.0:8080",
        "--workers",
        "3",
        "--record",
        "--latency-ms",
        "20",
        "--ttft-ms",
        "150",
        "--chunk-delay-ms=5",
        "--chunks",
        "16",
        "--fail-rate",
        "0.25",
        "--model",
        "gpt-4o-mini",
    ]);
    assert_eq!(o.config.listen, "0.0.0.0:8080".parse().expect("addr"));
    assert_eq!(o.config.workers, 3);
    assert!(o.config.record);
    let b = &o.config.default_behavior;
    assert_eq!(b.latency, Duration::from_millis(20));
    assert_eq!(b.ttft, Duration::from_millis(150));
    assert_eq!(b.chunk_delay, Duration::from_millis(5));
    assert_eq!(b.chunks, 16);
    assert_eq!(b.fail_rate, 0.25);
    assert_eq!(b.model, "gpt-4o-mini");
}

#[test]
fn routes_start_from_the_global_flags_wherever_they_appear() {
    let o = run(&[
        "--route",
        "slow:latency_ms=500,chunks=2",
        "--latency-ms",
        "7",
        "--model",
        "g",
        "--route",
        "plain",
        "--route",
        "busy:error=rate_limited,retry_after=2",
        "--route",
        "x:ttft_ms=1,chunk_delay_ms=2,fail_rate=1,model=m2",
    ]);
    let names: Vec<_> = o.routes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["slow", "plain", "busy", "x"]);
    let slow = &o.routes[0].1;
    assert_eq!(slow.latency, Duration::from_millis(500));
    assert_eq!(slow.chunks, 2);
    assert_eq!(slow.model, "g");
    let plain = &o.routes[1].1;
    assert_eq!(plain.latency, Duration::from_millis(7));
    let busy = &o.routes[2].1;
    assert!(matches!(
        busy.fault,
        Fault::Error(ErrorPreset::RateLimited {
            retry_after: Some(2)
        })
    ));
    assert_eq!(busy.latency, Duration::from_millis(7));
    let x = &o.routes[3].1;
    assert_eq!(x.ttft, Duration::from_millis(1));
    assert_eq!(x.chunk_delay, Duration::from_millis(2));
    assert_eq!(x.fail_rate, 1.0);
    assert_eq!(x.model, "m2");
}

#[test]
fn every_error_name_maps_to_its_preset() {
    for (name, check) in [
        (
            "rate_limited",
            (|p: &ErrorPreset| matches!(p, ErrorPreset::RateLimited { retry_after: None }))
                as fn(&ErrorPreset) -> bool,
        ),
        ("quota", |p| matches!(p, ErrorPreset::QuotaExhausted)),
        ("overloaded", |p| matches!(p, ErrorPreset::Overloaded)),
        ("server_error", |p| matches!(p, ErrorPreset::ServerError)),
        ("context_length", |p| {
            matches!(p, ErrorPreset::ContextLength)
        }),
        ("bad_request", |p| matches!(p, ErrorPreset::BadRequest)),
        ("unauthorized", |p| matches!(p, ErrorPreset::Unauthorized)),
        ("content_filtered", |p| {
            matches!(p, ErrorPreset::ContentFiltered)
        }),
    ] {
        let spec = format!("r:error={name}");
        let o = run(&["--route", &spec]);
        match &o.routes[0].1.fault {
            Fault::Error(p) => assert!(check(p), "{name}: {p:?}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn help_wins() {
    assert!(matches!(parse_args(["--help"]), Ok(Command::Help)));
    assert!(matches!(
        parse_args(["--workers", "2", "-h"]),
        Ok(Command::Help)
    ));
    assert!(switchyard_loadtests::cli::USAGE.contains("--route NAME:key=value"));
}

#[test]
fn bad_arguments_are_explained() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "--bogus"),
        (&["stray"], "stray"),
        (&["--listen", "localhost"], "--listen"),
        (&["--listen"], "--listen"),
        (&["--workers", "0"], "--workers"),
        (&["--workers", "-1"], "--workers"),
        (&["--workers", "100000"], "at most 256"),
        (&["--latency-ms", "1.5"], "--latency-ms"),
        (&["--chunks", "0"], "--chunks"),
        (&["--fail-rate", "1.5"], "--fail-rate"),
        (&["--fail-rate", "NaN"], "--fail-rate"),
        (&["--model", ""], "--model"),
        (&["--record=yes"], "--record"),
        (&["--route", ":latency_ms=1"], "name is empty"),
        (&["--route", "a/b"], "may only contain"),
        (&["--route", "a:latency_ms"], "expected key=value"),
        (&["--route", "a:nope=1"], "unknown key \"nope\""),
        (&["--route", "a:latency_ms=x"], "latency_ms"),
        (&["--route", "a:chunks=0"], "chunks"),
        (&["--route", "a:fail_rate=2"], "fail_rate"),
        (&["--route", "a:model="], "model"),
        (&["--route", "a:error=teapot"], "unknown error \"teapot\""),
        (
            &["--route", "a:retry_after=2"],
            "retry_after needs error=rate_limited",
        ),
        (
            &["--route", "a:error=quota,retry_after=2"],
            "retry_after needs error=rate_limited",
        ),
        (
            &["--route", "a:error=rate_limited,retry_after=soon"],
            "retry_after",
        ),
        (&["--route", "a", "--route", "a:chunks=2"], "defined twice"),
    ];
    for (args, needle) in cases {
        let msg = error(args);
        assert!(
            msg.contains(needle),
            "{args:?}: {msg:?} should mention {needle:?}"
        );
    }
}
