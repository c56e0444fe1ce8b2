//! [`SourceStore`]: the provider's token store as a token source sees it, for a grant that
//! keeps state of its own fleet-wide (the refresh-token grant's rotating refresh token).
//!
//! While a fleet rolls to a new encryption key, an entry has a name under each key the
//! process has (see [`Sealer::names`]), and processes that have only the old key read only
//! the old name. So that both kinds of process follow one refresh-token series, a
//! `SourceStore` takes the lease under every name (the old processes take it under theirs:
//! no two processes spend one refresh token), reads every name and keeps the newest entry
//! (each carries a sequence number), and writes a rotation under every name that held an
//! entry, each sealed with its own key.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{Sealer, StoreError, StoreStatus, TokenStore};
use crate::error::{Error, Result};

/// First byte of an entry's content with a sequence number (8 bytes, big-endian) before
/// the source's own bytes. Content without it (written before there were sequence numbers)
/// counts as number 0.
const SEQUENCED: u8 = b'S';

/// The holder renews a lease this many times per lease TTL while it works under it.
const RENEWALS_PER_TTL: u32 = 3;

/// The provider's [`TokenStore`] handed to its source by
/// [`TokenSource::attach_store`](crate::TokenSource::attach_store): the same store, sealing,
/// key and timeouts as the provider's own entries. The built-in
/// [`RefreshToken`](crate::RefreshToken) grant keeps its refresh token there; what it can do
/// with it is crate-internal for now.
#[derive(Clone)]
pub struct SourceStore {
    store: Arc<dyn TokenStore>,
    sealer: Arc<Sealer>,
    /// The provider's entry names and the index of the encryption key each is under, the
    /// current key's first.
    names: Vec<(String, usize)>,
    lease_ttl: Duration,
    timeout: Duration,
    status: Arc<StoreStatus>,
}

/// An entry as read and as opened.
pub(crate) struct Found {
    /// What was read under each name, for a compare-and-swap or -delete of exactly that.
    pub(crate) sealed: Vec<u8>,
    /// The newest content that opened, `None` if none did.
    pub(crate) plain: Option<Vec<u8>>,
}

impl SourceStore {
    pub(crate) fn new(
        store: Arc<dyn TokenStore>,
        sealer: Arc<Sealer>,
        names: Vec<(String, usize)>,
        lease_ttl: Duration,
        timeout: Duration,
        status: Arc<StoreStatus>,
    ) -> Self {
        Self {
            store,
            sealer,
            names,
            lease_ttl,
            timeout,
            status,
        }
    }

    /// The key of the source's own entry `name`, next to the provider's.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.names[0].0)
    }

    /// The names of `key` under every encryption key, with the key's index: the current
    /// one first.
    fn physical(&self, key: &str) -> Vec<(String, usize)> {
        match key
            .strip_prefix(self.names[0].0.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
        {
            Some(part) => self
                .names
                .iter()
                .map(|(name, index)| (format!("{name}.{part}"), *index))
                .collect(),
            None => vec![(key.to_owned(), 0)],
        }
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
        what: &'static str,
        call: impl Future<Output = std::result::Result<T, StoreError>>,
    ) -> Result<T> {
        self.status
            .call(&self.store, what, self.timeout, call)
            .await
            .map_err(Error::Store)
    }

    /// The entry under `key`: the newest of what its names hold, with its opened content
    /// (`None` if none opens); `None` if no name holds anything.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Found>> {
        let mut read = Vec::new();
        for (name, _) in self.physical(key) {
            let entry = self.call("read", self.store.get(&name)).await?;
            let opened = entry
                .as_deref()
                .and_then(|bytes| self.sealer.open(&name, bytes))
                .map(|plain| unsequenced(&plain));
            read.push((entry, opened));
        }
        if read.iter().all(|(entry, _)| entry.is_none()) {
            return Ok(None);
        }
        // The newest content; the current key's name wins a tie.
        let mut newest: Option<(u64, Vec<u8>)> = None;
        for (_, opened) in &read {
            if let Some((seq, plain)) = opened
                && newest.as_ref().is_none_or(|(best, _)| seq > best)
            {
                newest = Some((*seq, plain.clone()));
            }
        }
        let entries: Vec<Option<Vec<u8>>> = read.into_iter().map(|(entry, _)| entry).collect();
        Ok(Some(Found {
            sealed: snapshot(&entries),
            plain: newest.map(|(_, plain)| plain),
        }))
    }

    /// `plain` sealed for `key`: what [`replace_if`](Self::replace_if) stores.
    pub(crate) fn seal(&self, key: &str, plain: &[u8]) -> Vec<u8> {
        let (name, index) = &self.physical(key)[0];
        self.sealer.seal_with(*index, name, &sequenced(0, plain))
    }

    /// Compare-and-swap (see [`TokenStore::replace_if`]): stores `sealed` under `key` if
    /// the entry is still `expected` (from [`get`](Self::get); `None`: there is none), with
    /// the next sequence number, under the current key's name and under every previous
    /// key's name that held an entry. Returns whether the current key's name took it.
    pub(crate) async fn replace_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        sealed: &[u8],
        ttl: Duration,
    ) -> Result<bool> {
        let physical = self.physical(key);
        let expected = expected.map_or_else(|| vec![None; physical.len()], parse_snapshot);
        let Some((_, plain)) = self
            .sealer
            .open(&physical[0].0, sealed)
            .map(|plain| unsequenced(&plain))
        else {
            return Err(Error::Store(
                "an entry to store does not open under its own key".into(),
            ));
        };
        let seq = 1 + physical
            .iter()
            .zip(&expected)
            .filter_map(|((name, _), entry)| {
                let plain = self.sealer.open(name, entry.as_deref()?)?;
                Some(unsequenced(&plain).0)
            })
            .max()
            .unwrap_or(0);
        let content = sequenced(seq, &plain);
        let mut swapped = false;
        for (position, (name, index)) in physical.iter().enumerate() {
            let before = expected.get(position).cloned().flatten();
            if position > 0 && before.is_none() {
                continue;
            }
            let entry = self.sealer.seal_with(*index, name, &content);
            let done = self
                .call(
                    "swap an entry",
                    self.store.replace_if(name, before.as_deref(), &entry, ttl),
                )
                .await?;
            if position == 0 {
                swapped = done;
                if !done {
                    break;
                }
            }
        }
        Ok(swapped)
    }

    /// Compare-and-delete (see [`TokenStore::delete_if`]) of what [`get`](Self::get) read
    /// under each name.
    pub(crate) async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<bool> {
        let mut deleted = false;
        for ((name, _), entry) in self.physical(key).iter().zip(parse_snapshot(expected)) {
            if let Some(entry) = entry {
                deleted |= self
                    .call("delete an entry", self.store.delete_if(name, &entry))
                    .await?;
            }
        }
        Ok(deleted)
    }

    /// Takes the lease on `key` with `fence`, under every name (all or none).
    pub(crate) async fn try_lease(&self, key: &str, fence: &str) -> Result<bool> {
        let physical = self.physical(key);
        for (taken, (name, _)) in physical.iter().enumerate() {
            let held = self
                .call(
                    "take a lease",
                    self.store.try_lease(name, fence, self.lease_ttl),
                )
                .await;
            if !matches!(held, Ok(true)) {
                for (name, _) in &physical[..taken] {
                    let _ = self
                        .call("release a lease", self.store.release(name, fence))
                        .await;
                }
                return held;
            }
        }
        Ok(true)
    }

    /// Releases the lease on `key` if `fence` holds it, under every name.
    pub(crate) async fn release(&self, key: &str, fence: &str) -> Result<()> {
        let mut result = Ok(());
        for (name, _) in self.physical(key) {
            let released = self
                .call("release a lease", self.store.release(&name, fence))
                .await;
            result = result.and(released);
        }
        result
    }

    /// Runs `work` while holding the lease on `key` with `fence`, renewing it every third
    /// of its TTL: a refresh that takes longer than the TTL keeps the lease, and another
    /// process never spends the refresh token meanwhile.
    pub(crate) async fn renewing<T>(
        &self,
        key: &str,
        fence: &str,
        work: impl Future<Output = T>,
    ) -> T {
        let renew = async {
            let every = (self.lease_ttl / RENEWALS_PER_TTL).max(Duration::from_millis(1));
            loop {
                tokio::time::sleep(every).await;
                for (name, _) in self.physical(key) {
                    let _ = self
                        .call(
                            "renew a lease",
                            self.store.renew(&name, fence, self.lease_ttl),
                        )
                        .await;
                }
            }
        };
        alongside(work, renew).await
    }

    /// Waits at most `max` for `key` to change (see [`TokenStore::changed`]).
    pub(crate) async fn changed(&self, key: &str, max: Duration) {
        let name = &self.physical(key)[0].0;
        let _ = tokio::time::timeout(max.saturating_mul(2), self.store.changed(name, max)).await;
    }
}

/// Runs `work` to its end, and `side` alongside it for as long as `side` runs (a lease's
/// renewals, which end only when the lease is lost).
pub(crate) async fn alongside<T>(
    work: impl Future<Output = T>,
    side: impl Future<Output = ()>,
) -> T {
    tokio::pin!(work);
    tokio::pin!(side);
    let mut side_done = false;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(done) = work.as_mut().poll(cx) {
            return std::task::Poll::Ready(done);
        }
        if !side_done && side.as_mut().poll(cx).is_ready() {
            side_done = true;
        }
        std::task::Poll::Pending
    })
    .await
}

/// `plain` with sequence number `seq`.
fn sequenced(seq: u64, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + plain.len());
    out.push(SEQUENCED);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(plain);
    out
}

/// The sequence number and the source's bytes of opened content.
fn unsequenced(content: &[u8]) -> (u64, Vec<u8>) {
    match content.split_first() {
        Some((&SEQUENCED, rest)) if rest.len() >= 8 => {
            let (seq, plain) = rest.split_at(8);
            let seq = u64::from_be_bytes(seq.try_into().expect("eight bytes"));
            (seq, plain.to_vec())
        }
        _ => (0, content.to_vec()),
    }
}

/// What was read under each name, as one byte string: per name, 0, or 1 and the length
/// (4 bytes, little-endian) and the entry.
fn snapshot(entries: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        match entry {
            None => out.push(0),
            Some(bytes) => {
                out.push(1);
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }
    out
}

fn parse_snapshot(mut bytes: &[u8]) -> Vec<Option<Vec<u8>>> {
    let mut entries = Vec::new();
    while let Some((&present, rest)) = bytes.split_first() {
        if present == 0 {
            entries.push(None);
            bytes = rest;
            continue;
        }
        let Some((len, rest)) = rest.split_first_chunk::<4>() else {
            break;
        };
        let len = u32::from_le_bytes(*len) as usize;
        let Some((entry, rest)) = rest.split_at_checked(len) else {
            break;
        };
        entries.push(Some(entry.to_vec()));
        bytes = rest;
    }
    entries
}

impl fmt::Debug for SourceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceStore")
            .field("store", &self.store)
            .field("key", &self.names[0].0)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_and_sequence_numbers_round_trip() {
        let entries = vec![Some(b"abc".to_vec()), None, Some(Vec::new())];
        assert_eq!(parse_snapshot(&snapshot(&entries)), entries);
        assert_eq!(unsequenced(&sequenced(7, b"rt")), (7, b"rt".to_vec()));
        assert_eq!(unsequenced(b"{\"v\":1}"), (0, b"{\"v\":1}".to_vec()));
    }
}
