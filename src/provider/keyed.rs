//! [`KeyedTokenProvider`]: one credential, a token per [`TokenParams`] — each key with its
//! own single flight, proactive refresh, storm guard and store entry, in a bounded cache.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::defaults::DEFAULT_MAX_KEYS;
use crate::error::Result;
use crate::params::TokenParams;
use crate::source::TokenSource;
use crate::token::AccessToken;

use super::{TokenProvider, TokenProviderBuilder};

/// Caches a token per [`TokenParams`] for one credential: a gateway, an agent calling
/// several MCP servers, or a service calling APIs that each want their own audience, scope
/// or RFC 8707 resource.
///
/// Each key is a [`TokenProvider`] of its own — single flight, proactive refresh, storm
/// guard, store entry — over the same source, which asks for that key's parameters
/// ([`TokenSource::fetch_token_for`]): two requests with different keys never share a refresh
/// or a token. At most [`max_keys`](KeyedTokenProviderBuilder::max_keys) keys are kept; the
/// least recently used goes first, and costs one token request if it comes back.
///
/// Every built-in source takes parameters: the OAuth2 grants send scopes, an audience and
/// resources; Azure managed identity asks for one resource per key (a resource, or a
/// scope's resource), Azure workload identity for the key's scopes (or
/// `{resource}/.default`); the GCP metadata server for the key's scopes, and its ID tokens
/// for the key's audience; Application Default Credentials pass them to what they found.
/// Parameters a source cannot send are an [`Error::Config`](crate::Error::Config) before
/// anything is sent.
///
/// Both integrations take one and pick the key per route:
/// `AuthMiddleware::new(keyed).route("https://a.example", TokenParams::scope("read"))`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_refresh::{TokenParams, TokenProvider};
/// use token_refresh_emulator::Emulator;
///
/// let emulator = Emulator::start().await?;
/// let keyed = TokenProvider::keyed(emulator.client_credentials());
/// let read = keyed.token_for(&TokenParams::scope("read")).await?;
/// let write = keyed.token_for(&TokenParams::scope("write")).await?;
/// assert_ne!(read.expose_secret(), write.expose_secret());
/// // Cached per key: no new token request.
/// assert!(keyed.token_for(&TokenParams::scope("read")).await?.ptr_eq(&read));
/// assert_eq!(emulator.stats().token_successes, 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KeyedTokenProvider {
    inner: Arc<Keyed>,
}

struct Keyed {
    source: Arc<dyn TokenSource>,
    configure: Configure,
    max_keys: usize,
    /// The keys, read without a lock on every request; replaced whole (copy on write) when
    /// a key is added or evicted, which happens at most once per key between evictions.
    keys: ArcSwap<Map>,
    /// Serialises those replacements.
    adding: Mutex<()>,
    /// A logical clock for "least recently used": bumped when a key is added.
    tick: AtomicU64,
}

type Configure = Arc<dyn Fn(TokenProviderBuilder) -> TokenProviderBuilder + Send + Sync>;
type Map = HashMap<TokenParams, Arc<Entry>, BuildHasherDefault<Precomputed>>;

struct Entry {
    provider: TokenProvider,
    last_used: AtomicU64,
}

/// Hashes a [`TokenParams`] by the hash it computed once.
#[derive(Default)]
struct Precomputed(u64);

impl Hasher for Precomputed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `TokenParams`; anything else still hashes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Builds a [`KeyedTokenProvider`]; from [`KeyedTokenProvider::builder`].
pub struct KeyedTokenProviderBuilder {
    source: Arc<dyn TokenSource>,
    configure: Configure,
    max_keys: usize,
}

impl KeyedTokenProviderBuilder {
    /// Keeps at most `max` keys (at least 1); the least recently used is dropped first.
    /// Default: [`DEFAULT_MAX_KEYS`] (256).
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max.max(1);
        self
    }

    /// Settings every key's provider is built with: `configure` gets each key's
    /// [`TokenProviderBuilder`] (its source already set) and returns it with margins,
    /// retries, a name or a store set. Default: the defaults.
    ///
    /// ```
    /// use std::time::Duration;
    /// use token_refresh::{ClientCredentials, KeyedTokenProvider};
    ///
    /// let keyed = KeyedTokenProvider::builder(ClientCredentials::new(
    ///     "https://auth.example.com/oauth2/token",
    ///     "gateway",
    ///     "s3cret",
    /// ))
    /// .configure(|builder| builder.name("gateway").proactive_margin(Duration::from_secs(120)))
    /// .build();
    /// # drop(keyed);
    /// ```
    pub fn configure(
        mut self,
        configure: impl Fn(TokenProviderBuilder) -> TokenProviderBuilder + Send + Sync + 'static,
    ) -> Self {
        self.configure = Arc::new(configure);
        self
    }

    /// The keyed provider. Does no I/O.
    pub fn build(self) -> KeyedTokenProvider {
        KeyedTokenProvider {
            inner: Arc::new(Keyed {
                source: self.source,
                configure: self.configure,
                max_keys: self.max_keys,
                keys: ArcSwap::from_pointee(Map::default()),
                adding: Mutex::new(()),
                tick: AtomicU64::new(0),
            }),
        }
    }
}

impl KeyedTokenProvider {
    /// A keyed provider over `source` with the default settings. Does no I/O.
    pub fn new(source: impl TokenSource) -> Self {
        Self::builder(source).build()
    }

    /// A builder for the cache's bound and the settings of every key's provider.
    pub fn builder(source: impl TokenSource) -> KeyedTokenProviderBuilder {
        KeyedTokenProviderBuilder {
            source: Arc::new(source),
            configure: Arc::new(|builder| builder),
            max_keys: DEFAULT_MAX_KEYS,
        }
    }

    /// A valid token for `params`: the key's cached one, or a fresh one from its refresh
    /// (one per key, shared by the key's concurrent callers).
    pub async fn token_for(&self, params: &TokenParams) -> Result<AccessToken> {
        if let Some(token) = self.cached_for(params, Duration::ZERO) {
            return Ok(token);
        }
        self.provider_for(params).token().await
    }

    /// The provider of `params`' key, created if it is not cached: for everything a
    /// [`TokenProvider`] offers per key — [`reject`](TokenProvider::reject),
    /// [`invalidate`](TokenProvider::invalidate), [`health`](TokenProvider::health). Cheap to
    /// clone; it keeps working after its key is evicted, but a later call for the same
    /// params gets a new one.
    pub fn provider_for(&self, params: &TokenParams) -> TokenProvider {
        if let Some(entry) = self.inner.keys.load().get(params) {
            self.touch(entry);
            return entry.provider.clone();
        }
        self.add(params)
    }

    /// How many keys are cached.
    pub fn keys(&self) -> usize {
        self.inner.keys.load().len()
    }

    /// The fast path: the key's cached token if it can be used now without waiting.
    pub(crate) fn cached_for(&self, params: &TokenParams, min: Duration) -> Option<AccessToken> {
        let keys = self.inner.keys.load();
        let entry = keys.get(params)?;
        self.touch(entry);
        entry.provider.cached(min)
    }

    fn touch(&self, entry: &Entry) {
        let now = self.inner.tick.load(Ordering::Relaxed);
        // Written only when it changes: callers of a hot key do not all write its line.
        if entry.last_used.load(Ordering::Relaxed) != now {
            entry.last_used.store(now, Ordering::Relaxed);
        }
    }

    /// Adds `params`' key (another caller may have just done so), evicting the least
    /// recently used one if the cache is full.
    fn add(&self, params: &TokenParams) -> TokenProvider {
        let inner = &self.inner;
        let _adding = inner.adding.lock().unwrap_or_else(PoisonError::into_inner);
        let current = inner.keys.load_full();
        if let Some(entry) = current.get(params) {
            return entry.provider.clone();
        }
        let tick = inner.tick.fetch_add(1, Ordering::Relaxed) + 1;
        let source = ForKey {
            source: Arc::clone(&inner.source),
            params: params.clone(),
        };
        let provider = (inner.configure)(TokenProvider::builder(source)).build();
        let mut map = Map::clone(&current);
        if map.len() >= inner.max_keys
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            params.clone(),
            Arc::new(Entry {
                provider: provider.clone(),
                last_used: AtomicU64::new(tick),
            }),
        );
        inner.keys.store(Arc::new(map));
        provider
    }
}

impl TokenProvider {
    /// A [`KeyedTokenProvider`] over `source`: a token per [`TokenParams`] (scopes,
    /// audience, resources) from one credential, with the default settings.
    pub fn keyed(source: impl TokenSource) -> KeyedTokenProvider {
        KeyedTokenProvider::new(source)
    }
}

/// A key's view of the shared source: its token requests carry the key's parameters.
struct ForKey {
    source: Arc<dyn TokenSource>,
    params: TokenParams,
}

#[async_trait::async_trait]
impl TokenSource for ForKey {
    async fn fetch_token(&self) -> Result<AccessToken> {
        self.source.fetch_token_for(&self.params).await
    }

    fn store_key(&self) -> Option<String> {
        self.source.store_key_for(&self.params)
    }

    fn attach_store(&self, store: crate::store::SourceStore) {
        self.source.attach_store(store);
    }

    /// The source's name (or `default`) and the key, e.g.
    /// `auth.example.com/gateway scope="read"`.
    fn name(&self) -> Option<String> {
        let name = self.source.name().unwrap_or_else(|| "default".to_owned());
        if self.params.is_empty() {
            return Some(name);
        }
        Some(format!("{name} {}", describe(&self.params)))
    }

    fn dpop_key(&self) -> Option<crate::dpop::DpopKey> {
        self.source.dpop_key()
    }
}

/// `scope="a b" audience=x resource=y`: the key in a provider's name.
fn describe(params: &TokenParams) -> String {
    let mut parts = Vec::new();
    if let Some(scope) = params.scope_string() {
        parts.push(format!("scope={scope:?}"));
    }
    if let Some(audience) = params.audience_value() {
        parts.push(format!("audience={audience}"));
    }
    for resource in params.resources() {
        parts.push(format!("resource={resource}"));
    }
    parts.join(" ")
}

impl fmt::Debug for KeyedTokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedTokenProvider")
            .field("keys", &self.keys())
            .field("max_keys", &self.inner.max_keys)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for KeyedTokenProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedTokenProviderBuilder")
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}
