//! Fault matrix against the token endpoint, and no leaks while it runs.
//!
//! Every case builds a fresh provider (backoff 10–50 ms, cool-down 500 ms) over a fresh
//! endpoint — an `httpmock` server scripted answer by answer, a raw TCP server for the
//! faults httpmock cannot produce (chunked oversized body, truncated body, a connection
//! closed without an answer), or the crate's emulator for `Fault::DropConnection` — and
//! asserts:
//!
//! - the outcome: a token (value and lifetime), or the exact [`Error`] variant;
//! - the exact number of token requests the endpoint saw;
//! - no hang (every `token()` is wrapped in a 30 s `tokio::time::timeout`);
//! - a lower bound on the time taken where the server asked for a wait (`Retry-After`, a
//!   request timeout) — never an upper bound;
//! - that a second `token()` right after gets the cached token, or the same error during the
//!   cool-down, without another request.
//!
//! Real time throughout: these cases use sockets. The cases run concurrently, each with its
//! own servers and provider.
//!
//! The whole matrix runs in one test because the log capture is the test binary's global
//! `tracing` subscriber: once every case has run, the captured TRACE logs and every error's
//! `Display`/`Debug` are searched for the service account's secret, every assertion the
//! servers received and every access token the servers handed out. A panic hook counts
//! panics anywhere in the process (the provider's refresh tasks included): there must be none.

mod common;

use std::io::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{LogCapture, SECRET, account, closed_port_url, join_all, token_json};
use httpmock::prelude::*;
use serde_json::json;
use token_refresh::defaults::{
    DEFAULT_EXPIRES_IN, DEFAULT_MAX_ATTEMPTS, MAX_EXPIRES_IN, MAX_RESPONSE_BYTES,
};
use token_refresh::{Error, JwtBearer, TokenProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Attempts of one refresh against an endpoint that keeps failing transiently.
const ATTEMPTS: usize = DEFAULT_MAX_ATTEMPTS as usize;
/// Cool-down of the providers under test. Only the `recover` cases wait it out.
const COOLDOWN: Duration = Duration::from_millis(500);
/// The token request timeout of the "slow response" cases.
const SHORT_TIMEOUT: Duration = Duration::from_millis(200);
/// The token request timeout of every other case: long enough never to fire on loopback.
const NORMAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a slow answer is late: well past [`SHORT_TIMEOUT`].
const SLOW: Duration = Duration::from_secs(2);
/// Proves "no hang": far above anything a case takes.
const NO_HANG: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------------------

/// A `Retry-After` header value, resolved when the mock is registered (an HTTP-date must be
/// computed at run time, not when the table is built).
#[derive(Clone, Copy, Debug)]
enum RetryAfter {
    Seconds(&'static str),
    /// An HTTP-date this far in the future.
    DateIn(Duration),
}

impl RetryAfter {
    fn header_value(self) -> String {
        match self {
            Self::Seconds(s) => s.to_owned(),
            Self::DateIn(d) => httpdate::fmt_http_date(std::time::SystemTime::now() + d),
        }
    }
}

/// One scripted answer of the httpmock token endpoint.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    retry_after: Option<RetryAfter>,
    body: Vec<u8>,
    delay: Option<Duration>,
}

impl Answer {
    fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            body: Vec::new(),
            delay: None,
        }
    }

    fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::status(200).body(body)
    }

    fn json(status: u16, body: serde_json::Value) -> Self {
        Self::status(status).body(body.to_string())
    }

    /// A well-formed DT token response.
    fn token(token: &str) -> Self {
        Self::json(200, token_json(token, 3600))
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    fn retry_after(mut self, value: RetryAfter) -> Self {
        self.retry_after = Some(value);
        self
    }

    fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// What the raw TCP endpoint does once it has read a whole request.
#[derive(Clone, Copy, Debug)]
enum Raw {
    /// 200 with `Transfer-Encoding: chunked` (no `Content-Length`) and more than
    /// `MAX_RESPONSE_BYTES` of body, so only the streaming cap can catch it.
    ChunkedHuge,
    /// 200 announcing 200 bytes of body, sending 20, then closing.
    TruncatedBody,
    /// Closes the connection without sending anything.
    CloseWithoutAnswer,
}

/// Where a case's token requests go.
#[derive(Clone, Debug)]
enum Endpoint {
    /// httpmock; successive requests get successive answers, the last one repeats.
    Mock(Vec<Answer>),
    /// A raw TCP server that misbehaves the same way for every request.
    Raw(Raw),
    /// Nothing listens: every connection attempt is refused.
    Closed,
    /// The emulator with `fault` injected for the first `times` token requests.
    Emulator(token_refresh_emulator::Fault, usize),
}

/// A running endpoint: the source pointed at it, and its request count.
enum Running {
    Mock {
        server: MockServer,
        mocks: Vec<usize>,
    },
    Raw(RawServer),
    Closed,
    Emulator(token_refresh_emulator::Emulator),
}

impl Running {
    async fn requests(&self) -> usize {
        match self {
            Self::Mock { server, mocks } => {
                let mut total = 0;
                for id in mocks {
                    total += httpmock::Mock::new(*id, server).calls_async().await;
                }
                total
            }
            Self::Raw(raw) => raw.requests.load(Ordering::SeqCst),
            Self::Closed => 0,
            Self::Emulator(emu) => emu.stats().token_requests as usize,
        }
    }
}

/// Everything a server saw or sent that must never show up in logs or errors.
#[derive(Clone, Default)]
struct Secrets {
    /// Request bodies received (they carry the signed assertion).
    bodies: Arc<Mutex<Vec<String>>>,
    /// Access tokens handed out, or offered in a response that was rejected.
    tokens: Arc<Mutex<Vec<String>>>,
    /// Service account secrets (ours and the emulator's).
    account_secrets: Arc<Mutex<Vec<String>>>,
}

impl Secrets {
    fn add_token(&self, token: impl Into<String>) {
        self.tokens.lock().unwrap().push(token.into());
    }
}

/// Registers `answers` so that the n-th distinct request body gets the n-th answer (the last
/// one repeats). Request bodies are told apart by their assertion, which carries a random
/// `jti`. Every body is recorded in `secrets`.
async fn mock_endpoint(answers: Vec<Answer>, secrets: &Secrets) -> Running {
    let server = MockServer::start_async().await;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let last = answers.len() - 1;
    let mut mocks = Vec::new();
    for (index, answer) in answers.into_iter().enumerate() {
        let seen = seen.clone();
        let sink = secrets.bodies.clone();
        let mock = server
            .mock_async(move |when, then| {
                when.method(POST).path("/oauth2/token").is_true(move |req| {
                    let body = req.body_string();
                    let mut seen = seen.lock().unwrap();
                    let position = match seen.iter().position(|b| *b == body) {
                        Some(p) => p,
                        None => {
                            sink.lock().unwrap().push(body.clone());
                            seen.push(body);
                            seen.len() - 1
                        }
                    };
                    position == index || (index == last && position > last)
                });
                let mut then = then.status(answer.status).body(answer.body.clone());
                if let Some(retry_after) = answer.retry_after {
                    then = then.header("retry-after", retry_after.header_value());
                }
                if let Some(delay) = answer.delay {
                    then.delay(delay);
                }
            })
            .await;
        mocks.push(mock.id());
    }
    Running::Mock { server, mocks }
}

/// A one-behaviour HTTP/1.1 server on loopback that counts and records requests.
struct RawServer {
    url: String,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_endpoint(behaviour: Raw, secrets: &Secrets) -> RawServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let sink = secrets.bodies.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (counter, sink) = (counter.clone(), sink.clone());
            tokio::spawn(async move {
                let _ = serve_raw(stream, behaviour, &counter, &sink).await;
            });
        }
    });
    RawServer {
        url,
        requests,
        task,
    }
}

async fn serve_raw(
    mut stream: tokio::net::TcpStream,
    behaviour: Raw,
    counter: &AtomicUsize,
    sink: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    // Read the head, then as much body as `Content-Length` says.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    sink.lock()
        .unwrap()
        .push(String::from_utf8_lossy(&buf[head_end..]).into_owned());
    counter.fetch_add(1, Ordering::SeqCst);
    match behaviour {
        Raw::ChunkedHuge => {
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                      transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
                )
                .await?;
            let piece = vec![b' '; 8 * 1024];
            // Nine 8 KiB chunks: 72 KiB, over the 64 KiB cap.
            for _ in 0..(MAX_RESPONSE_BYTES / piece.len() + 1) {
                stream
                    .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .await?;
                stream.write_all(&piece).await?;
                stream.write_all(b"\r\n").await?;
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
        Raw::TruncatedBody => {
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                      content-length: 200\r\nconnection: close\r\n\r\n{\"access_token\":",
                )
                .await?;
        }
        Raw::CloseWithoutAnswer => {}
    }
    stream.flush().await?;
    stream.shutdown().await
}

// ---------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------

/// What `token()` must return.
enum Expect {
    /// A token with this value (`None`: whatever the emulator issued) and lifetime.
    Token {
        value: Option<String>,
        lifetime: Duration,
    },
    /// An error for which `check` holds; `variant` names it in failure messages.
    Fail {
        variant: &'static str,
        check: Box<dyn Fn(&Error) -> bool>,
    },
}

struct Case {
    name: String,
    endpoint: Endpoint,
    /// `JwtBearer::timeout`.
    timeout: Duration,
    expect: Expect,
    /// Token requests the endpoint sees during the first `token()`.
    requests: usize,
    /// The first `token()` takes at least this long (the server asked for the wait).
    at_least: Duration,
    /// After the failure and its cool-down, the next `token()` gets this token with one more
    /// request.
    recover: Option<String>,
}

impl Case {
    fn new(name: impl Into<String>, endpoint: Endpoint, expect: Expect, requests: usize) -> Self {
        Self {
            name: name.into(),
            endpoint,
            timeout: NORMAL_TIMEOUT,
            expect,
            requests,
            at_least: Duration::ZERO,
            recover: None,
        }
    }

    fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn at_least(mut self, wait: Duration) -> Self {
        self.at_least = wait;
        self
    }

    fn recover(mut self, token: String) -> Self {
        self.recover = Some(token);
        self
    }
}

fn token(value: &str, lifetime: Duration) -> Expect {
    Expect::Token {
        value: Some(value.to_owned()),
        lifetime,
    }
}

fn fail(variant: &'static str, check: impl Fn(&Error) -> bool + 'static) -> Expect {
    Expect::Fail {
        variant,
        check: Box::new(check),
    }
}

/// A fresh, recognisable access token value, recorded as a secret.
fn new_token(secrets: &Secrets) -> String {
    let value = format!(
        "at-{}",
        (0..28)
            .map(|_| fastrand::alphanumeric())
            .collect::<String>()
    );
    secrets.add_token(value.clone());
    value
}

fn mock(answers: Vec<Answer>) -> Endpoint {
    Endpoint::Mock(answers)
}

/// A body `{"access_token":…,"token_type":"bearer",…}` with `extra` fields merged in
/// (`null` removes a field).
fn token_body(token: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut body = token_json(token, 3600);
    for (key, value) in extra.as_object().unwrap() {
        if value.is_null() {
            body.as_object_mut().unwrap().remove(key);
        } else {
            body[key] = value.clone();
        }
    }
    body
}

fn cases(secrets: &Secrets) -> Vec<Case> {
    let hour = DEFAULT_EXPIRES_IN;
    let mut cases = Vec::new();

    // Transient statuses, persistent: every attempt is used, the status is reported.
    for status in [500u16, 502, 503, 504, 408, 429] {
        let name = format!("{status} persistent");
        let check = move |e: &Error| {
            matches!(e, Error::HttpStatus { status: s, .. } if *s == status)
                && e.retry_after().is_none()
        };
        cases.push(Case::new(
            name,
            mock(vec![Answer::status(status)]),
            fail("HttpStatus", check),
            ATTEMPTS,
        ));
    }
    // Transient statuses, once: retried and recovered.
    for status in [500u16, 502, 503, 504, 408, 429] {
        let name = format!("{status} once");
        let t = new_token(secrets);
        cases.push(Case::new(
            name,
            mock(vec![Answer::status(status), Answer::token(&t)]),
            token(&t, hour),
            2,
        ));
    }
    // Three transient failures, then success on the last allowed attempt.
    let t = new_token(secrets);
    cases.push(Case::new(
        "500, 502, 503 then a token on the 4th attempt",
        mock(vec![
            Answer::status(500),
            Answer::status(502),
            Answer::status(503),
            Answer::token(&t),
        ]),
        token(&t, hour),
        ATTEMPTS,
    ));
    // An outage longer than one refresh: the error, no request during the cool-down, then
    // recovery once it is over.
    let t = new_token(secrets);
    let mut outage = vec![Answer::status(503); ATTEMPTS];
    outage.push(Answer::token(&t));
    cases.push(
        Case::new(
            "503 outage, then recovery after the cool-down",
            mock(outage),
            fail("HttpStatus 503", |e| {
                matches!(e, Error::HttpStatus { status: 503, .. })
            }),
            ATTEMPTS,
        )
        .recover(t),
    );
    // A 5xx with an HTML body is still an HTTP status error, not a parse error.
    cases.push(Case::new(
        "502 with an HTML body",
        mock(vec![
            Answer::status(502).body("<html><body>Bad Gateway</body></html>"),
        ]),
        fail("HttpStatus 502", |e| {
            matches!(e, Error::HttpStatus { status: 502, .. })
        }),
        ATTEMPTS,
    ));
    // A 5xx with an OAuth body is transient too.
    cases.push(Case::new(
        "503 temporarily_unavailable",
        mock(vec![Answer::json(
            503,
            json!({"error": "temporarily_unavailable", "error_description": "maintenance"}),
        )]),
        fail("OAuth temporarily_unavailable", |e| {
            matches!(e, Error::OAuth { status: 503, .. })
                && e.oauth_error() == Some("temporarily_unavailable")
        }),
        ATTEMPTS,
    ));
    // RFC 6749 §5.2 error with status 200 and the transient code `slow_down`.
    cases.push(Case::new(
        "200 with error slow_down",
        mock(vec![Answer::json(200, json!({"error": "slow_down"}))]),
        fail(
            "OAuth slow_down",
            |e| matches!(e, Error::OAuth { status: 200, error, .. } if error == "slow_down"),
        ),
        ATTEMPTS,
    ));
    // Permanent: one request.
    cases.push(Case::new(
        "400 invalid_grant",
        mock(vec![Answer::json(
            400,
            json!({"error": "invalid_grant", "error_description": "bad signature"}),
        )]),
        fail("OAuth invalid_grant", |e| {
            matches!(e, Error::OAuth { status: 400, error, description: Some(d), .. }
                if error == "invalid_grant" && d == "bad signature")
        }),
        1,
    ));
    cases.push(Case::new(
        "401 without a body",
        mock(vec![Answer::status(401)]),
        fail("HttpStatus 401", |e| {
            matches!(e, Error::HttpStatus { status: 401, .. })
        }),
        1,
    ));

    // Retry-After.
    let t = new_token(secrets);
    cases.push(
        Case::new(
            "429 Retry-After: 1 (seconds), then a token",
            mock(vec![
                Answer::status(429).retry_after(RetryAfter::Seconds("1")),
                Answer::token(&t),
            ]),
            token(&t, hour),
            2,
        )
        .at_least(Duration::from_secs(1)),
    );
    let t = new_token(secrets);
    cases.push(
        Case::new(
            "429 Retry-After: HTTP-date 3 s ahead, then a token",
            mock(vec![
                Answer::status(429).retry_after(RetryAfter::DateIn(Duration::from_secs(3))),
                Answer::token(&t),
            ]),
            token(&t, hour),
            2,
        )
        // The date has whole seconds and the request takes a moment: at least 1 s is left.
        .at_least(Duration::from_secs(1)),
    );
    let t = new_token(secrets);
    cases.push(
        Case::new(
            "503 Retry-After: HTTP-date 3 s ahead, then a token",
            mock(vec![
                Answer::status(503).retry_after(RetryAfter::DateIn(Duration::from_secs(3))),
                Answer::token(&t),
            ]),
            token(&t, hour),
            2,
        )
        .at_least(Duration::from_secs(1)),
    );
    cases.push(Case::new(
        "429 Retry-After: 120 (over max_retry_after) ends the refresh",
        mock(vec![
            Answer::status(429).retry_after(RetryAfter::Seconds("120")),
            Answer::token("never-used"),
        ]),
        fail("HttpStatus 429 retry_after 120 s", |e| {
            matches!(e, Error::HttpStatus { status: 429, retry_after: Some(d) }
                if *d == Duration::from_secs(120))
        }),
        1,
    ));
    cases.push(Case::new(
        "429 Retry-After: HTTP-date 1 h ahead ends the refresh",
        mock(vec![
            Answer::status(429).retry_after(RetryAfter::DateIn(Duration::from_secs(3600))),
            Answer::token("never-used"),
        ]),
        fail("HttpStatus 429 retry_after ~1 h", |e| {
            matches!(e, Error::HttpStatus { status: 429, retry_after: Some(d) }
                if *d > Duration::from_secs(3000))
        }),
        1,
    ));
    let t = new_token(secrets);
    cases.push(Case::new(
        "503 Retry-After: garbage is ignored (normal backoff)",
        mock(vec![
            Answer::status(503).retry_after(RetryAfter::Seconds("soon")),
            Answer::token(&t),
        ]),
        token(&t, hour),
        2,
    ));

    // Slow responses past the request timeout.
    cases.push(
        Case::new(
            "slow response past the timeout, persistent",
            mock(vec![Answer::token("too-late").delayed(SLOW)]),
            fail(
                "Timeout(200 ms)",
                |e| matches!(e, Error::Timeout(d) if *d == SHORT_TIMEOUT),
            ),
            ATTEMPTS,
        )
        .timeout(SHORT_TIMEOUT)
        .at_least(SHORT_TIMEOUT * ATTEMPTS as u32),
    );
    let t = new_token(secrets);
    cases.push(
        Case::new(
            "slow response past the timeout once, then a token",
            mock(vec![
                Answer::token("too-late").delayed(SLOW),
                Answer::token(&t),
            ]),
            token(&t, hour),
            2,
        )
        .timeout(SHORT_TIMEOUT)
        .at_least(SHORT_TIMEOUT),
    );

    // Connection-level faults.
    cases.push(Case::new(
        "connection refused",
        Endpoint::Closed,
        fail("Connect", |e| matches!(e, Error::Connect(_))),
        0,
    ));
    cases.push(Case::new(
        "connection closed without an answer",
        Endpoint::Raw(Raw::CloseWithoutAnswer),
        fail("Transport", |e| matches!(e, Error::Transport(_))),
        ATTEMPTS,
    ));
    cases.push(Case::new(
        "body cut short (Content-Length 200, 20 bytes sent)",
        Endpoint::Raw(Raw::TruncatedBody),
        fail("Transport", |e| matches!(e, Error::Transport(_))),
        ATTEMPTS,
    ));
    {
        use token_refresh_emulator::Fault;
        cases.push(Case::new(
            "emulator DropConnection, persistent",
            Endpoint::Emulator(Fault::DropConnection, 100),
            fail("Transport", |e| matches!(e, Error::Transport(_))),
            ATTEMPTS,
        ));
        cases.push(Case::new(
            "emulator DropConnection once, then a token",
            Endpoint::Emulator(Fault::DropConnection, 1),
            Expect::Token {
                value: None,
                lifetime: hour,
            },
            2,
        ));
        cases.push(Case::new(
            "emulator Garbage (200, HTML body)",
            Endpoint::Emulator(Fault::Garbage, 100),
            fail("InvalidJson", |e| matches!(e, Error::InvalidJson(_))),
            1,
        ));
        cases.push(Case::new(
            "emulator 503 with Retry-After: 0, then a token",
            Endpoint::Emulator(Fault::status(503).with_retry_after("0"), 2),
            Expect::Token {
                value: None,
                lifetime: hour,
            },
            3,
        ));
    }

    // Bodies: all permanent, one request each.
    cases.push(Case::new(
        "200, not JSON",
        mock(vec![Answer::ok("<html>oops</html>")]),
        fail("InvalidJson", |e| matches!(e, Error::InvalidJson(_))),
        1,
    ));
    cases.push(Case::new(
        "200, empty body",
        mock(vec![Answer::ok("")]),
        fail("InvalidJson", |e| matches!(e, Error::InvalidJson(_))),
        1,
    ));
    cases.push(Case::new(
        "200, a JSON array",
        mock(vec![Answer::ok("[1,2,3]")]),
        fail("InvalidJson", |e| matches!(e, Error::InvalidJson(_))),
        1,
    ));
    let t = new_token(secrets);
    cases.push(Case::new(
        "200, truncated JSON",
        mock(vec![Answer::ok(format!(r#"{{"access_token":"{t}","tok"#))]),
        fail("InvalidJson", |e| matches!(e, Error::InvalidJson(_))),
        1,
    ));
    let t = new_token(secrets);
    let exact = padded(token_json(&t, 3600), MAX_RESPONSE_BYTES);
    cases.push(Case::new(
        "200, exactly MAX_RESPONSE_BYTES (valid, padded)",
        mock(vec![Answer::ok(exact)]),
        token(&t, hour),
        1,
    ));
    let t = new_token(secrets);
    let over = padded(token_json(&t, 3600), MAX_RESPONSE_BYTES + 1);
    cases.push(Case::new(
        "200, MAX_RESPONSE_BYTES + 1 (Content-Length)",
        mock(vec![Answer::ok(over)]),
        fail(
            "ResponseTooLarge",
            |e| matches!(e, Error::ResponseTooLarge { limit } if *limit == MAX_RESPONSE_BYTES),
        ),
        1,
    ));
    cases.push(Case::new(
        "200, 1 MiB body (Content-Length)",
        mock(vec![Answer::ok(vec![b'x'; 1 << 20])]),
        fail(
            "ResponseTooLarge",
            |e| matches!(e, Error::ResponseTooLarge { limit } if *limit == MAX_RESPONSE_BYTES),
        ),
        1,
    ));
    cases.push(Case::new(
        "200, 72 KiB chunked body (no Content-Length)",
        Endpoint::Raw(Raw::ChunkedHuge),
        fail(
            "ResponseTooLarge",
            |e| matches!(e, Error::ResponseTooLarge { limit } if *limit == MAX_RESPONSE_BYTES),
        ),
        1,
    ));

    // Fields.
    cases.push(Case::new(
        "missing access_token",
        mock(vec![Answer::json(
            200,
            json!({"token_type": "bearer", "expires_in": 3600}),
        )]),
        fail("MissingField(access_token)", |e| {
            matches!(e, Error::MissingField("access_token"))
        }),
        1,
    ));
    let t = new_token(secrets);
    cases.push(Case::new(
        "missing token_type",
        mock(vec![Answer::json(
            200,
            token_body(&t, json!({"token_type": null})),
        )]),
        fail("MissingField(token_type)", |e| {
            matches!(e, Error::MissingField("token_type"))
        }),
        1,
    ));
    cases.push(Case::new(
        "empty access_token",
        mock(vec![Answer::json(200, token_body("", json!({})))]),
        fail("InvalidField(access_token)", |e| {
            matches!(
                e,
                Error::InvalidField {
                    field: "access_token",
                    ..
                }
            )
        }),
        1,
    ));
    cases.push(Case::new(
        "access_token is a number",
        mock(vec![Answer::json(
            200,
            token_body("x", json!({"access_token": 12345})),
        )]),
        fail("InvalidField(access_token)", |e| {
            matches!(
                e,
                Error::InvalidField {
                    field: "access_token",
                    ..
                }
            )
        }),
        1,
    ));
    let t = new_token(secrets);
    cases.push(Case::new(
        "access_token with a newline",
        mock(vec![Answer::json(
            200,
            token_body(&format!("{t}\nX-Injected: 1"), json!({})),
        )]),
        fail("InvalidField(access_token)", |e| {
            matches!(
                e,
                Error::InvalidField {
                    field: "access_token",
                    ..
                }
            )
        }),
        1,
    ));
    let t = new_token(secrets);
    cases.push(Case::new(
        "token_type mac",
        mock(vec![Answer::json(
            200,
            token_body(&t, json!({"token_type": "mac"})),
        )]),
        fail(
            "UnsupportedTokenType(mac)",
            |e| matches!(e, Error::UnsupportedTokenType(t) if t == "mac"),
        ),
        1,
    ));
    let t = new_token(secrets);
    cases.push(Case::new(
        "token_type BEARER (any case)",
        mock(vec![Answer::json(
            200,
            token_body(&t, json!({"token_type": "BEARER"})),
        )]),
        token(&t, hour),
        1,
    ));
    for (name, expires_in) in [
        ("expires_in 0", json!(0)),
        ("expires_in -3600", json!(-3600)),
        ("expires_in 0.5", json!(0.5)),
        ("expires_in \"soon\"", json!("soon")),
        ("expires_in \"\"", json!("")),
        ("expires_in true", json!(true)),
        ("expires_in {}", json!({})),
    ] {
        let t = new_token(secrets);
        cases.push(Case::new(
            name,
            mock(vec![Answer::json(
                200,
                token_body(&t, json!({"expires_in": expires_in})),
            )]),
            fail("InvalidField(expires_in)", |e| {
                matches!(
                    e,
                    Error::InvalidField {
                        field: "expires_in",
                        ..
                    }
                )
            }),
            1,
        ));
    }
    for (name, expires_in, lifetime) in [
        (
            "expires_in \"3600\" (numeric string)",
            json!("3600"),
            Duration::from_secs(3600),
        ),
        (
            "expires_in \" 120 \" (padded numeric string)",
            json!(" 120 "),
            Duration::from_secs(120),
        ),
        ("expires_in missing", serde_json::Value::Null, hour),
        (
            "expires_in 10 years (capped to 24 h)",
            json!(10 * 365 * 24 * 3600),
            MAX_EXPIRES_IN,
        ),
        (
            "expires_in 1e300 (capped to 24 h)",
            json!(1e300),
            MAX_EXPIRES_IN,
        ),
        ("expires_in 1", json!(1), Duration::from_secs(1)),
    ] {
        let t = new_token(secrets);
        let body = if expires_in.is_null() {
            token_body(&t, json!({"expires_in": null}))
        } else {
            token_body(&t, json!({ "expires_in": expires_in }))
        };
        cases.push(Case::new(
            name,
            mock(vec![Answer::json(200, body)]),
            token(&t, lifetime),
            1,
        ));
    }
    cases
}

/// `body` serialized and padded with trailing spaces to exactly `len` bytes.
fn padded(body: serde_json::Value, len: usize) -> Vec<u8> {
    let mut bytes = body.to_string().into_bytes();
    assert!(bytes.len() <= len);
    bytes.resize(len, b' ');
    bytes
}

// ---------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------

async fn start(endpoint: &Endpoint, secrets: &Secrets) -> (Running, JwtBearer) {
    let ours = || JwtBearer::new(account()).jti(true);
    match endpoint {
        Endpoint::Mock(answers) => {
            let running = mock_endpoint(answers.clone(), secrets).await;
            let Running::Mock { server, .. } = &running else {
                unreachable!()
            };
            let source = ours().token_url(server.url("/oauth2/token"));
            (running, source)
        }
        Endpoint::Raw(behaviour) => {
            let raw = raw_endpoint(*behaviour, secrets).await;
            let source = ours().token_url(raw.url.clone());
            (Running::Raw(raw), source)
        }
        Endpoint::Closed => (Running::Closed, ours().token_url(closed_port_url())),
        Endpoint::Emulator(fault, times) => {
            let emu = token_refresh_emulator::Emulator::start().await.unwrap();
            emu.inject_fault(fault.clone(), *times);
            let account = emu.account();
            secrets
                .account_secrets
                .lock()
                .unwrap()
                .push(account.expose_secret().to_owned());
            (Running::Emulator(emu), JwtBearer::new(account))
        }
    }
}

/// Runs one case; returns what went wrong, if anything. Every `Display`/`Debug` output it
/// produces goes into `outputs`.
async fn run(case: &Case, secrets: &Secrets, outputs: &mut Vec<String>) -> Result<(), String> {
    let (endpoint, source) = start(&case.endpoint, secrets).await;
    let provider = TokenProvider::builder(source.timeout(case.timeout))
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .cooldown(COOLDOWN)
        .build();

    let started = std::time::Instant::now();
    let first = tokio::time::timeout(NO_HANG, provider.token())
        .await
        .map_err(|_| "token() hung".to_owned())?;
    let took = started.elapsed();
    // Right away again: the cached token, or the same error from the cool-down.
    let second = tokio::time::timeout(NO_HANG, provider.token())
        .await
        .map_err(|_| "the second token() hung".to_owned())?;
    outputs.push(format!("{provider:?}"));

    let mut problems = Vec::new();
    let requests = endpoint.requests().await;
    if requests != case.requests {
        problems.push(format!(
            "{requests} token requests, expected {}",
            case.requests
        ));
    }
    if took < case.at_least {
        problems.push(format!(
            "took {took:?}, less than the {:?} the server asked for",
            case.at_least
        ));
    }
    match (&case.expect, &first) {
        (Expect::Token { value, lifetime }, Ok(token)) => {
            secrets.add_token(token.expose_secret());
            outputs.push(format!("{token:?}"));
            if let Some(value) = value
                && token.expose_secret() != value
            {
                problems.push("got a different token than the server sent".into());
            }
            if token.lifetime() != *lifetime {
                problems.push(format!(
                    "lifetime {:?}, expected {lifetime:?}",
                    token.lifetime()
                ));
            }
            match &second {
                Ok(again) if again.ptr_eq(token) => {}
                other => problems.push(format!("second token() was not cached: {other:?}")),
            }
        }
        (Expect::Fail { variant, check }, Err(error)) => {
            outputs.push(format!("{error}"));
            outputs.push(format!("{error:?}"));
            // Matched on the last attempt's error; a refresh of several attempts says so.
            if !check(error.last_attempt()) {
                problems.push(format!("got {error:?}, expected {variant}"));
            }
            let attempts = match error {
                Error::Retried { attempts, .. } => *attempts as usize,
                _ => 1,
            };
            // Nothing listens at a closed port, so it counts no requests: skip it there.
            if attempts != case.requests && !matches!(case.endpoint, Endpoint::Closed) {
                problems.push(format!(
                    "the error counts {attempts} attempts, the server saw {}",
                    case.requests
                ));
            }
            match &second {
                Err(again) if check(again.last_attempt()) => outputs.push(format!("{again:?}")),
                other => problems.push(format!(
                    "second token() during the cool-down: {other:?}, expected {variant}"
                )),
            }
        }
        (Expect::Token { .. }, Err(error)) => {
            outputs.push(format!("{error:?}"));
            problems.push(format!("expected a token, got {error:?}"));
        }
        (Expect::Fail { variant, .. }, Ok(token)) => {
            problems.push(format!("expected {variant}, got a token ({token:?})"));
        }
    }

    if let Some(expected) = &case.recover {
        tokio::time::sleep(COOLDOWN + Duration::from_millis(100)).await;
        match tokio::time::timeout(NO_HANG, provider.token()).await {
            Err(_) => problems.push("token() after the cool-down hung".into()),
            Ok(Ok(token)) if token.expose_secret() == expected => {}
            Ok(other) => problems.push(format!(
                "after the cool-down: {other:?}, expected the new token"
            )),
        }
        let requests = endpoint.requests().await;
        if requests != case.requests + 1 {
            problems.push(format!(
                "{requests} token requests after recovery, expected {}",
                case.requests + 1
            ));
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// [`run`], with the outputs it produced.
async fn run_case(case: &Case, secrets: &Secrets) -> (Result<(), String>, Vec<String>) {
    let mut outputs = Vec::new();
    let result = run(case, secrets, &mut outputs).await;
    (result, outputs)
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix_and_no_leaks() {
    let logs = LogCapture::global();
    count_panics();
    let secrets = Secrets::default();
    secrets
        .account_secrets
        .lock()
        .unwrap()
        .push(SECRET.to_owned());

    let cases = cases(&secrets);
    // The cases are independent (each has its own servers and provider): run them at once,
    // except those whose request timeout is short enough for a busy machine to trip it by
    // itself; those run together afterwards, on a quiet machine.
    let (tight, relaxed): (Vec<&Case>, Vec<&Case>) =
        cases.iter().partition(|case| case.timeout <= SHORT_TIMEOUT);
    let mut results = join_all(relaxed.iter().map(|case| run_case(case, &secrets))).await;
    results.extend(join_all(tight.iter().map(|case| run_case(case, &secrets))).await);
    let mut outputs = Vec::new();
    let mut failures = Vec::new();
    for (case, (result, case_outputs)) in relaxed.iter().chain(&tight).zip(results) {
        outputs.extend(case_outputs);
        if let Err(problem) = result {
            failures.push(format!("{}: {problem}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");

    check_no_leaks(&logs, &secrets, &outputs);
}

/// The secret, every assertion (and its signature) the servers received and every access
/// token they sent appear neither in the captured logs nor in any output.
fn check_no_leaks(logs: &LogCapture, secrets: &Secrets, outputs: &[String]) {
    let mut needles: Vec<String> = secrets.account_secrets.lock().unwrap().clone();
    needles.extend(secrets.tokens.lock().unwrap().iter().cloned());
    let bodies = secrets.bodies.lock().unwrap().clone();
    let mut assertions = 0;
    for body in &bodies {
        let Some(assertion) = body.split('&').find_map(|p| p.strip_prefix("assertion=")) else {
            continue;
        };
        assertions += 1;
        needles.push(assertion.to_owned());
        // The signature alone is a secret too.
        needles.push(assertion.rsplit('.').next().unwrap().to_owned());
    }
    assert!(
        assertions >= 50,
        "the servers recorded only {assertions} assertions"
    );
    // Every needle is long enough that a match cannot be a coincidence.
    needles.retain(|n| !n.is_empty());
    assert!(needles.iter().all(|n| n.len() >= 20), "short needle");

    // httpmock runs in this process and logs what it receives at TRACE: that is the server's
    // side, so its events (which may span lines) are left out. Everything else stays,
    // including the emulator's own events.
    let mut kept = Vec::new();
    let mut keep = true;
    let text = logs.text();
    for line in text.lines() {
        if line.starts_with(|c: char| c.is_ascii_digit()) {
            keep = !line.contains(" httpmock::");
        }
        if keep {
            kept.push(line);
        }
    }
    let logs = kept.join("\n");
    for expected in [
        "access token refreshed",
        "token request failed; retrying",
        "token refresh failed",
        "capping it",
    ] {
        assert!(
            logs.contains(expected),
            "no {expected:?} in the logs:\n{logs}"
        );
    }
    for needle in &needles {
        if let Some(line) = logs.lines().find(|l| l.contains(needle.as_str())) {
            panic!("a secret is in the logs: {line}");
        }
        for output in outputs {
            assert!(
                !output.contains(needle.as_str()),
                "a secret is in an output: {output}"
            );
        }
    }
}

/// A 503 whose body is over the 64 KiB cap (a proxy's or CDN's HTML error page) is still a
/// transient `HttpStatus`: it is retried and keeps its `Retry-After`, rather than becoming
/// the permanent `ResponseTooLarge` (which it once did).
#[tokio::test]
async fn oversized_5xx_body_is_still_a_transient_http_status() {
    let server = MockServer::start_async().await;
    let mock = server
        .mock_async(|when, then| {
            when.method(POST).path("/oauth2/token");
            then.status(503)
                .header("retry-after", "0")
                .body(vec![b'x'; MAX_RESPONSE_BYTES + 1]);
        })
        .await;
    let provider =
        TokenProvider::builder(JwtBearer::new(account()).token_url(server.url("/oauth2/token")))
            .backoff(Duration::from_millis(10), Duration::from_millis(50))
            .build();
    let error = tokio::time::timeout(NO_HANG, provider.token())
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(
        matches!(error.last_attempt(), Error::HttpStatus { status: 503, .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert_eq!(mock.calls_async().await, ATTEMPTS);
}
