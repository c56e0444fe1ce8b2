//! [`FileStore`]: a directory shared by the processes of one host.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{StoreConfig, StoreError, TokenStore};

/// Tokens in a directory, for CLIs, CronJobs and services on one host: run a CLI a hundred
/// times in a row and it makes one token request.
///
/// - One file per key (`{key}.entry`), written atomically (a temporary file, then a rename)
///   with mode 0600, in a directory created with mode 0700.
/// - The lease is an advisory lock (`flock`) on `{key}.lease`, held while its holder
///   refreshes. The operating system drops it when the holder exits, however it exits, so a
///   process killed mid-refresh is replaced at once; the TTL is not needed.
/// - Entries are sealed with [`encryption_key`](Self::encryption_key) (or
///   [`encryption_keys`](Self::encryption_keys), to move to a new key); without one,
///   [`allow_plaintext`](Self::allow_plaintext) must say that 0600 files are protection
///   enough (as for the credentials file next to them).
///
/// Not for network file systems, whose advisory locks may not hold across hosts: use Redis.
#[derive(Clone)]
pub struct FileStore {
    dir: PathBuf,
    config: StoreConfig,
    /// Leases this process holds: key → (fence, the locked file).
    leases: Arc<Mutex<HashMap<String, (String, File)>>>,
}

impl FileStore {
    /// A store in `dir` (created on first use). Refused by the provider until given an
    /// [`encryption_key`](Self::encryption_key) or [`allow_plaintext`](Self::allow_plaintext).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            config: StoreConfig::default(),
            leases: Arc::default(),
        }
    }

    /// Seals entries with this 32-byte key (XChaCha20-Poly1305); make one with
    /// `openssl rand -hex 32`. Default: none.
    pub fn encryption_key(mut self, key: [u8; 32]) -> Self {
        self.config = StoreConfig::encryption_key(key);
        self
    }

    /// Seals entries with the first of `keys` and opens them with any: the current key
    /// first, then previous ones, while the processes of the host move to a new key (see
    /// [`RedisStore::encryption_keys`](crate::store) for the procedure). Default: none.
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

    /// [`encryption_keys`](Self::encryption_keys) from the environment variable `name`:
    /// the current key first, then previous ones, separated by commas or whitespace.
    pub fn encryption_keys_from_env(mut self, name: &str) -> crate::Result<Self> {
        self.config = StoreConfig::encryption_keys_from_env(name)?;
        Ok(self)
    }

    /// Stores tokens in the clear (still in 0600 files) when no encryption key is set.
    /// Default: `false`.
    pub fn allow_plaintext(mut self, allow: bool) -> Self {
        self.config.allow_plaintext = allow;
        self
    }

    fn path(&self, key: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!("{key}.{suffix}"))
    }

    /// A temporary file for a new entry under `key`, unique to this write.
    fn temp(&self, key: &str) -> PathBuf {
        self.dir.join(format!(
            ".{key}.{}.{:016x}.tmp",
            std::process::id(),
            fastrand::u64(..)
        ))
    }
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.dir)
            .field("sealing", &self.config)
            .finish_non_exhaustive()
    }
}

/// Runs blocking file work off the runtime's worker threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    Ok(tokio::task::spawn_blocking(work).await??)
}

fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Holds the exclusive lock on `{key}.mutex` while entry files change, so a compare-and-
/// delete cannot remove an entry that was renamed into place after it read the old one.
fn with_mutex<T>(
    store_dir: &Path,
    key: &str,
    work: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    create_dir(store_dir)?;
    let mutex = private_file_keep(&store_dir.join(format!("{key}.mutex")))?;
    mutex.lock()?;
    let result = work();
    mutex.unlock()?;
    result
}

/// Writes `entry` to `temp`, flushed, then renames it over `path`: readers see the old entry
/// or the new one, never half of one.
fn write_atomically(temp: &Path, path: &Path, entry: &[u8]) -> io::Result<()> {
    let mut file = private_file(temp)?;
    file.write_all(entry)?;
    file.sync_all()?;
    fs::rename(temp, path).inspect_err(|_| {
        let _ = fs::remove_file(temp);
    })
}

/// Opens (creating) a file without truncating it, mode 0600.
fn private_file_keep(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[async_trait::async_trait]
impl TokenStore for FileStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(key, "entry");
        blocking(move || match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    async fn put(&self, key: &str, entry: &[u8], _ttl: Duration) -> Result<(), StoreError> {
        let (dir, key, entry) = (self.dir.clone(), key.to_owned(), entry.to_vec());
        let path = self.path(&key, "entry");
        let temp = self.temp(&key);
        blocking(move || with_mutex(&dir, &key, || write_atomically(&temp, &path, &entry))).await
    }

    async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        let (dir, key, expected) = (self.dir.clone(), key.to_owned(), expected.to_vec());
        let path = self.path(&key, "entry");
        blocking(move || {
            with_mutex(&dir, &key, || match fs::read(&path) {
                Ok(bytes) if bytes == expected => fs::remove_file(&path).map(|()| true),
                Ok(_) => Ok(false),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            })
        })
        .await
    }

    async fn replace_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        entry: &[u8],
        _ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (dir, key) = (self.dir.clone(), key.to_owned());
        let (expected, entry) = (expected.map(<[u8]>::to_vec), entry.to_vec());
        let path = self.path(&key, "entry");
        let temp = self.temp(&key);
        blocking(move || {
            with_mutex(&dir, &key, || {
                let current = match fs::read(&path) {
                    Ok(bytes) => Some(bytes),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                };
                if current != expected {
                    return Ok(false);
                }
                write_atomically(&temp, &path, &entry).map(|()| true)
            })
        })
        .await
    }

    async fn try_lease(&self, key: &str, fence: &str, _ttl: Duration) -> Result<bool, StoreError> {
        let (dir, path) = (self.dir.clone(), self.path(key, "lease"));
        let file = blocking(move || {
            create_dir(&dir)?;
            let file = private_file_keep(&path)?;
            match file.try_lock() {
                Ok(()) => Ok(Some(file)),
                Err(TryLockError::WouldBlock) => Ok(None),
                Err(TryLockError::Error(e)) => Err(e),
            }
        })
        .await?;
        let Some(file) = file else {
            return Ok(false);
        };
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned(), (fence.to_owned(), file));
        Ok(true)
    }

    async fn release(&self, key: &str, fence: &str) -> Result<(), StoreError> {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        if leases.get(key).is_some_and(|(held, _)| held == fence) {
            // Closing the file drops the lock.
            leases.remove(key);
        }
        Ok(())
    }

    /// The lock is held until released or its holder exits: renewing only says whether
    /// `fence` still holds it.
    async fn renew(&self, key: &str, fence: &str, _ttl: Duration) -> Result<bool, StoreError> {
        let leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(leases.get(key).is_some_and(|(held, _)| held == fence))
    }

    fn swaps(&self) -> bool {
        true
    }

    fn sealing(&self) -> StoreConfig {
        self.config.clone()
    }
}
