//! Responses both the API and the event stream build: DT's error shape, JSON bodies, and
//! cutting a connection on demand.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::body::Body;

/// Where DT's error responses point.
const HELP_URL: &str = "https://developer.disruptive-technologies.com/docs/error-codes";

/// Drops one connection on demand, whatever it is doing: how an event stream is cut
/// mid-body.
#[derive(Clone, Debug, Default)]
pub(super) struct Hangup(Arc<Notify>);

impl Hangup {
    /// Makes the connection task drop the connection (at once, or as soon as it starts
    /// waiting for this).
    pub(super) fn hang_up(&self) {
        self.0.notify_one();
    }

    pub(super) async fn wait(&self) {
        self.0.notified().await;
    }
}

/// DT's error shape: `{"error", "code", "help"}`.
pub(super) fn dt_error(status: StatusCode, message: &str) -> Response<Body> {
    let code = status.as_u16();
    json_response(
        status,
        &json!({"error": message, "code": code, "help": format!("{HELP_URL}#{code}")}),
    )
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    response(
        status,
        Bytes::from(body.to_string()),
        Some("application/json"),
    )
}

pub(super) fn response(
    status: StatusCode,
    body: Bytes,
    content_type: Option<&'static str>,
) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}
