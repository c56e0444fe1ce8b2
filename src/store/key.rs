//! Store keys: a stable name for "the token these settings would fetch", derived from
//! everything that determines the token (grant, token URL, client, scope, audience, and the
//! secret), hashed so that no part of it, the secret least of all, can be read back.
//!
//! A source's key (the *identity*, [`KeyBuilder`]) is an unkeyed hash: anyone who guesses
//! the secret can compute it. So it never reaches the store as it is: with an encryption
//! key, the name in the store is a keyed hash of it ([`Namer`], HMAC-SHA-256 under a key
//! derived from the encryption key), which nobody without the encryption key can compute
//! or test a guess against.

use hmac::{Hmac, KeyInit as _, Mac as _};
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

/// Names entries under one encryption key: `{grant}-{keyed hash}`.
pub(crate) struct Namer {
    /// HMAC-SHA-256 of a fixed label under the encryption key: a key of its own for names,
    /// so that the sealing key itself is never used for anything but sealing.
    key: [u8; 32],
}

/// The label the naming key is derived with (and its format version).
const NAMING_LABEL: &[u8] = b"token-refresh store key names, format 1";

impl Namer {
    pub(crate) fn new(encryption_key: &[u8; 32]) -> Self {
        Self {
            key: hmac(encryption_key, &[NAMING_LABEL]),
        }
    }

    /// The name of `identity`'s entry: its readable part (the grant, `jwt-bearer`, or
    /// `source` for a key of another shape) and a keyed hash of the whole.
    pub(crate) fn name(&self, identity: &str) -> String {
        let digest = hmac(&self.key, &[identity.as_bytes()]);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{}", label(identity), &hex[..HASH_HEX_DIGITS])
    }
}

/// HMAC-SHA-256 of the concatenated `parts` under `key`.
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The readable part of an identity `{grant}-{hash}` made by [`KeyBuilder`]: the grant;
/// `source` for a key a custom source made otherwise (which may say more than it should).
fn label(identity: &str) -> &str {
    match identity.rsplit_once('-') {
        Some((grant, hash))
            if !grant.is_empty()
                && hash.len() == HASH_HEX_DIGITS
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
                && grant.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') =>
        {
            grant
        }
        _ => "source",
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
    fn hmac_matches_rfc_4231() {
        // Test case 2: key "Jefe".
        let mac = hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn names_are_keyed_hashes_that_keep_the_grant_readable() {
        let identity = KeyBuilder::new("client-credentials")
            .part("s3cret")
            .finish();
        let (one, two) = (Namer::new(&[1; 32]), Namer::new(&[2; 32]));
        let name = one.name(&identity);
        assert!(name.starts_with("client-credentials-"), "{name}");
        assert_eq!(name.len(), identity.len());
        assert_ne!(name, identity, "the unkeyed hash never reaches the store");
        assert_eq!(name, one.name(&identity), "stable");
        assert_ne!(name, two.name(&identity), "another key, another name");
        assert!(one.name("my custom key").starts_with("source-"));
    }

    #[test]
    fn named_keys_are_kept_when_safe() {
        assert_eq!(named("billing-api"), "named-billing-api");
        assert!(named("../etc/passwd").starts_with("named-"));
        assert!(!named("../etc/passwd").contains('/'));
    }
}
