//! `AuthLayer` in a tower stack over hyper's client, in the fewest lines that run.
//!
//! ```text
//! cargo run --example tower_stack [-- --api-url URL]
//! ```
//!
//! With `DT_CREDENTIALS_FILE` or the `DT_SERVICE_ACCOUNT_*` variables set it lists DT
//! projects (give hyper an https connector for that, e.g. hyper-rustls: the plain client
//! below speaks http only); with nothing set it uses the built-in emulator, offline.
//! Credentials that are set but broken end it with their error.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use token_refresh::{AuthLayer, JwtBearer, TokenProvider};
use tower::{ServiceBuilder, ServiceExt};

/// Lifetime of the emulator's tokens, when it is used.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

const USAGE: &str = "usage: tower_stack [--api-url URL]

Lists projects through hyper-util's client behind AuthLayer. Credentials: DT_CREDENTIALS_FILE,
or DT_SERVICE_ACCOUNT_KEY_ID, DT_SERVICE_ACCOUNT_SECRET and DT_SERVICE_ACCOUNT_EMAIL; with
none set, the built-in emulator.";

#[tokio::main]
async fn main() -> ExitCode {
    let setup = match common::start(
        "tower_stack",
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
            eprintln!("tower_stack: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(setup: common::Setup) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(TokenProvider::new(JwtBearer::new(
            setup.account,
        ))))
        .service(http);

    let request = http::Request::get(format!("{}/projects", setup.api_url)).body(Full::default())?;
    let response = service.oneshot(request).await?;
    println!("{}", response.status());
    println!(
        "{}",
        String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes())
    );
    Ok(())
}
