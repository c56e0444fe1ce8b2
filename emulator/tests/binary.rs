//! The emulator as a process: started with `--port 0`, it prints its credentials as one JSON
//! line and then issues tokens for them.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use token_refresh::{ClientCredentials, JwtBearer, ServiceAccount, TokenProvider};

/// Kills the process when dropped, so that a failed assertion leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> (Running, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_token-refresh-emulator"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    (running, serde_json::from_str(&line).expect("one JSON line"))
}

#[tokio::test]
async fn the_binary_prints_its_credentials_and_issues_tokens_for_them() {
    let (_running, info) = start(&["--port", "0", "--token-ttl", "90"]);
    let text = |path: &[&str]| {
        let mut value = &info;
        for key in path {
            value = &value[key];
        }
        value
            .as_str()
            .unwrap_or_else(|| panic!("{path:?} in {info}"))
            .to_owned()
    };
    let token_url = text(&["token_url"]);
    assert!(token_url.starts_with("http://127.0.0.1:"), "{token_url}");
    assert!(!token_url.contains(":0/"), "the real port: {token_url}");

    let account = ServiceAccount::new(
        text(&["service_account", "key_id"]),
        text(&["service_account", "email"]),
        text(&["service_account", "secret"]),
    );
    let jwt = TokenProvider::new(JwtBearer::new(account).token_url(&token_url));
    let client = TokenProvider::new(ClientCredentials::new(
        &token_url,
        text(&["client", "client_id"]),
        text(&["client", "client_secret"]),
    ));
    for provider in [jwt, client] {
        let valid_for = provider.token().await.expect("a token").expires_in();
        assert!(
            valid_for.as_secs() <= 90 && valid_for.as_secs() > 30,
            "the --token-ttl lifetime: {valid_for:?}"
        );
    }
}

#[test]
fn a_bad_flag_exits_with_2_and_says_which() {
    let output = Command::new(env!("CARGO_BIN_EXE_token-refresh-emulator"))
        .args(["--port", "eighty"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--port \"eighty\""), "{stderr}");
}
