//! The crate's one error type.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Everything that can go wrong while obtaining or attaching an access token.
///
/// The error is cheap to [`Clone`] so that every caller waiting on one refresh receives the same
/// outcome. No variant ever carries a secret, a signed assertion or an access token: messages
/// name *what* is wrong (a variable, a field, the OAuth2 `error` code), never the credential.
///
/// Use [`Error::is_transient`] to decide whether retrying later can help.
#[derive(Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A required environment variable is not set or is empty.
    #[error("environment variable {name} is not set or is empty")]
    MissingEnvVar {
        /// The variable to set, e.g. `DT_SERVICE_ACCOUNT_SECRET`.
        name: &'static str,
    },

    /// Neither a credentials file nor the credential variables are set.
    #[error(
        "no service account credentials found: set DT_CREDENTIALS_FILE to a credentials file, \
         or set DT_SERVICE_ACCOUNT_KEY_ID, DT_SERVICE_ACCOUNT_SECRET and DT_SERVICE_ACCOUNT_EMAIL"
    )]
    NoCredentials,

    /// A service account value is empty (for accounts built with
    /// [`ServiceAccount::new`](crate::ServiceAccount::new)).
    #[error("service account {field} is empty")]
    EmptyCredential {
        /// Which value is empty: `key id`, `email` or `secret`.
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

    /// The credentials ask for a signing algorithm this crate does not implement.
    #[error("unsupported signing algorithm {0:?}: only HS256 is supported")]
    UnsupportedAlgorithm(String),

    /// A setting is invalid, e.g. a token URL that does not parse.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The JWT assertion could not be signed.
    #[error("could not sign the JWT assertion: {0}")]
    Signing(String),

    /// The token endpoint answered with an RFC 6749 §5.2 error response.
    #[error("token endpoint rejected the request (HTTP {status}): {error}{}", fmt_description(description.as_deref()))]
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

    /// A custom [`TokenSource`](crate::TokenSource) failed.
    #[error("token source failed: {source}")]
    Source {
        /// The source's own error.
        source: Arc<dyn std::error::Error + Send + Sync>,
        /// Whether retrying can help.
        transient: bool,
    },

    /// The token would be sent over plain http to a host that is not loopback.
    #[error(
        "refusing to send an access token over plain http to {host}: use https, \
         or allow it with `allow_http(true)`"
    )]
    InsecureTransport {
        /// The host the request was going to.
        host: String,
    },

    /// The refresh was abandoned before it finished: its runtime shut down, or the token
    /// source panicked.
    #[error(
        "the token refresh was aborted before it finished (runtime shut down or token source panicked)"
    )]
    RefreshAborted,

    /// The provider was used outside a Tokio runtime.
    #[error("token-refresh needs a Tokio runtime with the time driver enabled")]
    NoRuntime,
}

fn fmt_description(description: Option<&str>) -> String {
    description.map(|d| format!(": {d}")).unwrap_or_default()
}

impl fmt::Debug for Error {
    /// `Debug` shows the same text as `Display`: no variant holds a secret, and the shape
    /// stays readable in `unwrap()` panics and test failures.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({self})")
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
    /// `slow_down`, and sources that said so. Everything else — bad credentials,
    /// `invalid_grant`, `invalid_client`, malformed responses, configuration — is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout(_) | Self::Transport(_) => true,
            Self::HttpStatus { status, .. } => transient_status(*status),
            Self::OAuth { status, error, .. } => {
                transient_status(*status)
                    || matches!(error.as_str(), "temporarily_unavailable" | "slow_down")
            }
            Self::Source { transient, .. } => *transient,
            _ => false,
        }
    }

    /// The delay the server asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::OAuth { retry_after, .. } | Self::HttpStatus { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The OAuth2 `error` code of an [`Error::OAuth`], e.g. `invalid_grant`.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            Self::OAuth { error, .. } => Some(error),
            _ => None,
        }
    }
}

fn transient_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
}
