//! Authorization server metadata (RFC 8414, OpenID Connect Discovery): where the token
//! endpoint is and what it supports, fetched once per TTL, never per request.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::exchange::http::{GetError, Http};
use crate::signing::SigningAlgorithm;

/// What a client that left its authentication method open offers to authenticate with.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Offer {
    /// A client secret: `client_secret_basic` or `client_secret_post`.
    Secret,
    /// A key that signs client assertions with this algorithm: `private_key_jwt`, or
    /// `client_secret_jwt` for HS256.
    Key(SigningAlgorithm),
}

/// A client authentication method (RFC 8414 `token_endpoint_auth_methods_supported`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthMethod {
    Basic,
    Post,
    Assertion,
}

impl Offer {
    /// The method without metadata to choose by: HTTP Basic for a secret (what RFC 6749
    /// §2.3.1 makes every server support), an assertion for a key.
    pub(crate) fn default_method(self) -> AuthMethod {
        match self {
            Offer::Secret => AuthMethod::Basic,
            Offer::Key(_) => AuthMethod::Assertion,
        }
    }
}

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

    /// The client authentication method for a client that offers `offer` and left the method
    /// open: for a secret, `client_secret_basic` if listed, else `client_secret_post`; for a
    /// key, `private_key_jwt` (`client_secret_jwt` for an HMAC key) if listed, with the key's
    /// algorithm among `token_endpoint_auth_signing_alg_values_supported` when the server
    /// lists any. None that fits is [`Error::ClientAuthUnsupported`], saying what the server
    /// lists and what to change.
    pub(crate) fn choose_client_auth(&self, offer: Offer) -> Result<AuthMethod> {
        let lists = |method: &str| self.auth_methods.iter().any(|m| m == method);
        let refuse = |credential: String, hint: String| Error::ClientAuthUnsupported {
            issuer: self.issuer.clone(),
            credential,
            methods: self.auth_methods.clone(),
            signing_algs: self.auth_signing_algs.clone(),
            hint,
        };
        match offer {
            Offer::Secret if lists("client_secret_basic") => Ok(AuthMethod::Basic),
            Offer::Secret if lists("client_secret_post") => Ok(AuthMethod::Post),
            Offer::Secret => Err(refuse(
                "a client secret".into(),
                if lists("client_secret_jwt") {
                    "sign with the secret: ClientAuth::client_secret_jwt(secret)".into()
                } else {
                    "give the client a key the server accepts: OAuthClient::with_key".into()
                },
            )),
            Offer::Key(alg) => {
                let method = match alg {
                    SigningAlgorithm::HS256 => "client_secret_jwt",
                    _ => "private_key_jwt",
                };
                let credential = format!("{} key ({method})", alg.name());
                if !lists(method) {
                    let hint = if lists("client_secret_basic") || lists("client_secret_post") {
                        "authenticate with the client secret: OAuthClient::new".to_owned()
                    } else {
                        format!("this server takes no {method} client assertions")
                    };
                    return Err(refuse(credential, hint));
                }
                let signs = self.auth_signing_algs.is_empty()
                    || self.auth_signing_algs.iter().any(|a| a == alg.name());
                if signs {
                    return Ok(AuthMethod::Assertion);
                }
                let hint = match alg {
                    SigningAlgorithm::RS256 | SigningAlgorithm::PS256 => {
                        "sign with an algorithm it lists (an RSA key signs RS256 or PS256: \
                         SigningKey::with_algorithm), or use a key of another type"
                    }
                    _ => "use a key whose algorithm it lists",
                };
                Err(refuse(credential, hint.to_owned()))
            }
        }
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

    fn server(methods: Option<&[&str]>, algs: Option<&[&str]>) -> ServerMetadata {
        let mut doc = serde_json::json!({
            "issuer": "https://as.example",
            "token_endpoint": "https://as.example/token",
        });
        if let Some(methods) = methods {
            doc["token_endpoint_auth_methods_supported"] = serde_json::json!(methods);
        }
        if let Some(algs) = algs {
            doc["token_endpoint_auth_signing_alg_values_supported"] = serde_json::json!(algs);
        }
        ServerMetadata::parse("https://as.example", &doc).unwrap()
    }

    #[test]
    fn a_secret_gets_basic_unless_only_post_is_listed() {
        use AuthMethod::{Basic, Post};
        let choose = |methods| server(methods, None).choose_client_auth(Offer::Secret);
        // RFC 8414's default when the list is absent: client_secret_basic.
        assert_eq!(choose(None).unwrap(), Basic);
        let both: &[&str] = &["client_secret_post", "client_secret_basic"];
        assert_eq!(choose(Some(both)).unwrap(), Basic);
        let post: &[&str] = &["client_secret_post", "private_key_jwt"];
        assert_eq!(choose(Some(post)).unwrap(), Post);
        let keys: &[&str] = &["private_key_jwt", "client_secret_jwt"];
        let error = choose(Some(keys)).unwrap_err();
        assert!(
            matches!(&error, Error::ClientAuthUnsupported { hint, .. } if hint.contains("client_secret_jwt(secret)")),
            "{error}"
        );
    }

    #[test]
    fn a_key_needs_its_method_and_its_algorithm_listed() {
        use SigningAlgorithm::{ES256, EdDSA, HS256, RS256};
        let pkjwt: &[&str] = &["private_key_jwt", "client_secret_basic"];
        let choose = |methods, algs, alg| server(methods, algs).choose_client_auth(Offer::Key(alg));
        assert_eq!(
            choose(Some(pkjwt), Some(&["ES256"][..]), ES256).unwrap(),
            AuthMethod::Assertion
        );
        // No algorithm list (RFC 8414 wants one with these methods): the key's is tried.
        assert_eq!(
            choose(Some(pkjwt), None, EdDSA).unwrap(),
            AuthMethod::Assertion
        );
        let error = choose(Some(pkjwt), Some(&["ES256", "PS256"][..]), RS256).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("RS256 key (private_key_jwt)"), "{text}");
        assert!(text.contains("[ES256, PS256]"), "{text}");
        assert!(text.contains("with_algorithm"), "{text}");
        // An HMAC key is client_secret_jwt, which this server does not list.
        let error = choose(Some(pkjwt), None, HS256).unwrap_err();
        assert!(error.to_string().contains("client_secret_jwt"), "{error}");
        assert!(error.to_string().contains("OAuthClient::new"), "{error}");
        // Absent list: client_secret_basic only.
        assert!(choose(None, None, ES256).is_err());
        assert!(!choose(None, None, ES256).unwrap_err().is_transient());
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
