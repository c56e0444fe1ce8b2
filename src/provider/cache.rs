//! The cached token and where its refresh points fall: the margins, scaled for short tokens.

use std::time::Duration;

use tokio::time::Instant;

use crate::token::AccessToken;

use super::config::Config;

/// Short tokens: the hard margin is at most this fraction (1/10) of the token's lifetime, so
/// a 59 s token is usable for 53 s instead of being "expired on arrival".
const HARD_MARGIN_DIVISOR: u32 = 10;

/// Short tokens: the proactive margin is at most this fraction (1/5) of the lifetime, so a
/// token is used for at least 80 % of its life before it is replaced.
const PROACTIVE_MARGIN_DIVISOR: u32 = 5;

/// A token with its refresh points.
#[derive(Clone)]
pub(super) struct Cached {
    pub(super) token: AccessToken,
    /// From here on, the next caller starts a background refresh.
    pub(super) refresh_at: Instant,
    /// From here on, the token is not handed out.
    pub(super) usable_until: Instant,
}

impl Cached {
    /// Where `token`'s proactive and hard margins fall under `config`, both scaled down for
    /// short tokens.
    pub(super) fn new(config: &Config, token: AccessToken) -> Self {
        let (refresh_at, usable_until) = margins(config, &token);
        Self {
            refresh_at,
            usable_until,
            token,
        }
    }

    /// Whether the token may still be handed out at `now`.
    pub(super) fn usable(&self, now: Instant) -> bool {
        now < self.usable_until
    }

    /// Whether the token lasts `min` from `now`, `min` capped at half its lifetime.
    pub(super) fn lasts(&self, now: Instant, min: Duration) -> bool {
        min.is_zero()
            || self.token.expires_at().saturating_duration_since(now)
                >= min.min(self.token.lifetime() / 2)
    }
}

/// Whether `token` may be handed out at `now` under `config`: [`Cached::usable`] without
/// a copy of the token.
pub(super) fn usable(config: &Config, token: &AccessToken, now: Instant) -> bool {
    now < usable_until(config, token)
}

/// From when `token` is not handed out under `config`: [`Cached::usable_until`] without a
/// copy of the token.
pub(super) fn usable_until(config: &Config, token: &AccessToken) -> Instant {
    margins(config, token).1
}

/// When the next caller starts a background refresh of `token`: [`Cached::refresh_at`]
/// without a copy of the token.
pub(super) fn refresh_at(config: &Config, token: &AccessToken) -> Instant {
    margins(config, token).0
}

/// `(refresh_at, usable_until)` for `token` under `config`.
fn margins(config: &Config, token: &AccessToken) -> (Instant, Instant) {
    let lifetime = token.lifetime();
    let hard = config.hard_margin.min(lifetime / HARD_MARGIN_DIVISOR);
    let proactive = config
        .proactive_margin
        .min(lifetime / PROACTIVE_MARGIN_DIVISOR)
        .max(hard);
    let expires_at = token.expires_at();
    let before = |margin| expires_at.checked_sub(margin).unwrap_or(expires_at);
    (before(proactive), before(hard))
}

/// `now + wait`, saturating where a huge setting would overflow `Instant`.
pub(super) fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}
