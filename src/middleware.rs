//! [`AuthMiddleware`]: authenticates requests of a `reqwest-middleware` client.

use async_trait::async_trait;
use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::policy::AuthPolicy;
use crate::provider::TokenProvider;

/// A `reqwest-middleware` middleware that attaches `Authorization: Bearer <token>` from a
/// [`TokenProvider`] and resends a request once with a fresh token after a 401.
///
/// # Example
///
/// Against the built-in [emulator](crate::emulator) (feature `emulator`), offline:
///
/// ```
/// # #[cfg(feature = "emulator")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use reqwest_middleware::ClientBuilder;
/// use token_refresh::emulator::Emulator;
/// use token_refresh::{AuthMiddleware, JwtBearer, TokenProvider};
///
/// let emulator = Emulator::start().await?;
/// let provider = TokenProvider::new(JwtBearer::new(emulator.account()));
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(AuthMiddleware::new(provider))
///     .build();
///
/// let response = client
///     .get(format!("{}/projects", emulator.api_url()))
///     .send()
///     .await?;
/// assert_eq!(response.status(), 200);
/// # Ok(()) }
/// # #[cfg(not(feature = "emulator"))]
/// # fn main() {}
/// ```
///
/// # Behaviour
///
/// - A request that already has an `Authorization` header is sent as it is.
/// - On 401 the token the request carried is invalidated; if the request body can be cloned
///   (`Request::try_clone`) it is resent once with a fresh token, else the 401 is returned.
///   A 403 is returned untouched. If the provider cannot get a new token, the caller gets
///   that error; if it returns the rejected token again, the caller gets the 401.
/// - Tokens go only over https or to loopback hosts, unless [`allow_http`](Self::allow_http).
/// - Token errors are `reqwest_middleware::Error::Middleware`, downcastable to
///   [`crate::Error`].
///
/// # Composing with other middleware
///
/// Middleware runs in the order it is added, each wrapping the ones added after it.
///
/// - **`reqwest-retry`**: add `RetryTransientMiddleware` *before* `AuthMiddleware`. Each
///   retry then passes through `AuthMiddleware` again and picks up the current token (a
///   retry after a long backoff may need a refreshed one), and the single 401 resend stays
///   inside one retry attempt instead of multiplying with it. Token errors are not retried
///   by it: they are middleware errors, and the provider has already retried transient
///   token-endpoint failures with its own backoff.
/// - **`reqwest-tracing`**: add `TracingMiddleware` *before* `AuthMiddleware` for one span per
///   logical call that covers the token wait and any 401 resend; after it, for one span per
///   request sent. The header is marked sensitive either way, and neither logs its value.
///
/// ```text
/// ClientBuilder::new(reqwest::Client::new())
///     .with(TracingMiddleware::default())                   // outermost: the whole call
///     .with(RetryTransientMiddleware::new_with_policy(retry))
///     .with(AuthMiddleware::new(provider))                  // innermost: token per attempt
///     .build()
/// ```
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
