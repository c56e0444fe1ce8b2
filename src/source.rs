//! Where tokens come from.

use std::future::Future;

use crate::error::{Error, Result};
use crate::params::TokenParams;
use crate::store::KeyBuilder;
use crate::token::AccessToken;

/// Fetches a fresh access token. [`TokenProvider`](crate::TokenProvider) calls it when its
/// cached token needs replacing, at most one call at a time.
///
/// [`JwtBearer`](crate::JwtBearer) is the built-in source. Any other grant plugs in by
/// implementing this trait, or as an async closure:
///
/// ```
/// use std::time::Duration;
/// use token_refresh::{AccessToken, TokenProvider};
///
/// let provider = TokenProvider::new(|| async {
///     AccessToken::new("token-from-elsewhere", Duration::from_secs(3600))
/// });
/// # drop(provider);
/// ```
///
/// Report failures as [`Error`](crate::Error)s; wrap your own errors with
/// [`Error::source`](crate::Error::source) or [`Error::transient`](crate::Error::transient)
/// so the provider knows whether retrying can help. Set the token's lifetime from when the
/// request was sent ([`AccessToken::issued_at`]).
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches a new token, ignoring any cached one.
    async fn fetch_token(&self) -> Result<AccessToken>;

    /// Fetches a token for `params` — scopes, an audience, resources that replace the
    /// source's own — for a [keyed provider](crate::KeyedTokenProvider), which calls it once
    /// per key and refresh. The built-in grants send them in their token request, and the
    /// cloud sources map them to what their endpoint takes; the default fetches the source's
    /// own token for empty `params` and refuses any other with [`Error::Config`].
    async fn fetch_token_for(&self, params: &TokenParams) -> Result<AccessToken> {
        if params.is_empty() {
            return self.fetch_token().await;
        }
        Err(Error::Config(format!(
            "this token source cannot ask for {params:?}: a keyed provider needs a grant that \
             sends scopes, an audience and resources (the built-in grants do), or a \
             TokenSource that implements fetch_token_for"
        )))
    }

    /// The store key of the tokens [`fetch_token_for`](Self::fetch_token_for) gets for
    /// `params`: by default [`store_key`](Self::store_key) with `params` hashed in (and
    /// the store key itself for empty `params`).
    fn store_key_for(&self, params: &TokenParams) -> Option<String> {
        let key = self.store_key()?;
        if params.is_empty() {
            return Some(key);
        }
        let mut builder = KeyBuilder::new("params").part(&key);
        for scope in params.scopes() {
            builder = builder.part("scope").part(scope);
        }
        builder = builder.optional(params.audience_value());
        for resource in params.resources() {
            builder = builder.part("resource").part(resource);
        }
        Some(builder.finish())
    }

    /// The key under which a [token store](crate::store) keeps this source's tokens: stable
    /// across processes and restarts, different for anything that changes the token (token
    /// URL, client, scope, audience, the secret), and never containing a secret. The
    /// built-in grants derive one; the default, `None`, makes a provider with a store ask
    /// for [`store_key`](crate::TokenProviderBuilder::store_key).
    fn store_key(&self) -> Option<String> {
        None
    }

    /// Called once, when a provider with a [token store](crate::store) is built, with that
    /// store as this source may use it: for a source that keeps state of its own
    /// fleet-wide, like [`RefreshToken`](crate::RefreshToken)'s rotating refresh token. The
    /// default ignores it.
    fn attach_store(&self, store: crate::store::SourceStore) {
        let _ = store;
    }

    /// A short name for logs and metrics, with no secret in it: the built-in grants give the
    /// token endpoint's host and who asks, e.g. `auth.example.com/my-client`. A provider
    /// built without [`name`](crate::TokenProviderBuilder::name) is named by it. Default:
    /// `None` (the provider is then named `default`).
    fn name(&self) -> Option<String> {
        None
    }

    /// The DPoP key this source's tokens are bound to, if it asks for DPoP-bound tokens: a
    /// provider with a store binds a stored DPoP token to it again (and ignores one bound
    /// to another key). The built-in grants give their endpoint's
    /// ([`TokenEndpoint::dpop`](crate::TokenEndpoint::dpop)). Default: `None`.
    fn dpop_key(&self) -> Option<crate::dpop::DpopKey> {
        None
    }
}

#[async_trait::async_trait]
impl<F, Fut> TokenSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<AccessToken>> + Send + 'static,
{
    async fn fetch_token(&self) -> Result<AccessToken> {
        self().await
    }
}
