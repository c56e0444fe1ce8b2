//! The DT guide's token refresh routine, in Rust.
//!
//! Every `--interval` seconds (default 5) it makes an authenticated `GET {api}/projects`
//! through `AuthMiddleware` and prints `Token expires in Ns.`: the seconds until the token
//! would no longer be used (its 60 s margin, scaled down for short tokens). The provider
//! refreshes it in the background before then, so the count jumps back up without any call
//! waiting.
//!
//! Credentials come from `ServiceAccount::discover()`: the file named by
//! `DT_CREDENTIALS_FILE` (its `tokenEndpoint` is used), else `DT_SERVICE_ACCOUNT_KEY_ID`,
//! `DT_SERVICE_ACCOUNT_SECRET` and `DT_SERVICE_ACCOUNT_EMAIL`. With none set, it starts the
//! built-in emulator with 30 s tokens, so a refresh shows within half a minute, offline.
//!
//! ```text
//! cargo run --example refresh_loop -- [--interval SECS] [--count N] [--api-url URL]
//! ```
//!
//! Exits non-zero if any call failed; credentials that are set but broken end it with their
//! error.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use reqwest_middleware::ClientBuilder;
use token_refresh::{AuthMiddleware, JwtBearer, TokenProvider};

/// Token lifetime of the emulator in the demo: short enough to show a refresh quickly.
const DEMO_TTL: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: refresh_loop [--interval SECS] [--count N] [--api-url URL]

Makes an authenticated call every --interval seconds (default 5) and prints how long the
token will still be used. Credentials: DT_CREDENTIALS_FILE, or DT_SERVICE_ACCOUNT_KEY_ID,
DT_SERVICE_ACCOUNT_SECRET and DT_SERVICE_ACCOUNT_EMAIL; with none set, the built-in
emulator (30 s tokens).";

struct Args {
    interval: Duration,
    count: Option<u64>,
    api_url: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        interval: Duration::from_secs(5),
        count: None,
        api_url: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--interval" => {
                let secs: f64 = value()?.parse().map_err(|_| "--interval takes seconds")?;
                args.interval =
                    Duration::try_from_secs_f64(secs).map_err(|_| "--interval must be ≥ 0")?;
            }
            "--count" => {
                args.count = Some(
                    value()?
                        .parse()
                        .map_err(|_| "--count takes a whole number")?,
                )
            }
            "--api-url" => args.api_url = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    // Keep the setup alive for the whole run: its emulator, if any, stops when dropped.
    let (args, setup) =
        match common::start("refresh_loop", USAGE, DEMO_TTL, parse_args, |a: &Args| {
            a.api_url.clone()
        })
        .await
        {
            Ok(started) => started,
            Err(code) => return code,
        };
    let api_url = setup.api_url.clone();

    let provider = TokenProvider::new(JwtBearer::new(setup.account.clone()));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider.clone()))
        .build();

    let mut failures = 0u64;
    let mut calls = 0u64;
    while args.count.is_none_or(|count| calls < count) {
        if calls > 0 {
            tokio::time::sleep(args.interval).await;
        }
        calls += 1;
        match client.get(format!("{api_url}/projects")).send().await {
            Ok(response) if response.status().is_success() => {
                // The middleware got this token from the provider's cache a moment ago.
                match provider.token().await {
                    Ok(token) => println!(
                        "Token expires in {}s.",
                        provider.usable_for(&token).as_secs()
                    ),
                    Err(e) => {
                        failures += 1;
                        eprintln!("call {calls}: {e}");
                    }
                }
            }
            Ok(response) => {
                failures += 1;
                eprintln!("call {calls}: the API answered {}", response.status());
            }
            Err(e) => {
                failures += 1;
                eprintln!("call {calls}: {e}");
            }
        }
    }
    if failures > 0 {
        eprintln!("{failures} of {calls} calls failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
