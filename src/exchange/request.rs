//! [`TokenRequest`](crate::TokenRequest): one token request being built — its form, the client's
//! authentication, a grant's assertion signed per attempt — and sent, with DPoP's nonce
//! retry.

use std::fmt;
use std::pin::Pin;

use bytes::Bytes;
use http::HeaderValue;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};

use super::endpoint::TokenEndpoint;
use super::http::{Carrying, retry_after};
use super::response::{Accept, TokenResponse, parse_full};
use crate::error::{Error, Result, Scrubber};
use crate::metadata::{AuthMethod, Offer};
use crate::signing::{self, Jws, Signer};
use crate::token::AccessToken;

/// The `client_assertion_type` of RFC 7523 §2.2.
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Signs a grant's assertion for one attempt of a token request.
pub(crate) type MintAssertion<'a> = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<SecretString>> + Send + 'a>> + Send + Sync + 'a,
>;

/// A client credential whose authentication method the server's metadata picks, for a
/// client that left it open.
pub(crate) enum OpenCredential<'a> {
    /// A client secret: HTTP Basic or form parameters.
    Secret(&'a str),
    /// A key that signs client assertions (`private_key_jwt`, `client_secret_jwt`).
    Key(&'a dyn Signer),
}

impl OpenCredential<'_> {
    fn offer(&self) -> Offer {
        match self {
            Self::Secret(_) => Offer::Secret,
            Self::Key(signer) => Offer::Key(signer.algorithm()),
        }
    }
}

/// One token request being built; from [`TokenEndpoint::request`](crate::TokenEndpoint::request).
pub struct TokenRequest<'a> {
    endpoint: &'a TokenEndpoint,
    form: String,
    basic: Option<SecretString>,
    client_assertion: Option<(&'a str, &'a dyn Signer)>,
    /// A client whose authentication method is chosen at [`send`](Self::send), from the
    /// server's metadata if the endpoint was discovered.
    open_client: Option<(&'a str, OpenCredential<'a>)>,
    /// A secret parameter signed anew for each attempt (a grant's assertion).
    minted: Option<(&'static str, MintAssertion<'a>)>,
    scrubber: Scrubber,
    not_applicable: bool,
    carrying: Carrying,
}

impl TokenEndpoint {
    /// Starts a form POST to this endpoint.
    pub fn request(&self) -> TokenRequest<'_> {
        TokenRequest::new(self)
    }
}

impl<'a> TokenRequest<'a> {
    fn new(endpoint: &'a TokenEndpoint) -> Self {
        Self {
            endpoint,
            form: String::new(),
            basic: None,
            client_assertion: None,
            open_client: None,
            minted: None,
            scrubber: Scrubber::default(),
            not_applicable: false,
            carrying: Carrying {
                sending: "the token request's credentials",
                allow_with: "`TokenEndpoint::allow_http(true)`",
            },
        }
    }

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
    /// [`TokenEndpoint::client_assertion_audience`](crate::TokenEndpoint::client_assertion_audience)), `iat`, `exp` 180 s later and a fresh
    /// `jti`, so a server with replay checks accepts every retry; the form gets
    /// `client_id`, `client_assertion_type` and `client_assertion`.
    pub fn client_assertion(mut self, client_id: &'a str, signer: &'a dyn Signer) -> Self {
        self.client_assertion = Some((client_id, signer));
        self
    }

    /// Authenticates the client `client_id` with `credential` by the method the server's
    /// metadata lists (see `ServerMetadata::choose_client_auth`), chosen at send; for an
    /// endpoint given as a URL, HTTP Basic for a secret and an assertion for a key.
    pub(crate) fn open_client_auth(
        mut self,
        client_id: &'a str,
        credential: OpenCredential<'a>,
    ) -> Self {
        self.open_client = Some((client_id, credential));
        self
    }

    /// Applies the method the metadata (or, without it, the default) picks for an open
    /// client; nothing is sent if none fits.
    fn choose_client_auth(
        mut self,
        metadata: Option<&crate::metadata::ServerMetadata>,
    ) -> Result<Self> {
        let Some((client_id, credential)) = self.open_client.take() else {
            return Ok(self);
        };
        let offer = credential.offer();
        let method = match metadata {
            Some(metadata) => {
                let method = metadata.choose_client_auth(offer)?;
                tracing::debug!(
                    issuer = metadata.issuer(),
                    ?method,
                    "client authentication chosen from the server's metadata"
                );
                method
            }
            None => offer.default_method(),
        };
        // A secret is never offered as an assertion key, nor a key as a secret.
        Ok(match (method, credential) {
            (AuthMethod::Post, OpenCredential::Secret(secret)) => self
                .param("client_id", client_id)
                .secret_param("client_secret", secret),
            (_, OpenCredential::Secret(secret)) => self.basic_auth(client_id, secret),
            (_, OpenCredential::Key(signer)) => self.client_assertion(client_id, signer),
        })
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
    /// [`Error::InsecureTransport`](crate::Error::InsecureTransport).
    pub(crate) fn describe(mut self, sending: &'static str, allow_with: &'static str) -> Self {
        self.carrying = Carrying {
            sending,
            allow_with,
        };
        self
    }

    /// Sends the request and turns the answer into a token or a precise [`Error`](crate::Error), e.g.
    /// [`Error::OAuth`](crate::Error::OAuth) for an RFC 6749 §5.2 error body, [`Error::HttpStatus`](crate::Error::HttpStatus) for another
    /// error status, [`Error::Redirect`](crate::Error::Redirect) for a redirect, [`Error::Connect`](crate::Error::Connect),
    /// [`Error::Timeout`](crate::Error::Timeout) or [`Error::Transport`](crate::Error::Transport) when the exchange itself fails, and,
    /// with nothing sent, [`Error::Config`](crate::Error::Config) for a URL that does not parse or
    /// [`Error::InsecureTransport`](crate::Error::InsecureTransport) for plain http to a host that is not loopback. The
    /// token's lifetime counts from when the request was sent.
    pub async fn send(self) -> Result<AccessToken> {
        self.send_response().await.map(TokenResponse::into_token)
    }

    /// [`send`](Self::send), returning the whole answer: the token and, where the server
    /// sent them, a `refresh_token`, an `issued_token_type` (RFC 8693) and the granted
    /// `scope`.
    pub async fn send_response(mut self) -> Result<TokenResponse> {
        let endpoint = self.endpoint;
        let metadata = endpoint.discovered().await?;
        let target = match &metadata {
            Some(metadata) => metadata.token_endpoint().to_owned(),
            None => endpoint.url().to_owned(),
        };
        let url = reqwest::Url::parse(&target)
            .map_err(|e| Error::Config(format!("token URL {target:?} is invalid: {e}")))?;
        // Before anything is signed for a request that cannot go: a KMS is not asked.
        endpoint.http.check(&url, self.carrying)?;
        self = self.choose_client_auth(metadata.as_deref())?;
        let form = SecretString::from(std::mem::take(&mut self.form));
        let dpop = endpoint.dpop.as_deref();
        let basic = match &self.basic {
            None => None,
            Some(basic) => {
                let mut value = HeaderValue::try_from(basic.expose_secret())
                    .map_err(|_| Error::Config("the client credentials cannot be sent".into()))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        // With DPoP, a 400 `use_dpop_nonce` is answered once more with the server's nonce.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let body = self.body(&form, &target).await?;
            let proof = match dpop {
                Some(dpop) => {
                    let proof = dpop
                        .key
                        .proof("POST", &target, None, dpop.nonce().as_deref())?;
                    // A server that echoes the proof must not put it in an error message.
                    self.scrubber = std::mem::take(&mut self.scrubber).secret(&proof);
                    Some(proof)
                }
                None => None,
            };
            let mut fetched = endpoint
                .http
                .fetch(&url, self.carrying, |client| {
                    // A body that cannot be cloned: no client resends it to a 307/308's
                    // target.
                    let stream = reqwest::Body::wrap(http_body_util::Full::new(Bytes::from(
                        body.expose_secret().to_owned(),
                    )));
                    let mut request = client
                        .post(url.clone())
                        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .header(ACCEPT, "application/json")
                        .body(stream);
                    if let Some(basic) = basic.clone() {
                        request = request.header(AUTHORIZATION, basic);
                    }
                    if let Some(proof) = proof {
                        request = request.header(crate::dpop::HEADER, proof);
                    }
                    request
                })
                .await?;
            let status = fetched.status;
            let new_nonce = dpop.and_then(|dpop| dpop.update_nonce(&fetched.headers));
            let body = fetched.take_body()?;
            let result = parse_full(
                status,
                retry_after(&fetched.headers),
                &body,
                fetched.sent_at,
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

    /// The form of one attempt: the parameters, and the assertions signed for it. They are
    /// signed for each attempt, and only once the request can go: a KMS is not asked for a
    /// refused request, and a retry carries a fresh `jti`.
    async fn body(&mut self, form: &SecretString, target: &str) -> Result<SecretString> {
        let mut body = form.expose_secret().to_owned();
        if let Some((name, mint)) = &self.minted {
            let assertion = mint().await?;
            append_param(&mut body, name, assertion.expose_secret());
            self.scrubber = std::mem::take(&mut self.scrubber).secret(assertion.expose_secret());
        }
        if let Some((client_id, signer)) = self.client_assertion {
            let endpoint = self.endpoint;
            let audience = endpoint.assertion_audience.as_deref().unwrap_or(target);
            let jws = Jws::new(signing::ASSERTION_LIFETIME)?
                .claim("iss", client_id)
                .claim("sub", client_id)
                .claim("aud", audience);
            let assertion = signing::mint(signer, jws, endpoint.request_timeout()).await?;
            append_param(&mut body, "client_id", client_id);
            append_param(&mut body, "client_assertion_type", CLIENT_ASSERTION_TYPE);
            append_param(&mut body, "client_assertion", assertion.expose_secret());
            self.scrubber = std::mem::take(&mut self.scrubber).secret(assertion.expose_secret());
        }
        Ok(SecretString::from(body))
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

impl fmt::Debug for TokenRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("endpoint", self.endpoint)
            .finish_non_exhaustive()
    }
}
