//! The cloud identity services the emulator plays, on the same port as the rest: Google's
//! metadata server, STS and IAM Credentials, an OpenID issuer of federated tokens (what a
//! Kubernetes cluster is to Google or Entra), Azure's IMDS and App Service identity
//! endpoint, and an Entra token endpoint that checks federated client assertions.
//!
//! Each demands what the real one demands (`Metadata-Flavor: Google`, `Metadata: true`,
//! `X-IDENTITY-HEADER`), answers errors in its own shape, and gives expiries as the real
//! one does: seconds (`expires_in`), Unix timestamps (`expires_on`, as strings or numbers)
//! or RFC 3339 (`expireTime`). Tokens they issue are the emulator's like any other: the API
//! routes take them, [`revoke_all`](crate::Emulator::revoke_all) revokes them, and their
//! lifetime is the [token TTL](crate::Emulator::set_token_ttl).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use token_refresh::{Signer as _, SigningKey};
use tokio::time::Instant;

use super::body::Body;
use super::form::{Form, parse_form};
use super::responses::{json_response, response};
use super::{Emulator, IssuedToken, Shared};

mod azure;
mod gcp;

pub use azure::ExpiresOn;
pub use gcp::MetadataBehaviour;

/// The `kid` of the federated tokens the emulator's OpenID issuer signs.
const OIDC_KEY_ID: &str = "emulator-oidc-key-1";
/// The path of the emulator's OpenID issuer (of federated tokens).
const OIDC_PATH: &str = "/oidc";
/// The `aud` Entra wants in a federated client assertion.
pub const AZURE_FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The subject of the federated tokens [`Emulator::federated_token`] mints by default:
/// a Kubernetes service account, as AKS and GKE project them.
pub const FEDERATED_SUBJECT: &str = "system:serviceaccount:default:workload";

/// Request counts of the cloud identity services, from [`Emulator::cloud_stats`]. Every
/// count includes refused requests unless it says otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloudStats {
    /// `GET /` of the metadata server with `Metadata-Flavor: Google` (detection).
    pub gcp_metadata_pings: u64,
    /// Access-token requests to the metadata server.
    pub gcp_metadata_tokens: u64,
    /// ID-token requests to the metadata server.
    pub gcp_metadata_id_tokens: u64,
    /// Metadata-server requests refused (a missing header, an unknown account, …).
    pub gcp_metadata_refusals: u64,
    /// Token exchanges at Google STS.
    pub google_sts_exchanges: u64,
    /// `generateAccessToken` calls at IAM Credentials.
    pub google_iam_tokens: u64,
    /// Token requests to Azure IMDS.
    pub azure_imds_tokens: u64,
    /// Token requests to the App Service identity endpoint.
    pub azure_app_service_tokens: u64,
    /// Token requests to the Entra token endpoint.
    pub entra_tokens: u64,
    /// Requests of any of these services answered with an error.
    pub refusals: u64,
}

/// The cloud services' state, inside the emulator's.
#[derive(Default)]
pub(super) struct State {
    pub(super) stats: CloudStats,
    pub(super) metadata: MetadataBehaviour,
    pub(super) expires_on: ExpiresOn,
    /// The `scopes` parameters the metadata server got, in order.
    pub(super) metadata_scopes: Vec<Option<String>>,
    /// `(email, lifetime)` of each `generateAccessToken`, in order.
    pub(super) impersonations: Vec<(String, String)>,
    /// The client assertions Entra got, in order.
    pub(super) assertions: Vec<String>,
    /// The `resource` of each managed-identity token request, in order.
    pub(super) resources: Vec<String>,
    /// The `scope` of each token request Entra accepted, in order.
    pub(super) entra_scopes: Vec<String>,
}

/// What the cloud services know from the start: their signing key and secrets.
pub(super) struct Fixed {
    /// Signs ID tokens and federated tokens.
    signer: SigningKey,
    /// Verifies federated tokens.
    verifier: jsonwebtoken::DecodingKey,
    /// The App Service identity endpoint's secret (`IDENTITY_HEADER`).
    app_service_secret: String,
    tenant_id: String,
    client_id: String,
}

impl Fixed {
    pub(super) fn new(pem: &str) -> Self {
        let signer = SigningKey::from_pem(pem)
            .expect("the built-in key parses")
            .with_key_id(OIDC_KEY_ID)
            .expect("a key id is a JWT header value");
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(signer.public_jwk().expect("an RSA key has a public part"))
                .expect("a public JWK parses");
        let verifier = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("an RSA JWK verifies");
        let uuid = || {
            let n = fastrand::u128(..);
            format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                n >> 96,
                (n >> 80) & 0xffff,
                (n >> 64) & 0xffff,
                (n >> 48) & 0xffff,
                n & 0xffff_ffff_ffff
            )
        };
        Self {
            signer,
            verifier,
            app_service_secret: (0..32).map(|_| fastrand::alphanumeric()).collect(),
            tenant_id: uuid(),
            client_id: uuid(),
        }
    }
}

/// Whether `path` is one of the cloud services'.
pub(super) fn serves(path: &str) -> bool {
    path == "/"
        || path.starts_with("/computeMetadata/")
        || path == gcp::STS_PATH
        || path.starts_with(gcp::IAM_PREFIX)
        || path == azure::IMDS_PATH
        || path == azure::APP_SERVICE_PATH
        || azure::entra_tenant(path).is_some()
}

/// Answers a request to one of the cloud services.
pub(super) async fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path == "/" || path.starts_with("/computeMetadata/") {
        return gcp::metadata(shared, request).await;
    }
    if path == gcp::STS_PATH {
        return gcp::sts(shared, request).await;
    }
    if path.starts_with(gcp::IAM_PREFIX) {
        return gcp::iam(shared, request).await;
    }
    if path == azure::IMDS_PATH {
        return azure::imds(shared, request);
    }
    if path == azure::APP_SERVICE_PATH {
        return azure::app_service(shared, request);
    }
    azure::entra(shared, request).await
}

impl Shared {
    /// Issues an access token of the current TTL (capped at `cap`) without counting it as
    /// a token-endpoint answer; returns it with its lifetime.
    fn issue_cloud_token(&self, cap: Option<Duration>) -> (String, Duration) {
        let token = format!("{:032x}", fastrand::u128(..));
        let mut state = self.lock();
        let ttl = cap.map_or(state.token_ttl, |cap| cap.min(state.token_ttl));
        self.register(&mut state.tokens, token.clone(), ttl);
        (token, ttl)
    }

    /// Makes `token` one the API accepts for `ttl`.
    fn register(
        &self,
        tokens: &mut std::collections::HashMap<String, IssuedToken>,
        token: String,
        ttl: Duration,
    ) {
        tokens.insert(
            token,
            IssuedToken {
                expires_at: Instant::now().checked_add(ttl),
                granted: Default::default(),
                revoked: false,
                jkt: None,
            },
        );
    }

    fn cloud(&self, update: impl FnOnce(&mut State)) {
        update(&mut self.lock().cloud);
    }

    /// Whether `token` is one this emulator issued that is still good.
    fn token_is_good(&self, token: &str) -> bool {
        self.lock()
            .tokens
            .get(token)
            .is_some_and(|t| !t.revoked && t.expires_at.is_none_or(|at| Instant::now() < at))
    }

    /// The OpenID issuer of federated tokens.
    fn oidc_issuer(&self) -> String {
        format!("{}{OIDC_PATH}", self.origin)
    }
}

/// Signs `claims` as an RS256 JWT with the emulator's OpenID key.
async fn mint(signer: &SigningKey, claims: &Value) -> String {
    let header = json!({"alg": "RS256", "kid": OIDC_KEY_ID, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = signer
        .sign(input.as_bytes())
        .await
        .expect("the built-in RSA key signs");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Unix time now, in whole seconds.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The query of `request`, decoded; `None` if it is malformed or repeats a parameter.
fn query<B>(request: &Request<B>) -> Option<Form> {
    parse_form(request.uri().query().unwrap_or_default().as_bytes()).ok()
}

/// A plain-text response.
fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    response(
        status,
        Bytes::from(body.into()),
        Some("text/plain; charset=utf-8"),
    )
}

/// Whether `headers` say `name: value` (the value's case ignored).
fn has_header(headers: &HeaderMap, name: &str, value: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
}

/// Whether a request is a form POST; `Err` is the answer to give otherwise.
fn is_form(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::POST
        && headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
}

/// A JSON response with extra headers.
fn json_with(
    status: StatusCode,
    body: &Value,
    headers: &[(&'static str, &'static str)],
) -> Response<Body> {
    let mut response = json_response(status, body);
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(*name, HeaderValue::from_static(value));
    }
    response
}

impl Emulator {
    /// The cloud identity services' request counts so far.
    pub fn cloud_stats(&self) -> CloudStats {
        self.shared.lock().cloud.stats.clone()
    }

    /// The OpenID issuer of [federated tokens](Self::federated_token),
    /// `http://127.0.0.1:PORT/oidc`: what a Kubernetes cluster's service-account issuer is
    /// to Entra and Google STS. Both trust it.
    pub fn oidc_issuer(&self) -> String {
        self.shared.oidc_issuer()
    }

    /// A federated token (a JWT signed RS256 by the [issuer](Self::oidc_issuer)) for
    /// `subject` and `audience`, valid for `lifetime`: what the kubelet projects into a
    /// pod for workload identity. Entra accepts it as a client assertion when the subject
    /// is [`FEDERATED_SUBJECT`] and the audience [`AZURE_FEDERATION_AUDIENCE`]; Google STS
    /// accepts it as a subject token whatever they are. A zero `lifetime` makes one that
    /// has already expired.
    pub async fn federated_token(
        &self,
        subject: &str,
        audience: &str,
        lifetime: Duration,
    ) -> String {
        let now = unix_now();
        let (iat, exp) = if lifetime.is_zero() {
            (now - 600, now - 300)
        } else {
            (now, now + lifetime.as_secs().max(1))
        };
        let claims = json!({
            "iss": self.oidc_issuer(),
            "sub": subject,
            "aud": audience,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": format!("{:032x}", fastrand::u128(..)),
        });
        mint(&self.shared.cloud.signer, &claims).await
    }

    /// The client assertions the Entra token endpoint got, oldest first: secrets in real
    /// life, keep them out of logs.
    pub fn federated_assertions(&self) -> Vec<String> {
        self.shared.lock().cloud.assertions.clone()
    }

    /// The `scope` of each token request the Entra token endpoint got with a valid
    /// (`…/.default`) scope, oldest first.
    pub fn entra_scopes(&self) -> Vec<String> {
        self.shared.lock().cloud.entra_scopes.clone()
    }

    /// The `resource` of each managed-identity token request (IMDS and App Service),
    /// oldest first.
    pub fn managed_identity_resources(&self) -> Vec<String> {
        self.shared.lock().cloud.resources.clone()
    }
}
