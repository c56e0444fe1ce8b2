//! An application that issues and verifies its own JWTs with jsonwebtoken on aws-lc-rs, and
//! calls an API with access tokens from token-refresh, signed with an RS256 key.
//!
//! `app-with-jsonwebtoken first` installs jsonwebtoken's aws-lc provider at start-up, as the
//! application's `main` would; `app-with-jsonwebtoken later` installs it only after
//! token-refresh has fetched a token, as an application that initialises lazily would. Both
//! must succeed: token-refresh installs nothing process-wide, and its emulator verifies
//! through a provider it names itself. Prints `ok` and exits 0, or says what broke.

use std::process::ExitCode;

use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use token_refresh::{JwtBearer, SigningKey, TokenProvider};
use token_refresh_emulator::Emulator;

/// The application's own RSA key (the repository's test key; a real one comes from a vault).
const APP_KEY: &str = include_str!("../../keys/rsa-pkcs8.pem");
const APP_PUBLIC: &str = include_str!("../../keys/rsa-public.pem");
/// The key the application's service account signs assertions with.
const SA_KEY: &str = include_str!("../../keys/rsa2-pkcs8.pem");
const ISSUER: &str = "app@example.com";

fn install() -> Result<(), String> {
    jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER
        .install_default()
        .map_err(|_| "jsonwebtoken's provider was installed already — by a library".to_owned())
}

/// The application's own JWTs: issued and verified with the installed aws-lc provider.
fn own_jwts() -> Result<(), String> {
    let installed = CryptoProvider::try_get_default().ok_or("no provider is installed")?;
    if !std::ptr::eq(installed, &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER) {
        return Err("the installed provider is not the application's".into());
    }
    let encoding = EncodingKey::from_rsa_pem(APP_KEY.as_bytes()).map_err(|e| e.to_string())?;
    let claims = json!({ "sub": "user-1", "exp": 4_000_000_000u64 });
    let jwt = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &encoding)
        .map_err(|e| format!("encode: {e}"))?;
    let decoding = DecodingKey::from_rsa_pem(APP_PUBLIC.as_bytes()).map_err(|e| e.to_string())?;
    let decoded =
        jsonwebtoken::decode::<Value>(&jwt, &decoding, &Validation::new(Algorithm::RS256))
            .map_err(|e| format!("decode: {e}"))?;
    if decoded.claims["sub"] != "user-1" {
        return Err(format!("decoded {:?}", decoded.claims));
    }
    Ok(())
}

/// An access token through token-refresh, with an RS256 assertion the emulator verifies.
async fn access_token() -> Result<(), String> {
    let emulator = Emulator::start().await.map_err(|e| e.to_string())?;
    let key = SigningKey::from_pem(SA_KEY)
        .and_then(|k| k.with_key_id("sa-key"))
        .map_err(|e| e.to_string())?;
    emulator
        .register_key(
            ISSUER,
            &key.public_jwk().ok_or("an RSA key has a public JWK")?,
        )
        .map_err(|e| e.to_string())?;
    let provider = TokenProvider::new(JwtBearer::signed_by(emulator.token_url(), ISSUER, key));
    let token = provider.token().await.map_err(|e| format!("token: {e}"))?;
    if token.expose_secret().is_empty() {
        return Err("an empty token".into());
    }
    Ok(())
}

async fn run(install_first: bool) -> Result<(), String> {
    if install_first {
        install()?;
        own_jwts()?;
    }
    access_token().await?;
    if !install_first {
        install()?;
    }
    own_jwts()?;
    access_token().await?;
    own_jwts()
}

#[tokio::main]
async fn main() -> ExitCode {
    let install_first = match std::env::args().nth(1).as_deref() {
        Some("first") => true,
        Some("later") => false,
        _ => {
            eprintln!("usage: app-with-jsonwebtoken first|later");
            return ExitCode::from(2);
        }
    };
    match run(install_first).await {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(problem) => {
            eprintln!("app-with-jsonwebtoken: {problem}");
            ExitCode::FAILURE
        }
    }
}
