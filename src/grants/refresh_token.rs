//! The RFC 6749 §6 refresh-token grant, with rotation that is safe across processes.

use std::fmt;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::client::OAuthClient;
use crate::defaults::DEFAULT_REFRESH_TOKEN_TTL;
use crate::error::{Error, Result};
use crate::exchange::TokenEndpoint;
use crate::source::TokenSource;
use crate::store::{KeyBuilder, SourceStore};
use crate::token::AccessToken;

/// What [`Error::InsecureTransport`] says would be sent, and how to allow it.
const SENDING: &str = "the refresh token";
const ALLOW_WITH: &str = "`TokenEndpoint::allow_http(true)`";

/// First wait for another process that holds the refresh token's lease, doubled up to
/// [`LEASE_POLL_MAX`]: a refresh takes tens of milliseconds at best.
const LEASE_POLL_MIN: Duration = Duration::from_millis(25);
const LEASE_POLL_MAX: Duration = Duration::from_millis(500);

/// A [`TokenSource`] for the RFC 6749 §6 refresh-token grant: a refresh token (from an
/// authorization-code or device flow, done elsewhere) exchanged for access tokens, and
/// replaced by the new one whenever the server rotates it.
///
/// The form is `grant_type=refresh_token`, `refresh_token`, `scope` if set (Entra v2 wants
/// it on every refresh), and the client's authentication ([`OAuthClient`]: a secret, an
/// assertion, or a public client's `client_id`).
///
/// # Rotation
///
/// - **One process**: a rotated refresh token replaces the old one in memory before the
///   access token is handed out; the provider never runs two refreshes at once.
/// - **Several processes** (replicas, a CLI run many times): give the provider a
///   [token store](crate::store). The refresh token then lives in the store, and a refresh
///   takes the store's lease for it, reads the current refresh token, spends it, and stores
///   the new one by compare-and-swap ([`TokenStore::replace_if`](crate::store::TokenStore::replace_if)):
///   two processes never spend one refresh token. While the store cannot be reached, nothing
///   is spent ([`Error::Store`], transient): spending a copy another process may already
///   have spent would make the server revoke the whole series.
/// - **Several processes without a store** each rotate their own copy: the first refresh
///   of the second process spends a refresh token already spent, which servers with reuse
///   detection (Auth0, Okta, the emulator) answer by revoking the series. Every process
///   then fails with [`Error::ReauthorizationNeeded`], loudly, never silently.
///
/// `invalid_grant` is permanent: [`Error::ReauthorizationNeeded`] (the user must authorize
/// again), and the stored refresh token is cleared only if it is still the one that was
/// spent. A refresh token is a secret wherever it is: redacted in `Debug`, scrubbed from
/// errors, sealed in the store.
///
/// A token request whose answer is lost (a timeout after the server rotated) leaves the
/// new refresh token with the server alone; servers with a reuse grace period (Okta's,
/// Auth0's leeway) accept the old one once more, others need a new authorization.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_refresh_emulator::Emulator;
/// use token_refresh::{OAuthClient, RefreshToken, TokenProvider};
///
/// let emulator = Emulator::start().await?;
/// // The refresh token an authorization-code flow gave the user.
/// let refresh_token = emulator.issue_refresh_token();
/// let client = OAuthClient::new(emulator.client_id(), emulator.client_secret());
/// let source = RefreshToken::new(emulator.token_url(), client, refresh_token).scope("offline_access");
/// let provider = TokenProvider::new(source);
///
/// assert!(!provider.token().await?.expose_secret().is_empty());
/// assert_eq!(emulator.stats().refresh_token_grants, 1);
/// # Ok(()) }
/// ```
pub struct RefreshToken {
    endpoint: TokenEndpoint,
    client: OAuthClient,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
    /// The refresh token given at construction: it names the series in the store key.
    initial: SecretString,
    ttl: Duration,
    local: Mutex<Local>,
    store: OnceLock<SourceStore>,
}

/// The refresh token this process knows.
struct Local {
    current: SecretString,
    /// A rotation the store did not take (it failed): the new refresh token, and the entry
    /// it replaces. While the store still holds that entry, ours is the newer one.
    pending: Option<(Option<Vec<u8>>, SecretString)>,
}

/// A stored refresh token, before sealing.
#[derive(Serialize, Deserialize)]
struct Wire {
    v: u32,
    refresh_token: String,
}

const FORMAT_VERSION: u32 = 1;

impl RefreshToken {
    /// The `grant_type` of RFC 6749 §6.
    pub const GRANT_TYPE: &'static str = "refresh_token";

    /// `refresh_token` of `client`, spent at `token_url` (a URL, or a
    /// [`TokenEndpoint`], e.g. [`TokenEndpoint::discover`]). Does no I/O; an empty refresh
    /// token fails the first refresh with [`Error::EmptyCredential`].
    pub fn new(
        token_url: impl Into<TokenEndpoint>,
        client: OAuthClient,
        refresh_token: impl Into<String>,
    ) -> Self {
        let initial = SecretString::from(refresh_token.into());
        Self {
            endpoint: token_url.into(),
            client,
            scopes: Vec::new(),
            params: Vec::new(),
            local: Mutex::new(Local {
                current: initial.clone(),
                pending: None,
            }),
            initial,
            ttl: DEFAULT_REFRESH_TOKEN_TTL,
            store: OnceLock::new(),
        }
    }

    /// Asks for DPoP-bound tokens: every token request carries a proof signed with `key`;
    /// see [`TokenEndpoint::dpop`](crate::TokenEndpoint::dpop). Default: bearer tokens.
    pub fn dpop(mut self, key: crate::dpop::DpopKey) -> Self {
        self.endpoint = self.endpoint.dpop(key);
        self
    }

    /// Asks for `scope` on every refresh (space-separated, or call again to add). Default:
    /// none (the scope of the original grant).
    pub fn scope(mut self, scope: impl AsRef<str>) -> Self {
        super::add_scopes(&mut self.scopes, scope.as_ref());
        self
    }

    /// Names a resource the token is for (RFC 8707 `resource`), sent on every refresh:
    /// a refresh that drops it gets a token for another audience. Repeat for more. Default:
    /// none.
    pub fn resource(self, resource: impl Into<String>) -> Self {
        self.param("resource", resource)
    }

    /// Sends another form parameter on every refresh; not for secrets.
    /// Default: none.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// How long a stored refresh token is kept after its last rotation. Default:
    /// [`DEFAULT_REFRESH_TOKEN_TTL`](crate::defaults::DEFAULT_REFRESH_TOKEN_TTL) (90 days).
    pub fn stored_for(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spends `refresh_token`: the access token and the rotated refresh token, if any.
    async fn spend(
        &self,
        refresh_token: &SecretString,
        params: &crate::TokenParams,
    ) -> Result<(AccessToken, Option<SecretString>)> {
        if refresh_token.expose_secret().is_empty() {
            return Err(Error::EmptyCredential {
                field: "refresh_token",
            });
        }
        self.client.check()?;
        let (mut scopes, mut form) = (self.scopes.clone(), self.params.clone());
        super::apply_params(params, &mut scopes, &mut form);
        let scope = scopes.join(" ");
        let request = self
            .endpoint
            .request()
            .describe(SENDING, ALLOW_WITH)
            .param("grant_type", Self::GRANT_TYPE)
            .secret_param("refresh_token", refresh_token.expose_secret());
        let mut request = self.client.authenticate(request);
        if !scope.is_empty() {
            request = request.param("scope", &scope);
        }
        for (name, value) in &form {
            request = request.param(name, value);
        }
        match request.send_response().await {
            Ok(response) => {
                let rotated = response.refresh_token().cloned();
                Ok((response.into_token(), rotated))
            }
            Err(Error::OAuth {
                error, description, ..
            }) if error == "invalid_grant" => {
                Err(Error::ReauthorizationNeeded { error, description })
            }
            Err(error) => Err(error),
        }
    }

    async fn refresh_alone(&self, params: &crate::TokenParams) -> Result<AccessToken> {
        let spent = self.local().current.clone();
        let (token, rotated) = self.spend(&spent, params).await?;
        if let Some(rotated) = rotated {
            self.local().current = rotated;
        }
        Ok(token)
    }

    /// Under the store's lease for the refresh token: read it, spend it, swap in the new one.
    async fn refresh_shared(
        &self,
        store: &SourceStore,
        params: &crate::TokenParams,
    ) -> Result<AccessToken> {
        if !store.swaps() {
            return Err(Error::Config(format!(
                "the token store {store:?} cannot compare-and-swap (TokenStore::swaps and \
                 replace_if): a refresh token shared through it could be spent twice, so none \
                 is spent"
            )));
        }
        let key = store.key("refresh-token");
        let fence = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let give_up = tokio::time::Instant::now()
            + store
                .lease_ttl()
                .saturating_add(self.endpoint.request_timeout());
        let mut poll = LEASE_POLL_MIN;
        while !store.try_lease(&key, &fence).await? {
            if tokio::time::Instant::now() >= give_up {
                return Err(Error::Store(
                    "another process held the refresh token's lease past its TTL".into(),
                ));
            }
            let wait = poll / 2 + (poll / 2).mul_f64(fastrand::f64());
            store.changed(&key, wait).await;
            poll = (poll * 2).min(LEASE_POLL_MAX);
        }
        // Renewed while it works: no other process spends the refresh token meanwhile,
        // however long the request takes.
        let result = store
            .renewing(&key, &fence, self.rotate(store, &key, params))
            .await;
        if let Err(error) = store.release(&key, &fence).await {
            tracing::warn!(%error, "the refresh token's lease was not released; it lapses by itself");
        }
        result
    }

    async fn rotate(
        &self,
        store: &SourceStore,
        key: &str,
        params: &crate::TokenParams,
    ) -> Result<AccessToken> {
        let found = store.get(key).await?;
        let stored = found.as_ref().map(|f| f.sealed.clone());
        let spent = {
            let local = self.local();
            match (&local.pending, &found) {
                // Our last rotation never reached the store, which still holds what it
                // replaced: ours is the newer refresh token.
                (Some((replaced, newer)), _) if *replaced == stored => newer.clone(),
                (_, Some(found)) => match found.plain.as_deref().and_then(decode) {
                    Some(token) => token,
                    None => {
                        tracing::warn!(
                            "the stored refresh token does not open (another key, or garbage): using this process's"
                        );
                        local.current.clone()
                    }
                },
                (_, None) => local.current.clone(),
            }
        };
        match self.spend(&spent, params).await {
            Ok((token, rotated)) => {
                let Some(rotated) = rotated else {
                    self.local().current = spent;
                    return Ok(token);
                };
                let sealed = store.seal(key, &encode(&rotated));
                let pending = match store
                    .replace_if(key, stored.as_deref(), &sealed, self.ttl)
                    .await
                {
                    Ok(true) => None,
                    Ok(false) => {
                        tracing::warn!(
                            "another process stored a refresh token while this one held the lease: keeping theirs"
                        );
                        None
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the rotated refresh token is kept in memory until the store takes it");
                        Some((stored, rotated.clone()))
                    }
                };
                let mut local = self.local();
                local.current = rotated;
                local.pending = pending;
                Ok(token)
            }
            Err(error @ Error::ReauthorizationNeeded { .. }) => {
                // Cleared only if it is still the refresh token that was refused.
                if let Some(stored) = &stored {
                    let _ = store.delete_if(key, stored).await;
                }
                self.local().pending = None;
                Err(error)
            }
            Err(error) => Err(error),
        }
    }
}

fn encode(refresh_token: &SecretString) -> Vec<u8> {
    serde_json::to_vec(&Wire {
        v: FORMAT_VERSION,
        refresh_token: refresh_token.expose_secret().to_owned(),
    })
    .expect("a refresh token always serializes")
}

fn decode(bytes: &[u8]) -> Option<SecretString> {
    let wire: Wire = serde_json::from_slice(bytes).ok()?;
    (wire.v == FORMAT_VERSION && !wire.refresh_token.is_empty())
        .then(|| SecretString::from(wire.refresh_token))
}

#[async_trait::async_trait]
impl TokenSource for RefreshToken {
    /// `refresh-token-{hash}`: a hash of the token URL, the client, the scopes and
    /// parameters, and the refresh token given to [`new`](RefreshToken::new), which names
    /// the series (a new authorization starts a new one).
    fn store_key(&self) -> Option<String> {
        let key = self.endpoint.key_parts(KeyBuilder::new("refresh-token"));
        let mut key = self
            .client
            .key_parts(key)
            .part(self.scopes.join(" "))
            .part(self.initial.expose_secret());
        for (name, value) in &self.params {
            key = key.part(name).part(value);
        }
        Some(key.finish())
    }

    fn attach_store(&self, store: SourceStore) {
        let _ = self.store.set(store);
    }

    /// The token endpoint's host and the client id.
    fn name(&self) -> Option<String> {
        Some(self.endpoint.name_for(self.client.id()))
    }

    fn dpop_key(&self) -> Option<crate::dpop::DpopKey> {
        self.endpoint.dpop_key().cloned()
    }

    /// This grant asking for `params`' scopes, audience and resources instead of its own;
    /// the refresh-token series is the same.
    async fn fetch_token_for(&self, params: &crate::TokenParams) -> Result<AccessToken> {
        match self.store.get() {
            None => self.refresh_alone(params).await,
            Some(store) => self.refresh_shared(store, params).await,
        }
    }

    async fn fetch_token(&self) -> Result<AccessToken> {
        self.fetch_token_for(&crate::TokenParams::default()).await
    }

    // `store_key_for` is the default: the series' own key, with the params hashed in.
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshToken")
            .field("endpoint", &self.endpoint)
            .field("client", &self.client)
            .field("refresh_token", &"[REDACTED]")
            .field("scopes", &self.scopes)
            .field("shared", &self.store.get().is_some())
            .finish_non_exhaustive()
    }
}
