//! The API as an OAuth 2.0 protected resource: what each token was granted (scope, RFC 8707
//! resources, audience), `GET /v2/whoami` to show it, RFC 9728 protected-resource metadata
//! with `resource_metadata` in the 401 challenge, and the checks a resource server makes —
//! a token for this resource, the scope a path needs (403 `insufficient_scope`).

use http::StatusCode;
use http::header::{HeaderValue, WWW_AUTHENTICATE};
use hyper::Response;
use serde_json::json;

use super::Shared;
use super::body::Body;
use super::form::{Form, Rejection};
use super::responses::{dt_error, json_response};
use super::routes::{API_PREFIX, RESOURCE_METADATA_PATH};

/// What a token was granted, as its request asked.
#[derive(Clone, Debug, Default)]
pub(crate) struct Granted {
    pub(crate) scopes: Vec<String>,
    pub(crate) resources: Vec<String>,
    pub(crate) audience: Option<String>,
}

impl Granted {
    /// What a token request asks for: `scope`, every `resource` (RFC 8707: absolute URIs
    /// without a fragment, else `invalid_target`), `audience`.
    pub(crate) fn of(form: &Form) -> Result<Self, Rejection> {
        let resources: Vec<String> = form.get_all("resource").map(str::to_owned).collect();
        for resource in &resources {
            let absolute = resource
                .parse::<http::Uri>()
                .is_ok_and(|uri| uri.scheme().is_some() && uri.host().is_some());
            if !absolute || resource.contains('#') {
                return Err(Rejection::new(
                    "invalid_target",
                    "a resource must be an absolute URI without a fragment (RFC 8707)",
                ));
            }
        }
        Ok(Self {
            scopes: form
                .get("scope")
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            resources,
            audience: form.get("audience").map(str::to_owned),
        })
    }
}

/// How the API guards itself, beyond a valid token.
#[derive(Clone, Debug, Default)]
pub(crate) struct Protection {
    /// Publish RFC 9728 metadata and name it in 401 challenges.
    pub(crate) metadata: bool,
    /// Accept only tokens issued for this resource (`{origin}/v2`).
    pub(crate) require_resource: bool,
    /// Paths (prefixes) and the scope each needs.
    pub(crate) scopes: Vec<(String, String)>,
}

/// The resource identifier of the API: `{origin}/v2`.
pub(crate) fn resource_of(shared: &Shared) -> String {
    format!("{}{API_PREFIX}", shared.origin)
}

/// The RFC 9728 metadata document of the API.
pub(crate) fn metadata(shared: &Shared) -> Response<Body> {
    let (published, scopes) = {
        let mut state = shared.lock();
        state.stats.resource_metadata_requests += 1;
        let protection = &state.protection;
        (
            protection.metadata,
            protection
                .scopes
                .iter()
                .map(|(_, scope)| scope.clone())
                .collect::<Vec<_>>(),
        )
    };
    if !published {
        return dt_error(StatusCode::NOT_FOUND, "not found");
    }
    json_response(
        StatusCode::OK,
        &json!({
            "resource": resource_of(shared),
            "authorization_servers": [shared.origin.clone()],
            "scopes_supported": scopes,
            "bearer_methods_supported": ["header"],
        }),
    )
}

/// Adds `resource_metadata` to a 401's Bearer challenge, when metadata is published.
pub(crate) fn challenge(shared: &Shared, challenge: &str) -> HeaderValue {
    let published = shared.lock().protection.metadata;
    let value = if published && challenge.starts_with("Bearer") {
        format!(
            r#"{challenge}, resource_metadata="{}{RESOURCE_METADATA_PATH}{API_PREFIX}""#,
            shared.origin
        )
    } else {
        challenge.to_owned()
    };
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// The answer to a request under `path` whose valid token was granted `granted`, if the
/// resource refuses it: 401 for a token issued for another resource, 403
/// `insufficient_scope` (naming the scope) for one without the scope the path needs.
pub(crate) fn refuse(shared: &Shared, granted: &Granted, path: &str) -> Option<Response<Body>> {
    let protection = shared.lock().protection.clone();
    if protection.require_resource && !granted.resources.contains(&resource_of(shared)) {
        let mut response = dt_error(
            StatusCode::UNAUTHORIZED,
            "the access token was not issued for this resource",
        );
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            challenge(shared, r#"Bearer error="invalid_token""#),
        );
        return Some(response);
    }
    let needed = protection.scopes.iter().find(|(prefix, scope)| {
        path.starts_with(prefix.as_str()) && !granted.scopes.contains(scope)
    });
    if let Some((_, scope)) = needed {
        shared.record(|s| s.insufficient_scope += 1);
        let mut response = dt_error(StatusCode::FORBIDDEN, "the access token lacks a scope");
        if let Ok(value) = HeaderValue::try_from(format!(
            r#"Bearer error="insufficient_scope", scope="{scope}""#
        )) {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        return Some(response);
    }
    None
}

/// `GET /v2/whoami`: what the token was granted.
pub(crate) fn whoami(granted: &Granted) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({
            "scope": granted.scopes.join(" "),
            "resources": granted.resources,
            "audience": granted.audience,
        }),
    )
}
