//! Google's side: the metadata server, STS (RFC 8693 as Google speaks it) and IAM
//! Credentials' `generateAccessToken`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{Body, Shared, has_header, is_form, json_with, mint, query, text, unix_now};
use crate::form::parse_form;
use crate::jwt::{self, Rules};
use crate::{Emulator, GOOGLE_EMAIL};

/// Google STS's token path (`https://sts.googleapis.com/v1/token`).
pub(super) const STS_PATH: &str = "/v1/token";
/// IAM Credentials' service-account paths
/// (`https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/…`).
pub(super) const IAM_PREFIX: &str = "/v1/projects/-/serviceAccounts/";
const SA_PREFIX: &str = "/computeMetadata/v1/instance/service-accounts/";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The subject token types Google STS takes.
const SUBJECT_TYPES: &[&str] = &[
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:saml2",
    ACCESS_TOKEN_TYPE,
    "urn:ietf:params:aws:token-type:aws4_request",
];
/// The longest `lifetime` IAM Credentials grants without an organization policy: an hour.
const MAX_IAM_LIFETIME: u64 = 3600;

/// How the emulated metadata server behaves; from
/// [`Emulator::set_metadata_behaviour`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetadataBehaviour {
    /// As on Google Cloud: the default account and the emulator's
    /// [Google service account](Emulator::gcp_service_account) are attached.
    #[default]
    Normal,
    /// No service account is attached: every account gets 404.
    NoServiceAccount,
    /// A captive portal answers instead: `200` with an HTML page and no
    /// `Metadata-Flavor` header, for every path.
    CaptivePortal,
}

impl Emulator {
    /// Sets how the metadata server behaves. Default: [`MetadataBehaviour::Normal`].
    pub fn set_metadata_behaviour(&self, behaviour: MetadataBehaviour) {
        self.shared.lock().cloud.metadata = behaviour;
    }

    /// The email of the Google service account the metadata server has attached besides
    /// `default`, and of [`google_key_file`](Self::google_key_file).
    pub fn gcp_service_account(&self) -> String {
        GOOGLE_EMAIL.to_owned()
    }

    /// The `scopes` parameter of each access-token request the metadata server got
    /// (`None` without one), oldest first.
    pub fn metadata_scopes(&self) -> Vec<Option<String>> {
        self.shared.lock().cloud.metadata_scopes.clone()
    }

    /// Google STS's token URL on this emulator, `http://127.0.0.1:PORT/v1/token`.
    pub fn sts_url(&self) -> String {
        format!("{}{STS_PATH}", self.shared.origin)
    }

    /// The IAM Credentials `generateAccessToken` URL for `email` on this emulator: the
    /// `service_account_impersonation_url` of an `external_account` or
    /// `impersonated_service_account` file.
    pub fn impersonation_url(&self, email: &str) -> String {
        format!(
            "{}{IAM_PREFIX}{email}:generateAccessToken",
            self.shared.origin
        )
    }

    /// `(email, lifetime)` of each `generateAccessToken` call, oldest first.
    pub fn impersonations(&self) -> Vec<(String, String)> {
        self.shared.lock().cloud.impersonations.clone()
    }

    /// A workload identity pool provider's audience, as an `external_account` file names
    /// it: `//iam.googleapis.com/projects/…/providers/emulator`.
    pub fn workload_identity_audience(&self) -> String {
        "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/emulator-pool/providers/emulator".into()
    }

    /// An `external_account` credentials file (Google's workload identity federation)
    /// for this emulator: its STS is the emulator's, and `credential_source` is as given
    /// (`{"file": "/path"}`, `{"url": …}`, `{"executable": {…}}`).
    pub fn external_account_file(&self, credential_source: Value) -> Value {
        json!({
            "type": "external_account",
            "audience": self.workload_identity_audience(),
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": self.sts_url(),
            "credential_source": credential_source,
        })
    }

    /// An `authorized_user` credentials file (what `gcloud auth application-default
    /// login` writes) for this emulator: its client is the emulator's, its refresh token
    /// a [new one](Self::issue_refresh_token), its `token_uri` the emulator's.
    pub fn authorized_user_file(&self) -> Value {
        json!({
            "type": "authorized_user",
            "client_id": self.client_id(),
            "client_secret": self.client_secret(),
            "refresh_token": self.issue_refresh_token(),
            "token_uri": self.token_url(),
        })
    }
}

/// The metadata server: `/`, and `…/service-accounts/{account}/{token,identity,email}`.
pub(super) async fn metadata(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let behaviour = shared.lock().cloud.metadata;
    let refuse = |status: StatusCode, body: &str| {
        shared.cloud(|c| {
            c.stats.gcp_metadata_refusals += 1;
            c.stats.refusals += 1;
        });
        flavored(text(status, body))
    };
    if behaviour == MetadataBehaviour::CaptivePortal {
        shared.cloud(|c| c.stats.refusals += 1);
        return super::response(
            StatusCode::OK,
            bytes::Bytes::from_static(
                b"<!DOCTYPE html><html><body><h1>Sign in to the network</h1></body></html>",
            ),
            Some("text/html"),
        );
    }
    let path = request.uri().path().to_owned();
    let leaf = path
        .strip_prefix(SA_PREFIX)
        .and_then(|rest| rest.split_once('/'))
        .map(|(account, leaf)| (account.to_owned(), leaf.to_owned()));
    if path == "/" {
        if has_header(request.headers(), "metadata-flavor", "Google") {
            shared.cloud(|c| c.stats.gcp_metadata_pings += 1);
        }
    } else if let Some((_, leaf)) = &leaf {
        shared.cloud(|c| match leaf.as_str() {
            "token" => c.stats.gcp_metadata_tokens += 1,
            "identity" => c.stats.gcp_metadata_id_tokens += 1,
            _ => {}
        });
    }
    if request.method() != Method::GET {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    }
    // The real server refuses requests without the header (so a browser page cannot
    // fetch a token) and requests that went through a proxy.
    if !has_header(request.headers(), "metadata-flavor", "Google") {
        return refuse(
            StatusCode::FORBIDDEN,
            "Missing required header \"Metadata-Flavor\": \"Google\"\n",
        );
    }
    if request.headers().contains_key("x-forwarded-for") {
        return refuse(StatusCode::FORBIDDEN, "Request had X-Forwarded-For\n");
    }
    if path == "/" {
        return flavored(text(StatusCode::OK, "computeMetadata/\n"));
    }
    let Some((account, leaf)) = leaf else {
        return refuse(StatusCode::NOT_FOUND, "Not Found\n");
    };
    let attached =
        behaviour == MetadataBehaviour::Normal && (account == "default" || account == GOOGLE_EMAIL);
    if !attached {
        return refuse(StatusCode::NOT_FOUND, "Not Found\n");
    }
    let Some(query) = query(&request) else {
        return refuse(StatusCode::BAD_REQUEST, "malformed query\n");
    };
    match leaf.as_str() {
        "email" => flavored(text(StatusCode::OK, GOOGLE_EMAIL)),
        "token" => {
            let scopes = query.get("scopes").map(str::to_owned);
            shared.cloud(|c| c.metadata_scopes.push(scopes));
            let (token, ttl) = shared.issue_cloud_token(None);
            flavored(super::json_response(
                StatusCode::OK,
                &json!({"access_token": token, "expires_in": ttl.as_secs(), "token_type": "Bearer"}),
            ))
        }
        "identity" => {
            let audience = match query.get("audience") {
                Some(audience) if !audience.is_empty() => audience.to_owned(),
                _ => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        "non-empty audience parameter required\n",
                    );
                }
            };
            let ttl = shared.lock().token_ttl;
            let now = unix_now();
            let mut claims = json!({
                "iss": "https://accounts.google.com",
                "aud": audience,
                "azp": "100000000000000000001",
                "sub": "100000000000000000001",
                "email": GOOGLE_EMAIL,
                "email_verified": true,
                "iat": now,
                "exp": now + ttl.as_secs().max(1),
            });
            if query.get("format") == Some("full") {
                claims["google"] = json!({"compute_engine": {
                    "project_id": "emulator", "zone": "emulator-zone-a",
                    "instance_id": "1", "instance_name": "emulator",
                }});
            }
            let jwt = mint(&shared.cloud.signer, &claims).await;
            {
                let mut state = shared.lock();
                shared.register(&mut state.tokens, jwt.clone(), ttl);
            }
            flavored(text(StatusCode::OK, jwt))
        }
        _ => refuse(StatusCode::NOT_FOUND, "Not Found\n"),
    }
}

/// Adds the header every answer of the metadata server carries.
fn flavored(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert("metadata-flavor", http::HeaderValue::from_static("Google"));
    response
}

/// Google STS: an RFC 8693 exchange of a federated token for a Google access token.
pub(super) async fn sts(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    shared.cloud(|c| c.stats.google_sts_exchanges += 1);
    let refuse = |status: StatusCode, error: &str, description: &str| {
        shared.cloud(|c| c.stats.refusals += 1);
        super::json_response(
            status,
            &json!({"error": error, "error_description": description}),
        )
    };
    if !is_form(request.method(), request.headers()) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded (POST)",
        );
    }
    let Ok(body) = request.into_body().collect().await.map(|b| b.to_bytes()) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request", "broken body");
    };
    let Ok(form) = parse_form(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request", "malformed form");
    };
    if form.get("grant_type") != Some(TOKEN_EXCHANGE) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid value for \"grant_type\"",
        );
    }
    match form.get("audience") {
        Some(audience) if audience.starts_with("//iam.googleapis.com/") => {}
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Invalid value for \"audience\": a workload identity pool provider is required",
            );
        }
    }
    if form.get("requested_token_type") != Some(ACCESS_TOKEN_TYPE) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Invalid value for \"requested_token_type\"",
        );
    }
    let kind = form.get("subject_token_type").unwrap_or_default();
    if !SUBJECT_TYPES.contains(&kind) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Invalid value for \"subject_token_type\"",
        );
    }
    let subject = match form.get("subject_token") {
        Some(subject) if !subject.is_empty() => subject.to_owned(),
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing required parameter \"subject_token\"",
            );
        }
    };
    shared.lock().subject_tokens.push(subject.clone());
    // An OIDC subject token must be a federated token of the emulator's issuer, unexpired.
    if kind.ends_with(":jwt") || kind.ends_with(":id_token") {
        let checked = jwt::verify(
            &subject,
            jsonwebtoken::Algorithm::RS256,
            &shared.cloud.verifier,
        )
        .and_then(|claims| {
            jwt::check(
                &claims,
                &Rules {
                    issuer: Some(&shared.oidc_issuer()),
                    audience: None,
                    required: &["exp", "iss", "sub"],
                    leeway: 0,
                },
            )
        });
        if let Err(invalid) = checked {
            let description = match invalid {
                jwt::Invalid::Expired => "The token has expired (exp is in the past)",
                jwt::Invalid::Issuer => "The issuer of the token is not the provider's",
                _ => "The input token could not be verified",
            };
            return refuse(StatusCode::BAD_REQUEST, "invalid_grant", description);
        }
    }
    let (token, ttl) = shared.issue_cloud_token(None);
    super::json_response(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": ttl.as_secs(),
        }),
    )
}

/// IAM Credentials: `POST …/serviceAccounts/{email}:generateAccessToken`.
pub(super) async fn iam(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    shared.cloud(|c| c.stats.google_iam_tokens += 1);
    let refuse = |code: u16, status: &str, message: &str| {
        shared.cloud(|c| c.stats.refusals += 1);
        json_with(
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
            &json!({"error": {"code": code, "message": message, "status": status}}),
            &[],
        )
    };
    let email = request
        .uri()
        .path()
        .strip_prefix(IAM_PREFIX)
        .and_then(|rest| rest.strip_suffix(":generateAccessToken"))
        .map(str::to_owned);
    let Some(email) = email else {
        return refuse(404, "NOT_FOUND", "Method not found.");
    };
    if request.method() != Method::POST {
        return refuse(405, "METHOD_NOT_ALLOWED", "Use POST.");
    }
    let bearer = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if !bearer.is_some_and(|token| shared.token_is_good(&token)) {
        return refuse(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        );
    }
    if !email.ends_with(".gserviceaccount.com") {
        return refuse(404, "NOT_FOUND", "Not found; Gaia id not found for email");
    }
    let Ok(body) = request.into_body().collect().await.map(|b| b.to_bytes()) else {
        return refuse(400, "INVALID_ARGUMENT", "broken body");
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return refuse(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
    };
    let scopes = body.get("scope").and_then(Value::as_array);
    if !scopes.is_some_and(|s| !s.is_empty() && s.iter().all(Value::is_string)) {
        return refuse(400, "INVALID_ARGUMENT", "Scope required.");
    }
    let lifetime = body
        .get("lifetime")
        .and_then(Value::as_str)
        .unwrap_or("3600s")
        .to_owned();
    let seconds = lifetime
        .strip_suffix('s')
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 1.0);
    let Some(seconds) = seconds else {
        return refuse(400, "INVALID_ARGUMENT", "Invalid value at 'lifetime'");
    };
    if seconds > MAX_IAM_LIFETIME as f64 {
        return refuse(
            400,
            "INVALID_ARGUMENT",
            "The lifetime requested is not supported: at most 3600s without an organization policy.",
        );
    }
    shared.cloud(|c| c.impersonations.push((email, lifetime)));
    let (token, ttl) = shared.issue_cloud_token(Some(Duration::from_secs_f64(seconds)));
    let expire_time = crate::rfc3339::format(SystemTime::now() + ttl);
    super::json_response(
        StatusCode::OK,
        &json!({"accessToken": token, "expireTime": expire_time}),
    )
}
