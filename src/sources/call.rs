//! One call to a platform's identity service (a metadata server, IMDS, App Service, IAM
//! Credentials, a credential URL): a GET with headers or a JSON POST, sent through the
//! exchange's [`Http`] (the built-in client, the timeout, no redirects, the size cap) under
//! the crate's transport rule with one addition: plain `http` also goes to a metadata
//! service's own link-local hosts.

use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value;
use tokio::time::Instant;

use crate::error::{Error, Result, Scrubber};
use crate::exchange::TokenEndpoint;
use crate::exchange::http::{Carrying, Http, retry_after};

/// Where plain `http` may go besides loopback hosts, and how else to allow it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlainHttp {
    /// The service's own hosts, reached over plain http by design (a link-local metadata
    /// address that never leaves the machine).
    pub(crate) hosts: &'static [&'static str],
    /// The user allowed plain http anywhere.
    pub(crate) allow_any: bool,
    /// The setter that allows it, for the error.
    pub(crate) allow_with: &'static str,
}

impl PlainHttp {
    /// https only (loopback excepted), allowed otherwise with `allow_with`.
    pub(crate) const fn https(allow_with: &'static str) -> Self {
        Self {
            hosts: &[],
            allow_any: false,
            allow_with,
        }
    }
}

/// A service's answer, read whole (up to the size cap).
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
    /// When the request went out: a token's lifetime counts from then.
    pub(crate) sent_at: Instant,
    /// The wall clock when the request went out, for expiries given as timestamps.
    pub(crate) sent_wall: std::time::SystemTime,
    pub(crate) retry_after: Option<Duration>,
}

impl Answer {
    /// The header `name` as text, if present and readable.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error for an unsuccessful status: `HTTP {status}` and what the body says (its
    /// `error_description`, `error.message`, `message` or first line, scrubbed), transient
    /// for 408, 429 and 5xx (and `also_transient`), with the service's `Retry-After`.
    pub(crate) fn status_error(
        &self,
        service: &str,
        scrubber: &Scrubber,
        also_transient: &[u16],
        hint: &str,
    ) -> Error {
        let said = said(&self.body, scrubber);
        let mut problem = format!("HTTP {}", self.status);
        if let Some(said) = said {
            problem.push_str(": ");
            problem.push_str(&said);
        }
        if !hint.is_empty() {
            problem.push_str(" (");
            problem.push_str(hint);
            problem.push(')');
        }
        let status = self.status;
        let transient = status == 408
            || status == 429
            || (500..=599).contains(&status)
            || also_transient.contains(&status);
        Error::Cloud {
            service: service.to_owned(),
            problem,
            transient,
            retry_after: self.retry_after,
        }
    }

    /// The body as a JSON object, or a permanent error saying what it is instead.
    pub(crate) fn json(&self, service: &str) -> Result<serde_json::Map<String, Value>> {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(object)) => Ok(object),
            Ok(_) => Err(cloud(service, "the answer is not a JSON object", false)),
            Err(_) => Err(cloud(
                service,
                format!("the answer is not JSON ({})", describe_body(&self.body)),
                false,
            )),
        }
    }
}

/// A short description of a body that is not what was expected: its kind and size, never
/// its content (it may hold a token).
pub(crate) fn describe_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let start = text.trim_start().get(..64).unwrap_or(text.trim_start());
    let lower = start.to_ascii_lowercase();
    if lower.starts_with("<!doctype html") || lower.starts_with("<html") {
        format!("an HTML page of {} bytes", body.len())
    } else if body.is_empty() {
        "an empty body".into()
    } else {
        format!("{} bytes that do not parse", body.len())
    }
}

/// What an error body says, scrubbed: an OAuth2 `error` and `error_description`, Google's
/// `error.message`, a `message`, or the first line of a short text.
fn said(body: &[u8], scrubber: &Scrubber) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    if let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let oauth =
            text(object.get("error")).map(|error| match text(object.get("error_description")) {
                Some(description) => format!("{error}: {description}"),
                None => error,
            });
        let google = object
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(|message| {
                match object
                    .get("error")
                    .and_then(|e| e.get("status"))
                    .and_then(Value::as_str)
                {
                    Some(status) => format!("{status}: {message}"),
                    None => message.to_owned(),
                }
            });
        let message = text(object.get("message")).or_else(|| text(object.get("Message")));
        return oauth.or(google).or(message).map(|t| scrubber.text(&t));
    }
    let text = String::from_utf8_lossy(body);
    let lower = text.trim_start().to_ascii_lowercase();
    if lower.starts_with("<!doctype html") || lower.starts_with("<html") {
        return Some(describe_body(body));
    }
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|line| scrubber.text(line))
}

/// An [`Error::Cloud`].
pub(crate) fn cloud(service: &str, problem: impl Into<String>, transient: bool) -> Error {
    Error::Cloud {
        service: service.to_owned(),
        problem: problem.into(),
        transient,
        retry_after: None,
    }
}

/// One request being built.
pub(crate) struct Call<'a> {
    endpoint: &'a TokenEndpoint,
    service: &'a str,
    method: Method,
    url: reqwest::Url,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    plain_http: PlainHttp,
    timeout: Option<Duration>,
    /// A header whose value cannot be sent: `send` refuses to go.
    invalid_header: Option<&'static str>,
}

impl<'a> Call<'a> {
    /// A GET of `url` for `service` (named in errors), with `endpoint`'s client and timeout.
    pub(crate) fn get(
        endpoint: &'a TokenEndpoint,
        service: &'a str,
        url: reqwest::Url,
        plain_http: PlainHttp,
    ) -> Self {
        Self {
            endpoint,
            service,
            method: Method::GET,
            url,
            headers: HeaderMap::new(),
            body: None,
            plain_http,
            timeout: None,
            invalid_header: None,
        }
    }

    /// A POST of the JSON `body`.
    pub(crate) fn post_json(
        endpoint: &'a TokenEndpoint,
        service: &'a str,
        url: reqwest::Url,
        body: &Value,
        plain_http: PlainHttp,
    ) -> Self {
        let mut call = Self::get(endpoint, service, url, plain_http);
        call.method = Method::POST;
        call.body = Some(body.to_string().into_bytes());
        call.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        call
    }

    /// Adds a header; a `sensitive` one is marked so (never logged by hyper or reqwest).
    /// A value that cannot be a header is a configuration error at [`send`](Self::send).
    pub(crate) fn header(mut self, name: &'static str, value: &str, sensitive: bool) -> Self {
        match HeaderValue::try_from(value) {
            Ok(mut value) => {
                value.set_sensitive(sensitive);
                self.headers.append(HeaderName::from_static(name), value);
            }
            Err(_) => self.invalid_header = Some(name),
        }
        self
    }

    /// Adds headers named at run time (a credential source's `headers`), all sensitive.
    pub(crate) fn headers<'h>(
        mut self,
        headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    ) -> Result<Self> {
        for (name, value) in headers {
            let name = HeaderName::try_from(name).map_err(|_| {
                cloud(
                    self.service,
                    format!("{name:?} is not a header name"),
                    false,
                )
            })?;
            let mut value = HeaderValue::try_from(value).map_err(|_| {
                cloud(
                    self.service,
                    format!("the value of header {name} cannot be sent"),
                    false,
                )
            })?;
            value.set_sensitive(true);
            self.headers.append(name, value);
        }
        Ok(self)
    }

    /// Adds `Authorization: Bearer {token}`, marked sensitive.
    pub(crate) fn bearer(self, token: &str) -> Self {
        self.header(AUTHORIZATION.as_str(), &format!("Bearer {token}"), true)
    }

    /// A timeout for this call instead of the endpoint's (a detection probe's).
    pub(crate) fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request and reads the answer whole. Nothing is sent over plain http to a
    /// host the rule does not allow ([`Error::InsecureTransport`]); a redirect is refused,
    /// not followed; a failure in transit or a timeout is a transient [`Error::Cloud`].
    pub(crate) async fn send(self) -> Result<Answer> {
        if let Some(name) = self.invalid_header {
            return Err(cloud(
                self.service,
                format!(
                    "the {name} header cannot be sent (it has characters a header cannot carry)"
                ),
                false,
            ));
        }
        let own_host = self.url.scheme() == "http"
            && self
                .url
                .host_str()
                .is_some_and(|h| self.plain_http.hosts.contains(&h));
        let timeout = self.timeout.unwrap_or(self.endpoint.request_timeout());
        let http = Http {
            client: None,
            allow_http: self.plain_http.allow_any || own_host,
            timeout,
        };
        let carrying = Carrying {
            sending: "the request",
            allow_with: self.plain_http.allow_with,
        };
        let (method, headers, body) = (self.method, self.headers, self.body);
        let sent_wall = std::time::SystemTime::now();
        let mut fetched = http
            .fetch(&self.url, carrying, |client| {
                let mut request = client
                    .request(method, self.url.clone())
                    .header(ACCEPT, "application/json, text/plain;q=0.9")
                    .headers(headers);
                if let Some(body) = body {
                    // Not cloneable: no client resends it to a 307's target.
                    request = request.body(reqwest::Body::wrap(http_body_util::Full::new(
                        bytes::Bytes::from(body),
                    )));
                }
                request
            })
            .await
            .map_err(|e| match e {
                Error::Timeout(_) => {
                    cloud(self.service, format!("no answer within {timeout:?}"), true)
                }
                Error::Connect(chain) => {
                    cloud(self.service, format!("cannot connect: {chain}"), true)
                }
                Error::Transport(chain) => {
                    cloud(self.service, format!("the request failed: {chain}"), true)
                }
                Error::Redirect { location } => cloud(
                    self.service,
                    format!(
                        "it answered with a redirect{}, which is never followed: point the \
                         setting at the service itself",
                        location.map(|l| format!(" to {l}")).unwrap_or_default()
                    ),
                    false,
                ),
                other => other,
            })?;
        let status = fetched.status;
        let body = fetched.take_body()?;
        Ok(Answer {
            status,
            retry_after: retry_after(&fetched.headers),
            headers: fetched.headers,
            body,
            sent_at: fetched.sent_at,
            sent_wall,
        })
    }
}

/// Parses `url` for `service`; a bad one is a configuration error naming `setting`.
pub(crate) fn parse_url(url: &str, setting: &str) -> Result<reqwest::Url> {
    reqwest::Url::parse(url)
        .map_err(|e| Error::Config(format!("{setting}: {url:?} is not a URL ({e})")))
}

/// Seconds from a JSON number or a numeric string (Azure sends `"3599"`).
pub(crate) fn seconds(value: Option<&Value>) -> Option<f64> {
    match value? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|s| s.is_finite())
}

/// The lifetime left, counted from `sent_wall`, of something that expires at the Unix time
/// `expires_at`; `None` if it has already passed.
pub(crate) fn lifetime_until(
    expires_at: f64,
    sent_wall: std::time::SystemTime,
) -> Option<Duration> {
    let sent = sent_wall
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let left = expires_at - sent;
    (left >= 1.0)
        .then(|| Duration::from_secs_f64(left.min(crate::defaults::MAX_EXPIRES_IN.as_secs_f64())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_described_without_their_content() {
        assert_eq!(
            describe_body(b"<!DOCTYPE html><html>captive</html>"),
            "an HTML page of 35 bytes"
        );
        assert_eq!(describe_body(b""), "an empty body");
        assert!(!describe_body(b"secret-token-value").contains("secret"));
    }

    #[test]
    fn error_bodies_say_what_the_service_said_scrubbed() {
        let scrubber = Scrubber::default().secret("hunter2-secret");
        let said = |body: &str| said(body.as_bytes(), &scrubber);
        assert_eq!(
            said(r#"{"error":"invalid_request","error_description":"Identity not found"}"#)
                .as_deref(),
            Some("invalid_request: Identity not found")
        );
        assert_eq!(
            said(r#"{"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED"}}"#)
                .as_deref(),
            Some("PERMISSION_DENIED: denied")
        );
        assert_eq!(said("Not Found\n").as_deref(), Some("Not Found"));
        assert_eq!(
            said("bad hunter2-secret").as_deref(),
            Some("bad [REDACTED]")
        );
    }

    #[test]
    fn seconds_and_lifetimes() {
        assert_eq!(seconds(Some(&Value::from("3599"))), Some(3599.0));
        assert_eq!(seconds(Some(&Value::from(60))), Some(60.0));
        assert_eq!(seconds(Some(&Value::from("soon"))), None);
        let now = std::time::SystemTime::now();
        let at = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let left = lifetime_until(at + 100.0, now).unwrap();
        assert!((99..=100).contains(&left.as_secs()), "{left:?}");
        assert!(lifetime_until(at - 5.0, now).is_none());
    }
}
