//! [`OAuthClient`]: who a grant's token request comes from, and how it proves it.

use std::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Result};
use crate::exchange::{OpenCredential, TokenRequest};
use crate::signing::{Signer, SigningKey};
use crate::store::KeyBuilder;

/// How the client authenticates to the token endpoint: with its secret (RFC 6749 §2.3.1)
/// or with a signed assertion (RFC 7523 §2.2, OIDC Core §9).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum ClientAuth {
    /// HTTP Basic: `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`, what
    /// the RFC requires servers to support. The default.
    #[default]
    Basic,
    /// `client_id` and `client_secret` as form parameters, for servers that want them there.
    Post,
    /// `private_key_jwt`: an assertion signed with the client's private key (a
    /// [`SigningKey`] or a KMS [`Signer`]), as Entra, Okta, Auth0 and the MCP
    /// client-credentials profile want. No client secret is sent. Build it with
    /// [`ClientAuth::private_key_jwt`].
    PrivateKeyJwt(Arc<dyn Signer>),
    /// `client_secret_jwt`: an assertion signed HS256 with the client secret, which itself
    /// is never sent. Build it with [`ClientAuth::client_secret_jwt`].
    ClientSecretJwt(Arc<dyn Signer>),
}

impl ClientAuth {
    /// `private_key_jwt` with `signer`. See
    /// [`TokenRequest::client_assertion`](crate::TokenRequest::client_assertion) for the
    /// assertion's claims.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use token_refresh_emulator::Emulator;
    /// use token_refresh::{ClientAuth, ClientCredentials, SigningKey, TokenProvider};
    ///
    /// let emulator = Emulator::start().await?;
    /// let key = SigningKey::from_pem(
    ///     "-----BEGIN PRIVATE KEY-----
    /// MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC
    /// -----END PRIVATE KEY-----",
    /// )?
    /// .with_key_id("client-key-1")?;
    /// // The client registered its public key with the server: here, the emulator.
    /// emulator.register_key(emulator.client_id(), &key.public_jwk().unwrap())?;
    ///
    /// let source = ClientCredentials::with_client_auth(
    ///     emulator.token_url(),
    ///     emulator.client_id(),
    ///     ClientAuth::private_key_jwt(key),
    /// );
    /// let provider = TokenProvider::new(source);
    /// assert!(!provider.token().await?.expose_secret().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn private_key_jwt(signer: impl Signer) -> Self {
        Self::PrivateKeyJwt(Arc::new(signer))
    }

    /// `client_secret_jwt` with `client_secret`. An empty secret fails the first token
    /// request with [`Error::EmptyCredential`](crate::Error::EmptyCredential) naming `client_secret`, before anything is
    /// sent.
    pub fn client_secret_jwt(client_secret: impl AsRef<[u8]>) -> Self {
        match SigningKey::from_secret(client_secret) {
            Ok(key) => Self::ClientSecretJwt(Arc::new(key)),
            Err(_) => Self::ClientSecretJwt(Arc::new(EmptySecret)),
        }
    }
}

/// The signer of a `client_secret_jwt` whose secret is empty: fails at the first request,
/// as an empty secret does with the other methods.
#[derive(Debug)]
struct EmptySecret;

#[async_trait::async_trait]
impl Signer for EmptySecret {
    fn algorithm(&self) -> crate::SigningAlgorithm {
        crate::SigningAlgorithm::HS256
    }
    fn key_id(&self) -> Option<&str> {
        None
    }
    async fn sign(&self, _: &[u8]) -> Result<Vec<u8>> {
        Err(Error::EmptyCredential {
            field: "client_secret",
        })
    }
}

/// An OAuth2 client as a token request names it (RFC 6749 §2.3): its id and how it
/// authenticates — a secret (HTTP Basic or form parameters), a signed assertion
/// (`private_key_jwt`, `client_secret_jwt`), or nothing for a public client (a CLI, a
/// native app), which only names itself with `client_id`.
///
/// # Choosing the method from discovery
///
/// A client built with [`new`](Self::new) (a secret) or [`with_key`](Self::with_key) (a
/// key) leaves its method open. At a [discovered](crate::TokenEndpoint::discover) endpoint,
/// the server's metadata picks it at the first token request (RFC 8414
/// `token_endpoint_auth_methods_supported`, and
/// `token_endpoint_auth_signing_alg_values_supported` for a key):
///
/// - a secret: `client_secret_basic` if the server lists it, else `client_secret_post`;
/// - an asymmetric key: `private_key_jwt`, if the server lists it and, when it lists
///   algorithms, the key's; an HMAC key ([`SigningKey::from_secret`]): `client_secret_jwt`
///   likewise.
///
/// When none fits, the request fails before anything is sent with
/// [`Error::ClientAuthUnsupported`](crate::Error::ClientAuthUnsupported), naming what the
/// server lists. At an endpoint given as a URL there is no metadata: a secret goes with HTTP
/// Basic, a key signs an assertion. [`client_auth`](Self::client_auth) and
/// [`with_client_auth`](Self::with_client_auth) choose the method yourself; it is then used
/// as given.
///
/// Used by [`RefreshToken`](crate::RefreshToken) and
/// [`TokenExchange`](crate::TokenExchange). The secret is redacted in `Debug` and scrubbed
/// from the server's answers.
///
/// ```
/// use token_refresh::{ClientAuth, OAuthClient};
///
/// let confidential = OAuthClient::new("my-client", "my-secret"); // HTTP Basic
/// let in_the_form = OAuthClient::new("my-client", "my-secret").client_auth(ClientAuth::Post);
/// let public = OAuthClient::public("my-cli");
/// # drop((confidential, in_the_form, public));
/// ```
#[derive(Clone)]
pub struct OAuthClient {
    id: String,
    secret: Option<SecretString>,
    auth: ClientAuth,
    /// The method is left to the server's metadata: `auth` is the credential's default.
    open: bool,
}

impl OAuthClient {
    /// A confidential client with `secret`. The method is left open: at a
    /// [discovered](crate::TokenEndpoint::discover) endpoint, `client_secret_basic` unless
    /// the server lists only `client_secret_post` (see [above](Self#choosing-the-method-from-discovery));
    /// at a token URL, HTTP Basic ([`ClientAuth::Basic`]). [`client_auth`](Self::client_auth)
    /// fixes it. An empty id or secret fails the first token request before anything is
    /// sent ([`Error::EmptyCredential`](crate::Error::EmptyCredential)).
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            secret: Some(SecretString::from(secret.into())),
            auth: ClientAuth::Basic,
            open: true,
        }
    }

    /// A client that authenticates with `key`, signing client assertions (RFC 7523 §2.2):
    /// `private_key_jwt` for an asymmetric key (a [`SigningKey`] or a KMS [`Signer`]),
    /// `client_secret_jwt` for an HMAC key ([`SigningKey::from_secret`]). The method is
    /// left open: at a [discovered](crate::TokenEndpoint::discover) endpoint the server's
    /// metadata must list it, and the key's algorithm if it lists algorithms, else the first
    /// token request fails before anything is sent with
    /// [`Error::ClientAuthUnsupported`](crate::Error::ClientAuthUnsupported) (see
    /// [above](Self#choosing-the-method-from-discovery)); at a token URL the assertion is
    /// sent as is. No secret is sent either way.
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
    /// // The emulator's metadata lists private_key_jwt and EdDSA: that is what is sent.
    /// let endpoint = TokenEndpoint::discover(emulator.issuer());
    /// let source = ClientCredentials::with_key(endpoint, emulator.client_id(), key);
    /// assert!(!TokenProvider::new(source).token().await?.expose_secret().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn with_key(id: impl Into<String>, key: impl Signer) -> Self {
        let auth = if key.algorithm() == crate::SigningAlgorithm::HS256 {
            ClientAuth::ClientSecretJwt(Arc::new(key))
        } else {
            ClientAuth::PrivateKeyJwt(Arc::new(key))
        };
        Self {
            open: true,
            ..Self::with_client_auth(id, auth)
        }
    }

    /// A public client: `client_id` in the form, no secret (RFC 6749 §2.1).
    pub fn public(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            secret: None,
            auth: ClientAuth::Post,
            open: false,
        }
    }

    /// A client that authenticates with `auth`: for [`ClientAuth::PrivateKeyJwt`] and
    /// [`ClientAuth::ClientSecretJwt`], which need no separate secret. The same shape as
    /// [`ClientCredentials::with_client_auth`](crate::ClientCredentials::with_client_auth).
    pub fn with_client_auth(id: impl Into<String>, auth: ClientAuth) -> Self {
        Self {
            id: id.into(),
            secret: Some(SecretString::from(String::new())),
            auth,
            open: false,
        }
    }

    /// How the client authenticates, used as given whatever the server's metadata lists.
    /// Default: for [`new`](Self::new), chosen from a discovered endpoint's metadata, else
    /// [`ClientAuth::Basic`]; for [`with_key`](Self::with_key), likewise, else the key's
    /// assertion; the `client_id` parameter alone for [`public`](Self::public).
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
        self.open = false;
        self
    }

    /// The client id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Checks what can be checked before anything is sent: the id, and a secret where one is
    /// sent.
    pub(crate) fn check(&self) -> Result<()> {
        if self.id.trim().is_empty() {
            return Err(Error::EmptyCredential { field: "client_id" });
        }
        let sends_secret = matches!(self.auth, ClientAuth::Basic | ClientAuth::Post);
        if sends_secret
            && self
                .secret
                .as_ref()
                .is_some_and(|s| s.expose_secret().is_empty())
        {
            return Err(Error::EmptyCredential {
                field: "client_secret",
            });
        }
        Ok(())
    }

    /// Adds the client's authentication to `request`.
    pub(crate) fn authenticate<'a>(&'a self, request: TokenRequest<'a>) -> TokenRequest<'a> {
        let secret = self.secret.as_ref().map(ExposeSecret::expose_secret);
        match (&self.auth, secret) {
            (_, None) => request.param("client_id", &self.id),
            (ClientAuth::Basic | ClientAuth::Post, Some(secret)) if self.open => {
                request.open_client_auth(&self.id, OpenCredential::Secret(secret))
            }
            (ClientAuth::PrivateKeyJwt(signer) | ClientAuth::ClientSecretJwt(signer), _)
                if self.open =>
            {
                request.open_client_auth(&self.id, OpenCredential::Key(&**signer))
            }
            (ClientAuth::Basic, Some(secret)) => request.basic_auth(&self.id, secret),
            (ClientAuth::Post, Some(secret)) => request
                .param("client_id", &self.id)
                .secret_param("client_secret", secret),
            (ClientAuth::PrivateKeyJwt(signer) | ClientAuth::ClientSecretJwt(signer), _) => {
                request.client_assertion(&self.id, &**signer)
            }
        }
    }

    /// Adds what identifies the client to a store key: its id and, hashed, its secret or
    /// assertion key.
    pub(crate) fn key_parts(&self, key: KeyBuilder) -> KeyBuilder {
        let key = key.part(&self.id);
        match (&self.auth, &self.secret) {
            (ClientAuth::PrivateKeyJwt(signer) | ClientAuth::ClientSecretJwt(signer), _) => key
                .part("assertion")
                .part(signer.algorithm().name())
                .optional(signer.key_id()),
            (_, secret) => key.optional(secret.as_ref().map(ExposeSecret::expose_secret)),
        }
    }
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClient")
            .field("id", &self.id)
            .field("secret", &self.secret.as_ref().map(|_| "[REDACTED]"))
            .field("auth", &self.auth)
            .field("auth_from_metadata", &self.open)
            .finish()
    }
}
