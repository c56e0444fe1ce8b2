//! The HTTP every request to an authorization server goes through: the process's built-in
//! clients, the transport rules (https, or loopback), timeouts, no redirects, a capped read,
//! and `Retry-After`.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::header::{ACCEPT, AUTHORIZATION, DATE, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderValue};
use serde_json::Value;
use tokio::time::Instant;

use crate::defaults::{CONNECT_TIMEOUT, MAX_RESPONSE_BYTES};
use crate::error::{Error, Result};
use crate::quiet_panic::Passed;
use crate::transport::{check_transport, origin_of, same_origin};

const USER_AGENT: &str = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));

/// How requests to one endpoint go out: which client, whether plain http may leave the
/// machine, and the timeout of one request.
#[derive(Clone)]
pub(crate) struct Http {
    /// A client the application gave; else the process's built-in one.
    pub(crate) client: Option<reqwest::Client>,
    pub(crate) allow_http: bool,
    pub(crate) timeout: Duration,
}

/// An answer that came back from the URL asked, not redirected.
pub(crate) struct Fetched {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    /// `None`: larger than [`MAX_RESPONSE_BYTES`].
    pub(crate) body: Option<Vec<u8>>,
    /// When the request went out.
    pub(crate) sent_at: Instant,
}

impl Fetched {
    /// The body to judge the answer by. An error status with a huge body (a proxy's HTML
    /// page) is still that status: it is judged without the body, so a 503 stays transient
    /// and keeps its `Retry-After`; a success that large is [`Error::ResponseTooLarge`].
    pub(crate) fn take_body(&mut self) -> Result<Vec<u8>> {
        match self.body.take() {
            Some(body) => Ok(body),
            None if !(200..300).contains(&self.status) => Ok(Vec::new()),
            None => Err(Error::ResponseTooLarge {
                limit: MAX_RESPONSE_BYTES,
            }),
        }
    }
}

/// What a request carries and how to allow it over plain http, for
/// [`Error::InsecureTransport`](crate::Error::InsecureTransport).
#[derive(Clone, Copy)]
pub(crate) struct Carrying {
    pub(crate) sending: &'static str,
    pub(crate) allow_with: &'static str,
}

impl Http {
    /// Sends the request `build` makes with the client for `url`, under the transport
    /// rules and the timeout, and reads the answer up to [`MAX_RESPONSE_BYTES`]. A redirect
    /// (a 3xx, or an answer from another origin because a supplied client followed one) is
    /// [`Error::Redirect`](crate::Error::Redirect); nothing else about the status is judged here.
    pub(crate) async fn fetch(
        &self,
        url: &reqwest::Url,
        carrying: Carrying,
        build: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Fetched> {
        self.check(url, carrying)?;
        let request = build(self.client(url)?).timeout(self.timeout);
        let sent_at = Instant::now();
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        if !same_origin(response.url(), url) {
            // A client that follows redirects took a 301/302/303 (without the body).
            return Err(Error::Redirect {
                location: Some(origin_of(response.url())),
            });
        }
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .map(|l| origin_of(&l));
            return Err(Error::Redirect { location });
        }
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = match read_capped(response, MAX_RESPONSE_BYTES).await {
            Ok(body) => Some(body),
            Err(ReadError::TooLarge) => None,
            Err(ReadError::Http(e)) => return Err(self.transport_error(&e)),
        };
        Ok(Fetched {
            status,
            headers,
            body,
            sent_at,
        })
    }

    /// Whether a request to `url` may go: the runtime has an I/O driver, and plain http goes
    /// only to loopback unless allowed. Checked before anything is signed for it, too.
    pub(crate) fn check(&self, url: &reqwest::Url, carrying: Carrying) -> Result<()> {
        ensure_io()?;
        check_transport(
            Some(url.scheme()),
            url.host_str(),
            self.allow_http,
            carrying.sending,
            carrying.allow_with,
        )
    }

    /// A GET for a JSON object (server metadata, a CI token service), through
    /// [`fetch`](Self::fetch); `bearer` is sent as a sensitive `Authorization`.
    pub(crate) async fn get_json(
        &self,
        url: &reqwest::Url,
        bearer: Option<&str>,
    ) -> std::result::Result<Value, GetError> {
        let fail = |problem: String, transient: bool| GetError {
            problem,
            transient,
            status: None,
        };
        let authorization = match bearer {
            None => None,
            Some(bearer) => {
                let mut value =
                    HeaderValue::try_from(format!("Bearer {bearer}")).map_err(|_| {
                        fail("the bearer token cannot be sent in a header".into(), false)
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let carrying = Carrying {
            sending: "the request",
            allow_with: "`allow_http(true)`",
        };
        let fetched = self
            .fetch(url, carrying, |client| {
                let request = client.get(url.clone()).header(ACCEPT, "application/json");
                match authorization {
                    Some(value) => request.header(AUTHORIZATION, value),
                    None => request,
                }
            })
            .await
            .map_err(|e| match e {
                Error::Redirect { .. } => fail("redirects are not followed".into(), false),
                other => {
                    let transient = other.is_transient();
                    fail(other.to_string(), transient)
                }
            })?;
        let status = fetched.status;
        if !(200..300).contains(&status) {
            return Err(GetError {
                problem: format!("HTTP {status}"),
                transient: Error::HttpStatus {
                    status,
                    retry_after: None,
                }
                .is_transient(),
                status: Some(status),
            });
        }
        let Some(body) = fetched.body else {
            return Err(fail(
                format!("the answer is larger than {MAX_RESPONSE_BYTES} bytes"),
                false,
            ));
        };
        match serde_json::from_slice::<Value>(&body) {
            Ok(json @ Value::Object(_)) => Ok(json),
            Ok(_) => Err(fail("the answer is not a JSON object".into(), false)),
            Err(e) => Err(fail(format!("the answer is not JSON: {e}"), false)),
        }
    }

    fn client(&self, url: &reqwest::Url) -> Result<&reqwest::Client> {
        match &self.client {
            Some(client) => Ok(client),
            None => built_in_client(url.scheme() == "http"),
        }
    }

    pub(crate) fn transport_error(&self, e: &reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Timeout(self.timeout)
        } else if e.is_connect() {
            Error::Connect(error_chain(e))
        } else {
            Error::Transport(error_chain(e))
        }
    }
}

/// `e` and its causes, e.g. "error sending request: connection refused". reqwest errors name
/// the URL, which holds no secret, and never the body.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The built-in clients, for https and for plain http (which never goes through a proxy),
/// each built once per process: building one loads the TLS roots. Without connection
/// reuse, one client serves every runtime.
pub(crate) fn built_in_client(plain_http: bool) -> Result<&'static reqwest::Client> {
    static CLIENTS: [OnceLock<std::result::Result<reqwest::Client, String>>; 2] =
        [OnceLock::new(), OnceLock::new()];
    CLIENTS[usize::from(plain_http)]
        .get_or_init(|| {
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(0)
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(USER_AGENT);
            if plain_http {
                builder = builder.no_proxy();
            }
            builder.build().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))
}

/// A failed [`Http::get_json`]: what to say, whether to try again, the status.
pub(crate) struct GetError {
    pub(crate) problem: String,
    pub(crate) transient: bool,
    pub(crate) status: Option<u16>,
}

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> std::result::Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Http)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After` (RFC 9110 §10.2.3) as delay-seconds or an HTTP-date. A date is measured
/// against the response's `Date` when it has one, so a server whose clock is off still gets
/// the delay it meant.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    parse_retry_after(
        text(RETRY_AFTER)?,
        text(DATE).and_then(|d| httpdate::parse_http_date(d).ok()),
    )
}

/// Parses a `Retry-After` value; an HTTP-date counts from `server_now` (the response's
/// `Date`), else from our clock.
pub(crate) fn parse_retry_after(value: &str, server_now: Option<SystemTime>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    let now = server_now.unwrap_or_else(SystemTime::now);
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Fails with [`Error::IoDisabled`](crate::Error::IoDisabled) on a Tokio runtime without the I/O driver, where reqwest
/// would panic on its first socket. Registering a loopback UDP socket is the one way to ask
/// (tokio panics without the driver; the panic is caught, unprinted). It costs a socket and
/// four system calls, tens of microseconds on the way of a cold start's first request, so
/// it runs once per runtime. Outside a runtime, or if no socket can be had, nothing is
/// decided here.
fn ensure_io() -> Result<()> {
    static PASSED: Passed = Passed::new();
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Ok(());
    };
    if PASSED.on(runtime.id()) {
        return Ok(());
    }
    let Ok(socket) = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)) else {
        return Ok(());
    };
    if socket.set_nonblocking(true).is_err() {
        return Ok(());
    }
    match crate::quiet_panic::catch_quietly(|| tokio::net::UdpSocket::from_std(socket)) {
        Some(_) => {
            PASSED.set(runtime.id());
            Ok(())
        }
        None => Err(Error::IoDisabled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The I/O probe's memory is per runtime: a runtime that passed does not vouch for one
    /// built without the driver, before or after it.
    #[test]
    fn the_io_probe_passes_per_runtime() {
        let with_io = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let without_io = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        for _ in 0..2 {
            assert!(with_io.block_on(async { ensure_io() }).is_ok());
            assert!(matches!(
                without_io.block_on(async { ensure_io() }),
                Err(Error::IoDisabled)
            ));
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7", None), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(30);
        let date = httpdate::fmt_http_date(later);
        let d = parse_retry_after(&date, None).unwrap();
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(28),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon", None), None);
        // A server an hour ahead asking for 2 s means 2 s.
        let server_now = SystemTime::now() + Duration::from_secs(3600);
        let date = httpdate::fmt_http_date(server_now + Duration::from_secs(2));
        let d = parse_retry_after(&date, Some(server_now)).unwrap();
        assert!(
            d <= Duration::from_secs(2) && d >= Duration::from_secs(1),
            "{d:?}"
        );
    }
}
