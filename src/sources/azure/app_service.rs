//! Azure managed identity in App Service, Functions and Container Apps: the local identity
//! endpoint named by `IDENTITY_ENDPOINT`, with its secret in `IDENTITY_HEADER`.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::imds::{parse_answer, refusal};
use super::{UserAssignedId, resource_for, resource_of};
use crate::error::{Error, Result, Scrubber};
use crate::exchange::TokenEndpoint;
use crate::params::TokenParams;
use crate::source::TokenSource;
use crate::sources::call::{Call, PlainHttp, parse_url};
use crate::store::KeyBuilder;
use crate::token::AccessToken;

/// The variable with the identity endpoint's URL (App Service, Functions, Container Apps).
pub const ENV_IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
/// The variable with the identity endpoint's secret, sent as `X-IDENTITY-HEADER`.
pub const ENV_IDENTITY_HEADER: &str = "IDENTITY_HEADER";
/// The API version asked for: the one whose answers carry `expires_on` in Unix seconds.
pub const APP_SERVICE_API_VERSION: &str = "2019-08-01";

/// A [`TokenSource`] for an Azure managed identity in App Service, Azure Functions or
/// Container Apps.
///
/// `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=…` with `X-IDENTITY-HEADER:
/// {IDENTITY_HEADER}`, plus `client_id`, `principal_id` or `mi_res_id` for a user-assigned
/// identity. The platform's endpoint is local (`http://localhost:…`), so plain http goes
/// to loopback only. The secret is redacted in `Debug` and never in an error. The token's
/// expiry is the answer's `expires_on`, as with [`Imds`](super::Imds).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_refresh::TokenProvider;
/// use token_refresh::azure::AppService;
/// use token_refresh_emulator::Emulator;
///
/// let emulator = Emulator::start().await?;
/// // On App Service: `AppService::from_env("https://vault.azure.net")`.
/// let source = AppService::new(
///     emulator.app_service_endpoint(),
///     emulator.app_service_secret(),
///     "https://vault.azure.net",
/// );
/// assert!(!TokenProvider::new(source).token().await?.expose_secret().is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AppService {
    /// The endpoint and its secret, or the variables that were missing.
    config: std::result::Result<(String, SecretString), Vec<&'static str>>,
    resource: String,
    identity: Option<UserAssignedId>,
    endpoint: TokenEndpoint,
}

impl AppService {
    /// The identity endpoint the platform names in `IDENTITY_ENDPOINT` and
    /// `IDENTITY_HEADER` (read now), for `resource` (a scope's `/.default` is dropped).
    /// Without them, every token request fails with [`Error::MissingEnvVars`] naming them.
    /// Does no I/O.
    pub fn from_env(resource: impl Into<String>) -> Self {
        let read = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let config = match (read(ENV_IDENTITY_ENDPOINT), read(ENV_IDENTITY_HEADER)) {
            (Some(url), Some(secret)) => Ok((url, SecretString::from(secret))),
            (url, secret) => Err([
                url.is_none().then_some(ENV_IDENTITY_ENDPOINT),
                secret.is_none().then_some(ENV_IDENTITY_HEADER),
            ]
            .into_iter()
            .flatten()
            .collect()),
        };
        Self::with_config(config, resource.into())
    }

    /// The identity endpoint at `url` with `secret` (what the variables hold), for tests
    /// and for hosts that pass them otherwise. Does no I/O.
    pub fn new(
        url: impl Into<String>,
        secret: impl Into<String>,
        resource: impl Into<String>,
    ) -> Self {
        Self::with_config(
            Ok((url.into(), SecretString::from(secret.into()))),
            resource.into(),
        )
    }

    fn with_config(
        config: std::result::Result<(String, SecretString), Vec<&'static str>>,
        resource: String,
    ) -> Self {
        let url = config.as_ref().map(|(u, _)| u.clone()).unwrap_or_default();
        Self {
            endpoint: TokenEndpoint::new(url),
            config,
            resource: resource_of(&resource),
            identity: None,
        }
    }

    /// Uses the user-assigned identity `id`. Default: the system-assigned identity.
    pub fn user_assigned(mut self, id: UserAssignedId) -> Self {
        self.identity = Some(id);
        self
    }

    /// The timeout of one request, connect to last byte. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`](crate::defaults::DEFAULT_REQUEST_TIMEOUT) (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.timeout(timeout);
        self
    }

    /// The resource tokens are asked for.
    pub fn resource(&self) -> &str {
        &self.resource
    }
}

#[async_trait::async_trait]
impl TokenSource for AppService {
    /// `azure-app-service-{hash}`: the endpoint's URL, the resource and the user-assigned
    /// identity (not the secret, which the platform rotates).
    fn store_key(&self) -> Option<String> {
        let url = self.config.as_ref().map(|(u, _)| u.as_str()).unwrap_or("");
        let key = KeyBuilder::new("azure-app-service")
            .part(url)
            .part(&self.resource);
        Some(UserAssignedId::key_parts(self.identity.as_ref(), key).finish())
    }

    async fn fetch_token(&self) -> Result<AccessToken> {
        self.fetch(&self.resource).await
    }

    /// A token for the one resource `params` name (a resource, or a scope whose
    /// `/.default` is dropped); [`Error::Config`] for an audience or several resources.
    async fn fetch_token_for(&self, params: &TokenParams) -> Result<AccessToken> {
        let resource = resource_for(
            params,
            &self.resource,
            "the Azure App Service identity endpoint",
        )?;
        self.fetch(&resource).await
    }
}

impl AppService {
    async fn fetch(&self, resource: &str) -> Result<AccessToken> {
        let (url, secret) = self
            .config
            .as_ref()
            .map_err(|missing| Error::MissingEnvVars {
                names: missing.clone(),
            })?;
        let service = format!("the Azure App Service identity endpoint at {url}");
        let mut url = parse_url(url, ENV_IDENTITY_ENDPOINT)?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("api-version", APP_SERVICE_API_VERSION);
            query.append_pair("resource", resource);
            if let Some(id) = &self.identity {
                let (name, value) = id.app_service_param();
                query.append_pair(name, value);
            }
        }
        let answer = Call::get(
            &self.endpoint,
            &service,
            url,
            PlainHttp::https("https, or a loopback host as the platform's endpoint is"),
        )
        .header("x-identity-header", secret.expose_secret(), true)
        .send()
        .await?;
        if !answer.is_success() {
            let scrubber = Scrubber::default().secret(secret.expose_secret());
            return Err(refusal(&answer, &service, &[], &scrubber));
        }
        parse_answer(&answer, &service)
    }
}

impl fmt::Debug for AppService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppService")
            .field(
                "endpoint",
                &self.config.as_ref().map(|(u, _)| u.as_str()).ok(),
            )
            .field("secret", &"[REDACTED]")
            .field("resource", &self.resource)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}
