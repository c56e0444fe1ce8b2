//! The token-endpoint exchange every grant shares: a form POST, and its RFC 6749 §5.1 / §5.2
//! answer turned into a token or a precise error.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, DATE, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::time::Instant;

use crate::defaults::{
    CONNECT_TIMEOUT, DEFAULT_DISCOVERY_TTL, DEFAULT_EXPIRES_IN, DEFAULT_REQUEST_TIMEOUT,
    MAX_EXPIRES_IN, MAX_RESPONSE_BYTES,
};
use crate::dpop::DpopKey;
use crate::error::{Error, Result, Scrubber};
use crate::metadata::{Discovery, ServerMetadata};
use crate::quiet_panic::Passed;
use crate::signing::{self, Jws, Signer};
use crate::store::KeyBuilder;
use crate::token::{AccessToken, is_b64token};
use crate::transport::{check_transport, origin_of, same_origin};

/// The `client_assertion_type` of RFC 7523 §2.2.
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

const USER_AGENT: &str = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));

/// An OAuth2 token endpoint: where every grant sends its form POST.
///
/// The built-in grants ([`JwtBearer`](crate::JwtBearer),
/// [`ClientCredentials`](crate::ClientCredentials)) use it, and so can any other grant in a
/// few lines (a refresh token, a password grant, a token exchange): build a
/// [`TokenRequest`] with [`request`](Self::request), add parameters, [`send`](TokenRequest::send)
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
/// - the transient / permanent split of [`Error::is_transient`];
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
    allow_http: bool,
    timeout: Duration,
    assertion_audience: Option<String>,
    /// A client the application gave ([`http_client`](Self::http_client)); else the
    /// process's built-in one.
    client: Option<reqwest::Client>,
    /// Set for [`discover`](Self::discover): the token URL comes from the metadata.
    discovery: Option<Arc<Discovery>>,
    /// Set for [`dpop`](Self::dpop): token requests carry proofs.
    dpop: Option<Arc<Dpop>>,
}

/// A token endpoint's DPoP settings and the last nonce it gave.
struct Dpop {
    key: DpopKey,
    allow_bearer: bool,
    nonce: Mutex<Option<String>>,
}

impl Dpop {
    fn nonce(&self) -> Option<String> {
        self.nonce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Keeps the `DPoP-Nonce` of a response, if it has a usable one, and returns it.
    fn update_nonce(&self, headers: &HeaderMap) -> Option<String> {
        let nonce = crate::dpop::nonce_of(headers)?.to_owned();
        *self
            .nonce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(nonce.clone());
        Some(nonce)
    }
}

impl TokenEndpoint {
    /// The endpoint at `url`. Does no I/O; the URL is checked at the first request.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            allow_http: false,
            timeout: DEFAULT_REQUEST_TIMEOUT,
            assertion_audience: None,
            client: None,
            discovery: None,
            dpop: None,
        }
        .warmed()
    }

    /// Builds the process's built-in client for this endpoint's scheme now, once per
    /// process: it loads the TLS roots, milliseconds that would otherwise delay the first
    /// token request of a cold start (and every caller waiting on it).
    fn warmed(self) -> Self {
        if self.client.is_none() {
            let _ = built_in_client(self.url.starts_with("http://"));
        }
        self
    }

    /// The token endpoint of the authorization server `issuer`, found in its metadata
    /// (RFC 8414's `/.well-known/oauth-authorization-server`, then OpenID Connect's
    /// `/.well-known/openid-configuration`) at the first token request, and fetched again
    /// only after [`discovery_ttl`](Self::discovery_ttl). The document must name `issuer`
    /// exactly, or every request fails with [`Error::IssuerMismatch`] (the mix-up defence
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
    /// let metadata = endpoint.metadata().await?.expect("a discovered endpoint");
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
    /// is then [bound to the key](AccessToken::dpop_key). A `Bearer` answer is refused
    /// ([`Error::DpopNotBound`]) unless [`dpop_allow_bearer`](Self::dpop_allow_bearer).
    /// Default: no DPoP.
    pub fn dpop(mut self, key: DpopKey) -> Self {
        self.dpop = Some(Arc::new(Dpop {
            key,
            allow_bearer: self.dpop.as_ref().is_some_and(|d| d.allow_bearer),
            nonce: Mutex::new(None),
        }));
        self
    }

    /// Accepts a `Bearer` token in answer to a DPoP token request (a server that ignores
    /// DPoP). No effect without [`dpop`](Self::dpop). Default: `false`.
    pub fn dpop_allow_bearer(mut self, allow: bool) -> Self {
        if let Some(dpop) = &self.dpop {
            self.dpop = Some(Arc::new(Dpop {
                key: dpop.key.clone(),
                allow_bearer: allow,
                nonce: Mutex::new(dpop.nonce()),
            }));
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

    /// The authorization server's metadata for a [discovered](Self::discover) endpoint
    /// (fetched now if it is not cached), `None` for one built from a URL.
    pub async fn metadata(&self) -> Result<Option<Arc<ServerMetadata>>> {
        match &self.discovery {
            Some(discovery) => discovery.metadata(self).await.map(Some),
            None => Ok(None),
        }
    }

    /// The token URL now: from the metadata for a discovered endpoint.
    async fn target(&self) -> Result<String> {
        match &self.discovery {
            Some(discovery) => Ok(discovery.metadata(self).await?.token_endpoint().to_owned()),
            None => Ok(self.url.clone()),
        }
    }

    /// A GET for a JSON object (server metadata, a CI token service), with the endpoint's
    /// client, timeout, transport rules and size cap; `bearer` is sent as a sensitive
    /// `Authorization`.
    pub(crate) async fn get_json(
        &self,
        url: &reqwest::Url,
        bearer: Option<&str>,
    ) -> std::result::Result<Value, GetError> {
        let fail = |problem: String, transient: bool| GetError {
            problem,
            transient,
            status: None,
        };
        ensure_io().map_err(|e| fail(e.to_string(), false))?;
        check_transport(
            Some(url.scheme()),
            url.host_str(),
            self.allow_http,
            "the request",
            "`allow_http(true)`",
        )
        .map_err(|e| fail(e.to_string(), false))?;
        let client = self.client(url).map_err(|e| fail(e.to_string(), false))?;
        let mut request = client
            .get(url.clone())
            .header(ACCEPT, "application/json")
            .timeout(self.timeout);
        if let Some(bearer) = bearer {
            let mut value = HeaderValue::try_from(format!("Bearer {bearer}"))
                .map_err(|_| fail("the bearer token cannot be sent in a header".into(), false))?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| fail(self.transport_error(&e).to_string(), true))?;
        let status = response.status().as_u16();
        if response.status().is_redirection() {
            return Err(fail(
                format!("HTTP {status}: redirects are not followed"),
                false,
            ));
        }
        if !response.status().is_success() {
            return Err(GetError {
                problem: format!("HTTP {status}"),
                transient: Error::HttpStatus {
                    status,
                    retry_after: None,
                }
                .is_transient(),
                status: Some(status),
            });
        }
        let body = match read_capped(response, MAX_RESPONSE_BYTES).await {
            Ok(body) => body,
            Err(ReadError::TooLarge) => {
                return Err(fail(
                    format!("the answer is larger than {MAX_RESPONSE_BYTES} bytes"),
                    false,
                ));
            }
            Err(ReadError::Http(e)) => {
                return Err(fail(self.transport_error(&e).to_string(), true));
            }
        };
        match serde_json::from_slice::<Value>(&body) {
            Ok(json @ Value::Object(_)) => Ok(json),
            Ok(_) => Err(fail("the answer is not a JSON object".into(), false)),
            Err(e) => Err(fail(format!("the answer is not JSON: {e}"), false)),
        }
    }

    /// Sets the `aud` of client assertions ([`TokenRequest::client_assertion`]), for servers
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
        self.allow_http = allow;
        self
    }

    /// The timeout of one token request, connect to last byte. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`](crate::defaults::DEFAULT_REQUEST_TIMEOUT) (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Uses `client` instead of the built-in one (for a proxy, custom roots, a client
    /// certificate). Whatever its redirect policy, no token request is redirected. It must
    /// not carry middleware that attaches this provider's tokens, and a pooled connection of
    /// a client shared between Tokio runtimes can stall when the runtime that opened it
    /// stops. The [`timeout`](Self::timeout) still applies. Default: the built-in client
    /// without redirects, proxies for plain http, or connection reuse, one per process
    /// (built when the first endpoint is made).
    pub fn http_client(self, client: reqwest::Client) -> Self {
        Self {
            client: Some(client),
            ..self
        }
    }

    /// Adds what identifies this endpoint to a store key: the token URL (the issuer, if
    /// discovered) and the DPoP key's thumbprint, if any.
    pub(crate) fn key_parts(&self, key: KeyBuilder) -> KeyBuilder {
        key.part(&self.url)
            .optional(self.dpop_key().map(DpopKey::thumbprint))
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
        self.timeout
    }

    /// The same endpoint settings for another URL.
    pub(crate) fn with_url(mut self, url: String) -> Self {
        self.url = url;
        self.warmed()
    }

    /// Starts a form POST to this endpoint.
    pub fn request(&self) -> TokenRequest<'_> {
        TokenRequest {
            endpoint: self,
            form: String::new(),
            basic: None,
            client_assertion: None,
            minted: None,
            scrubber: Scrubber::default(),
            not_applicable: false,
            sending: "the token request's credentials",
            allow_with: "`TokenEndpoint::allow_http(true)`",
        }
    }

    fn client(&self, url: &reqwest::Url) -> Result<&reqwest::Client> {
        match &self.client {
            Some(client) => Ok(client),
            None => built_in_client(url.scheme() == "http"),
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Timeout(self.timeout)
        } else if e.is_connect() {
            Error::Connect(error_chain(e))
        } else {
            Error::Transport(error_chain(e))
        }
    }
}

impl From<String> for TokenEndpoint {
    /// [`TokenEndpoint::new`].
    fn from(url: String) -> Self {
        Self::new(url)
    }
}

impl From<&str> for TokenEndpoint {
    /// [`TokenEndpoint::new`].
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<&String> for TokenEndpoint {
    /// [`TokenEndpoint::new`].
    fn from(url: &String) -> Self {
        Self::new(url.as_str())
    }
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("url", &self.url)
            .field("allow_http", &self.allow_http)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Signs a grant's assertion for one attempt of a token request.
pub(crate) type MintAssertion<'a> = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<SecretString>> + Send + 'a>> + Send + Sync + 'a,
>;

/// One token request being built; from [`TokenEndpoint::request`].
pub struct TokenRequest<'a> {
    endpoint: &'a TokenEndpoint,
    form: String,
    basic: Option<SecretString>,
    client_assertion: Option<(&'a str, &'a dyn Signer)>,
    /// A secret parameter signed anew for each attempt (a grant's assertion).
    minted: Option<(&'static str, MintAssertion<'a>)>,
    scrubber: Scrubber,
    not_applicable: bool,
    sending: &'static str,
    allow_with: &'static str,
}

impl<'a> TokenRequest<'a> {
    /// Adds a form parameter that is not secret (`grant_type`, `scope`, `audience`, …).
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.append(name, value);
        self
    }

    /// Adds a secret form parameter (`assertion`, `client_secret`, `refresh_token`, …):
    /// scrubbed from any text the server sends back.
    pub fn secret_param(mut self, name: &str, value: &'a str) -> Self {
        self.append(name, value);
        self.scrubber = self.scrubber.secret(value);
        self
    }

    /// Authenticates the client with HTTP Basic (RFC 6749 §2.3.1): id and secret are each
    /// form-urlencoded, joined with `:` and Base64-encoded. The secret is scrubbed from the
    /// server's answer.
    pub fn basic_auth(mut self, client_id: &'a str, client_secret: &'a str) -> Self {
        use base64::Engine as _;
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            encode(client_id),
            encode(client_secret)
        ));
        // The secret as it was sent: in the Base64 credentials (padded or not) as well.
        self.scrubber = self
            .scrubber
            .secret(client_secret)
            .secret(&credentials)
            .secret(credentials.trim_end_matches('='));
        self.basic = Some(SecretString::from(format!("Basic {credentials}")));
        self
    }

    /// Authenticates the client with a signed assertion (RFC 7523 §2.2): `private_key_jwt`
    /// with a [`SigningKey`](crate::SigningKey) or a KMS [`Signer`], or
    /// `client_secret_jwt` with `SigningKey::from_secret`. At [`send`](Self::send) the
    /// signer signs a JWT with `iss` = `sub` = `client_id`, `aud` = the token URL (or
    /// [`TokenEndpoint::client_assertion_audience`]), `iat`, `exp` 180 s later and a fresh
    /// `jti`, so a server with replay checks accepts every retry; the form gets
    /// `client_id`, `client_assertion_type` and `client_assertion`.
    pub fn client_assertion(mut self, client_id: &'a str, signer: &'a dyn Signer) -> Self {
        self.client_assertion = Some((client_id, signer));
        self
    }

    /// Scrubs `secret` from whatever text the server sends back, for a secret that is not
    /// itself a parameter (the key an assertion was signed with).
    pub fn scrub(mut self, secret: &'a str) -> Self {
        self.scrubber = self.scrubber.secret(secret);
        self
    }

    /// Adds the secret parameter `name` with an assertion `mint` signs at each attempt: the
    /// nonce retry of a DPoP request carries a fresh `jti` too, which a server with replay
    /// checks wants. Signed only once the request can go, like a client assertion.
    pub(crate) fn minted_param(mut self, name: &'static str, mint: MintAssertion<'a>) -> Self {
        self.minted = Some((name, mint));
        self
    }

    fn append(&mut self, name: &str, value: &str) {
        append_param(&mut self.form, name, value);
    }

    /// Names what the request carries and how to allow it over plain http, for
    /// [`Error::InsecureTransport`].
    pub(crate) fn describe(mut self, sending: &'static str, allow_with: &'static str) -> Self {
        self.sending = sending;
        self.allow_with = allow_with;
        self
    }

    /// Sends the request and turns the answer into a token or a precise [`Error`], e.g.
    /// [`Error::OAuth`] for an RFC 6749 §5.2 error body, [`Error::HttpStatus`] for another
    /// error status, [`Error::Redirect`] for a redirect, [`Error::Connect`],
    /// [`Error::Timeout`] or [`Error::Transport`] when the exchange itself fails, and,
    /// with nothing sent, [`Error::Config`] for a URL that does not parse or
    /// [`Error::InsecureTransport`] for plain http to a host that is not loopback. The
    /// token's lifetime counts from when the request was sent.
    pub async fn send(self) -> Result<AccessToken> {
        self.send_response().await.map(TokenResponse::into_token)
    }

    /// [`send`](Self::send), returning the whole answer: the token and, where the server
    /// sent them, a `refresh_token`, an `issued_token_type` (RFC 8693) and the granted
    /// `scope`.
    pub async fn send_response(mut self) -> Result<TokenResponse> {
        ensure_io()?;
        let endpoint = self.endpoint;
        let target = endpoint.target().await?;
        let url = reqwest::Url::parse(&target)
            .map_err(|e| Error::Config(format!("token URL {target:?} is invalid: {e}")))?;
        check_transport(
            Some(url.scheme()),
            url.host_str(),
            endpoint.allow_http,
            self.sending,
            self.allow_with,
        )?;
        let client = endpoint.client(&url)?;
        let form = SecretString::from(std::mem::take(&mut self.form));
        let dpop = endpoint.dpop.as_deref();
        // With DPoP, a 400 `use_dpop_nonce` is answered once more with the server's nonce.
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Assertions are signed for each attempt, and only once the request can go: a
            // KMS is not asked for a refused request, and a retry carries a fresh `jti`.
            let mut body = form.expose_secret().to_owned();
            if let Some((name, mint)) = &self.minted {
                let assertion = mint().await?;
                append_param(&mut body, name, assertion.expose_secret());
                self.scrubber =
                    std::mem::take(&mut self.scrubber).secret(assertion.expose_secret());
            }
            if let Some((client_id, signer)) = self.client_assertion {
                let audience = endpoint.assertion_audience.as_deref().unwrap_or(&target);
                let jws = Jws::new(signing::ASSERTION_LIFETIME)?
                    .claim("iss", client_id)
                    .claim("sub", client_id)
                    .claim("aud", audience);
                let assertion = signing::mint(signer, jws, endpoint.timeout).await?;
                append_param(&mut body, "client_id", client_id);
                append_param(&mut body, "client_assertion_type", CLIENT_ASSERTION_TYPE);
                append_param(&mut body, "client_assertion", assertion.expose_secret());
                self.scrubber =
                    std::mem::take(&mut self.scrubber).secret(assertion.expose_secret());
            }
            let body = SecretString::from(body);
            // A body that cannot be cloned: no client resends it to a 307/308's target.
            let stream = reqwest::Body::wrap(http_body_util::Full::new(Bytes::from(
                body.expose_secret().to_owned(),
            )));
            let mut request = client
                .post(url.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(ACCEPT, "application/json")
                .timeout(endpoint.timeout)
                .body(stream);
            if let Some(basic) = &self.basic {
                let mut value = HeaderValue::try_from(basic.expose_secret())
                    .map_err(|_| Error::Config("the client credentials cannot be sent".into()))?;
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
            if let Some(dpop) = dpop {
                let nonce = dpop.nonce();
                let proof = dpop.key.proof("POST", &target, None, nonce.as_deref())?;
                request = request.header(crate::dpop::HEADER, proof);
            }
            let sent_at = Instant::now();
            let response = request
                .send()
                .await
                .map_err(|e| endpoint.transport_error(&e))?;
            if !same_origin(response.url(), &url) {
                // A client that follows redirects took a 301/302/303 (without the body).
                return Err(Error::Redirect {
                    location: Some(origin_of(response.url())),
                });
            }
            let status = response.status().as_u16();
            if response.status().is_redirection() {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                    .map(|l| origin_of(&l));
                return Err(Error::Redirect { location });
            }
            let new_nonce = dpop.and_then(|dpop| dpop.update_nonce(response.headers()));
            let retry_after = retry_after(response.headers());
            let body = match read_capped(response, MAX_RESPONSE_BYTES).await {
                Ok(body) => body,
                // An error status with a huge body (a proxy's HTML page) is still that
                // status: judge it without the body, so a 503 stays transient and keeps its
                // Retry-After.
                Err(ReadError::TooLarge) if !(200..300).contains(&status) => Vec::new(),
                Err(ReadError::TooLarge) => {
                    return Err(Error::ResponseTooLarge {
                        limit: MAX_RESPONSE_BYTES,
                    });
                }
                Err(ReadError::Http(e)) => return Err(endpoint.transport_error(&e)),
            };
            let result = parse_full(
                status,
                retry_after,
                &body,
                sent_at,
                &self.scrubber,
                Accept {
                    not_applicable: self.not_applicable,
                    dpop,
                },
            );
            match result {
                Err(error)
                    if attempt == 1
                        && new_nonce.is_some()
                        && error.oauth_error() == Some("use_dpop_nonce") =>
                {
                    tracing::debug!(
                        "the token endpoint wants a DPoP nonce: sending the request again with it"
                    );
                }
                result => return result,
            }
        }
    }

    /// Accepts `token_type` `N_A` (RFC 8693 §2.2.1: the issued token is not an access
    /// token, e.g. an ID token from a token exchange); it is sent as a bearer token.
    pub(crate) fn accept_not_applicable(mut self) -> Self {
        self.not_applicable = true;
        self
    }
}

/// Appends `name=value`, both form-urlencoded, to the form `form`.
fn append_param(form: &mut String, name: &str, value: &str) {
    if !form.is_empty() {
        form.push('&');
    }
    form.extend(form_urlencoded::byte_serialize(name.as_bytes()));
    form.push('=');
    form.extend(form_urlencoded::byte_serialize(value.as_bytes()));
}

/// A token endpoint's whole answer: from [`TokenRequest::send_response`].
pub struct TokenResponse {
    token: AccessToken,
    refresh_token: Option<SecretString>,
    scope: Option<String>,
}

impl TokenResponse {
    /// The access token (with its `issued_token_type`, if the server sent one).
    pub fn token(&self) -> &AccessToken {
        &self.token
    }

    /// The access token, without the rest.
    pub fn into_token(self) -> AccessToken {
        self.token
    }

    /// The `refresh_token` the server sent, if any: a secret.
    pub fn refresh_token(&self) -> Option<&SecretString> {
        self.refresh_token.as_ref()
    }

    /// The `scope` the server granted, if it said (RFC 6749 §5.1).
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token", &self.token)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("scope", &self.scope)
            .finish()
    }
}

impl fmt::Debug for TokenRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("endpoint", self.endpoint)
            .finish_non_exhaustive()
    }
}

/// `e` and its causes, e.g. "error sending request: connection refused". reqwest errors name
/// the URL, which holds no secret, and never the body.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The built-in clients, for https and for plain http (which never goes through a proxy),
/// each built once per process: building one loads the TLS roots. Without connection
/// reuse, one client serves every runtime.
fn built_in_client(plain_http: bool) -> Result<&'static reqwest::Client> {
    static CLIENTS: [OnceLock<std::result::Result<reqwest::Client, String>>; 2] =
        [OnceLock::new(), OnceLock::new()];
    CLIENTS[usize::from(plain_http)]
        .get_or_init(|| {
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(0)
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(USER_AGENT);
            if plain_http {
                builder = builder.no_proxy();
            }
            builder.build().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))
}

/// A failed [`TokenEndpoint::get_json`]: what to say, whether to try again, the status.
pub(crate) struct GetError {
    pub(crate) problem: String,
    pub(crate) transient: bool,
    pub(crate) status: Option<u16>,
}

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> std::result::Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Http)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After` (RFC 9110 §10.2.3) as delay-seconds or an HTTP-date. A date is measured
/// against the response's `Date` when it has one, so a server whose clock is off still gets
/// the delay it meant.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    parse_retry_after(
        text(RETRY_AFTER)?,
        text(DATE).and_then(|d| httpdate::parse_http_date(d).ok()),
    )
}

/// Parses a `Retry-After` value; an HTTP-date counts from `server_now` (the response's
/// `Date`), else from our clock.
pub(crate) fn parse_retry_after(value: &str, server_now: Option<SystemTime>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    let now = server_now.unwrap_or_else(SystemTime::now);
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Turns a token endpoint's answer into a token or a precise error (RFC 6749 §5.1, §5.2);
/// text from the server goes through `scrubber`. `sent_at` is when the request went out: the
/// token's lifetime counts from then.
pub(crate) fn parse_response(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    sent_at: Instant,
    scrubber: &Scrubber,
) -> Result<AccessToken> {
    parse_full(
        status,
        retry_after,
        body,
        sent_at,
        scrubber,
        Accept {
            not_applicable: false,
            dpop: None,
        },
    )
    .map(TokenResponse::into_token)
}

/// Which `token_type`s a token request accepts besides `Bearer`.
struct Accept<'a> {
    /// `N_A` (a token exchange).
    not_applicable: bool,
    /// `DPoP`, for a request that sent a proof; then `Bearer` only if allowed.
    dpop: Option<&'a Dpop>,
}

/// [`parse_response`] keeping the whole answer, accepting the token types of `accept`.
fn parse_full(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    sent_at: Instant,
    scrubber: &Scrubber,
    accept: Accept<'_>,
) -> Result<TokenResponse> {
    let success = (200..300).contains(&status);
    let json = serde_json::from_slice::<Value>(body);
    let object = match &json {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    };
    // §5.2: an `error` member means failure, whatever the status (some servers send 200).
    if let Some(Value::String(error)) = object.and_then(|o| o.get("error")) {
        let text = |name: &str| match object.and_then(|o| o.get(name)) {
            Some(Value::String(s)) => Some(scrubber.text(s)),
            _ => None,
        };
        return Err(Error::OAuth {
            status,
            error: scrubber.text(error),
            description: text("error_description"),
            uri: text("error_uri"),
            retry_after,
        });
    }
    if !success {
        return Err(Error::HttpStatus {
            status,
            retry_after,
        });
    }
    let object = match (&json, object) {
        (_, Some(object)) => object,
        (Ok(_), None) => return Err(Error::InvalidJson("expected an object".into())),
        // serde_json's syntax errors give a line and column, never the input.
        (Err(e), None) => return Err(Error::InvalidJson(e.to_string())),
    };
    let invalid = |field, reason: &str| Error::InvalidField {
        field,
        reason: reason.into(),
    };
    let access_token = match object.get("access_token") {
        Some(Value::String(s)) if s.is_empty() => {
            return Err(invalid("access_token", "it is empty"));
        }
        Some(Value::String(s)) if !is_b64token(s) => {
            return Err(invalid(
                "access_token",
                "it is not an RFC 6750 b64token (letters, digits, -._~+/ and trailing =; \
                 no spaces or other characters)",
            ));
        }
        Some(Value::String(s)) => s,
        Some(_) => return Err(invalid("access_token", "it is not a string")),
        None => return Err(Error::MissingField("access_token")),
    };
    let mut bound = None;
    match object.get("token_type") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {
            if let Some(dpop) = accept.dpop
                && !dpop.allow_bearer
            {
                return Err(Error::DpopNotBound);
            }
        }
        Some(Value::String(t)) if t.eq_ignore_ascii_case("dpop") && accept.dpop.is_some() => {
            bound = accept.dpop.map(|dpop| dpop.key.clone());
        }
        Some(Value::String(t)) if accept.not_applicable && t == "N_A" => {}
        Some(Value::String(t)) => return Err(Error::UnsupportedTokenType(scrubber.text(t))),
        Some(_) => return Err(invalid("token_type", "it is not a string")),
        None => return Err(Error::MissingField("token_type")),
    }
    let expires_in = parse_expires_in(object.get("expires_in"))?;
    let text = |field: &'static str| match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(invalid(field, "it is empty")),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(invalid(field, "it is not a string")),
    };
    let refresh_token = text("refresh_token")?.map(|s| SecretString::from(s.to_owned()));
    let issued_token_type = text("issued_token_type")?;
    let scope = text("scope")?.map(|s| scrubber.text(s));
    let mut token = AccessToken::issued_at(access_token.as_str(), sent_at, expires_in)
        .map_err(|_| invalid("access_token", "it cannot be sent in an HTTP header"))?;
    if let Some(kind) = issued_token_type {
        token = token.with_issued_token_type(scrubber.text(kind));
    }
    if let Some(key) = bound {
        token = token.with_dpop(key);
    }
    Ok(TokenResponse {
        token,
        refresh_token,
        scope,
    })
}

/// [`parse_response`] without secrets to scrub, for the property tests.
#[doc(hidden)]
pub fn parse_token_response(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    sent_at: Instant,
) -> Result<AccessToken> {
    parse_response(status, retry_after, body, sent_at, &Scrubber::default())
}

/// `expires_in`: a positive number of seconds (a numeric string is accepted, as some servers
/// send one); missing means [`DEFAULT_EXPIRES_IN`]; more than [`MAX_EXPIRES_IN`] is capped.
fn parse_expires_in(value: Option<&Value>) -> Result<Duration> {
    let invalid = |reason: String| Error::InvalidField {
        field: "expires_in",
        reason,
    };
    let seconds = match value {
        None | Some(Value::Null) => return Ok(DEFAULT_EXPIRES_IN),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    }
    .filter(|s| s.is_finite())
    .ok_or_else(|| invalid("it is not a number of seconds".into()))?;
    if seconds < 1.0 {
        return Err(invalid(format!(
            "the token expires on arrival ({seconds} s)"
        )));
    }
    let capped = seconds.min(MAX_EXPIRES_IN.as_secs_f64());
    if capped < seconds {
        tracing::warn!(
            expires_in = seconds,
            cap = MAX_EXPIRES_IN.as_secs(),
            "token endpoint claims an implausibly long lifetime; capping it"
        );
    }
    Ok(Duration::from_secs(capped as u64))
}

/// Fails with [`Error::IoDisabled`] on a Tokio runtime without the I/O driver, where reqwest
/// would panic on its first socket. Registering a loopback UDP socket is the one way to ask
/// (tokio panics without the driver; the panic is caught, unprinted). It costs a socket and
/// four system calls, tens of microseconds on the way of a cold start's first request, so
/// it runs once per runtime. Outside a runtime, or if no socket can be had, nothing is
/// decided here.
fn ensure_io() -> Result<()> {
    static PASSED: Passed = Passed::new();
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Ok(());
    };
    if PASSED.on(runtime.id()) {
        return Ok(());
    }
    let Ok(socket) = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)) else {
        return Ok(());
    };
    if socket.set_nonblocking(true).is_err() {
        return Ok(());
    }
    match crate::quiet_panic::catch_quietly(|| tokio::net::UdpSocket::from_std(socket)) {
        Some(_) => {
            PASSED.set(runtime.id());
            Ok(())
        }
        None => Err(Error::IoDisabled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The I/O probe's memory is per runtime: a runtime that passed does not vouch for one
    /// built without the driver, before or after it.
    #[test]
    fn the_io_probe_passes_per_runtime() {
        let with_io = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let without_io = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        for _ in 0..2 {
            assert!(with_io.block_on(async { ensure_io() }).is_ok());
            assert!(matches!(
                without_io.block_on(async { ensure_io() }),
                Err(Error::IoDisabled)
            ));
        }
    }

    fn parse(status: u16, body: &str) -> Result<AccessToken> {
        parse_token_response(status, None, body.as_bytes(), Instant::now())
    }

    #[test]
    fn parses_a_dt_response() {
        let t = parse(
            200,
            r#"{"access_token":"tok","token_type":"bearer","expires_in":3600}"#,
        )
        .unwrap();
        assert_eq!(t.expose_secret(), "tok");
        assert_eq!(t.lifetime(), Duration::from_secs(3600));
    }

    #[test]
    fn token_type_is_case_insensitive() {
        assert!(parse(200, r#"{"access_token":"t","token_type":"BeArEr"}"#).is_ok());
        assert!(matches!(
            parse(200, r#"{"access_token":"t","token_type":"mac"}"#),
            Err(Error::UnsupportedTokenType(t)) if t == "mac"
        ));
    }

    #[test]
    fn access_tokens_must_be_b64tokens() {
        for bad in ["Bearer abc", " abc", "abc ", "a\tb", "tökén"] {
            let body = serde_json::json!({"access_token": bad, "token_type": "bearer"});
            assert!(
                matches!(
                    parse(200, &body.to_string()),
                    Err(Error::InvalidField {
                        field: "access_token",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn expires_in_edge_cases() {
        let with = |v: &str| {
            parse(
                200,
                &format!(r#"{{"access_token":"t","token_type":"Bearer","expires_in":{v}}}"#),
            )
        };
        assert_eq!(with("null").unwrap().lifetime(), DEFAULT_EXPIRES_IN);
        assert_eq!(
            with("\"120\"").unwrap().lifetime(),
            Duration::from_secs(120)
        );
        assert_eq!(with("315360000").unwrap().lifetime(), MAX_EXPIRES_IN);
        for bad in ["0", "-5", "\"soon\"", "true"] {
            assert!(
                matches!(
                    with(bad),
                    Err(Error::InvalidField {
                        field: "expires_in",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn oauth_error_with_status_200() {
        let e = parse(
            200,
            r#"{"error":"invalid_grant","error_description":"bad"}"#,
        )
        .unwrap_err();
        assert_eq!(e.oauth_error(), Some("invalid_grant"));
        assert!(e.to_string().contains("bad"));
    }

    #[test]
    fn echoed_secrets_are_scrubbed() {
        let scrubber = Scrubber::default().secret("eyJhbGc.eyJpc3M.c2lnbmF0dXJl");
        let body = r#"{"error":"invalid_grant eyJhbGc.eyJpc3M.c2lnbmF0dXJl",
                       "error_description":"signature c2lnbmF0dXJl is wrong"}"#;
        let e = parse_response(400, None, body.as_bytes(), Instant::now(), &scrubber).unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains("c2lnbmF0dXJl"), "{text}");
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7", None), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(30);
        let date = httpdate::fmt_http_date(later);
        let d = parse_retry_after(&date, None).unwrap();
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(28),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon", None), None);
        // A server an hour ahead asking for 2 s means 2 s.
        let server_now = SystemTime::now() + Duration::from_secs(3600);
        let date = httpdate::fmt_http_date(server_now + Duration::from_secs(2));
        let d = parse_retry_after(&date, Some(server_now)).unwrap();
        assert!(
            d <= Duration::from_secs(2) && d >= Duration::from_secs(1),
            "{d:?}"
        );
    }
}
