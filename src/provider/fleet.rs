//! Sharing tokens with a fleet through a [`TokenStore`]: a refresh looks in the store first,
//! one process (the lease holder) asks the token endpoint, the others wait for what it
//! stores, and a store that fails is never worse than none.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Result;
use crate::health::Metrics;
use crate::store::{Sealer, StoreError, TokenStore, decode, encode};
use crate::token::AccessToken;

use super::Inner;
use super::cache::{self, later};
use super::flight::Flight;

/// First wait between two looks at the store while another process refreshes; doubled up
/// to [`POLL_MAX`], with jitter. A token request takes tens of milliseconds at best, so
/// looking sooner finds nothing; the doubling keeps a fleet waiting on a slow endpoint from
/// hammering the store.
const POLL_MIN: Duration = Duration::from_millis(25);

/// Longest wait between two looks at the store: the most a waiting process adds to the
/// refresh it waits for.
const POLL_MAX: Duration = Duration::from_millis(500);

/// A provider's store, its key and sealing, and what it knows of the store's health.
pub(super) struct Fleet {
    /// The provider's name, for its log lines.
    pub(super) provider: String,
    pub(super) store: Arc<dyn TokenStore>,
    pub(super) sealer: Arc<Sealer>,
    pub(super) key: String,
    pub(super) lease_ttl: Duration,
    pub(super) timeout: Duration,
    /// Whether the last store call worked: one WARN per outage, and for `Health`.
    pub(super) healthy: AtomicBool,
    /// The provider's metrics, set when the provider is built.
    pub(super) metrics: Option<Metrics>,
    /// The stored entry of the cached token (as stored or loaded), and of a token rejected
    /// since, which the next refresh removes from the store if it is still there.
    pub(super) entries: Mutex<Entries>,
}

#[derive(Default)]
pub(super) struct Entries {
    current: Option<(AccessToken, Vec<u8>)>,
    rejected: Option<Vec<u8>>,
}

impl Fleet {
    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = std::result::Result<T, StoreError>>,
    ) -> Option<T> {
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match result {
            Ok(value) => {
                if let Some(metrics) = &self.metrics {
                    metrics.store_call(true);
                }
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        provider = %self.provider,
                        key = %self.key,
                        "the token store answers again"
                    );
                }
                Some(value)
            }
            Err(error) => {
                if let Some(metrics) = &self.metrics {
                    metrics.store_call(false);
                }
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        provider = %self.provider,
                        key = %self.key,
                        operation = what,
                        %error,
                        "the token store failed: fetching tokens without it until it answers again"
                    );
                }
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, token: &AccessToken, entry: Vec<u8>) {
        self.lock().current = Some((token.clone(), entry));
    }

    /// `token` was rejected: its entry must not be handed out again.
    pub(super) fn rejected(&self, token: &AccessToken) {
        let mut entries = self.lock();
        if let Some((current, entry)) = entries.current.take() {
            if current.ptr_eq(token) {
                entries.rejected = Some(entry);
            } else {
                entries.current = Some((current, entry));
            }
        }
    }
}

enum Look {
    /// A stored token to use.
    Found(AccessToken),
    /// Nothing usable stored.
    Empty,
    /// The store failed: fetch without it.
    Failed,
}

impl Inner {
    /// One refresh, through the store if there is one.
    pub(super) async fn fetch(&self, flight: &Flight) -> Result<AccessToken> {
        match &self.fleet {
            None => self.fetch_with_retries(flight).await,
            Some(fleet) => self.fetch_shared(fleet, flight).await,
        }
    }

    async fn fetch_shared(&self, fleet: &Fleet, flight: &Flight) -> Result<AccessToken> {
        let fence = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        // Waiting for another holder ends, at the latest, when its lease would have lapsed
        // and one fetch more: then this process asks for itself.
        let give_up = later(
            Instant::now(),
            fleet.lease_ttl.saturating_add(self.config.fetch_timeout),
        );
        let mut poll = POLL_MIN;
        loop {
            match self.look(fleet).await {
                Look::Found(token) => {
                    flight.took_from_store();
                    return Ok(token);
                }
                Look::Failed => return self.fetch_with_retries(flight).await,
                Look::Empty => {}
            }
            let leased = fleet.call(
                "take the refresh lease",
                fleet.store.try_lease(&fleet.key, &fence, fleet.lease_ttl),
            );
            match leased.await {
                None => return self.fetch_with_retries(flight).await,
                Some(true) => return self.fetch_as_holder(fleet, flight, &fence).await,
                Some(false) => {}
            }
            if Instant::now() >= give_up {
                tracing::warn!(
                    key = %fleet.key,
                    "the token store's lease holder stored no token in time: fetching one here"
                );
                return self.fetch_with_retries(flight).await;
            }
            let wait = poll / 2 + (poll / 2).mul_f64(fastrand::f64());
            let _ = tokio::time::timeout(
                self.config.fetch_timeout,
                fleet.store.changed(&fleet.key, wait),
            )
            .await;
            poll = (poll * 2).min(POLL_MAX);
        }
    }

    /// Holding the lease: look once more (the previous holder may have stored a token
    /// between our look and our lease), fetch, store, release.
    async fn fetch_as_holder(
        &self,
        fleet: &Fleet,
        flight: &Flight,
        fence: &str,
    ) -> Result<AccessToken> {
        let result = match self.look(fleet).await {
            Look::Found(token) => {
                flight.took_from_store();
                Ok(token)
            }
            Look::Empty | Look::Failed => {
                let result = self.fetch_with_retries(flight).await;
                if let Ok(token) = &result {
                    let entry = fleet.sealer.seal(&fleet.key, &encode(token, flight.forced));
                    let ttl = token.expires_in();
                    if fleet
                        .call("store the token", fleet.store.put(&fleet.key, &entry, ttl))
                        .await
                        .is_some()
                    {
                        fleet.remember(token, entry);
                    }
                }
                result
            }
        };
        fleet
            .call(
                "release the refresh lease",
                fleet.store.release(&fleet.key, fence),
            )
            .await;
        result
    }

    /// The stored token, if there is one this process may use: it opens, has not expired
    /// by this process's clock, is not due for a refresh, and was not rejected.
    async fn look(&self, fleet: &Fleet) -> Look {
        let rejected = fleet.lock().rejected.clone();
        let Some(stored) = fleet.call("read", fleet.store.get(&fleet.key)).await else {
            return Look::Failed;
        };
        let Some(entry) = stored else {
            return Look::Empty;
        };
        if rejected.as_ref() == Some(&entry) {
            // Still the token a server rejected: remove it, unless another process has
            // replaced it meanwhile (compare-and-delete).
            fleet
                .call(
                    "remove a rejected token",
                    fleet.store.delete_if(&fleet.key, &entry),
                )
                .await;
            return Look::Empty;
        }
        let Some(stored) = fleet
            .sealer
            .open(&fleet.key, &entry)
            .and_then(|plain| decode(&plain))
        else {
            tracing::debug!(key = %fleet.key, "a stored entry did not open or has expired: ignored");
            return Look::Empty;
        };
        let mut token = stored.token;
        if let Some(jkt) = &stored.dpop_jkt {
            // A DPoP-bound token is of use only with its key: this source's, or none.
            match self.source.dpop_key() {
                Some(key) if key.thumbprint() == jkt => token = token.with_dpop(key),
                _ => return Look::Empty,
            }
        }
        if Instant::now() >= cache::refresh_at(&self.config, &token) {
            return Look::Empty;
        }
        if let Some(interval) = stored.forced_interval {
            self.lock_state()
                .storm
                .seed(token.issued_at_instant(), interval);
        }
        tracing::debug!(key = %fleet.key, "access token taken from the token store");
        fleet.remember(&token, entry);
        Look::Found(token)
    }
}
