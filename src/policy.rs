//! The one policy both integrations apply: attach the token, and after a 401 refresh it and
//! say whether to resend.

use http::header::AUTHORIZATION;
use http::{HeaderMap, StatusCode};

use crate::error::Result;
use crate::provider::TokenProvider;
use crate::token::AccessToken;
use crate::transport::check_transport;

#[derive(Clone, Debug)]
pub(crate) struct AuthPolicy {
    provider: TokenProvider,
    allow_http: bool,
}

impl AuthPolicy {
    pub(crate) fn new(provider: TokenProvider) -> Self {
        Self {
            provider,
            allow_http: false,
        }
    }

    pub(crate) fn set_allow_http(&mut self, allow: bool) {
        self.allow_http = allow;
    }

    /// Whether a token may be sent to this scheme and host: plain http only to loopback,
    /// unless allowed.
    pub(crate) fn check_target(&self, scheme: Option<&str>, host: Option<&str>) -> Result<()> {
        check_transport(scheme, host, self.allow_http)
    }

    /// Attaches `Authorization: Bearer …` unless the caller set an `Authorization` header.
    /// Returns the token attached, `None` if the caller's header was left alone. `target` is
    /// the request's [`check_target`](Self::check_target), which only matters when a token
    /// is to be attached.
    pub(crate) async fn authorize(
        &self,
        target: Result<()>,
        headers: &mut HeaderMap,
    ) -> Result<Option<AccessToken>> {
        if headers.contains_key(AUTHORIZATION) {
            return Ok(None);
        }
        target?;
        let token = self.provider.token().await?;
        Self::reauthorize(headers, &token);
        Ok(Some(token))
    }

    /// Called with the status of a response to a request that carried `sent`. On 401 (only
    /// 401: a 403 means the token is valid but not allowed) the token is invalidated, and if
    /// the request can be `replayed` a fresh token is returned to resend it with. `None`:
    /// return the response as it is — also when the provider hands back the rejected token.
    pub(crate) async fn retry_token(
        &self,
        status: StatusCode,
        sent: &AccessToken,
        replayable: bool,
    ) -> Result<Option<AccessToken>> {
        if status != StatusCode::UNAUTHORIZED {
            return Ok(None);
        }
        self.provider.invalidate(sent);
        if !replayable {
            tracing::debug!("401 for a request that cannot be replayed: returning it");
            return Ok(None);
        }
        let fresh = self.provider.token().await?;
        if fresh.same_value(sent) {
            tracing::debug!("401, but the provider has no newer token: returning it");
            return Ok(None);
        }
        tracing::debug!("401: resending once with a fresh token");
        Ok(Some(fresh))
    }

    /// Sets the `Authorization` header to `token` (the first send's, or the retry's).
    pub(crate) fn reauthorize(headers: &mut HeaderMap, token: &AccessToken) {
        headers.insert(AUTHORIZATION, token.header_value());
    }
}
