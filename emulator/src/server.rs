//! The HTTP side: accept loop, routing and the handlers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
#[cfg(not(feature = "tonic"))]
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::body::Body;
use super::dpop::Refusal;
use super::form::{Rejection, parse_form};
use super::grants::{Spent, metadata};
use super::protected::Granted;
use super::race::first;
use super::responses::{Hangup, dt_error, json_response, response};
use super::routes::{
    API_PREFIX, OAUTH_METADATA_PATH, OPENID_METADATA_PATH, RESOURCE_METADATA_PATH, TOKEN_PATH,
};
use super::stream::{self, Subscriptions};
use super::validate::{Grant, check_token_request};
use super::{Fault, Shared, TokenCheck};

/// Largest request body accepted; larger ones get 413.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Returned by the service to make hyper close the connection without answering.
#[derive(Debug)]
struct CloseConnection;

impl fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection closed by the emulator")
    }
}

impl std::error::Error for CloseConnection {}

/// Accepts connections until the task is aborted; dropping the task drops `connections`,
/// which aborts every connection task with it.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, "emulator: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let hangup = Hangup::default();
        connections.spawn(async move {
            let connection_hangup = hangup.clone();
            let service = service_fn(move |request| {
                let (shared, hangup) = (Arc::clone(&shared), hangup.clone());
                async move { handle(&shared, request, hangup).await }
            });
            // HTTP/1.1, and HTTP/2 as well for the gRPC service (feature `tonic`).
            #[cfg(not(feature = "tonic"))]
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            #[cfg(feature = "tonic")]
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            #[cfg(feature = "tonic")]
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            // Errors from the connection are a client going away or a `DropConnection`
            // fault. A hang-up drops the connection, which closes the socket, mid-body if
            // need be.
            let _ = first(connection_hangup.wait(), connection).await;
        });
    }
}

async fn handle(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    hangup: Hangup,
) -> Result<Response<Body>, CloseConnection> {
    #[cfg(feature = "tonic")]
    if request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
    {
        return Ok(super::grpc::handle(shared, request).await.map(Body::Grpc));
    }
    let path = request.uri().path();
    if path == TOKEN_PATH {
        if request.method() != Method::POST {
            return Ok(method_not_allowed("POST"));
        }
        return token_endpoint(shared, request).await;
    }
    if path == OAUTH_METADATA_PATH || path == OPENID_METADATA_PATH {
        if request.method() != Method::GET {
            return Ok(method_not_allowed("GET"));
        }
        let (issuer, methods, algs) = {
            let mut state = shared.lock();
            state.stats.discovery_requests += 1;
            (
                state.metadata_issuer.clone(),
                state.auth_methods.clone(),
                state.auth_algs.clone(),
            )
        };
        let origin = shared.origin();
        let issuer = issuer.unwrap_or_else(|| origin.clone());
        let mut document = metadata(&origin, &issuer);
        if let Some(methods) = methods {
            document["token_endpoint_auth_methods_supported"] = json!(methods);
        }
        if let Some(algs) = algs {
            document["token_endpoint_auth_signing_alg_values_supported"] = json!(algs);
        }
        return Ok(json_response(StatusCode::OK, &document));
    }
    if let Some(rest) = path.strip_prefix(RESOURCE_METADATA_PATH)
        && rest == API_PREFIX
    {
        return Ok(super::protected::metadata(shared));
    }
    if path == API_PREFIX || path.starts_with("/v2/") {
        return api(shared, request, hangup).await;
    }
    if super::cloud::serves(path) {
        return Ok(super::cloud::handle(shared, request).await);
    }
    Ok(response(StatusCode::NOT_FOUND, Bytes::new(), None))
}

async fn token_endpoint(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<Response<Body>, CloseConnection> {
    shared.record(|s| s.token_requests += 1);
    let (parts, body) = request.into_parts();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            let rejection = Rejection::request(format!(
                "the request body is larger than {MAX_BODY_BYTES} bytes"
            ));
            return Ok(token_error(
                shared,
                StatusCode::PAYLOAD_TOO_LARGE,
                &rejection,
            ));
        }
        Err(BodyError::Broken) => {
            shared.record(|s| s.token_failures += 1);
            return Err(CloseConnection);
        }
    };

    match shared.take_fault() {
        None => {}
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(fault) => {
            shared.record(|s| s.token_failures += 1);
            tracing::debug!(?fault, "emulator: token request gets an injected fault");
            return fault_response(fault);
        }
    }

    let refused = {
        let state = shared.lock();
        super::client_auth::refuse_method(
            &parts.headers,
            &body,
            state.auth_methods.as_deref(),
            state.auth_algs.as_deref(),
        )
    };
    if let Some(rejection) = refused {
        return Ok(token_error(shared, rejection.status, &rejection));
    }
    let result = check_token_request(
        &parts.headers,
        &body,
        &shared.account,
        &shared.client,
        &shared.keys,
        &shared.token_url,
    );
    let grant = match result {
        Ok(grant) => grant,
        Err(rejection) => return Ok(token_error(shared, rejection.status, &rejection)),
    };
    // What the token is for: the request passed its checks, so its form parses.
    let granted = match parse_form(&body).and_then(|form| Granted::of(&form)) {
        Ok(granted) => granted,
        Err(rejection) => return Ok(token_error(shared, rejection.status, &rejection)),
    };
    // A DPoP proof is checked before anything is spent (a refresh token, say).
    let jkt = if parts.headers.contains_key(token_refresh::dpop::HEADER) {
        let checked = {
            let mut state = shared.lock();
            let require = state.dpop.require_nonce;
            state
                .dpop
                .check(&parts.headers, "POST", &shared.token_url, None, require)
        };
        match checked {
            Ok(jkt) => Some(jkt),
            Err(refusal) => return Ok(dpop_refusal(shared, refusal)),
        }
    } else {
        None
    };
    let mut body = Map::new();
    match &grant {
        Grant::RefreshToken { refresh_token, .. } => {
            let spent = shared.lock().refresh_tokens.spend(refresh_token);
            match spent {
                Spent::Ok(next) => {
                    shared.record(|s| s.refresh_token_grants += 1);
                    body.insert("refresh_token".into(), next.into());
                }
                Spent::Refused(rejection) => {
                    shared.record(|s| s.invalid_grants += 1);
                    return Ok(token_error(shared, rejection.status, &rejection));
                }
                Spent::Reused(rejection) => {
                    shared.record(|s| {
                        s.invalid_grants += 1;
                        s.refresh_token_reuses += 1;
                    });
                    return Ok(token_error(shared, rejection.status, &rejection));
                }
            }
        }
        Grant::TokenExchange { subject_token } => {
            let mut state = shared.lock();
            state.subject_tokens.push(subject_token.clone());
            state.stats.token_exchanges += 1;
            body.insert(
                "issued_token_type".into(),
                token_refresh::token_types::ACCESS_TOKEN.into(),
            );
        }
        Grant::JwtBearer | Grant::ClientCredentials { .. } => {}
    }
    let bound = jkt.is_some();
    let (token, ttl) = shared.issue_token(jkt, granted);
    tracing::debug!(
        ?grant,
        expires_in = ttl.as_secs(),
        "emulator: issued an access token"
    );
    body.insert("access_token".into(), token.into());
    body.insert(
        "token_type".into(),
        if bound { "DPoP" } else { "bearer" }.into(),
    );
    body.insert("expires_in".into(), ttl.as_secs().into());
    if let Grant::ClientCredentials { scope: Some(scope) }
    | Grant::RefreshToken {
        scope: Some(scope), ..
    } = grant
    {
        body.insert("scope".into(), scope.into());
    }
    let mut response = json_response(StatusCode::OK, &Value::Object(body));
    no_store(&mut response);
    add_dpop_nonce(shared, &mut response);
    Ok(response)
}

/// 400 `use_dpop_nonce` (with the nonce) or `invalid_dpop_proof`.
fn dpop_refusal(shared: &Shared, refusal: Refusal) -> Response<Body> {
    shared.record(|s| s.dpop_refusals += 1);
    let rejection = match refusal {
        Refusal::UseNonce => Rejection::new(
            "use_dpop_nonce",
            "the DPoP proof must carry the nonce in the DPoP-Nonce header",
        ),
        Refusal::Invalid(problem) => Rejection::new("invalid_dpop_proof", problem),
    };
    let mut response = token_error(shared, StatusCode::BAD_REQUEST, &rejection);
    add_dpop_nonce(shared, &mut response);
    response
}

/// The current `DPoP-Nonce`, when the emulator demands one.
fn add_dpop_nonce(shared: &Shared, response: &mut Response<Body>) {
    let state = shared.lock();
    if state.dpop.require_nonce
        && let Ok(nonce) = HeaderValue::try_from(state.dpop.nonce.as_str())
    {
        response
            .headers_mut()
            .insert(token_refresh::dpop::NONCE_HEADER, nonce);
    }
}

fn token_error(shared: &Shared, status: StatusCode, rejection: &Rejection) -> Response<Body> {
    shared.record(|s| s.token_failures += 1);
    tracing::debug!(
        status = status.as_u16(),
        error = rejection.error,
        "emulator: token request rejected"
    );
    let body = json!({
        "error": rejection.error,
        "error_description": rejection.description,
    });
    let mut response = json_response(status, &body);
    no_store(&mut response);
    if rejection.challenge {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"emulator\""),
        );
    }
    response
}

fn fault_response(fault: Fault) -> Result<Response<Body>, CloseConnection> {
    let status_or_500 =
        |status: u16| StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Ok(match fault {
        Fault::Status {
            status,
            retry_after,
        } => {
            let mut response = response(status_or_500(status), Bytes::new(), None);
            if let Some(value) = retry_after.and_then(|v| HeaderValue::try_from(v).ok()) {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
            response
        }
        Fault::OAuthError { status, error } => json_response(
            status_or_500(status),
            &json!({"error": error, "error_description": "injected by the emulator"}),
        ),
        Fault::Garbage => response(
            StatusCode::OK,
            Bytes::from_static(b"<html>oops</html>"),
            Some("text/html"),
        ),
        Fault::DropConnection => return Err(CloseConnection),
        // Handled by the caller; answer normally if it ever gets here.
        Fault::Delay(_) => response(StatusCode::INTERNAL_SERVER_ERROR, Bytes::new(), None),
    })
}

async fn api(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    hangup: Hangup,
) -> Result<Response<Body>, CloseConnection> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let stream_project = stream::project_of(&path);
    // Before the token check, so that a revocation right after it reaches the stream.
    let subscriptions = stream_project.map(|_| Subscriptions::new(shared));
    let bearer = match shared.check_bearer(request.headers(), method.as_str(), &path) {
        Ok(bearer) => bearer,
        Err(problem) => return Ok(unauthorized(shared, problem)),
    };
    if let Some(refused) = super::protected::refuse(shared, &bearer.granted, &path) {
        return Ok(refused);
    }
    if let (Some(project), Some(subscriptions)) = (stream_project, subscriptions) {
        if method != Method::GET {
            return Ok(dt_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            ));
        }
        let query = request.uri().query();
        return Ok(stream::open(
            shared,
            project,
            query,
            bearer,
            subscriptions,
            hangup,
        ));
    }
    Ok(match (path.as_str(), method) {
        ("/v2/projects", Method::GET) => json_response(StatusCode::OK, &projects()),
        ("/v2/projects", _) => dt_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        ("/v2/echo", Method::POST) => match read_body(request.into_body()).await {
            Ok(body) if serde_json::from_slice::<Value>(&body).is_ok() => {
                response(StatusCode::OK, body, Some("application/json"))
            }
            Ok(_) => dt_error(
                StatusCode::BAD_REQUEST,
                "the request body is not valid JSON",
            ),
            Err(BodyError::TooLarge) => dt_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large",
            ),
            Err(BodyError::Broken) => return Err(CloseConnection),
        },
        ("/v2/echo", _) => dt_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        ("/v2/whoami", Method::GET) => super::protected::whoami(&bearer.granted),
        _ => dt_error(StatusCode::NOT_FOUND, "not found"),
    })
}

fn projects() -> Value {
    json!({
        "projects": [{
            "name": "projects/emulated-project",
            "displayName": "Emulated project",
            "inventory": false,
            "organization": "organizations/emulated-org",
            "organizationDisplayName": "Emulator",
            "sensorCount": 0,
            "cloudConnectorCount": 0,
        }],
        "nextPageToken": "",
    })
}

fn unauthorized(shared: &Shared, problem: TokenCheck) -> Response<Body> {
    let message = match &problem {
        TokenCheck::Missing => "the request has no bearer token",
        TokenCheck::Unknown => "the access token is not valid",
        TokenCheck::Expired => "the access token has expired",
        TokenCheck::Revoked => "the access token has been revoked",
        TokenCheck::Bound => "the access token is DPoP-bound: send it as DPoP with a proof",
        TokenCheck::DpopNonce => "the DPoP proof must carry the nonce in the DPoP-Nonce header",
        TokenCheck::DpopInvalid(problem) => problem.as_str(),
    };
    let mut response = dt_error(StatusCode::UNAUTHORIZED, message);
    let challenge = match problem {
        TokenCheck::DpopNonce => "DPoP error=\"use_dpop_nonce\"",
        TokenCheck::DpopInvalid(_) => "DPoP error=\"invalid_dpop_proof\"",
        _ => "Bearer error=\"invalid_token\"",
    };
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        super::protected::challenge(shared, challenge),
    );
    let state = shared.lock();
    if (state.dpop.require_api_nonce || matches!(problem, TokenCheck::DpopNonce))
        && let Ok(nonce) = HeaderValue::try_from(state.dpop.nonce.as_str())
    {
        response
            .headers_mut()
            .insert(token_refresh::dpop::NONCE_HEADER, nonce);
    }
    response
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = response(StatusCode::METHOD_NOT_ALLOWED, Bytes::new(), None);
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// RFC 6749 §5.1: token responses must not be cached.
fn no_store(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
}

enum BodyError {
    TooLarge,
    Broken,
}

async fn read_body(body: Incoming) -> Result<Bytes, BodyError> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Broken),
    }
}
