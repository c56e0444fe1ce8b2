//! AKS workload identity: the pod's federated token, read from its file at every token
//! request, as the client assertion of a client-credentials grant at Entra.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::ExposeSecret as _;

use super::resource_of;
use crate::error::{Error, Result};
use crate::exchange::TokenEndpoint;
use crate::grants::client_credentials::ClientCredentials;
use crate::grants::token_exchange::{SubjectTokenFile, SubjectTokenSource};
use crate::params::TokenParams;
use crate::source::TokenSource;
use crate::store::KeyBuilder;
use crate::token::AccessToken;

/// The variable with the path of the pod's federated token (set by AKS's webhook).
pub const ENV_AZURE_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// The variable with the client id of the Entra application or user-assigned identity.
pub const ENV_AZURE_CLIENT_ID: &str = "AZURE_CLIENT_ID";
/// The variable with the Entra tenant id.
pub const ENV_AZURE_TENANT_ID: &str = "AZURE_TENANT_ID";
/// The variable with the Entra authority host (a sovereign cloud's, or a test's).
pub const ENV_AZURE_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
/// Entra's authority host in Azure's public cloud.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// The `client_assertion_type` of RFC 7523 §2.2.
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A [`TokenSource`] for AKS workload identity (and any Entra workload identity
/// federation): the token the kubelet projects into the pod, sent as the client assertion
/// of a client-credentials grant at `{authority}/{tenant}/oauth2/v2.0/token`.
///
/// The form is `grant_type=client_credentials`, `client_id`, `client_assertion_type`,
/// `client_assertion` (the file's content) and `scope`. **The file is read afresh for
/// every token request**: the kubelet rewrites it before it expires, and a source that read
/// it once fails every call an hour later with `AADSTS700024` (Azure SDK for Rust #1739). A
/// missing or empty file is a transient [`Error::SubjectToken`] naming the file (the
/// kubelet may be rewriting it). Everything about the request itself is the
/// [`TokenEndpoint`]'s: https only (loopback excepted), no redirects, Entra's
/// `error_description` (`AADSTS…`) in [`Error::OAuth`], the assertion scrubbed from it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use token_refresh::TokenProvider;
/// use token_refresh::azure::WorkloadIdentity;
/// use token_refresh_emulator::{AZURE_FEDERATION_AUDIENCE, Emulator, FEDERATED_SUBJECT};
///
/// let emulator = Emulator::start().await?;
/// // The kubelet's projected token; on AKS: `WorkloadIdentity::from_env(scope)?`.
/// let path = std::env::temp_dir().join(format!("azure-token-doc-{}", std::process::id()));
/// let federated = emulator
///     .federated_token(FEDERATED_SUBJECT, AZURE_FEDERATION_AUDIENCE, Duration::from_secs(3600))
///     .await;
/// std::fs::write(&path, federated)?;
///
/// let source = WorkloadIdentity::new(emulator.azure_tenant_id(), emulator.azure_client_id(), &path)
///     .authority_host(emulator.authority_host())
///     .scope("https://storage.azure.com/.default");
/// assert!(!TokenProvider::new(source).token().await?.expose_secret().is_empty());
/// # std::fs::remove_file(&path)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WorkloadIdentity {
    tenant_id: String,
    client_id: String,
    file: PathBuf,
    authority: String,
    scope: String,
    endpoint: TokenEndpoint,
}

impl WorkloadIdentity {
    /// What AKS's webhook puts in the pod: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
    /// `AZURE_FEDERATED_TOKEN_FILE` and, if set, `AZURE_AUTHORITY_HOST` (read now), for
    /// `scope` (`https://management.azure.com/.default`; a resource gets `/.default`
    /// appended). [`Error::MissingEnvVars`] names every variable that is missing.
    /// Does no I/O.
    pub fn from_env(scope: impl Into<String>) -> Result<Self> {
        let read = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let (tenant, client, file) = (
            read(ENV_AZURE_TENANT_ID),
            read(ENV_AZURE_CLIENT_ID),
            read(ENV_AZURE_FEDERATED_TOKEN_FILE),
        );
        let (Some(tenant), Some(client), Some(file)) = (&tenant, &client, &file) else {
            return Err(Error::MissingEnvVars {
                names: [
                    tenant.is_none().then_some(ENV_AZURE_TENANT_ID),
                    client.is_none().then_some(ENV_AZURE_CLIENT_ID),
                    file.is_none().then_some(ENV_AZURE_FEDERATED_TOKEN_FILE),
                ]
                .into_iter()
                .flatten()
                .collect(),
            });
        };
        let mut source = Self::new(tenant.trim(), client.trim(), file).scope(scope);
        if let Some(host) = read(ENV_AZURE_AUTHORITY_HOST) {
            source = source.authority_host(host.trim());
        }
        Ok(source)
    }

    /// The application `client_id` of `tenant_id`, with the federated token in the file at
    /// `token_file`, at [`DEFAULT_AUTHORITY_HOST`]. Without [`scope`](Self::scope), the
    /// first token request fails with [`Error::Config`]. Does no I/O.
    pub fn new(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        token_file: impl Into<PathBuf>,
    ) -> Self {
        let mut source = Self {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            file: token_file.into(),
            authority: DEFAULT_AUTHORITY_HOST.to_owned(),
            scope: String::new(),
            endpoint: TokenEndpoint::new(String::new()),
        };
        source.endpoint = TokenEndpoint::new(source.token_url());
        source
    }

    /// The Entra authority host (`https://login.microsoftonline.us` for Azure Government;
    /// a local emulator in tests). Default: [`DEFAULT_AUTHORITY_HOST`], or
    /// `AZURE_AUTHORITY_HOST` with [`from_env`](Self::from_env).
    pub fn authority_host(mut self, host: impl Into<String>) -> Self {
        self.authority = host.into().trim_end_matches('/').to_owned();
        self.endpoint = self.endpoint.clone().with_url(self.token_url());
        self
    }

    /// The scope tokens are for: a resource's `/.default` (appended to a resource given
    /// without it). Default: none, which Entra refuses.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = entra_scope(&scope.into());
        self
    }

    /// The timeout of one token request, connect to last byte. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`](crate::defaults::DEFAULT_REQUEST_TIMEOUT) (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.timeout(timeout);
        self
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority, self.tenant_id)
    }
}

#[async_trait::async_trait]
impl TokenSource for WorkloadIdentity {
    /// `azure-workload-{hash}`: the token URL (authority and tenant), the client id and
    /// the scope.
    fn store_key(&self) -> Option<String> {
        Some(
            self.endpoint
                .key_parts(KeyBuilder::new("azure-workload"))
                .part(&self.client_id)
                .part(&self.scope)
                .finish(),
        )
    }

    async fn fetch_token(&self) -> Result<AccessToken> {
        self.fetch(&self.scope).await
    }

    /// A token for the scopes `params` name, or `{resource}/.default` for the one resource
    /// they name; [`Error::Config`] for an audience, or for scopes and resources together.
    async fn fetch_token_for(&self, params: &TokenParams) -> Result<AccessToken> {
        let refuse = |what: &str| {
            Err(Error::Config(format!(
                "Entra (workload identity) {what}: route with TokenParams::scope \
                 (https://vault.azure.net/.default) or TokenParams::resource \
                 (https://vault.azure.net)"
            )))
        };
        if params.audience_value().is_some() {
            return refuse("takes scopes, not an audience");
        }
        let scope = match (params.scopes(), params.resources()) {
            ([], []) => self.scope.clone(),
            (scopes, []) => entra_scope(&scopes.join(" ")),
            ([], [resource]) => format!("{}/.default", resource_of(resource)),
            ([], _) => return refuse("gives a token for one resource at a time"),
            _ => return refuse("takes scopes or one resource, not both"),
        };
        self.fetch(&scope).await
    }
}

/// `scope` as Entra wants it: a lone resource gets its `/.default`.
fn entra_scope(scope: &str) -> String {
    let scope = scope.trim();
    if scope.is_empty() || scope.ends_with("/.default") || scope.contains(' ') {
        scope.to_owned()
    } else {
        format!("{scope}/.default")
    }
}

impl WorkloadIdentity {
    async fn fetch(&self, scope: &str) -> Result<AccessToken> {
        if self.tenant_id.trim().is_empty() || self.tenant_id.contains(['/', '?', '#']) {
            return Err(Error::Config(format!(
                "the Azure tenant id {:?} is not a tenant id ({ENV_AZURE_TENANT_ID})",
                self.tenant_id
            )));
        }
        if self.client_id.trim().is_empty() {
            return Err(Error::EmptyCredential { field: "client_id" });
        }
        if scope.is_empty() {
            return Err(Error::Config(
                "WorkloadIdentity needs a scope, e.g. https://management.azure.com/.default".into(),
            ));
        }
        // Read now, every time: the kubelet rewrites it before it expires.
        let assertion = SubjectTokenFile::new(&self.file).subject_token().await?;
        self.endpoint
            .request()
            .describe(
                "the federated client assertion",
                "an https AZURE_AUTHORITY_HOST",
            )
            .param("grant_type", ClientCredentials::GRANT_TYPE)
            .param("client_id", &self.client_id)
            .param("client_assertion_type", CLIENT_ASSERTION_TYPE)
            .secret_param("client_assertion", assertion.expose_secret())
            .param("scope", scope)
            .send()
            .await
    }
}

impl fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("token_file", &self.file)
            .field("authority", &self.authority)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}
