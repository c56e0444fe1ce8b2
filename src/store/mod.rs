//! Token stores: one token for a whole fleet of processes (replicas, CronJobs, CLIs), one
//! refresh fleet-wide, and tokens that outlive a restart.
//!
//! A [`TokenProvider`](crate::TokenProvider) built with
//! [`store`](crate::TokenProviderBuilder::store) looks in the store before it asks the token
//! endpoint, and only one process of the fleet — the holder of the store's **lease** — asks;
//! the others wait for the token it stores, woken by the store where it can notify them
//! (Redis pub/sub), else polling. The store sees only opaque bytes under opaque keys:
//! entries are sealed by the provider (see [`StoreConfig`]) before they reach it, and a key
//! is a keyed hash of what determines the token, never a secret.
//!
//! - The hot path never touches the store: a cached token is read from memory as always. The
//!   store is consulted when a refresh starts (no token yet, its proactive point, a
//!   rejection).
//! - A store that is down, slow or returns garbage is never worse than no store: every call
//!   has a timeout ([`DEFAULT_STORE_TIMEOUT`](crate::defaults::DEFAULT_STORE_TIMEOUT)), and on
//!   any failure the provider falls back to its own token request, logs one WARN per outage,
//!   and shows it in [`Health::store_ok`](crate::Health::store_ok) and
//!   [`Health::store_error`](crate::Health::store_error).
//! - Entries that do not open (tampered, copied from another key or key prefix, sealed with
//!   another encryption key, garbage, an unknown format) or that have expired by this
//!   process's clock are never handed out.
//!
//! [`FileStore`] (a directory, for processes on one host) is always available, `RedisStore`
//! (a fleet on many hosts, on one Redis server, a Redis Cluster or the master Redis Sentinel
//! names) with the feature `redis`.
//! To put the store on something else, implement [`TokenStore`].
//!
//! # The encryption key
//!
//! Make one with `openssl rand -hex 32` (64 hex digits; base64 of 32 bytes works too) and
//! give the same key to every process of the fleet, e.g. in a variable read by
//! `encryption_key_from_env`. It seals the entries (XChaCha20-Poly1305) and, through a key
//! derived from it, names them: the key of an entry is an HMAC-SHA-256 of the source's
//! settings and secret, so that nobody who can list the store's keys can compute it or
//! test a guessed secret against it. To move a fleet to a new key without a failed call,
//! give it `encryption_keys([new, old])` first (the first key seals, any opens), then
//! `[new]`: the procedure is on `RedisStore::encryption_keys`. With plaintext allowed there
//! is no key: names are then plain hashes of the settings and secret, which anyone who
//! guesses the secret can compute.
//!
//! # Where the key prefix shows
//!
//! `RedisStore` writes every key under its `key_prefix` (`token-refresh:` by default),
//! then the entry's name in braces (a Redis Cluster hash tag):
//! `token-refresh:{jwt-bearer-3fa2…}` (the sealed token), `…:lease` (the refresh lease),
//! `…}.refresh-token` (a shared refresh token), and the pub/sub channel `…:changed`. The
//! prefix is sealed into every entry with its name: an entry copied under another prefix or
//! another name does not open. `FileStore` names its files `{name}.entry`, `{name}.lease`
//! and `{name}.mutex` in its directory.
//!
//! # Faults
//!
//! | fault | what the fleet sees |
//! |---|---|
//! | the store is down or unreachable | each process fetches its own tokens (one request per process per lifetime); one WARN per outage; `Health::store_ok` false, `store_error` says why and when |
//! | the store comes back | the provider reads its entry once a second while the store fails: `store_ok` is true within about a second; a broken Redis connection is replaced and the call sent once more, so the next refresh shares again |
//! | the store is slow | every call times out after the store timeout (1 s) and counts as down |
//! | the lease holder dies mid-refresh (SIGKILL, a lost host) | its lease, no longer renewed, lapses within [`DEFAULT_STORE_LEASE_TTL`](crate::defaults::DEFAULT_STORE_LEASE_TTL) (1 s); a waiter takes it and fetches |
//! | the lease holder is alive but stuck | waiters fetch for themselves after the lease TTL plus the fetch timeout, or half their `max_wait`, whichever is first; a caller whose wait ends first gets `Error::WaitTimeout` saying it waited on another process's lease |
//! | a notification is lost | waiters poll (25 ms doubling to 250 ms) |
//! | a Redis Cluster failover or slot move | the client follows it; a call that still fails falls back as above |
//! | a Redis Sentinel failover | the first call on a connection to the old master finds it closed (or refusing writes), asks the sentinels for the new one and is sent once more |
//! | the process uses another Tokio runtime, the first one shut down | each runtime has its own connection |
//! | garbage, a tampered entry, an entry of another key, prefix or format | not opened, ignored, replaced at the next refresh |
//! | a store refused at `build()` (no key, no plaintext) | every call fails with the configuration error; `Health::last_error` and `store_error` say so |
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
mod status;

use std::fmt;
use std::time::Duration;

pub(crate) use entry::{decode, encode};
pub use file::FileStore;
pub(crate) use key::{KeyBuilder, named as named_key};
#[cfg(feature = "redis")]
pub use redis::RedisStore;
pub(crate) use seal::Sealer;
pub use shared::SourceStore;
pub(crate) use shared::alongside;
pub(crate) use status::StoreStatus;

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
    /// another holder has it; it lapses after `ttl` if never released or renewed. Returns
    /// whether this caller holds it now.
    async fn try_lease(&self, key: &str, fence: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Releases the lease for `key` if `fence` still holds it (never another holder's).
    async fn release(&self, key: &str, fence: &str) -> Result<(), StoreError>;

    /// Extends the lease for `key` to `ttl` from now if `fence` still holds it; returns
    /// whether it does. The holder renews its lease every third of its TTL while it
    /// fetches, so a short TTL is safe for a live holder and a dead one (SIGKILLed, its
    /// host gone) holds up the fleet for at most that TTL. Implement it compare-and-expire
    /// (only the holder's own fence). The default answers `false` (not renewed): the lease
    /// then lapses after the TTL it was taken with, and a refresh that takes longer may be
    /// joined by a second process's (one extra token request).
    async fn renew(&self, key: &str, fence: &str, ttl: Duration) -> Result<bool, StoreError> {
        let _ = (key, fence, ttl);
        Ok(false)
    }

    /// Waits at most `max` for the entry under `key` to change: a store with notifications
    /// returns when one arrives. The default sleeps `max` (polling); the provider passes a
    /// backoff with jitter.
    async fn changed(&self, key: &str, max: Duration) {
        let _ = key;
        tokio::time::sleep(max).await;
    }

    /// Notifications: starts watching `key` (once; later calls cost no I/O) and returns how
    /// many changes of it this store has been told of so far, for
    /// [`changed_since`](Self::changed_since). A waiting provider calls it *before* it looks
    /// at the entry, so that a change between its look and its wait still wakes it. `None`
    /// (the default): no notifications, the provider polls with
    /// [`changed`](Self::changed).
    async fn watch(&self, key: &str) -> Option<u64> {
        let _ = key;
        None
    }

    /// Waits at most `max` until this store has been told of more changes of `key` than
    /// `seen` (from [`watch`](Self::watch)); returns at once if it already has. Changes
    /// include a stored entry, a deleted one and a released lease. The default polls
    /// ([`changed`](Self::changed)).
    async fn changed_since(&self, key: &str, seen: u64, max: Duration) {
        let _ = seen;
        self.changed(key, max).await;
    }

    /// How the provider seals this store's entries. The default, neither a key nor
    /// plaintext allowed, makes [`try_build`](crate::TokenProviderBuilder::try_build) refuse
    /// the store: a bearer token readable by anyone with access to the store is a leak.
    fn sealing(&self) -> StoreConfig {
        StoreConfig::default()
    }
}

/// How a store's entries are sealed ([`TokenStore::sealing`]): with encryption keys (the
/// first seals, any opens), or in the clear by explicit permission; and the key prefix that
/// is bound into every sealed entry.
#[derive(Clone, Default)]
pub struct StoreConfig {
    /// The current key first, then previous ones still accepted.
    pub(crate) keys: Vec<[u8; 32]>,
    pub(crate) allow_plaintext: bool,
    /// The store's key prefix: part of every entry's associated data.
    pub(crate) prefix: String,
}

impl StoreConfig {
    /// Entries sealed with this 32-byte key (XChaCha20-Poly1305, the key prefix and the
    /// store key as associated data). Every process of the fleet needs the same key. Make
    /// one with `openssl rand -hex 32`.
    pub fn encryption_key(key: [u8; 32]) -> Self {
        Self::encryption_keys([key])
    }

    /// Entries sealed with the first of `keys` and opened with any of them: the current
    /// key first, then the previous ones a fleet rolling to it still uses (see
    /// [`RedisStore::encryption_keys`](crate::store) for the procedure). No keys at all is
    /// the same as none set.
    pub fn encryption_keys(keys: impl IntoIterator<Item = [u8; 32]>) -> Self {
        Self {
            keys: keys.into_iter().collect(),
            allow_plaintext: false,
            prefix: String::new(),
        }
    }

    /// Entries stored in the clear: anyone who can read the store can use the tokens.
    pub fn plaintext() -> Self {
        Self {
            keys: Vec::new(),
            allow_plaintext: true,
            prefix: String::new(),
        }
    }

    /// Binds `prefix` (the store's key prefix, the namespace it writes under) into every
    /// entry's associated data: an entry copied under another prefix does not open. Default:
    /// empty.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The encryption key from the environment variable `name`: 64 hex digits or standard
    /// base64 of 32 bytes.
    pub fn encryption_key_from_env(name: &str) -> crate::Result<Self> {
        let keys = keys_from_env(name)?;
        if keys.len() > 1 {
            return Err(crate::Error::Config(format!(
                "{name} holds {} keys: read a list with encryption_keys_from_env",
                keys.len()
            )));
        }
        Ok(Self::encryption_keys(keys))
    }

    /// The encryption keys from the environment variable `name`: the current key first,
    /// then previous ones, separated by commas or whitespace, each 64 hex digits or
    /// standard base64 of 32 bytes.
    pub fn encryption_keys_from_env(name: &str) -> crate::Result<Self> {
        keys_from_env(name).map(Self::encryption_keys)
    }
}

/// The keys in the environment variable `name`: at least one, each 32 bytes.
fn keys_from_env(name: &str) -> crate::Result<Vec<[u8; 32]>> {
    let value = std::env::var(name).map_err(|_| {
        crate::Error::Config(format!(
            "the store's encryption key variable {name} is not set (want 32 bytes: 64 hex \
             digits or base64, e.g. from `openssl rand -hex 32`)"
        ))
    })?;
    parse_keys(name, &value)
}

/// The keys in `value` (of the variable `name`), separated by commas or whitespace.
fn parse_keys(name: &str, value: &str) -> crate::Result<Vec<[u8; 32]>> {
    let keys = value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|part| !part.is_empty())
        .enumerate()
        .map(|(index, part)| {
            parse_key(part).ok_or_else(|| {
                crate::Error::Config(format!(
                    "key {} in {name} is not a 32-byte key: give 64 hex digits or base64 of \
                     32 bytes (`openssl rand -hex 32` makes one)",
                    index + 1
                ))
            })
        })
        .collect::<crate::Result<Vec<_>>>()?;
    if keys.is_empty() {
        return Err(crate::Error::Config(format!(
            "the store's encryption key variable {name} is empty (want 32 bytes: 64 hex \
             digits or base64, e.g. from `openssl rand -hex 32`)"
        )));
    }
    Ok(keys)
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field(
                "encryption_keys",
                &format_args!("[{} redacted]", self.keys.len()),
            )
            .field("allow_plaintext", &self.allow_plaintext)
            .field("key_prefix", &self.prefix)
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
        let debug = format!(
            "{:?}",
            StoreConfig::encryption_keys([[0x41; 32], [0x42; 32]])
        );
        assert!(
            debug.contains("[2 redacted]") && !debug.contains("65") && !debug.contains("41"),
            "{debug}"
        );
    }

    #[test]
    fn key_lists_parse_in_order_and_say_which_key_is_bad() {
        let name = "TOKEN_STORE_KEYS";
        let (a, b) = ("0a".repeat(32), "0b".repeat(32));
        let keys = parse_keys(name, &format!("{a}, {b}")).unwrap();
        assert_eq!(keys, vec![[0x0a; 32], [0x0b; 32]]);
        let error = parse_keys(name, &format!("{a} nonsense")).unwrap_err();
        assert!(
            error.to_string().contains("key 2 in TOKEN_STORE_KEYS"),
            "{error}"
        );
        assert!(!error.to_string().contains(&a), "{error}");
        assert!(parse_keys(name, " , ").is_err());
        let missing =
            StoreConfig::encryption_keys_from_env("TOKEN_REFRESH_UNSET_VARIABLE_FOR_TESTS");
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("openssl rand -hex 32")
        );
    }
}
