//! `AuthMiddleware` on a reqwest client, in the fewest lines that run.
//!
//! ```text
//! cargo run --example reqwest_client [-- --api-url URL]
//! ```
//!
//! With `DT_CREDENTIALS_FILE` or the `DT_SERVICE_ACCOUNT_*` variables set it lists DT
//! projects; with nothing set it uses the built-in emulator, offline. Credentials that are
//! set but broken end it with their error.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use reqwest_middleware::ClientBuilder;
use token_refresh::{AuthMiddleware, JwtBearer, TokenProvider};

/// Lifetime of the emulator's tokens, when it is used.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

const USAGE: &str = "usage: reqwest_client [--api-url URL]

Lists projects through a reqwest client with AuthMiddleware. Credentials: DT_CREDENTIALS_FILE,
or DT_SERVICE_ACCOUNT_KEY_ID, DT_SERVICE_ACCOUNT_SECRET and DT_SERVICE_ACCOUNT_EMAIL; with
none set, the built-in emulator.";

#[tokio::main]
async fn main() -> ExitCode {
    let setup = match common::start(
        "reqwest_client",
        USAGE,
        TOKEN_TTL,
        common::api_url_only,
        Clone::clone,
    )
    .await
    {
        Ok((_, setup)) => setup,
        Err(code) => return code,
    };
    match run(setup).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reqwest_client: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(setup: common::Setup) -> Result<(), Box<dyn std::error::Error>> {
    let provider = TokenProvider::new(JwtBearer::new(setup.account));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider))
        .build();

    let projects = client
        .get(format!("{}/projects", setup.api_url))
        .send()
        .await?
        .error_for_status()?;
    println!("{}", projects.text().await?);
    Ok(())
}
