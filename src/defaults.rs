//! The crate's default settings, each with the reason for its value.
//!
//! Every builder setter names the constant it defaults to. They are collected here so the
//! crate's front page shows its types, and so the whole policy can be read in one place.

use std::time::Duration;

/// A token is not handed out in the last 60 s of its life. This is the DT guide's buffer; it
/// covers clock skew between us and the API and the time a request spends in flight, so a
/// token is never sent that expires before the server checks it. Scaled down to a tenth of
/// the lifetime for short tokens.
pub const DEFAULT_HARD_MARGIN: Duration = Duration::from_secs(60);

/// Five minutes before expiry one background refresh starts while callers keep using the
/// current token. Five minutes leaves room for a full retry cycle and a few cool-downs before
/// the hard margin is reached, yet uses 92 % of an hour-long token. Scaled down to a fifth of
/// the lifetime for short tokens.
pub const DEFAULT_PROACTIVE_MARGIN: Duration = Duration::from_secs(300);

/// Attempts per refresh (the first plus three retries): enough to ride out a restarting
/// endpoint or a dropped connection, few enough to give up within seconds.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;

/// First backoff delay; doubled per retry (with jitter) up to [`DEFAULT_BACKOFF_MAX`].
/// A quarter second lets a dropped connection or a restarting pod recover without a
/// noticeable pause.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(250);

/// Longest backoff delay between two attempts: long enough to let an overloaded endpoint
/// breathe, short enough to stay well inside [`DEFAULT_MAX_WAIT`].
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(8);

/// Longest `Retry-After` waited out within one refresh. A longer request ends the refresh
/// with the error, and the cool-down honours it instead, so callers are told at once rather
/// than kept waiting.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// No retry starts later than this after a refresh's first attempt. Twice
/// [`DEFAULT_MAX_RETRY_AFTER`], so a full `Retry-After` wait still fits after a few
/// attempts. Callers do not wait this long: [`DEFAULT_MAX_WAIT`] bounds their wait, and a
/// refresh that outlives it goes on in the background for the callers after them.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(60);

/// After a failed refresh, callers without a valid token get the last error at once for
/// this long instead of starting another refresh. Five seconds keeps a dead endpoint from
/// being hammered by every request and still notices recovery quickly.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(5);

/// Longest cool-down a server's `Retry-After` can impose: beyond five minutes a bad header
/// would do more harm (an hour of failed calls) than an extra request would.
pub(crate) const MAX_COOLDOWN: Duration = Duration::from_secs(300);

/// Timeout around one call of the token source, so a custom source that never answers
/// cannot hold a refresh forever. The built-in grants' own request timeout
/// ([`DEFAULT_REQUEST_TIMEOUT`]) is shorter.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest time a caller waits for a token, whatever the token endpoint does. Thirty seconds
/// is longer than a healthy refresh with a few retries takes, and no longer than a user or a
/// load balancer waits for an answer; past it the caller gets [`Error::WaitTimeout`] while the
/// refresh goes on for later callers.
///
/// [`Error::WaitTimeout`]: crate::Error::WaitTimeout
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

/// Least time between two refreshes forced by rejections (HTTP 401, gRPC `UNAUTHENTICATED`)
/// of tokens that no request had succeeded with: an API that rejects every token (a wrong
/// audience, a disabled account) costs one token request per interval instead of one per
/// call. Five seconds is invisible next to an hour-long token and caps such a storm at a
/// dozen token requests a minute before the interval starts growing. Revocations (a token
/// the API had accepted, then rejects) are refreshed at once instead, within
/// [`DEFAULT_REVOCATION_BURST`].
pub const DEFAULT_FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Revocations refreshed at once, back to back: a token the API had accepted and now rejects
/// was revoked (key rotation, an operator ending sessions, a replicated validator catching
/// up), and a fresh token cures it, so each such rejection forces a refresh without waiting
/// for [`DEFAULT_FORCED_REFRESH_INTERVAL`], as long as this allowance lasts. Ten covers a
/// rotation that revokes tokens several times within seconds; the allowance refills by one
/// every [`DEFAULT_REVOCATION_REFILL`].
pub const DEFAULT_REVOCATION_BURST: u32 = 10;

/// The revocation allowance regains one refresh this often: once the burst is spent, at most
/// two revocation refreshes a second. That still keeps up with an API that revokes its tokens
/// every 700 ms for as long as it does so, and caps what an API that takes each token exactly
/// once (accepts it, then rejects it) can cost the identity service. Once a fresh token is
/// rejected before any request succeeded with it, revocations too wait for the forced-refresh
/// interval: fresh tokens do not seem to help.
pub const DEFAULT_REVOCATION_REFILL: Duration = Duration::from_millis(500);

/// Longest interval between forced refreshes. The interval doubles each time a freshly
/// fetched token is rejected before any request succeeded with it; five minutes bounds how
/// long an API that was fixed in the meantime waits for its next fresh token.
pub const MAX_FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// Time for one token request, connect to last byte. A token endpoint answers in well under a
/// second when healthy; 10 s leaves room for a slow network yet lets the provider's retries
/// run instead of hanging on a dead connection.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Time to establish the token request's connection: a reachable endpoint connects in
/// milliseconds, an unreachable one should fail fast and go to the retry logic.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest token response read. Real responses are a few hundred bytes (a few KiB with an ID
/// token); the cap stops a broken or hostile endpoint from making us buffer without bound.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Lifetime assumed when a token response has no `expires_in` (RFC 6749 makes it optional).
/// One hour is DT's lifetime and the common default of OAuth2 servers.
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);

/// Longest lifetime believed. A server that claims years is wrong or misconfigured; capping
/// at a day means a revoked token is dropped by the next refresh at the latest.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 3600);

/// Most bytes of a request body `AuthLayer` (feature `tower`) records to resend it after a
/// rejection. 64 KiB holds any JSON API call or unary gRPC message worth resending, as
/// linkerd2-proxy's retries hold, while a large upload or a long stream is sent without
/// being kept in memory (and its rejection is returned as it is).
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

/// Timeout of one token-store call (read, write, lease). A store answers in a millisecond on
/// a healthy network; past a second it is down or overloaded, and the provider is better off
/// asking the token endpoint itself than waiting on it.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a fleet's refresh lease outlives a holder that stopped renewing it. The holder
/// renews its lease every third of this while it fetches, so a live holder keeps it however
/// long its token request takes, and two renewals in a row may be late or lost before it
/// lapses; a holder that dies mid-refresh (SIGKILL, a lost host) holds the fleet up for at
/// most this and one poll of the waiters (250 ms): a cold process then has its token within
/// the fetch time and 1.25 s, where the callers' wait is [`DEFAULT_MAX_WAIT`]. Shorter would
/// let a store that answers in a few hundred milliseconds (its calls may take up to
/// [`DEFAULT_STORE_TIMEOUT`]) cost the lease, and one extra token request.
pub const DEFAULT_STORE_LEASE_TTL: Duration = Duration::from_secs(1);

/// How long a stored refresh token is kept after its last rotation
/// ([`RefreshToken::stored_for`](crate::RefreshToken::stored_for)): Entra's and Okta's
/// default refresh-token lifetime (90 days of inactivity), past which servers refuse it
/// anyway.
pub const DEFAULT_REFRESH_TOKEN_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// How long discovered server metadata is used before it is fetched again
/// ([`TokenEndpoint::discovery_ttl`](crate::TokenEndpoint::discovery_ttl)). One fetch an
/// hour costs nothing next to the token requests it serves, and a token endpoint that moves
/// is found within the hour; a failed re-fetch keeps the old metadata.
pub const DEFAULT_DISCOVERY_TTL: Duration = Duration::from_secs(3600);

/// Keys a [`KeyedTokenProvider`](crate::KeyedTokenProvider) keeps: a gateway or an agent talks
/// to tens of APIs, each wanting its own scope, audience or resource, so 256 distinct keys is
/// far beyond what a service needs, and bounds what a stream of distinct keys (a bug, or
/// parameters taken from requests) can hold: about 256 providers of a few hundred bytes and
/// their tokens, well under a megabyte. An evicted key costs one token request when it comes
/// back.
pub const DEFAULT_MAX_KEYS: usize = 256;
