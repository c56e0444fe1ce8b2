//! [`OAuthClient`]: who a grant's token request comes from, and how it proves it.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use super::client_credentials::ClientAuth;
use crate::error::{Error, Result};
use crate::exchange::TokenRequest;
use crate::store::KeyBuilder;

/// An OAuth2 client as a token request names it (RFC 6749 §2.3): its id and how it
/// authenticates — a secret (HTTP Basic or form parameters), a signed assertion
/// (`private_key_jwt`, `client_secret_jwt`), or nothing for a public client (a CLI, a
/// native app), which only names itself with `client_id`.
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
}

impl OAuthClient {
    /// A confidential client with `secret`, sent with HTTP Basic ([`ClientAuth::Basic`]; see
    /// [`client_auth`](Self::client_auth)). An empty id or secret fails the first token
    /// request before anything is sent ([`Error::EmptyCredential`]).
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            secret: Some(SecretString::from(secret.into())),
            auth: ClientAuth::Basic,
        }
    }

    /// A public client: `client_id` in the form, no secret (RFC 6749 §2.1).
    pub fn public(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            secret: None,
            auth: ClientAuth::Post,
        }
    }

    /// A client that authenticates with `auth`: for [`ClientAuth::PrivateKeyJwt`] and
    /// [`ClientAuth::ClientSecretJwt`], which need no separate secret.
    pub fn with_auth(id: impl Into<String>, auth: ClientAuth) -> Self {
        Self {
            id: id.into(),
            secret: Some(SecretString::from(String::new())),
            auth,
        }
    }

    /// How the client authenticates. Default: [`ClientAuth::Basic`] for
    /// [`new`](Self::new), the `client_id` parameter alone for [`public`](Self::public).
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
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
            .finish()
    }
}
