//! [`TokenEndpoint`](crate::TokenEndpoint): where every grant sends its form POST, and how (DPoP, discovery, the
//! HTTP settings).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::dpop::Dpop;
use super::http::{GetError, Http, built_in_client};
use crate::defaults::{DEFAULT_DISCOVERY_TTL, DEFAULT_REQUEST_TIMEOUT};
use crate::dpop::DpopKey;
use crate::error::Result;
use crate::metadata::{Discovery, ServerMetadata};
use crate::store::KeyBuilder;

/// An OAuth2 token endpoint: where every grant sends its form POST.
///
/// The built-in grants ([`JwtBearer`](crate::JwtBearer),
/// [`ClientCredentials`](crate::ClientCredentials)) use it, and so can any other grant in a
/// few lines (a refresh token, a password grant, a token exchange): build a
/// [`TokenRequest`](crate::TokenRequest) with [`request`](Self::request), add parameters, [`send`](crate::TokenRequest::send)
/// it. What every token request gets:
///
/// - its own plain `reqwest::Client`, built on first use: no redirects, no connection reuse
///   (a pooled connection belongs to the Tokio runtime that opened it), no proxy for a
///   plain-http URL (the loopback exemption must not hand credentials to a proxy), a
///   [`DEFAULT_REQUEST_TIMEOUT`](crate::defaults::DEFAULT_REQUEST_TIMEOUT) request timeout,
///   a connect timeout and a `User-Agent` naming this crate;
/// - plain `http://` only to loopback hosts, unless [`allow_http`](Self::allow_http);
/// - a response read of at most [`MAX_RESPONSE_BYTES`](crate::defaults::MAX_RESPONSE_BYTES);
/// - RFC 6749 §5.1 / §5.2 parsing: an `access_token` that is not an RFC 6750 `b64token`
///   refused, `token_type` in any case of `bearer`, `expires_in` missing (one hour), as a
///   string, or implausibly long (capped at a day) and counted from when the request was
///   sent, an `error` body even with status 200, `Retry-After` in seconds or as an HTTP-date
///   (measured against the server's `Date`);
/// - the transient / permanent split of [`Error::is_transient`](crate::Error::is_transient);
/// - no redirect is followed, whatever client is supplied: the body is sent so that no
///   client can resend it to a 307's target, and an answer from another origin is refused;
/// - every secret parameter scrubbed from whatever text the server sends back, which is
///   also stripped of control characters and cut at 512 characters.
///
/// # Example
///
/// A grant of your own is a [`TokenSource`](crate::TokenSource) (here a closure) that builds
/// its form and sends it. Against the built-in emulator (`token_refresh_emulator`, feature
/// `emulator`), offline, the client-credentials grant written by hand:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_refresh_emulator::Emulator;
/// use token_refresh::{TokenEndpoint, TokenProvider};
///
/// let emulator = Emulator::start().await?;
/// let endpoint = TokenEndpoint::new(emulator.token_url());
/// let (id, secret) = (emulator.client_id(), emulator.client_secret());
/// let provider = TokenProvider::new(move || {
///     let (endpoint, id, secret) = (endpoint.clone(), id.clone(), secret.clone());
///     async move {
///         endpoint
///             .request()
///             .param("grant_type", "client_credentials")
///             .basic_auth(&id, &secret)
///             .send()
///             .await
///     }
/// });
///
/// let token = provider.token().await?;
/// assert!(!token.expose_secret().is_empty());
/// assert_eq!(emulator.stats().token_successes, 1);
/// # Ok(()) }
/// ```
///
/// An RFC 6749 §6 refresh-token grant is the same with its own parameters:
///
/// ```
/// use token_refresh::{TokenEndpoint, TokenProvider};
///
/// let endpoint = TokenEndpoint::new("https://auth.example.com/oauth2/token");
/// let refresh_token = String::from("r3fr3sh");
/// let provider = TokenProvider::new(move || {
///     let (endpoint, refresh_token) = (endpoint.clone(), refresh_token.clone());
///     async move {
///         endpoint
///             .request()
///             .param("grant_type", "refresh_token")
///             .secret_param("refresh_token", &refresh_token)
///             .send()
///             .await
///     }
/// });
/// # drop(provider); // lazy: nothing is sent until the first token()
/// ```
#[derive(Clone)]
pub struct TokenEndpoint {
    url: String,
    /// The client (the application's, from [`http_client`](Self::http_client), or the
    /// process's built-in one), `allow_http` and the timeout.
    pub(super) http: Http,
    pub(super) assertion_audience: Option<String>,
    /// Set for [`discover`](Self::discover): the token URL comes from the metadata.
    discovery: Option<Arc<Discovery>>,
    /// Set for [`dpop`](Self::dpop): token requests carry proofs.
    pub(super) dpop: Option<Arc<Dpop>>,
    /// [`dpop_allow_bearer`](Self::dpop_allow_bearer), whenever it was set.
    dpop_allow_bearer: bool,
}

impl TokenEndpoint {
    /// The endpoint at `url`. Does no I/O; the URL is checked at the first request.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            http: Http {
                client: None,
                allow_http: false,
                timeout: DEFAULT_REQUEST_TIMEOUT,
            },
            assertion_audience: None,
            discovery: None,
            dpop: None,
            dpop_allow_bearer: false,
        }
        .warmed()
    }

    /// Builds the process's built-in client for this endpoint's scheme now, once per
    /// process: it loads the TLS roots, milliseconds that would otherwise delay the first
    /// token request of a cold start (and every caller waiting on it).
    fn warmed(self) -> Self {
        if self.http.client.is_none() {
            let _ = built_in_client(self.url.starts_with("http://"));
        }
        self
    }

    /// The token endpoint of the authorization server `issuer`, found in its metadata
    /// (RFC 8414's `/.well-known/oauth-authorization-server`, then OpenID Connect's
    /// `/.well-known/openid-configuration`) at the first token request, and fetched again
    /// only after [`discovery_ttl`](Self::discovery_ttl). The document must name `issuer`
    /// exactly, or every request fails with [`Error::IssuerMismatch`](crate::Error::IssuerMismatch) (the mix-up defence
    /// of RFC 8414 §3.3). Does no I/O.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use token_refresh_emulator::Emulator;
    /// use token_refresh::{ClientCredentials, TokenEndpoint, TokenProvider};
    ///
    /// let emulator = Emulator::start().await?;
    /// let endpoint = TokenEndpoint::discover(emulator.issuer());
    /// let metadata = endpoint.metadata().await?;
    /// assert_eq!(metadata.token_endpoint(), emulator.token_url());
    ///
    /// let source = ClientCredentials::new(endpoint, emulator.client_id(), emulator.client_secret());
    /// TokenProvider::new(source).token().await?;
    /// assert_eq!(emulator.stats().discovery_requests, 1); // cached, not fetched per request
    /// # Ok(()) }
    /// ```
    pub fn discover(issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        Self {
            discovery: Some(Arc::new(Discovery::new(
                issuer.clone(),
                DEFAULT_DISCOVERY_TTL,
            ))),
            ..Self::new(issuer)
        }
    }

    /// Sends a DPoP proof (RFC 9449) signed with `key` with every token request, answers a
    /// `use_dpop_nonce` error once with the server's `DPoP-Nonce` (kept for the next
    /// requests, and updated from every answer), and accepts `token_type` `DPoP`: the token
    /// is then [bound to the key](crate::AccessToken::dpop_key). A `Bearer` answer is refused
    /// ([`Error::DpopNotBound`](crate::Error::DpopNotBound)) unless [`dpop_allow_bearer`](Self::dpop_allow_bearer).
    /// Default: no DPoP.
    pub fn dpop(mut self, key: DpopKey) -> Self {
        self.dpop = Some(Arc::new(Dpop::new(key, self.dpop_allow_bearer, None)));
        self
    }

    /// Accepts a `Bearer` token in answer to a DPoP token request (a server that ignores
    /// DPoP). Applies to the [`dpop`](Self::dpop) key, whether set before or after this; no
    /// effect without one. Default: `false`.
    pub fn dpop_allow_bearer(mut self, allow: bool) -> Self {
        self.dpop_allow_bearer = allow;
        if let Some(dpop) = &self.dpop {
            self.dpop = Some(Arc::new(Dpop::new(dpop.key.clone(), allow, dpop.nonce())));
        }
        self
    }

    /// How long discovered metadata is used before it is fetched again; a re-fetch that
    /// fails transiently keeps the old metadata. No effect on an endpoint that was not
    /// [discovered](Self::discover). Default:
    /// [`DEFAULT_DISCOVERY_TTL`](crate::defaults::DEFAULT_DISCOVERY_TTL) (1 hour).
    pub fn discovery_ttl(mut self, ttl: Duration) -> Self {
        if let Some(discovery) = &self.discovery {
            self.discovery = Some(Arc::new(Discovery::new(discovery.issuer.clone(), ttl)));
        }
        self
    }

    /// The authorization server's metadata for a [discovered](Self::discover) endpoint,
    /// fetched now if it is not cached. An endpoint built from a URL has none: that is an
    /// [`Error::Config`](crate::Error::Config) saying to build it with `discover`.
    pub async fn metadata(&self) -> Result<Arc<ServerMetadata>> {
        match &self.discovery {
            Some(discovery) => discovery.metadata(&self.http).await,
            None => Err(crate::Error::Config(format!(
                "the token endpoint {} was given as a URL and has no metadata: build it with \
                 TokenEndpoint::discover(issuer)",
                self.url
            ))),
        }
    }

    /// The metadata of a [discovered](Self::discover) endpoint (cached; fetched if stale),
    /// `None` for one given as a URL.
    pub(super) async fn discovered(&self) -> Result<Option<Arc<ServerMetadata>>> {
        match &self.discovery {
            Some(discovery) => discovery.metadata(&self.http).await.map(Some),
            None => Ok(None),
        }
    }

    /// A GET for a JSON object (server metadata, a CI token service) with this endpoint's
    /// client, timeout and transport rules; see [`Http::get_json`].
    pub(crate) async fn get_json(
        &self,
        url: &reqwest::Url,
        bearer: Option<&str>,
    ) -> std::result::Result<Value, GetError> {
        self.http.get_json(url, bearer).await
    }

    /// Sets the `aud` of client assertions ([`TokenRequest::client_assertion`](crate::TokenRequest::client_assertion)), for servers
    /// that want their issuer identifier there rather than the token URL. Default: the token
    /// URL.
    pub fn client_assertion_audience(mut self, audience: impl Into<String>) -> Self {
        self.assertion_audience = Some(audience.into());
        self
    }

    /// Allows a plain `http://` URL on a host that is not loopback. What a token request
    /// carries (an assertion, a client secret) can be exchanged for tokens, so this is off
    /// by default; loopback hosts (tests, emulators) are always allowed. Default: `false`.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.http.allow_http = allow;
        self
    }

    /// The timeout of one token request, connect to last byte. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`](crate::defaults::DEFAULT_REQUEST_TIMEOUT) (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.http.timeout = timeout;
        self
    }

    /// Uses `client` instead of the built-in one (for a proxy, custom roots, a client
    /// certificate). Whatever its redirect policy, no token request is redirected. It must
    /// not carry middleware that attaches this provider's tokens, and a pooled connection of
    /// a client shared between Tokio runtimes can stall when the runtime that opened it
    /// stops. The [`timeout`](Self::timeout) still applies. Default: the built-in client
    /// without redirects, proxies for plain http, or connection reuse, one per process
    /// (built when the first endpoint is made).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http.client = Some(client);
        self
    }

    /// Adds what identifies this endpoint to a store key: the token URL (the issuer, if
    /// discovered) and the DPoP key's thumbprint, if any.
    pub(crate) fn key_parts(&self, key: KeyBuilder) -> KeyBuilder {
        key.part(&self.url)
            .optional(self.dpop_key().map(DpopKey::thumbprint))
    }

    /// The provider name of a source that asks this endpoint for `who`: the URL's host
    /// (the issuer's, before discovery) and `who`, e.g. `auth.example.com/my-client`.
    pub(crate) fn name_for(&self, who: &str) -> String {
        let host = self
            .url
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.host().map(str::to_owned))
            .unwrap_or_else(|| "token-endpoint".to_owned());
        format!("{host}/{who}")
    }

    /// The DPoP key of token requests, if [`dpop`](Self::dpop) set one.
    pub fn dpop_key(&self) -> Option<&DpopKey> {
        self.dpop.as_ref().map(|d| &d.key)
    }

    /// The token URL; for a [discovered](Self::discover) endpoint, the issuer.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The timeout of one token request, which also bounds a signer's call.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.http.timeout
    }

    /// The same endpoint settings for another URL.
    pub(crate) fn with_url(mut self, url: String) -> Self {
        self.url = url;
        self.warmed()
    }
}

impl From<String> for TokenEndpoint {
    /// [`TokenEndpoint::new`](crate::TokenEndpoint::new).
    fn from(url: String) -> Self {
        Self::new(url)
    }
}

impl From<&str> for TokenEndpoint {
    /// [`TokenEndpoint::new`](crate::TokenEndpoint::new).
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<&String> for TokenEndpoint {
    /// [`TokenEndpoint::new`](crate::TokenEndpoint::new).
    fn from(url: &String) -> Self {
        Self::new(url.as_str())
    }
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("url", &self.url)
            .field("allow_http", &self.http.allow_http)
            .field("timeout", &self.http.timeout)
            .finish_non_exhaustive()
    }
}
