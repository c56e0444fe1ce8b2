//! Store keys: a stable name for "the token these settings would fetch", derived from
//! everything that determines the token (grant, token URL, client, scope, audience, and the
//! secret), hashed so that no part of it, the secret least of all, can be read back.

use sha2::{Digest, Sha256};

/// Hex digits of the hash kept in a key: 128 bits, far past any chance of two settings
/// colliding.
const HASH_HEX_DIGITS: usize = 32;

/// Builds a store key: `{grant}-{hash}`, e.g. `jwt-bearer-3fa2…`.
pub(crate) struct KeyBuilder {
    grant: &'static str,
    hash: Sha256,
}

impl KeyBuilder {
    pub(crate) fn new(grant: &'static str) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"token-refresh store key, format 1\0");
        hash.update(grant.as_bytes());
        Self { grant, hash }
    }

    /// Adds one part (length-prefixed, so that parts cannot run into each other).
    pub(crate) fn part(mut self, value: impl AsRef<[u8]>) -> Self {
        let value = value.as_ref();
        self.hash.update((value.len() as u64).to_le_bytes());
        self.hash.update(value);
        self
    }

    /// Adds an optional part; absent and empty differ.
    pub(crate) fn optional(self, value: Option<impl AsRef<[u8]>>) -> Self {
        match value {
            Some(value) => self.part([1]).part(value),
            None => self.part([0]),
        }
    }

    pub(crate) fn finish(self) -> String {
        let digest = self.hash.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{}", self.grant, &hex[..HASH_HEX_DIGITS])
    }
}

/// A key named by the application (`TokenProviderBuilder::store_key`): kept as it is when it
/// is a safe file and Redis name, hashed otherwise.
pub(crate) fn named(name: &str) -> String {
    let safe = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if safe {
        format!("named-{name}")
    } else {
        KeyBuilder::new("named").part(name).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_distinct_and_hide_their_parts() {
        let key = |secret: &str| {
            KeyBuilder::new("client-credentials")
                .part("https://auth.example.com/token")
                .part("client")
                .optional(Some("read"))
                .part(secret)
                .finish()
        };
        assert_eq!(key("s3cret"), key("s3cret"));
        assert_ne!(
            key("s3cret"),
            key("rotated"),
            "rotating the secret changes the key"
        );
        assert!(key("s3cret").starts_with("client-credentials-"));
        assert!(!key("s3cret").contains("s3cret") && !key("s3cret").contains("client."));
        let split = |a: &str, b: &str| KeyBuilder::new("g").part(a).part(b).finish();
        assert_ne!(split("ab", "c"), split("a", "bc"));
        let none = KeyBuilder::new("g").optional(None::<&str>).finish();
        assert_ne!(none, KeyBuilder::new("g").optional(Some("")).finish());
    }

    #[test]
    fn named_keys_are_kept_when_safe() {
        assert_eq!(named("billing-api"), "named-billing-api");
        assert!(named("../etc/passwd").starts_with("named-"));
        assert!(!named("../etc/passwd").contains('/'));
    }
}
