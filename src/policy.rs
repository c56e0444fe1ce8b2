//! The one policy both integrations apply: where a token may go, what counts as a rejection,
//! and what to do about one.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::provider::{TokenProvider, Want};
use crate::token::AccessToken;
use crate::transport::check_transport;

/// A request extension that asks for a token valid for at least this long, read by both
/// `AuthMiddleware` (feature `reqwest`) and `AuthLayer` (feature `tower`): the request
/// gets the cached token if it lasts that long, else one fresh from a refresh (shared with
/// every other caller, as always). For a request that must outlive the next minutes, such as
/// a stream; see [`TokenProvider::token_valid_for`] for the details.
///
/// ```
/// use std::time::Duration;
/// use token_refresh::MinValidity;
///
/// let mut request = http::Request::get("https://api.example.com/v2/stream").body(()).unwrap();
/// request.extensions_mut().insert(MinValidity(Duration::from_secs(600)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinValidity(pub Duration);

/// The origin a token is bound to: scheme, host and port.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses `https://api.example.com[:port]` (a path is ignored).
    fn parse(origin: &str) -> Result<Self> {
        let invalid =
            |why: &str| Error::Config(format!("for_origin({origin:?}): not an origin: {why}"));
        let uri: http::Uri = origin.parse().map_err(|_| invalid("not a URL"))?;
        let scheme = uri
            .scheme_str()
            .ok_or_else(|| invalid("it has no scheme"))?;
        let host = uri.host().ok_or_else(|| invalid("it has no host"))?;
        Self::new(scheme, host, uri.port_u16()).ok_or_else(|| invalid("only http and https"))
    }

    fn new(scheme: &str, host: &str, port: Option<u16>) -> Option<Self> {
        let scheme = scheme.to_ascii_lowercase();
        let default = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        Some(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase(),
            port: port.unwrap_or(default),
            scheme,
        })
    }

    /// Whether `authority` (`host[:port]`, from a `Host` header) names this origin.
    fn has_authority(&self, authority: &str) -> bool {
        let Ok(authority) = authority.parse::<http::uri::Authority>() else {
            return false;
        };
        Self::new(&self.scheme, authority.host(), authority.port_u16()).as_ref() == Some(self)
    }
}

impl Origin {
    /// `scheme://host[:port]`, the port left out where it is the scheme's default (as a
    /// URI names it, so that a proof's `htu` matches).
    fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.scheme.as_str(), self.port) {
            ("https", 443) | ("http", 80) => format!("{}://{host}", self.scheme),
            (scheme, port) => format!("{scheme}://{host}:{port}"),
        }
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Where a request is going, as far as the policy needs to know. The host and port are
/// asked for only when needed (plain http, bound origins): parsing them out of a URI is
/// most of what checking costs.
pub(crate) trait Target {
    fn scheme(&self) -> Option<&str>;
    fn host(&self) -> Option<&str>;
    /// The port, the scheme's default when none is written.
    fn port(&self) -> Option<u16>;
}

impl Target for http::Uri {
    fn scheme(&self) -> Option<&str> {
        self.scheme_str()
    }
    fn host(&self) -> Option<&str> {
        http::Uri::host(self)
    }
    fn port(&self) -> Option<u16> {
        self.port_u16()
    }
}

#[cfg(feature = "reqwest")]
impl Target for reqwest::Url {
    fn scheme(&self) -> Option<&str> {
        Some(reqwest::Url::scheme(self))
    }
    fn host(&self) -> Option<&str> {
        self.host_str()
    }
    fn port(&self) -> Option<u16> {
        self.port_or_known_default()
    }
}

/// What a response says about the token the request carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The server took the token (any answer but a rejection or a 5xx).
    Accepted,
    /// HTTP 401 or gRPC `UNAUTHENTICATED` that a fresh token may cure.
    Rejected,
    /// HTTP 401 `WWW-Authenticate: DPoP error="use_dpop_nonce"` with a `DPoP-Nonce`: the
    /// token is fine, the proof lacked the server's nonce; sent again with it, once.
    Nonce,
    /// Neither: a 5xx, or a rejection a fresh token does not cure (`insufficient_scope`).
    Other,
}

#[derive(Clone, Debug)]
pub(crate) struct AuthPolicy {
    provider: TokenProvider,
    allow_http: bool,
    /// Bound origins; `None`: every origin.
    origins: Option<Arc<[Origin]>>,
    /// An origin given to `for_origin` that does not parse: every request fails with it.
    bad_origin: Option<Error>,
    /// Longest token wait per request; `None`: the provider's `max_wait`.
    max_token_wait: Option<Duration>,
    allow_with: &'static str,
    /// The last `DPoP-Nonce` each origin gave (RFC 9449 §9), for the proofs of DPoP-bound
    /// tokens.
    nonces: Arc<Mutex<HashMap<String, String>>>,
}

impl AuthPolicy {
    /// `allow_with` names the integration's `allow_http` setter for error messages.
    pub(crate) fn new(provider: TokenProvider, allow_with: &'static str) -> Self {
        Self {
            provider,
            allow_http: false,
            origins: None,
            bad_origin: None,
            max_token_wait: None,
            nonces: Arc::default(),
            allow_with,
        }
    }

    pub(crate) fn set_allow_http(&mut self, allow: bool) {
        self.allow_http = allow;
    }

    /// Adds an origin tokens are bound to. An invalid one makes every request fail with
    /// [`Error::Config`] naming it: a typo must send tokens neither nowhere nor everywhere.
    pub(crate) fn add_origin(&mut self, origin: &str) {
        let origin = match Origin::parse(origin) {
            Ok(origin) => origin,
            Err(error) => {
                self.bad_origin.get_or_insert(error);
                return;
            }
        };
        let mut origins = self.origins.as_deref().unwrap_or_default().to_vec();
        if !origins.contains(&origin) {
            origins.push(origin);
        }
        self.origins = Some(origins.into());
    }

    pub(crate) fn set_max_token_wait(&mut self, max: Duration) {
        self.max_token_wait = Some(max);
    }

    /// Whether to attach a token to a request for `target` with `headers`:
    ///
    /// - `Ok(false)`: the caller set `Authorization`, or tokens are bound to other origins;
    ///   send the request as it is;
    /// - `Err`: plain http to a host that is not loopback;
    /// - `Ok(true)`: attach.
    ///
    /// An origin-form request (no scheme or host, as a tonic channel sends) is attached to;
    /// with bound origins, its `Host` header, if any, must name one of them.
    pub(crate) fn should_attach(&self, target: &impl Target, headers: &HeaderMap) -> Result<bool> {
        if headers.contains_key(AUTHORIZATION) {
            return Ok(false);
        }
        if let Some(error) = &self.bad_origin {
            return Err(error.clone());
        }
        if let Some(origins) = &self.origins {
            let bound = match (target.scheme(), target.host()) {
                (Some(scheme), Some(host)) => Origin::new(scheme, host, target.port())
                    .is_some_and(|origin| origins.contains(&origin)),
                _ => match headers.get(HOST).and_then(|h| h.to_str().ok()) {
                    Some(authority) => origins.iter().any(|o| o.has_authority(authority)),
                    None => true,
                },
            };
            if !bound {
                return Ok(false);
            }
        }
        let scheme = target.scheme();
        if scheme.is_some_and(|s| s.eq_ignore_ascii_case("http")) {
            check_transport(
                scheme,
                target.host(),
                self.allow_http,
                "the access token",
                self.allow_with,
            )?;
        }
        Ok(true)
    }

    /// The token to attach, if it can be had without waiting: the fast path.
    pub(crate) fn cached_token(&self, min: Option<&MinValidity>) -> Option<AccessToken> {
        self.provider.cached(min.map_or(Duration::ZERO, |m| m.0))
    }

    /// The token to attach, waiting for a refresh if need be, at most until `deadline` (the
    /// request's own) and for at most the policy's `max_token_wait`.
    pub(crate) async fn token(
        &self,
        min: Option<MinValidity>,
        deadline: Option<Instant>,
    ) -> Result<AccessToken> {
        let own = self
            .max_token_wait
            .and_then(|max| Instant::now().checked_add(max));
        let deadline = match (deadline, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.provider
            .token_with(Want {
                min_validity: min.map_or(Duration::ZERO, |m| m.0),
                deadline,
            })
            .await
    }

    /// What a response with `status` and `headers` says about the token its request
    /// carried. `grpc` says whether the request was a gRPC call (`content-type:
    /// application/grpc…`): only then is `grpc-status: 16` in the headers a rejection, and
    /// `grpc-status: 7` (`PERMISSION_DENIED`), like 403, never is. A 401 whose
    /// `WWW-Authenticate` says `insufficient_scope` (RFC 6750 §3.1) is not cured by a fresh
    /// token.
    pub(crate) fn verdict(status: StatusCode, headers: &HeaderMap, grpc: bool) -> Verdict {
        if status == StatusCode::UNAUTHORIZED {
            let challenges = || {
                headers
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
            };
            let scope = challenges()
                .any(|v| challenge_error(v, "bearer").as_deref() == Some("insufficient_scope"));
            let dpop = challenges().find_map(|v| challenge_error(v, "dpop"));
            return match dpop.as_deref() {
                Some("use_dpop_nonce") if headers.contains_key(crate::dpop::NONCE_HEADER) => {
                    Verdict::Nonce
                }
                // A proof the server refuses is not cured by a fresh token, nor by the same
                // proof again.
                Some("invalid_dpop_proof") => Verdict::Other,
                _ if scope => Verdict::Other,
                _ => Verdict::Rejected,
            };
        }
        if grpc
            && headers
                .get("grpc-status")
                .is_some_and(|s| s.as_bytes() == b"16")
        {
            return Verdict::Rejected;
        }
        if status.is_server_error() {
            Verdict::Other
        } else {
            Verdict::Accepted
        }
    }

    /// Whether the request with `headers` is a gRPC call.
    pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
        headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    }

    /// After the server rejected `sent`: reports it to the provider (storm guard included)
    /// and, if the request can be `replayable`, returns a fresh token to resend with.
    /// `None`: return the rejection as it is — the storm guard held, the request cannot be
    /// replayed, or the provider has no newer token.
    pub(crate) async fn after_rejection(
        &self,
        sent: &AccessToken,
        replayable: bool,
        min: Option<MinValidity>,
        deadline: Option<Instant>,
    ) -> Result<Option<AccessToken>> {
        if !self.provider.reject(sent) {
            return Ok(None);
        }
        if !replayable {
            tracing::debug!("token rejected for a request that cannot be replayed: returning it");
            return Ok(None);
        }
        let fresh = self.token(min, deadline).await?;
        if fresh.same_value(sent) {
            tracing::debug!("token rejected, but the provider has no newer one: returning it");
            return Ok(None);
        }
        tracing::debug!("token rejected: resending once with a fresh one");
        self.provider.record_resend();
        Ok(Some(fresh))
    }

    /// A request goes out again with the server's DPoP nonce: counted for `Health` and the
    /// metrics.
    pub(crate) fn nonce_resend(&self) {
        self.provider.record_nonce_resend();
    }

    /// After the resend with `fresh`: records what its answer says of that token. A rejection
    /// is reported to the provider like any other, so that a fresh token the API refuses
    /// before it ever worked tells the storm guard that refreshing does not help; there is
    /// no second resend whatever it decides.
    pub(crate) fn after_resend(&self, fresh: &AccessToken, verdict: Verdict) {
        match verdict {
            Verdict::Accepted => fresh.mark_accepted(),
            Verdict::Rejected => {
                self.provider.reject(fresh);
            }
            // A nonce demanded again of a resend: its answer goes to the caller as it is.
            Verdict::Other | Verdict::Nonce => {}
        }
    }

    /// Sets the `Authorization` header to `token` (the first send's, or the resend's); for
    /// a DPoP-bound token, also a fresh `DPoP` proof for `method` and `uri`, with `ath` and
    /// the origin's last nonce. An origin-form `uri` (a tonic channel's) is placed at the
    /// bound origin ([`for_origin`](crate::AuthLayer::for_origin)), else at its `Host`.
    /// Returns the origin a DPoP proof was made for, whose nonce the answer may update.
    pub(crate) fn attach(
        &self,
        headers: &mut HeaderMap,
        method: &Method,
        uri: &Uri,
        token: &AccessToken,
    ) -> Result<Option<String>> {
        headers.insert(AUTHORIZATION, token.header_value());
        let Some(key) = token.dpop_key() else {
            return Ok(None);
        };
        let (origin, htu) = self.target(uri, headers)?;
        let nonce = self
            .nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&origin)
            .cloned();
        let proof = key.proof(
            method.as_str(),
            &htu,
            Some(token.expose_secret()),
            nonce.as_deref(),
        )?;
        let mut value = HeaderValue::try_from(proof)
            .map_err(|_| Error::Signing("the DPoP proof is not a header value".into()))?;
        value.set_sensitive(true);
        headers.insert(crate::dpop::HEADER, value);
        Ok(Some(origin))
    }

    /// Keeps the `DPoP-Nonce` of a response from `origin` (what [`attach`](Self::attach)
    /// returned; nothing for `None`).
    pub(crate) fn note_nonce(&self, origin: Option<&str>, response: &HeaderMap) {
        let Some(origin) = origin else {
            return;
        };
        let Some(nonce) = crate::dpop::nonce_of(response) else {
            return;
        };
        self.nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(origin.to_owned(), nonce.to_owned());
    }

    /// The origin of a request and its URI without query and fragment (a proof's `htu`).
    fn target(&self, uri: &Uri, headers: &HeaderMap) -> Result<(String, String)> {
        let path = uri.path();
        if let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) {
            let origin = format!("{scheme}://{authority}");
            return Ok((origin.clone(), format!("{origin}{path}")));
        }
        let origin = match (self.origins.as_deref(), headers.get(HOST)) {
            (Some([origin, ..]), _) => origin.url(),
            (None, Some(host)) => format!(
                "https://{}",
                host.to_str()
                    .map_err(|_| Error::Config("the Host header is not text".into()))?
            ),
            _ => {
                return Err(Error::Config(
                    "a DPoP proof needs the request's full URI: bind the layer to its origin \
                     with for_origin"
                        .into(),
                ));
            }
        };
        Ok((origin.clone(), format!("{origin}{path}")))
    }
}

/// The `error` parameter of the challenge of scheme `wanted` (lowercase) in a
/// `WWW-Authenticate` value (RFC 6750 §3, RFC 9449 §7.1), e.g. `insufficient_scope` in
/// `Bearer realm="x", error="insufficient_scope"`.
fn challenge_error(header: &str, wanted: &str) -> Option<String> {
    let mut scheme_is_bearer = false;
    for item in split_unquoted(header, ',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        // A new challenge starts with a scheme token that is not followed by `=`.
        let param = match item.split_once(char::is_whitespace) {
            Some((first, rest)) if !first.contains('=') => {
                scheme_is_bearer = first.eq_ignore_ascii_case(wanted);
                rest.trim()
            }
            None if !item.contains('=') => {
                scheme_is_bearer = item.eq_ignore_ascii_case(wanted);
                continue;
            }
            _ => item,
        };
        if let Some((name, value)) = param.split_once('=')
            && scheme_is_bearer
            && name.trim().eq_ignore_ascii_case("error")
        {
            return Some(value.trim().trim_matches('"').to_owned());
        }
    }
    None
}

/// Splits at `sep` outside double quotes.
fn split_unquoted(text: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    text.split(move |c: char| {
        let split = c == sep && !quoted;
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ => {}
        }
        split
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_errors_are_read_from_challenges() {
        let cases = [
            (
                r#"Bearer error="insufficient_scope""#,
                Some("insufficient_scope"),
            ),
            (
                r#"Bearer realm="api, v2", error="invalid_token", error_description="expired""#,
                Some("invalid_token"),
            ),
            (
                r#"Basic realm="x", Bearer error=insufficient_scope"#,
                Some("insufficient_scope"),
            ),
            (r#"Basic error="insufficient_scope""#, None),
            ("Bearer", None),
            (
                r#"Bearer error_description="error=insufficient_scope""#,
                None,
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(
                challenge_error(header, "bearer").as_deref(),
                expected,
                "{header}"
            );
        }
    }

    #[test]
    fn verdicts() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            AuthPolicy::verdict(StatusCode::UNAUTHORIZED, &headers, false),
            Verdict::Rejected
        );
        assert_eq!(
            AuthPolicy::verdict(StatusCode::FORBIDDEN, &headers, false),
            Verdict::Accepted
        );
        assert_eq!(
            AuthPolicy::verdict(StatusCode::BAD_GATEWAY, &headers, false),
            Verdict::Other
        );
        headers.insert("grpc-status", "16".parse().unwrap());
        assert_eq!(
            AuthPolicy::verdict(StatusCode::OK, &headers, true),
            Verdict::Rejected
        );
        assert_eq!(
            AuthPolicy::verdict(StatusCode::OK, &headers, false),
            Verdict::Accepted
        );
        headers.insert("grpc-status", "7".parse().unwrap());
        assert_eq!(
            AuthPolicy::verdict(StatusCode::OK, &headers, true),
            Verdict::Accepted
        );
        headers.insert(
            WWW_AUTHENTICATE,
            r#"Bearer error="insufficient_scope""#.parse().unwrap(),
        );
        assert_eq!(
            AuthPolicy::verdict(StatusCode::UNAUTHORIZED, &headers, false),
            Verdict::Other
        );
    }

    #[test]
    fn dpop_challenges() {
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            r#"DPoP algs="ES256", error="use_dpop_nonce""#.parse().unwrap(),
        );
        // Without the nonce itself there is nothing to resend with: a rejection.
        assert_eq!(
            AuthPolicy::verdict(StatusCode::UNAUTHORIZED, &headers, false),
            Verdict::Rejected
        );
        headers.insert(crate::dpop::NONCE_HEADER, "n-1".parse().unwrap());
        assert_eq!(
            AuthPolicy::verdict(StatusCode::UNAUTHORIZED, &headers, false),
            Verdict::Nonce
        );
        headers.insert(
            WWW_AUTHENTICATE,
            r#"DPoP error="invalid_dpop_proof", error_description="bad htu""#
                .parse()
                .unwrap(),
        );
        assert_eq!(
            AuthPolicy::verdict(StatusCode::UNAUTHORIZED, &headers, false),
            Verdict::Other
        );
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let o = Origin::parse("https://API.example.com").unwrap();
        assert_eq!(
            Origin::new("https", "api.example.com", Some(443)),
            Some(o.clone())
        );
        assert_ne!(
            Origin::new("http", "api.example.com", None),
            Some(o.clone())
        );
        assert_ne!(
            Origin::new("https", "api.example.com", Some(8443)),
            Some(o.clone())
        );
        assert!(o.has_authority("api.example.com"));
        assert!(o.has_authority("api.example.com:443"));
        assert!(!o.has_authority("evil.example.com"));
        assert!(Origin::parse("api.example.com").is_err());
        assert!(Origin::parse("ftp://api.example.com").is_err());
    }
}
