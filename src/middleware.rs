//! [`AuthMiddleware`]: authenticates requests of a `reqwest-middleware` client.

use std::time::Duration;

use async_trait::async_trait;
use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

use crate::policy::{AuthPolicy, MinValidity, Verdict};
use crate::provider::TokenProvider;
use crate::token::AccessToken;
use crate::transport::same_origin;

/// A `reqwest-middleware` middleware that attaches `Authorization: Bearer <token>` from a
/// [`TokenProvider`] and resends a request once with a fresh token after a rejection.
///
/// # Example
///
/// Against the emulator (the `token-refresh-emulator` crate, a dev-dependency), offline:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use reqwest_middleware::ClientBuilder;
/// use token_refresh_emulator::Emulator;
/// use token_refresh::{AuthMiddleware, JwtBearer, TokenProvider};
///
/// let emulator = Emulator::start().await?;
/// let provider = TokenProvider::new(JwtBearer::new(emulator.account()));
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(AuthMiddleware::new(provider).for_origin(&emulator.origin()))
///     .build();
///
/// let response = client
///     .get(format!("{}/projects", emulator.api_url()))
///     .send()
///     .await?;
/// assert_eq!(response.status(), 200);
/// # Ok(()) }
/// ```
///
/// # Behaviour
///
/// - A request that already has an `Authorization` header is sent as it is; so is one to an
///   origin the tokens are not bound to ([`for_origin`](Self::for_origin)).
/// - The request's own timeout (`RequestBuilder::timeout`) bounds the token wait and the
///   send together; without one, the provider's
///   [`max_wait`](crate::TokenProviderBuilder::max_wait) bounds the token wait.
/// - A request extension [`MinValidity`] (`RequestBuilder::with_extension`) asks for a
///   token that lasts at least that long.
/// - The response carries the [`AccessToken`](crate::AccessToken) that authorized it in its
///   extensions (`response.extensions().get::<AccessToken>()`): a stream that fails in-band
///   later (an error line saying the token expired) can
///   [`reject`](TokenProvider::reject) exactly that token before reconnecting.
/// - On a rejection — HTTP 401, or `grpc-status: 16` in the headers of a gRPC response — the
///   token the request carried is reported to the provider
///   ([`TokenProvider::reject`]), and if the request body can be cloned
///   (`Request::try_clone`: any body but a stream) it is resent once with a fresh token.
///   Else, or inside the provider's storm guard, the rejection is returned as it is.
///   A 403, gRPC `PERMISSION_DENIED`, a 401 whose `WWW-Authenticate` says
///   `insufficient_scope`, and a 401 from another origin than the request's (a redirect
///   target that was not sent the token) refresh nothing.
/// - Tokens go only over https or to loopback hosts, unless [`allow_http`](Self::allow_http).
/// - Token errors are `reqwest_middleware::Error::Middleware` with the token error's
///   message; [`Error::find`](crate::Error::find) gets the [`crate::Error`] out of it,
///   also behind `reqwest-retry` and `reqwest-tracing` (a plain walk of `source()` finds it
///   too).
///
/// # Composing with other middleware
///
/// Middleware runs in the order it is added, each wrapping the ones added after it.
///
/// - **`reqwest-retry`**: add `RetryTransientMiddleware` *before* `AuthMiddleware`. Each
///   retry then passes through `AuthMiddleware` again and picks up the current token (a
///   retry after a long backoff may need a refreshed one), and the single resend stays
///   inside one retry attempt instead of multiplying with it. Token errors are not retried
///   by it: they are middleware errors, and the provider has already retried transient
///   token-endpoint failures with its own backoff.
/// - **`reqwest-tracing`**: add `TracingMiddleware` *before* `AuthMiddleware` for one span per
///   logical call that covers the token wait and any resend; after it, for one span per
///   request sent. The header is marked sensitive either way, and neither logs its value.
///
/// ```text
/// ClientBuilder::new(reqwest::Client::new())
///     .with(TracingMiddleware::default())                   // outermost: the whole call
///     .with(RetryTransientMiddleware::new_with_policy(retry))
///     .with(AuthMiddleware::new(provider))                  // innermost: token per attempt
///     .build()
/// ```
///
/// # Redirects
///
/// The middleware runs before reqwest follows redirects. reqwest drops `Authorization` on a
/// redirect to another origin, but (through tower-http 0.6) puts it back on a *second*
/// redirect within that other origin. Build the client with
/// [`AuthMiddleware::redirect_policy`] so that a redirect to another origin is returned
/// instead of followed, and bind tokens with [`for_origin`](Self::for_origin).
#[derive(Clone, Debug)]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub struct AuthMiddleware {
    policy: AuthPolicy,
}

impl AuthMiddleware {
    /// Authenticates requests with tokens from `provider`.
    pub fn new(provider: TokenProvider) -> Self {
        Self {
            policy: AuthPolicy::new(provider, "`AuthMiddleware::allow_http(true)`"),
        }
    }

    /// Allows sending tokens over plain `http://` to hosts that are not loopback. Anyone on
    /// the network path can read and reuse such a token. Default: `false`.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.policy.set_allow_http(allow);
        self
    }

    /// Longest time a request waits for a token before it fails with
    /// [`Error::WaitTimeout`](crate::Error::WaitTimeout) (a request's own timeout, `RequestBuilder::timeout`, bounds it too). Default: the provider's
    /// [`max_wait`](crate::TokenProviderBuilder::max_wait) (30 s).
    pub fn max_token_wait(mut self, max: Duration) -> Self {
        self.policy.set_max_token_wait(max);
        self
    }

    /// Binds tokens to `origin` (`scheme://host[:port]`, e.g. `https://api.example.com`):
    /// requests to any other origin are sent on without a token. Call it again to add more
    /// origins. An origin that does not parse makes every request fail with
    /// [`Error::Config`](crate::Error::Config). Default: every origin.
    pub fn for_origin(mut self, origin: &str) -> Self {
        self.policy.add_origin(origin);
        self
    }

    /// A redirect policy for the `reqwest::Client` under this middleware: follows up to ten
    /// redirects within the request's origin and returns a redirect to another origin
    /// instead of following it, so the token never follows a request elsewhere.
    pub fn redirect_policy() -> reqwest::redirect::Policy {
        reqwest::redirect::Policy::custom(|attempt| {
            let same = attempt
                .previous()
                .first()
                .is_some_and(|first| same_origin(first, attempt.url()));
            if attempt.previous().len() > 10 {
                attempt.error("too many redirects")
            } else if same {
                attempt.follow()
            } else {
                attempt.stop()
            }
        })
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
        let attach = self
            .policy
            .should_attach(req.url(), req.headers())
            .map_err(token_error)?;
        if !attach {
            return next.run(req, extensions).await;
        }
        let min = extensions.get::<MinValidity>().copied();
        // A timeout too long to add to the clock is no deadline at all.
        let deadline = req.timeout().and_then(|t| Instant::now().checked_add(*t));
        let token = match self.policy.cached_token(min.as_ref()) {
            Some(token) => token,
            None => self
                .policy
                .token(min, deadline)
                .await
                .map_err(token_error)?,
        };
        // Only a DPoP proof needs the URI as an `http::Uri`: no parse for a bearer token.
        let dpop = token.dpop_key().is_some();
        let uri = if dpop {
            url_to_uri(req.url())
        } else {
            http::Uri::default()
        };
        let method = req.method().clone();
        let origin = self
            .policy
            .attach(req.headers_mut(), &method, &uri, &token)
            .map_err(token_error)?;
        set_remaining(&mut req, deadline);
        let sent = Sent {
            // Kept for the resend, and to tell whether a redirect took the request to another
            // origin: the one allocation of this path.
            url: req.url().clone(),
            deadline,
            grpc: AuthPolicy::is_grpc(req.headers()),
        };
        let replay = Resend::of(&req);
        let mut response = next.clone().run(req, extensions).await?;
        // The token that authorized the response, for a caller whose long response (a
        // stream) later fails in-band and must `reject` exactly that token.
        response.extensions_mut().insert(token.clone());
        if !same_origin(response.url(), &sent.url) {
            // A redirect took the request elsewhere: this answer says nothing of the token.
            return Ok(response);
        }
        self.policy
            .note_nonce(origin.as_deref(), response.headers());
        match AuthPolicy::verdict(response.status(), response.headers(), sent.grpc) {
            Verdict::Accepted => {
                token.mark_accepted();
                return Ok(response);
            }
            Verdict::Other => return Ok(response),
            Verdict::Nonce if token.dpop_key().is_some() => {
                // Not a rejection of the token: the same token, a proof with the nonce.
                let Some(replay) = replay else {
                    return Ok(response);
                };
                drop(response);
                self.policy.nonce_resend();
                return self.resend(replay, sent, token, next, extensions).await;
            }
            Verdict::Nonce | Verdict::Rejected => {}
        }
        let fresh = self
            .policy
            .after_rejection(&token, replay.is_some(), min, deadline)
            .await
            .map_err(token_error)?;
        match (fresh, replay) {
            (Some(fresh), Some(replay)) => {
                drop(response);
                self.resend(replay, sent, fresh, next, extensions).await
            }
            _ => Ok(response),
        }
    }
}

impl AuthMiddleware {
    /// Sends `replay` of the request `sent` again with `token` (a fresh one after a
    /// rejection, the same one with the server's DPoP nonce) and reports its answer: there
    /// is no second resend.
    async fn resend(
        &self,
        replay: Resend,
        sent: Sent,
        token: AccessToken,
        next: Next<'_>,
        extensions: &mut Extensions,
    ) -> reqwest_middleware::Result<Response> {
        let method = replay.method.clone();
        let mut replay = replay.into_request(sent.url);
        let uri = if token.dpop_key().is_some() {
            url_to_uri(replay.url())
        } else {
            http::Uri::default()
        };
        let origin = self
            .policy
            .attach(replay.headers_mut(), &method, &uri, &token)
            .map_err(token_error)?;
        set_remaining(&mut replay, sent.deadline);
        let mut response = next.run(replay, extensions).await?;
        self.policy
            .note_nonce(origin.as_deref(), response.headers());
        let verdict = AuthPolicy::verdict(response.status(), response.headers(), sent.grpc);
        self.policy.after_resend(&token, verdict);
        response.extensions_mut().insert(token);
        Ok(response)
    }
}

/// The request URL as an `http::Uri`, for the DPoP proof's `htu` (reqwest URLs always have
/// a scheme and host).
fn url_to_uri(url: &reqwest::Url) -> http::Uri {
    url.as_str().parse().unwrap_or_default()
}

/// A token error as a middleware error. It shows the token error's message and returns the
/// token error itself as its `source()`, so that [`Error::find`](crate::Error::find) — or a
/// plain walk of `source()` — finds it whatever wraps it: reqwest-middleware's transparent
/// `Middleware` variant, or reqwest-retry's transparent `RetryError::Error`, which hide the
/// error they wrap from both a downcast and the source chain.
#[derive(Debug)]
struct TokenError(crate::Error);

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn token_error(error: crate::Error) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(TokenError(error))
}

/// What the first send of a request was: its URL, its deadline, whether it is gRPC.
struct Sent {
    url: reqwest::Url,
    deadline: Option<Instant>,
    grpc: bool,
}

/// What it takes to send a request again, kept when its body can be cloned (any body but a
/// stream). The headers are kept as a list without `Authorization` (the resend gets a
/// fresh one): a request with no other header costs no allocation here.
struct Resend {
    method: reqwest::Method,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    body: Option<reqwest::Body>,
    version: http::Version,
}

impl Resend {
    fn of(req: &Request) -> Option<Self> {
        // reqwest clones a body only with its request; a request without one (most GETs)
        // needs no clone at all.
        let body = match req.body() {
            Some(_) => Some(req.try_clone()?.body_mut().take()?),
            None => None,
        };
        let mut headers = Vec::with_capacity(req.headers().len().saturating_sub(1));
        headers.extend(
            req.headers()
                .iter()
                .filter(|(name, _)| *name != http::header::AUTHORIZATION)
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        Some(Self {
            method: req.method().clone(),
            headers,
            body,
            version: req.version(),
        })
    }

    fn into_request(self, url: reqwest::Url) -> Request {
        let mut req = Request::new(self.method, url);
        let headers = req.headers_mut();
        headers.reserve(self.headers.len() + 1);
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        *req.body_mut() = self.body;
        *req.version_mut() = self.version;
        req
    }
}

/// Shrinks the request's timeout to what is left of it, so the token wait and the send
/// share one budget.
fn set_remaining(req: &mut Request, deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        *req.timeout_mut() = Some(deadline.saturating_duration_since(Instant::now()));
    }
}
