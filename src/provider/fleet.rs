//! Sharing tokens with a fleet through a [`TokenStore`]: a refresh looks in the store first,
//! one process (the lease holder) asks the token endpoint, the others wait for what it
//! stores, and a store that fails is never worse than none.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Result;
use crate::store::{Sealer, StoreError, StoreStatus, TokenStore, alongside, decode, encode};
use crate::token::AccessToken;

use super::Inner;
use super::cache::{self, later};
use super::flight::Flight;

/// First wait between two looks at the store while another process refreshes; doubled up
/// to [`POLL_MAX`], with jitter. A token request takes tens of milliseconds at best, so
/// looking sooner finds nothing; the doubling keeps a fleet waiting on a slow endpoint from
/// hammering the store. A store with notifications wakes waiters as soon as the token is
/// stored; polling is what is left when a notification is lost, and how a lease that
/// lapsed (its holder died) is noticed.
const POLL_MIN: Duration = Duration::from_millis(25);

/// Longest wait between two looks at the store: the most a waiting process adds to the
/// refresh it waits for without notifications, and to the lapse of a dead holder's lease
/// ([`DEFAULT_STORE_LEASE_TTL`](crate::defaults::DEFAULT_STORE_LEASE_TTL) plus this is how
/// long a fleet waits on a holder that died). Four looks a second per waiting process.
const POLL_MAX: Duration = Duration::from_millis(250);

/// The holder renews its lease this many times per lease TTL: a renewal that is late, or
/// one that is lost, still leaves the lease held.
const RENEWALS_PER_TTL: u32 = 3;

/// A provider's store, its key and sealing, and what it knows of the store's health.
pub(super) struct Fleet {
    /// The provider's name, for its log lines.
    pub(super) provider: String,
    pub(super) store: Arc<dyn TokenStore>,
    pub(super) sealer: Arc<Sealer>,
    /// The entry's name under the current encryption key.
    pub(super) key: String,
    /// Its names under the previous encryption keys, still read (a fleet rolling keys).
    pub(super) previous: Vec<String>,
    pub(super) lease_ttl: Duration,
    pub(super) timeout: Duration,
    pub(super) status: Arc<StoreStatus>,
    /// The stored entry of the cached token (as stored or loaded), and of a token rejected
    /// since, which the next refresh removes from the store if it is still there.
    pub(super) entries: Mutex<Entries>,
}

/// An entry as stored: its name and its sealed bytes.
type Stored = (String, Vec<u8>);

#[derive(Default)]
pub(super) struct Entries {
    /// The cached token and the entries it was seen in (under a previous key's name and
    /// copied under the current one: two).
    current: Option<(AccessToken, Vec<Stored>)>,
    /// The entries of a token rejected since, and the token: neither is handed out again.
    rejected: Option<(AccessToken, Vec<Stored>)>,
}

impl Fleet {
    async fn call<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = std::result::Result<T, StoreError>>,
    ) -> Option<T> {
        self.status
            .call(&self.store, what, self.timeout, call)
            .await
            .ok()
    }

    /// Starts watching the entry (see [`TokenStore::watch`]): `None` without notifications,
    /// or if the store does not answer in time.
    async fn watch(&self) -> Option<u64> {
        tokio::time::timeout(self.timeout, self.store.watch(&self.key))
            .await
            .ok()
            .flatten()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, token: &AccessToken, entries: Vec<Stored>) {
        self.lock().current = Some((token.clone(), entries));
    }

    /// `token` was rejected: its entries must not be handed out again.
    pub(super) fn rejected(&self, token: &AccessToken) {
        let mut entries = self.lock();
        if let Some((current, stored)) = entries.current.take() {
            if current.ptr_eq(token) {
                entries.rejected = Some((current, stored));
            } else {
                entries.current = Some((current, stored));
            }
        }
    }

    /// The lease while the holder fetches: renewed every third of its TTL until the store
    /// says it is no longer ours (it lapsed and another process took it). Never returns
    /// while the lease is held.
    async fn keep_lease(&self, fence: &str) {
        let every = (self.lease_ttl / RENEWALS_PER_TTL).max(Duration::from_millis(1));
        loop {
            tokio::time::sleep(every).await;
            let renewed = self.call(
                "renew the refresh lease",
                self.store.renew(&self.key, fence, self.lease_ttl),
            );
            if renewed.await == Some(false) {
                tracing::debug!(
                    key = %self.key,
                    "the token store did not renew the refresh lease (lost, or a store that cannot renew): another process may fetch too"
                );
                return;
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
        // Waiting for another holder ends when its lease would have lapsed and one fetch
        // more, and never later than half the callers' wait: then this process asks for
        // itself, with half their wait left for it. A live holder renews its lease, so
        // this bound is what stands between the callers and a holder that is alive but
        // stuck (or a lease longer than `max_wait`).
        let started = Instant::now();
        let give_up = later(
            started,
            fleet
                .lease_ttl
                .saturating_add(self.config.fetch_timeout)
                .min(self.config.max_wait / 2),
        );
        let mut poll = POLL_MIN;
        let mut watching = false;
        loop {
            let seen = if watching { fleet.watch().await } else { None };
            let look = self.look(fleet).await;
            if !matches!(look, Look::Empty) {
                flight.set_waiting_on_lease(false);
            }
            match look {
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
            let leased = leased.await;
            if leased != Some(false) {
                flight.set_waiting_on_lease(false);
            }
            match leased {
                None => return self.fetch_with_retries(flight).await,
                Some(true) => return self.fetch_as_holder(fleet, flight, &fence).await,
                Some(false) => {}
            }
            flight.set_waiting_on_lease(true);
            if Instant::now() >= give_up {
                flight.set_waiting_on_lease(false);
                tracing::warn!(
                    provider = %fleet.provider,
                    key = %fleet.key,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "the token store's lease holder stored no token in time: fetching one here"
                );
                let result = self.fetch_with_retries(flight).await;
                if let Ok(token) = &result {
                    self.store_token(fleet, flight, token).await;
                }
                return result;
            }
            if !watching {
                // From here on changes are watched: look again at once, so that a token
                // stored before the watch began is not missed.
                watching = true;
                continue;
            }
            let wait = poll / 2 + (poll / 2).mul_f64(fastrand::f64());
            let changed = async {
                match seen {
                    Some(seen) => fleet.store.changed_since(&fleet.key, seen, wait).await,
                    None => fleet.store.changed(&fleet.key, wait).await,
                }
            };
            let _ = tokio::time::timeout(wait.saturating_mul(2), changed).await;
            poll = (poll * 2).min(POLL_MAX);
        }
    }

    /// Holding the lease: look once more (the previous holder may have stored a token
    /// between our look and our lease), fetch while renewing the lease, store, release.
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
                let fetch = self.fetch_with_retries(flight);
                let result = alongside(fetch, fleet.keep_lease(fence)).await;
                if let Ok(token) = &result {
                    self.store_token(fleet, flight, token).await;
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

    /// Stores a token this process fetched, for the rest of the fleet.
    async fn store_token(&self, fleet: &Fleet, flight: &Flight, token: &AccessToken) {
        let entry = fleet.sealer.seal(&fleet.key, &encode(token, flight.forced));
        let ttl = token.expires_in();
        if fleet
            .call("store the token", fleet.store.put(&fleet.key, &entry, ttl))
            .await
            .is_some()
        {
            fleet.remember(token, vec![(fleet.key.clone(), entry)]);
        }
    }

    /// The stored token, if there is one this process may use: under the current
    /// encryption key's name, or else under a previous key's (then copied to the current
    /// name for the processes that have only the current key).
    async fn look(&self, fleet: &Fleet) -> Look {
        match self.look_under(fleet, &fleet.key).await {
            Look::Empty => {}
            other => return other,
        }
        for name in &fleet.previous {
            let token = match self.look_under(fleet, name).await {
                Look::Found(token) => token,
                Look::Empty => continue,
                Look::Failed => return Look::Failed,
            };
            if fleet.store.swaps() {
                let entry = fleet.sealer.seal(&fleet.key, &encode(&token, None));
                let copied = fleet.call(
                    "copy the token under the current key",
                    fleet
                        .store
                        .replace_if(&fleet.key, None, &entry, token.expires_in()),
                );
                if copied.await == Some(true) {
                    let mut entries = fleet.lock();
                    if let Some((current, stored)) = &mut entries.current
                        && current.ptr_eq(&token)
                    {
                        stored.push((fleet.key.clone(), entry));
                    }
                }
            }
            return Look::Found(token);
        }
        Look::Empty
    }

    /// The token stored under `name`, if this process may use it: it opens, has not
    /// expired by this process's clock, is not due for a refresh, and was not rejected.
    async fn look_under(&self, fleet: &Fleet, name: &str) -> Look {
        let rejected = fleet.lock().rejected.clone();
        let Some(stored) = fleet.call("read", fleet.store.get(name)).await else {
            return Look::Failed;
        };
        let Some(entry) = stored else {
            return Look::Empty;
        };
        if rejected.as_ref().is_some_and(|(_, stored)| {
            stored
                .iter()
                .any(|(key, bytes)| key == name && *bytes == entry)
        }) {
            // Still the token a server rejected: remove it, unless another process has
            // replaced it meanwhile (compare-and-delete).
            fleet
                .call(
                    "remove a rejected token",
                    fleet.store.delete_if(name, &entry),
                )
                .await;
            return Look::Empty;
        }
        let Some(stored) = fleet
            .sealer
            .open(name, &entry)
            .and_then(|plain| decode(&plain))
        else {
            tracing::debug!(key = %name, "a stored entry did not open or has expired: ignored");
            return Look::Empty;
        };
        let mut token = stored.token;
        if rejected
            .as_ref()
            .is_some_and(|(bad, _)| bad.expose_secret() == token.expose_secret())
        {
            // The rejected token under another name (a previous key's, or a copy).
            return Look::Empty;
        }
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
        tracing::debug!(key = %name, "access token taken from the token store");
        fleet.remember(&token, vec![(name.to_owned(), entry)]);
        Look::Found(token)
    }
}
