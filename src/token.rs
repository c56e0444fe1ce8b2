//! The access token and its lifetime.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// Expiry used for lifetimes too long to represent: about thirty years.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// A bearer access token with its expiry.
///
/// Cloning is cheap (an [`Arc`]). The value is a secret: `Debug` redacts it, there is no
/// `Display`, and reading it takes an explicit [`expose_secret`](Self::expose_secret).
///
/// Times are [`tokio::time::Instant`]s, so tests can pause and advance the clock.
#[derive(Clone)]
pub struct AccessToken {
    inner: Arc<Inner>,
}

struct Inner {
    value: SecretString,
    /// `Bearer <value>`, marked sensitive, built once so each request only clones it.
    header: HeaderValue,
    issued_at: Instant,
    expires_at: Instant,
    /// Whether a server has accepted the token at least once (a response that was not a
    /// rejection): the storm guard treats the rejection of a token that never worked as a
    /// sign that fresh tokens do not help.
    accepted: AtomicBool,
    /// RFC 8693's `issued_token_type`, when a token exchange said what it issued.
    issued_token_type: Option<Box<str>>,
    /// The key a DPoP-bound token is bound to (RFC 9449): requests carry `DPoP <token>`
    /// and a proof signed with it.
    dpop: Option<crate::dpop::DpopKey>,
}

impl AccessToken {
    /// A token issued now that lives for `expires_in`.
    ///
    /// Fails unless the value is an RFC 6750 §2.1 `b64token`: ASCII letters, digits and
    /// `-._~+/`, optionally followed by `=` padding; no spaces or other characters.
    pub fn new(value: impl Into<String>, expires_in: Duration) -> Result<Self> {
        Self::issued_at(value, Instant::now(), expires_in)
    }

    /// A token whose lifetime counts from `issued_at`: use the instant the token request was
    /// *sent*, so network latency shortens the token's life instead of extending it.
    ///
    /// Fails unless the value is an RFC 6750 `b64token`, as [`new`](Self::new).
    pub fn issued_at(
        value: impl Into<String>,
        issued_at: Instant,
        expires_in: Duration,
    ) -> Result<Self> {
        let value = value.into();
        if value.is_empty() {
            return Err(Error::InvalidToken("the token is empty"));
        }
        if !is_b64token(&value) {
            return Err(Error::InvalidToken(
                "the token is not an RFC 6750 b64token (letters, digits, -._~+/ and trailing =)",
            ));
        }
        let mut header = HeaderValue::try_from(format!("Bearer {value}"))
            .map_err(|_| Error::InvalidToken("the token has characters not allowed in a header"))?;
        header.set_sensitive(true);
        Ok(Self {
            inner: Arc::new(Inner {
                value: value.into(),
                header,
                issued_at,
                // "Never expires" (`Duration::MAX`) saturates instead of overflowing.
                expires_at: issued_at
                    .checked_add(expires_in)
                    .unwrap_or_else(|| issued_at + FAR_FUTURE),
                accepted: AtomicBool::new(false),
                issued_token_type: None,
                dpop: None,
            }),
        })
    }

    /// RFC 8693's `issued_token_type` of a token from a token exchange, e.g.
    /// `urn:ietf:params:oauth:token-type:access_token`; `None` for other grants.
    pub fn issued_token_type(&self) -> Option<&str> {
        self.inner.issued_token_type.as_deref()
    }

    /// The same token, marked with the `issued_token_type` it was issued as.
    pub(crate) fn with_issued_token_type(self, kind: impl Into<Box<str>>) -> Self {
        let mut inner = self.copy_inner();
        inner.issued_token_type = Some(kind.into());
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The same token, bound to the DPoP `key` (RFC 9449): its header is `DPoP <token>`.
    pub(crate) fn with_dpop(self, key: crate::dpop::DpopKey) -> Self {
        let mut inner = self.copy_inner();
        if let Ok(mut header) =
            HeaderValue::try_from(format!("DPoP {}", inner.value.expose_secret()))
        {
            header.set_sensitive(true);
            inner.header = header;
        }
        inner.dpop = Some(key);
        Self {
            inner: Arc::new(inner),
        }
    }

    fn copy_inner(&self) -> Inner {
        let inner = &self.inner;
        Inner {
            value: inner.value.clone(),
            header: inner.header.clone(),
            issued_at: inner.issued_at,
            expires_at: inner.expires_at,
            accepted: AtomicBool::new(inner.accepted.load(Ordering::Relaxed)),
            issued_token_type: inner.issued_token_type.clone(),
            dpop: inner.dpop.clone(),
        }
    }

    /// The DPoP key this token is bound to (`token_type` `DPoP`, RFC 9449), if it is; a
    /// request with it needs `Authorization: DPoP <token>` and a proof signed with this key.
    pub fn dpop_key(&self) -> Option<&crate::dpop::DpopKey> {
        self.inner.dpop.as_ref()
    }

    /// The token's type, as the `Authorization` header names it: `DPoP` for a token bound
    /// to a [DPoP key](Self::dpop_key), else `Bearer` (RFC 6749 §7.1).
    pub fn token_type(&self) -> &'static str {
        if self.inner.dpop.is_some() {
            "DPoP"
        } else {
            "Bearer"
        }
    }

    /// The token itself. Keep it out of logs.
    pub fn expose_secret(&self) -> &str {
        self.inner.value.expose_secret()
    }

    /// `Authorization: Bearer <token>` (`DPoP <token>` for a [DPoP-bound](Self::dpop_key)
    /// token) as a header value marked sensitive.
    pub fn header_value(&self) -> HeaderValue {
        self.inner.header.clone()
    }

    /// When the token was requested.
    pub fn issued_at_instant(&self) -> Instant {
        self.inner.issued_at
    }

    /// When the token expires.
    pub fn expires_at(&self) -> Instant {
        self.inner.expires_at
    }

    /// Time left until the token expires (zero once it has).
    pub fn expires_in(&self) -> Duration {
        self.inner
            .expires_at
            .saturating_duration_since(Instant::now())
    }

    /// How long the token lives in all, from request to expiry.
    pub fn lifetime(&self) -> Duration {
        self.inner
            .expires_at
            .saturating_duration_since(self.inner.issued_at)
    }

    /// Whether `self` and `other` are the same issued token (not merely equal strings).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Records that a server accepted the token. Cheap: one relaxed load once it is set.
    #[cfg_attr(not(any(feature = "reqwest", feature = "tower")), allow(dead_code))]
    pub(crate) fn mark_accepted(&self) {
        if !self.inner.accepted.load(Ordering::Relaxed) {
            self.inner.accepted.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a server accepted the token at least once.
    pub(crate) fn was_accepted(&self) -> bool {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Whether both tokens carry the same value.
    #[cfg_attr(not(any(feature = "reqwest", feature = "tower")), allow(dead_code))]
    pub(crate) fn same_value(&self, other: &Self) -> bool {
        self.expose_secret() == other.expose_secret()
    }
}

/// RFC 6750 §2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub(crate) fn is_b64token(value: &str) -> bool {
    let body = value.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("value", &"[REDACTED]")
            .field("expires_in", &self.expires_in())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_sensitive_bearer() {
        let t = AccessToken::new("abc", Duration::from_secs(60)).unwrap();
        let h = t.header_value();
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().unwrap(), "Bearer abc");
        assert!(!format!("{t:?}").contains("abc"));
    }

    #[test]
    fn a_token_that_never_expires_does_not_overflow() {
        let t = AccessToken::new("forever", Duration::MAX).unwrap();
        assert!(t.expires_in() > Duration::from_secs(10 * 365 * 24 * 3600));
    }

    #[test]
    fn bad_values_are_errors() {
        for bad in [
            "",
            "a\nb",
            "Bearer abc",
            " abc",
            "abc ",
            "a\tb",
            "tökén",
            "==",
            "a=b",
        ] {
            assert!(
                AccessToken::new(bad, Duration::from_secs(1)).is_err(),
                "{bad:?}"
            );
        }
        for good in ["abc", "ya29.a0-_~+/", "YWJj==", "eyJ.eyJ.sig"] {
            assert!(
                AccessToken::new(good, Duration::from_secs(1)).is_ok(),
                "{good:?}"
            );
        }
    }
}
