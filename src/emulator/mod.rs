//! An offline emulator of DT's identity service and a slice of its API.
//!
//! [`Emulator`] is an HTTP/1.1 server on a loopback port that runs inside the caller's Tokio
//! runtime and stops when dropped. It generates one service account, exchanges JWT-bearer
//! assertions signed with it for access tokens the way DT's identity service does, and serves
//! two API routes that demand those tokens. Tests can shorten token lifetimes, revoke tokens,
//! inject faults into the token endpoint and count requests, all without network access.
//!
//! # What it validates
//!
//! `POST /oauth2/token` (other methods get 405, other paths 404) answers an RFC 6749 §5.1
//! token response (`access_token`, `token_type: "bearer"`, `expires_in`, with
//! `Cache-Control: no-store`) only if all of these hold; otherwise HTTP 400 with an RFC 6749
//! §5.2 `error` and an `error_description` naming the failed check (never the assertion or
//! the secret):
//!
//! - the body is `application/x-www-form-urlencoded` and decodes (`+`, `%XX`, UTF-8), with no
//!   parameter repeated — else `invalid_request`;
//! - `grant_type` is present — else `invalid_request` — and is exactly
//!   `urn:ietf:params:oauth:grant-type:jwt-bearer` — else `unsupported_grant_type`;
//! - `assertion` is present and not empty — else `invalid_request`;
//! - and, else `invalid_grant`: the assertion is a JWT whose header has `alg` `HS256` and a
//!   `kid` equal to the account's key id; its HMAC-SHA256 signature verifies with the secret's
//!   UTF-8 bytes; `iss` is the account's email; `aud` is exactly this emulator's
//!   [`token_url`](Emulator::token_url); `exp` is in the future; `iat` is present and not more
//!   than 60 s in the future. `exp` and `iat` get 60 s of leeway for clock skew.
//!
//! A body larger than 64 KiB gets 413.
//!
//! The API routes, `GET /v2/projects` (one DT-shaped project) and `POST /v2/echo` (returns the
//! JSON body it got, 400 if it is not JSON), need `Authorization: Bearer <token>` with a token
//! this emulator issued that has not outlived its TTL (measured on Tokio's clock) and has not
//! been [revoked](Emulator::revoke_all). Otherwise they answer 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"` and DT's error body
//! `{"error", "code": 401, "help"}`. Other `/v2` paths get 404.
//!
//! # Example
//!
//! ```
//! use token_refresh::emulator::Emulator;
//! use token_refresh::{JwtBearer, TokenProvider};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let emu = Emulator::start().await?;
//!     // The account's token URL points at the emulator, so JwtBearer needs no changes.
//!     let provider = TokenProvider::new(JwtBearer::new(emu.account()));
//!     let token = provider.token().await?;
//!     assert!(!token.expose_secret().is_empty());
//!     assert_eq!(emu.stats().token_requests, 1);
//!     Ok(())
//! }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ServiceAccount;

mod fault;
mod server;
mod validate;

pub use fault::Fault;

/// Lifetime of the tokens the emulator issues unless told otherwise: one hour, like DT's.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// An emulated DT identity service and API on `127.0.0.1`; see the [module docs](self).
///
/// The server runs as a task on the Tokio runtime that called [`start`](Self::start) and stops
/// (with all its connections) when the `Emulator` is dropped. Every method takes `&self`; share
/// the emulator with an [`Arc`] if tasks need it.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

/// Configures an [`Emulator`] before it starts; from [`Emulator::builder`].
#[derive(Clone, Debug)]
pub struct EmulatorBuilder {
    token_ttl: Duration,
}

/// Request counts, from [`Emulator::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `POST /oauth2/token` requests, faulted ones included.
    pub token_requests: u64,
    /// Token requests answered with a token.
    pub token_successes: u64,
    /// Token requests that got an error, an injected fault or no answer.
    pub token_failures: u64,
    /// Requests to `/v2` and below.
    pub api_requests: u64,
    /// API requests refused with 401.
    pub api_unauthorized: u64,
}

/// State shared by the handle and the connection tasks.
struct Shared {
    account: ServiceAccount,
    token_url: String,
    state: Mutex<State>,
}

struct State {
    token_ttl: Duration,
    tokens: HashMap<String, IssuedToken>,
    faults: VecDeque<(Fault, usize)>,
    stats: Stats,
}

struct IssuedToken {
    /// `None`: the TTL is too long to represent, so the token does not expire.
    expires_at: Option<Instant>,
    revoked: bool,
}

/// Why a bearer token is refused.
#[derive(Debug, Clone, Copy)]
enum TokenCheck {
    Missing,
    Unknown,
    Expired,
    Revoked,
}

impl Emulator {
    /// Starts an emulator with the default settings on a free port of `127.0.0.1`.
    ///
    /// Must be called within a Tokio runtime with I/O and time enabled. Fails only if the
    /// port cannot be bound.
    pub async fn start() -> std::io::Result<Self> {
        Self::builder().start().await
    }

    /// A builder for an emulator with non-default settings.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder {
            token_ttl: DEFAULT_TOKEN_TTL,
        }
    }

    /// The generated service account, with its token URL set to this emulator's, so that
    /// [`JwtBearer::new`](crate::JwtBearer::new) talks to the emulator unchanged. Every call
    /// returns the same credentials.
    pub fn account(&self) -> ServiceAccount {
        self.shared.account.clone()
    }

    /// The token endpoint, `http://127.0.0.1:PORT/oauth2/token`; also the `aud` assertions
    /// must carry.
    pub fn token_url(&self) -> String {
        self.shared.token_url.clone()
    }

    /// The API base URL, `http://127.0.0.1:PORT/v2`.
    pub fn api_url(&self) -> String {
        format!("http://{}{}", self.addr, server::API_PREFIX)
    }

    /// The origin of both the token endpoint and the API, `http://127.0.0.1:PORT`: what to
    /// bind tokens to with `for_origin`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the lifetime of tokens issued from now on (`expires_in` is its whole seconds).
    /// Tokens issued earlier keep theirs. Default: [`DEFAULT_TOKEN_TTL`] (one hour).
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.shared.lock().token_ttl = ttl;
    }

    /// Revokes every token issued so far: the API answers 401 to them. Tokens issued later
    /// are valid.
    pub fn revoke_all(&self) {
        for token in self.shared.lock().tokens.values_mut() {
            token.revoked = true;
        }
    }

    /// Makes the next `times` token requests get `fault` instead of their normal answer.
    /// Faults injected while others are pending queue up behind them, in order.
    pub fn inject_fault(&self, fault: Fault, times: usize) {
        if times > 0 {
            self.shared.lock().faults.push_back((fault, times));
        }
    }

    /// The request counts so far.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection task.
        self.server.abort();
    }
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Default for EmulatorBuilder {
    fn default() -> Self {
        Emulator::builder()
    }
}

impl EmulatorBuilder {
    /// Sets the lifetime of issued tokens; it can be changed later with
    /// [`Emulator::set_token_ttl`]. Default: [`DEFAULT_TOKEN_TTL`] (one hour).
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// Binds a free port of `127.0.0.1` and starts serving; see [`Emulator::start`].
    pub async fn start(self) -> std::io::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let token_url = format!("http://{addr}{}", server::TOKEN_PATH);
        let account = generate_account().with_token_url(token_url.clone());
        let shared = Arc::new(Shared {
            account,
            token_url,
            state: Mutex::new(State {
                token_ttl: self.token_ttl,
                tokens: HashMap::new(),
                faults: VecDeque::new(),
                stats: Stats::default(),
            }),
        });
        let server = tokio::spawn(server::serve(listener, Arc::clone(&shared)));
        tracing::debug!(%addr, "emulator: listening");
        Ok(Emulator {
            addr,
            shared,
            server,
        })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if some did, the state is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, update: impl FnOnce(&mut Stats)) {
        update(&mut self.lock().stats);
    }

    /// The fault the current token request gets, if any.
    fn take_fault(&self) -> Option<Fault> {
        let mut state = self.lock();
        let (fault, remaining) = state.faults.front_mut()?;
        let fault = fault.clone();
        *remaining -= 1;
        if *remaining == 0 {
            state.faults.pop_front();
        }
        Some(fault)
    }

    /// Issues a token; returns it with its lifetime.
    fn issue_token(&self) -> (String, Duration) {
        let token = format!("{:032x}", fastrand::u128(..));
        let mut state = self.lock();
        let ttl = state.token_ttl;
        state.tokens.insert(
            token.clone(),
            IssuedToken {
                // A TTL too long for `Instant` means a token that does not expire.
                expires_at: Instant::now().checked_add(ttl),
                revoked: false,
            },
        );
        state.stats.token_successes += 1;
        (token, ttl)
    }

    /// Counts an API request and checks its bearer token.
    fn check_bearer(&self, headers: &HeaderMap) -> Result<(), TokenCheck> {
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty());
        let mut state = self.lock();
        state.stats.api_requests += 1;
        let result = match token.map(|t| state.tokens.get(t)) {
            None => Err(TokenCheck::Missing),
            Some(None) => Err(TokenCheck::Unknown),
            Some(Some(issued)) if issued.revoked => Err(TokenCheck::Revoked),
            Some(Some(issued)) if issued.expires_at.is_some_and(|at| Instant::now() >= at) => {
                Err(TokenCheck::Expired)
            }
            Some(Some(_)) => Ok(()),
        };
        if let Err(problem) = result {
            state.stats.api_unauthorized += 1;
            tracing::debug!(?problem, "emulator: API request unauthorized");
        }
        result
    }
}

/// Credentials shaped like DT's: a 20-character key id, a service-account email and a
/// 40-character secret.
fn generate_account() -> ServiceAccount {
    let lower = |n: usize| -> String {
        (0..n)
            .filter_map(|_| char::from_digit(fastrand::u32(..36), 36))
            .collect()
    };
    let key_id = lower(20);
    let email = format!(
        "emulator-{:08x}@{:08x}.serviceaccount.d21s.com",
        fastrand::u32(..),
        fastrand::u32(..)
    );
    let secret: String = (0..40).map(|_| fastrand::alphanumeric()).collect();
    ServiceAccount::new(key_id, email, secret)
}
