//! The builder that sets a provider's settings ([`Config`]) and its store.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::defaults::*;
use crate::error::{Error, Result};
use crate::health::Metrics;
use crate::source::TokenSource;
use crate::store::{Sealer, SourceStore, StoreStatus, TokenStore};

use super::config::Config;
use super::fleet::Fleet;
use super::{Inner, TokenProvider};

/// Adjusts a [`TokenProvider`]'s margins and retry policy; from [`TokenProvider::builder`].
pub struct TokenProviderBuilder {
    source: Box<dyn TokenSource>,
    config: Config,
    store: Option<Box<dyn TokenStore>>,
    store_key: Option<String>,
    store_lease_ttl: Duration,
    store_timeout: Duration,
}

impl TokenProviderBuilder {
    pub(super) fn new(source: Box<dyn TokenSource>) -> Self {
        let mut config = Config::default();
        if let Some(name) = source.name() {
            config.name = name;
        }
        Self {
            source,
            config,
            store: None,
            store_key: None,
            store_lease_ttl: DEFAULT_STORE_LEASE_TTL,
            store_timeout: DEFAULT_STORE_TIMEOUT,
        }
    }

    /// A token is not handed out this close to its expiry; callers wait for a new one.
    /// Scaled down to a tenth of the lifetime for short tokens. Default:
    /// [`DEFAULT_HARD_MARGIN`] (60 s).
    pub fn hard_margin(mut self, margin: Duration) -> Self {
        self.config.hard_margin = margin;
        self
    }

    /// This close to expiry, the next caller starts a background refresh and keeps the
    /// current token. Scaled down to a fifth of the lifetime for short tokens; never below
    /// the hard margin. [`Duration::ZERO`] turns proactive refresh off (refresh only when
    /// the hard margin is reached, with callers waiting). Default:
    /// [`DEFAULT_PROACTIVE_MARGIN`] (5 min).
    pub fn proactive_margin(mut self, margin: Duration) -> Self {
        self.config.proactive_margin = margin;
        self
    }

    /// Attempts per refresh, the first included (at least 1). Default:
    /// [`DEFAULT_MAX_ATTEMPTS`] (4).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts.max(1);
        self
    }

    /// First and longest backoff delay between attempts. Defaults:
    /// [`DEFAULT_BACKOFF_BASE`] (250 ms) and [`DEFAULT_BACKOFF_MAX`] (8 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config.backoff_base = base;
        self.config.backoff_max = max.max(base);
        self
    }

    /// Longest `Retry-After` waited out within a refresh; a longer one ends the refresh and
    /// sets the cool-down. Default: [`DEFAULT_MAX_RETRY_AFTER`] (30 s).
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.config.max_retry_after = max;
        self
    }

    /// No retry starts later than this after a refresh's first attempt. Default:
    /// [`DEFAULT_RETRY_BUDGET`] (60 s).
    pub fn retry_budget(mut self, budget: Duration) -> Self {
        self.config.retry_budget = budget;
        self
    }

    /// After a failed refresh, callers without a valid token get its error at once for this
    /// long (or for the server's `Retry-After`, up to five minutes, if longer). Default:
    /// [`DEFAULT_COOLDOWN`] (5 s).
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.config.cooldown = cooldown;
        self
    }

    /// Timeout around one call of the token source. Default: [`DEFAULT_FETCH_TIMEOUT`]
    /// (30 s).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.config.fetch_timeout = timeout;
        self
    }

    /// Longest time a caller waits for a token; past it the caller gets
    /// [`Error::WaitTimeout`](crate::Error::WaitTimeout) and the refresh goes on for later
    /// callers. A request's own timeout (reqwest's `RequestBuilder::timeout`) shortens it for
    /// that request. Default: [`DEFAULT_MAX_WAIT`] (30 s).
    pub fn max_wait(mut self, max: Duration) -> Self {
        self.config.max_wait = max;
        self
    }

    /// The storm guard of [`TokenProvider::reject`] for tokens rejected before any request
    /// succeeded with them: the least time between two such forced refreshes, and the
    /// longest it grows to while fresh tokens keep being rejected. Defaults:
    /// [`DEFAULT_FORCED_REFRESH_INTERVAL`] (5 s) and [`MAX_FORCED_REFRESH_INTERVAL`] (5 min).
    pub fn forced_refresh_interval(mut self, min: Duration, max: Duration) -> Self {
        self.config.forced_interval = min;
        self.config.forced_interval_max = max.max(min);
        self
    }

    /// The storm guard's allowance for revocations (tokens the API had accepted, then
    /// rejects): `burst` of them are refreshed at once, back to back, and the allowance
    /// regains one every `refill`. A `burst` of 0 treats revocations like any rejection
    /// (one forced refresh per [`forced_refresh_interval`](Self::forced_refresh_interval)).
    /// Defaults: [`DEFAULT_REVOCATION_BURST`] (10) and [`DEFAULT_REVOCATION_REFILL`]
    /// (500 ms).
    pub fn revocation_allowance(mut self, burst: u32, refill: Duration) -> Self {
        self.config.revocation_burst = burst;
        self.config.revocation_refill = refill;
        self
    }

    /// Names the provider in its log lines (the `provider` field) and (feature `metrics`) as
    /// the `provider` label of its metrics, to tell several providers apart. Default: the
    /// source's [`name`](crate::TokenSource::name) — for the built-in grants the token
    /// endpoint's host and the client id or issuer, e.g. `auth.example.com/my-client` —
    /// else `default`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Shares tokens with other processes through `store` (see the [`store`](crate::store)
    /// module): a refresh looks there first, and one process of the fleet asks the token
    /// endpoint while the others wait for what it stores. The store must seal its entries or
    /// explicitly allow plaintext, and the source must have a store key (the built-in grants
    /// derive one; otherwise see [`store_key`](Self::store_key)), or
    /// [`try_build`](Self::try_build) fails. Default: no store.
    pub fn store(mut self, store: impl TokenStore) -> Self {
        self.store = Some(Box::new(store));
        self
    }

    /// Names the store entry of a source that derives no key of its own (a closure, a
    /// custom [`TokenSource`]), or overrides the derived one. Give every distinct token
    /// (another audience, scope or account) its own name: processes that share a name share
    /// the token. Default: the source's [`store_key`](TokenSource::store_key).
    pub fn store_key(mut self, name: impl Into<String>) -> Self {
        self.store_key = Some(name.into());
        self
    }

    /// How long a fleet's refresh lease outlives a holder that stopped renewing it, and the
    /// timeout of each store call.
    ///
    /// The holder renews its lease every third of `lease_ttl` while it fetches, so a
    /// refresh may take far longer than the lease; a holder that dies mid-refresh (killed,
    /// its host lost) holds the fleet up for at most `lease_ttl` and a poll (250 ms), then
    /// another process takes the lease. A process waits on another's lease for at most
    /// `lease_ttl` plus the [`fetch_timeout`](Self::fetch_timeout), and never longer than
    /// half the [`max_wait`](Self::max_wait): then it fetches a token itself, with half its
    /// callers' wait left for that. A lease longer than `max_wait` is therefore allowed: it
    /// only slows the fleet's recovery from a dead holder, up to that bound, and never makes
    /// a waiting caller fail with [`Error::WaitTimeout`]. A store that cannot renew leases
    /// ([`TokenStore::renew`]'s default) needs a lease longer than a refresh takes;
    /// [`RedisStore`](crate::store) and [`FileStore`](crate::store::FileStore) renew.
    /// [`try_build`](Self::try_build) refuses a zero duration. Defaults:
    /// [`DEFAULT_STORE_LEASE_TTL`] (1 s) and [`DEFAULT_STORE_TIMEOUT`] (1 s).
    pub fn store_timeouts(mut self, lease_ttl: Duration, call_timeout: Duration) -> Self {
        self.store_lease_ttl = lease_ttl;
        self.store_timeout = call_timeout;
        self
    }

    /// The provider, or [`Error::Config`] for a store it cannot use (no key for the
    /// source's tokens, or neither an encryption key nor plaintext allowed). Does no I/O.
    pub fn try_build(mut self) -> Result<TokenProvider> {
        let fleet = self.fleet()?;
        Ok(self.finish(Ok(fleet)))
    }

    /// The provider. Does no I/O. A store it cannot use (see [`try_build`](Self::try_build))
    /// is logged as an error and makes every call fail with it: prefer `try_build` with a
    /// store.
    pub fn build(mut self) -> TokenProvider {
        let fleet = self.fleet().inspect_err(|error| {
            tracing::error!(%error, "the token provider cannot use its token store");
        });
        self.finish(fleet)
    }

    fn fleet(&mut self) -> Result<Option<Fleet>> {
        let Some(store) = self.store.take() else {
            return Ok(None);
        };
        if self.store_lease_ttl.is_zero() || self.store_timeout.is_zero() {
            return Err(Error::Config(format!(
                "store_timeouts({:?}, {:?}): the lease TTL and the call timeout must be longer \
                 than zero (defaults: {DEFAULT_STORE_LEASE_TTL:?} and {DEFAULT_STORE_TIMEOUT:?})",
                self.store_lease_ttl, self.store_timeout
            )));
        }
        let (identity, named) = match (&self.store_key, self.source.store_key()) {
            (Some(name), _) => (crate::store::named_key(name), true),
            (None, Some(key)) => (key, false),
            (None, None) => {
                return Err(Error::Config(
                    "a token store needs a key for this token source, which derives none: \
                     name it with TokenProviderBuilder::store_key"
                        .to_owned(),
                ));
            }
        };
        let sealer = Sealer::new(&store.sealing()).ok_or_else(|| {
            Error::Config(format!(
                "the token store {store:?} would hold bearer tokens in the clear: give it an \
                 encryption key (.encryption_key), or allow that with .allow_plaintext(true)"
            ))
        })?;
        let names = sealer.names(&identity, named);
        let (store, sealer): (Arc<dyn TokenStore>, _) = (Arc::from(store), Arc::new(sealer));
        let status = StoreStatus::new(self.config.name.clone(), names[0].0.clone());
        self.source.attach_store(SourceStore::new(
            Arc::clone(&store),
            Arc::clone(&sealer),
            names.clone(),
            self.store_lease_ttl,
            self.store_timeout,
            Arc::clone(&status),
        ));
        let mut names = names.into_iter().map(|(name, _)| name);
        Ok(Some(Fleet {
            provider: self.config.name.clone(),
            store,
            sealer,
            key: names.next().expect("an entry has a name under every key"),
            previous: names.collect(),
            lease_ttl: self.store_lease_ttl,
            timeout: self.store_timeout,
            status,
            entries: Default::default(),
        }))
    }

    fn finish(self, fleet: Result<Option<Fleet>>) -> TokenProvider {
        TokenProvider {
            inner: Arc::new(Inner::new(
                self.source,
                Metrics::new(&self.config.name),
                self.config,
                fleet,
            )),
        }
    }
}

impl fmt::Debug for TokenProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProviderBuilder")
            .field("config", &self.config)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}
