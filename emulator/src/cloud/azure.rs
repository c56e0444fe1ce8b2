//! Azure's side: IMDS, the App Service (and Functions) identity endpoint, and an Entra
//! token endpoint that takes federated client assertions (AKS workload identity).

use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::{
    AZURE_FEDERATION_AUDIENCE, Body, FEDERATED_SUBJECT, Shared, has_header, is_form, query,
    unix_now,
};
use crate::Emulator;
use crate::form::parse_form;
use crate::jwt::{self, Rules};

/// IMDS's token path (`http://169.254.169.254/metadata/identity/oauth2/token`).
pub(super) const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
/// The App Service identity endpoint's path (`IDENTITY_ENDPOINT`).
pub(super) const APP_SERVICE_PATH: &str = "/msi/token";
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How IMDS and App Service give a token's expiry (`expires_on`); from
/// [`Emulator::set_expires_on`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpiresOn {
    /// Unix seconds as a string, `"1506484173"`, as IMDS and App Service send it.
    #[default]
    UnixString,
    /// Unix seconds as a number, as Azure Cloud Shell sends it.
    UnixNumber,
    /// Left out (a broken or impostor endpoint): IMDS still sends `expires_in`.
    Missing,
}

impl Emulator {
    /// Sets how IMDS and App Service give `expires_on`. Default: [`ExpiresOn::UnixString`].
    pub fn set_expires_on(&self, format: ExpiresOn) {
        self.shared.lock().cloud.expires_on = format;
    }

    /// IMDS's token endpoint on this emulator,
    /// `http://127.0.0.1:PORT/metadata/identity/oauth2/token`.
    pub fn imds_endpoint(&self) -> String {
        format!("{}{IMDS_PATH}", self.shared.origin)
    }

    /// The App Service identity endpoint on this emulator (what `IDENTITY_ENDPOINT` holds),
    /// `http://127.0.0.1:PORT/msi/token`.
    pub fn app_service_endpoint(&self) -> String {
        format!("{}{APP_SERVICE_PATH}", self.shared.origin)
    }

    /// The App Service identity endpoint's secret (what `IDENTITY_HEADER` holds), sent as
    /// `X-IDENTITY-HEADER`. A secret: keep it out of logs.
    pub fn app_service_secret(&self) -> String {
        self.shared.cloud.app_service_secret.clone()
    }

    /// The Entra tenant the emulator plays (`AZURE_TENANT_ID`): its token endpoint is
    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn azure_tenant_id(&self) -> String {
        self.shared.cloud.tenant_id.clone()
    }

    /// The client id of the Entra application (`AZURE_CLIENT_ID`) that trusts
    /// [federated tokens](Self::federated_token) of [`FEDERATED_SUBJECT`]; also the user
    /// -assigned managed identity IMDS and App Service know besides the system-assigned
    /// one.
    pub fn azure_client_id(&self) -> String {
        self.shared.cloud.client_id.clone()
    }

    /// The authority host (`AZURE_AUTHORITY_HOST`): this emulator's origin.
    pub fn authority_host(&self) -> String {
        self.shared.origin.clone()
    }
}

/// The token answer IMDS and App Service give, with `expires_on` as set.
fn token_answer(shared: &Shared, resource: &str, imds: bool) -> Response<Body> {
    let (token, ttl) = shared.issue_cloud_token(None);
    let format = shared.lock().cloud.expires_on;
    let expires_on = unix_now() + ttl.as_secs();
    let mut body = Map::new();
    body.insert("access_token".into(), token.into());
    body.insert("token_type".into(), "Bearer".into());
    body.insert("resource".into(), resource.into());
    body.insert("client_id".into(), shared.cloud.client_id.clone().into());
    if imds {
        body.insert("expires_in".into(), ttl.as_secs().to_string().into());
        body.insert("ext_expires_in".into(), ttl.as_secs().to_string().into());
        body.insert("not_before".into(), unix_now().to_string().into());
        body.insert("refresh_token".into(), "".into());
    }
    match format {
        ExpiresOn::UnixString => {
            body.insert("expires_on".into(), expires_on.to_string().into());
        }
        ExpiresOn::UnixNumber => {
            body.insert("expires_on".into(), expires_on.into());
        }
        ExpiresOn::Missing => {}
    }
    super::json_response(StatusCode::OK, &Value::Object(body))
}

/// Checks the user-assigned identity a managed-identity request names (one of `names`);
/// `Err` is the description of the refusal.
fn identity(query: &crate::form::Form, names: [&str; 3], client_id: &str) -> Result<(), String> {
    let given: Vec<(&str, &str)> = names
        .iter()
        .filter_map(|name| query.get(name).map(|v| (*name, v)))
        .collect();
    match given.as_slice() {
        [] => Ok(()),
        [(name, value)] if *name == names[0] && *value == client_id => Ok(()),
        [(name, value)] if *name == names[1] && *value == "emulator-object-id" => Ok(()),
        [(_, value)] if value.ends_with("/userAssignedIdentities/emulator") => Ok(()),
        [_] => Err("Identity not found".into()),
        _ => Err(format!(
            "Only one of {}, {} or {} may be given",
            names[0], names[1], names[2]
        )),
    }
}

/// IMDS: `GET /metadata/identity/oauth2/token?api-version=…&resource=…` with `Metadata: true`.
pub(super) fn imds(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    shared.cloud(|c| c.stats.azure_imds_tokens += 1);
    let refuse = |status: StatusCode, description: &str| {
        shared.cloud(|c| c.stats.refusals += 1);
        super::json_response(
            status,
            &json!({"error": "invalid_request", "error_description": description}),
        )
    };
    if request.method() != Method::GET {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "Only GET is supported");
    }
    if !has_header(request.headers(), "metadata", "true") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Required metadata header not specified",
        );
    }
    if request.headers().contains_key("x-forwarded-for") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Request contains X-Forwarded-For header and is not allowed",
        );
    }
    let Some(query) = query(&request) else {
        return refuse(StatusCode::BAD_REQUEST, "Malformed query");
    };
    if query.get("api-version").is_none_or(str::is_empty) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Required query variable 'api-version' is missing",
        );
    }
    let Some(resource) = query.get("resource").filter(|r| !r.is_empty()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Required audience variable not specified",
        );
    };
    if let Err(problem) = identity(
        &query,
        ["client_id", "object_id", "msi_res_id"],
        &shared.cloud.client_id,
    ) {
        return refuse(StatusCode::BAD_REQUEST, &problem);
    }
    shared.cloud(|c| c.resources.push(resource.to_owned()));
    token_answer(shared, resource, true)
}

/// App Service: `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=…` with
/// `X-IDENTITY-HEADER: {IDENTITY_HEADER}`.
pub(super) fn app_service(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    shared.cloud(|c| c.stats.azure_app_service_tokens += 1);
    let refuse = |status: StatusCode, message: &str| {
        shared.cloud(|c| c.stats.refusals += 1);
        super::json_response(
            status,
            &json!({"statusCode": status.as_u16(), "message": message}),
        )
    };
    if request.method() != Method::GET {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "Only GET is supported");
    }
    if !has_header(
        request.headers(),
        "x-identity-header",
        &shared.cloud.app_service_secret,
    ) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "The X-IDENTITY-HEADER header is missing or does not match",
        );
    }
    let Some(query) = query(&request) else {
        return refuse(StatusCode::BAD_REQUEST, "Malformed query");
    };
    if query.get("api-version") != Some("2019-08-01") {
        return refuse(StatusCode::BAD_REQUEST, "api-version must be 2019-08-01");
    }
    let Some(resource) = query.get("resource").filter(|r| !r.is_empty()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "The resource parameter is required",
        );
    };
    if let Err(problem) = identity(
        &query,
        ["client_id", "principal_id", "mi_res_id"],
        &shared.cloud.client_id,
    ) {
        return refuse(StatusCode::BAD_REQUEST, &problem);
    }
    shared.cloud(|c| c.resources.push(resource.to_owned()));
    token_answer(shared, resource, false)
}

/// The tenant of an Entra token path, `/{tenant}/oauth2/v2.0/token`.
pub(super) fn entra_tenant(path: &str) -> Option<&str> {
    let tenant = path.strip_prefix('/')?.strip_suffix("/oauth2/v2.0/token")?;
    (!tenant.is_empty() && !tenant.contains('/')).then_some(tenant)
}

/// Entra's token endpoint, for the client-credentials grant with a federated client
/// assertion: the assertion must be a federated token of the emulator's issuer, for
/// [`FEDERATED_SUBJECT`] and [`AZURE_FEDERATION_AUDIENCE`], unexpired.
pub(super) async fn entra(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    shared.cloud(|c| c.stats.entra_tokens += 1);
    let refuse = |status: StatusCode, error: &str, code: u32, description: &str| {
        shared.cloud(|c| c.stats.refusals += 1);
        super::json_response(
            status,
            &json!({
                "error": error,
                "error_description": format!("AADSTS{code}: {description}"),
                "error_codes": [code],
                "timestamp": crate::rfc3339::format(SystemTime::now()),
                "trace_id": format!("{:032x}", fastrand::u128(..)),
                "correlation_id": format!("{:032x}", fastrand::u128(..)),
            }),
        )
    };
    let tenant = entra_tenant(request.uri().path())
        .unwrap_or_default()
        .to_owned();
    if tenant != shared.cloud.tenant_id {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    if !is_form(request.method(), request.headers()) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must be a form POST.",
        );
    }
    let Ok(body) = request.into_body().collect().await.map(|b| b.to_bytes()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "Broken body.",
        );
    };
    let Ok(form) = parse_form(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "Malformed form.",
        );
    };
    if form.get("grant_type") != Some("client_credentials") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if form.get("client_id") != Some(shared.cloud.client_id.as_str()) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            "Application with the identifier was not found in the directory.",
        );
    }
    match form.get("scope") {
        Some(scope) if scope.ends_with("/.default") => {
            let scope = scope.to_owned();
            shared.cloud(|c| c.entra_scopes.push(scope));
        }
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1002012,
                "The provided value for scope is not valid. Client credential flows must have \
                 a scope value with /.default suffixed to the resource identifier.",
            );
        }
    }
    if form.get("client_assertion_type") != Some(CLIENT_ASSERTION_TYPE) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            7000216,
            "'client_assertion', 'client_secret' or 'request' is required for the \
             'client_credentials' grant type.",
        );
    }
    let assertion = form.get("client_assertion").unwrap_or_default().to_owned();
    shared.cloud(|c| c.assertions.push(assertion.clone()));
    let claims = match jwt::verify(
        &assertion,
        jsonwebtoken::Algorithm::RS256,
        &shared.cloud.verifier,
    ) {
        Ok(claims) => claims,
        Err(_) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                5002738,
                "Invalid JWT token. The token could not be verified.",
            );
        }
    };
    let rules = Rules {
        issuer: Some(&shared.oidc_issuer()),
        audience: None,
        required: &["exp", "iss", "sub", "aud"],
        leeway: 0,
    };
    if let Err(invalid) = jwt::check(&claims, &rules) {
        let (code, description) = match invalid {
            jwt::Invalid::Expired => (
                700024,
                "Client assertion is not within its valid time range.",
            ),
            jwt::Invalid::Issuer => (
                700211,
                "No matching federated identity record found for presented assertion issuer.",
            ),
            _ => (5002738, "Invalid JWT token."),
        };
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            code,
            description,
        );
    }
    if claims.get("sub").and_then(Value::as_str) != Some(FEDERATED_SUBJECT) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            70021,
            "No matching federated identity record found for presented assertion.",
        );
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == AZURE_FEDERATION_AUDIENCE,
        Some(Value::Array(auds)) => auds.iter().any(|a| a == AZURE_FEDERATION_AUDIENCE),
        _ => false,
    };
    if !audience_ok {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700212,
            "No matching federated identity record found for presented assertion audience.",
        );
    }
    let (token, ttl) = shared.issue_cloud_token(None);
    super::json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": ttl.as_secs(),
            "ext_expires_in": ttl.as_secs(),
            "access_token": token,
        }),
    )
}
