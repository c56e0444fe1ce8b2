//! The RFC 6749 §4.4 client-credentials grant.

use std::fmt;
use std::time::Duration;

use super::client::{ClientAuth, OAuthClient};
use crate::error::Result;
use crate::exchange::TokenEndpoint;
use crate::source::TokenSource;
use crate::store::KeyBuilder;
use crate::token::AccessToken;

/// What [`Error::InsecureTransport`] says would be sent, and how to allow it.
const SENDING: &str = "the client secret";
const ALLOW_WITH: &str = "`ClientCredentials::allow_http(true)`";

/// A [`TokenSource`] for the RFC 6749 §4.4 client-credentials grant: a client id and secret
/// exchanged for an access token at a [`TokenEndpoint`].
///
/// The form is `grant_type=client_credentials`, plus `scope` (space-joined, each scope once),
/// `audience` and any other parameter set here. The client authenticates with its secret —
/// HTTP Basic, or `client_id` and `client_secret` in the form — or with a key
/// ([`with_key`](Self::with_key)); see [`ClientAuth`]. Unless
/// [`client_auth`](Self::client_auth) fixes the method, a
/// [discovered](TokenEndpoint::discover) endpoint's metadata picks it (`client_secret_basic`
/// unless the server lists only `client_secret_post`; `private_key_jwt` for a key; see
/// [`OAuthClient`]); at a token URL a secret goes with HTTP Basic.
/// The secret is a [`secrecy`] secret: redacted in `Debug` and scrubbed from anything the
/// server sends back. An empty client id or secret fails before anything is sent
/// ([`Error::EmptyCredential`](crate::Error::EmptyCredential)). `invalid_client` and `invalid_scope` are permanent errors
/// that fail at once with the server's text; 5xx, 429 and timeouts are retried by the
/// [`TokenProvider`](crate::TokenProvider). Everything about the request itself (its own
/// client without redirects, timeouts, the response parsing, scrubbing) is the
/// [`TokenEndpoint`]'s. Constructing a `ClientCredentials` does no I/O.
///
/// # Example
///
/// Against the emulator (the `token-refresh-emulator` crate, a dev-dependency), offline;
/// with a real server, pass its token URL and your client's credentials:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_refresh_emulator::Emulator;
/// use token_refresh::{ClientAuth, ClientCredentials, TokenProvider};
///
/// let emulator = Emulator::start().await?;
/// let source = ClientCredentials::new(
///     emulator.token_url(),
///     emulator.client_id(),
///     emulator.client_secret(),
/// )
/// .scope("read:devices write:devices")
/// .audience("https://api.example.com")
/// .client_auth(ClientAuth::Basic); // the default at a token URL; `ClientAuth::Post`: in the form
/// let provider = TokenProvider::new(source); // nothing is fetched until the first token()
///
/// let token = provider.token().await?;
/// assert!(!token.expose_secret().is_empty());
/// assert_eq!(emulator.stats().token_successes, 1);
/// # Ok(()) }
/// ```
///
/// The emulator's `client_credentials()` builds the same source in one call.
#[derive(Clone)]
pub struct ClientCredentials {
    endpoint: TokenEndpoint,
    client: OAuthClient,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
}

impl ClientCredentials {
    /// The `grant_type` of RFC 6749 §4.4.2.
    pub const GRANT_TYPE: &'static str = "client_credentials";

    /// The client `client_id` with `client_secret`, at the token endpoint `token_url` (a URL,
    /// or a [`TokenEndpoint`], e.g. [`TokenEndpoint::discover`], whose metadata then picks
    /// between HTTP Basic and form parameters). Does no I/O. An empty (or whitespace-only) client id or an empty secret is reported at the
    /// first token request, before anything is sent ([`Error::EmptyCredential`](crate::Error::EmptyCredential) naming
    /// `client_id` or `client_secret`).
    pub fn new(
        token_url: impl Into<TokenEndpoint>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: token_url.into(),
            client: OAuthClient::new(client_id, client_secret),
            scopes: Vec::new(),
            params: Vec::new(),
        }
    }

    /// The grant for `client` (as a [`RefreshToken`](crate::RefreshToken) or a
    /// [`TokenExchange`](crate::TokenExchange) names it) at `endpoint`. Does no I/O.
    pub(crate) fn from_client(endpoint: TokenEndpoint, client: OAuthClient) -> Self {
        Self {
            endpoint,
            client,
            scopes: Vec::new(),
            params: Vec::new(),
        }
    }

    /// The client `client_id` at `token_url`, authenticating with `auth`: for
    /// [`ClientAuth::PrivateKeyJwt`] and [`ClientAuth::ClientSecretJwt`], which need no
    /// separate secret. With [`ClientAuth::Basic`] or [`ClientAuth::Post`] the secret is
    /// empty, which the first token request reports. Does no I/O.
    pub fn with_client_auth(
        token_url: impl Into<TokenEndpoint>,
        client_id: impl Into<String>,
        auth: ClientAuth,
    ) -> Self {
        Self::new(token_url, client_id, String::new()).client_auth(auth)
    }

    /// The client `client_id` at `token_url`, authenticating with `key` by a signed client
    /// assertion, the method left to a [discovered](TokenEndpoint::discover) endpoint's
    /// metadata: `private_key_jwt` (`client_secret_jwt` for an HMAC key) if the server lists
    /// it and the key's algorithm, else the first token request fails before anything is
    /// sent with [`Error::ClientAuthUnsupported`](crate::Error::ClientAuthUnsupported)
    /// naming what the server lists. See [`OAuthClient::with_key`]. Does no I/O.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use token_refresh_emulator::Emulator;
    /// use token_refresh::{ClientCredentials, SigningKey, TokenEndpoint, TokenProvider};
    ///
    /// let emulator = Emulator::start().await?;
    /// let key = SigningKey::from_pem(
    ///     "-----BEGIN PRIVATE KEY-----
    /// MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC
    /// -----END PRIVATE KEY-----",
    /// )?
    /// .with_key_id("client-key-1")?;
    /// emulator.register_key(emulator.client_id(), &key.public_jwk().unwrap())?;
    ///
    /// let source = ClientCredentials::with_key(
    ///     TokenEndpoint::discover(emulator.issuer()),
    ///     emulator.client_id(),
    ///     key,
    /// )
    /// .resource("https://api.example.com/");
    /// assert!(!TokenProvider::new(source).token().await?.expose_secret().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn with_key(
        token_url: impl Into<TokenEndpoint>,
        client_id: impl Into<String>,
        key: impl crate::signing::Signer,
    ) -> Self {
        Self {
            endpoint: token_url.into(),
            client: OAuthClient::with_key(client_id, key),
            scopes: Vec::new(),
            params: Vec::new(),
        }
    }

    /// Sets the `aud` of client assertions, for servers that want their issuer identifier
    /// there. Default: the token URL.
    pub fn assertion_audience(mut self, audience: impl Into<String>) -> Self {
        self.endpoint = self.endpoint.client_assertion_audience(audience);
        self
    }

    /// How the client authenticates, used as given whatever a discovered endpoint's metadata
    /// lists. Default: chosen from a [discovered](TokenEndpoint::discover) endpoint's
    /// metadata (see [`OAuthClient`]); at a token URL, [`ClientAuth::Basic`] for
    /// [`new`](Self::new) and the key's assertion for [`with_key`](Self::with_key).
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.client = self.client.client_auth(auth);
        self
    }

    /// Asks for `scope` (RFC 6749 §3.3): one scope, or several separated by spaces; call it
    /// again to add more. They are sent space-joined as the `scope` parameter. Default: no
    /// `scope` parameter (the server's default scopes).
    pub fn scope(mut self, scope: impl AsRef<str>) -> Self {
        super::add_scopes(&mut self.scopes, scope.as_ref());
        self
    }

    /// Sends `audience` (Auth0, Okta and others name the API a token is for this way).
    /// Default: none.
    pub fn audience(self, audience: impl Into<String>) -> Self {
        self.param("audience", audience)
    }

    /// Names a resource the token is for (RFC 8707 `resource`: an absolute URI, e.g. the
    /// API's base URL); repeat for more. Servers that support resource indicators put it in
    /// the token's audience. Default: none.
    pub fn resource(self, resource: impl Into<String>) -> Self {
        self.param("resource", resource)
    }

    /// Sends another form parameter some servers want (a tenant, …); repeat for more. Not
    /// for secrets: it is not scrubbed from errors. Default: none.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Asks for DPoP-bound tokens: every token request carries a proof signed with `key`;
    /// see [`TokenEndpoint::dpop`]. Default: bearer tokens.
    pub fn dpop(mut self, key: crate::dpop::DpopKey) -> Self {
        self.endpoint = self.endpoint.dpop(key);
        self
    }

    /// Allows a plain `http://` token URL on a host that is not loopback; the client secret
    /// would cross the network in clear text. Default: `false`.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.endpoint = self.endpoint.allow_http(allow);
        self
    }

    /// Sets the timeout of one token request, connect to last byte. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`](crate::defaults::DEFAULT_REQUEST_TIMEOUT) (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.timeout(timeout);
        self
    }

    /// Uses `client` for token requests instead of the built-in one; see
    /// [`TokenEndpoint::http_client`]. Default: a plain client without redirects, built on
    /// first use.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.endpoint = self.endpoint.http_client(client);
        self
    }

    /// The token URL requests go to.
    pub fn url(&self) -> &str {
        self.endpoint.url()
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        self.client.id()
    }
}

#[async_trait::async_trait]
impl TokenSource for ClientCredentials {
    /// `client-credentials-{hash}`: a hash of the token URL, the client id, the scopes and
    /// extra parameters (audience included), and the secret, so rotating the secret changes
    /// the key.
    fn store_key(&self) -> Option<String> {
        let key = self
            .endpoint
            .key_parts(KeyBuilder::new("client-credentials"));
        let mut key = self.client.key_parts(key).part(self.scopes.join(" "));
        for (name, value) in &self.params {
            key = key.part(name).part(value);
        }
        Some(key.finish())
    }

    /// The token endpoint's host and the client id.
    fn name(&self) -> Option<String> {
        Some(self.endpoint.name_for(self.client.id()))
    }

    fn dpop_key(&self) -> Option<crate::dpop::DpopKey> {
        self.endpoint.dpop_key().cloned()
    }

    /// This grant asking for `params`' scopes, audience and resources instead of its own.
    async fn fetch_token_for(&self, params: &crate::TokenParams) -> Result<AccessToken> {
        self.with_params(params).fetch_token().await
    }

    fn store_key_for(&self, params: &crate::TokenParams) -> Option<String> {
        self.with_params(params).store_key()
    }

    async fn fetch_token(&self) -> Result<AccessToken> {
        self.client.check()?;
        let scope = self.scopes.join(" ");
        let request = self
            .endpoint
            .request()
            .describe(SENDING, ALLOW_WITH)
            .param("grant_type", Self::GRANT_TYPE);
        let mut request = self.client.authenticate(request);
        if !scope.is_empty() {
            request = request.param("scope", &scope);
        }
        for (name, value) in &self.params {
            request = request.param(name, value);
        }
        request.send().await
    }
}

impl ClientCredentials {
    fn with_params(&self, params: &crate::TokenParams) -> Self {
        let mut this = self.clone();
        super::apply_params(params, &mut this.scopes, &mut this.params);
        this
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("endpoint", &self.endpoint)
            .field("client", &self.client)
            .field("scopes", &self.scopes)
            .field("params", &self.params)
            .finish()
    }
}
