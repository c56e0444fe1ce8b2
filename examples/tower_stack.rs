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

const USAGE: &str = "usage: tower_stack [--api-url URL]

Lists projects through hyper-util's client behind AuthLayer. Credentials: DT_CREDENTIALS_FILE,
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
            eprintln!("tower_stack: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(api_url: Option<String>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let setup = common::setup(api_url, Duration::from_secs(3600)).await?;
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
