//! The `mock-upstream` command as a process: startup line, serving, exit codes, SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_mock-upstream");

#[test]
fn help_prints_usage_and_exits_0() {
    let out = Command::new(BIN).arg("--help").output().expect("runs");
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    assert!(stdout.contains("--latency-ms"));
    assert!(stdout.contains("--route NAME:key=value"));
}

#[test]
fn bad_arguments_exit_2_with_a_message_on_stderr() {
    let out = Command::new(BIN)
        .args(["--chunks", "zero"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).expect("utf8");
    assert!(stderr.contains("--chunks"), "{stderr}");
    assert!(stderr.contains("--help"), "{stderr}");
}

#[actix_web::test]
async fn serves_its_routes_prints_one_line_and_stops_on_sigterm() {
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--model",
            "bench-model",
            "--route",
            "busy:error=overloaded",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("startup line");
    let url = line
        .strip_prefix("mock-upstream listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .expect("url in the startup line")
        .to_owned();
    assert!(line.trim_end().ends_with("(routes: busy)"), "{line:?}");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let body = openai_body(false, None).to_string();
    let a = post_raw(&format!("{url}/v1/chat/completions"), &[], body.clone()).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["model"], "bench-model");
    let a = post_raw(&format!("{url}/busy/v1/chat/completions"), &[], body).await;
    assert_eq!(a.status, 503);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("stdout");
    assert_eq!(rest, "", "nothing printed per request");
}
