//! Sealing entries: XChaCha20-Poly1305 with a random 192-bit nonce and the store key as
//! associated data, so that an entry copied under another key, or altered by one bit, does not
//! open. Plaintext only where explicitly allowed, and then a sealed-only reader refuses it.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::StoreConfig;

/// First byte of a sealed entry.
const SEALED: u8 = 1;
/// First byte of a plaintext entry.
const PLAIN: u8 = b'P';
const NONCE_LEN: usize = 24;

/// Seals and opens one provider's entries.
pub(crate) struct Sealer {
    cipher: Option<XChaCha20Poly1305>,
}

impl Sealer {
    /// `None` when `config` has neither a key nor permission for plaintext.
    pub(crate) fn new(config: &StoreConfig) -> Option<Self> {
        match (&config.key, config.allow_plaintext) {
            (Some(key), _) => Some(Self {
                cipher: Some(XChaCha20Poly1305::new(key.into())),
            }),
            (None, true) => Some(Self { cipher: None }),
            (None, false) => None,
        }
    }

    pub(crate) fn seal(&self, store_key: &str, entry: &[u8]) -> Vec<u8> {
        let Some(cipher) = &self.cipher else {
            let mut out = Vec::with_capacity(1 + entry.len());
            out.push(PLAIN);
            out.extend_from_slice(entry);
            return out;
        };
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: entry,
                    aad: store_key.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any entry of a token's size");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The entry inside `bytes`, or `None` if it does not open: tampered, sealed under
    /// another store key or with another encryption key, or plaintext where sealing is on.
    pub(crate) fn open(&self, store_key: &str, bytes: &[u8]) -> Option<Vec<u8>> {
        let (&kind, rest) = bytes.split_first()?;
        match (&self.cipher, kind) {
            (None, PLAIN) => Some(rest.to_vec()),
            (Some(cipher), SEALED) if rest.len() > NONCE_LEN => {
                let (nonce, sealed) = rest.split_at(NONCE_LEN);
                let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
                cipher
                    .decrypt(
                        &XNonce::from(nonce),
                        Payload {
                            msg: sealed,
                            aad: store_key.as_bytes(),
                        },
                    )
                    .ok()
            }
            _ => None,
        }
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
