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
pub mod defaults;
pub mod dt;
#[cfg(feature = "emulator")]
#[cfg_attr(docsrs, doc(cfg(feature = "emulator")))]
pub mod emulator;
mod error;
mod exchange;
mod grants;
pub mod health;
#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "reqwest")]
mod middleware;
#[cfg_attr(not(any(feature = "reqwest", feature = "tower")), allow(dead_code))]
mod policy;
mod provider;
#[cfg(feature = "tower")]
mod replay;
mod source;
mod token;
mod transport;

pub use credentials::ServiceAccount;
#[doc(hidden)]
pub use credentials::parse_credentials_json;
pub use error::{Error, Result};
#[doc(hidden)]
pub use exchange::parse_token_response;
pub use exchange::{TokenEndpoint, TokenRequest};
pub use grants::client_credentials::{ClientAuth, ClientCredentials};
pub use grants::jwt_bearer::JwtBearer;
pub use health::Health;
#[cfg(feature = "tower")]
pub use layer::{AuthLayer, AuthService, BoxError, ResponseFuture};
#[cfg(feature = "reqwest")]
pub use middleware::AuthMiddleware;
pub use policy::MinValidity;
pub use provider::{TokenProvider, TokenProviderBuilder};
#[cfg(feature = "tower")]
pub use replay::{RecordingBody, Replay, ReplayBody};
pub use source::TokenSource;
pub use token::AccessToken;
