//! [`AuthMiddleware`]: authenticates requests of a `reqwest-middleware` client.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use reqwest_middleware::ClientBuilder;
//! use token_refresh::{AccessToken, AuthMiddleware, TokenProvider};
//!
//! let provider = TokenProvider::new(|| async {
//!     AccessToken::new("t0k3n", Duration::from_secs(3600))
//! });
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(AuthMiddleware::new(provider))
//!     .build();
//! // client.get("https://api.disruptive-technologies.com/v2/projects").send().await
//! # drop(client);
//! ```
//!
//! # Composing with other middleware
//!
//! Middleware runs in the order it is added, each wrapping the ones after it.
//!
//! - **`reqwest-retry`**: add `RetryTransientMiddleware` *before* `AuthMiddleware`. Each
//!   retry then passes through `AuthMiddleware` again and picks up the current token (a
//!   retry after a long backoff may need a refreshed one), and the auth layer's single 401
//!   resend stays inside one retry attempt instead of multiplying with it.
//! - **`reqwest-tracing`**: add `TracingMiddleware` *before* `AuthMiddleware` to get one span
//!   per logical request covering the token wait and any 401 resend, or *after* it to get a
//!   span per request actually sent. `AuthMiddleware` marks the header sensitive either way,
//!   and neither logs header values.
//!
//! ```
//! # use std::time::Duration;
//! # use reqwest_middleware::ClientBuilder;
//! # use token_refresh::{AccessToken, AuthMiddleware, TokenProvider};
//! # let provider = TokenProvider::new(|| async { AccessToken::new("t", Duration::from_secs(60)) });
//! # let retry = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()); drop(retry);
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     // .with(TracingMiddleware::default())           // outermost: sees the whole call
//!     // .with(RetryTransientMiddleware::new_with_policy(policy))
//!     .with(AuthMiddleware::new(provider))              // innermost: fresh token per attempt
//!     .build();
//! # drop(client);
//! ```

use async_trait::async_trait;
use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::policy::AuthPolicy;
use crate::provider::TokenProvider;

/// A `reqwest-middleware` middleware that attaches `Authorization: Bearer <token>` from a
/// [`TokenProvider`] and resends a request once with a fresh token after a 401.
///
/// - A request that already has an `Authorization` header is sent as it is.
/// - On 401 the token the request carried is invalidated; if the request body can be cloned
///   (`Request::try_clone`) it is resent once with a fresh token, else the 401 is returned.
///   A 403 is returned untouched. If the provider cannot get a new token, the caller gets
///   that error; if it returns the rejected token again, the caller gets the 401.
/// - Tokens go only over https or to loopback hosts, unless [`allow_http`](Self::allow_http).
/// - Token errors are `reqwest_middleware::Error::Middleware`, downcastable to
///   [`crate::Error`].
#[derive(Clone, Debug)]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub struct AuthMiddleware {
    policy: AuthPolicy,
}

impl AuthMiddleware {
    /// Authenticates requests with tokens from `provider`.
    pub fn new(provider: TokenProvider) -> Self {
        Self {
            policy: AuthPolicy::new(provider),
        }
    }

    /// Allows sending tokens over plain `http://` to hosts that are not loopback. Anyone on
    /// the network path can read and reuse such a token. Default: `false`.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.policy.set_allow_http(allow);
        self
    }
}

#[async_trait]
impl Middleware for AuthMiddleware {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let target = self
            .policy
            .check_target(Some(req.url().scheme()), req.url().host_str());
        let token = self
            .policy
            .authorize(target, req.headers_mut())
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let Some(token) = token else {
            return next.run(req, extensions).await;
        };
        let replay = req.try_clone();
        let response = next.clone().run(req, extensions).await?;
        let retry = self
            .policy
            .retry_token(response.status(), &token, replay.is_some())
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        match (retry, replay) {
            (Some(fresh), Some(mut replay)) => {
                drop(response);
                AuthPolicy::reauthorize(replay.headers_mut(), &fresh);
                next.run(replay, extensions).await
            }
            _ => Ok(response),
        }
    }
}
