//! The RFC 7523 JWT-bearer grant for service accounts.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::credentials::ServiceAccount;
use crate::error::{Error, Result};
use crate::source::TokenSource;
use crate::token::AccessToken;
use crate::transport::check_url_transport;

/// DT's token endpoint, the default token URL.
pub const DT_TOKEN_URL: &str = "https://identity.disruptive-technologies.com/oauth2/token";

/// The `grant_type` of RFC 7523 §2.1.
pub const JWT_BEARER_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Lifetime of the signed assertion (`exp - iat`). DT accepts at most one hour, and the
/// assertion is used once, immediately, so its length matters only for clock skew.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// How far `iat` is backdated: a server whose clock runs a little behind ours would otherwise
/// reject the assertion as issued in the future.
const IAT_BACKDATE: Duration = Duration::from_secs(5);

/// Default time for one token request, connect to last byte. The endpoint answers in well
/// under a second when healthy; 10 s leaves room for a slow network yet lets the provider's
/// retries run within its budget instead of hanging on a dead connection.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time to establish the connection: a reachable endpoint connects in milliseconds,
/// an unreachable one should fail fast and go to the retry logic.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest token response read. Real responses are a few hundred bytes; the cap stops a
/// broken or hostile endpoint from making us buffer without bound.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Lifetime assumed when a response has no `expires_in` (RFC 6749 makes it optional). One
/// hour is DT's lifetime and the common default of OAuth2 servers.
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);

/// Longest lifetime believed. A server that claims years is wrong or misconfigured; capping
/// at a day means a revoked token is dropped by the next refresh at the latest.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 3600);

const USER_AGENT: &str = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));

/// A [`TokenSource`] that signs a JWT for a [`ServiceAccount`] and exchanges it for an access
/// token (RFC 7523 JWT-bearer grant, HS256).
///
/// The assertion carries header `{"alg":"HS256","kid":KEY_ID,"typ":"JWT"}` and claims `iss` =
/// email, `aud` = token URL, `iat` (backdated a few seconds for clock skew) and `exp` = `iat` +
/// 3600, signed with the secret's UTF-8 bytes — what DT's identity service expects. `sub` and
/// `jti` are opt-in.
///
/// The request goes through the source's own plain `reqwest::Client`: no middleware, no
/// redirects, a timeout, a `User-Agent` naming this crate. It is built on first use, so
/// constructing a `JwtBearer` does no I/O.
///
/// ```
/// use token_refresh::{JwtBearer, ServiceAccount, TokenProvider};
///
/// let account = ServiceAccount::new("key-id", "sa@example.com", "secret");
/// let source = JwtBearer::new(account).token_url("https://auth.example.com/oauth2/token");
/// let provider = TokenProvider::new(source); // nothing is fetched until the first token()
/// # drop(provider);
/// ```
#[derive(Clone)]
pub struct JwtBearer {
    account: ServiceAccount,
    token_url: String,
    subject: Option<String>,
    jti: bool,
    allow_http: bool,
    timeout: Duration,
    client: Arc<OnceLock<reqwest::Client>>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
}

impl JwtBearer {
    /// A JWT-bearer source for `account`. The token URL is the account's `tokenEndpoint` when
    /// its credentials file named one, else DT's [`DT_TOKEN_URL`].
    pub fn new(account: ServiceAccount) -> Self {
        let token_url = account.token_url().unwrap_or(DT_TOKEN_URL).to_owned();
        Self {
            account,
            token_url,
            subject: None,
            jti: false,
            allow_http: false,
            timeout: DEFAULT_REQUEST_TIMEOUT,
            client: Arc::new(OnceLock::new()),
        }
    }

    /// Sets the token endpoint, which is also the assertion's `aud`. Default: the account's
    /// `tokenEndpoint`, else [`DT_TOKEN_URL`].
    pub fn token_url(mut self, url: impl Into<String>) -> Self {
        self.token_url = url.into();
        self
    }

    /// Adds a `sub` claim (RFC 7523 asks for one; DT does not). Default: no `sub`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Adds a random `jti` claim to each assertion, for servers that reject replays.
    /// Default: `false`.
    pub fn jti(mut self, enabled: bool) -> Self {
        self.jti = enabled;
        self
    }

    /// Allows a plain `http://` token URL on a host that is not loopback. The assertion is a
    /// credential that can be exchanged for tokens until it expires, so this is off by
    /// default; loopback hosts (tests, emulators) are always allowed. Default: `false`.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// Sets the timeout of one token request, connect to last byte. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`] (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Uses `client` for token requests instead of the built-in one. It should not follow
    /// redirects and must not carry middleware that attaches this provider's tokens. The
    /// request timeout set with [`timeout`](Self::timeout) still applies. Default: a plain
    /// client without redirects, built on first use.
    pub fn http_client(self, client: reqwest::Client) -> Self {
        Self {
            client: Arc::new(OnceLock::from(client)),
            ..self
        }
    }

    /// The token URL requests go to.
    pub fn url(&self) -> &str {
        &self.token_url
    }

    /// Signs a fresh assertion.
    fn assertion(&self) -> Result<SecretString> {
        self.account.validate()?;
        install_crypto_provider();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.account.key_id().to_owned());
        let iat = SystemTime::now()
            .checked_sub(IAT_BACKDATE)
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::Signing("the system clock is before 1970".into()))?
            .as_secs();
        let claims = Claims {
            iss: self.account.email(),
            aud: &self.token_url,
            iat,
            exp: iat + ASSERTION_LIFETIME.as_secs(),
            sub: self.subject.as_deref(),
            jti: self.jti.then(random_jti),
        };
        let key = EncodingKey::from_secret(self.account.expose_secret().as_bytes());
        jsonwebtoken::encode(&header, &claims, &key)
            .map(SecretString::from)
            // jsonwebtoken's errors describe the failure kind, never the key or the claims.
            .map_err(|e| Error::Signing(e.to_string()))
    }

    fn client(&self) -> Result<&reqwest::Client> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(self.client.get_or_init(|| client))
    }

    async fn request(&self) -> Result<AccessToken> {
        let url = reqwest::Url::parse(&self.token_url).map_err(|e| {
            Error::Config(format!("token URL {:?} is invalid: {e}", self.token_url))
        })?;
        check_url_transport(&url, self.allow_http)?;
        let assertion = self.assertion()?;
        let body = format!(
            // A JWT is base64url and dots, which need no form escaping.
            "assertion={}&grant_type={}",
            assertion.expose_secret(),
            JWT_BEARER_GRANT_TYPE.replace(':', "%3A"),
        );
        let client = self.client()?;
        let sent_at = Instant::now();
        let response = client
            .post(url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .timeout(self.timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = match read_capped(response, MAX_RESPONSE_BYTES).await {
            Ok(body) => body,
            // An error status with a huge body (a proxy's HTML page) is still that status:
            // judge it without the body, so a 503 stays transient and keeps its Retry-After.
            Err(ReadError::TooLarge) if !(200..300).contains(&status) => Vec::new(),
            Err(ReadError::TooLarge) => {
                return Err(Error::ResponseTooLarge {
                    limit: MAX_RESPONSE_BYTES,
                });
            }
            Err(ReadError::Http(e)) => return Err(self.transport_error(&e)),
        };
        parse_token_response(status, retry_after, &body, sent_at)
    }

    fn transport_error(&self, e: &reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Timeout(self.timeout)
        } else if e.is_connect() {
            Error::Connect(error_chain(e))
        } else {
            Error::Transport(error_chain(e))
        }
    }
}

#[async_trait::async_trait]
impl TokenSource for JwtBearer {
    async fn fetch_token(&self) -> Result<AccessToken> {
        self.request().await
    }
}

impl fmt::Debug for JwtBearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtBearer")
            .field("account", &self.account)
            .field("token_url", &self.token_url)
            .field("subject", &self.subject)
            .field("jti", &self.jti)
            .field("allow_http", &self.allow_http)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Selects jsonwebtoken's aws-lc-rs backend explicitly, so that signing still works if some
/// other crate in the build enables a second backend (jsonwebtoken would otherwise panic at
/// the first `encode`).
pub(crate) fn install_crypto_provider() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Err means a provider is installed already, by us or by the application: use it.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    });
}

fn random_jti() -> String {
    format!("{:032x}", fastrand::u128(..))
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

/// Parses `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Turns a token endpoint's answer into a token or a precise error (RFC 6749 §5.1, §5.2).
///
/// `sent_at` is when the request went out: the token's lifetime counts from then.
#[doc(hidden)]
pub fn parse_token_response(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    sent_at: Instant,
) -> Result<AccessToken> {
    let success = (200..300).contains(&status);
    let json = serde_json::from_slice::<Value>(body);
    let object = match &json {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    };
    // §5.2: an `error` member means failure, whatever the status (some servers send 200).
    if let Some(Value::String(error)) = object.and_then(|o| o.get("error")) {
        let text = |name: &str| match object.and_then(|o| o.get(name)) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        return Err(Error::OAuth {
            status,
            error: error.clone(),
            description: text("error_description"),
            uri: text("error_uri"),
            retry_after,
        });
    }
    if !success {
        return Err(Error::HttpStatus {
            status,
            retry_after,
        });
    }
    let object = match (&json, object) {
        (_, Some(object)) => object,
        (Ok(_), None) => return Err(Error::InvalidJson("expected an object".into())),
        // serde_json's syntax errors give a line and column, never the input.
        (Err(e), None) => return Err(Error::InvalidJson(e.to_string())),
    };
    let access_token = match object.get("access_token") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::String(_)) => {
            return Err(Error::InvalidField {
                field: "access_token",
                reason: "it is empty".into(),
            });
        }
        Some(_) => {
            return Err(Error::InvalidField {
                field: "access_token",
                reason: "it is not a string".into(),
            });
        }
        None => return Err(Error::MissingField("access_token")),
    };
    match object.get("token_type") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(Value::String(t)) => return Err(Error::UnsupportedTokenType(t.clone())),
        Some(_) => {
            return Err(Error::InvalidField {
                field: "token_type",
                reason: "it is not a string".into(),
            });
        }
        None => return Err(Error::MissingField("token_type")),
    }
    let expires_in = parse_expires_in(object.get("expires_in"))?;
    AccessToken::issued_at(access_token.as_str(), sent_at, expires_in).map_err(|_| {
        Error::InvalidField {
            field: "access_token",
            reason: "it has characters not allowed in an HTTP header".into(),
        }
    })
}

/// `expires_in`: a positive number of seconds (a numeric string is accepted, as some servers
/// send one); missing means [`DEFAULT_EXPIRES_IN`]; more than [`MAX_EXPIRES_IN`] is capped.
fn parse_expires_in(value: Option<&Value>) -> Result<Duration> {
    let invalid = |reason: String| Error::InvalidField {
        field: "expires_in",
        reason,
    };
    let seconds = match value {
        None | Some(Value::Null) => return Ok(DEFAULT_EXPIRES_IN),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    }
    .filter(|s| s.is_finite())
    .ok_or_else(|| invalid("it is not a number of seconds".into()))?;
    if seconds < 1.0 {
        return Err(invalid(format!(
            "the token expires on arrival ({seconds} s)"
        )));
    }
    let capped = seconds.min(MAX_EXPIRES_IN.as_secs_f64());
    if capped < seconds {
        tracing::warn!(
            expires_in = seconds,
            cap = MAX_EXPIRES_IN.as_secs(),
            "token endpoint claims an implausibly long lifetime; capping it"
        );
    }
    Ok(Duration::from_secs(capped as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: &str) -> Result<AccessToken> {
        parse_token_response(status, None, body.as_bytes(), Instant::now())
    }

    #[test]
    fn parses_a_dt_response() {
        let t = parse(
            200,
            r#"{"access_token":"tok","token_type":"bearer","expires_in":3600}"#,
        )
        .unwrap();
        assert_eq!(t.expose_secret(), "tok");
        assert_eq!(t.lifetime(), Duration::from_secs(3600));
    }

    #[test]
    fn token_type_is_case_insensitive() {
        assert!(parse(200, r#"{"access_token":"t","token_type":"BeArEr"}"#).is_ok());
        assert!(matches!(
            parse(200, r#"{"access_token":"t","token_type":"mac"}"#),
            Err(Error::UnsupportedTokenType(t)) if t == "mac"
        ));
    }

    #[test]
    fn expires_in_edge_cases() {
        let with = |v: &str| {
            parse(
                200,
                &format!(r#"{{"access_token":"t","token_type":"Bearer","expires_in":{v}}}"#),
            )
        };
        assert_eq!(with("null").unwrap().lifetime(), DEFAULT_EXPIRES_IN);
        assert_eq!(
            with("\"120\"").unwrap().lifetime(),
            Duration::from_secs(120)
        );
        assert_eq!(with("315360000").unwrap().lifetime(), MAX_EXPIRES_IN);
        for bad in ["0", "-5", "\"soon\"", "true"] {
            assert!(
                matches!(
                    with(bad),
                    Err(Error::InvalidField {
                        field: "expires_in",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn oauth_error_with_status_200() {
        let e = parse(
            200,
            r#"{"error":"invalid_grant","error_description":"bad"}"#,
        )
        .unwrap_err();
        assert_eq!(e.oauth_error(), Some("invalid_grant"));
        assert!(e.to_string().contains("bad"));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(30);
        let date = httpdate::fmt_http_date(later);
        let d = parse_retry_after(&date).unwrap();
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(28),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
