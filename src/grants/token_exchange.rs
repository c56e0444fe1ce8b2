//! The RFC 8693 token-exchange grant, and where its subject tokens come from: a file
//! (a Kubernetes projected service-account token), GitHub Actions' OIDC token, a closure.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use super::client::OAuthClient;
use crate::error::{Error, Result};
use crate::exchange::TokenEndpoint;
use crate::source::TokenSource;
use crate::store::KeyBuilder;
use crate::token::AccessToken;

/// What [`Error::InsecureTransport`] says would be sent, and how to allow it.
const SENDING: &str = "the subject token";
const ALLOW_WITH: &str = "`TokenEndpoint::allow_http(true)`";

/// The token type identifiers of RFC 8693 §3.
pub mod token_types {
    /// A JWT (RFC 7519): Kubernetes' projected service-account tokens, GitHub Actions'
    /// OIDC tokens. The default subject token type.
    pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
    /// An OAuth2 access token.
    pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
    /// An OAuth2 refresh token.
    pub const REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
    /// An OpenID Connect ID token.
    pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
}

/// Where a token exchange's subject (or actor) token comes from. It is asked afresh at
/// every exchange, never cached: a projected token is rotated on disk, a CI token expires.
///
/// [`SubjectTokenFile`] and [`GitHubActionsToken`] are built in; an async closure returning
/// `Result<String>` is one too.
#[async_trait::async_trait]
pub trait SubjectTokenSource: Send + Sync + 'static {
    /// The current token.
    async fn subject_token(&self) -> Result<SecretString>;
}

#[async_trait::async_trait]
impl<F, Fut> SubjectTokenSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String>> + Send + 'static,
{
    async fn subject_token(&self) -> Result<SecretString> {
        self().await.map(SecretString::from)
    }
}

/// A subject token in a file, re-read at every exchange: a Kubernetes projected
/// service-account token (`/var/run/secrets/tokens/…`), which the kubelet rewrites before
/// it expires. Reading it once at start-up is the bug that makes a pod fail an hour later.
/// Surrounding whitespace is trimmed; an empty or unreadable file is a transient
/// [`Error::SubjectToken`] naming the file (the kubelet may be rewriting it).
#[derive(Clone, Debug)]
pub struct SubjectTokenFile {
    path: PathBuf,
}

impl SubjectTokenFile {
    /// The token in the file at `path`. Does no I/O.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

#[async_trait::async_trait]
impl SubjectTokenSource for SubjectTokenFile {
    async fn subject_token(&self) -> Result<SecretString> {
        let path = self.path.clone();
        let problem = |problem: String| Error::SubjectToken {
            from: path.display().to_string(),
            problem,
            transient: true,
        };
        let read = tokio::task::spawn_blocking({
            let path = self.path.clone();
            move || std::fs::read_to_string(path)
        })
        .await
        .map_err(|e| problem(format!("the read was aborted: {e}")))?;
        let text = read.map_err(|e| problem(format!("cannot be read: {e}")))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(problem("the file is empty".into()));
        }
        Ok(SecretString::from(token.to_owned()))
    }
}

/// The variable with the URL of GitHub Actions' OIDC token service (set in a job with
/// `permissions: id-token: write`).
pub const ENV_ACTIONS_ID_TOKEN_REQUEST_URL: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
/// The variable with the bearer token for that service.
pub const ENV_ACTIONS_ID_TOKEN_REQUEST_TOKEN: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// GitHub Actions' OIDC token for the running job, fetched at every exchange from the
/// service named by `ACTIONS_ID_TOKEN_REQUEST_URL` with the bearer
/// `ACTIONS_ID_TOKEN_REQUEST_TOKEN` (both read at each fetch), with `audience` if set.
/// Without them (a job lacking `permissions: id-token: write`) it fails with
/// [`Error::MissingEnvVars`] naming both.
#[derive(Clone)]
pub struct GitHubActionsToken {
    audience: Option<String>,
    fixed: Option<(String, SecretString)>,
    endpoint: TokenEndpoint,
}

impl GitHubActionsToken {
    /// The token service named by the environment variables. Does no I/O.
    pub fn from_env() -> Self {
        Self {
            audience: None,
            fixed: None,
            endpoint: TokenEndpoint::new(String::new()),
        }
    }

    /// The token service at `request_url` with `request_token` (what the variables hold),
    /// for tests and for runners that pass them otherwise. Does no I/O.
    pub fn new(request_url: impl Into<String>, request_token: impl Into<String>) -> Self {
        Self {
            fixed: Some((request_url.into(), SecretString::from(request_token.into()))),
            ..Self::from_env()
        }
    }

    /// The `aud` the OIDC token is minted for: the token endpoint's expected audience
    /// (e.g. `sts.amazonaws.com`, or the workload identity provider's URL). Default: none
    /// (GitHub's default, the repository owner's URL).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    fn service(&self) -> Result<(String, SecretString)> {
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.clone());
        }
        let read = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        match (
            read(ENV_ACTIONS_ID_TOKEN_REQUEST_URL),
            read(ENV_ACTIONS_ID_TOKEN_REQUEST_TOKEN),
        ) {
            (Some(url), Some(token)) => Ok((url, SecretString::from(token))),
            (url, token) => Err(Error::MissingEnvVars {
                names: [
                    url.is_none().then_some(ENV_ACTIONS_ID_TOKEN_REQUEST_URL),
                    token
                        .is_none()
                        .then_some(ENV_ACTIONS_ID_TOKEN_REQUEST_TOKEN),
                ]
                .into_iter()
                .flatten()
                .collect(),
            }),
        }
    }
}

#[async_trait::async_trait]
impl SubjectTokenSource for GitHubActionsToken {
    async fn subject_token(&self) -> Result<SecretString> {
        let (url, bearer) = self.service()?;
        let from = "GitHub Actions";
        let mut url = reqwest::Url::parse(&url).map_err(|e| Error::SubjectToken {
            from: from.into(),
            problem: format!("{ENV_ACTIONS_ID_TOKEN_REQUEST_URL} is not a URL: {e}"),
            transient: false,
        })?;
        if let Some(audience) = &self.audience {
            url.query_pairs_mut().append_pair("audience", audience);
        }
        let json = self
            .endpoint
            .get_json(&url, Some(bearer.expose_secret()))
            .await
            .map_err(|error| Error::SubjectToken {
                from: from.into(),
                problem: error.problem,
                transient: error.transient,
            })?;
        match json.get("value") {
            Some(serde_json::Value::String(value)) if !value.is_empty() => {
                Ok(SecretString::from(value.clone()))
            }
            _ => Err(Error::SubjectToken {
                from: from.into(),
                problem: "the answer has no `value` string".into(),
                transient: false,
            }),
        }
    }
}

impl fmt::Debug for GitHubActionsToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubActionsToken")
            .field("audience", &self.audience)
            .field("request_url", &self.fixed.as_ref().map(|(url, _)| url))
            .finish_non_exhaustive()
    }
}

/// A [`TokenSource`] for the RFC 8693 token-exchange grant: a token the workload already
/// has (a Kubernetes service-account token, a CI job's OIDC token, another service's
/// access token) exchanged for an access token, as workload identity federation does.
///
/// The form is `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`,
/// `subject_token` (asked afresh of its [`SubjectTokenSource`] at every exchange),
/// `subject_token_type` (default [`token_types::JWT`]), and `audience`, `resource`, `scope`,
/// `requested_token_type`, `actor_token`/`actor_token_type` where set. A client is
/// optional ([`client`](Self::client)). The issued token keeps its lifetime and its
/// [`issued_token_type`](AccessToken::issued_token_type); a `token_type` of `N_A` (an
/// issued token that is not an access token) is accepted and sent as a bearer token.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_refresh_emulator::Emulator;
/// use token_refresh::{SubjectTokenFile, TokenExchange, TokenProvider, token_types};
///
/// let emulator = Emulator::start().await?;
/// // Where Kubernetes projects the pod's service-account token.
/// let path = std::env::temp_dir().join(format!("token-exchange-doc-{}", std::process::id()));
/// std::fs::write(&path, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwb2QifQ.c2ln")?;
///
/// let source = TokenExchange::new(emulator.token_url(), SubjectTokenFile::new(&path))
///     .audience("https://api.example.com");
/// let token = TokenProvider::new(source).token().await?;
/// assert_eq!(token.issued_token_type(), Some(token_types::ACCESS_TOKEN));
/// assert_eq!(emulator.subject_tokens().len(), 1);
/// # std::fs::remove_file(&path).ok();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenExchange {
    endpoint: TokenEndpoint,
    subject: Arc<dyn SubjectTokenSource>,
    subject_token_type: String,
    actor: Option<(Arc<dyn SubjectTokenSource>, String)>,
    requested_token_type: Option<String>,
    audiences: Vec<String>,
    resources: Vec<String>,
    scopes: Vec<String>,
    client: Option<OAuthClient>,
    store_name: Option<String>,
}

impl TokenExchange {
    /// The `grant_type` of RFC 8693 §2.1.
    pub const GRANT_TYPE: &'static str = "urn:ietf:params:oauth:grant-type:token-exchange";

    /// Exchanges the token `subject` gives at `token_url` (a URL, or a [`TokenEndpoint`]).
    /// Does no I/O.
    pub fn new(token_url: impl Into<TokenEndpoint>, subject: impl SubjectTokenSource) -> Self {
        Self {
            endpoint: token_url.into(),
            subject: Arc::new(subject),
            subject_token_type: token_types::JWT.to_owned(),
            actor: None,
            requested_token_type: None,
            audiences: Vec::new(),
            resources: Vec::new(),
            scopes: Vec::new(),
            client: None,
            store_name: None,
        }
    }

    /// The `subject_token_type`. Default: [`token_types::JWT`].
    pub fn subject_token_type(mut self, kind: impl Into<String>) -> Self {
        self.subject_token_type = kind.into();
        self
    }

    /// Acts on behalf of the subject with `actor`'s token of `actor_token_type` (RFC 8693
    /// delegation). Default: none.
    pub fn actor_token(
        mut self,
        actor: impl SubjectTokenSource,
        actor_token_type: impl Into<String>,
    ) -> Self {
        self.actor = Some((Arc::new(actor), actor_token_type.into()));
        self
    }

    /// The `requested_token_type`. Default: none (the server's choice, usually an access
    /// token).
    pub fn requested_token_type(mut self, kind: impl Into<String>) -> Self {
        self.requested_token_type = Some(kind.into());
        self
    }

    /// Adds an `audience` (repeat for more). Default: none.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Adds a `resource` (RFC 8707; repeat for more). Default: none.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// Asks for DPoP-bound tokens: every token request carries a proof signed with `key`;
    /// see [`TokenEndpoint::dpop`](crate::TokenEndpoint::dpop). Default: bearer tokens.
    pub fn dpop(mut self, key: crate::dpop::DpopKey) -> Self {
        self.endpoint = self.endpoint.dpop(key);
        self
    }

    /// Asks for `scope` (space-separated, or call again to add). Default: none.
    pub fn scope(mut self, scope: impl AsRef<str>) -> Self {
        super::add_scopes(&mut self.scopes, scope.as_ref());
        self
    }

    /// Authenticates as `client` (a secret, an assertion, or a public client's id).
    /// Default: no client authentication, as Google's and AWS's STS want.
    pub fn client(mut self, client: OAuthClient) -> Self {
        self.client = Some(client);
        self
    }

    /// Names this exchange's entry in a token store. The subject token changes with each
    /// rotation, so it cannot name the entry itself; the default key hashes the token URL,
    /// the client, the types, audiences, resources and scopes, which is right unless two
    /// subjects share them all. Default: that hash.
    pub fn store_name(mut self, name: impl Into<String>) -> Self {
        self.store_name = Some(name.into());
        self
    }
}

#[async_trait::async_trait]
impl TokenSource for TokenExchange {
    /// `token-exchange-{hash}`: see [`TokenExchange::store_name`].
    fn store_key(&self) -> Option<String> {
        let mut key = self
            .endpoint
            .key_parts(KeyBuilder::new("token-exchange"))
            .part(&self.subject_token_type)
            .optional(self.requested_token_type.as_deref())
            .optional(self.actor.as_ref().map(|(_, kind)| kind))
            .optional(self.store_name.as_deref())
            .part(self.scopes.join(" "));
        for list in [&self.audiences, &self.resources] {
            key = key.part((list.len() as u64).to_le_bytes());
            for value in list {
                key = key.part(value);
            }
        }
        if let Some(client) = &self.client {
            key = client.key_parts(key);
        }
        Some(key.finish())
    }

    /// The token endpoint's host and the client id (`token-exchange` without a client).
    fn name(&self) -> Option<String> {
        let who = self.client.as_ref().map_or("token-exchange", |c| c.id());
        Some(self.endpoint.name_for(who))
    }

    fn dpop_key(&self) -> Option<crate::dpop::DpopKey> {
        self.endpoint.dpop_key().cloned()
    }

    /// This exchange asking for `params`' scopes, audience and resources instead of its own.
    async fn fetch_token_for(&self, params: &crate::TokenParams) -> Result<AccessToken> {
        self.with_params(params).fetch_token().await
    }

    fn store_key_for(&self, params: &crate::TokenParams) -> Option<String> {
        self.with_params(params).store_key()
    }

    async fn fetch_token(&self) -> Result<AccessToken> {
        if let Some(client) = &self.client {
            client.check()?;
        }
        let subject = self.subject.subject_token().await?;
        let actor = match &self.actor {
            Some((source, kind)) => Some((source.subject_token().await?, kind)),
            None => None,
        };
        let scope = self.scopes.join(" ");
        let mut request = self
            .endpoint
            .request()
            .describe(SENDING, ALLOW_WITH)
            .accept_not_applicable()
            .param("grant_type", Self::GRANT_TYPE)
            .secret_param("subject_token", subject.expose_secret())
            .param("subject_token_type", &self.subject_token_type);
        if let Some((token, kind)) = &actor {
            request = request
                .secret_param("actor_token", token.expose_secret())
                .param("actor_token_type", kind);
        }
        if let Some(kind) = &self.requested_token_type {
            request = request.param("requested_token_type", kind);
        }
        for audience in &self.audiences {
            request = request.param("audience", audience);
        }
        for resource in &self.resources {
            request = request.param("resource", resource);
        }
        if !scope.is_empty() {
            request = request.param("scope", &scope);
        }
        if let Some(client) = &self.client {
            request = client.authenticate(request);
        }
        request.send().await
    }
}

impl TokenExchange {
    fn with_params(&self, params: &crate::TokenParams) -> Self {
        let mut this = self.clone();
        if !params.scopes().is_empty() {
            this.scopes = params.scopes().to_vec();
        }
        if let Some(audience) = params.audience_value() {
            this.audiences = vec![audience.to_owned()];
        }
        if !params.resources().is_empty() {
            this.resources = params.resources().to_vec();
        }
        this
    }
}

impl fmt::Debug for TokenExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenExchange")
            .field("endpoint", &self.endpoint)
            .field("subject_token_type", &self.subject_token_type)
            .field("audiences", &self.audiences)
            .field("resources", &self.resources)
            .field("scopes", &self.scopes)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}
