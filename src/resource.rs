//! RFC 9728 discovery from the resource itself: a 401 whose challenge names
//! `resource_metadata` leads to the resource's protected-resource metadata, its
//! authorization server — only one the user allowed — and a token for the resource (RFC
//! 8707 `resource`), which every later request to it gets at once.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;

use crate::defaults::{DEFAULT_DISCOVERY_TTL, DEFAULT_REQUEST_TIMEOUT};
use crate::error::Result;
use crate::exchange::TokenEndpoint;
use crate::exchange::http::Http;
use crate::grants::client::OAuthClient;
use crate::grants::client_credentials::ClientCredentials;
use crate::params::TokenParams;
use crate::provider::KeyedTokenProvider;
use crate::route::{Route, Target};
use crate::token::AccessToken;

/// Most destinations discovery learns: an agent talks to tens of resource servers; a stream
/// of 401s from ever new resources (a bug, or a hostile network) must not grow without
/// bound. Past it, a new resource is not learned (its 401 goes to the caller).
const MAX_LEARNED: usize = 64;

/// Most protected-resource metadata documents kept, for the same reason.
const MAX_METADATA: usize = 64;

/// A destination discovery learned: its route (the resource's origin and path) and where
/// its tokens come from.
#[derive(Clone)]
pub(crate) struct Learned {
    route: Route,
    pub(crate) provider: KeyedTokenProvider,
    pub(crate) params: TokenParams,
}

/// What an RFC 9728 protected-resource metadata document says, as far as a client needs.
#[derive(Debug)]
struct ResourceMetadata {
    resource: String,
    authorization_servers: Vec<String>,
    scopes_supported: Vec<String>,
}

/// RFC 9728 discovery for one client, with the issuers it may trust.
pub(crate) struct ResourceDiscovery {
    client: OAuthClient,
    /// The authorization servers the user allowed, without a trailing `/`.
    allowed: Vec<String>,
    http: Http,
    metadata: Mutex<HashMap<String, (Arc<ResourceMetadata>, tokio::time::Instant)>>,
    /// One keyed provider per authorization server.
    providers: Mutex<HashMap<String, KeyedTokenProvider>>,
    /// Append-only (indices stay valid), at most [`MAX_LEARNED`].
    learned: ArcSwap<Vec<Learned>>,
    /// One discovery at a time: a burst of 401s from a cold resource fetches its metadata
    /// once.
    discovering: tokio::sync::Mutex<()>,
}

impl ResourceDiscovery {
    pub(crate) fn new(client: OAuthClient, allowed: Vec<String>) -> Self {
        Self {
            client,
            allowed: allowed
                .into_iter()
                .map(|issuer| issuer.trim_end_matches('/').to_owned())
                .collect(),
            http: Http {
                client: None,
                allow_http: false,
                timeout: DEFAULT_REQUEST_TIMEOUT,
            },
            metadata: Mutex::default(),
            providers: Mutex::default(),
            learned: ArcSwap::from_pointee(Vec::new()),
            discovering: tokio::sync::Mutex::new(()),
        }
    }

    /// The same discovery for `client`, with `allowed` as its issuers (nothing learned yet).
    pub(crate) fn with_allowed(&self, allowed: Vec<String>) -> Self {
        Self::new(self.client.clone(), allowed)
    }

    /// The learned destination covering `target`, the longest path first.
    pub(crate) fn learned_for(&self, target: &impl Target) -> Option<usize> {
        let (Some(scheme), Some(host)) = (target.scheme(), target.host()) else {
            return None;
        };
        let learned = self.learned.load();
        let path = target.path();
        let mut best: Option<(usize, usize)> = None;
        for (index, l) in learned.iter().enumerate() {
            if let Some(len) = l.route.match_len(path)
                && best.is_none_or(|(_, best_len)| len > best_len)
                && l.route.origin.matches(scheme, host, target.port())
            {
                best = Some((index, len));
            }
        }
        best.map(|(index, _)| index)
    }

    pub(crate) fn learned(&self, index: usize) -> Option<Learned> {
        self.learned.load().get(index).cloned()
    }

    /// The learned destination's cached token, if it can be used now: the fast path.
    pub(crate) fn cached_for(&self, index: usize, min: Duration) -> Option<AccessToken> {
        let learned = self.learned.load();
        let l = learned.get(index)?;
        l.provider.cached_for(&l.params, min)
    }

    /// Follows a 401's `resource_metadata` for a request to `request_uri`: fetches the
    /// metadata, checks that it is about that resource, picks an allowed authorization
    /// server and learns the destination. `None` (the 401 stands) when the metadata cannot
    /// be had, names another resource, or names no allowed issuer — nothing is sent to an
    /// issuer the user did not allow.
    pub(crate) async fn discover(
        &self,
        metadata_url: &str,
        request_uri: &str,
        challenge_scope: Option<&str>,
    ) -> Result<Option<usize>> {
        let _one = self.discovering.lock().await;
        let Ok(request) = request_uri.parse::<http::Uri>() else {
            return Ok(None);
        };
        if let Some(index) = self.learned_for(&request) {
            // Learned while this caller waited for the lock.
            return Ok(Some(index));
        }
        let Some(metadata) = self.metadata(metadata_url).await else {
            return Ok(None);
        };
        if !covers(&metadata.resource, &request) {
            tracing::warn!(
                resource = %metadata.resource,
                request = %origin_and_path(&request),
                "the resource metadata names another resource: not used"
            );
            return Ok(None);
        }
        let Some(issuer) = metadata
            .authorization_servers
            .iter()
            .map(|issuer| issuer.trim_end_matches('/'))
            .find(|issuer| self.allowed.iter().any(|allowed| allowed == issuer))
        else {
            tracing::warn!(
                resource = %metadata.resource,
                offered = ?metadata.authorization_servers,
                "none of the resource's authorization servers is allowed: no token asked for"
            );
            return Ok(None);
        };
        let mut params = TokenParams::resource(metadata.resource.clone());
        match challenge_scope {
            Some(scope) => params = params.with_scope(scope),
            None if !metadata.scopes_supported.is_empty() => {
                params = params.with_scope(metadata.scopes_supported.join(" "));
            }
            None => {}
        }
        let provider = self.provider(issuer);
        let Ok(route) = Route::parse(&metadata.resource, params.clone()) else {
            return Ok(None);
        };
        let mut learned = Vec::clone(&self.learned.load());
        if learned.len() >= MAX_LEARNED {
            tracing::warn!(
                resource = %metadata.resource,
                "discovery has learned as many resources as it keeps: this one is not learned"
            );
            return Ok(None);
        }
        tracing::debug!(
            resource = %metadata.resource,
            issuer,
            "resource discovered: its tokens come from its authorization server"
        );
        learned.push(Learned {
            route,
            provider,
            params,
        });
        let index = learned.len() - 1;
        self.learned.store(Arc::new(learned));
        Ok(Some(index))
    }

    /// The keyed provider of `issuer`'s tokens for this client.
    fn provider(&self, issuer: &str) -> KeyedTokenProvider {
        let mut providers = self
            .providers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        providers
            .entry(issuer.to_owned())
            .or_insert_with(|| {
                KeyedTokenProvider::new(ClientCredentials::from_client(
                    TokenEndpoint::discover(issuer),
                    self.client.clone(),
                ))
            })
            .clone()
    }

    /// The metadata at `url`, cached for [`DEFAULT_DISCOVERY_TTL`]; `None` if it cannot be
    /// had (logged).
    async fn metadata(&self, url: &str) -> Option<Arc<ResourceMetadata>> {
        let cached = self
            .metadata
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(url)
            .filter(|(_, at)| at.elapsed() < DEFAULT_DISCOVERY_TTL)
            .map(|(metadata, _)| Arc::clone(metadata));
        if cached.is_some() {
            return cached;
        }
        let parsed = match reqwest::Url::parse(url) {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::warn!(%url, %error, "the resource_metadata URL does not parse");
                return None;
            }
        };
        let json = match self.http.get_json(&parsed, None).await {
            Ok(json) => json,
            Err(error) => {
                tracing::warn!(%url, error = %error.problem, "the resource metadata could not be fetched");
                return None;
            }
        };
        let metadata = match parse(&json) {
            Some(metadata) => Arc::new(metadata),
            None => {
                tracing::warn!(%url, "the resource metadata has no resource or authorization_servers");
                return None;
            }
        };
        tracing::debug!(%url, "resource metadata fetched");
        let mut cache = self.metadata.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_METADATA {
            cache.clear();
        }
        cache.insert(
            url.to_owned(),
            (Arc::clone(&metadata), tokio::time::Instant::now()),
        );
        Some(metadata)
    }
}

fn parse(json: &Value) -> Option<ResourceMetadata> {
    let strings = |name: &str| -> Vec<String> {
        json.get(name)
            .and_then(Value::as_array)
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let resource = json.get("resource")?.as_str()?.to_owned();
    let authorization_servers = strings("authorization_servers");
    if authorization_servers.is_empty() {
        return None;
    }
    Some(ResourceMetadata {
        resource,
        authorization_servers,
        scopes_supported: strings("scopes_supported"),
    })
}

/// The URI without query (an `http::Uri` has no fragment).
fn origin_and_path(uri: &http::Uri) -> String {
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => format!("{scheme}://{authority}{}", uri.path()),
        _ => uri.path().to_owned(),
    }
}

/// Whether the metadata's `resource` is the resource `request` asked: the request's URL
/// (without query and fragment), or its origin and a path prefix of it at a segment
/// boundary (RFC 9728 §3.3: the resource identifier must match the resource asked).
fn covers(resource: &str, request: &http::Uri) -> bool {
    if resource.contains('#') {
        return false;
    }
    let Ok(resource) = resource.parse::<http::Uri>() else {
        return false;
    };
    if resource.query().is_some() {
        return false;
    }
    let same_origin = match (
        resource.scheme_str(),
        resource.host(),
        request.scheme_str(),
        request.host(),
    ) {
        (Some(scheme), Some(host), Some(their_scheme), Some(their_host)) => {
            crate::route::Origin::new(scheme, host, resource.port_u16())
                .is_some_and(|origin| origin.matches(their_scheme, their_host, request.port_u16()))
        }
        _ => false,
    };
    let prefix = resource.path().trim_end_matches('/');
    let path = request.path();
    same_origin
        && path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl fmt::Debug for ResourceDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceDiscovery")
            .field("client", &self.client)
            .field("allowed", &self.allowed)
            .field("learned", &self.learned.load().len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_covers_its_own_url_and_paths_below_it() {
        let url = |u: &str| u.parse::<http::Uri>().unwrap();
        assert!(covers(
            "https://api.example.com/mcp",
            &url("https://api.example.com/mcp")
        ));
        assert!(covers(
            "https://api.example.com/mcp",
            &url("https://api.example.com/mcp/tools?x=1")
        ));
        assert!(covers(
            "https://api.example.com",
            &url("https://api.example.com/v2")
        ));
        assert!(!covers(
            "https://api.example.com/mcp",
            &url("https://api.example.com/mcpx")
        ));
        assert!(!covers(
            "https://evil.example.com/mcp",
            &url("https://api.example.com/mcp")
        ));
        assert!(!covers(
            "http://api.example.com/mcp",
            &url("https://api.example.com/mcp")
        ));
    }
}
