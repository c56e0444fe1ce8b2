//! Where tokens go: origins (scheme, host, port), routes (an origin and a path prefix with
//! the token parameters for it), and the request targets both integrations match them
//! against.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::params::TokenParams;

/// The origin a token is bound to: scheme, host and port.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses `https://api.example.com[:port]` (a path is ignored).
    pub(crate) fn parse(origin: &str) -> Result<Self> {
        let invalid =
            |why: &str| Error::Config(format!("for_origin({origin:?}): not an origin: {why}"));
        let uri: http::Uri = origin.parse().map_err(|_| invalid("not a URL"))?;
        let scheme = uri
            .scheme_str()
            .ok_or_else(|| invalid("it has no scheme"))?;
        let host = uri.host().ok_or_else(|| invalid("it has no host"))?;
        Self::new(scheme, host, uri.port_u16()).ok_or_else(|| invalid("only http and https"))
    }

    pub(crate) fn new(scheme: &str, host: &str, port: Option<u16>) -> Option<Self> {
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

    /// Whether `scheme`, `host` and `port` (the scheme's default when `None`) name this
    /// origin, compared without allocating.
    pub(crate) fn matches(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        if !self.scheme.eq_ignore_ascii_case(scheme) {
            return false;
        }
        let default = if self.scheme == "https" { 443 } else { 80 };
        let host = match host.as_bytes() {
            [b'[', .., b']'] => &host[1..host.len() - 1],
            _ => host,
        };
        // Most requests spell the host as the route does: compare bytes first.
        self.port == port.unwrap_or(default)
            && (self.host == host || self.host.eq_ignore_ascii_case(host))
    }

    /// Whether `authority` (`host[:port]`, from a `Host` header) names this origin.
    pub(crate) fn has_authority(&self, authority: &str) -> bool {
        let Ok(authority) = authority.parse::<http::uri::Authority>() else {
            return false;
        };
        Self::new(&self.scheme, authority.host(), authority.port_u16()).as_ref() == Some(self)
    }
}

impl Origin {
    /// `scheme://host[:port]`, the port left out where it is the scheme's default (as a
    /// URI names it, so that a proof's `htu` matches).
    pub(crate) fn url(&self) -> String {
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
    /// The host (an IPv6 address in brackets) and the port, `None` for the scheme's
    /// default.
    fn host_port(&self) -> Option<(&str, Option<u16>)>;
    fn host(&self) -> Option<&str> {
        self.host_port().map(|(host, _)| host)
    }
    /// The path, `/` for none.
    fn path(&self) -> &str;
}

impl Target for http::Uri {
    fn scheme(&self) -> Option<&str> {
        self.scheme_str()
    }
    fn host_port(&self) -> Option<(&str, Option<u16>)> {
        self.authority()
            .map(|authority| split_authority(authority.as_str()))
    }
    fn path(&self) -> &str {
        http::Uri::path(self)
    }
}

/// `[userinfo@]host[:port]` split into host and port with byte searches, once: `http`'s
/// `host()` and `port_u16()` each parse the authority again with char searches, which is
/// most of what matching a request to a route costs. The authority has been validated by
/// `http` already.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    let bytes = authority.as_bytes();
    let start = bytes
        .iter()
        .rposition(|&b| b == b'@')
        .map_or(0, |at| at + 1);
    let rest = &authority[start..];
    let host_end = if rest.starts_with('[') {
        rest.bytes()
            .position(|b| b == b']')
            .map_or(rest.len(), |end| end + 1)
    } else {
        rest.bytes().position(|b| b == b':').unwrap_or(rest.len())
    };
    let (host, port) = rest.split_at(host_end);
    (
        host,
        port.strip_prefix(':').and_then(|port| port.parse().ok()),
    )
}

#[cfg(feature = "reqwest")]
impl Target for reqwest::Url {
    fn scheme(&self) -> Option<&str> {
        Some(reqwest::Url::scheme(self))
    }
    fn host_port(&self) -> Option<(&str, Option<u16>)> {
        self.host_str().map(|host| (host, self.port()))
    }
    fn path(&self) -> &str {
        reqwest::Url::path(self)
    }
}

/// Least time between two step-ups of a route that each need a new token: a server that
/// names a scope the token lacks gets one wider token at once, but one that names ever new
/// scopes (broken, or hostile) gets at most one token request per 5 s per route, as the storm
/// guard's forced refreshes do.
const STEP_UP_INTERVAL: Duration = Duration::from_secs(5);

/// A destination and the token parameters for it: an origin, optionally a path prefix.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) origin: Origin,
    /// A path prefix (`/v2`), matched at a segment boundary; `None`: the whole origin.
    pub(crate) path: Option<Box<str>>,
    pub(crate) params: TokenParams,
    /// The wider parameters a step-up found to work for this route, used from then on.
    pub(crate) stepped: Arc<ArcSwapOption<TokenParams>>,
    /// When this route last asked for a new step-up token.
    last_step_up: Arc<Mutex<Option<Instant>>>,
}

impl Route {
    pub(crate) fn parse(target: &str, params: TokenParams) -> Result<Self> {
        let origin = Origin::parse(target)?;
        let uri: http::Uri = target
            .parse()
            .map_err(|_| Error::Config(format!("route({target:?}): not a URL")))?;
        let path = uri.path().trim_end_matches('/');
        Ok(Self {
            origin,
            path: (!path.is_empty()).then(|| path.into()),
            params,
            stepped: Arc::default(),
            last_step_up: Arc::default(),
        })
    }

    /// Whether this route may ask for a new step-up token now: one per
    /// [`STEP_UP_INTERVAL`], so that an API that keeps asking for more scope cannot turn
    /// calls into token requests. Taking it counts as asking.
    pub(crate) fn may_step_up(&self) -> bool {
        let now = Instant::now();
        let mut last = self
            .last_step_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| now.saturating_duration_since(at) < STEP_UP_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// How well `path` falls under this route: the length of its prefix, `None` if not.
    pub(crate) fn match_len(&self, path: &str) -> Option<usize> {
        let Some(prefix) = self.path.as_deref() else {
            return Some(0);
        };
        let rest = path.strip_prefix(prefix)?;
        (rest.is_empty() || rest.starts_with('/')).then_some(prefix.len())
    }

    pub(crate) fn same_destination(&self, other: &Route) -> bool {
        self.origin == other.origin && self.path == other.path
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("origin", &self.origin)
            .field("path", &self.path)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_splits_as_http_splits_it() {
        for authority in [
            "api.example.com",
            "api.example.com:8443",
            "user:pw@api.example.com:8443",
            "[::1]",
            "[::1]:8080",
            "user@[fe80::1]:443",
            "127.0.0.1:80",
        ] {
            let parsed: http::uri::Authority = authority.parse().unwrap();
            assert_eq!(
                split_authority(authority),
                (parsed.host(), parsed.port_u16()),
                "{authority}"
            );
        }
    }

    #[test]
    fn an_origin_matches_whatever_the_case_and_the_default_port() {
        let origin = Origin::parse("https://API.example.com").unwrap();
        assert!(origin.matches("https", "api.example.com", None));
        assert!(origin.matches("HTTPS", "Api.Example.Com", Some(443)));
        assert!(!origin.matches("https", "api.example.com", Some(8443)));
        assert!(!origin.matches("http", "api.example.com", None));
        assert!(!origin.matches("https", "api.example.org", None));
        let v6 = Origin::parse("http://[::1]:8080").unwrap();
        assert!(v6.matches("http", "[::1]", Some(8080)));
        assert!(!v6.matches("http", "[::1]", None));
    }
}
