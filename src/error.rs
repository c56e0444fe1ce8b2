//! The crate's one error type.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Everything that can go wrong while obtaining or attaching an access token.
///
/// The error is cheap to [`Clone`] so that every caller waiting on one refresh receives the same
/// outcome. No variant ever carries a secret, a signed assertion or an access token: messages
/// name *what* is wrong (a variable, a field, the OAuth2 `error` code), never the credential,
/// and text a token endpoint sends back is scrubbed of anything secret that was sent to it.
///
/// Use [`Error::is_transient`] to decide whether retrying later can help, and [`Error::find`]
/// to get this error out of a `reqwest_middleware::Error` or a tower `BoxError`.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Some of the required environment variables are not set or are empty.
    #[error("environment variable{} {} not set or empty", plural(names.len()), names.join(", "))]
    MissingEnvVars {
        /// Every variable to set, e.g. `["DT_SERVICE_ACCOUNT_SECRET", "DT_SERVICE_ACCOUNT_EMAIL"]`.
        names: Vec<&'static str>,
    },

    /// Neither a credentials file nor the credential variables are set.
    #[error(
        "no service account credentials found: set DT_CREDENTIALS_FILE to a credentials file, \
         or set DT_SERVICE_ACCOUNT_KEY_ID, DT_SERVICE_ACCOUNT_SECRET and DT_SERVICE_ACCOUNT_EMAIL"
    )]
    NoCredentials,

    /// A credential value is empty (for credentials built in code, e.g. with
    /// [`ServiceAccount::new`](crate::ServiceAccount::new)).
    #[error("{field} is empty")]
    EmptyCredential {
        /// Which value is empty, e.g. `service account secret` or `client_id`.
        field: &'static str,
    },

    /// The credentials file cannot be read or does not have the expected content.
    #[error("credentials file {}: {problem}", path.display())]
    CredentialsFile {
        /// The file that was read.
        path: PathBuf,
        /// What is wrong, naming the field where there is one.
        problem: String,
    },

    /// The assertion file of [`JwtBearer::from_assertion_file`](crate::JwtBearer::from_assertion_file)
    /// cannot be read or is empty.
    #[error("assertion file {}: {problem}", path.display())]
    AssertionFile {
        /// The file that was read.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },

    /// The credentials ask for a signing algorithm this crate does not implement.
    #[error("unsupported signing algorithm {0:?}: only HS256 is supported")]
    UnsupportedAlgorithm(String),

    /// A setting is invalid, e.g. a token URL that does not parse.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The JWT assertion could not be signed.
    #[error("could not sign the JWT assertion: {0}")]
    Signing(String),

    /// A signing key (PEM, JWK or secret given to [`SigningKey`](crate::SigningKey)) is not
    /// usable: malformed, encrypted, public, of an unsupported type or too short.
    #[error("invalid signing key: {problem}")]
    InvalidKey {
        /// What is wrong with it, never key material.
        problem: String,
    },

    /// The key file of [`SigningKey::from_pem_file`](crate::SigningKey::from_pem_file)
    /// cannot be read or does not hold a usable key.
    #[error("key file {}: {problem}", path.display())]
    KeyFile {
        /// The file that was read.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },

    /// A [`Signer`](crate::Signer) did not answer within the token request's timeout.
    #[error("the signer did not answer within {0:?}")]
    SignerTimeout(Duration),

    /// A [`Signer`](crate::Signer) failed with an error of its own (built with
    /// [`Error::source`] or [`Error::transient`]): a KMS that refused or could not be
    /// reached.
    #[error("the signer failed: {source}")]
    Signer {
        /// The signer's own error.
        source: Arc<dyn std::error::Error + Send + Sync>,
        /// Whether retrying can help.
        transient: bool,
    },

    /// The token endpoint answered with an RFC 6749 §5.2 error response.
    #[error("token endpoint rejected the request (HTTP {status}): {error}{}{}", fmt_description(description.as_deref()), hint(error))]
    OAuth {
        /// The HTTP status code (an error may come with 200, too).
        status: u16,
        /// The OAuth2 `error` code, e.g. `invalid_grant`.
        error: String,
        /// The `error_description`, if the server sent one.
        description: Option<String>,
        /// The `error_uri`, if the server sent one.
        uri: Option<String>,
        /// How long the server asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },

    /// The token endpoint answered with an HTTP error status and no OAuth2 error body.
    #[error("token endpoint returned HTTP {status}")]
    HttpStatus {
        /// The HTTP status code.
        status: u16,
        /// How long the server asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },

    /// The token endpoint answered with a redirect. Token requests never follow one: the
    /// request carries a credential, and a redirect could hand it to another server.
    #[error(
        "the token endpoint redirected the request{}: token requests are never redirected, \
         so set the token URL to the endpoint itself",
        location.as_deref().map(|l| format!(" to {l}")).unwrap_or_default()
    )]
    Redirect {
        /// The origin it pointed to (scheme, host and port; no path or query), if known.
        location: Option<String>,
    },

    /// The token endpoint could not be reached.
    #[error("could not connect to the token endpoint: {0}")]
    Connect(String),

    /// The token request did not complete in time.
    #[error("token request timed out after {0:?}")]
    Timeout(Duration),

    /// The token request failed in transit (after connecting).
    #[error("token request failed: {0}")]
    Transport(String),

    /// The token response is larger than the crate accepts.
    #[error("token response is larger than {limit} bytes")]
    ResponseTooLarge {
        /// The size cap in bytes.
        limit: usize,
    },

    /// The token response body is not a JSON object.
    #[error("token response is not a JSON object: {0}")]
    InvalidJson(String),

    /// The token response lacks a required field.
    #[error("token response lacks the `{0}` field")]
    MissingField(&'static str),

    /// A field of the token response has an unusable value.
    #[error("token response field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The field, e.g. `expires_in`.
        field: &'static str,
        /// What is wrong with it (never the token itself).
        reason: String,
    },

    /// The token endpoint issued a token that is not a bearer token.
    #[error("unsupported token_type {0:?}: only bearer tokens are supported")]
    UnsupportedTokenType(String),

    /// A token source returned a token that cannot be used.
    #[error("invalid access token: {0}")]
    InvalidToken(&'static str),

    /// A token source returned a token that is already inside its hard margin (it lives too
    /// short, or the answer took too long): a failed attempt, retried like a slow network.
    #[error(
        "the token source returned a token that expires within its hard margin \
         (it lives {lifetime:.1?} from the request, and the answer took {latency:.1?})"
    )]
    ExpiredOnArrival {
        /// The token's whole lifetime.
        lifetime: Duration,
        /// How long after the request the token arrived.
        latency: Duration,
    },

    /// A custom [`TokenSource`](crate::TokenSource) failed.
    #[error("token source failed: {source}")]
    Source {
        /// The source's own error.
        source: Arc<dyn std::error::Error + Send + Sync>,
        /// Whether retrying can help.
        transient: bool,
    },

    /// A credential would go over plain http to a host that is not loopback.
    #[error(
        "refusing to send {sending} over plain http to {host}: use https, or allow it with \
         {allow_with}"
    )]
    InsecureTransport {
        /// The host the request was going to.
        host: String,
        /// What would have been sent, e.g. `the access token` or `the signed JWT assertion`.
        sending: &'static str,
        /// How to allow it, naming the setter.
        allow_with: &'static str,
    },

    /// A refresh failed after more than one attempt; `last` is the last attempt's error.
    #[error("token refresh failed after {attempts} attempts over {elapsed:.1?}: {last}")]
    Retried {
        /// Attempts made, the first included.
        attempts: u32,
        /// Time from the first attempt to the end of the last.
        elapsed: Duration,
        /// The last attempt's error, which decides [`is_transient`](Error::is_transient).
        last: Box<Error>,
    },

    /// The caller waited as long as it may for a token (the provider's
    /// [`max_wait`](crate::TokenProviderBuilder::max_wait), or the request's own timeout)
    /// while the refresh was still running, or (with a [token store](crate::store)) while
    /// another process of the fleet held the store's refresh lease. The refresh goes on for
    /// later callers.
    #[error(
        "no access token within {waited:.1?}: {} (attempt {attempt}{})",
        if *waiting_on_lease {
            "waiting on another process of the fleet, which holds the token store's refresh \
             lease and has stored no token yet"
        } else {
            "the token refresh is still running"
        },
        last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default()
    )]
    WaitTimeout {
        /// How long the caller waited.
        waited: Duration,
        /// The attempt the refresh was on.
        attempt: u32,
        /// The error of the refresh's previous attempt, if one failed.
        last_error: Option<Box<Error>>,
        /// Whether the refresh was waiting for another process of the fleet (the holder
        /// of the token store's lease) to store a token, rather than fetching one itself.
        waiting_on_lease: bool,
    },

    /// The token source panicked; the provider cools down as after any failed refresh.
    #[error("the token refresh was aborted: the token source panicked")]
    RefreshAborted,

    /// The provider was used outside a Tokio runtime.
    #[error("token-refresh needs a Tokio runtime: call it from within one")]
    NoRuntime,

    /// The Tokio runtime has no time driver, which the provider needs for its timeouts,
    /// backoff and expiry.
    #[error(
        "the Tokio runtime has no time driver: build it with `enable_time()` or `enable_all()`"
    )]
    TimeDisabled,

    /// The Tokio runtime has no I/O driver, which a token request needs for its socket:
    /// nothing was sent (reqwest would have panicked).
    #[error(
        "the Tokio runtime has no I/O driver, which the token request needs: build it with \
         `enable_io()` or `enable_all()`"
    )]
    IoDisabled,

    /// The token store that holds a grant's fleet-wide state (a rotating refresh token)
    /// failed; the grant spent nothing rather than risk a refresh token another process may
    /// have spent. Transient.
    #[error("the token store failed: {0}")]
    Store(String),

    /// The refresh token was refused for good (`invalid_grant`: expired, revoked, or spent
    /// by someone else): the user or client must authorize again and start a new series.
    #[error(
        "the refresh token was refused ({error}{}): authorize again to get a new refresh token",
        fmt_description(description.as_deref())
    )]
    ReauthorizationNeeded {
        /// The OAuth2 `error` the server sent, `invalid_grant`.
        error: String,
        /// The server's `error_description`, scrubbed.
        description: Option<String>,
    },

    /// The subject (or actor) token of a token exchange could not be had.
    #[error("subject token from {from}: {problem}")]
    SubjectToken {
        /// Where it was read: a file's path, `GitHub Actions`, or the source's name.
        from: String,
        /// What went wrong, e.g. "the file is empty".
        problem: String,
        /// Whether trying again later may help (a file being rewritten, a 5xx).
        transient: bool,
    },

    /// An authorization server's metadata (RFC 8414 / OpenID discovery) could not be had or
    /// is unusable.
    #[error("discovery for issuer {issuer}: {problem}")]
    Discovery {
        /// The issuer asked for.
        issuer: String,
        /// What went wrong.
        problem: String,
        /// Whether trying again later may help (a timeout, a 5xx).
        transient: bool,
    },

    /// A DPoP token request was answered with a `Bearer` token: the server ignored the
    /// proof, and the token is not bound to the key.
    #[error(
        "the token endpoint answered a DPoP token request with a Bearer token: allow that with \
         TokenEndpoint::dpop_allow_bearer(true), or check the server's DPoP settings"
    )]
    DpopNotBound,

    /// A platform's identity service (a cloud metadata server, Azure IMDS or App Service,
    /// Google STS or IAM Credentials) answered with something other than a token, or could
    /// not be reached. `problem` names what is wrong and the variable or setting to check.
    #[error("{service}: {problem}")]
    Cloud {
        /// The service and where it was asked, e.g. `the GCP metadata server at
        /// http://169.254.169.254`.
        service: String,
        /// What went wrong, e.g. "the answer lacks the `Metadata-Flavor: Google` header".
        problem: String,
        /// Whether trying again later may help (a timeout, a 5xx, a 429).
        transient: bool,
        /// How long the service asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },

    /// A chain of credential sources (Google's Application Default Credentials) found none:
    /// `tried` lists each place looked and why it gave nothing.
    #[error("no {chain} found; tried: {}", tried.join("; "))]
    NoCredentialsFound {
        /// What was looked for, e.g. `Google Application Default Credentials`.
        chain: &'static str,
        /// Each place tried, in order, with what it gave, e.g.
        /// `GOOGLE_APPLICATION_CREDENTIALS (not set)`.
        tried: Vec<String>,
    },

    /// The metadata document names another issuer than the one asked for (RFC 8414 §3.3):
    /// refused, as a mix-up attack or a misconfiguration would look.
    #[error("the metadata of issuer {expected} names issuer {found}: refused (RFC 8414 §3.3)")]
    IssuerMismatch {
        /// The issuer asked for.
        expected: String,
        /// The issuer the document names.
        found: String,
    },

    /// The client left its authentication method to the server's metadata
    /// ([`OAuthClient::with_key`](crate::OAuthClient::with_key),
    /// [`OAuthClient::new`](crate::OAuthClient::new) with a
    /// [discovered](crate::TokenEndpoint::discover) endpoint), and no method the server lists
    /// fits the client's credential. Nothing was sent. Permanent.
    #[error(
        "the authorization server {issuer} lists no client authentication for {credential} \
         (token_endpoint_auth_methods_supported: [{}]; \
         token_endpoint_auth_signing_alg_values_supported: [{}]): {hint}, or choose the method \
         with client_auth(ClientAuth::...)",
        methods.join(", "),
        signing_algs.join(", ")
    )]
    ClientAuthUnsupported {
        /// The issuer whose metadata was read.
        issuer: String,
        /// What the client offered, e.g. `a client secret` or `ES256 key (private_key_jwt)`.
        credential: String,
        /// The server's `token_endpoint_auth_methods_supported`.
        methods: Vec<String>,
        /// The server's `token_endpoint_auth_signing_alg_values_supported`.
        signing_algs: Vec<String>,
        /// What to change.
        hint: String,
    },
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn fmt_description(description: Option<&str>) -> String {
    description.map(|d| format!(": {d}")).unwrap_or_default()
}

/// What to check for an OAuth2 `error` whose own words rarely say: the server knows which
/// credential it refused, but seldom tells.
fn hint(error: &str) -> &'static str {
    match error {
        "invalid_client" => {
            " (check the client id and secret, the key or certificate registered for the \
             client, and the authentication method: ClientAuth::Basic, Post, PrivateKeyJwt or \
             ClientSecretJwt, as the client is registered)"
        }
        _ => "",
    }
}

impl Error {
    /// Wraps the error of a custom [`TokenSource`](crate::TokenSource) as permanent: the
    /// provider does not retry it within one refresh.
    pub fn source<E>(error: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Self::Source {
            source: Arc::new(error),
            transient: false,
        }
    }

    /// Wraps the error of a custom [`TokenSource`](crate::TokenSource) as transient: the
    /// provider retries it with backoff.
    pub fn transient<E>(error: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Self::Source {
            source: Arc::new(error),
            transient: true,
        }
    }

    /// Whether retrying the same request later may succeed.
    ///
    /// Transient: connection failures, timeouts, broken transfers, HTTP 408, 429 and 5xx
    /// (with or without an OAuth2 body), the OAuth2 codes `temporarily_unavailable` and
    /// `slow_down`, a caller's [`WaitTimeout`](Error::WaitTimeout), a token that
    /// [expired on arrival](Error::ExpiredOnArrival), a [store](Error::Store) that failed,
    /// and sources, subject tokens, discovery fetches and cloud identity services that
    /// said so.
    /// Everything else — bad credentials, `invalid_grant`, `invalid_client`, malformed
    /// responses, redirects, configuration — is permanent. A [`Retried`](Error::Retried)
    /// error is what its last attempt was.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout(_) | Self::Transport(_) => true,
            Self::SignerTimeout(_) => true,
            Self::WaitTimeout { .. } | Self::ExpiredOnArrival { .. } => true,
            Self::HttpStatus { status, .. } => transient_status(*status),
            Self::OAuth { status, error, .. } => {
                transient_status(*status)
                    || matches!(error.as_str(), "temporarily_unavailable" | "slow_down")
            }
            Self::Source { transient, .. }
            | Self::Signer { transient, .. }
            | Self::SubjectToken { transient, .. }
            | Self::Discovery { transient, .. }
            | Self::Cloud { transient, .. } => *transient,
            Self::Store(_) => true,
            Self::Retried { last, .. } => last.is_transient(),
            _ => false,
        }
    }

    /// The delay the server asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.last_attempt() {
            Self::OAuth { retry_after, .. }
            | Self::HttpStatus { retry_after, .. }
            | Self::Cloud { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The OAuth2 `error` code of an [`Error::OAuth`], e.g. `invalid_grant`.
    pub fn oauth_error(&self) -> Option<&str> {
        match self.last_attempt() {
            Self::OAuth { error, .. } | Self::ReauthorizationNeeded { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The error of the last attempt: `last` of a [`Retried`](Error::Retried) error, else
    /// `self`. Match on this to tell causes apart whatever the number of attempts.
    pub fn last_attempt(&self) -> &Error {
        match self {
            Self::Retried { last, .. } => last.last_attempt(),
            other => other,
        }
    }

    /// Finds this crate's error inside another error: a `reqwest_middleware::Error` (also
    /// behind `reqwest-retry` and `reqwest-tracing`), a tower `BoxError`, an `anyhow`-style
    /// chain, or the error itself.
    ///
    /// `reqwest_middleware::Error::Middleware` is `#[error(transparent)]` and
    /// `reqwest-retry` wraps errors in its own type, so a plain downcast of the outer error
    /// does not find a token error there. A walk of `source()` does (the middleware's token
    /// error returns this crate's error as its source), and so does this, in one call, also
    /// through the `anyhow` errors that `reqwest_middleware::Error::Middleware` holds.
    ///
    /// ```
    /// # fn handle(error: &(dyn std::error::Error + 'static)) {
    /// if let Some(token_error) = token_refresh::Error::find(error) {
    ///     eprintln!("no token: {token_error} (transient: {})", token_error.is_transient());
    /// }
    /// # }
    /// ```
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(found) = error.downcast_ref::<Error>() {
                return Some(found);
            }
            #[cfg(feature = "reqwest")]
            if let Some(reqwest_middleware::Error::Middleware(inner)) =
                error.downcast_ref::<reqwest_middleware::Error>()
            {
                // `anyhow::Error::chain` starts with the wrapped error itself, which the
                // transparent `source()` skips.
                if let Some(found) = inner.chain().find_map(|e| Error::find(e)) {
                    return Some(found);
                }
            }
            next = error.source();
        }
        None
    }
}

fn transient_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Text a server sent back, made safe to keep in an [`Error`] and to log: every occurrence
/// of a credential that was sent to it is replaced, control characters are dropped, and the
/// length is capped.
#[derive(Default)]
pub(crate) struct Scrubber {
    secrets: Vec<String>,
}

/// Longest server text kept in an error, in characters.
const MAX_SERVER_TEXT: usize = 512;

/// Shortest secret worth scrubbing: shorter strings would match innocent text.
const MIN_SECRET_LEN: usize = 6;

impl Scrubber {
    /// Scrubs `secret` as it is, as it goes into a form (`application/x-www-form-urlencoded`)
    /// and, for a JWT, each of its dot-separated parts.
    pub(crate) fn secret(mut self, secret: &str) -> Self {
        let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let parts = std::iter::once(secret)
            .chain(std::iter::once(encoded.as_str()))
            .chain(secret.split('.'));
        for part in parts {
            if part.len() >= MIN_SECRET_LEN && !self.secrets.iter().any(|s| s == part) {
                self.secrets.push(part.to_owned());
            }
        }
        self
    }

    pub(crate) fn text(&self, text: &str) -> String {
        let mut text = text.to_owned();
        // Longest first, so a whole assertion is replaced before its parts.
        let mut secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for secret in secrets {
            if text.contains(secret) {
                text = text.replace(secret, "[REDACTED]");
            }
        }
        let mut clean: String = text.chars().filter(|c| !c.is_control()).collect();
        if let Some((cut, _)) = clean.char_indices().nth(MAX_SERVER_TEXT) {
            clean.truncate(cut);
            clean.push('…');
        }
        clean
    }
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrubber").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_classification() {
        let status = |status| Error::HttpStatus {
            status,
            retry_after: None,
        };
        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(status(408).is_transient());
        assert!(!status(400).is_transient());
        assert!(!status(401).is_transient());
        let grant = Error::OAuth {
            status: 400,
            error: "invalid_grant".into(),
            description: None,
            uri: None,
            retry_after: None,
        };
        assert!(!grant.is_transient());
        assert_eq!(grant.oauth_error(), Some("invalid_grant"));
        assert!(Error::Connect("refused".into()).is_transient());
        assert!(!Error::MissingField("access_token").is_transient());
    }

    #[test]
    fn retried_errors_say_how_often_and_keep_their_last_cause() {
        let last = Error::Timeout(Duration::from_secs(2));
        let e = Error::Retried {
            attempts: 4,
            elapsed: Duration::from_millis(9_500),
            last: Box::new(last),
        };
        assert!(e.is_transient());
        assert!(matches!(e.last_attempt(), Error::Timeout(_)));
        let text = e.to_string();
        assert!(text.contains("after 4 attempts over 9.5s"), "{text}");
        assert!(text.contains("timed out after 2s"), "{text}");
        assert!(format!("{e:?}").starts_with("Retried {"), "{e:?}");
    }

    #[test]
    fn missing_variables_are_named_together() {
        let e = Error::MissingEnvVars {
            names: vec!["A", "B"],
        };
        assert_eq!(e.to_string(), "environment variables A, B not set or empty");
    }

    #[test]
    fn scrubber_replaces_secrets_and_caps_length() {
        let jwt = "eyJhbGciOi.eyJpc3MiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
        let s = Scrubber::default().secret(jwt).secret("hunter22");
        let out = s.text(&format!(
            "bad assertion {jwt} / sig c2lnbmF0dXJlLXNpZ25hdHVyZQ / hunter22\n"
        ));
        assert!(!out.contains("c2lnbmF0dXJl"), "{out}");
        assert!(!out.contains("hunter22"), "{out}");
        assert!(!out.contains('\n'));
        let long = s.text(&"x".repeat(10_000));
        assert!(long.chars().count() <= MAX_SERVER_TEXT + 1);
    }
}
