//! Token stores: one token for a whole fleet of processes (replicas, CronJobs, CLIs), one
//! refresh fleet-wide, and tokens that outlive a restart.
//!
//! A [`TokenProvider`](crate::TokenProvider) built with
//! [`store`](crate::TokenProviderBuilder::store) looks in the store before it asks the token
//! endpoint, and only one process of the fleet — the holder of the store's **lease** — asks;
//! the others wait for the token it stores. The store sees only opaque bytes under opaque
//! keys: entries are sealed by the provider (see [`StoreConfig`]) before they reach it, and a
//! key is a hash of what determines the token, never a secret.
//!
//! - The hot path never touches the store: a cached token is read from memory as always. The
//!   store is consulted when a refresh starts (no token yet, its proactive point, a
//!   rejection).
//! - A store that is down, slow or returns garbage is never worse than no store: every call
//!   has a timeout ([`DEFAULT_STORE_TIMEOUT`](crate::defaults::DEFAULT_STORE_TIMEOUT)), and on
//!   any failure the provider falls back to its own token request, logs one WARN per outage,
//!   and shows it in [`Health::store_ok`](crate::Health::store_ok).
//! - Entries that do not open (tampered, copied from another key, sealed with another key,
//!   garbage, an unknown format) or that have expired by this process's clock are never
//!   handed out.
//!
//! [`FileStore`] (a directory, for processes on one host) is always available, `RedisStore`
//! (a fleet on many hosts) with the feature `redis`. To put the store on something else,
//! implement [`TokenStore`].
//!
//! # DPoP-bound tokens
//!
//! A DPoP-bound token ([`TokenEndpoint::dpop`](crate::TokenEndpoint::dpop)) is of use only
//! with its key: the store key of the built-in grants includes the key's thumbprint, and a
//! stored DPoP token is handed out only to a provider whose source has that key. A fleet
//! shares DPoP tokens only if it shares the key (the same PEM in every process); processes
//! with keys of their own each fetch their own.
//!
//! # Clock skew
//!
//! An entry records when its token was issued by the wall clock of the process that fetched
//! it; a reader places the expiry by its own clock and never lets a token live longer than
//! its lifetime from now. A reader whose clock runs behind the writer's sees the token
//! expire later than it does: skew up to the hard margin (60 s by default, less the
//! request's time in flight) is tolerated; keep the fleet's clocks synchronised (NTP) well
//! inside that.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), token_refresh::Error> {
//! use std::time::Duration;
//! use token_refresh::store::FileStore;
//! use token_refresh::{AccessToken, TokenProvider};
//!
//! let dir = std::env::temp_dir().join(format!("token-refresh-doc-{}", std::process::id()));
//! let provider = TokenProvider::builder(|| async {
//!     AccessToken::new("t0k3n", Duration::from_secs(3600))
//! })
//! .store(FileStore::new(&dir).encryption_key([7; 32]))
//! .store_key("doc-example")
//! .try_build()?;
//! assert_eq!(provider.token().await?.expose_secret(), "t0k3n");
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```

mod entry;
mod file;
mod key;
#[cfg(feature = "redis")]
mod redis;
mod seal;
mod shared;

use std::fmt;
use std::time::Duration;

pub(crate) use entry::{decode, encode};
pub use file::FileStore;
pub(crate) use key::{KeyBuilder, named as named_key};
#[cfg(feature = "redis")]
pub use redis::RedisStore;
pub(crate) use seal::Sealer;
pub use shared::SourceStore;

/// What a store call fails with: any error of the backend. The provider logs it (once per
/// outage) and falls back to the token endpoint; it never reaches a caller.
pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// Where a fleet keeps its shared tokens: entries (opaque bytes per key, with a lifetime) and
/// leases (who refreshes). Implement it to put tokens in another store (a database, a KV
/// service); the provider seals entries before they reach it and gives every call a
/// timeout.
///
/// Implementations must make [`try_lease`](Self::try_lease) atomic (one holder per key at a
/// time) and [`release`](Self::release) and [`delete_if`](Self::delete_if) conditional
/// (compare-and-delete): a late caller must never delete what another one wrote.
#[async_trait::async_trait]
pub trait TokenStore: Send + Sync + fmt::Debug + 'static {
    /// The entry under `key`, if there is one.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores `entry` under `key`, replacing what is there; it may be dropped after `ttl`.
    async fn put(&self, key: &str, entry: &[u8], ttl: Duration) -> Result<(), StoreError>;

    /// Deletes the entry under `key` only if it is still exactly `expected`; returns whether
    /// it did.
    async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError>;

    /// Replaces the entry under `key` with `entry` only if it is still exactly `expected`
    /// (`None`: only if there is no entry); returns whether it did. This is what makes the
    /// rotation of a refresh token safe across processes
    /// ([`RefreshToken`](crate::RefreshToken)): a store that implements it must do it
    /// atomically, and say so with [`swaps`](Self::swaps). The default fails; the
    /// access-token paths never call it.
    async fn replace_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        entry: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let _ = (key, expected, entry, ttl);
        Err(
            "this token store does not implement TokenStore::replace_if (compare-and-swap), \
             which rotating refresh tokens through a store needs"
                .into(),
        )
    }

    /// Whether [`replace_if`](Self::replace_if) is implemented (atomically). The
    /// refresh-token grant refuses, before it spends anything, to share a refresh token
    /// through a store that cannot swap it. Default: `false`.
    fn swaps(&self) -> bool {
        false
    }

    /// Takes the refresh lease for `key`, marked with `fence` (unique per attempt), unless
    /// another holder has it; it lapses after `ttl` if never released. Returns whether this
    /// caller holds it now.
    async fn try_lease(&self, key: &str, fence: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Releases the lease for `key` if `fence` still holds it (never another holder's).
    async fn release(&self, key: &str, fence: &str) -> Result<(), StoreError>;

    /// Waits at most `max` for the entry under `key` to change: a store with notifications
    /// returns when one arrives. The default sleeps `max` (polling); the provider passes a
    /// backoff with jitter.
    async fn changed(&self, key: &str, max: Duration) {
        let _ = key;
        tokio::time::sleep(max).await;
    }

    /// How the provider seals this store's entries. The default, neither a key nor
    /// plaintext allowed, makes [`try_build`](crate::TokenProviderBuilder::try_build) refuse
    /// the store: a bearer token readable by anyone with access to the store is a leak.
    fn sealing(&self) -> StoreConfig {
        StoreConfig::default()
    }
}

/// How a store's entries are sealed ([`TokenStore::sealing`]): with an encryption key, or in
/// the clear by explicit permission.
#[derive(Clone, Default)]
pub struct StoreConfig {
    pub(crate) key: Option<[u8; 32]>,
    pub(crate) allow_plaintext: bool,
}

impl StoreConfig {
    /// Entries sealed with this 32-byte key (XChaCha20-Poly1305, the store key as associated
    /// data). Every process of the fleet needs the same key.
    pub fn encryption_key(key: [u8; 32]) -> Self {
        Self {
            key: Some(key),
            allow_plaintext: false,
        }
    }

    /// Entries stored in the clear: anyone who can read the store can use the tokens.
    pub fn plaintext() -> Self {
        Self {
            key: None,
            allow_plaintext: true,
        }
    }

    /// The encryption key from the environment variable `name`: 64 hex digits or standard
    /// base64 of 32 bytes.
    pub fn encryption_key_from_env(name: &str) -> crate::Result<Self> {
        let value = std::env::var(name).map_err(|_| {
            crate::Error::Config(format!(
                "the store's encryption key variable {name} is not set (want 32 bytes: 64 hex digits or base64)"
            ))
        })?;
        parse_key(value.trim())
            .map(Self::encryption_key)
            .ok_or_else(|| {
                crate::Error::Config(format!(
                    "{name} is not a 32-byte key: give 64 hex digits or base64 of 32 bytes"
                ))
            })
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("encryption_key", &self.key.map(|_| "[redacted]"))
            .field("allow_plaintext", &self.allow_plaintext)
            .finish()
    }
}

fn parse_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?
    };
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_from_hex_and_base64_only_at_32_bytes() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(parse_key(&hex).unwrap()[31], 0xff);
        assert_eq!(
            parse_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap(),
            [0; 32]
        );
        assert!(parse_key("abcd").is_none());
        assert!(parse_key(&"00".repeat(33)).is_none());
    }

    #[test]
    fn the_key_is_redacted() {
        let debug = format!("{:?}", StoreConfig::encryption_key([0x41; 32]));
        assert!(
            debug.contains("[redacted]") && !debug.contains("65"),
            "{debug}"
        );
    }
}
