//! [`AuthLayer`] / [`AuthService`]: authenticates requests of a tower service stack — a
//! hyper-util client, a tonic `Channel`, a proxy.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::{Extensions, Method, Request, Response, Uri, Version};
use tower_layer::Layer;
use tower_service::Service;

use crate::defaults::DEFAULT_REPLAY_LIMIT;
use crate::error::Result;
use crate::grants::client::OAuthClient;
use crate::params::TokenParams;
use crate::policy::{Again, AuthPolicy, First, MinValidity, Pick, Tokens, Verdict};
use crate::provider::{KeyedTokenProvider, TokenProvider};
use crate::replay::{Replay, ReplayBody};
use crate::resource::ResourceDiscovery;
use crate::token::AccessToken;

/// The error type of [`AuthService`]: the inner service's error or a [`crate::Error`],
/// boxed (tower's convention). [`Error::find`](crate::Error::find) gets the token error out.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A tower [`Layer`] that wraps a service in an [`AuthService`]. It holds only the
/// configuration, which each service it builds shares.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response, header::AUTHORIZATION};
/// use http_body_util::Full;
/// use bytes::Bytes;
/// use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
/// use token_refresh::{AccessToken, AuthLayer, TokenProvider};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower::BoxError> {
/// let provider = TokenProvider::new(|| async {
///     AccessToken::new("t0k3n", Duration::from_secs(3600))
/// });
/// // Any `Service<http::Request<B>>`: here one that echoes the header it got.
/// let api = service_fn(|req: Request<Full<Bytes>>| async move {
///     let auth = req.headers()[AUTHORIZATION].to_str().unwrap().to_owned();
///     Ok::<_, Infallible>(Response::new(auth))
/// });
/// let mut client = ServiceBuilder::new()
///     .layer(AuthLayer::new(provider).for_origin("https://api.example.com"))
///     .service(api);
///
/// let request = Request::get("https://api.example.com/v2/projects").body(Full::default())?;
/// let response = client.ready().await?.call(request).await?;
/// assert_eq!(response.body(), "Bearer t0k3n");
/// # Ok(()) }
/// ```
///
/// Over a tonic `Channel` (feature `tonic`) the integration is one line, with no body
/// conversion; a generated client takes the authenticated channel as it is (here the
/// emulator's hand-written `EchoClient` stands in for one):
///
/// ```no_run
/// # #[cfg(feature = "tonic")]
/// # async fn run(provider: token_refresh::TokenProvider) -> Result<(), Box<dyn std::error::Error>> {
/// use token_refresh::AuthLayer;
/// use token_refresh_emulator::grpc::EchoClient;
/// use tonic::transport::Endpoint;
/// use tower::ServiceBuilder;
///
/// let channel = Endpoint::from_static("https://grpc.example.com").connect().await?;
/// let channel = ServiceBuilder::new().layer(AuthLayer::new(provider)).service(channel);
/// let mut client = EchoClient::new(channel); // e.g. `MyServiceClient::new(channel)`
/// let answer = client.unary("hello").await?;
/// # Ok(()) }
/// ```
///
/// # Placing it with other layers
///
/// - **Redirects**: put tower-http's `FollowRedirect` *inside* `AuthLayer`
///   (`AuthLayer` → `FollowRedirect` → client): the token is attached once, and
///   `FollowRedirect`'s default policy drops it on a hop to another origin. Placed outside,
///   `FollowRedirect` sends each hop through `AuthLayer` again, which would attach a token
///   for the other origin too — unless tokens are bound with [`for_origin`](Self::for_origin),
///   which keeps them with their origin in either order (and is the only protection against
///   tower-http 0.6 putting a dropped header back on a second hop within the other origin).
/// - **Timeouts and retries**: a `Timeout` layer outside bounds the token wait with the
///   call; [`max_token_wait`](Self::max_token_wait) bounds the token wait alone.
#[derive(Clone, Debug)]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct AuthLayer {
    policy: AuthPolicy,
    replay_limit: usize,
}

const ALLOW_WITH: &str = "`AuthLayer::allow_http(true)`";

impl AuthLayer {
    /// Authenticates requests with tokens from `provider`.
    pub fn new(provider: TokenProvider) -> Self {
        Self::with_policy(AuthPolicy::new(Tokens::One(provider), ALLOW_WITH))
    }

    /// Authenticates requests with tokens from a [`KeyedTokenProvider`], for the
    /// [`TokenParams`] of each request's [`route`](Self::route): one credential, a token per
    /// destination. A request no route covers gets no token; without routes, every request
    /// gets the default parameters' token. A 401 or 403 `insufficient_scope` whose
    /// challenge names the scope a routed request lacks is answered once with a token for
    /// the union of scopes (a step-up), which the route keeps once it worked.
    pub fn keyed(provider: KeyedTokenProvider) -> Self {
        Self::with_policy(AuthPolicy::new(Tokens::Keyed(provider), ALLOW_WITH))
    }

    /// Authenticates requests with tokens found by RFC 9728 discovery for `client`; see
    /// [`AuthMiddleware::discovering`](crate::AuthMiddleware::discovering), which behaves
    /// the same. Default: no issuer allowed ([`allow_issuers`](Self::allow_issuers)).
    pub fn discovering(client: OAuthClient) -> Self {
        let mut policy = AuthPolicy::new(Tokens::Discovered, ALLOW_WITH);
        policy.set_discovery(ResourceDiscovery::new(client, Vec::new()));
        Self::with_policy(policy)
    }

    fn with_policy(policy: AuthPolicy) -> Self {
        Self {
            policy,
            replay_limit: DEFAULT_REPLAY_LIMIT,
        }
    }

    /// The authorization servers RFC 9728 discovery may use for a layer made with
    /// [`discovering`](Self::discovering); replaces the list. Default: none.
    pub fn allow_issuers(mut self, issuers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.policy
            .allow_issuers(issuers.into_iter().map(Into::into).collect());
        self
    }

    /// Sends requests to `target` — an origin, or an origin and a path prefix matched at a
    /// segment boundary — with tokens for `params` from a [`keyed`](Self::keyed) provider;
    /// the longest matching prefix wins, and a request no route covers gets no token. A
    /// target that does not parse, or parameters without a keyed provider, make every
    /// request fail with [`Error::Config`](crate::Error::Config). Default: no routes.
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

    /// Binds tokens to `origin` (`scheme://host[:port]`, e.g. `https://api.example.com`):
    /// a request to any other origin is sent on without a token. Call it again to add more
    /// origins. A request in origin form (no scheme or host in its URI, as a tonic channel
    /// sends them) is checked by its `Host` header when it has one, and gets a token when it
    /// has none: the channel's endpoint decides where it goes. An origin that does not parse
    /// makes every request fail with [`Error::Config`](crate::Error::Config). Default: every
    /// origin.
    pub fn for_origin(mut self, origin: &str) -> Self {
        self.policy.add_origin(origin);
        self
    }

    /// Longest time a request waits for a token before it fails with
    /// [`Error::WaitTimeout`](crate::Error::WaitTimeout): the tower counterpart of a reqwest
    /// request's own timeout. Default: the provider's
    /// [`max_wait`](crate::TokenProviderBuilder::max_wait) (30 s).
    pub fn max_token_wait(mut self, max: Duration) -> Self {
        self.policy.set_max_token_wait(max);
        self
    }

    /// Most bytes of a request body recorded to resend it after a rejection; a body the
    /// first send read more of is not resent, and its rejection is returned as it is.
    /// Default: [`DEFAULT_REPLAY_LIMIT`] (64 KiB).
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }
}

impl<S: Clone> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            shared: Arc::new(Shared {
                policy: self.policy.clone(),
                replay_limit: self.replay_limit,
                spare: Mutex::new(inner.clone()),
            }),
            inner,
        }
    }
}

/// A tower service that attaches `Authorization: Bearer <token>` to each
/// `http::Request<B>` and resends it once with a fresh token after a rejection.
///
/// The same policy as [`AuthMiddleware`](crate::AuthMiddleware):
///
/// - a caller-set `Authorization` header is left alone, and so is a request to an origin
///   tokens are not bound to;
/// - a rejection is HTTP 401, or, for a gRPC call (`content-type: application/grpc…`),
///   `grpc-status: 16` (`UNAUTHENTICATED`) in the response headers; it invalidates the token
///   the request carried (storm guard included, see [`TokenProvider::reject`]), and the
///   request is resent once with a fresh token if its body can be replayed ([`ReplayBody`]:
///   in-memory bodies, and streaming ones whose first send read at most
///   [`replay_limit`](AuthLayer::replay_limit) bytes), else the rejection is returned;
/// - 403, gRPC `PERMISSION_DENIED` (7) and a 401 with `insufficient_scope` refresh nothing;
/// - a gRPC status that only arrives in the trailers, after streamed messages, cannot be
///   acted on: the response is already the caller's. Servers report a bad token at the start
///   of a call, in the headers (a "trailers-only" response), which is what is handled;
/// - plain http only to loopback unless allowed; a [`MinValidity`] request extension asks
///   for a token that lasts.
///
/// The inner service must be `Clone` (as hyper-util's client and tonic's `Channel` are).
/// `poll_ready` is the inner service's. A request whose token is cached is sent in `call`
/// itself, on the polled-ready service; one that must wait for a token takes the
/// polled-ready service into its future, leaving a clone in its place; a resend uses a
/// clone made when the layer wrapped the service, and waits for it to be ready. The
/// response future is a named state machine: a request whose token is cached allocates
/// nothing and clones no service on its way through, and the request's parts are copied
/// for a resend only when its body can be replayed.
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct AuthService<S> {
    inner: S,
    shared: Arc<Shared<S>>,
}

/// What every call of one service shares: one reference count per call.
struct Shared<S> {
    policy: AuthPolicy,
    replay_limit: usize,
    /// A clone of the inner service, cloned again for the rare resend: the common path
    /// calls the inner service in place and clones nothing.
    spare: Mutex<S>,
}

impl<S: Clone> AuthService<S> {
    /// Wraps `inner`; the same as `AuthLayer::new(provider).layer(inner)`.
    pub fn new(inner: S, provider: TokenProvider) -> Self {
        AuthLayer::new(provider).layer(inner)
    }
}

impl<S> AuthService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy)
            .field("replay_limit", &self.shared.replay_limit)
            .finish()
    }
}

impl<S, B, R> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody + Send + 'static,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = &self.shared;
        let mut future = ResponseFuture {
            state: State::Done,
            service: None,
            shared: Arc::clone(shared),
            token: None,
            pick: None,
            again: None,
            resend: None,
            grpc: false,
            min: None,
            origin: None,
            watched: None,
        };
        future.state = match shared
            .policy
            .should_attach(request.uri(), request.headers())
        {
            Err(error) => State::Failed {
                error: Some(error.into()),
            },
            Ok(None)
                if shared.policy.discovers() && !request.headers().contains_key(AUTHORIZATION) =>
            {
                // No token yet, but its 401 may say where to get one (RFC 9728).
                future.grpc = AuthPolicy::is_grpc(request.headers());
                future.min = request.extensions().get::<MinValidity>().copied();
                future.watched = Some(request.uri().clone());
                match send(&mut self.inner, shared, &mut future, None, request) {
                    Ok(fut) => State::Call { fut },
                    Err(error) => State::Failed {
                        error: Some(error.into()),
                    },
                }
            }
            Ok(None) => State::Plain {
                fut: self.inner.call(request),
            },
            Ok(Some(pick)) => {
                future.pick = Some(pick);
                future.grpc = AuthPolicy::is_grpc(request.headers());
                future.min = request.extensions().get::<MinValidity>().copied();
                let min = future.min;
                match shared.policy.cached_token(pick, min.as_ref()) {
                    // Sent in place: the polled-ready service is called at once.
                    Some(token) => {
                        match send(&mut self.inner, shared, &mut future, Some(token), request) {
                            Ok(fut) => State::Call { fut },
                            Err(error) => State::Failed {
                                error: Some(error.into()),
                            },
                        }
                    }
                    None => {
                        // Called later: the polled-ready service goes into the future, and
                        // a clone takes its place here.
                        let clone = self.inner.clone();
                        future.service = Some(std::mem::replace(&mut self.inner, clone));
                        let policy = shared.policy.clone();
                        State::Token {
                            slow: Box::new(Slow {
                                fut: Box::pin(async move { policy.token(pick, min, None).await }),
                                value: Some(request),
                            }),
                        }
                    }
                }
            }
        };
        future
    }
}

/// Attaches `token` (if any: a request watched for discovery has none), keeps what a
/// resend needs (only if the body can be replayed) and sends the request.
fn send<S, B>(
    service: &mut S,
    shared: &Shared<S>,
    slots: &mut impl Slots<B>,
    token: Option<AccessToken>,
    request: Request<B>,
) -> Result<S::Future>
where
    S: Service<Request<B>>,
    B: ReplayBody,
{
    let (mut parts, body) = request.into_parts();
    if let Some(token) = &token {
        let origin = shared
            .policy
            .attach(&mut parts.headers, &parts.method, &parts.uri, token)?;
        *slots.origin() = origin;
    }
    let (body, replay) = body.into_replay(shared.replay_limit);
    if replay.is_possible() {
        let mut headers = Vec::with_capacity(parts.headers.len().saturating_sub(1));
        headers.extend(
            parts
                .headers
                .iter()
                .filter(|(name, _)| *name != AUTHORIZATION)
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        *slots.resend() = Some(Resend {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers,
            extensions: parts.extensions.clone(),
            body: replay,
        });
    }
    *slots.token() = token;
    Ok(service.call(Request::from_parts(parts, body)))
}

/// Where [`send`] keeps the token and the resend: the future itself, or its projection.
trait Slots<B> {
    fn token(&mut self) -> &mut Option<AccessToken>;
    fn resend(&mut self) -> &mut Option<Resend<B>>;
    fn origin(&mut self) -> &mut Option<String>;
}

impl<S: Service<Request<B>>, B> Slots<B> for ResponseFuture<S, B> {
    fn token(&mut self) -> &mut Option<AccessToken> {
        &mut self.token
    }
    fn resend(&mut self) -> &mut Option<Resend<B>> {
        &mut self.resend
    }
    fn origin(&mut self) -> &mut Option<String> {
        &mut self.origin
    }
}

struct ProjectedSlots<'a, B> {
    token: &'a mut Option<AccessToken>,
    resend: &'a mut Option<Resend<B>>,
    origin: &'a mut Option<String>,
}

impl<B> Slots<B> for ProjectedSlots<'_, B> {
    fn token(&mut self) -> &mut Option<AccessToken> {
        self.token
    }
    fn resend(&mut self) -> &mut Option<Resend<B>> {
        self.resend
    }
    fn origin(&mut self) -> &mut Option<String> {
        self.origin
    }
}

type TokenFuture = Pin<Box<dyn Future<Output = Result<AccessToken>> + Send>>;

/// A slow path's future with what it holds on to, boxed so that the fast path's future stays
/// small.
struct Slow<F, T> {
    fut: F,
    value: Option<T>,
}
type RetryFuture<B> =
    Pin<Box<dyn Future<Output = (Result<Option<Again>>, Option<Resend<B>>)> + Send>>;

/// How long a rejected request waits for the connection to hand back a request body it was
/// still sending. A connection lets go of it microseconds after the response; half a second
/// covers a loaded machine without holding a caller long on a stream that never ends (whose
/// rejection then comes back as it is).
const HANDBACK_WAIT: Duration = Duration::from_millis(500);

/// What it takes to send a request again: its parts and a way to make its body. The
/// headers are kept as a list without `Authorization` (the resend gets a fresh one): a
/// request with no other header costs no allocation here.
struct Resend<B> {
    method: Method,
    uri: Uri,
    version: Version,
    headers: Vec<(HeaderName, HeaderValue)>,
    extensions: Extensions,
    body: Replay<B>,
}

pin_project_lite::pin_project! {
    /// The response future of [`AuthService`]: a state machine that waits for a token only
    /// when none is cached, and for a fresh one only after a rejection.
    #[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future, B, S::Response>,
        service: Option<S>,
        shared: Arc<Shared<S>>,
        token: Option<AccessToken>,
        // The first send's tokens: `None` for a request without a token.
        pick: Option<Pick>,
        // The resend's token, after a rejection, a step-up, a discovery or a nonce.
        again: Option<Again>,
        resend: Option<Resend<B>>,
        grpc: bool,
        min: Option<MinValidity>,
        // The origin a DPoP proof was made for: its answers' `DPoP-Nonce` is kept.
        origin: Option<String>,
        // The URI of a request sent without a token and watched for an RFC 9728 challenge.
        watched: Option<Uri>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, B, R> {
        // A request that goes out without a token: its response passes through.
        Plain { #[pin] fut: F },
        Failed { error: Option<BoxError> },
        // Waiting for a token (none was cached).
        Token { slow: Box<Slow<TokenFuture, Request<B>>> },
        // The first send, with the token.
        Call { #[pin] fut: F },
        // Rejected: waiting for a fresh token, if a resend is possible.
        Rejected { slow: Box<Slow<RetryFuture<B>, R>> },
        // Waiting for the service to be ready for the resend.
        Ready { request: Box<Option<Request<B>>> },
        Resend { #[pin] fut: F },
        Done,
    }
}

impl<S, B, R> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<R>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody + Send + 'static,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Plain { fut } => return fut.poll(cx).map_err(Into::into),
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
                StateProj::Token { slow } => {
                    let token = ready!(slow.fut.as_mut().poll(cx))?;
                    let request = slow.value.take().expect("polled after completion");
                    let service = this.service.as_mut().expect("kept for the call");
                    let mut slots = ProjectedSlots {
                        token: this.token,
                        resend: this.resend,
                        origin: this.origin,
                    };
                    match send(service, this.shared, &mut slots, Some(token), request) {
                        Ok(fut) => State::Call { fut },
                        Err(error) => return Poll::Ready(Err(error.into())),
                    }
                }
                StateProj::Call { fut } => {
                    let response = ready!(fut.poll(cx)).map_err(Into::into)?;
                    let verdict =
                        AuthPolicy::verdict(response.status(), response.headers(), *this.grpc);
                    let nonce = match (this.token.as_ref(), verdict) {
                        (Some(token), Verdict::Accepted) => {
                            token.mark_accepted();
                            return Poll::Ready(Ok(response));
                        }
                        (Some(_), Verdict::Other) => return Poll::Ready(Ok(response)),
                        // Not a rejection of the token: the same token, a proof with the
                        // server's nonce.
                        (Some(token), Verdict::Nonce) if token.dpop_key().is_some() => true,
                        (Some(_), _) => false,
                        // Without a token, only an RFC 9728 challenge is worth an answer.
                        (None, Verdict::Discover) => false,
                        (None, _) => return Poll::Ready(Ok(response)),
                    };
                    if this.token.is_some() {
                        this.shared
                            .policy
                            .note_nonce(this.origin.as_deref(), response.headers());
                    }
                    let (policy, token, min, pick) = (
                        this.shared.policy.clone(),
                        this.token.clone(),
                        *this.min,
                        *this.pick,
                    );
                    let resend = this.resend.take();
                    let uri = this
                        .watched
                        .as_ref()
                        .or(resend.as_ref().map(|r| &r.uri))
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    // The challenge is read from the answer's headers, which the answer
                    // keeps while the recovery runs.
                    let headers = response.headers().clone();
                    let settled = resend.as_ref().map(|r| r.body.settled(HANDBACK_WAIT));
                    State::Rejected {
                        slow: Box::new(Slow {
                            fut: Box::pin(async move {
                                if let Some(settled) = settled {
                                    settled.await;
                                }
                                let replayable =
                                    resend.as_ref().is_some_and(|r| r.body.can_replay());
                                if nonce {
                                    let (Some(token), Some(pick)) = (token, pick) else {
                                        return (Ok(None), resend);
                                    };
                                    if replayable {
                                        policy.nonce_resend(pick);
                                    }
                                    let again = Again::same(token, pick);
                                    return (Ok(replayable.then_some(again)), resend);
                                }
                                let first = First {
                                    pick,
                                    sent: token.as_ref(),
                                    uri: &uri,
                                    min,
                                    deadline: None,
                                };
                                let again =
                                    policy.recover(&first, verdict, &headers, replayable).await;
                                (again, resend)
                            }),
                            value: Some(response),
                        }),
                    }
                }
                StateProj::Rejected { slow } => {
                    let (again, resend) = ready!(slow.fut.as_mut().poll(cx));
                    let again = again?;
                    let response = slow.value.take().expect("polled after completion");
                    let Some((again, resend)) = again.zip(resend) else {
                        return Poll::Ready(Ok(response));
                    };
                    let Some(body) = resend.body.into_body() else {
                        return Poll::Ready(Ok(response));
                    };
                    drop(response);
                    let mut request = Request::new(body);
                    *request.method_mut() = resend.method;
                    *request.uri_mut() = resend.uri;
                    *request.version_mut() = resend.version;
                    let headers = request.headers_mut();
                    headers.reserve(resend.headers.len() + 1);
                    for (name, value) in resend.headers {
                        headers.append(name, value);
                    }
                    *request.extensions_mut() = resend.extensions;
                    let (method, uri) = (request.method().clone(), request.uri().clone());
                    *this.origin = this.shared.policy.attach(
                        request.headers_mut(),
                        &method,
                        &uri,
                        &again.token,
                    )?;
                    *this.again = Some(again);
                    State::Ready {
                        request: Box::new(Some(request)),
                    }
                }
                StateProj::Ready { request } => {
                    let service = match this.service {
                        Some(service) => service,
                        None => this.service.insert(S::clone(
                            &this
                                .shared
                                .spare
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner),
                        )),
                    };
                    ready!(service.poll_ready(cx)).map_err(Into::into)?;
                    let request = request.take().expect("polled after completion");
                    State::Resend {
                        fut: service.call(request),
                    }
                }
                StateProj::Resend { fut } => {
                    let response = ready!(fut.poll(cx)).map_err(Into::into)?;
                    this.shared
                        .policy
                        .note_nonce(this.origin.as_deref(), response.headers());
                    if let Some(again) = this.again.as_ref() {
                        let verdict =
                            AuthPolicy::verdict(response.status(), response.headers(), *this.grpc);
                        this.shared.policy.after_resend(again, verdict);
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            };
            this.state.set(next);
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
