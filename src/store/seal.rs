//! Sealing entries: XChaCha20-Poly1305 with a random 192-bit nonce and, as associated data,
//! the store's key prefix and the entry's key, so that an entry copied under another key or
//! another prefix, or altered by one bit, does not open. Sealed with the first of the
//! store's encryption keys, opened with any (a fleet rolling to a new key). Plaintext only
//! where explicitly allowed, and then a sealed-only reader refuses it.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::StoreConfig;
use super::key::Namer;

/// First byte of a sealed entry. Format 2 binds the key prefix into the associated data;
/// format 1 (the store key alone) is no longer opened.
const SEALED: u8 = 2;
/// First byte of a plaintext entry.
const PLAIN: u8 = b'P';
const NONCE_LEN: usize = 24;

/// Seals and opens one provider's entries, and names them.
pub(crate) struct Sealer {
    /// One per encryption key, the current one first; empty for plaintext.
    ciphers: Vec<XChaCha20Poly1305>,
    /// One per encryption key, in the same order: how an entry is named under it.
    namers: Vec<Namer>,
    prefix: String,
}

impl Sealer {
    /// `None` when `config` has neither a key nor permission for plaintext.
    pub(crate) fn new(config: &StoreConfig) -> Option<Self> {
        if config.keys.is_empty() && !config.allow_plaintext {
            return None;
        }
        Some(Self {
            ciphers: config
                .keys
                .iter()
                .map(|key| XChaCha20Poly1305::new(key.into()))
                .collect(),
            namers: config.keys.iter().map(Namer::new).collect(),
            prefix: config.prefix.clone(),
        })
    }

    /// The names of the entry for `identity` (a source's store key), one per encryption
    /// key (with the key's index), the current key's first, without repeats: a keyed hash
    /// of it under each key, or `identity` itself where no key can hide it (plaintext) or
    /// where it hides nothing (`named`, a name the application chose).
    pub(crate) fn names(&self, identity: &str, named: bool) -> Vec<(String, usize)> {
        if named || self.namers.is_empty() {
            return vec![(identity.to_owned(), 0)];
        }
        let mut names: Vec<(String, usize)> = Vec::with_capacity(self.namers.len());
        for (index, namer) in self.namers.iter().enumerate() {
            let name = namer.name(identity);
            if !names.iter().any(|(known, _)| *known == name) {
                names.push((name, index));
            }
        }
        names
    }

    /// `entry` sealed for `store_key` with the current key (or marked plaintext).
    pub(crate) fn seal(&self, store_key: &str, entry: &[u8]) -> Vec<u8> {
        self.seal_with(0, store_key, entry)
    }

    /// `entry` sealed for `store_key` with encryption key `index` (0: the current one): a
    /// refresh token kept where processes not yet given the current key still read it.
    pub(crate) fn seal_with(&self, index: usize, store_key: &str, entry: &[u8]) -> Vec<u8> {
        let Some(cipher) = self.ciphers.get(index).or(self.ciphers.first()) else {
            let mut out = Vec::with_capacity(1 + entry.len());
            out.push(PLAIN);
            out.extend_from_slice(entry);
            return out;
        };
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = self.associated_data(store_key);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: entry,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any entry of a token's size");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The entry inside `bytes`, or `None` if it does not open with any of the keys:
    /// tampered, sealed under another store key, prefix or encryption key, of another
    /// format, or plaintext where sealing is on.
    pub(crate) fn open(&self, store_key: &str, bytes: &[u8]) -> Option<Vec<u8>> {
        let (&kind, rest) = bytes.split_first()?;
        if self.ciphers.is_empty() {
            return (kind == PLAIN).then(|| rest.to_vec());
        }
        if kind != SEALED || rest.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let aad = self.associated_data(store_key);
        self.ciphers.iter().find_map(|cipher| {
            cipher
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .ok()
        })
    }

    /// The key prefix and the store key, length-prefixed so that neither runs into the
    /// other.
    fn associated_data(&self, store_key: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(16 + self.prefix.len() + store_key.len());
        aad.extend_from_slice(&(self.prefix.len() as u64).to_le_bytes());
        aad.extend_from_slice(self.prefix.as_bytes());
        aad.extend_from_slice(&(store_key.len() as u64).to_le_bytes());
        aad.extend_from_slice(store_key.as_bytes());
        aad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(key: u8) -> Sealer {
        Sealer::new(&StoreConfig::encryption_key([key; 32])).unwrap()
    }

    #[test]
    fn sealed_entries_open_only_under_their_key_and_unaltered() {
        let s = sealer(1);
        let sealed = s.seal("jwt-bearer-abc", b"entry");
        assert!(
            !sealed.windows(5).any(|w| w == b"entry"),
            "not in the clear"
        );
        assert_eq!(s.open("jwt-bearer-abc", &sealed).unwrap(), b"entry");
        assert!(s.open("jwt-bearer-def", &sealed).is_none(), "foreign key");
        assert!(
            sealer(2).open("jwt-bearer-abc", &sealed).is_none(),
            "other encryption key"
        );
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            assert!(s.open("jwt-bearer-abc", &tampered).is_none(), "byte {i}");
        }
        assert!(
            s.open("jwt-bearer-abc", &sealed[..10]).is_none(),
            "truncated"
        );
    }

    #[test]
    fn the_key_prefix_is_bound_into_the_entry() {
        let config = |prefix: &str| StoreConfig::encryption_key([1; 32]).key_prefix(prefix);
        let a = Sealer::new(&config("a:")).unwrap();
        let b = Sealer::new(&config("b:")).unwrap();
        let sealed = a.seal("k", b"entry");
        assert_eq!(a.open("k", &sealed).unwrap(), b"entry");
        assert!(
            b.open("k", &sealed).is_none(),
            "copied under another prefix"
        );
        // The prefix and the key do not run into each other.
        let ab = Sealer::new(&config("a")).unwrap().seal("b:k", b"entry");
        assert!(
            Sealer::new(&config("ab:"))
                .unwrap()
                .open("k", &ab)
                .is_none()
        );
    }

    #[test]
    fn the_first_key_seals_and_any_key_opens() {
        let rolled = Sealer::new(&StoreConfig::encryption_keys([[2; 32], [1; 32]])).unwrap();
        let old = sealer(1);
        let new = sealer(2);
        let by_old = old.seal("k", b"old");
        assert_eq!(rolled.open("k", &by_old).unwrap(), b"old");
        let by_rolled = rolled.seal("k", b"new");
        assert_eq!(new.open("k", &by_rolled).unwrap(), b"new");
        assert!(
            old.open("k", &by_rolled).is_none(),
            "sealed with the first key"
        );
        let for_old = rolled.seal_with(1, "k", b"kept");
        assert_eq!(old.open("k", &for_old).unwrap(), b"kept");
    }

    #[test]
    fn names_are_keyed_per_encryption_key_and_named_keys_are_kept() {
        let rolled = Sealer::new(&StoreConfig::encryption_keys([[2; 32], [1; 32]])).unwrap();
        let identity = format!("jwt-bearer-{}", "0123".repeat(8));
        let names = rolled.names(&identity, false);
        assert_eq!(names.len(), 2);
        assert_eq!(names[0].0, sealer(2).names(&identity, false)[0].0);
        assert_eq!(names[1].0, sealer(1).names(&identity, false)[0].0);
        assert_eq!((names[0].1, names[1].1), (0, 1));
        assert!(names.iter().all(|(n, _)| n.starts_with("jwt-bearer-")));
        let named = rolled.names("named-billing", true);
        assert_eq!(named, vec![("named-billing".to_owned(), 0)]);
        let plain = Sealer::new(&StoreConfig::plaintext()).unwrap();
        assert_eq!(plain.names(&identity, false)[0].0, identity);
    }

    #[test]
    fn plaintext_is_refused_where_sealing_is_on_and_needs_permission() {
        let plain = Sealer::new(&StoreConfig::plaintext()).unwrap();
        let entry = plain.seal("k", b"entry");
        assert_eq!(plain.open("k", &entry).unwrap(), b"entry");
        assert!(
            sealer(1).open("k", &entry).is_none(),
            "a planted plaintext entry"
        );
        assert!(plain.open("k", &sealer(1).seal("k", b"entry")).is_none());
        assert!(Sealer::new(&StoreConfig::default()).is_none());
    }
}
