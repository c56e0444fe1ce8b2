//! The storm guard: what a rejection (HTTP 401, gRPC `UNAUTHENTICATED`) may cost the token
//! endpoint.
//!
//! Two kinds of rejection are told apart, as AWS's credential cache does (invalidate the
//! rejected credential, rate-limit the rest):
//!
//! - a **revocation**: the API had accepted the token and now rejects it. A fresh token cures
//!   that, so it is refreshed at once, within an allowance (a token bucket: a burst, then a
//!   steady refill) that bounds an API that takes every token exactly once.
//! - a token rejected **before any request succeeded with it**: an API that rejects every
//!   token (a wrong audience, a disabled account). Forced refreshes for those are spaced by an
//!   interval that doubles while fresh tokens keep being rejected. Such a rejection of a token
//!   fetched after the last forced refresh also suspends the revocation allowance for one
//!   interval: when the replacement of a "revoked" token is rejected as well (one route that
//!   rejects every token, beside one that accepts them), fresh tokens do not help.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::token::AccessToken;

use super::TokenProvider;
use super::cache::later;
use super::config::Config;

/// Rate limit of refreshes forced by rejections; lives in the provider's state.
#[derive(Debug, Default)]
pub(super) struct StormGuard {
    /// When the last refresh was forced.
    last_forced: Option<Instant>,
    /// Least time from `last_forced` to the next refresh forced by a rejection that is not a
    /// revocation (or any, while revocations are distrusted).
    interval: Duration,
    /// Until then revocations wait for the interval too.
    distrust_until: Option<Instant>,
    /// Revocation refreshes taken from the allowance and not yet regained.
    spent: u32,
    /// When the allowance last regained a refresh (or was first drawn on).
    refilled_at: Option<Instant>,
    /// A refresh was forced and no flight has started for it yet.
    forced_pending: bool,
}

/// What the guard makes of one rejection of the cached, still usable token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// A revocation, refreshed at once from the allowance.
    Revoked,
    /// A forced refresh outside the allowance (the interval had passed).
    Forced,
    /// No refresh: the token is kept and the rejection returned, for this much longer.
    Held(Duration),
}

impl StormGuard {
    /// Decides on a rejection at `now` of a token issued at `issued` that the API had
    /// `accepted` before (or not).
    pub(super) fn decide(
        &mut self,
        config: &Config,
        now: Instant,
        issued: Instant,
        accepted: bool,
    ) -> Decision {
        // The replacement fetched after the last forced refresh, rejected before it ever
        // worked: refreshing does not help right now.
        let replacement_refused = !accepted
            && self
                .last_forced
                .is_some_and(|forced| issued >= forced && issued < later(forced, self.interval));
        let distrusted = self.distrust_until.is_some_and(|until| now < until);
        if accepted && !distrusted && self.take_allowance(config, now) {
            self.last_forced = Some(now);
            self.interval = config.forced_interval;
            self.forced_pending = true;
            return Decision::Revoked;
        }
        if let Some(last) = self.last_forced
            && now < later(last, self.interval)
        {
            if replacement_refused {
                self.distrust(now);
            }
            return Decision::Held(later(last, self.interval) - now);
        }
        self.interval = if replacement_refused {
            // A fresh token that never worked was rejected: fresh tokens do not seem to help.
            self.interval
                .saturating_mul(2)
                .clamp(config.forced_interval, config.forced_interval_max)
        } else {
            config.forced_interval
        };
        self.last_forced = Some(now);
        self.forced_pending = true;
        if replacement_refused {
            self.distrust(now);
        }
        Decision::Forced
    }

    /// The least time until the next forced refresh that is not a revocation.
    pub(super) fn interval(&self) -> Duration {
        self.interval
    }

    /// For a refresh that starts now: the interval, if a rejection forced it.
    pub(super) fn take_forced(&mut self) -> Option<Duration> {
        std::mem::take(&mut self.forced_pending).then_some(self.interval)
    }

    /// Another process of the fleet forced a refresh at `at` and this one took its token
    /// from the store: the guard holds as if this process had forced it, so the fleet
    /// forces one refresh per interval, not one per process.
    pub(super) fn seed(&mut self, at: Instant, interval: Duration) {
        if self.last_forced.is_none_or(|last| last < at) {
            self.last_forced = Some(at);
            self.interval = interval;
        }
    }

    fn distrust(&mut self, now: Instant) {
        let until = later(now, self.interval);
        self.distrust_until = Some(self.distrust_until.map_or(until, |d| d.max(until)));
    }

    /// Takes one refresh from the revocation allowance, regaining what the time since the
    /// last refill earned first.
    fn take_allowance(&mut self, config: &Config, now: Instant) -> bool {
        if let Some(at) = self.refilled_at
            && self.spent > 0
        {
            let elapsed = now.saturating_duration_since(at);
            let regained = match config.revocation_refill.as_nanos() {
                0 => u32::MAX,
                refill => u32::try_from(elapsed.as_nanos() / refill).unwrap_or(u32::MAX),
            };
            if regained >= self.spent {
                self.spent = 0;
            } else {
                self.spent -= regained;
                self.refilled_at = Some(later(at, config.revocation_refill * regained));
            }
        }
        if self.spent >= config.revocation_burst {
            return false;
        }
        if self.spent == 0 {
            self.refilled_at = Some(now);
        }
        self.spent += 1;
        true
    }
}

impl TokenProvider {
    /// Reports that a server rejected `token` (HTTP 401, gRPC `UNAUTHENTICATED`, a stream's
    /// in-band error). Returns whether asking for a token again can give a different one: the
    /// caller may then resend once with [`token`](Self::token), comparing the new token with
    /// the rejected one.
    ///
    /// If `token` is no longer the cached token, nothing is dropped (a burst of rejections of
    /// one token forces one refresh: the others find it replaced) and `true` is returned. A
    /// cached token past its hard margin is simply dropped: it was due anyway. Otherwise the
    /// storm guard decides:
    ///
    /// - a token that a request had succeeded with was **revoked**: it is dropped at once,
    ///   forcing a refresh, as long as the revocation allowance lasts
    ///   ([`DEFAULT_REVOCATION_BURST`] back to back, then one per
    ///   [`DEFAULT_REVOCATION_REFILL`]);
    /// - a token rejected before any request succeeded with it forces a refresh only if none
    ///   was forced for an interval that starts at [`DEFAULT_FORCED_REFRESH_INTERVAL`] and
    ///   doubles, up to [`MAX_FORCED_REFRESH_INTERVAL`], each time a fresh token is rejected
    ///   (an API that rejects every token), falling back once a token has worked. When the
    ///   replacement of a revoked token is rejected so, revocations wait for that interval
    ///   too for a while.
    ///
    /// When the guard holds, the token is kept and `false` is returned: the caller returns
    /// the rejection as it is. So a real revocation is recovered from at once, and an API
    /// that rejects everything costs a handful of token requests, not one per call.
    ///
    /// [`DEFAULT_REVOCATION_BURST`]: crate::defaults::DEFAULT_REVOCATION_BURST
    /// [`DEFAULT_REVOCATION_REFILL`]: crate::defaults::DEFAULT_REVOCATION_REFILL
    /// [`DEFAULT_FORCED_REFRESH_INTERVAL`]: crate::defaults::DEFAULT_FORCED_REFRESH_INTERVAL
    /// [`MAX_FORCED_REFRESH_INTERVAL`]: crate::defaults::MAX_FORCED_REFRESH_INTERVAL
    pub fn reject(&self, token: &AccessToken) -> bool {
        let inner = &self.inner;
        let mut state = inner.lock_state();
        let now = Instant::now();
        let usable = match inner.read_cache().as_ref() {
            Some(cached) if cached.token.ptr_eq(token) => cached.usable(now),
            // Already replaced, or being replaced: the current token may differ.
            _ => return true,
        };
        if !usable {
            // A token past its hard margin was due for a refresh anyway (a stream that
            // outlived it): dropping it forces nothing, so the guard is left alone.
            inner.drop_cached(token);
            return true;
        }
        let decision = state.storm.decide(
            &inner.config,
            now,
            token.issued_at_instant(),
            token.was_accepted(),
        );
        let accepted = token.was_accepted();
        match decision {
            Decision::Held(retry_in) => {
                tracing::debug!(
                    retry_in_ms = retry_in.as_millis() as u64,
                    accepted_before = accepted,
                    "rejected access token kept: a refresh was forced moments ago"
                );
                inner.metrics.forced_refresh(None);
                return false;
            }
            Decision::Revoked | Decision::Forced => {}
        }
        inner.drop_cached(token);
        if let Some(fleet) = &inner.fleet {
            fleet.rejected(token);
        }
        inner.metrics.forced_refresh(Some(accepted));
        inner.forced_refreshes.fetch_add(1, Ordering::Relaxed);
        // The refresh that follows logs at INFO with this as its reason.
        if decision == Decision::Revoked {
            state.pending = Some(super::Reason::Revoked);
            tracing::debug!("access token revoked by the server: refreshing it");
        } else {
            state.pending = Some(super::Reason::Rejected);
            tracing::debug!(
                next_forced_refresh_in_ms = state.storm.interval().as_millis() as u64,
                "access token rejected by the server: refreshing it"
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            forced_interval: Duration::from_secs(5),
            forced_interval_max: Duration::from_secs(300),
            revocation_burst: 3,
            revocation_refill: Duration::from_secs(1),
            ..Config::default()
        }
    }

    fn ms(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn revocations_are_refreshed_at_once_within_the_allowance() {
        let (config, t0) = (config(), Instant::now());
        let mut guard = StormGuard::default();
        for n in 0..3 {
            let at = ms(t0, n * 100);
            assert_eq!(
                guard.decide(&config, at, at, true),
                Decision::Revoked,
                "{n}"
            );
        }
        // The burst is spent: the fourth waits for the interval from the last one.
        let at = ms(t0, 300);
        assert_eq!(
            guard.decide(&config, at, at, true),
            Decision::Held(Duration::from_millis(4_900))
        );
        // One refresh regained a second after the allowance was first drawn on.
        let at = ms(t0, 1_000);
        assert_eq!(guard.decide(&config, at, at, true), Decision::Revoked);
        let at = ms(t0, 1_100);
        assert!(matches!(
            guard.decide(&config, at, at, true),
            Decision::Held(_)
        ));
    }

    #[test]
    fn a_steady_revocation_every_700_ms_never_runs_dry_at_the_defaults() {
        let (config, t0) = (Config::default(), Instant::now());
        let mut guard = StormGuard::default();
        for n in 0..1_000 {
            let at = ms(t0, n * 700);
            assert_eq!(
                guard.decide(&config, at, at, true),
                Decision::Revoked,
                "{n}"
            );
        }
    }

    #[test]
    fn tokens_that_never_worked_back_off_doubling() {
        let (config, t0) = (config(), Instant::now());
        let mut guard = StormGuard::default();
        let mut forced_at = Vec::new();
        let mut issued = t0;
        for step in 0..2_000u64 {
            let at = ms(t0, step * 100);
            if guard.decide(&config, at, issued, false) == Decision::Forced {
                forced_at.push((at - t0).as_secs());
                issued = at;
            }
        }
        assert_eq!(forced_at, [0, 5, 15, 35, 75, 155]);
    }

    #[test]
    fn a_refused_replacement_suspends_the_allowance_for_an_interval() {
        let (config, t0) = (config(), Instant::now());
        let mut guard = StormGuard::default();
        // A revoked token is replaced at once…
        assert_eq!(guard.decide(&config, t0, t0, true), Decision::Revoked);
        // …but its replacement, fetched just after, is rejected before it ever worked.
        let (issued, at) = (ms(t0, 10), ms(t0, 20));
        assert!(matches!(
            guard.decide(&config, at, issued, false),
            Decision::Held(_)
        ));
        // The same token then works on one route and is rejected on another: held.
        let at = ms(t0, 30);
        assert!(matches!(
            guard.decide(&config, at, issued, true),
            Decision::Held(_)
        ));
        // After the interval a revocation is refreshed again.
        let at = ms(t0, 5_020);
        assert_eq!(guard.decide(&config, at, issued, true), Decision::Revoked);
    }

    #[test]
    fn a_token_from_a_regular_refresh_rejected_on_first_use_does_not_distrust() {
        let (config, t0) = (config(), Instant::now());
        let mut guard = StormGuard::default();
        assert_eq!(guard.decide(&config, t0, t0, true), Decision::Revoked);
        // Long after, a token issued by a regular refresh is rejected on its first use,
        // then its replacement is revoked a second later: both refreshed.
        let at = ms(t0, 60_000);
        assert_eq!(guard.decide(&config, at, at, false), Decision::Forced);
        let at = ms(t0, 61_000);
        assert_eq!(
            guard.decide(&config, at, ms(t0, 60_000), true),
            Decision::Revoked
        );
    }

    #[test]
    fn a_zero_burst_treats_revocations_like_any_rejection() {
        let config = Config {
            revocation_burst: 0,
            ..config()
        };
        let t0 = Instant::now();
        let mut guard = StormGuard::default();
        assert_eq!(guard.decide(&config, t0, t0, true), Decision::Forced);
        let at = ms(t0, 1_000);
        assert!(matches!(
            guard.decide(&config, at, at, true),
            Decision::Held(_)
        ));
    }
}
