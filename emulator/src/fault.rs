//! Faults the emulator's token endpoint can be told to produce.

use std::time::Duration;

/// A failure the token endpoint produces instead of its normal answer; see
/// [`Emulator::inject_fault`](super::Emulator::inject_fault).
///
/// ```
/// use std::time::Duration;
/// use token_refresh_emulator::Fault;
///
/// let busy = Fault::status(429).with_retry_after("2"); // 429, `Retry-After: 2`, empty body
/// let down = Fault::status(503); // 503, empty body
/// let denied = Fault::oauth_error(400, "invalid_grant"); // an RFC 6749 §5.2 error body
/// let slow = Fault::Delay(Duration::from_secs(2)); // a normal answer, two seconds late
/// # let _ = (busy, down, denied, slow);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with `status` and an empty body, plus a `Retry-After` header if given.
    Status {
        /// The HTTP status code; one that is not a valid status becomes 500.
        status: u16,
        /// The `Retry-After` value, sent as given: delay-seconds (`"2"`) or an HTTP-date.
        retry_after: Option<String>,
    },
    /// Answer with `status` and the JSON body `{"error": error, "error_description": …}`.
    OAuthError {
        /// The HTTP status code; one that is not a valid status becomes 500.
        status: u16,
        /// The OAuth2 `error` code, e.g. `invalid_grant` or `invalid_client`.
        error: String,
    },
    /// Wait this long (on Tokio's clock), then handle the request normally.
    Delay(Duration),
    /// Answer 200 with a body that is not JSON (`<html>oops</html>`).
    Garbage,
    /// Close the connection without sending any response.
    DropConnection,
}

impl Fault {
    /// [`Fault::Status`] without `Retry-After`.
    pub fn status(status: u16) -> Self {
        Self::Status {
            status,
            retry_after: None,
        }
    }

    /// [`Fault::OAuthError`].
    pub fn oauth_error(status: u16, error: impl Into<String>) -> Self {
        Self::OAuthError {
            status,
            error: error.into(),
        }
    }

    /// Sets the `Retry-After` value of a [`Fault::Status`]; other faults are returned unchanged.
    pub fn with_retry_after(self, value: impl Into<String>) -> Self {
        match self {
            Self::Status { status, .. } => Self::Status {
                status,
                retry_after: Some(value.into()),
            },
            other => other,
        }
    }
}
