//! Authorization server metadata (RFC 8414, OpenID Connect Discovery): where the token
//! endpoint is and what it supports, fetched once per TTL, never per request.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::exchange::http::{GetError, Http};

/// What an authorization server says about itself: from
/// [`TokenEndpoint::metadata`](crate::TokenEndpoint::metadata).
#[derive(Clone, Debug)]
pub struct ServerMetadata {
    issuer: String,
    token_endpoint: String,
    auth_methods: Vec<String>,
    auth_signing_algs: Vec<String>,
    grant_types: Vec<String>,
    dpop_algs: Vec<String>,
}

impl ServerMetadata {
    /// `issuer`: always the issuer asked for (anything else is refused).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `token_endpoint`.
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// `token_endpoint_auth_methods_supported`, or RFC 8414's default
    /// `["client_secret_basic"]` when absent.
    pub fn token_endpoint_auth_methods(&self) -> &[String] {
        &self.auth_methods
    }

    /// `token_endpoint_auth_signing_alg_values_supported` (for `private_key_jwt` and
    /// `client_secret_jwt`); empty when absent.
    pub fn token_endpoint_auth_signing_algs(&self) -> &[String] {
        &self.auth_signing_algs
    }

    /// `grant_types_supported`, or RFC 8414's default `["authorization_code", "implicit"]`.
    pub fn grant_types(&self) -> &[String] {
        &self.grant_types
    }

    /// `dpop_signing_alg_values_supported` (RFC 9449); empty when absent.
    pub fn dpop_signing_algs(&self) -> &[String] {
        &self.dpop_algs
    }

    /// Reads a metadata document, refusing one for another issuer.
    fn parse(issuer: &str, json: &Value) -> Result<Self> {
        let problem = |problem: String| Error::Discovery {
            issuer: issuer.to_owned(),
            problem,
            transient: false,
        };
        let found = match json.get("issuer") {
            Some(Value::String(found)) => found,
            _ => return Err(problem("the metadata has no `issuer` string".into())),
        };
        if found != issuer {
            return Err(Error::IssuerMismatch {
                expected: issuer.to_owned(),
                found: found.clone(),
            });
        }
        let token_endpoint = match json.get("token_endpoint") {
            Some(Value::String(url)) if reqwest::Url::parse(url).is_ok() => url.clone(),
            Some(_) => return Err(problem("`token_endpoint` is not a URL".into())),
            None => return Err(problem("the metadata has no `token_endpoint`".into())),
        };
        let list = |name: &str, default: &[&str]| -> Vec<String> {
            match json.get(name) {
                Some(Value::Array(values)) => values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                _ => default.iter().map(|s| (*s).to_owned()).collect(),
            }
        };
        Ok(Self {
            issuer: found.clone(),
            token_endpoint,
            auth_methods: list(
                "token_endpoint_auth_methods_supported",
                &["client_secret_basic"],
            ),
            auth_signing_algs: list("token_endpoint_auth_signing_alg_values_supported", &[]),
            grant_types: list("grant_types_supported", &["authorization_code", "implicit"]),
            dpop_algs: list("dpop_signing_alg_values_supported", &[]),
        })
    }
}

/// The well-known URLs to try for `issuer`, in order: RFC 8414's (the well-known segment
/// before the issuer's path), then OpenID Connect's (appended to it).
fn well_known_urls(issuer: &str) -> Result<Vec<reqwest::Url>> {
    let invalid = |problem: String| Error::Discovery {
        issuer: issuer.to_owned(),
        problem,
        transient: false,
    };
    let url = reqwest::Url::parse(issuer).map_err(|e| invalid(format!("not a URL: {e}")))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "an issuer has no query or fragment (RFC 8414 §2)".into(),
        ));
    }
    let path = url.path().trim_end_matches('/');
    let with_path = |path: String| {
        let mut out = url.clone();
        out.set_path(&path);
        out
    };
    Ok(vec![
        with_path(format!("/.well-known/oauth-authorization-server{path}")),
        with_path(format!("{path}/.well-known/openid-configuration")),
    ])
}

/// An endpoint's discovery state: the issuer, and its metadata while fresh.
pub(crate) struct Discovery {
    pub(crate) issuer: String,
    pub(crate) ttl: Duration,
    cache: tokio::sync::Mutex<Option<(Arc<ServerMetadata>, Instant)>>,
}

impl Discovery {
    pub(crate) fn new(issuer: String, ttl: Duration) -> Self {
        Self {
            issuer,
            ttl,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The metadata, fetched if there is none or it is older than the TTL (one fetch at a
    /// time). A failed re-fetch that may be transient keeps the metadata it had.
    pub(crate) async fn metadata(&self, http: &Http) -> Result<Arc<ServerMetadata>> {
        let mut cache = self.cache.lock().await;
        if let Some((metadata, at)) = &*cache
            && at.elapsed() < self.ttl
        {
            return Ok(Arc::clone(metadata));
        }
        match self.fetch(http).await {
            Ok(metadata) => {
                let metadata = Arc::new(metadata);
                *cache = Some((Arc::clone(&metadata), Instant::now()));
                Ok(metadata)
            }
            Err(error) => match &*cache {
                Some((metadata, _)) if error.is_transient() => {
                    tracing::warn!(issuer = %self.issuer, %error, "re-fetching the server's metadata failed: using what it said before");
                    Ok(Arc::clone(metadata))
                }
                _ => Err(error),
            },
        }
    }

    async fn fetch(&self, http: &Http) -> Result<ServerMetadata> {
        let mut last = None;
        for url in well_known_urls(&self.issuer)? {
            match http.get_json(&url, None).await {
                Ok(json) => {
                    tracing::debug!(issuer = %self.issuer, %url, "server metadata fetched");
                    return ServerMetadata::parse(&self.issuer, &json);
                }
                // Not there: try the other well-known location.
                Err(GetError {
                    status: Some(404), ..
                }) => last = Some(format!("{url} answered 404")),
                Err(error) => {
                    return Err(Error::Discovery {
                        issuer: self.issuer.clone(),
                        problem: format!("{url}: {}", error.problem),
                        transient: error.transient,
                    });
                }
            }
        }
        Err(Error::Discovery {
            issuer: self.issuer.clone(),
            problem: last.unwrap_or_else(|| "no metadata found".into()),
            transient: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls_follow_rfc_8414_then_oidc() {
        let urls = well_known_urls("https://login.example.com/tenant-1").unwrap();
        assert_eq!(
            urls[0].as_str(),
            "https://login.example.com/.well-known/oauth-authorization-server/tenant-1"
        );
        assert_eq!(
            urls[1].as_str(),
            "https://login.example.com/tenant-1/.well-known/openid-configuration"
        );
        let urls = well_known_urls("https://example.com").unwrap();
        assert_eq!(
            urls[0].as_str(),
            "https://example.com/.well-known/oauth-authorization-server"
        );
        assert!(well_known_urls("https://example.com/?x=1").is_err());
    }

    #[test]
    fn another_issuer_is_refused_and_defaults_fill_in() {
        let doc = serde_json::json!({"issuer": "https://evil.example", "token_endpoint": "https://evil.example/token"});
        assert!(matches!(
            ServerMetadata::parse("https://good.example", &doc),
            Err(Error::IssuerMismatch { found, .. }) if found == "https://evil.example"
        ));
        let doc = serde_json::json!({"issuer": "https://good.example", "token_endpoint": "https://good.example/token"});
        let metadata = ServerMetadata::parse("https://good.example", &doc).unwrap();
        assert_eq!(
            metadata.token_endpoint_auth_methods(),
            ["client_secret_basic"]
        );
        let doc = serde_json::json!({"issuer": "https://good.example"});
        assert!(matches!(
            ServerMetadata::parse("https://good.example", &doc),
            Err(Error::Discovery { problem, .. }) if problem.contains("token_endpoint")
        ));
    }
}
