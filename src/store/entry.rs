//! What a store entry holds, before sealing: the token, when it was issued (wall clock) and
//! for how long, under a format version.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::token::AccessToken;

/// The entry format this crate writes; entries of another version are ignored (and
/// replaced), so that two versions of the crate in one fleet never misread each other.
const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u32,
    token: String,
    /// When the token request was sent, in Unix milliseconds by the writer's clock.
    issued_at_ms: u64,
    lifetime_ms: u64,
    /// Set when a rejection forced the refresh that fetched this token: the forcing
    /// process's storm-guard interval, which every process that takes the token adopts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forced_interval_ms: Option<u64>,
    /// RFC 8693's `issued_token_type`, for a token from a token exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issued_token_type: Option<String>,
    /// The thumbprint of the DPoP key a DPoP-bound token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dpop_jkt: Option<String>,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A token read from an entry.
pub(crate) struct Stored {
    pub(crate) token: AccessToken,
    /// The storm-guard interval of the forced refresh that fetched it, if one did.
    pub(crate) forced_interval: Option<Duration>,
    /// The thumbprint of the DPoP key the token is bound to, if it is.
    pub(crate) dpop_jkt: Option<String>,
}

/// `token` as an entry (JSON; the caller seals it); `forced_interval` if a rejection forced
/// the refresh that fetched it.
pub(crate) fn encode(token: &AccessToken, forced_interval: Option<Duration>) -> Vec<u8> {
    let age = Instant::now().saturating_duration_since(token.issued_at_instant());
    let issued = SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH);
    let wire = Wire {
        v: FORMAT_VERSION,
        token: token.expose_secret().to_owned(),
        issued_at_ms: unix_ms(issued),
        lifetime_ms: u64::try_from(token.lifetime().as_millis()).unwrap_or(u64::MAX),
        forced_interval_ms: forced_interval
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        issued_token_type: token.issued_token_type().map(str::to_owned),
        dpop_jkt: token.dpop_key().map(|k| k.thumbprint().to_owned()),
    };
    serde_json::to_vec(&wire).expect("an entry always serializes")
}

/// The token in an opened entry, its expiry placed by *this* process's wall clock, or
/// `None` for an entry of another format, a bad token, or one that has expired. A writer's
/// clock ahead of ours never makes the token last longer than its lifetime from now; one
/// behind ours shortens it (see the store docs on clock skew).
pub(crate) fn decode(bytes: &[u8]) -> Option<Stored> {
    let wire: Wire = serde_json::from_slice(bytes).ok()?;
    if wire.v != FORMAT_VERSION {
        return None;
    }
    let lifetime = Duration::from_millis(wire.lifetime_ms);
    let expires_ms = wire.issued_at_ms.checked_add(wire.lifetime_ms)?;
    let remaining = Duration::from_millis(expires_ms.checked_sub(unix_ms(SystemTime::now()))?);
    if remaining.is_zero() {
        return None;
    }
    let now = Instant::now();
    let issued = now
        .checked_sub(lifetime.saturating_sub(remaining))
        .unwrap_or(now);
    let mut token = AccessToken::issued_at(wire.token, issued, lifetime).ok()?;
    if let Some(kind) = wire.issued_token_type {
        token = token.with_issued_token_type(kind);
    }
    Some(Stored {
        token,
        forced_interval: wire.forced_interval_ms.map(Duration::from_millis),
        dpop_jkt: wire.dpop_jkt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(issued_at_ms: u64, lifetime_ms: u64) -> Vec<u8> {
        serde_json::to_vec(&Wire {
            v: FORMAT_VERSION,
            token: "tok".into(),
            issued_at_ms,
            lifetime_ms,
            forced_interval_ms: None,
            issued_token_type: None,
            dpop_jkt: None,
        })
        .unwrap()
    }

    #[test]
    fn a_token_round_trips_with_its_remaining_life() {
        let token = AccessToken::new("tok-1", Duration::from_secs(3600)).unwrap();
        let back = decode(&encode(&token, Some(Duration::from_secs(5)))).unwrap();
        assert_eq!(back.forced_interval, Some(Duration::from_secs(5)));
        let back = back.token;
        assert_eq!(back.expose_secret(), "tok-1");
        assert_eq!(back.lifetime(), Duration::from_secs(3600));
        let drift = back.expires_in().abs_diff(token.expires_in());
        assert!(drift < Duration::from_millis(50), "{drift:?}");
    }

    #[test]
    fn expired_foreign_and_garbage_entries_are_refused() {
        let now = unix_ms(SystemTime::now());
        assert!(
            decode(&wire(now - 3_600_001, 3_600_000)).is_none(),
            "expired"
        );
        assert!(decode(b"not json").is_none());
        let mut other = serde_json::to_value(
            serde_json::from_slice::<serde_json::Value>(&wire(now, 1_000)).unwrap(),
        )
        .unwrap();
        other["v"] = 2.into();
        assert!(
            decode(other.to_string().as_bytes()).is_none(),
            "another version"
        );
    }

    #[test]
    fn a_writer_clock_ahead_never_extends_the_token() {
        let ahead = unix_ms(SystemTime::now()) + 600_000; // ten minutes ahead
        let token = decode(&wire(ahead, 3_600_000)).unwrap().token;
        assert!(token.expires_in() <= Duration::from_secs(3600));
        let behind = unix_ms(SystemTime::now()) - 600_000;
        let token = decode(&wire(behind, 3_600_000)).unwrap().token;
        assert!(token.expires_in() <= Duration::from_secs(3000));
    }
}
