//! The Google Cloud metadata server: access tokens for the attached service account, ID
//! tokens for an audience, and detection of whether one answers at all.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use crate::error::{Error, Result, Scrubber};
use crate::exchange::{TokenEndpoint, parse_token_response};
use crate::params::TokenParams;
use crate::source::TokenSource;
use crate::sources::call::{Answer, Call, PlainHttp, cloud, describe_body, lifetime_until};
use crate::store::KeyBuilder;
use crate::token::AccessToken;

/// The variable that names the metadata server's host and port (`127.0.0.1:8080`, no
/// scheme): how tests and emulators stand in for the metadata server.
pub const ENV_GCE_METADATA_HOST: &str = "GCE_METADATA_HOST";

/// The metadata server's address on every Google Cloud platform (Compute Engine, GKE,
/// Cloud Run, Cloud Functions, App Engine). Link-local: a request to it never leaves the
/// host, and unlike `metadata.google.internal` no DNS answer can send it elsewhere, so the
/// plain http the metadata server speaks is safe.
pub const METADATA_HOST: &str = "169.254.169.254";

/// The hosts plain http may go to without [`MetadataServer::allow_http`]: the metadata
/// server's own (besides loopback).
const OWN_HOSTS: &[&str] = &[METADATA_HOST, "metadata.google.internal"];

/// How long [`MetadataServer::detect`] waits for an answer. A metadata server answers in
/// milliseconds; off Google Cloud the link-local address usually goes unanswered (no route,
/// or packets dropped), so the wait is all that detection costs there. One second is ten
/// times a slow metadata server's answer and short enough for a process's start-up.
pub const METADATA_DETECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a failed detection is believed before the metadata server is asked again. A
/// GKE pod can start before its node's metadata server serves it; a minute lets such a pod
/// recover without a restart, while a process off Google Cloud pays the
/// [`METADATA_DETECT_TIMEOUT`] at most once a minute.
pub const METADATA_REPROBE_AFTER: Duration = Duration::from_secs(60);

/// A detection's outcome and when it was had.
type Probed = (std::time::Instant, std::result::Result<(), String>);

/// What [`Error::InsecureTransport`] says to allow plain http with.
const ALLOW_WITH: &str = "`MetadataServer::allow_http(true)`";

/// The metadata server's header: sent with every request (the server refuses requests
/// without it, so a page cannot make a browser fetch a token) and required on every answer
/// (without it, whatever answered is not a metadata server).
const FLAVOR: &str = "metadata-flavor";

/// A [`TokenSource`] for the Google Cloud metadata server: access tokens for the service
/// account attached to the VM, the GKE workload (workload identity), the Cloud Run
/// service or the function.
///
/// `GET {host}/computeMetadata/v1/instance/service-accounts/{account}/token`, with
/// `scopes` if [`scope`](Self::scope) was set, and `Metadata-Flavor: Google`; an answer
/// without that header (a captive portal, a proxy) is refused, and so is a 404 for the
/// account, each with an [`Error::Cloud`] that says what to check. The host is
/// [`METADATA_HOST`], or the `GCE_METADATA_HOST` variable's when it is set, or
/// [`endpoint`](Self::endpoint)'s. Plain http goes only to the metadata server's own hosts
/// and loopback. [`id_token`](Self::id_token) gives ID tokens instead.
///
/// # Testing
///
/// Point it at a local server, never at the real address: `.endpoint("http://127.0.0.1:PORT")`
/// (or `GCE_METADATA_HOST=127.0.0.1:PORT` for a whole process). The emulator plays the
/// metadata server:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_refresh::TokenProvider;
/// use token_refresh::gcp::MetadataServer;
/// use token_refresh_emulator::Emulator;
///
/// let emulator = Emulator::start().await?;
/// let source = MetadataServer::new()
///     .endpoint(emulator.origin()) // on Google Cloud: leave it out
///     .scope("https://www.googleapis.com/auth/cloud-platform");
/// let provider = TokenProvider::new(source);
/// assert!(!provider.token().await?.expose_secret().is_empty());
/// assert_eq!(emulator.cloud_stats().gcp_metadata_tokens, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MetadataServer {
    base: String,
    /// Where `base` came from, for errors: `GCE_METADATA_HOST`, or nothing.
    from_env: bool,
    account: String,
    scopes: Vec<String>,
    endpoint: TokenEndpoint,
    allow_http: bool,
}

impl Default for MetadataServer {
    fn default() -> Self {
        Self::new()
    }
}

impl MetadataServer {
    /// The metadata server of this machine: at `GCE_METADATA_HOST` (read now) when it is
    /// set, else at [`METADATA_HOST`]; the default service account; the scopes the
    /// instance was given. Does no I/O.
    pub fn new() -> Self {
        let from_env = std::env::var(ENV_GCE_METADATA_HOST)
            .ok()
            .map(|h| h.trim().trim_end_matches('/').to_owned())
            .filter(|h| !h.is_empty());
        let base = match &from_env {
            Some(host) => format!("http://{host}"),
            None => format!("http://{METADATA_HOST}"),
        };
        Self {
            endpoint: TokenEndpoint::new(base.clone()),
            from_env: from_env.is_some(),
            base,
            account: "default".into(),
            scopes: Vec::new(),
            allow_http: false,
        }
    }

    /// The metadata server at `url` (`http://127.0.0.1:8080`: scheme, host and port; for
    /// tests and emulators), overriding `GCE_METADATA_HOST`. Plain http goes only to
    /// loopback and the metadata server's own hosts unless [`allow_http`](Self::allow_http).
    /// Default: `http://` and `GCE_METADATA_HOST`, or [`METADATA_HOST`].
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.base = url.into().trim_end_matches('/').to_owned();
        self.from_env = false;
        self.endpoint = self.endpoint.clone().with_url(self.base.clone());
        self
    }

    /// The service account to ask for, by email; it must be attached to the instance.
    /// With a [token store](crate::store) shared by processes that run as different
    /// default accounts, name it (the store key names the account as given). Default:
    /// `default`, the account the platform attached.
    pub fn service_account(mut self, email: impl Into<String>) -> Self {
        self.account = email.into();
        self
    }

    /// Asks for `scope` (space-separated, or call again to add); sent as the `scopes`
    /// parameter. Only some platforms honour it (GKE and Cloud Run do; a VM's token has
    /// the scopes the VM was created with). Default: none.
    pub fn scope(mut self, scope: impl AsRef<str>) -> Self {
        crate::grants::add_scopes(&mut self.scopes, scope.as_ref());
        self
    }

    /// Allows plain http to a host that is neither loopback nor the metadata server's own.
    /// Default: `false`.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// The timeout of one request, connect to last byte. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`](crate::defaults::DEFAULT_REQUEST_TIMEOUT) (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.timeout(timeout);
        self
    }

    /// The metadata server's URL (scheme, host and port).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// ID tokens for `audience` (a Cloud Run service's URL, an IAP client id) from the
    /// same metadata server and account: see [`MetadataIdToken`].
    pub fn id_token(&self, audience: impl Into<String>) -> MetadataIdToken {
        MetadataIdToken {
            server: self.clone(),
            audience: audience.into(),
            full: false,
            licenses: false,
        }
    }

    /// Whether a metadata server answers at this address: a `GET /` with
    /// `Metadata-Flavor: Google`, answered with that header, within
    /// [`METADATA_DETECT_TIMEOUT`]. The outcome is kept for the process, per address: a
    /// positive one for good, a negative one for [`METADATA_REPROBE_AFTER`], so that a
    /// process off Google Cloud waits for it at most once a minute.
    pub async fn detect(&self) -> bool {
        self.probe().await.is_ok()
    }

    /// [`detect`](Self::detect), with what failed.
    pub(crate) async fn probe(&self) -> std::result::Result<(), String> {
        static PROBES: Mutex<Option<HashMap<String, Probed>>> = Mutex::new(None);
        let cached = |base: &str| {
            let probes = PROBES.lock().unwrap_or_else(PoisonError::into_inner);
            let (at, outcome) = probes.as_ref()?.get(base)?;
            (outcome.is_ok() || at.elapsed() < METADATA_REPROBE_AFTER).then(|| outcome.clone())
        };
        if let Some(outcome) = cached(&self.base) {
            return outcome;
        }
        let outcome = self.ping().await;
        PROBES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashMap::new)
            .insert(
                self.base.clone(),
                (std::time::Instant::now(), outcome.clone()),
            );
        outcome
    }

    async fn ping(&self) -> std::result::Result<(), String> {
        let service = self.service();
        let url = crate::sources::call::parse_url(&format!("{}/", self.base), &service)
            .map_err(|e| e.to_string())?;
        let answer = Call::get(&self.endpoint, &service, url, self.plain_http())
            .header(FLAVOR, "Google", false)
            .timeout(METADATA_DETECT_TIMEOUT)
            .send()
            .await
            .map_err(|e| match e {
                Error::Cloud { problem, .. } => problem,
                other => other.to_string(),
            })?;
        if answer.header(FLAVOR) == Some("Google") {
            Ok(())
        } else {
            Err(format!(
                "something answered (HTTP {}) without the Metadata-Flavor: Google header",
                answer.status
            ))
        }
    }

    /// Names the service and where its address came from, for errors.
    pub(crate) fn service(&self) -> String {
        let from = if self.from_env {
            format!(" (from {ENV_GCE_METADATA_HOST})")
        } else {
            String::new()
        };
        format!("the GCP metadata server at {}{from}", self.base)
    }

    fn plain_http(&self) -> PlainHttp {
        PlainHttp {
            hosts: OWN_HOSTS,
            allow_any: self.allow_http,
            allow_with: ALLOW_WITH,
        }
    }

    /// `{base}/computeMetadata/v1/instance/service-accounts/{account}/{leaf}`.
    fn account_url(&self, leaf: &str, service: &str) -> Result<reqwest::Url> {
        let account = self.account.trim();
        if account.is_empty() || account.contains(['/', '?', '#']) {
            return Err(Error::Config(format!(
                "{service}: the service account {account:?} is not an email or `default`"
            )));
        }
        let mut url = crate::sources::call::parse_url(&self.base, "the metadata server's URL")?;
        url.path_segments_mut()
            .map_err(|()| Error::Config(format!("{service}: the URL cannot have a path")))?
            .pop_if_empty()
            .extend([
                "computeMetadata",
                "v1",
                "instance",
                "service-accounts",
                account,
                leaf,
            ]);
        Ok(url)
    }

    /// Sends a GET for `url` and checks the answer is the metadata server's and a success.
    async fn get(&self, url: reqwest::Url, service: &str) -> Result<Answer> {
        let answer = Call::get(&self.endpoint, service, url, self.plain_http())
            .header(FLAVOR, "Google", false)
            .send()
            .await?;
        if answer.header(FLAVOR) != Some("Google") {
            return Err(cloud(
                service,
                format!(
                    "the answer (HTTP {}, {}) lacks the `Metadata-Flavor: Google` header, so \
                     it is not the metadata server (a captive portal or a proxy?): off Google \
                     Cloud, use a credentials file (GOOGLE_APPLICATION_CREDENTIALS), and check \
                     {ENV_GCE_METADATA_HOST}",
                    answer.status,
                    describe_body(&answer.body)
                ),
                false,
            ));
        }
        if answer.status == 404 {
            return Err(cloud(
                service,
                format!(
                    "HTTP 404: the service account {:?} is not known here; attach it to the \
                     instance, or on GKE bind the pod's Kubernetes service account to it \
                     (workload identity)",
                    self.account
                ),
                false,
            ));
        }
        if !answer.is_success() {
            return Err(answer.status_error(service, &Scrubber::default(), &[], ""));
        }
        Ok(answer)
    }
}

#[async_trait::async_trait]
impl TokenSource for MetadataServer {
    /// `gcp-metadata-{hash}`: the metadata server's URL, the account as given and the
    /// scopes. Processes that share a store share a token only if they name the same
    /// account: with `default`, they must all run as the same one.
    fn store_key(&self) -> Option<String> {
        Some(
            KeyBuilder::new("gcp-metadata")
                .part(&self.base)
                .part(&self.account)
                .part(self.scopes.join(" "))
                .finish(),
        )
    }

    async fn fetch_token(&self) -> Result<AccessToken> {
        self.fetch(&self.scopes).await
    }

    /// A token with the scopes `params` name (the source's own without any);
    /// [`Error::Config`] for an audience or a resource, which the metadata server's access
    /// tokens do not take (an audience is for [`id_token`](MetadataServer::id_token)).
    async fn fetch_token_for(&self, params: &TokenParams) -> Result<AccessToken> {
        if params.audience_value().is_some() || !params.resources().is_empty() {
            return Err(Error::Config(format!(
                "{}: access tokens take scopes only, not an audience or a resource; for an \
                 audience ask for ID tokens (MetadataServer::id_token)",
                self.service()
            )));
        }
        if params.scopes().is_empty() {
            return self.fetch_token().await;
        }
        self.fetch(params.scopes()).await
    }
}

impl MetadataServer {
    async fn fetch(&self, scopes: &[String]) -> Result<AccessToken> {
        let service = self.service();
        let mut url = self.account_url("token", &service)?;
        if !scopes.is_empty() {
            url.query_pairs_mut()
                .append_pair("scopes", &scopes.join(","));
        }
        let answer = self.get(url, &service).await?;
        parse_token_response(
            answer.status,
            answer.retry_after,
            &answer.body,
            answer.sent_at,
        )
        .map_err(|e| match e {
            Error::InvalidJson(_) => cloud(
                &service,
                format!(
                    "the token answer is not JSON ({})",
                    describe_body(&answer.body)
                ),
                false,
            ),
            other => other,
        })
    }
}

impl fmt::Debug for MetadataServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetadataServer")
            .field("url", &self.base)
            .field("service_account", &self.account)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// A [`TokenSource`] for ID tokens from the Google Cloud metadata server: OpenID Connect
/// tokens signed by Google for an `audience`, which Cloud Run, Cloud Functions and IAP
/// accept as bearer tokens from another service. From [`MetadataServer::id_token`].
///
/// `GET …/service-accounts/{account}/identity?audience=…`. The answer is the JWT itself,
/// with no lifetime beside it: the token lives until its own `exp` claim, so the provider
/// refreshes it before that. A token whose `aud` is not the audience asked for, or that has
/// no `exp`, is refused.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_refresh::TokenProvider;
/// use token_refresh::gcp::MetadataServer;
/// use token_refresh_emulator::Emulator;
///
/// let emulator = Emulator::start().await?;
/// let source = MetadataServer::new()
///     .endpoint(emulator.origin()) // on Cloud Run: leave it out
///     .id_token("https://receiver-abc123-uc.a.run.app");
/// let provider = TokenProvider::new(source);
/// let token = provider.token().await?; // a JWT for that audience
/// assert_eq!(token.expose_secret().split('.').count(), 3);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MetadataIdToken {
    server: MetadataServer,
    audience: String,
    full: bool,
    licenses: bool,
}

impl MetadataIdToken {
    /// Asks for the `full` format: the token also carries the instance's project, zone and
    /// id (Compute Engine only). Default: `false` (the standard format).
    pub fn full_format(mut self, full: bool) -> Self {
        self.full = full;
        self
    }

    /// Asks for the instance's license codes in the token (with
    /// [`full_format`](Self::full_format)). Default: `false`.
    pub fn licenses(mut self, licenses: bool) -> Self {
        self.licenses = licenses;
        self
    }

    /// The audience the tokens are for.
    pub fn audience(&self) -> &str {
        &self.audience
    }
}

/// The claims of an ID token that decide its use: its expiry and audience. The signature
/// is not checked: the token came from the metadata server over the host's own link, and
/// the receiving service checks it.
pub(crate) fn id_token_claims(jwt: &str) -> std::result::Result<(f64, Vec<String>), String> {
    let mut parts = jwt.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the ID token is not a JWT (three dot-separated parts)".into());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "the ID token's claims are not base64url".to_owned())?;
    let claims: Value = serde_json::from_slice(&bytes)
        .map_err(|_| "the ID token's claims are not JSON".to_owned())?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .ok_or_else(|| "the ID token has no numeric `exp` claim".to_owned())?;
    let aud = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Ok((exp, aud))
}

#[async_trait::async_trait]
impl TokenSource for MetadataIdToken {
    /// `gcp-id-token-{hash}`: the metadata server's URL, the account as given, the
    /// audience and the format.
    fn store_key(&self) -> Option<String> {
        Some(
            KeyBuilder::new("gcp-id-token")
                .part(&self.server.base)
                .part(&self.server.account)
                .part(&self.audience)
                .part([u8::from(self.full), u8::from(self.licenses)])
                .finish(),
        )
    }

    async fn fetch_token(&self) -> Result<AccessToken> {
        self.fetch(&self.audience).await
    }

    /// An ID token for the audience `params` name (the source's own without one): one
    /// provider for the Cloud Run services a client calls, keyed by audience.
    /// [`Error::Config`] for scopes or resources, which ID tokens do not take.
    async fn fetch_token_for(&self, params: &TokenParams) -> Result<AccessToken> {
        if !params.scopes().is_empty() || !params.resources().is_empty() {
            return Err(Error::Config(format!(
                "{}: ID tokens take an audience only, not scopes or resources; route with \
                 TokenParams::audience",
                self.server.service()
            )));
        }
        self.fetch(params.audience_value().unwrap_or(&self.audience))
            .await
    }
}

impl MetadataIdToken {
    async fn fetch(&self, audience: &str) -> Result<AccessToken> {
        let service = self.server.service();
        if audience.trim().is_empty() {
            return Err(Error::Config(format!(
                "{service}: an ID token needs a non-empty audience"
            )));
        }
        let mut url = self.server.account_url("identity", &service)?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("audience", audience);
            if self.full {
                query.append_pair("format", "full");
            }
            if self.licenses {
                query.append_pair("licenses", "TRUE");
            }
        }
        let answer = self.server.get(url, &service).await?;
        let text = String::from_utf8_lossy(&answer.body);
        let jwt = text.trim();
        let invalid = |problem: String| cloud(&service, problem, false);
        let (exp, aud) = id_token_claims(jwt)
            .map_err(|problem| invalid(format!("{problem} ({})", describe_body(&answer.body))))?;
        if !aud.iter().any(|a| a == audience) {
            return Err(invalid(format!(
                "the ID token is for another audience than {audience:?}"
            )));
        }
        let lifetime = lifetime_until(exp, answer.sent_wall)
            .ok_or_else(|| invalid("the ID token's `exp` has passed".into()))?;
        AccessToken::issued_at(jwt, answer.sent_at, lifetime)
            .map_err(|_| invalid("the ID token has characters a bearer token cannot carry".into()))
    }
}

impl fmt::Debug for MetadataIdToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetadataIdToken")
            .field("server", &self.server)
            .field("audience", &self.audience)
            .field("full_format", &self.full)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &Value) -> String {
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        format!(
            "{}.{}.c2ln",
            b64(&serde_json::json!({"alg": "RS256"})),
            b64(claims)
        )
    }

    #[test]
    fn id_token_claims_give_exp_and_audiences() {
        let token = jwt(&serde_json::json!({"exp": 1_900_000_000, "aud": "https://a"}));
        assert_eq!(
            id_token_claims(&token).unwrap(),
            (1_900_000_000.0, vec!["https://a".to_owned()])
        );
        let token = jwt(&serde_json::json!({"aud": ["x", "y"]}));
        assert!(id_token_claims(&token).unwrap_err().contains("exp"));
        assert!(id_token_claims("not-a-jwt").is_err());
        assert!(id_token_claims("a.%%%.c").is_err());
    }

    #[test]
    fn urls_name_the_account_and_refuse_paths() {
        let server = MetadataServer::new().endpoint("http://127.0.0.1:9/");
        let url = server.account_url("token", "s").unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/computeMetadata/v1/instance/service-accounts/default/token"
        );
        let other = server
            .clone()
            .service_account("a@b.iam.gserviceaccount.com");
        assert!(
            other
                .account_url("token", "s")
                .unwrap()
                .as_str()
                .contains("/a@b.iam")
        );
        assert!(
            server
                .clone()
                .service_account("../../x")
                .account_url("token", "s")
                .is_err()
        );
        assert_ne!(server.store_key(), other.store_key());
        assert_ne!(
            server.store_key(),
            server.clone().scope("https://x").store_key()
        );
    }
}
