//! [`RedisStore`]: a fleet's tokens in Redis (or Valkey), on one server, a Redis Cluster or
//! the master that Redis Sentinel names.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue,
    IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, PushKind, RedisConnectionInfo,
    RedisError, RedisFuture, ScriptInvocation, ServerErrorKind, Value,
};
use tokio::sync::Notify;

use super::{StoreConfig, StoreError, TokenStore};

/// Default [`key_prefix`](RedisStore::key_prefix): keeps the crate's keys apart from the
/// application's in a shared Redis.
const DEFAULT_PREFIX: &str = "token-refresh:";

/// Sets `KEYS[1]` to `ARGV[1]`, expiring in `ARGV[2]` ms, and announces it on the channel
/// `ARGV[3]` (none if empty): a stored token wakes the processes waiting for it.
const PUT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], 'stored') end
return 1
";

/// Deletes `KEYS[1]` only if it still holds `ARGV[1]`, and announces it on `ARGV[2]`: the
/// release of a lease (only by the holder whose fence it is) and the removal of a rejected
/// token (only if no other process has stored a newer one), never a bare `DEL`.
const COMPARE_AND_DELETE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], 'deleted') end
  return 1
end
return 0
";

/// Sets `KEYS[1]` to `ARGV[3]` (expiring in `ARGV[4]` ms) only if it holds `ARGV[2]`
/// (`ARGV[1]` = `1`) or does not exist (`ARGV[1]` = `0`), and announces it on `ARGV[5]`:
/// the rotation of a refresh token, which must never overwrite one another process stored.
const COMPARE_AND_SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], 'stored') end
return 1
";

/// Extends the lease `KEYS[1]` to `ARGV[2]` ms only if it still holds the fence `ARGV[1]`:
/// a holder renews its own lease, never one another process took after it lapsed.
const COMPARE_AND_EXPIRE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Longest a connection attempt may take. Every store call has the provider's timeout
/// around it (1 s by default) as well; this bounds an attempt made outside one. Redis on a
/// healthy network connects in milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest a Redis Cluster command is retried for (a failover moves the slot, a node
/// restarts) before it fails: inside the provider's store timeout (1 s by default), so
/// that a cluster that does not recover in time costs a fallback token request, not a
/// caller's wait.
const CLUSTER_RETRIES: u32 = 3;
const CLUSTER_RETRY_WAIT_MAX_MS: u64 = 200;

/// Longest the search for the master through Redis Sentinel may take: asking the sentinels
/// (each connection bounded by redis-rs's own timeout) and connecting to the master they
/// name. Every store call has the provider's store timeout around it as well.
const SENTINEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Tokens shared by every replica, CronJob and CLI of a fleet through Redis (feature
/// `redis`; Valkey speaks the same protocol), on one server ([`new`](Self::new)), a Redis
/// Cluster ([`cluster`](Self::cluster): ElastiCache, MemoryDB, Redis Enterprise in cluster
/// mode) or the master that Redis Sentinel names ([`sentinel`](Self::sentinel)).
///
/// # Keys
///
/// Every key starts with the [`key_prefix`](Self::key_prefix) (`token-refresh:`), followed
/// by the entry's name in braces, a Redis Cluster hash tag: an entry, its lease and its
/// refresh-token entry share a slot, so every script touches one node.
///
/// | key | holds |
/// |---|---|
/// | `token-refresh:{jwt-bearer-3fa2…}` | the sealed access token, expiring with it (`SET … PX`) |
/// | `token-refresh:{jwt-bearer-3fa2…}:lease` | the refresh lease: a random fence per attempt (`SET NX PX`), renewed by its holder, released by compare-and-delete |
/// | `token-refresh:{refresh-token-9c1e…}.refresh-token` | a shared refresh token, sealed, swapped by compare-and-swap |
///
/// With an encryption key, the name (`jwt-bearer-3fa2…`) is a keyed hash (HMAC-SHA-256
/// under a key derived from the encryption key) of the source's settings and secret:
/// nobody who can list the keys can compute it, or test a guessed secret against it. A name
/// the application chose ([`TokenProviderBuilder::store_key`]) shows as it is
/// (`named-billing-api`). The prefix and the name are sealed into each entry, so an entry
/// copied under another key or prefix does not open.
///
/// # Waiting processes
///
/// A process that waits for another's refresh subscribes to the channel
/// `{key}:changed` (Redis pub/sub, over RESP3 on the store's own connection), and is woken
/// within a millisecond of the token being stored. Polling (25 ms doubling to 250 ms)
/// remains the fallback: when a notification is lost, when the server has no RESP3 (Redis
/// before 6) or with [`notifications(false)`](Self::notifications).
///
/// # Faults
///
/// Every call has the provider's store timeout. The store keeps one connection per Tokio
/// runtime (a provider may be used from several, and a runtime that shuts down takes its
/// connections with it), opened at the first call on it; a call that finds its connection
/// broken (Redis restarted, a failover, a master demoted to a replica that refuses writes)
/// reconnects and is sent once more; through Sentinel, the reconnection asks the sentinels
/// for the master again. While Redis
/// fails, every process falls back to its own token requests, and the provider asks Redis
/// once a second whether it answers again ([`Health::store_ok`](crate::Health::store_ok)).
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
/// // The key: `openssl rand -hex 32`, the same in every process of the fleet.
/// let store = RedisStore::new("redis://redis.internal:6379")?
///     .encryption_key_from_env("TOKEN_REFRESH_STORE_KEY")?;
/// let provider = TokenProvider::builder(JwtBearer::new(ServiceAccount::discover()?))
///     .store(store)
///     .try_build()?;
/// # drop(provider); Ok(()) }
/// ```
///
/// [`TokenProviderBuilder::store_key`]: crate::TokenProviderBuilder::store_key
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisStore {
    target: Target,
    prefix: String,
    config: StoreConfig,
    notifications: bool,
    connections: Arc<Connections>,
    watches: Arc<Watches>,
    put: redis::Script,
    delete: redis::Script,
    swap: redis::Script,
    renew: redis::Script,
}

/// Where the store connects.
enum Target {
    Single(Client),
    Cluster(Vec<ConnectionInfo>),
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        /// The name the sentinels monitor the master under.
        service: String,
        /// The master's database, user and password.
        master: RedisConnectionInfo,
    },
}

impl RedisStore {
    /// A store at `url` (`redis://host:port/db`, `rediss://` for TLS where redis-rs has it,
    /// `redis+unix:///path`). Does no I/O; fails with [`Error::Config`](crate::Error::Config)
    /// for a URL that does not parse.
    pub fn new(url: &str) -> crate::Result<Self> {
        let client = Client::open(url).map_err(|e| {
            crate::Error::Config(format!(
                "the Redis URL does not parse ({}): use redis://host:port/db",
                e.kind_name_or_detail()
            ))
        })?;
        Ok(Self::with_target(Target::Single(client)))
    }

    /// A store on the Redis Cluster that `nodes` belong to (`redis://host:port` each; any
    /// few of its nodes, the client discovers the rest and follows failovers and slot
    /// moves). Every key of an entry shares one hash tag, so each script runs on one node.
    /// Does no I/O; fails with [`Error::Config`](crate::Error::Config) for a URL that does
    /// not parse or no node at all.
    pub fn cluster<N: AsRef<str>>(nodes: impl IntoIterator<Item = N>) -> crate::Result<Self> {
        let nodes = parse_urls(nodes, "RedisStore::cluster", "node", "redis://host:port")?;
        Ok(Self::with_target(Target::Cluster(nodes)))
    }

    /// A store on the master that Redis Sentinel monitors: `sentinels` are the sentinels'
    /// URLs (`redis://host:26379`, any few of them), and `master` names the master the way a
    /// URL names a server, with the name the sentinels monitor it under as the host:
    /// `redis://mymaster`, or `redis://:password@mymaster/2` for its password and database.
    /// Each connection asks the sentinels where the master is; after a failover, the first
    /// call that finds its connection broken (or the old master refusing writes) asks them
    /// again. Does no I/O; fails with [`Error::Config`](crate::Error::Config) for a URL that
    /// does not parse or no sentinel at all.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), token_refresh::Error> {
    /// use token_refresh::store::RedisStore;
    ///
    /// let store = RedisStore::sentinel(
    ///     ["redis://sentinel-0:26379", "redis://sentinel-1:26379"],
    ///     "redis://mymaster",
    /// )?
    /// .encryption_key_from_env("TOKEN_REFRESH_STORE_KEY")?;
    /// # drop(store); Ok(()) }
    /// ```
    pub fn sentinel<N: AsRef<str>>(
        sentinels: impl IntoIterator<Item = N>,
        master: &str,
    ) -> crate::Result<Self> {
        let sentinels = parse_urls(
            sentinels,
            "RedisStore::sentinel",
            "sentinel",
            "redis://host:26379",
        )?;
        let not_a_master = |detail: String| {
            crate::Error::Config(format!(
                "the Sentinel master does not parse ({detail}): use redis://name, where name is \
                 the name the sentinels monitor it under (redis://:password@name/db for its \
                 password and database)"
            ))
        };
        let info = master
            .into_connection_info()
            .map_err(|e| not_a_master(e.kind_name_or_detail()))?;
        let ConnectionAddr::Tcp(service, _) = info.addr() else {
            return Err(not_a_master("not a redis:// URL".into()));
        };
        Ok(Self::with_target(Target::Sentinel {
            sentinels,
            service: service.clone(),
            master: info.redis_settings().clone(),
        }))
    }

    fn with_target(target: Target) -> Self {
        Self {
            target,
            prefix: DEFAULT_PREFIX.to_owned(),
            config: StoreConfig::default(),
            notifications: true,
            connections: Arc::default(),
            watches: Arc::default(),
            put: redis::Script::new(PUT),
            delete: redis::Script::new(COMPARE_AND_DELETE),
            swap: redis::Script::new(COMPARE_AND_SWAP),
            renew: redis::Script::new(COMPARE_AND_EXPIRE),
        }
    }

    /// Prefix of every key this store writes; it is sealed into every entry too, so that an
    /// entry copied under another prefix does not open. Default: `token-refresh:`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Seals entries with this 32-byte key (XChaCha20-Poly1305). Every process of the fleet
    /// needs the same key; make one with `openssl rand -hex 32`. Default: none.
    pub fn encryption_key(mut self, key: [u8; 32]) -> Self {
        self.config = StoreConfig::encryption_key(key);
        self
    }

    /// Seals entries with the first of `keys` and opens them with any: the current key
    /// first, then the previous ones that processes not yet moved to it still use.
    ///
    /// # Rotating the key
    ///
    /// Roll the fleet from key `A` to key `B` process by process:
    ///
    /// 1. Make `B` (`openssl rand -hex 32`) and give every process `[B, A]` (in the
    ///    variable of [`encryption_keys_from_env`](Self::encryption_keys_from_env):
    ///    `B,A`), in a rolling deploy. A process with `[B, A]` seals with `B` and still
    ///    opens what processes with `A` alone store: it finds their token under its `A`
    ///    name and copies it under its `B` name; a refresh token series is kept under both
    ///    names, each sealed with its own key, and leased under both.
    /// 2. Once every process has `[B, A]`, give them `[B]` (again rolling), whenever
    ///    convenient: what they need is under the `B` names by then.
    ///
    /// No call fails. The names of an entry depend on the key, so during step 1 the
    /// processes with `A` alone and those with `[B, A]` take separate leases: a token
    /// lifetime that ends during the roll may cost one token request more (one per group).
    /// Default: none.
    pub fn encryption_keys(mut self, keys: impl IntoIterator<Item = [u8; 32]>) -> Self {
        self.config = StoreConfig::encryption_keys(keys);
        self
    }

    /// Seals entries with the key in the environment variable `name` (64 hex digits or
    /// base64 of 32 bytes); fails naming the variable if it is unset or not such a key.
    pub fn encryption_key_from_env(mut self, name: &str) -> crate::Result<Self> {
        self.config = StoreConfig::encryption_key_from_env(name)?;
        Ok(self)
    }

    /// [`encryption_keys`](Self::encryption_keys) from the environment variable `name`: the
    /// current key first, then previous ones, separated by commas or whitespace (`B,A`);
    /// fails naming the variable and the position of a bad key.
    pub fn encryption_keys_from_env(mut self, name: &str) -> crate::Result<Self> {
        self.config = StoreConfig::encryption_keys_from_env(name)?;
        Ok(self)
    }

    /// Stores tokens in the clear when no encryption key is set: anyone who can read Redis
    /// can then use them, and entry names are unkeyed hashes (no key to key them with).
    /// Default: `false`.
    pub fn allow_plaintext(mut self, allow: bool) -> Self {
        self.config.allow_plaintext = allow;
        self
    }

    /// Whether waiting processes are woken through Redis pub/sub when a token is stored
    /// (and stores announce it), or only poll. Turn it off for a server whose ACL forbids
    /// `PUBLISH` and `SUBSCRIBE`. Default: `true`.
    pub fn notifications(mut self, on: bool) -> Self {
        self.notifications = on;
        self
    }

    /// `{prefix}{{tag}}{rest}`: the part of `key` before its first `.` is the hash tag,
    /// so that an entry and the source's entries next to it share a slot.
    fn entry_key(&self, key: &str) -> String {
        let (tag, rest) = key.split_at(key.find('.').unwrap_or(key.len()));
        format!("{}{{{tag}}}{rest}", self.prefix)
    }

    fn lease_key(&self, key: &str) -> String {
        format!("{}:lease", self.entry_key(key))
    }

    /// The pub/sub channel that announces changes of `key` (empty: none announced).
    fn channel(&self, key: &str) -> String {
        if self.notifications {
            format!("{}:changed", self.entry_key(key))
        } else {
            String::new()
        }
    }

    /// A connection on the current Tokio runtime (opened if there is none) and its
    /// generation.
    async fn connection(&self) -> Result<(Conn, u64), RedisError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| RedisError::from((redis::ErrorKind::Client, "no Tokio runtime")))?
            .id();
        if let Some(found) = self.connections.find(runtime) {
            return Ok(found);
        }
        let (conn, push) = self.connect().await?;
        Ok(self.connections.insert(runtime, conn, push))
    }

    /// Opens a connection: over RESP3 with the push handler when notifications are on
    /// (RESP2 without them, for a server that has no RESP3).
    async fn connect(&self) -> Result<(Conn, bool), RedisError> {
        if self.notifications {
            match self.connect_with(true).await {
                Err(error) if !error.is_io_error() && !error.is_timeout() => {
                    tracing::debug!(
                        %error,
                        "the Redis server refused RESP3: waiting processes poll instead of being notified"
                    );
                }
                result => return result.map(|conn| (conn, true)),
            }
        }
        self.connect_with(false).await.map(|conn| (conn, false))
    }

    async fn connect_with(&self, resp3: bool) -> Result<Conn, RedisError> {
        let protocol = if resp3 {
            ProtocolVersion::RESP3
        } else {
            ProtocolVersion::RESP2
        };
        let watches = Arc::clone(&self.watches);
        let push = move |info: PushInfo| {
            watches.pushed(&info);
            Ok::<(), std::convert::Infallible>(())
        };
        match &self.target {
            Target::Single(client) => {
                let info = client.get_connection_info().clone();
                let settings = info.redis_settings().clone().set_protocol(protocol);
                let client = Client::open(info.set_redis_settings(settings))?;
                let mut config =
                    AsyncConnectionConfig::new().set_connection_timeout(Some(CONNECT_TIMEOUT));
                if resp3 {
                    config = config.set_push_sender(push);
                }
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(Conn::Single(conn))
            }
            Target::Cluster(nodes) => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(protocol)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .retries(CLUSTER_RETRIES)
                    .max_retry_wait(CLUSTER_RETRY_WAIT_MAX_MS);
                if resp3 {
                    builder = builder.push_sender(push);
                }
                let conn = builder.build()?.get_async_connection().await?;
                Ok(Conn::Cluster(conn))
            }
            Target::Sentinel {
                sentinels,
                service,
                master,
            } => {
                let node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(master.clone().set_protocol(protocol));
                let mut client = SentinelClient::build(
                    sentinels.clone(),
                    service.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )?;
                let mut config =
                    AsyncConnectionConfig::new().set_connection_timeout(Some(CONNECT_TIMEOUT));
                if resp3 {
                    config = config.set_push_sender(push);
                }
                let conn = tokio::time::timeout(
                    SENTINEL_CONNECT_TIMEOUT,
                    client.get_async_connection_with_config(&config),
                )
                .await
                .map_err(|_| {
                    RedisError::from((
                        ErrorKind::Io,
                        "no Redis master found through the sentinels in time",
                    ))
                })??;
                Ok(Conn::Single(conn))
            }
        }
    }

    /// Runs `op` on this runtime's connection; if the connection turns out broken (Redis
    /// restarted, the connection dropped), opens a new one and runs it once more.
    async fn exec<T: FromRedisValue>(&self, op: Op<'_>) -> Result<T, StoreError> {
        let mut retried = false;
        loop {
            let (mut conn, generation) = self.connection().await.map_err(|e| self.error(&e))?;
            let result = match &op {
                Op::Cmd(cmd) => cmd.query_async(&mut conn).await,
                Op::Script(invocation) => invocation.invoke_async(&mut conn).await,
            };
            match result {
                Err(error) if broken(&error) => {
                    self.connections.discard(generation);
                    if retried {
                        return Err(self.error(&error));
                    }
                    retried = true;
                }
                result => return result.map_err(|e| self.error(&e)),
            }
        }
    }

    /// A Redis error as a store error, with no password in it.
    fn error(&self, error: &RedisError) -> StoreError {
        let mut text = error.to_string();
        for password in self.passwords() {
            text = text.replace(password, "[redacted]");
        }
        text.into()
    }

    fn passwords(&self) -> Vec<&str> {
        let settings: Vec<&RedisConnectionInfo> = match &self.target {
            Target::Single(client) => vec![client.get_connection_info().redis_settings()],
            Target::Cluster(nodes) => nodes.iter().map(ConnectionInfo::redis_settings).collect(),
            Target::Sentinel {
                sentinels, master, ..
            } => sentinels
                .iter()
                .map(ConnectionInfo::redis_settings)
                .chain([master])
                .collect(),
        };
        settings
            .into_iter()
            .filter_map(RedisConnectionInfo::password)
            .filter(|password| !password.is_empty())
            .collect()
    }

    async fn compare_and_delete(
        &self,
        key: String,
        expected: &[u8],
        channel: String,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.delete.prepare_invoke();
        invocation.key(key).arg(expected).arg(channel);
        let deleted: i64 = self.exec(Op::Script(invocation)).await?;
        Ok(deleted > 0)
    }
}

/// The URLs of a constructor's servers (`what`: node, sentinel), at least one, each
/// parsed; an error names the constructor and the form a URL takes (`example`).
fn parse_urls<N: AsRef<str>>(
    urls: impl IntoIterator<Item = N>,
    constructor: &str,
    what: &str,
    example: &str,
) -> crate::Result<Vec<ConnectionInfo>> {
    let infos = urls
        .into_iter()
        .map(|url| {
            url.as_ref().into_connection_info().map_err(|e| {
                crate::Error::Config(format!(
                    "a {what} URL of {constructor} does not parse ({}): use {example}",
                    e.kind_name_or_detail()
                ))
            })
        })
        .collect::<crate::Result<Vec<_>>>()?;
    if infos.is_empty() {
        return Err(crate::Error::Config(format!(
            "{constructor} needs at least one {what} URL ({example})"
        )));
    }
    Ok(infos)
}

/// One command or one script.
enum Op<'a> {
    Cmd(Cmd),
    Script(ScriptInvocation<'a>),
}

/// Whether `error` means the connection is gone and a new one may succeed: it dropped, or
/// the server it reaches became a replica (a failover demoted it) and refuses writes.
fn broken(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
        || error.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// Milliseconds for `PX`, at least one (Redis refuses 0).
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

trait KindName {
    fn kind_name_or_detail(&self) -> String;
}

impl KindName for RedisError {
    fn kind_name_or_detail(&self) -> String {
        // The URL may carry a password: say what is wrong, never echo the URL.
        format!("{:?}", self.kind())
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection info may hold a password: show only where it points.
        let mut s = f.debug_struct("RedisStore");
        match &self.target {
            Target::Single(client) => {
                s.field("addr", &client.get_connection_info().addr().to_string());
            }
            Target::Cluster(nodes) => {
                let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
                s.field("cluster", &addrs);
            }
            Target::Sentinel {
                sentinels, service, ..
            } => {
                let addrs: Vec<String> = sentinels.iter().map(|n| n.addr().to_string()).collect();
                s.field("sentinels", &addrs).field("master", service);
            }
        }
        s.field("key_prefix", &self.prefix)
            .field("sealing", &self.config)
            .field("notifications", &self.notifications)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TokenStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.entry_key(key));
        self.exec(Op::Cmd(cmd)).await
    }

    async fn put(&self, key: &str, entry: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let mut invocation = self.put.prepare_invoke();
        invocation
            .key(self.entry_key(key))
            .arg(entry)
            .arg(millis(ttl))
            .arg(self.channel(key));
        let _: i64 = self.exec(Op::Script(invocation)).await?;
        Ok(())
    }

    async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        self.compare_and_delete(self.entry_key(key), expected, self.channel(key))
            .await
    }

    async fn replace_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        entry: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.swap.prepare_invoke();
        invocation
            .key(self.entry_key(key))
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(entry)
            .arg(millis(ttl))
            .arg(self.channel(key));
        let swapped: i64 = self.exec(Op::Script(invocation)).await?;
        Ok(swapped > 0)
    }

    async fn try_lease(&self, key: &str, fence: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.lease_key(key))
            .arg(fence)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl));
        let taken: Option<String> = self.exec(Op::Cmd(cmd)).await?;
        Ok(taken.is_some())
    }

    async fn release(&self, key: &str, fence: &str) -> Result<(), StoreError> {
        // Announced on the entry's channel: waiters try the lease at once.
        self.compare_and_delete(self.lease_key(key), fence.as_bytes(), self.channel(key))
            .await
            .map(drop)
    }

    async fn renew(&self, key: &str, fence: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut invocation = self.renew.prepare_invoke();
        invocation
            .key(self.lease_key(key))
            .arg(fence)
            .arg(millis(ttl));
        let renewed: i64 = self.exec(Op::Script(invocation)).await?;
        Ok(renewed > 0)
    }

    async fn watch(&self, key: &str) -> Option<u64> {
        if !self.notifications {
            return None;
        }
        let channel = self.channel(key);
        let watch = self.watches.get(&channel);
        // Read before subscribing: a change announced from here on counts.
        let seen = watch.count.load(Ordering::Acquire);
        let (mut conn, generation) = self.connection().await.ok()?;
        match self.connections.subscribed(generation, &channel) {
            Subscribed::Yes => return Some(seen),
            Subscribed::NoPush => return None,
            Subscribed::No => {}
        }
        let result = match &mut conn {
            Conn::Single(conn) => conn.subscribe(&channel).await,
            Conn::Cluster(conn) => conn.subscribe(&channel).await,
        };
        match result {
            Ok(()) => {
                self.connections.add_subscription(generation, channel);
                Some(seen)
            }
            Err(error) => {
                if broken(&error) {
                    self.connections.discard(generation);
                }
                tracing::debug!(
                    error = %self.error(&error),
                    "the Redis store could not subscribe to its notifications: polling"
                );
                None
            }
        }
    }

    async fn changed_since(&self, key: &str, seen: u64, max: Duration) {
        let watch = self.watches.get(&self.channel(key));
        let wait = async {
            loop {
                let notified = watch.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if watch.count.load(Ordering::Acquire) > seen {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(max, wait).await;
    }

    fn swaps(&self) -> bool {
        true
    }

    fn sealing(&self) -> StoreConfig {
        self.config.clone().key_prefix(self.prefix.clone())
    }
}

/// A connection to one server or to a cluster.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The store's connections, one per Tokio runtime: a connection's I/O runs on the runtime
/// that opened it, and dies with it.
#[derive(Default)]
struct Connections {
    slots: Mutex<Vec<Slot>>,
    generations: AtomicU64,
}

struct Slot {
    runtime: tokio::runtime::Id,
    /// Dead once the runtime shut down (a task of it holds the other end).
    alive: Weak<()>,
    /// Ends that task when the slot goes (the store is dropped): dropped, it wakes it.
    _stop: tokio::sync::oneshot::Sender<()>,
    /// The connection, its generation and whether it carries notifications (RESP3).
    conn: Option<(u64, Conn, bool)>,
    /// The channels this connection is subscribed to.
    subscribed: HashSet<String>,
}

enum Subscribed {
    Yes,
    No,
    /// The connection cannot carry notifications.
    NoPush,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open connection of `runtime`, if any; forgets runtimes that shut down.
    fn find(&self, runtime: tokio::runtime::Id) -> Option<(Conn, u64)> {
        let mut slots = self.lock();
        slots.retain(|slot| slot.alive.strong_count() > 0);
        let slot = slots.iter().find(|slot| slot.runtime == runtime)?;
        let (generation, conn, _) = slot.conn.as_ref()?;
        Some((conn.clone(), *generation))
    }

    /// Keeps `conn` as `runtime`'s connection, unless another call opened one meanwhile.
    fn insert(&self, runtime: tokio::runtime::Id, conn: Conn, push: bool) -> (Conn, u64) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.lock();
        if let Some(slot) = slots.iter_mut().find(|slot| slot.runtime == runtime) {
            if let Some((generation, conn, _)) = &slot.conn {
                return (conn.clone(), *generation);
            }
            slot.conn = Some((generation, conn.clone(), push));
            slot.subscribed.clear();
            return (conn, generation);
        }
        let alive = Arc::new(());
        let runtime_alive = Arc::downgrade(&alive);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // Dropped with the runtime's tasks when it shuts down; ends when the store goes.
        drop(tokio::spawn(async move {
            let _alive = alive;
            let _ = stopped.await;
        }));
        slots.push(Slot {
            runtime,
            alive: runtime_alive,
            _stop: stop,
            conn: Some((generation, conn.clone(), push)),
            subscribed: HashSet::new(),
        });
        (conn, generation)
    }

    /// Forgets connection `generation` (broken): the next call opens a new one.
    fn discard(&self, generation: u64) {
        for slot in self.lock().iter_mut() {
            if slot.conn.as_ref().is_some_and(|(g, _, _)| *g == generation) {
                slot.conn = None;
                slot.subscribed.clear();
            }
        }
    }

    fn subscribed(&self, generation: u64, channel: &str) -> Subscribed {
        let slots = self.lock();
        let Some(slot) = slots
            .iter()
            .find(|slot| slot.conn.as_ref().is_some_and(|(g, _, _)| *g == generation))
        else {
            return Subscribed::No;
        };
        match slot.conn {
            Some((_, _, false)) => Subscribed::NoPush,
            _ if slot.subscribed.contains(channel) => Subscribed::Yes,
            _ => Subscribed::No,
        }
    }

    fn add_subscription(&self, generation: u64, channel: String) {
        let mut slots = self.lock();
        if let Some(slot) = slots
            .iter_mut()
            .find(|slot| slot.conn.as_ref().is_some_and(|(g, _, _)| *g == generation))
        {
            slot.subscribed.insert(channel);
        }
    }
}

/// The channels waiters watch: per channel, how many changes were announced, and a
/// [`Notify`] that wakes the waiters at each.
#[derive(Default)]
struct Watches {
    channels: Mutex<HashMap<String, Arc<Watch>>>,
}

#[derive(Default)]
struct Watch {
    count: AtomicU64,
    notify: Notify,
}

impl Watches {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Watch>>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, channel: &str) -> Arc<Watch> {
        Arc::clone(self.lock().entry(channel.to_owned()).or_default())
    }

    /// A push from a connection: a message wakes its channel's waiters; a lost connection
    /// wakes every waiter (a message may have been lost with it), to look once more and
    /// subscribe again.
    fn pushed(&self, info: &PushInfo) {
        let woken: Vec<Arc<Watch>> = match info.kind {
            PushKind::Message => {
                let Some(Value::BulkString(channel)) = info.data.first() else {
                    return;
                };
                let channels = self.lock();
                std::str::from_utf8(channel)
                    .ok()
                    .and_then(|channel| channels.get(channel))
                    .cloned()
                    .into_iter()
                    .collect()
            }
            PushKind::Disconnection => self.lock().values().cloned().collect(),
            _ => return,
        };
        for watch in woken {
            watch.count.fetch_add(1, Ordering::AcqRel);
            watch.notify.notify_waiters();
        }
    }
}

impl fmt::Debug for Connections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connections").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_and_its_source_entries_share_a_hash_tag() {
        let store = RedisStore::new("redis://127.0.0.1:1/")
            .unwrap()
            .key_prefix("p:");
        assert_eq!(store.entry_key("jwt-bearer-ab"), "p:{jwt-bearer-ab}");
        assert_eq!(store.lease_key("jwt-bearer-ab"), "p:{jwt-bearer-ab}:lease");
        assert_eq!(
            store.entry_key("jwt-bearer-ab.refresh-token"),
            "p:{jwt-bearer-ab}.refresh-token"
        );
        assert_eq!(
            store.lease_key("jwt-bearer-ab.refresh-token"),
            "p:{jwt-bearer-ab}.refresh-token:lease"
        );
        assert_eq!(store.channel("jwt-bearer-ab"), "p:{jwt-bearer-ab}:changed");
        assert_eq!(store.notifications(false).channel("k"), "");
    }

    #[test]
    fn cluster_nodes_must_parse_and_exist() {
        assert!(RedisStore::cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]).is_ok());
        assert!(RedisStore::cluster(Vec::<String>::new()).is_err());
        let error = RedisStore::cluster(["not a url"]).unwrap_err();
        assert!(error.to_string().contains("redis://host:port"), "{error}");
        let store = RedisStore::cluster(["redis://:hunter2@127.0.0.1:7000"]).unwrap();
        assert!(!format!("{store:?}").contains("hunter2"));
    }

    #[test]
    fn sentinels_and_the_master_name_must_parse() {
        let store =
            RedisStore::sentinel(["redis://127.0.0.1:26379"], "redis://:hunter2@mymaster/2")
                .unwrap();
        let Target::Sentinel {
            service, master, ..
        } = &store.target
        else {
            panic!("not a Sentinel store");
        };
        assert_eq!(service, "mymaster");
        assert_eq!(master.db(), 2);
        assert_eq!(store.passwords(), ["hunter2"]);
        let shown = format!("{store:?}");
        assert!(
            shown.contains("mymaster") && !shown.contains("hunter2"),
            "{shown}"
        );
        let none = RedisStore::sentinel(Vec::<String>::new(), "redis://mymaster").unwrap_err();
        assert!(none.to_string().contains("at least one sentinel"), "{none}");
        let bad = RedisStore::sentinel(["not a url"], "redis://mymaster").unwrap_err();
        assert!(bad.to_string().contains("redis://host:26379"), "{bad}");
        let unix = RedisStore::sentinel(["redis://127.0.0.1:26379"], "redis+unix:///tmp/r.sock")
            .unwrap_err();
        assert!(unix.to_string().contains("redis://name"), "{unix}");
    }

    #[test]
    fn a_demoted_master_refusing_writes_counts_as_a_broken_connection() {
        let readonly = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert!(broken(&readonly));
        let wrong_type = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ExecAbort),
            "not a connection error",
        ));
        assert!(!broken(&wrong_type));
    }
}
