//! The examples run as a user would run them: `refresh_loop` offline against the built-in
//! emulator, and unchanged against an independent JWT-bearer server named by a DT
//! credentials file.
#![cfg(feature = "reqwest")]

mod common;

use common::example;
use httpmock::prelude::*;
use serde_json::json;

#[test]
fn refresh_loop_runs_offline_against_the_emulator() {
    let output = example("refresh_loop")
        .args(["--interval", "0.05", "--count", "5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines();
    assert!(
        lines.next().unwrap().contains("emulator"),
        "the first line says so: {stdout}"
    );
    let counts: Vec<_> = lines
        .filter(|l| l.starts_with("Token expires in "))
        .collect();
    assert_eq!(counts.len(), 5, "{stdout}");
}

#[tokio::test]
async fn refresh_loop_works_against_an_independent_server() {
    let server = MockServer::start_async().await;
    let token = server
        .mock_async(|when, then| {
            when.method(POST)
                .path("/identity/token")
                .form_urlencoded_tuple("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
                .form_urlencoded_tuple_exists("assertion");
            then.status(200).json_body(json!({
                "access_token": "independent-token", "token_type": "Bearer", "expires_in": 3600
            }));
        })
        .await;
    let api = server
        .mock_async(|when, then| {
            when.method(GET)
                .path("/api/v2/projects")
                .header("authorization", "Bearer independent-token");
            then.status(200)
                .json_body(json!({"projects": [], "nextPageToken": ""}));
        })
        .await;
    let file = std::env::temp_dir().join(format!("refresh-loop-creds-{}.json", std::process::id()));
    std::fs::write(
        &file,
        json!({"serviceAccount": {
            "keyId": "kid", "secret": "secret", "email": "sa@example.com",
            "algorithm": "HS256", "tokenEndpoint": server.url("/identity/token")
        }})
        .to_string(),
    )
    .unwrap();
    let output = example("refresh_loop")
        .env("DT_CREDENTIALS_FILE", &file)
        .args([
            "--interval",
            "0",
            "--count",
            "3",
            "--api-url",
            &server.url("/api/v2"),
        ])
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains("emulator"));
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("Token expires in "))
            .count(),
        3
    );
    assert_eq!(token.calls_async().await, 1);
    assert_eq!(api.calls_async().await, 3);
}

#[test]
fn refresh_loop_fails_when_calls_fail() {
    let file = std::env::temp_dir().join(format!("refresh-loop-bad-{}.json", std::process::id()));
    std::fs::write(
        &file,
        r#"{"serviceAccount": {"keyId": "k", "secret": "s", "email": "e",
            "tokenEndpoint": "http://127.0.0.1:9/oauth2/token"}}"#,
    )
    .unwrap();
    let output = example("refresh_loop")
        .env("DT_CREDENTIALS_FILE", &file)
        .args([
            "--interval",
            "0",
            "--count",
            "1",
            "--api-url",
            "http://127.0.0.1:9/v2",
        ])
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 of 1 calls failed"));
}

/// Each example's `--help` prints its usage on stdout and exits 0, whatever else is set.
#[test]
fn every_example_answers_help() {
    let mut examples = vec!["refresh_loop", "reqwest_client", "print_token"];
    if cfg!(feature = "tower") {
        examples.push("tower_stack");
    }
    if cfg!(feature = "tonic") {
        examples.push("grpc_client");
    }
    for name in examples {
        let output = example(name).arg("--help").output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{name} --help failed");
        assert!(stdout.starts_with("usage:"), "{name}: {stdout}");
        assert!(
            !stdout.contains("emulator at"),
            "{name} started something: {stdout}"
        );
    }
}

/// A credentials file that is set but broken ends the example with the file's error; it
/// never falls back to the emulator.
#[test]
fn broken_credentials_are_an_error_not_a_fallback() {
    let file = std::env::temp_dir().join(format!("broken-creds-{}.json", std::process::id()));
    std::fs::write(&file, r#"{"serviceAccount": {"keyId": "k", "email": "e"}}"#).unwrap();
    let mut examples = vec!["refresh_loop", "reqwest_client"];
    if cfg!(feature = "tower") {
        examples.push("tower_stack");
    }
    for name in examples {
        let output = example(name)
            .env("DT_CREDENTIALS_FILE", &file)
            .args(if name == "refresh_loop" {
                &["--count", "1"][..]
            } else {
                &[][..]
            })
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert!(!output.status.success(), "{name} exited 0: {stdout}");
        assert!(
            stderr.contains(&*file.to_string_lossy()),
            "{name}: {stderr}"
        );
        assert!(stderr.contains("serviceAccount.secret"), "{name}: {stderr}");
        assert!(!stdout.contains("emulator"), "{name} fell back: {stdout}");
        assert!(
            !stdout.contains("emulated-project"),
            "{name} fell back: {stdout}"
        );
    }
    std::fs::remove_file(&file).unwrap();
}

/// With no credentials, `--api-url` elsewhere is an error that says what to set: the
/// emulator's tokens would mean nothing there, and no emulator banner is printed.
#[test]
fn api_url_elsewhere_without_credentials_asks_for_credentials() {
    let output = example("refresh_loop")
        .args(["--count", "1", "--api-url", "http://127.0.0.1:9/v2"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(!output.status.success());
    assert!(!stdout.contains("emulator"), "{stdout}");
    assert!(stderr.contains("DT_CREDENTIALS_FILE"), "{stderr}");
}

/// The short examples run offline against the emulator and print its project.
#[test]
fn the_client_examples_run_offline() {
    let mut examples = vec!["reqwest_client"];
    if cfg!(feature = "tower") {
        examples.push("tower_stack");
    }
    for name in examples {
        let output = example(name).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{name}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("using the built-in emulator"),
            "{name}: {stdout}"
        );
        assert!(stdout.contains("emulated-project"), "{name}: {stdout}");
    }
}

/// The gRPC example: a revoked token is replaced transparently, offline.
#[cfg(feature = "tonic")]
#[test]
fn grpc_client_runs_offline() {
    let output = example("grpc_client").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("echo: hello again"), "{stdout}");
    assert!(stdout.contains("token requests: 2"), "{stdout}");
}

#[test]
fn print_token_without_credentials_says_what_to_set() {
    let output = example("print_token").output().unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("DT_SERVICE_ACCOUNT_KEY_ID"));
}
