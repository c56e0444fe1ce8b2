//! Keeps outgoing HTTP requests authenticated with short-lived OAuth2 access tokens.
//!
//! A token source — a service account signing a JWT ([RFC 7523] JWT-bearer grant, HS256),
//! client credentials, anything else — gets an access token that lives about an hour; this
//! crate caches it, refreshes it before it expires (in the background, so no request
//! waits), shares one refresh among all callers, attaches `Authorization: Bearer …` to every
//! request and resends a request once when the server rejects its token. It works out of the
//! box for [Disruptive Technologies] service accounts and for any OAuth2 token endpoint, with
//! sender-constrained DPoP tokens ([RFC 9449], [`dpop`]) and a fleet that shares one token
//! ([`store`]).
//!
//! ```toml
//! [dependencies]
//! token-refresh = "0.1"
//! # The versions it plugs into: an AuthMiddleware needs reqwest-middleware 0.5 (over
//! # reqwest 0.13), an AuthLayer tower 0.5 (and tonic 0.14 for a Channel), the metrics
//! # feature the metrics 0.24 facade (metrics-exporter-prometheus 0.18 renders it).
//! reqwest = "0.13"
//! reqwest-middleware = "0.5"
//! tower = "0.5"
//! tonic = "0.14"    # with features = ["tonic"]
//! metrics = "0.24"  # with features = ["metrics"]
//!
//! [dev-dependencies]
//! token-refresh-emulator = "0.1" # the offline identity service the examples below run against
//! ```
//!
//! Each integration with exactly those versions (compile-checked):
//!
//! ```no_run
//! # #[cfg(all(feature = "reqwest", feature = "tonic", feature = "metrics"))]
//! # async fn wire(provider: token_refresh::TokenProvider) -> Result<(), Box<dyn std::error::Error>> {
//! use token_refresh::{AuthLayer, AuthMiddleware};
//!
//! // reqwest 0.13 with reqwest-middleware 0.5
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(AuthMiddleware::new(provider.clone()))
//!     .build();
//! // tower 0.5 over a tonic 0.14 `Channel`
//! let channel = tonic::transport::Endpoint::from_static("https://grpc.example.com").connect_lazy();
//! let channel = tower::ServiceBuilder::new()
//!     .layer(AuthLayer::new(provider))
//!     .service(channel);
//! // metrics 0.24: the providers record through the recorder the application installs
//! let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
//! # drop((client, channel, prometheus)); Ok(()) }
//! # fn main() {}
//! ```
//!
//! Another major version of any of them builds a second copy that does not fit: with
//! reqwest-middleware 0.4, `.with(AuthMiddleware::new(..))` fails with "the trait
//! `Middleware` is not satisfied"; with an exporter built on metrics 0.23, the metrics go to a
//! recorder nobody reads. `cargo tree -d` shows such doubles.
//!
//! [RFC 7523]: https://www.rfc-editor.org/rfc/rfc7523
//! [RFC 9449]: https://www.rfc-editor.org/rfc/rfc9449
//! [Disruptive Technologies]: https://developer.disruptive-technologies.com
//!
//! # Which type to reach for
//!
//! | you have | reach for |
//! |---|---|
//! | a DT service account (`DT_SERVICE_ACCOUNT_*` or `DT_CREDENTIALS_FILE`) | [`TokenProvider::discover`] |
//! | a service account signing JWTs for another server | [`ServiceAccount`] + [`JwtBearer`] |
//! | an assertion signed elsewhere and rotated on disk (Kubernetes, workload identity) | [`JwtBearer::from_assertion_file`] |
//! | a Google service account key file | [`JwtBearer::google_service_account`] |
//! | a private key (RSA, P-256, Ed25519), a certificate for Entra, or a KMS | [`SigningKey`], [`Signer`], [`JwtBearer::signed_by`], [`ClientAuth::PrivateKeyJwt`] |
//! | an OAuth2 client id and secret | [`ClientCredentials`] |
//! | a refresh token, rotated safely across processes | [`RefreshToken`] |
//! | a workload token exchanged (RFC 8693: Kubernetes, GitHub Actions) | [`TokenExchange`] |
//! | Google Cloud: ADC, the metadata server, ID tokens, workload identity federation, impersonation (feature `gcp`) | [`gcp::ApplicationDefaultCredentials`], [`gcp::MetadataServer`], [`gcp::ExternalAccount`], [`gcp::ImpersonatedServiceAccount`] |
//! | Azure: managed identity (VM, App Service, Functions), AKS workload identity (feature `azure`) | [`azure::ManagedIdentity`], [`azure::WorkloadIdentity`] |
//! | the token endpoint from the issuer's metadata (RFC 8414) | [`TokenEndpoint::discover`] |
//! | another grant | [`TokenEndpoint`], wrapped in a closure |
//! | tokens from anywhere else | an async closure, or your own [`TokenSource`] |
//! | the cache and refresh policy around any of them | [`TokenProvider`] |
//! | one credential, a token per scope set, audience or RFC 8707 resource | [`KeyedTokenProvider`] ([`TokenProvider::keyed`]) with [`TokenParams`], and `route(..)` on the integrations |
//! | an API that names its authorization server (RFC 9728, MCP) | [`AuthMiddleware::discovering`] / [`AuthLayer::discovering`] with `allow_issuers` |
//! | sender-constrained tokens (DPoP, RFC 9449) | [`dpop::DpopKey`], with `dpop(key)` on the grant |
//! | replicas, CronJobs or CLIs sharing one token and one refresh | [`store::RedisStore`], [`store::FileStore`], [`TokenProviderBuilder::store`] |
//! | a `reqwest` client | [`AuthMiddleware`] (feature `reqwest`) |
//! | a tower stack: hyper-util's client, a tonic `Channel`, a proxy | [`AuthLayer`] (feature `tower`, `tonic` for tonic's body) |
//! | a readiness probe or a dashboard | [`TokenProvider::health`], the `metrics` feature |
//! | every default and why it is what it is | the [`defaults`] module |
//!
//! # With reqwest
//!
//! Against the [emulator](https://docs.rs/token-refresh-emulator) of DT's identity service and API (the `token-refresh-emulator` crate), so it runs offline;
//! with real credentials it is `TokenProvider::discover()?` and DT's URL:
//!
//! ```
//! # #[cfg(feature = "reqwest")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use reqwest_middleware::ClientBuilder;
//! use token_refresh_emulator::Emulator;
//! use token_refresh::{AuthMiddleware, JwtBearer, TokenProvider};
//!
//! let emulator = Emulator::start().await?;
//! let provider = TokenProvider::new(JwtBearer::new(emulator.account()));
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(AuthMiddleware::new(provider).for_origin(&emulator.origin()))
//!     .build();
//! let projects = client.get(format!("{}/projects", emulator.api_url())).send().await?;
//! assert_eq!(projects.status(), 200);
//! # Ok(()) }
//! # #[cfg(not(feature = "reqwest"))]
//! # fn main() {}
//! ```
//!
//! # With tower
//!
//! Any `Service<http::Request<B>>` whose service is `Clone`; over a tonic `Channel` it is
//! the same one line (see [`AuthLayer`]):
//!
//! ```
//! # #[cfg(feature = "tower")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use token_refresh::{AccessToken, AuthLayer, TokenProvider};
//!
//! let provider = TokenProvider::new(|| async {
//!     AccessToken::new("t0k3n", Duration::from_secs(3600))
//! });
//! let api = service_fn(|request: http::Request<String>| async move {
//!     Ok::<_, Infallible>(http::Response::new(request.headers()["authorization"].clone()))
//! });
//! let service = ServiceBuilder::new().layer(AuthLayer::new(provider)).service(api);
//! let request = http::Request::get("https://api.example.com/v2/projects").body(String::new())?;
//! assert_eq!(service.oneshot(request).await?.body(), "Bearer t0k3n");
//! # Ok(()) }
//! # #[cfg(not(feature = "tower"))]
//! # fn main() {}
//! ```
//!
//! # With any token source
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), token_refresh::Error> {
//! use std::time::Duration;
//! use token_refresh::{AccessToken, TokenProvider};
//!
//! // A closure is a TokenSource: a metadata server, a file, a vault, another client.
//! let provider = TokenProvider::builder(|| async {
//!     AccessToken::new("from-elsewhere", Duration::from_secs(600))
//! })
//! .name("elsewhere")
//! .build();
//! let token = provider.token().await?; // fetched once, then cached and refreshed
//! assert!(provider.health().is_ready());
//! # drop(token); Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `reqwest` | yes | [`AuthMiddleware`] for `reqwest-middleware` |
//! | `tower` | yes | [`AuthLayer`] / [`AuthService`], replay of request bodies ([`ReplayBody`]) |
//! | `rustls` | yes | TLS through rustls (as reqwest's feature of that name); implies `aws-lc` |
//! | `aws-lc` | yes (through `rustls`) | RS256, PS256, ES256 and EdDSA signed with aws-lc-rs; without it, with RustCrypto (see [`signing`]) |
//! | `fips` | no | signing (and rustls) through aws-lc-rs's FIPS module; implies `aws-lc`; building it needs CMake and Go |
//! | `native-tls` | no | TLS through the platform's library; with `default-features = false`, no aws-lc is built |
//! | `tonic` | no | `tonic::body::Body` replayable, so `AuthLayer` goes straight over a tonic `Channel` |
//! | `metrics` | no | counters, gauges and a histogram through the `metrics` facade (see [`health`]) |
//! | `redis` | no | [`store::RedisStore`]: one token for a fleet of processes on many hosts |
//! | `gcp` | no | [`gcp`]: the metadata server (access and ID tokens), Application Default Credentials, workload identity federation, impersonation |
//! | `azure` | no | [`azure`]: managed identity (IMDS, App Service and Functions), AKS workload identity |
//!
//! The core ([`TokenProvider`], the grants, [`TokenEndpoint`]) is always there, and every key
//! type signs in every feature combination: aws-lc-rs when `aws-lc` is on, the RustCrypto
//! crates otherwise, HS256 with RustCrypto's `hmac` always. Nothing installs a process-wide
//! crypto provider: the application's choice for rustls or jsonwebtoken stays its own.
//!
//! # Running a DT integration continuously
//!
//! An integration that runs for days — a device event stream open for hours, longer than any
//! token — needs three things besides the middleware:
//!
//! - open each long request with a [`MinValidity`] request extension, so it never starts on
//!   a token about to expire;
//! - when a stream ends in-band because its token expired or was revoked, pass the token
//!   that opened it (in the response's extensions) to [`TokenProvider::reject`], then
//!   reconnect with backoff — `examples/stream_events.rs` does exactly this;
//! - watch [`TokenProvider::health`] (a readiness probe: [`Health::is_ready`]) and, with the
//!   `metrics` feature, the crate's metrics.
//!
//! # What it logs
//!
//! Through [`tracing`](https://docs.rs/tracing), never with a secret, an assertion or a
//! token in a field. Messages are constant, so that they can be searched; what varies is in
//! fields. Every refresh logs one line at INFO when it ends with a token, or one at WARN when
//! it fails, with the provider's name (`provider`: [`TokenProviderBuilder::name`], by default
//! the token endpoint's host and the client id or issuer) and why it ran (`reason`):
//!
//! | `reason` | the refresh ran because |
//! |---|---|
//! | `first` | no token was ever obtained |
//! | `proactive` | the token reached its proactive refresh point (in the background, callers keep the old one) |
//! | `expired` | the token reached its hard margin |
//! | `revoked` | the API rejected a token it had accepted before ([`TokenProvider::reject`], both integrations) |
//! | `rejected` | the API rejected a token it never accepted, within the storm guard |
//! | `invalidated` | [`TokenProvider::invalidate`] dropped the token |
//! | `min-validity` | a caller needs a token that lasts longer ([`MinValidity`], [`TokenProvider::token_valid_for`]) |
//!
//! `from` says who served it: `token endpoint`, or `token store` (another process of the
//! fleet fetched it). A refresh runs in a span `token_refresh` at DEBUG level (fields
//! `provider`, `refresh_id`, `background`), which follows from the span of the caller that
//! started it.
//!
//! | level | message | fields |
//! |---|---|---|
//! | INFO | `access token refreshed` | `provider`, `reason`, `from`, `attempt`, `expires_in_secs` |
//! | WARN | `token refresh failed` | `provider`, `reason`, `attempt`, `error` |
//! | WARN | `token request failed; retrying` | `provider`, `attempt`, `error`, `retry_in_ms` |
//! | DEBUG | `token refresh started` | `reason` |
//! | ERROR | `the token source panicked during a refresh` | |
//! | DEBUG | `access token nears expiry: refreshing it in the background` | |
//! | WARN | `the token refresh is stranded on a Tokio runtime that no longer runs it; restarting it on this one` | `refresh_id` |
//! | DEBUG | `token refresh dropped with its runtime; a waiting caller restarts it` | |
//! | DEBUG | `access token invalidated` | `provider` |
//! | DEBUG | `access token revoked by the server: refreshing it` | |
//! | DEBUG | `access token rejected by the server: refreshing it` | `next_forced_refresh_in_ms` |
//! | DEBUG | `rejected access token kept: a refresh was forced moments ago` | `retry_in_ms`, `accepted_before` |
//! | DEBUG | `token rejected for a request that cannot be replayed: returning it` | |
//! | DEBUG | `token rejected, but the provider has no newer one: returning it` | |
//! | DEBUG | `token rejected: resending once with a fresh one` | |
//! | DEBUG | `the token endpoint wants a DPoP nonce: sending the request again with it` | |
//! | WARN | `token endpoint claims an implausibly long lifetime; capping it` | `expires_in`, `cap` |
//! | DEBUG | `insufficient scope: stepping up to a token with the scopes the server named` | `route` |
//! | DEBUG | `resource metadata fetched` | `url` |
//! | DEBUG | `resource discovered: its tokens come from its authorization server` | `resource`, `issuer` |
//! | WARN | `the resource_metadata URL does not parse` | `url`, `error` |
//! | WARN | `the resource metadata could not be fetched` | `url`, `error` |
//! | WARN | `the resource metadata has no resource or authorization_servers` | `url` |
//! | WARN | `the resource metadata names another resource: not used` | `resource`, `request` |
//! | WARN | `none of the resource's authorization servers is allowed: no token asked for` | `resource`, `offered` |
//! | WARN | `discovery has learned as many resources as it keeps: this one is not learned` | `resource` |
//! | DEBUG | `server metadata fetched` | `issuer`, `url` |
//! | DEBUG | `client authentication chosen from the server's metadata` | `issuer`, `method` |
//! | WARN | `re-fetching the server's metadata failed: using what it said before` | `issuer`, `error` |
//! | ERROR | `the token provider cannot use its token store` | `error` |
//! | WARN | `the token store failed: fetching tokens without it until it answers again` | `provider`, `key`, `operation`, `error` (once per outage) |
//! | INFO | `the token store answers again` | `provider`, `key` |
//! | WARN | `the token store's lease holder stored no token in time: fetching one here` | `provider`, `key`, `waited_ms` |
//! | DEBUG | `the token store did not renew the refresh lease (lost, or a store that cannot renew): another process may fetch too` | `key` |
//! | DEBUG | `access token taken from the token store` | `key` |
//! | DEBUG | `a stored entry did not open or has expired: ignored` | `key` |
//! | DEBUG | `the Redis server refused RESP3: waiting processes poll instead of being notified` | `error` |
//! | DEBUG | `the Redis store could not subscribe to its notifications: polling` | `error` |
//! | WARN | `the stored refresh token does not open (another key, or garbage): using this process's` | |
//! | WARN | `another process stored a refresh token while this one held the lease: keeping theirs` | |
//! | WARN | `the rotated refresh token is kept in memory until the store takes it` | `error` |
//! | WARN | `the refresh token's lease was not released; it lapses by itself` | `error` |
//!
//! A store event's `key` is the entry's name in the store (a keyed hash, never a secret);
//! its `error` is scrubbed like every error of this crate.
//!
//! The emulator logs its own DEBUG events, each starting with `emulator:`.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms,
    clippy::await_holding_lock
)]

mod credentials;
pub mod defaults;
mod discovery;
pub mod dpop;
pub mod dt;
mod error;
mod exchange;
mod grants;
pub mod health;
#[cfg(feature = "tower")]
mod layer;
mod metadata;
#[cfg(feature = "reqwest")]
mod middleware;
mod params;
#[cfg_attr(not(any(feature = "reqwest", feature = "tower")), allow(dead_code))]
mod policy;
mod provider;
mod quiet_panic;
#[cfg(feature = "tower")]
mod replay;
mod resource;
mod route;
pub mod signing;
mod source;
#[cfg(any(feature = "gcp", feature = "azure"))]
mod sources;
pub mod store;
pub use metadata::ServerMetadata;
mod token;
mod transport;

/// The attribute macro for implementing [`Signer`] (and [`TokenSource`]) by hand, re-exported
/// so that a manifest needs no `async-trait` of its own: `#[token_refresh::async_trait]`.
pub use async_trait::async_trait;
pub use credentials::ServiceAccount;
#[doc(hidden)]
pub use credentials::parse_credentials_json;
pub use error::{Error, Result};
#[doc(hidden)]
pub use exchange::parse_token_response;
pub use exchange::{TokenEndpoint, TokenRequest, TokenResponse};
pub use grants::client::{ClientAuth, OAuthClient};
pub use grants::client_credentials::ClientCredentials;
pub use grants::google::ENV_GOOGLE_APPLICATION_CREDENTIALS;
pub use grants::jwt_bearer::JwtBearer;
pub use grants::refresh_token::RefreshToken;
pub use grants::token_exchange::{
    ENV_ACTIONS_ID_TOKEN_REQUEST_TOKEN, ENV_ACTIONS_ID_TOKEN_REQUEST_URL, GitHubActionsToken,
    SubjectTokenFile, SubjectTokenSource, TokenExchange, token_types,
};
pub use health::Health;
#[cfg(feature = "tower")]
pub use layer::{AuthLayer, AuthService, BoxError, ResponseFuture};
#[cfg(feature = "reqwest")]
pub use middleware::AuthMiddleware;
pub use params::TokenParams;
pub use policy::MinValidity;
pub use provider::{
    KeyedTokenProvider, KeyedTokenProviderBuilder, TokenProvider, TokenProviderBuilder,
};
#[cfg(feature = "tower")]
pub use replay::{RecordingBody, Replay, ReplayBody};
pub use signing::{Signer, SigningAlgorithm, SigningKey};
pub use source::TokenSource;
#[cfg(feature = "azure")]
#[cfg_attr(docsrs, doc(cfg(feature = "azure")))]
pub use sources::azure;
#[cfg(feature = "gcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "gcp")))]
pub use sources::gcp;
pub use token::AccessToken;
