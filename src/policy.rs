//! The one policy both integrations apply: where a token may go, what counts as a rejection,
//! and what to do about one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::params::TokenParams;
use crate::provider::{KeyedTokenProvider, TokenProvider, Want};
use crate::resource::ResourceDiscovery;
use crate::route::{Route, Target};
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
    /// HTTP 401 or 403 `WWW-Authenticate: Bearer error="insufficient_scope"`: a fresh token
    /// of the same scope does not cure it; one with the scope the challenge names may (a
    /// step-up, for a keyed provider's routed request).
    Scope,
    /// HTTP 401 with an RFC 9728 `resource_metadata` challenge: the resource says where its
    /// authorization server is (for a request without a token, with discovery on).
    Discover,
    /// Neither: a 5xx, or a rejection a fresh token does not cure (a bad DPoP proof).
    Other,
}

/// What a request's first send was, for [`AuthPolicy::recover`]: its pick and token (none
/// for a request watched for discovery), its URI, and what its caller asked for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct First<'a> {
    pub(crate) pick: Option<Pick>,
    pub(crate) sent: Option<&'a AccessToken>,
    pub(crate) uri: &'a str,
    pub(crate) min: Option<MinValidity>,
    pub(crate) deadline: Option<Instant>,
}

/// A request to send again, after [`AuthPolicy::recover`]: with `token`, of `pick`.
#[derive(Clone, Debug)]
pub(crate) struct Again {
    pub(crate) token: AccessToken,
    pub(crate) pick: Pick,
    /// The wider parameters of a step-up, kept for the route if the resend works.
    stepped: Option<TokenParams>,
}

impl Again {
    /// The same token again (with the server's DPoP nonce).
    pub(crate) fn same(token: AccessToken, pick: Pick) -> Self {
        Self {
            token,
            pick,
            stepped: None,
        }
    }
}

/// Which tokens a request gets: the policy's choice for its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// No routes: the provider's token (a keyed provider's default key).
    Default,
    /// The route at this index.
    Route(usize),
    /// The route discovery learned at this index.
    Learned(usize),
}

/// Where a policy's tokens come from.
#[derive(Clone, Debug)]
pub(crate) enum Tokens {
    One(TokenProvider),
    Keyed(KeyedTokenProvider),
    /// Only from what RFC 9728 discovery learns.
    Discovered,
}

#[derive(Clone, Debug)]
pub(crate) struct AuthPolicy {
    tokens: Tokens,
    allow_http: bool,
    /// Bound destinations and their token parameters; empty: every origin, the default
    /// parameters.
    routes: Arc<[Route]>,
    /// A route that does not parse, or one the tokens cannot serve: every request fails
    /// with it.
    bad_origin: Option<Error>,
    /// RFC 9728 discovery of a resource's authorization server, when asked for.
    discovery: Option<Arc<ResourceDiscovery>>,
    /// Longest token wait per request; `None`: the provider's `max_wait`.
    max_token_wait: Option<Duration>,
    allow_with: &'static str,
    /// The last `DPoP-Nonce` each origin gave (RFC 9449 §9), for the proofs of DPoP-bound
    /// tokens.
    nonces: Arc<Mutex<HashMap<String, String>>>,
}

impl AuthPolicy {
    /// `allow_with` names the integration's `allow_http` setter for error messages.
    pub(crate) fn new(tokens: Tokens, allow_with: &'static str) -> Self {
        Self {
            tokens,
            allow_http: false,
            routes: Arc::from(Vec::new()),
            bad_origin: None,
            discovery: None,
            max_token_wait: None,
            nonces: Arc::default(),
            allow_with,
        }
    }

    pub(crate) fn set_allow_http(&mut self, allow: bool) {
        self.allow_http = allow;
    }

    /// Adds an origin tokens are bound to, with the default parameters. An invalid one
    /// makes every request fail with [`Error::Config`] naming it: a typo must send tokens
    /// neither nowhere nor everywhere.
    pub(crate) fn add_origin(&mut self, origin: &str) {
        self.add_route(origin, TokenParams::default());
    }

    /// Adds a route: requests to `target` (an origin, or an origin and a path prefix) get
    /// tokens for `params`. Parameters need a keyed provider; a route for a destination
    /// given before replaces it.
    pub(crate) fn add_route(&mut self, target: &str, params: TokenParams) {
        let route = match Route::parse(target, params) {
            Ok(route) => route,
            Err(error) => {
                self.bad_origin.get_or_insert(error);
                return;
            }
        };
        if !route.params.is_empty() && !matches!(self.tokens, Tokens::Keyed(_)) {
            self.bad_origin.get_or_insert(Error::Config(format!(
                "route({target:?}, {:?}): token parameters need a keyed provider \
                 (TokenProvider::keyed and the integration's keyed constructor)",
                route.params
            )));
            return;
        }
        let mut routes = self.routes.to_vec();
        routes.retain(|r| !r.same_destination(&route));
        routes.push(route);
        self.routes = routes.into();
    }

    /// Turns on RFC 9728 discovery: a 401 whose challenge names `resource_metadata` leads
    /// to the resource's authorization server, if `discovery` allows it.
    pub(crate) fn set_discovery(&mut self, discovery: ResourceDiscovery) {
        self.discovery = Some(Arc::new(discovery));
    }

    /// Replaces the issuers RFC 9728 discovery may use.
    pub(crate) fn allow_issuers(&mut self, issuers: Vec<String>) {
        if let Some(discovery) = &self.discovery {
            self.discovery = Some(Arc::new(discovery.with_allowed(issuers)));
        }
    }

    /// Whether a request that gets no token must still be watched: with discovery on, its
    /// 401 may name the authorization server to get one from.
    pub(crate) fn discovers(&self) -> bool {
        self.discovery.is_some()
    }

    pub(crate) fn set_max_token_wait(&mut self, max: Duration) {
        self.max_token_wait = Some(max);
    }

    /// Which tokens a request for `target` with `headers` gets:
    ///
    /// - `Ok(None)`: none — the caller set `Authorization`, or no route (and no learned
    ///   route) covers the destination; send the request as it is;
    /// - `Err`: plain http to a host that is not loopback, or a route that does not parse;
    /// - `Ok(Some(pick))`: attach a token of `pick`.
    ///
    /// Among the routes that cover the destination the one with the longest path prefix
    /// wins. An origin-form request (no scheme or host, as a tonic channel sends) is matched
    /// by its `Host` header, and without one goes to the first route's origin.
    pub(crate) fn should_attach(
        &self,
        target: &impl Target,
        headers: &HeaderMap,
    ) -> Result<Option<Pick>> {
        if headers.contains_key(AUTHORIZATION) {
            return Ok(None);
        }
        if let Some(error) = &self.bad_origin {
            return Err(error.clone());
        }
        let pick = if self.routes.is_empty() {
            match self.tokens {
                Tokens::Discovered => None,
                _ => Some(Pick::Default),
            }
        } else {
            self.route_for(target, headers)
        };
        let pick = match (pick, &self.discovery) {
            (None, Some(discovery)) => discovery.learned_for(target).map(Pick::Learned),
            (pick, _) => pick,
        };
        if pick.is_none() {
            return Ok(None);
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
        Ok(pick)
    }

    /// The route that covers `target`, the longest path prefix first.
    fn route_for(&self, target: &impl Target, headers: &HeaderMap) -> Option<Pick> {
        let path = target.path();
        let covers = |route: &Route| -> bool {
            match (target.scheme(), target.host()) {
                (Some(scheme), Some(host)) => route.origin.matches(scheme, host, target.port()),
                _ => match headers.get(HOST).and_then(|h| h.to_str().ok()) {
                    Some(authority) => route.origin.has_authority(authority),
                    // The channel's endpoint decides where it goes: the first route's origin.
                    None => route.origin == self.routes[0].origin,
                },
            }
        };
        let mut best: Option<(usize, usize)> = None;
        for (index, route) in self.routes.iter().enumerate() {
            if let Some(len) = route.match_len(path)
                && best.is_none_or(|(_, best_len)| len > best_len)
                && covers(route)
            {
                best = Some((index, len));
            }
        }
        best.map(|(index, _)| Pick::Route(index))
    }

    /// The parameters of `pick`'s tokens (a step-up's wider ones once it worked).
    fn params(&self, pick: Pick) -> TokenParams {
        match pick {
            Pick::Default => TokenParams::default(),
            Pick::Route(index) => {
                let route = &self.routes[index];
                match &*route.stepped.load() {
                    Some(stepped) => TokenParams::clone(stepped),
                    None => route.params.clone(),
                }
            }
            Pick::Learned(index) => self
                .discovery
                .as_ref()
                .and_then(|d| d.learned(index))
                .map(|l| l.params)
                .unwrap_or_default(),
        }
    }

    /// The provider of `pick`'s tokens.
    fn provider(&self, pick: Pick) -> Result<TokenProvider> {
        if let Pick::Learned(index) = pick {
            let learned = self
                .discovery
                .as_ref()
                .and_then(|d| d.learned(index))
                .ok_or_else(|| Error::Config("a discovered route is gone".into()))?;
            return Ok(learned.provider.provider_for(&learned.params));
        }
        match &self.tokens {
            Tokens::One(provider) => Ok(provider.clone()),
            Tokens::Keyed(keyed) => Ok(keyed.provider_for(&self.params(pick))),
            Tokens::Discovered => Err(Error::Config(
                "no token for this destination: discovery has not found its authorization \
                 server"
                    .into(),
            )),
        }
    }

    /// The token to attach, if it can be had without waiting: the fast path.
    pub(crate) fn cached_token(
        &self,
        pick: Pick,
        min: Option<&MinValidity>,
    ) -> Option<AccessToken> {
        let min = min.map_or(Duration::ZERO, |m| m.0);
        match (&self.tokens, pick) {
            (Tokens::One(provider), Pick::Default | Pick::Route(_)) => provider.cached(min),
            (Tokens::Keyed(keyed), Pick::Default) => keyed.cached_for(&TokenParams::default(), min),
            (Tokens::Keyed(keyed), Pick::Route(index)) => {
                let route = &self.routes[index];
                match &*route.stepped.load() {
                    Some(stepped) => keyed.cached_for(stepped, min),
                    None => keyed.cached_for(&route.params, min),
                }
            }
            (_, Pick::Learned(index)) => self.discovery.as_ref()?.cached_for(index, min),
            (Tokens::Discovered, _) => None,
        }
    }

    /// The token to attach, waiting for a refresh if need be, at most until `deadline` (the
    /// request's own) and for at most the policy's `max_token_wait`.
    pub(crate) async fn token(
        &self,
        pick: Pick,
        min: Option<MinValidity>,
        deadline: Option<Instant>,
    ) -> Result<AccessToken> {
        let deadline = self.deadline(deadline);
        self.provider(pick)?
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
                _ if scope => Verdict::Scope,
                _ if challenges()
                    .any(|v| challenge_param(v, "bearer", "resource_metadata").is_some()) =>
                {
                    Verdict::Discover
                }
                _ => Verdict::Rejected,
            };
        }
        if status == StatusCode::FORBIDDEN
            && headers.get_all(WWW_AUTHENTICATE).iter().any(|v| {
                v.to_str().is_ok_and(|v| {
                    challenge_error(v, "bearer").as_deref() == Some("insufficient_scope")
                })
            })
        {
            return Verdict::Scope;
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

    /// After an answer that did not accept the request (`verdict`): what to send it again
    /// with, if anything. `pick` and `sent` are what the first send had (none: a request
    /// sent without a token, watched for discovery); `headers` is the answer's, `uri` the
    /// request's.
    ///
    /// - [`Verdict::Rejected`] (or a `resource_metadata` 401 to a request that had a
    ///   token): the rejection is reported to the provider (storm guard included) and a
    ///   fresh token is returned, unless the guard held, the request cannot be replayed, or
    ///   the provider has no newer token.
    /// - [`Verdict::Scope`] to a routed request of a keyed provider whose challenge names a
    ///   scope the token lacks: a token for the union of scopes (a step-up), under its own
    ///   key, once per request.
    /// - [`Verdict::Discover`] to a request without a token: RFC 9728 discovery, if on; the
    ///   destination is learned either way, so the next request has a token at once.
    ///
    /// `None`: return the answer as it is.
    pub(crate) async fn recover(
        &self,
        first: &First<'_>,
        verdict: Verdict,
        headers: &HeaderMap,
        replayable: bool,
    ) -> Result<Option<Again>> {
        let First {
            pick,
            sent,
            uri,
            min,
            deadline,
        } = *first;
        match (verdict, pick, sent) {
            (Verdict::Rejected | Verdict::Discover | Verdict::Nonce, Some(pick), Some(sent)) => {
                let fresh = self
                    .after_rejection(pick, sent, replayable, min, deadline)
                    .await?;
                Ok(fresh.map(|token| Again {
                    token,
                    pick,
                    stepped: None,
                }))
            }
            (Verdict::Scope, Some(pick @ Pick::Route(index)), Some(sent)) => {
                let Tokens::Keyed(keyed) = &self.tokens else {
                    return Ok(None);
                };
                let Some(scope) = bearer_param(headers, "scope") else {
                    return Ok(None);
                };
                let current = self.params(pick);
                let wanted = current.union(&TokenParams::scope(&scope));
                if wanted == current || !replayable {
                    // The token had every scope named, or nothing can be resent: a step-up
                    // would not help this request.
                    return Ok(None);
                }
                let provider = keyed.provider_for(&wanted);
                let cached = provider.cached(Duration::ZERO).is_some();
                if !cached && !self.routes[index].may_step_up() {
                    return Ok(None);
                }
                tracing::debug!(
                    route = index,
                    "insufficient scope: stepping up to a token with the scopes the server named"
                );
                let token = provider
                    .token_with(Want {
                        min_validity: min.map_or(Duration::ZERO, |m| m.0),
                        deadline: self.deadline(deadline),
                    })
                    .await?;
                if token.same_value(sent) {
                    return Ok(None);
                }
                Ok(Some(Again {
                    token,
                    pick,
                    stepped: Some(wanted),
                }))
            }
            (Verdict::Discover, None, None) => {
                let Some(discovery) = &self.discovery else {
                    return Ok(None);
                };
                let Some(url) = bearer_param(headers, "resource_metadata") else {
                    return Ok(None);
                };
                let scope = bearer_param(headers, "scope");
                let Some(index) = discovery.discover(&url, uri, scope.as_deref()).await? else {
                    return Ok(None);
                };
                if !replayable {
                    return Ok(None);
                }
                let pick = Pick::Learned(index);
                let token = self.token(pick, min, deadline).await?;
                Ok(Some(Again {
                    token,
                    pick,
                    stepped: None,
                }))
            }
            _ => Ok(None),
        }
    }

    /// A request's own deadline, within the policy's `max_token_wait`.
    fn deadline(&self, deadline: Option<Instant>) -> Option<Instant> {
        let own = self
            .max_token_wait
            .and_then(|max| Instant::now().checked_add(max));
        match (deadline, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// After the server rejected `sent`: reports it to `pick`'s provider (storm guard
    /// included) and, if the request can be `replayable`, returns a fresh token to resend
    /// with. `None`: return the rejection as it is — the storm guard held, the request
    /// cannot be replayed, or the provider has no newer token.
    async fn after_rejection(
        &self,
        pick: Pick,
        sent: &AccessToken,
        replayable: bool,
        min: Option<MinValidity>,
        deadline: Option<Instant>,
    ) -> Result<Option<AccessToken>> {
        let provider = self.provider(pick)?;
        if !provider.reject(sent) {
            return Ok(None);
        }
        if !replayable {
            tracing::debug!("token rejected for a request that cannot be replayed: returning it");
            return Ok(None);
        }
        let fresh = self.token(pick, min, deadline).await?;
        if fresh.same_value(sent) {
            tracing::debug!("token rejected, but the provider has no newer one: returning it");
            return Ok(None);
        }
        tracing::debug!("token rejected: resending once with a fresh one");
        provider.record_resend();
        Ok(Some(fresh))
    }

    /// A request goes out again with the server's DPoP nonce: counted for `Health` and the
    /// metrics.
    pub(crate) fn nonce_resend(&self, pick: Pick) {
        if let Ok(provider) = self.provider(pick) {
            provider.record_nonce_resend();
        }
    }

    /// After the resend `again`: records what its answer says of its token. A rejection is
    /// reported to the provider like any other, so that a fresh token the API refuses
    /// before it ever worked tells the storm guard that refreshing does not help; there is
    /// no second resend whatever it decides. A step-up that worked is kept for its route.
    pub(crate) fn after_resend(&self, again: &Again, verdict: Verdict) {
        match verdict {
            Verdict::Accepted => {
                again.token.mark_accepted();
                if let (Some(stepped), Pick::Route(index)) = (&again.stepped, again.pick) {
                    self.routes[index]
                        .stepped
                        .store(Some(Arc::new(stepped.clone())));
                }
            }
            Verdict::Rejected | Verdict::Discover => {
                if let Ok(provider) = self.provider(again.pick) {
                    provider.reject(&again.token);
                }
            }
            // A nonce demanded again of a resend, or a scope still missing after a step-up:
            // its answer goes to the caller as it is.
            Verdict::Other | Verdict::Nonce | Verdict::Scope => {}
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
        let origin = match (self.routes.first(), headers.get(HOST)) {
            (Some(route), _) => route.origin.url(),
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
    challenge_param(header, wanted, "error")
}

/// The parameter `param` of the challenge of scheme `wanted` (lowercase) in a
/// `WWW-Authenticate` value, unquoted: `error`, `scope` (RFC 6750 §3),
/// `resource_metadata` (RFC 9728 §5.1).
fn challenge_param(header: &str, wanted: &str, param: &str) -> Option<String> {
    let mut scheme_is_bearer = false;
    for item in split_unquoted(header, ',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        // A new challenge starts with a scheme token that is not followed by `=`.
        let item_param = match item.split_once(char::is_whitespace) {
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
        if let Some((name, value)) = item_param.split_once('=')
            && scheme_is_bearer
            && name.trim().eq_ignore_ascii_case(param)
        {
            return Some(value.trim().trim_matches('"').to_owned());
        }
    }
    None
}

/// The parameter `name` of a Bearer challenge among an answer's `WWW-Authenticate` values.
fn bearer_param(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| challenge_param(v, "bearer", name))
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
    use crate::route::Origin;

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
