//! [`AuthLayer`] / [`AuthService`]: authenticates requests of a tower service stack.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use tower_layer::Layer;
use tower_service::Service;

use crate::policy::{AuthPolicy, MinValidity, Target, Verdict};
use crate::provider::TokenProvider;

/// The error type of [`AuthService`]: the inner service's error or a [`crate::Error`],
/// boxed (tower's convention). Downcast with `error.downcast_ref::<token_refresh::Error>()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A tower [`Layer`] that wraps a service in an [`AuthService`]. It holds only the
/// configuration, which each service it builds clones.
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
///     .layer(AuthLayer::new(provider))
///     .service(api);
///
/// let request = Request::get("https://api.example.com/v2/projects").body(Full::default())?;
/// let response = client.ready().await?.call(request).await?;
/// assert_eq!(response.body(), "Bearer t0k3n");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct AuthLayer {
    policy: AuthPolicy,
}

impl AuthLayer {
    /// Authenticates requests with tokens from `provider`.
    pub fn new(provider: TokenProvider) -> Self {
        Self {
            policy: AuthPolicy::new(provider, "`AuthLayer::allow_http(true)`"),
        }
    }

    /// Allows sending tokens over plain `http://` to hosts that are not loopback. Anyone on
    /// the network path can read and reuse such a token. Default: `false`.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.policy.set_allow_http(allow);
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
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// A tower service that attaches `Authorization: Bearer <token>` to each
/// `http::Request<B>` and resends it once with a fresh token after a 401.
///
/// The same policy as [`AuthMiddleware`](crate::AuthMiddleware): a caller-set
/// `Authorization` header is left alone; a 401 invalidates the token the request carried and
/// the request is resent once if its body is [`ReplayBody`] replayable, else the 401 is
/// returned; a 403 is returned untouched; plain http only to loopback unless allowed.
/// `poll_ready` is the inner service's; the resend waits for the inner service to be ready
/// again.
#[derive(Clone, Debug)]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct AuthService<S> {
    inner: S,
    policy: AuthPolicy,
}

impl<S> AuthService<S> {
    /// Wraps `inner`; the same as `AuthLayer::new(provider).layer(inner)`.
    pub fn new(inner: S, provider: TokenProvider) -> Self {
        AuthLayer::new(provider).layer(inner)
    }

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

impl<S, B, ResBody> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: ReplayBody + Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<Response<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The polled-ready service goes into the future; a clone takes its place here.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            inner: Box::pin(send(self.policy.clone(), inner, request)),
        }
    }
}

async fn send<S, B, ResBody>(
    policy: AuthPolicy,
    mut service: S,
    mut request: Request<B>,
) -> Result<Response<ResBody>, BoxError>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    let target = Target {
        scheme: request.uri().scheme_str(),
        host: request.uri().host(),
        port: request.uri().port_u16(),
    };
    if !policy.should_attach(&target, request.headers())? {
        return service.call(request).await.map_err(Into::into);
    }
    let min = request.extensions().get::<MinValidity>().copied();
    let token = match policy.cached_token(min.as_ref()) {
        Some(token) => token,
        None => policy.token(min, None).await?,
    };
    AuthPolicy::attach(request.headers_mut(), &token);
    let grpc = AuthPolicy::is_grpc(request.headers());
    let replay = replay_of(&request);
    let response = service.call(request).await.map_err(Into::into)?;
    match AuthPolicy::verdict(response.status(), response.headers(), grpc) {
        Verdict::Accepted => {
            token.mark_accepted();
            return Ok(response);
        }
        Verdict::Other => return Ok(response),
        Verdict::Rejected => {}
    }
    let fresh = policy
        .after_rejection(&token, replay.is_some(), min, None)
        .await?;
    match (fresh, replay) {
        (Some(fresh), Some(mut replay)) => {
            drop(response);
            AuthPolicy::attach(replay.headers_mut(), &fresh);
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            service.call(replay).await.map_err(Into::into)
        }
        _ => Ok(response),
    }
}

/// A copy of `request` to resend, if its body can be replayed.
fn replay_of<B: ReplayBody>(request: &Request<B>) -> Option<Request<B>> {
    let body = request.body().try_clone_body()?;
    let mut replay = Request::new(body);
    *replay.method_mut() = request.method().clone();
    *replay.uri_mut() = request.uri().clone();
    *replay.version_mut() = request.version();
    *replay.headers_mut() = request.headers().clone();
    *replay.extensions_mut() = request.extensions().clone();
    Some(replay)
}

/// The response future of [`AuthService`].
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct ResponseFuture<T> {
    inner: Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>,
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// A request body that [`AuthService`] can resend after a 401.
///
/// `try_clone_body` returns a copy that yields the same bytes, or `None` if the body cannot
/// be replayed (a stream): such a request gets its 401 back. Implemented for in-memory
/// bodies, and for boxed bodies that are known to be empty. Implement it for your own body
/// type to make it replayable.
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub trait ReplayBody: Sized {
    /// A copy to resend, or `None` if this body cannot be replayed.
    fn try_clone_body(&self) -> Option<Self>;
}

macro_rules! replay_by_clone {
    ($($ty:ty),*) => {$(
        impl ReplayBody for $ty {
            fn try_clone_body(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}

replay_by_clone!((), String, Vec<u8>, Bytes, &'static str, &'static [u8]);

impl<D: Clone> ReplayBody for Full<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for Empty<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::BoxBody<D, E>
where
    D: bytes::Buf + Send + Sync + 'static,
    E: 'static,
{
    fn try_clone_body(&self) -> Option<Self> {
        self.is_end_stream()
            .then(|| Empty::new().map_err(|never| match never {}).boxed())
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::UnsyncBoxBody<D, E>
where
    D: bytes::Buf + Send + 'static,
    E: 'static,
{
    fn try_clone_body(&self) -> Option<Self> {
        self.is_end_stream()
            .then(|| Empty::new().map_err(|never| match never {}).boxed_unsync())
    }
}
