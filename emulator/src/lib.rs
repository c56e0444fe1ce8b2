//! An offline emulator of DT's identity service and a slice of its API.
//!
//! [`Emulator`] is an HTTP/1.1 server on a loopback port that runs inside the caller's Tokio
//! runtime and stops when dropped. It generates one service account and one OAuth2 client,
//! exchanges JWT-bearer assertions signed with the account (the way DT's identity service
//! does) or the client's credentials for access tokens, and serves API routes that demand
//! those tokens, among them DT's device event stream fed by a few emulated devices. Tests can
//! shorten token lifetimes, revoke tokens, inject faults into the token endpoint, decide how
//! streams end and count requests, all without network access.
//!
//! # What it validates
//!
//! `POST /oauth2/token` (other methods get 405, other paths 404) answers an RFC 6749 §5.1
//! token response (`access_token`, `token_type: "bearer"`, `expires_in`, with
//! `Cache-Control: no-store`) only if all of these hold; otherwise an RFC 6749 §5.2 `error`
//! with an `error_description` naming the failed check (never the assertion, a secret or
//! another credential), with HTTP 400 unless said otherwise:
//!
//! - the body is `application/x-www-form-urlencoded` and decodes (`+`, `%XX`, UTF-8), with no
//!   parameter repeated — else `invalid_request`;
//! - `grant_type` is present — else `invalid_request` — and is
//!   `urn:ietf:params:oauth:grant-type:jwt-bearer`, `client_credentials`, `refresh_token` or
//!   `urn:ietf:params:oauth:grant-type:token-exchange` — else `unsupported_grant_type`.
//!
//! For the **JWT-bearer grant** (RFC 7523, DT's):
//!
//! - `assertion` is present and not empty — else `invalid_request`;
//! - and, else `invalid_grant`: the assertion is a JWT whose header has `alg` `HS256` and a
//!   `kid` equal to the account's key id; its HMAC-SHA256 signature verifies with the secret's
//!   UTF-8 bytes; `iss` is the account's email; `aud` is exactly this emulator's
//!   [`token_url`](Emulator::token_url); `exp` is in the future; `iat` is present and not more
//!   than 60 s in the future. `exp` and `iat` get 60 s of leeway for clock skew.
//!
//! For the **client-credentials grant** (RFC 6749 §4.4), the client authenticates as the
//! emulator's [client](Emulator::client_credentials) (RFC 6749 §2.3.1):
//!
//! - either with HTTP Basic, `Authorization: Basic base64(urlencode(id) ":"
//!   urlencode(secret))`, decoded accordingly (padding optional, `+` is a space), or with the
//!   `client_id` and `client_secret` form parameters — both at once (Basic and
//!   `client_secret`, or a `client_id` parameter other than Basic's) is `invalid_request`;
//! - missing, malformed, empty or wrong credentials are `invalid_client` with HTTP 401, plus
//!   `WWW-Authenticate: Basic realm="emulator"` when the request had an `Authorization`
//!   header;
//! - an optional `scope` must be scope tokens separated by single spaces (RFC 6749 §3.3) —
//!   else `invalid_scope` — and is echoed as `scope` in the token response; an optional
//!   `audience` is accepted and ignored.
//!
//! The metadata lists every client authentication method and assertion algorithm it takes;
//! a test can narrow both ([`set_auth_methods`](Emulator::set_auth_methods),
//! [`set_auth_signing_algs`](Emulator::set_auth_signing_algs)), and a token request that
//! authenticates otherwise is then `invalid_client` (401) naming its method or algorithm.
//!
//! For the **refresh-token grant** (RFC 6749 §6), the client authenticates as for client
//! credentials, and `refresh_token` must be one [`issue_refresh_token`](Emulator::issue_refresh_token)
//! started or a refresh answered with. Each refresh spends it and answers with the next
//! (`refresh_token` in the response), unless [rotation](Emulator::set_refresh_token_rotation)
//! is off; an unknown refresh token, one of a revoked series, or one spent before (reuse
//! detection, which revokes its whole series) is `invalid_grant`.
//!
//! For the **token exchange** (RFC 8693), `subject_token` must be present and
//! `subject_token_type` (and `actor_token_type` with an `actor_token`) an
//! `urn:ietf:params:oauth:token-type:` URI; client authentication is checked if offered.
//! The subject tokens are [recorded](Emulator::subject_tokens) and the answer carries
//! `issued_token_type` `urn:ietf:params:oauth:token-type:access_token`.
//!
//! Tokens of every grant are alike: same lifetime, same routes, same revocation. A body
//! larger than 64 KiB gets 413. `GET /.well-known/oauth-authorization-server` and
//! `/.well-known/openid-configuration` serve the metadata document (issuer
//! [`issuer`](Emulator::issuer), the token endpoint, the auth methods and algorithms).
//!
//! # API routes
//!
//! All need `Authorization: Bearer <token>` with a token this emulator issued that has not
//! outlived its TTL (measured on Tokio's clock) and has not been
//! [revoked](Emulator::revoke_all). Otherwise they answer 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"` and DT's error body
//! `{"error", "code": 401, "help"}`. Other `/v2` paths get 404.
//!
//! - `GET /v2/projects`: one DT-shaped project.
//! - `POST /v2/echo`: returns the JSON body it got; 400 if it is not JSON.
//! - `GET /v2/whoami`: what the token was granted, as its request asked:
//!   `{"scope", "resources", "audience"}` (RFC 8707 `resource` may repeat in a token
//!   request; one that is not an absolute URI without a fragment is `invalid_target`).
//!
//! As an OAuth 2.0 protected resource, the API can also publish RFC 9728 metadata and name
//! it in its 401 challenges ([`publish_resource_metadata`](Emulator::publish_resource_metadata)),
//! accept only tokens issued for it ([`require_resource`](Emulator::require_resource)), and
//! answer a path whose token lacks a scope with 403 `insufficient_scope`
//! ([`require_scope`](Emulator::require_scope)).
//! - `GET /v2/projects/{project}/devices:stream`: DT's device event stream, one long-lived
//!   `200` with `content-type: application/x-ndjson` and a chunked body of one JSON object
//!   per line. A ticker emits one event every [event interval](EmulatorBuilder::event_interval)
//!   round-robin over three emulated [devices](Emulator::device_ids), and every open stream
//!   gets every event (a client that reads too slowly misses some):
//!
//!   ```text
//!   {"result":{"event":{"eventId":"evt-000000000042","targetName":"projects/{project}/devices/{device}","eventType":"temperature","data":{"temperature":{"value":21.37,"updateTime":"2024-02-29T13:05:09.123456Z"}},"timestamp":"2024-02-29T13:05:09.123456Z"}}}
//!   ```
//!
//!   The event id carries a global sequence number, so that a client can detect a gap; see
//!   [`event_sequence`]. With the query parameter `ping_interval` (DT's `10s`, also `500ms`,
//!   `1.5s`, `2m`; at most a day), heartbeats go out at that interval:
//!   `{"result":{"event":{"eventType":"ping","timestamp":"…"}}}`; a bad value gets 400 with
//!   DT's error body. When the token that opened the stream expires or is revoked, the
//!   stream ends as [`set_stream_end`](Emulator::set_stream_end) says: by default with one
//!   last line, `{"error":{"code":16,"message":"the access token has expired","status":"UNAUTHENTICATED"}}`
//!   (or `"…has been revoked"`), and a clean end of the body.
//!
//! # Cloud identity services
//!
//! The GCP metadata server, Google STS and IAM Credentials, Azure IMDS and App Service, and
//! an Entra token endpoint that takes federated client assertions, on the same port; see
//! [`CloudStats`] and the methods that name them ([`sts_url`](Emulator::sts_url),
//! [`imds_endpoint`](Emulator::imds_endpoint), [`federated_token`](Emulator::federated_token),
//! …). The metadata server's host is the emulator's address
//! (`GCE_METADATA_HOST=127.0.0.1:PORT`, or `MetadataServer::endpoint(emulator.origin())`).
//! Tokens they issue are the emulator's like any other: the API routes take them.
//!
//! # Controls
//!
//! [`set_token_ttl`](Emulator::set_token_ttl), [`revoke_all`](Emulator::revoke_all) (which
//! also ends open streams at once), [`inject_fault`](Emulator::inject_fault) (token
//! endpoint only), [`set_event_interval`](Emulator::set_event_interval),
//! [`set_stream_end`](Emulator::set_stream_end), [`close_streams`](Emulator::close_streams)
//! (a network drop of every open stream) and [`stats`](Emulator::stats).
//!
//! # Example
//!
//! ```
//! use token_refresh_emulator::Emulator;
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
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use token_refresh::{ClientCredentials, ServiceAccount};

mod body;
mod client_auth;
mod cloud;
mod dpop;
mod events;
mod fault;
mod form;
mod grants;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod grpc;
mod jwt;
mod keys;
mod protected;
mod race;
mod responses;
mod rfc3339;
mod routes;
mod scripted;
mod server;
mod stream;
mod stream_end;
mod validate;

use client_auth::Client;
pub use cloud::{
    AZURE_FEDERATION_AUDIENCE, CloudStats, ExpiresOn, FEDERATED_SUBJECT, MetadataBehaviour,
};
pub use events::event_sequence;
pub use fault::Fault;
pub use scripted::{Answer, Received, ScriptedServer};
pub use stream_end::StreamEnd;

/// Lifetime of the tokens the emulator issues unless told otherwise: one hour, like DT's.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Time between two device events unless told otherwise: 500 ms. Real sensors report every
/// few minutes, but a test or an example should see several events a second without waiting,
/// while an idle emulator still costs next to nothing.
pub const DEFAULT_EVENT_INTERVAL: Duration = Duration::from_millis(500);

/// How many emulated devices take turns emitting events: enough for a client to see events
/// from more than one device, few enough to tell them apart at a glance.
const DEVICE_COUNT: usize = 3;

/// Events a stream may fall behind the ticker before it misses some; it only happens to a
/// stream task that was not scheduled for this many event intervals.
const EVENT_BUFFER: usize = 64;

/// An emulated DT identity service and API on `127.0.0.1`; see the [module docs](self).
///
/// The server runs as a task on the Tokio runtime that called [`start`](Self::start) and stops
/// (with all its connections) when the `Emulator` is dropped. Every method takes `&self`; share
/// the emulator with an [`Arc`] if tasks need it.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    ticker: JoinHandle<()>,
}

/// Configures an [`Emulator`] before it starts; from [`Emulator::builder`].
#[derive(Clone)]
pub struct EmulatorBuilder {
    token_ttl: Duration,
    event_interval: Duration,
    client_id: Option<String>,
    client_secret: Option<SecretString>,
    bind: SocketAddr,
    public_url: Option<String>,
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
    /// Event streams answered with 200.
    pub streams_opened: u64,
    /// Event lines written to streams, summed over streams (pings and error lines not
    /// included).
    pub events_sent: u64,
    /// gRPC calls to `emulator.Echo` (feature `tonic`), refused ones included.
    pub grpc_calls: u64,
    /// gRPC calls refused with `UNAUTHENTICATED`.
    pub grpc_unauthenticated: u64,
    /// Refresh-token grants answered with a token.
    pub refresh_token_grants: u64,
    /// Refresh tokens spent a second time (each revoked its family).
    pub refresh_token_reuses: u64,
    /// Refresh-token grants refused with `invalid_grant` (reuses included).
    pub invalid_grants: u64,
    /// Token exchanges answered with a token.
    pub token_exchanges: u64,
    /// Requests for the metadata document (RFC 8414 or OpenID discovery).
    pub discovery_requests: u64,
    /// Tokens issued bound to a DPoP key.
    pub dpop_tokens: u64,
    /// Token requests refused for their DPoP proof (`invalid_dpop_proof`, `use_dpop_nonce`).
    pub dpop_refusals: u64,
    /// Requests for the API's RFC 9728 protected-resource metadata.
    pub resource_metadata_requests: u64,
    /// API requests refused with 403 `insufficient_scope`.
    pub insufficient_scope: u64,
}

/// The built-in Google service account of [`Emulator::google_key_file`]: a key made for the
/// emulator, public by being here.
const GOOGLE_KEY_PEM: &str = include_str!("google-service-account.pem");
const GOOGLE_KEY_ID: &str = "emulator-google-key-1";
const GOOGLE_EMAIL: &str = "emulator@emulator.iam.gserviceaccount.com";

/// State shared by the handle and the connection tasks.
struct Shared {
    /// `http://ADDR`, or the public URL: what every URL the emulator names starts with.
    origin: String,
    account: ServiceAccount,
    client: Client,
    /// Public keys registered with [`Emulator::register_key`].
    keys: keys::Registry,
    token_url: String,
    state: Mutex<State>,
    /// The device ids.
    devices: Arc<[Arc<str>]>,
    /// Fed by the ticker; every stream subscribes.
    events: broadcast::Sender<Arc<events::Event>>,
    /// The ticker's period.
    event_interval: watch::Sender<Duration>,
    /// Bumped by every `revoke_all`.
    revocations: watch::Sender<u64>,
    /// Bumped by every `close_streams`.
    closes: watch::Sender<u64>,
    /// The cloud identity services' keys and secrets.
    cloud: cloud::Fixed,
}

struct State {
    token_ttl: Duration,
    tokens: HashMap<String, IssuedToken>,
    faults: VecDeque<(Fault, usize)>,
    stream_end: StreamEnd,
    stats: Stats,
    refresh_tokens: grants::RefreshTokens,
    dpop: dpop::Dpop,
    /// Subject tokens of token exchanges, in order.
    subject_tokens: Vec<String>,
    /// The issuer the metadata names, when a test makes it differ from the origin.
    metadata_issuer: Option<String>,
    /// The client authentication methods listed and accepted, when a test narrows them.
    auth_methods: Option<Vec<String>>,
    /// The client assertion algorithms listed and accepted, when a test narrows them.
    auth_algs: Option<Vec<String>>,
    /// The API as a protected resource: RFC 9728 metadata, resource and scope checks.
    protection: protected::Protection,
    /// The cloud identity services' state.
    cloud: cloud::State,
}

struct IssuedToken {
    /// `None`: the TTL is too long to represent, so the token does not expire.
    expires_at: Option<Instant>,
    /// What its request asked for: scope, resources, audience.
    granted: protected::Granted,
    revoked: bool,
    /// The thumbprint of the DPoP key a DPoP-bound token is bound to (`cnf.jkt`).
    jkt: Option<String>,
}

/// A bearer token that checked out: its value and expiry.
struct Bearer {
    token: String,
    expires_at: Option<Instant>,
    granted: protected::Granted,
}

/// Why a bearer token is refused.
#[derive(Debug, Clone)]
enum TokenCheck {
    Missing,
    Unknown,
    Expired,
    Revoked,
    /// A DPoP-bound token sent as a bearer token.
    Bound,
    /// A DPoP proof without the current nonce.
    DpopNonce,
    /// A DPoP proof that does not check out.
    DpopInvalid(String),
}

impl Emulator {
    /// Registers the public key `jwk` (with `kid` and `alg`: RS256, PS256, ES256 or EdDSA;
    /// [`SigningKey::public_jwk`](token_refresh::SigningKey::public_jwk) gives one) for `issuer`:
    /// a JWT-bearer assertion whose `kid` is this key's must be signed with it, with `alg`
    /// as registered (HS256 is refused, whatever the secret: no algorithm confusion) and
    /// `iss` = `issuer`; a client whose id is `issuer` can authenticate with
    /// `private_key_jwt` signed with it (`iss` = `sub` = the client id). Both are checked
    /// for `aud` = the token URL, `exp` and `iat`, and, when
    /// [`check_replays`](Self::check_replays) is on, a `jti` not seen before. A JWK that is
    /// not such a key is an [`Error::Config`](token_refresh::Error::Config).
    pub fn register_key(
        &self,
        issuer: impl Into<String>,
        jwk: &serde_json::Value,
    ) -> token_refresh::Result<()> {
        self.shared
            .keys
            .register(issuer.into(), jwk)
            .map_err(|problem| token_refresh::Error::Config(format!("emulator: {problem}")))
    }

    /// A Google service account key file (the JSON Google issues) for this emulator: its
    /// `token_uri` is the emulator's and its RSA key is registered, so
    /// [`JwtBearer::google_service_account`](token_refresh::JwtBearer::google_service_account) gets
    /// tokens offline. The key is built into the emulator and public: never use it elsewhere.
    pub fn google_key_file(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "service_account",
            "project_id": "emulator",
            "private_key_id": GOOGLE_KEY_ID,
            "private_key": GOOGLE_KEY_PEM,
            "client_email": GOOGLE_EMAIL,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_url(),
        })
    }

    /// A JWT-bearer assertion for the [account](Self::account), signed now the way another
    /// system (a sidecar, a CI job) would sign it for `JwtBearer::from_assertion_file`:
    /// HS256 with the account's secret, `iss` its email, `aud` the token URL, valid for an
    /// hour. A secret, like the account's: keep it out of logs.
    pub fn signed_assertion(&self) -> String {
        let account = &self.shared.account;
        let iat = jwt::now() as u64;
        let header = serde_json::json!({"alg": "HS256", "kid": account.key_id(), "typ": "JWT"});
        let claims = serde_json::json!({
            "iss": account.email(),
            "aud": self.shared.token_url,
            "iat": iat,
            "exp": iat + 3600,
        });
        jwt::sign_hs256(&header, &claims, account.expose_secret().as_bytes())
            .unwrap_or_else(|| unreachable!("the generated account has a secret"))
    }

    /// Checks the `jti` of assertions signed with registered keys and of client assertions:
    /// one without a `jti`, or with one seen before, is refused (and the seen ones are
    /// forgotten when this is set). Default: off.
    pub fn check_replays(&self, on: bool) {
        self.shared.keys.check_replays(on);
    }

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
            event_interval: DEFAULT_EVENT_INTERVAL,
            client_id: None,
            client_secret: None,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            public_url: None,
        }
    }

    /// The generated service account, with its token URL set to this emulator's, so that
    /// [`JwtBearer::new`](token_refresh::JwtBearer::new) talks to the emulator unchanged. Every call
    /// returns the same credentials.
    pub fn account(&self) -> ServiceAccount {
        self.shared.account.clone()
    }

    /// The OAuth2 client's id, for the client-credentials grant: generated at start (e.g.
    /// `emulator-client-1a2b3c4d`) unless set with [`EmulatorBuilder::client_id`].
    pub fn client_id(&self) -> String {
        self.shared.client.id.clone()
    }

    /// The OAuth2 client's secret, for the client-credentials grant: 40 random alphanumeric
    /// characters generated at start unless set with [`EmulatorBuilder::client_secret`].
    ///
    /// This is a secret: keep it out of logs and assertion messages. The emulator itself
    /// never shows it (its `Debug` and its error descriptions leave it out).
    pub fn client_secret(&self) -> String {
        self.shared.client.secret.expose_secret().to_owned()
    }

    /// A [`ClientCredentials`] source for the emulator's client: its token URL is this
    /// emulator's, its credentials [`client_id`](Self::client_id) and
    /// [`client_secret`](Self::client_secret), and it keeps the default client
    /// authentication (HTTP Basic). Set a scope or another client authentication on it as on
    /// any other.
    pub fn client_credentials(&self) -> ClientCredentials {
        ClientCredentials::new(self.token_url(), self.client_id(), self.client_secret())
    }

    /// The ids of the emulated devices that take turns emitting events, in turn order; the
    /// events' `targetName` is `projects/{project}/devices/{id}`.
    pub fn device_ids(&self) -> Vec<String> {
        self.shared.devices.iter().map(|d| d.to_string()).collect()
    }

    /// The token endpoint, `http://127.0.0.1:PORT/oauth2/token`; also the `aud` assertions
    /// must carry.
    pub fn token_url(&self) -> String {
        self.shared.token_url.clone()
    }

    /// The API base URL, `http://127.0.0.1:PORT/v2`.
    pub fn api_url(&self) -> String {
        format!("{}{}", self.shared.origin, routes::API_PREFIX)
    }

    /// The origin of both the token endpoint and the API, `http://127.0.0.1:PORT` (or the
    /// [public URL](EmulatorBuilder::public_url)): what to bind tokens to with `for_origin`.
    pub fn origin(&self) -> String {
        self.shared.origin.clone()
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

    /// Revokes every token issued so far: the API answers 401 to them, and every event
    /// stream they opened ends at once, as [`set_stream_end`](Self::set_stream_end) says.
    /// Tokens issued later are valid.
    pub fn revoke_all(&self) {
        for token in self.shared.lock().tokens.values_mut() {
            token.revoked = true;
        }
        self.shared
            .revocations
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Sets the time between two device events, from the next event on (the wait for it
    /// starts again now). A zero interval counts as 1 ms. Default:
    /// [`DEFAULT_EVENT_INTERVAL`] (500 ms), or what [`EmulatorBuilder::event_interval`] set.
    pub fn set_event_interval(&self, interval: Duration) {
        self.shared.event_interval.send_replace(interval);
    }

    /// Sets how open event streams end when the token that opened them expires or is
    /// revoked; it applies to streams open now, too. Default: [`StreamEnd::Error`] with code
    /// 16, like DT.
    pub fn set_stream_end(&self, end: StreamEnd) {
        self.shared.lock().stream_end = end;
    }

    /// Drops the connection of every open event stream now, mid-body and without an error
    /// line, whatever [`set_stream_end`](Self::set_stream_end) says: a network drop. Streams
    /// opened later are not affected.
    pub fn close_streams(&self) {
        self.shared.closes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Makes the next `times` token requests get `fault` instead of their normal answer.
    /// Faults injected while others are pending queue up behind them, in order.
    pub fn inject_fault(&self, fault: Fault, times: usize) {
        if times > 0 {
            self.shared.lock().faults.push_back((fault, times));
        }
    }

    /// A new refresh token for the emulator's client, the first of a new series (what an
    /// authorization-code flow would have given the user). Each refresh spends it and
    /// answers with the next one (rotation); a refresh token spent twice revokes its whole
    /// series (reuse detection, as Auth0 and Okta do): every later refresh of it gets
    /// `invalid_grant`. See [`Stats::refresh_token_reuses`].
    pub fn issue_refresh_token(&self) -> String {
        self.shared.lock().refresh_tokens.issue()
    }

    /// Turns refresh-token rotation off (refreshes keep the same refresh token) or back on.
    /// Default: on.
    pub fn set_refresh_token_rotation(&self, on: bool) {
        self.shared.lock().refresh_tokens.no_rotation = !on;
    }

    /// The subject tokens that token exchanges sent, oldest first. They are secrets in real
    /// life: keep them out of logs.
    pub fn subject_tokens(&self) -> Vec<String> {
        self.shared.lock().subject_tokens.clone()
    }

    /// The issuer identifier, `http://127.0.0.1:PORT`, whose metadata (RFC 8414, OpenID
    /// discovery) names the token endpoint: what
    /// [`TokenEndpoint::discover`](token_refresh::TokenEndpoint::discover) wants.
    pub fn issuer(&self) -> String {
        self.origin()
    }

    /// The API's resource identifier (RFC 8707, RFC 9728): `http://127.0.0.1:PORT/v2`.
    pub fn resource(&self) -> String {
        protected::resource_of(&self.shared)
    }

    /// Publishes the API's RFC 9728 protected-resource metadata at
    /// `/.well-known/oauth-protected-resource/v2` — `resource` the API's
    /// [identifier](Self::resource), `authorization_servers` this emulator's
    /// [issuer](Self::issuer), `scopes_supported` the [required scopes](Self::require_scope)
    /// — and names it in the API's 401 challenges (`resource_metadata`). Default: off.
    pub fn publish_resource_metadata(&self, on: bool) {
        self.shared.lock().protection.metadata = on;
    }

    /// Makes the API accept only tokens issued for its [resource](Self::resource) (a
    /// `resource` parameter in their request), answering others with 401. Default: off.
    pub fn require_resource(&self, on: bool) {
        self.shared.lock().protection.require_resource = on;
    }

    /// Makes the API answer requests under `path_prefix` (e.g. `/v2/admin`) whose token lacks
    /// `scope` with 403 `WWW-Authenticate: Bearer error="insufficient_scope",
    /// scope="{scope}"`. Add more with further calls.
    pub fn require_scope(&self, path_prefix: impl Into<String>, scope: impl Into<String>) {
        self.shared
            .lock()
            .protection
            .scopes
            .push((path_prefix.into(), scope.into()));
    }

    /// Makes the metadata document name `issuer` instead of this emulator's (a mix-up
    /// attack or a misconfigured server), or, with `None`, its own again.
    pub fn set_metadata_issuer(&self, issuer: Option<String>) {
        self.shared.lock().metadata_issuer = issuer;
    }

    /// Narrows the client authentication methods to `methods` (RFC 8414 names:
    /// `client_secret_basic`, `client_secret_post`, `private_key_jwt`, `client_secret_jwt`):
    /// the metadata lists them as `token_endpoint_auth_methods_supported`, and a token
    /// request that authenticates otherwise is `invalid_client` (401) naming its method.
    /// `None` restores the default: all four, listed and accepted.
    pub fn set_auth_methods(&self, methods: Option<&[&str]>) {
        self.shared.lock().auth_methods =
            methods.map(|m| m.iter().map(|s| (*s).to_owned()).collect());
    }

    /// Narrows the algorithms of client assertions to `algs` (`RS256`, `PS256`, `ES256`,
    /// `EdDSA`, `HS256`): the metadata lists them as
    /// `token_endpoint_auth_signing_alg_values_supported`, and a client assertion signed
    /// otherwise is `invalid_client` (401) naming its algorithm. `None` restores the
    /// default: all five, listed and accepted.
    pub fn set_auth_signing_algs(&self, algs: Option<&[&str]>) {
        self.shared.lock().auth_algs = algs.map(|a| a.iter().map(|s| (*s).to_owned()).collect());
    }

    /// Makes the token endpoint demand a DPoP nonce (RFC 9449 §8): a proof without the
    /// current one gets 400 `use_dpop_nonce` with a `DPoP-Nonce` header, and every token
    /// response carries the current nonce. Default: off.
    pub fn require_dpop_nonce(&self, on: bool) {
        let mut state = self.shared.lock();
        state.dpop.require_nonce = on;
        if state.dpop.nonce.is_empty() {
            state.dpop.rotate();
        }
    }

    /// Makes the API demand the DPoP nonce in the proofs of DPoP-bound tokens: a request
    /// without it gets 401 with `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a
    /// `DPoP-Nonce` header (the same nonce as the token endpoint's). Default: off.
    pub fn require_api_dpop_nonce(&self, on: bool) {
        let mut state = self.shared.lock();
        state.dpop.require_api_nonce = on;
        if state.dpop.nonce.is_empty() {
            state.dpop.rotate();
        }
    }

    /// Replaces the DPoP nonce: proofs with the old one get `use_dpop_nonce` from now on.
    /// Returns the new one.
    pub fn rotate_dpop_nonce(&self) -> String {
        self.shared.lock().dpop.rotate()
    }

    /// The request counts so far.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection task; the
        // stream tasks stop when their connection's body is dropped.
        self.server.abort();
        self.ticker.abort();
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

impl fmt::Debug for EmulatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorBuilder")
            .field("token_ttl", &self.token_ttl)
            .field("event_interval", &self.event_interval)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[REDACTED]"),
            )
            .field("bind", &self.bind)
            .field("public_url", &self.public_url)
            .finish()
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

    /// Sets the time between two device events on the event stream; it can be changed later
    /// with [`Emulator::set_event_interval`]. A zero interval counts as 1 ms. Default:
    /// [`DEFAULT_EVENT_INTERVAL`] (500 ms).
    pub fn event_interval(mut self, interval: Duration) -> Self {
        self.event_interval = interval;
        self
    }

    /// Sets the OAuth2 client's id (any text; it is form-urlencoded in HTTP Basic, so `:`
    /// and non-ASCII characters are fine). An empty id never authenticates. Default: a
    /// random `emulator-client-` id.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Sets the OAuth2 client's secret (any text, like [`client_id`](Self::client_id)); it
    /// is kept out of `Debug`. An empty secret never authenticates. Default: 40 random
    /// alphanumeric characters.
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(SecretString::from(secret.into()));
        self
    }

    /// Sets the address to listen on. Default: a free port of `127.0.0.1`. Anything but a
    /// loopback address exposes the emulator, whose keys and secrets are test values, to
    /// the network: do it only inside a test network (a docker-compose file).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Sets the URL clients reach the emulator at, e.g. `http://emulator:8080` inside a
    /// docker-compose network: the token URL, the issuer and the audience assertions must
    /// name are built on it. Default: `http://` and the bound address.
    pub fn public_url(mut self, url: impl Into<String>) -> Self {
        self.public_url = Some(url.into().trim_end_matches('/').to_owned());
        self
    }

    /// Binds the [address](Self::bind) and starts serving; see [`Emulator::start`].
    pub async fn start(self) -> std::io::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(self.bind).await?;
        let addr = listener.local_addr()?;
        let origin = self.public_url.unwrap_or_else(|| format!("http://{addr}"));
        let token_url = format!("{origin}{}", routes::TOKEN_PATH);
        let account = generate_account().with_token_url(token_url.clone());
        let client = Client {
            id: self
                .client_id
                .unwrap_or_else(|| format!("emulator-client-{:08x}", fastrand::u32(..))),
            secret: self
                .client_secret
                .unwrap_or_else(|| SecretString::from(random_alphanumeric(40))),
        };
        let devices: Arc<[Arc<str>]> = (0..DEVICE_COUNT)
            .map(|_| Arc::from(random_lower(20)))
            .collect();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (event_interval, interval_changes) = watch::channel(self.event_interval);
        let shared = Arc::new(Shared {
            origin,
            account,
            client,
            keys: keys::Registry::default(),
            token_url,
            state: Mutex::new(State {
                token_ttl: self.token_ttl,
                tokens: HashMap::new(),
                faults: VecDeque::new(),
                stream_end: StreamEnd::default(),
                stats: Stats::default(),
                refresh_tokens: Default::default(),
                dpop: Default::default(),
                subject_tokens: Vec::new(),
                metadata_issuer: None,
                auth_methods: None,
                auth_algs: None,
                protection: Default::default(),
                cloud: cloud::State::default(),
            }),
            devices: Arc::clone(&devices),
            events: events.clone(),
            event_interval,
            revocations: watch::Sender::new(0),
            closes: watch::Sender::new(0),
            cloud: cloud::Fixed::new(GOOGLE_KEY_PEM),
        });
        let google = token_refresh::SigningKey::from_pem(GOOGLE_KEY_PEM)
            .expect("the built-in key parses")
            .with_key_id(GOOGLE_KEY_ID)
            .expect("the built-in key id is not empty");
        shared
            .keys
            .register(
                GOOGLE_EMAIL.to_owned(),
                &google.public_jwk().expect("an RSA key has a public part"),
            )
            .expect("the built-in key registers");
        let server = tokio::spawn(server::serve(listener, Arc::clone(&shared)));
        let ticker = tokio::spawn(events::run_ticker(events, devices, interval_changes));
        tracing::debug!(%addr, "emulator: listening");
        Ok(Emulator {
            addr,
            shared,
            server,
            ticker,
        })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if some did, the state is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `http://127.0.0.1:PORT`: the token URL without its path.
    fn origin(&self) -> String {
        self.token_url
            .strip_suffix(routes::TOKEN_PATH)
            .unwrap_or(&self.token_url)
            .to_owned()
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

    /// Issues a token, bound to the DPoP key `jkt` if given; returns it with its lifetime.
    fn issue_token(&self, jkt: Option<String>, granted: protected::Granted) -> (String, Duration) {
        let token = format!("{:032x}", fastrand::u128(..));
        let mut state = self.lock();
        let ttl = state.token_ttl;
        state.tokens.insert(
            token.clone(),
            IssuedToken {
                // A TTL too long for `Instant` means a token that does not expire.
                expires_at: Instant::now().checked_add(ttl),
                granted,
                revoked: false,
                jkt: jkt.clone(),
            },
        );
        state.stats.token_successes += 1;
        if jkt.is_some() {
            state.stats.dpop_tokens += 1;
        }
        (token, ttl)
    }

    /// Whether `token` has been revoked.
    fn is_revoked(&self, token: &str) -> bool {
        self.lock().tokens.get(token).is_some_and(|t| t.revoked)
    }

    /// Counts an API request to `method` `path` and checks its token: a bearer token, or a
    /// DPoP-bound one with a proof for this request (RFC 9449 §7).
    fn check_bearer(
        &self,
        headers: &HeaderMap,
        method: &str,
        path: &str,
    ) -> Result<Bearer, TokenCheck> {
        let credentials = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .map(|(scheme, token)| (scheme, token.trim()))
            .filter(|(scheme, token)| {
                !token.is_empty()
                    && (scheme.eq_ignore_ascii_case("bearer")
                        || scheme.eq_ignore_ascii_case("dpop"))
            });
        let dpop = credentials.is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("dpop"));
        let token = credentials.map(|(_, token)| token);
        let htu = format!("{}{path}", self.origin());
        let mut state = self.lock();
        state.stats.api_requests += 1;
        let jkt = token
            .and_then(|t| state.tokens.get(t))
            .map(|t| t.jkt.clone());
        let proof = match (dpop, token, jkt) {
            (true, Some(token), Some(Some(bound))) => {
                let require = state.dpop.require_api_nonce;
                match state
                    .dpop
                    .check(headers, method, &htu, Some(token), require)
                {
                    Ok(jkt) if jkt == bound => Ok(()),
                    Ok(_) => Err(TokenCheck::DpopInvalid(
                        "the DPoP proof is signed with another key than the token's".into(),
                    )),
                    Err(dpop::Refusal::UseNonce) => Err(TokenCheck::DpopNonce),
                    Err(dpop::Refusal::Invalid(problem)) => Err(TokenCheck::DpopInvalid(problem)),
                }
            }
            // A bearer token sent as DPoP.
            (true, Some(_), Some(None)) => Err(TokenCheck::Unknown),
            _ => Ok(()),
        };
        let result = match token.map(|t| state.tokens.get(t)) {
            None => Err(TokenCheck::Missing),
            Some(None) => Err(TokenCheck::Unknown),
            Some(Some(issued)) if issued.revoked => Err(TokenCheck::Revoked),
            // RFC 9449 §7.1: a DPoP-bound token is no bearer token.
            Some(Some(issued)) if issued.jkt.is_some() && !dpop => Err(TokenCheck::Bound),
            Some(Some(issued)) if issued.expires_at.is_some_and(|at| Instant::now() >= at) => {
                Err(TokenCheck::Expired)
            }
            Some(Some(issued)) => proof.map(|()| (issued.expires_at, issued.granted.clone())),
        };
        if let Err(problem) = &result {
            state.stats.api_unauthorized += 1;
            tracing::debug!(?problem, "emulator: API request unauthorized");
        }
        result.map(|(expires_at, granted)| Bearer {
            token: token.unwrap_or_default().to_owned(),
            expires_at,
            granted,
        })
    }
}

/// Credentials shaped like DT's: a 20-character key id, a service-account email and a
/// 40-character secret.
fn generate_account() -> ServiceAccount {
    let key_id = random_lower(20);
    let email = format!(
        "emulator-{:08x}@{:08x}.serviceaccount.d21s.com",
        fastrand::u32(..),
        fastrand::u32(..)
    );
    ServiceAccount::new(key_id, email, random_alphanumeric(40))
}

/// `n` random characters of `[0-9a-z]`, like DT's ids.
fn random_lower(n: usize) -> String {
    (0..n)
        .filter_map(|_| char::from_digit(fastrand::u32(..36), 36))
        .collect()
}

/// `n` random characters of `[0-9A-Za-z]`, like DT's secrets.
fn random_alphanumeric(n: usize) -> String {
    (0..n).map(|_| fastrand::alphanumeric()).collect()
}
