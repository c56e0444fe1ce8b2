//! What a provider was built with. Its own module, below the builder that sets it, the
//! cache, retry and storm-guard code that read it, and the fleet code that the builder
//! constructs: no import circle among them.

use std::time::Duration;

use crate::defaults::*;

/// What a provider was built with: margins, retry policy, waits and the storm guard.
#[derive(Clone, Debug)]
pub(super) struct Config {
    pub(super) name: String,
    pub(super) hard_margin: Duration,
    pub(super) proactive_margin: Duration,
    pub(super) max_attempts: u32,
    pub(super) backoff_base: Duration,
    pub(super) backoff_max: Duration,
    pub(super) max_retry_after: Duration,
    pub(super) retry_budget: Duration,
    pub(super) cooldown: Duration,
    pub(super) fetch_timeout: Duration,
    pub(super) max_wait: Duration,
    pub(super) forced_interval: Duration,
    pub(super) forced_interval_max: Duration,
    pub(super) revocation_burst: u32,
    pub(super) revocation_refill: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            hard_margin: DEFAULT_HARD_MARGIN,
            proactive_margin: DEFAULT_PROACTIVE_MARGIN,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            retry_budget: DEFAULT_RETRY_BUDGET,
            cooldown: DEFAULT_COOLDOWN,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            max_wait: DEFAULT_MAX_WAIT,
            forced_interval: DEFAULT_FORCED_REFRESH_INTERVAL,
            forced_interval_max: MAX_FORCED_REFRESH_INTERVAL,
            revocation_burst: DEFAULT_REVOCATION_BURST,
            revocation_refill: DEFAULT_REVOCATION_REFILL,
        }
    }
}
