//! A token endpoint's DPoP settings (RFC 9449) and the last nonce its server gave.

use std::sync::Mutex;

use http::HeaderMap;

use crate::dpop::DpopKey;

/// A token endpoint's DPoP settings and the last nonce it gave.
pub(super) struct Dpop {
    pub(super) key: DpopKey,
    pub(super) allow_bearer: bool,
    nonce: Mutex<Option<String>>,
}

impl Dpop {
    pub(super) fn new(key: DpopKey, allow_bearer: bool, nonce: Option<String>) -> Self {
        Self {
            key,
            allow_bearer,
            nonce: Mutex::new(nonce),
        }
    }

    pub(super) fn nonce(&self) -> Option<String> {
        self.nonce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Keeps the `DPoP-Nonce` of a response, if it has a usable one, and returns it.
    pub(super) fn update_nonce(&self, headers: &HeaderMap) -> Option<String> {
        let nonce = crate::dpop::nonce_of(headers)?.to_owned();
        *self
            .nonce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(nonce.clone());
        Some(nonce)
    }
}
