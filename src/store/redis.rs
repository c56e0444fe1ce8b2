//! [`RedisStore`]: a fleet's tokens in Redis (or Valkey).

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{StoreConfig, StoreError, TokenStore};

/// Default [`key_prefix`](RedisStore::key_prefix): keeps the crate's keys apart from the
/// application's in a shared Redis.
const DEFAULT_PREFIX: &str = "token-refresh:";

/// Deletes `KEYS[1]` only if it still holds `ARGV[1]`: the release of a lease (only by the
/// holder whose fence it is) and the removal of a rejected token (only if no other process
/// has stored a newer one), never a bare `DEL`.
const COMPARE_AND_DELETE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Sets `KEYS[1]` to `ARGV[3]` (expiring in `ARGV[4]` ms) only if it holds `ARGV[2]`
/// (`ARGV[1]` = `1`) or does not exist (`ARGV[1]` = `0`): the rotation of a refresh token,
/// which must never overwrite one another process stored.
const COMPARE_AND_SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
";

/// Reconnection attempts per call while Redis is unreachable: one, so that a call fails
/// fast and the provider falls back to the token endpoint instead of waiting on Redis.
const RECONNECT_RETRIES: usize = 1;

/// Tokens shared by every replica, CronJob and CLI of a fleet through Redis (feature
/// `redis`; Valkey speaks the same protocol).
///
/// - An entry is a string `{prefix}{store key}` with the sealed token, expiring with it
///   (`SET … PX`).
/// - The refresh lease is `{prefix}{store key}:lease`, taken with `SET NX PX` and a random
///   fence per attempt, released by a compare-and-delete script: a lease that lapsed and
///   was taken by another process is never released by the old holder.
/// - Waiting replicas poll the entry with backoff and jitter (25 ms doubling to 500 ms).
/// - Every call has the provider's store timeout; the connection (a redis-rs
///   `ConnectionManager`, reconnecting by itself) is opened at the first call.
///
/// Refused by the provider without an [`encryption_key`](Self::encryption_key) unless
/// [`allow_plaintext`](Self::allow_plaintext) is set: a bearer token readable by anyone with
/// access to Redis is a credential leak.
///
/// ```no_run
/// # fn main() -> Result<(), token_refresh::Error> {
/// use token_refresh::store::RedisStore;
/// use token_refresh::{JwtBearer, ServiceAccount, TokenProvider};
///
/// let store = RedisStore::new("redis://redis.internal:6379")?
///     .encryption_key_from_env("TOKEN_REFRESH_STORE_KEY")?;
/// let provider = TokenProvider::builder(JwtBearer::new(ServiceAccount::discover()?))
///     .store(store)
///     .try_build()?;
/// # drop(provider); Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisStore {
    client: redis::Client,
    connection: OnceLock<ConnectionManager>,
    prefix: String,
    config: StoreConfig,
    script: redis::Script,
    swap: redis::Script,
}

impl RedisStore {
    /// A store at `url` (`redis://host:port/db`, `rediss://` for TLS where redis-rs has it,
    /// `redis+unix:///path`). Does no I/O; fails with [`Error::Config`](crate::Error::Config)
    /// for a URL that does not parse.
    pub fn new(url: &str) -> crate::Result<Self> {
        let client = redis::Client::open(url).map_err(|e| {
            crate::Error::Config(format!(
                "the Redis URL does not parse ({}): use redis://host:port/db",
                e.kind_name_or_detail()
            ))
        })?;
        Ok(Self {
            client,
            connection: OnceLock::new(),
            prefix: DEFAULT_PREFIX.to_owned(),
            config: StoreConfig::default(),
            script: redis::Script::new(COMPARE_AND_DELETE),
            swap: redis::Script::new(COMPARE_AND_SWAP),
        })
    }

    /// Prefix of every key this store writes. Default: `token-refresh:`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Seals entries with this 32-byte key (XChaCha20-Poly1305). Every process of the fleet
    /// needs the same key. Default: none.
    pub fn encryption_key(mut self, key: [u8; 32]) -> Self {
        self.config = StoreConfig::encryption_key(key);
        self
    }

    /// Seals entries with the key in the environment variable `name` (64 hex digits or
    /// base64 of 32 bytes); fails naming the variable if it is unset or not such a key.
    pub fn encryption_key_from_env(mut self, name: &str) -> crate::Result<Self> {
        self.config = StoreConfig::encryption_key_from_env(name)?;
        Ok(self)
    }

    /// Stores tokens in the clear when no encryption key is set: anyone who can read Redis
    /// can then use them. Default: `false`.
    pub fn allow_plaintext(mut self, allow: bool) -> Self {
        self.config.allow_plaintext = allow;
        self
    }

    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(Duration::from_millis(100));
        let connection = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(self.connection.get_or_init(|| connection).clone())
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn lease_key(&self, key: &str) -> String {
        format!("{}{key}:lease", self.prefix)
    }

    async fn compare_and_delete(&self, key: String, expected: &[u8]) -> Result<bool, StoreError> {
        let deleted: i64 = self
            .script
            .key(key)
            .arg(expected)
            .invoke_async(&mut self.connection()?)
            .await?;
        Ok(deleted > 0)
    }
}

/// Milliseconds for `PX`, at least one (Redis refuses 0).
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

trait KindName {
    fn kind_name_or_detail(&self) -> String;
}

impl KindName for redis::RedisError {
    fn kind_name_or_detail(&self) -> String {
        // The URL may carry a password: say what is wrong, never echo the URL.
        format!("{:?}", self.kind())
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection info may hold a password: show only where it points.
        let info = self.client.get_connection_info();
        f.debug_struct("RedisStore")
            .field("addr", &info.addr().to_string())
            .field("key_prefix", &self.prefix)
            .field("sealing", &self.config)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TokenStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.entry_key(key))
            .query_async(&mut self.connection()?)
            .await?;
        Ok(value)
    }

    async fn put(&self, key: &str, entry: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let () = redis::cmd("SET")
            .arg(self.entry_key(key))
            .arg(entry)
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut self.connection()?)
            .await?;
        Ok(())
    }

    async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        self.compare_and_delete(self.entry_key(key), expected).await
    }

    async fn replace_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        entry: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let swapped: i64 = self
            .swap
            .key(self.entry_key(key))
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(entry)
            .arg(millis(ttl))
            .invoke_async(&mut self.connection()?)
            .await?;
        Ok(swapped > 0)
    }

    async fn try_lease(&self, key: &str, fence: &str, ttl: Duration) -> Result<bool, StoreError> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.lease_key(key))
            .arg(fence)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut self.connection()?)
            .await?;
        Ok(taken.is_some())
    }

    async fn release(&self, key: &str, fence: &str) -> Result<(), StoreError> {
        self.compare_and_delete(self.lease_key(key), fence.as_bytes())
            .await
            .map(drop)
    }

    fn swaps(&self) -> bool {
        true
    }

    fn sealing(&self) -> StoreConfig {
        self.config.clone()
    }
}
