//! [`ScriptedServer`]: a loopback HTTP/1.1 server whose every answer a closure writes, for
//! the tests and benchmarks that need a token endpoint with no checks at all (a cold herd
//! against a fixed latency), one that misbehaves on purpose, or the raw request a client
//! sent.

use std::convert::Infallible;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A request as the server received it.
#[derive(Clone)]
pub struct Received {
    /// The method.
    pub method: Method,
    /// The path and query.
    pub uri: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// When its last byte arrived.
    pub at: Instant,
    /// Its number, from 0 in arrival order.
    pub number: u64,
}

impl Received {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A form parameter of the body (`application/x-www-form-urlencoded`).
    pub fn form(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(&self.body)
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.into_owned())
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl fmt::Debug for Received {
    /// The request line only: headers and bodies hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Received")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("number", &self.number)
            .finish_non_exhaustive()
    }
}

/// What the server answers to one request.
#[derive(Clone, Debug)]
pub struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    delay: Duration,
}

impl Answer {
    /// `status` with a JSON `body`.
    pub fn json(status: u16, body: impl fmt::Display) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// 200 with an RFC 6749 §5.1 token response: `access_token` `token-{n}`, `Bearer`,
    /// expiring in `expires_in` seconds.
    pub fn token(n: u64, expires_in: u64) -> Self {
        Self::json(
            200,
            format!(
                r#"{{"access_token":"token-{n}","token_type":"Bearer","expires_in":{expires_in}}}"#
            ),
        )
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Answers only after `delay` (a slow token endpoint).
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Script = dyn Fn(&Received) -> Answer + Send + Sync;

/// A loopback HTTP/1.1 server that answers every request with what its script says, records
/// what it received, and stops when dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use token_refresh::{TokenEndpoint, TokenProvider};
/// use token_refresh_emulator::{Answer, ScriptedServer};
///
/// // Any token request gets a token after 10 ms.
/// let server = ScriptedServer::start(|request| Answer::token(request.number, 3600)
///     .after(Duration::from_millis(10))).await?;
/// let endpoint = TokenEndpoint::new(server.url("/token"));
/// let provider = TokenProvider::new(move || {
///     let endpoint = endpoint.clone();
///     async move { endpoint.request().param("grant_type", "client_credentials").send().await }
/// });
/// assert_eq!(provider.token().await?.expose_secret(), "token-0");
/// assert_eq!(server.received()[0].form("grant_type").as_deref(), Some("client_credentials"));
/// # Ok(()) }
/// ```
pub struct ScriptedServer {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    count: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl ScriptedServer {
    /// Listens on a free port of `127.0.0.1` and answers each request with `script`.
    pub async fn start(
        script: impl Fn(&Received) -> Answer + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicU64::new(0));
        let script: Arc<Script> = Arc::new(script);
        let (log, counter) = (Arc::clone(&received), Arc::clone(&count));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (script, log, counter) =
                    (Arc::clone(&script), Arc::clone(&log), Arc::clone(&counter));
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (script, log, counter) =
                            (Arc::clone(&script), Arc::clone(&log), Arc::clone(&counter));
                        async move {
                            Ok::<_, Infallible>(answer(request, &*script, &log, &counter).await)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            received,
            count,
            task,
        })
    }

    /// `http://127.0.0.1:PORT` and `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// The requests received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn answer(
    request: Request<Incoming>,
    script: &Script,
    log: &Mutex<Vec<Received>>,
    counter: &AtomicU64,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let received = Received {
        method: parts.method,
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
        at: Instant::now(),
        number: counter.fetch_add(1, Ordering::SeqCst),
    };
    let answer = script(&received);
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(received);
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = Response::builder().status(answer.status);
    for (name, value) in &answer.headers {
        response = response.header(name, value);
    }
    response
        .body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"bad script answer"))))
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for ScriptedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedServer")
            .field("addr", &self.addr)
            .field("count", &self.count())
            .finish_non_exhaustive()
    }
}
