//! `AuthLayer` in a tower stack over hyper's client, in the fewest lines that run.
//!
//! Offline by default: with no `DT_*` credentials set it uses the built-in emulator.
//! `cargo run --example tower_stack`

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use token_refresh::emulator::Emulator;
use token_refresh::{AuthLayer, JwtBearer, ServiceAccount, TokenProvider};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let emulator = Emulator::start().await?;
    let (account, api) = match ServiceAccount::discover() {
        Ok(account) => (
            account,
            "https://api.disruptive-technologies.com/v2".to_owned(),
        ),
        Err(_) => (emulator.account(), emulator.api_url()),
    };

    // hyper's plain client speaks http only, which is enough for the emulator on loopback;
    // for DT's https API give it an https connector (e.g. hyper-rustls).
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(TokenProvider::new(JwtBearer::new(account))))
        .service(http);

    let request = http::Request::get(format!("{api}/projects")).body(Full::default())?;
    let response = service.oneshot(request).await?;
    println!("{}", response.status());
    println!(
        "{}",
        String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes())
    );
    Ok(())
}
