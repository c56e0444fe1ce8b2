//! [`AuthMiddleware`]: authenticates requests of a `reqwest-middleware` client.

use std::time::Duration;

use async_trait::async_trait;
use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

use crate::grants::client::OAuthClient;
use crate::params::TokenParams;
use crate::policy::{Again, AuthPolicy, First, MinValidity, Tokens, Verdict};
use crate::provider::{KeyedTokenProvider, TokenProvider};
use crate::resource::ResourceDiscovery;
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

const ALLOW_WITH: &str = "`AuthMiddleware::allow_http(true)`";

impl AuthMiddleware {
    /// Authenticates requests with tokens from `provider`.
    pub fn new(provider: TokenProvider) -> Self {
        Self {
            policy: AuthPolicy::new(Tokens::One(provider), ALLOW_WITH),
        }
    }

    /// Authenticates requests with tokens from a [`KeyedTokenProvider`], for the
    /// [`TokenParams`] of each request's [`route`](Self::route): one credential, a token per
    /// destination. A request no route covers gets no token; without routes, every request
    /// gets the default parameters' token. A 401 or 403 `insufficient_scope` whose
    /// challenge names the scope a routed request lacks is answered once with a token for
    /// the union of scopes (a step-up), which the route keeps once it worked; the storm
    /// guard of that key bounds what a server that always asks for more can cost.
    pub fn keyed(provider: KeyedTokenProvider) -> Self {
        Self {
            policy: AuthPolicy::new(Tokens::Keyed(provider), ALLOW_WITH),
        }
    }

    /// Authenticates requests with tokens found by RFC 9728 discovery from the resource
    /// itself, for `client` (client credentials): a 401 whose `WWW-Authenticate` names
    /// `resource_metadata` leads to the resource's metadata (fetched once per hour, no
    /// redirects, size-capped), whose `resource` must be the resource asked, and to the
    /// first of its `authorization_servers` that [`allow_issuers`](Self::allow_issuers)
    /// allows; a token for that `resource` (and the challenge's `scope`, or the metadata's
    /// `scopes_supported`) comes from that issuer's token endpoint (RFC 8414 discovery),
    /// and the request is sent again once. Later requests to the resource get the token at
    /// once. An issuer the user did not allow is never sent anything: the 401 comes back
    /// as it is. Default: no issuer allowed.
    pub fn discovering(client: OAuthClient) -> Self {
        let mut policy = AuthPolicy::new(Tokens::Discovered, ALLOW_WITH);
        policy.set_discovery(ResourceDiscovery::new(client, Vec::new()));
        Self { policy }
    }

    /// The authorization servers (issuer identifiers, e.g. `https://login.example.com`)
    /// that RFC 9728 discovery may use for a client made with
    /// [`discovering`](Self::discovering); replaces the list. Default: none.
    pub fn allow_issuers(mut self, issuers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.policy
            .allow_issuers(issuers.into_iter().map(Into::into).collect());
        self
    }

    /// Sends requests to `target` — an origin (`https://api.example.com`) or an origin and
    /// a path prefix (`https://api.example.com/admin`, matched at a segment boundary) — with
    /// tokens for `params` from a [`keyed`](Self::keyed) provider. The route with the longest
    /// matching prefix wins; a request no route covers gets no token. A target that does not
    /// parse, or parameters without a keyed provider, make every request fail with
    /// [`Error::Config`](crate::Error::Config). Default: no routes.
    pub fn route(mut self, target: &str, params: TokenParams) -> Self {
        self.policy.add_route(target, params);
        self
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
        let pick = self
            .policy
            .should_attach(req.url(), req.headers())
            .map_err(token_error)?;
        let min = extensions.get::<MinValidity>().copied();
        // A timeout too long to add to the clock is no deadline at all.
        let deadline = req.timeout().and_then(|t| Instant::now().checked_add(*t));
        let Some(pick) = pick else {
            if !self.policy.discovers() || req.headers().contains_key(http::header::AUTHORIZATION) {
                return next.run(req, extensions).await;
            }
            return self.watch(req, min, deadline, extensions, next).await;
        };
        let token = match self.policy.cached_token(pick, min.as_ref()) {
            Some(token) => token,
            None => self
                .policy
                .token(pick, min, deadline)
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
        let verdict = AuthPolicy::verdict(response.status(), response.headers(), sent.grpc);
        match verdict {
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
                self.policy.nonce_resend(pick);
                let again = Again::same(token, pick);
                return self.resend(replay, sent, again, next, extensions).await;
            }
            _ => {}
        }
        let first = First {
            pick: Some(pick),
            sent: Some(&token),
            uri: sent.url.as_str(),
            min,
            deadline,
        };
        let again = self
            .policy
            .recover(&first, verdict, response.headers(), replay.is_some())
            .await
            .map_err(token_error)?;
        match (again, replay) {
            (Some(again), Some(replay)) => {
                drop(response);
                self.resend(replay, sent, again, next, extensions).await
            }
            _ => Ok(response),
        }
    }
}

impl AuthMiddleware {
    /// Sends a request that gets no token, watching its answer for an RFC 9728 challenge:
    /// discovery may find the resource's authorization server, and then the request is sent
    /// again once with a token.
    async fn watch(
        &self,
        req: Request,
        min: Option<MinValidity>,
        deadline: Option<Instant>,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let sent = Sent {
            url: req.url().clone(),
            deadline,
            grpc: AuthPolicy::is_grpc(req.headers()),
        };
        let replay = Resend::of(&req);
        let response = next.clone().run(req, extensions).await?;
        if !same_origin(response.url(), &sent.url)
            || AuthPolicy::verdict(response.status(), response.headers(), sent.grpc)
                != Verdict::Discover
        {
            return Ok(response);
        }
        let first = First {
            pick: None,
            sent: None,
            uri: sent.url.as_str(),
            min,
            deadline,
        };
        let again = self
            .policy
            .recover(
                &first,
                Verdict::Discover,
                response.headers(),
                replay.is_some(),
            )
            .await
            .map_err(token_error)?;
        match (again, replay) {
            (Some(again), Some(replay)) => {
                drop(response);
                self.resend(replay, sent, again, next, extensions).await
            }
            _ => Ok(response),
        }
    }

    /// Sends `replay` of the request `sent` again with `again`'s token (a fresh one after a
    /// rejection, a wider one after `insufficient_scope`, a discovered one, or the same one
    /// with the server's DPoP nonce) and reports its answer: there is no second resend.
    async fn resend(
        &self,
        replay: Resend,
        sent: Sent,
        again: Again,
        next: Next<'_>,
        extensions: &mut Extensions,
    ) -> reqwest_middleware::Result<Response> {
        let method = replay.method.clone();
        let mut replay = replay.into_request(sent.url);
        let uri = if again.token.dpop_key().is_some() {
            url_to_uri(replay.url())
        } else {
            http::Uri::default()
        };
        let origin = self
            .policy
            .attach(replay.headers_mut(), &method, &uri, &again.token)
            .map_err(token_error)?;
        set_remaining(&mut replay, sent.deadline);
        let mut response = next.run(replay, extensions).await?;
        self.policy
            .note_nonce(origin.as_deref(), response.headers());
        let verdict = AuthPolicy::verdict(response.status(), response.headers(), sent.grpc);
        self.policy.after_resend(&again, verdict);
        response.extensions_mut().insert(again.token);
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
