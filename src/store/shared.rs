//! [`SourceStore`]: the provider's token store as a token source sees it, for a grant that
//! keeps state of its own fleet-wide (the refresh-token grant's rotating refresh token).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{Sealer, StoreError, TokenStore};
use crate::error::{Error, Result};

/// The provider's [`TokenStore`] handed to its source by
/// [`TokenSource::attach_store`](crate::TokenSource::attach_store): the same store, sealing,
/// key and timeouts as the provider's own entries. The built-in
/// [`RefreshToken`](crate::RefreshToken) grant keeps its refresh token there; what it can do
/// with it is crate-internal for now.
#[derive(Clone)]
pub struct SourceStore {
    store: Arc<dyn TokenStore>,
    sealer: Arc<Sealer>,
    key: String,
    lease_ttl: Duration,
    timeout: Duration,
}

/// An entry as stored (sealed) and as opened.
pub(crate) struct Found {
    pub(crate) sealed: Vec<u8>,
    pub(crate) plain: Option<Vec<u8>>,
}

impl SourceStore {
    pub(crate) fn new(
        store: Arc<dyn TokenStore>,
        sealer: Arc<Sealer>,
        key: String,
        lease_ttl: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            store,
            sealer,
            key,
            lease_ttl,
            timeout,
        }
    }

    /// The key of the source's own entry `name`, next to the provider's.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.key)
    }

    /// Whether the store can compare-and-swap ([`TokenStore::swaps`]).
    pub(crate) fn swaps(&self) -> bool {
        self.store.swaps()
    }

    /// How long a lease taken here lasts if its holder never releases it.
    pub(crate) fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = std::result::Result<T, StoreError>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Error::Store(format!("could not {what}: {error}"))),
            Err(_) => Err(Error::Store(format!(
                "could not {what}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// The entry under `key`, with its opened content (`None` if it does not open).
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Found>> {
        let sealed = self.call("read", self.store.get(key)).await?;
        Ok(sealed.map(|sealed| Found {
            plain: self.sealer.open(key, &sealed),
            sealed,
        }))
    }

    /// `plain` sealed for `key`.
    pub(crate) fn seal(&self, key: &str, plain: &[u8]) -> Vec<u8> {
        self.sealer.seal(key, plain)
    }

    /// Compare-and-swap: see [`TokenStore::replace_if`].
    pub(crate) async fn replace_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        sealed: &[u8],
        ttl: Duration,
    ) -> Result<bool> {
        self.call(
            "swap an entry",
            self.store.replace_if(key, expected, sealed, ttl),
        )
        .await
    }

    /// Compare-and-delete: see [`TokenStore::delete_if`].
    pub(crate) async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<bool> {
        self.call("delete an entry", self.store.delete_if(key, expected))
            .await
    }

    /// Takes the lease on `key` with `fence`.
    pub(crate) async fn try_lease(&self, key: &str, fence: &str) -> Result<bool> {
        self.call(
            "take a lease",
            self.store.try_lease(key, fence, self.lease_ttl),
        )
        .await
    }

    /// Releases the lease on `key` if `fence` holds it.
    pub(crate) async fn release(&self, key: &str, fence: &str) -> Result<()> {
        self.call("release a lease", self.store.release(key, fence))
            .await
    }

    /// Waits at most `max` for `key` to change (see [`TokenStore::changed`]).
    pub(crate) async fn changed(&self, key: &str, max: Duration) {
        let _ = tokio::time::timeout(max.saturating_mul(2), self.store.changed(key, max)).await;
    }
}

impl fmt::Debug for SourceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceStore")
            .field("store", &self.store)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}
