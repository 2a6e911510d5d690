//! `switchyard check --config FILE`: validates without starting and prints every problem.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn check(text: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-check-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(["check", "--config"])
        .arg(&path)
        .env_remove("OPENAI_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "[[deployments]]\nid = \"a\"\nmodel = \"gpt-4o\"\nprovider = \"openai\"\napi_key = \"${OPENAI_API_KEY}\"\n";

#[test]
fn a_valid_file_passes() {
    let (code, out, err) = check(GOOD, &[("OPENAI_API_KEY", "sk-test")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok (1 deployments, 1 model groups)"), "{out}");
}

#[test]
fn a_missing_secret_names_the_key_and_never_starts() {
    let (code, _, err) = check(GOOD, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("deployments.a.api_key: environment variable OPENAI_API_KEY is not set"),
        "{err}"
    );
}

#[test]
fn every_problem_is_printed_at_once() {
    let (code, _, err) = check(
        "[server]\nlisten = \"x\"\nworkerz = 2\n[[deployments]]\nid = \"a\"\nmodel = \"m\"\nprovider = \"nope\"\nweight = 0\n",
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("server.workerz: unknown field `workerz`"),
        "{err}"
    );
    assert!(
        err.contains("deployments.a.provider = \"nope\": unknown provider"),
        "{err}"
    );
    assert!(
        err.contains("deployments.a.weight = 0: must be between 1 and 1000000"),
        "{err}"
    );
}

#[test]
fn the_bundled_configs_pass() {
    let root = env!("CARGO_MANIFEST_DIR");
    for (file, env) in [
        ("config/demo.toml", vec![]),
        (
            "config/switchyard.toml",
            vec![("OPENAI_API_KEY", "sk-x"), ("ANTHROPIC_API_KEY", "sk-y")],
        ),
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let (code, _, err) = check(&text, &env);
        assert_eq!(code, 0, "{file}: {err}");
    }
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing --config FILE"));
}
