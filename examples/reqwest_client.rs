//! `AuthMiddleware` on a reqwest client, in the fewest lines that run.
//!
//! Offline by default: with no `DT_*` credentials set it uses the built-in emulator.
//! `cargo run --example reqwest_client`

use reqwest_middleware::ClientBuilder;
use token_refresh::emulator::Emulator;
use token_refresh::{AuthMiddleware, JwtBearer, ServiceAccount, TokenProvider};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let emulator = Emulator::start().await?;
    let (account, api) = match ServiceAccount::discover() {
        Ok(account) => (
            account,
            "https://api.disruptive-technologies.com/v2".to_owned(),
        ),
        Err(_) => (emulator.account(), emulator.api_url()),
    };

    let provider = TokenProvider::new(JwtBearer::new(account));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider))
        .build();

    let projects = client
        .get(format!("{api}/projects"))
        .send()
        .await?
        .error_for_status()?;
    println!("{}", projects.text().await?);
    Ok(())
}
