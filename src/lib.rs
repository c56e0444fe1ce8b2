//! Keeps outgoing HTTP requests authenticated with short-lived OAuth2 access tokens.
//!
//! A service account signs a JWT ([RFC 7523] JWT-bearer grant, HS256), swaps it at a token
//! endpoint for an access token that lives about an hour, and this crate keeps every request
//! authenticated without the application noticing:
//!
//! - [`ServiceAccount`] holds the credentials and finds them in the environment or a DT
//!   credentials file;
//! - [`JwtBearer`] is the grant, a [`TokenSource`]; any other source plugs in;
//! - [`TokenProvider`] caches the [`AccessToken`], refreshes it before it expires (in the
//!   background, so no request waits), deduplicates concurrent refreshes and survives
//!   cancelled callers and failing endpoints.
//!
//! [RFC 7523]: https://www.rfc-editor.org/rfc/rfc7523
//!
//! # Example
//!
//! ```no_run
//! use token_refresh::{JwtBearer, ServiceAccount, TokenProvider};
//!
//! # async fn run() -> Result<(), token_refresh::Error> {
//! // DT_SERVICE_ACCOUNT_KEY_ID, DT_SERVICE_ACCOUNT_SECRET, DT_SERVICE_ACCOUNT_EMAIL
//! let account = ServiceAccount::from_env()?;
//! let provider = TokenProvider::new(JwtBearer::new(account));
//! let token = provider.token().await?; // fetched once, then cached and refreshed
//! println!("token expires in {:?}", token.expires_in());
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms,
    clippy::await_holding_lock
)]

mod credentials;
#[cfg(feature = "emulator")]
#[cfg_attr(docsrs, doc(cfg(feature = "emulator")))]
pub mod emulator;
mod error;
mod jwt_bearer;
#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "reqwest")]
mod middleware;
#[cfg(any(feature = "reqwest", feature = "tower"))]
mod policy;
mod provider;
mod source;
mod token;
mod transport;

pub use credentials::{
    ENV_CREDENTIALS_FILE, ENV_EMAIL, ENV_KEY_ID, ENV_SECRET, ServiceAccount, parse_credentials_json,
};
pub use error::{Error, Result};
pub use jwt_bearer::{
    DEFAULT_EXPIRES_IN, DEFAULT_REQUEST_TIMEOUT, DT_TOKEN_URL, JWT_BEARER_GRANT_TYPE, JwtBearer,
    MAX_EXPIRES_IN, MAX_RESPONSE_BYTES, parse_token_response,
};
#[cfg(feature = "tower")]
pub use layer::{AuthLayer, AuthService, BoxError, ReplayBody, ResponseFuture};
#[cfg(feature = "reqwest")]
pub use middleware::AuthMiddleware;
pub use provider::{
    DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_COOLDOWN, DEFAULT_FETCH_TIMEOUT,
    DEFAULT_HARD_MARGIN, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_RETRY_AFTER, DEFAULT_PROACTIVE_MARGIN,
    DEFAULT_RETRY_BUDGET, TokenProvider, TokenProviderBuilder,
};
pub use source::TokenSource;
pub use token::AccessToken;
