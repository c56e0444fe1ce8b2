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

const USAGE: &str = "usage: reqwest_client [--api-url URL]

Lists projects through a reqwest client with AuthMiddleware. Credentials: DT_CREDENTIALS_FILE,
or DT_SERVICE_ACCOUNT_KEY_ID, DT_SERVICE_ACCOUNT_SECRET and DT_SERVICE_ACCOUNT_EMAIL; with
none set, the built-in emulator.";

#[tokio::main]
async fn main() -> ExitCode {
    if common::help_asked(USAGE) {
        return ExitCode::SUCCESS;
    }
    let api_url = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => None,
        [flag, url] if flag == "--api-url" => Some(url.clone()),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(api_url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reqwest_client: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(api_url: Option<String>) -> Result<(), Box<dyn std::error::Error>> {
    let setup = common::setup(api_url, Duration::from_secs(3600)).await?;
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
