//! How an event stream ends when the token that opened it expires or is revoked.

/// What an open event stream does when the access token that opened it expires or is
/// revoked; see [`Emulator::set_stream_end`](super::Emulator::set_stream_end).
///
/// ```
/// use token_refresh_emulator::StreamEnd;
///
/// // DT's behaviour, the default: one last line with gRPC code 16, then a clean end.
/// assert_eq!(StreamEnd::default(), StreamEnd::Error { code: 16 });
/// // A proxy or load balancer that cuts the connection instead.
/// let cut = StreamEnd::Close;
/// # let _ = cut;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamEnd {
    /// Write one last line,
    /// `{"error":{"code":code,"message":"the access token has expired","status":…}}` (or
    /// `"…has been revoked"`), then end the body cleanly. `status` is `UNAUTHENTICATED` for
    /// code 16 (gRPC), `UNAUTHORIZED` for 401 and `UNKNOWN` for anything else.
    Error {
        /// The `code` of the error line: 16 (gRPC `UNAUTHENTICATED`), like DT, or e.g. 401.
        code: i32,
    },
    /// Drop the connection mid-stream, without an error line or the end of the chunked body:
    /// the client sees its body read fail.
    Close,
}

impl Default for StreamEnd {
    /// `Error { code: 16 }`, what DT's API does.
    fn default() -> Self {
        Self::Error { code: 16 }
    }
}

impl StreamEnd {
    /// The `status` string of an error line with `code`.
    pub(super) fn status_name(code: i32) -> &'static str {
        match code {
            16 => "UNAUTHENTICATED",
            401 => "UNAUTHORIZED",
            _ => "UNKNOWN",
        }
    }
}
