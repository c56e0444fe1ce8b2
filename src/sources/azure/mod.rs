//! Tokens from Azure (feature `azure`).
//!
//! | you run | reach for |
//! |---|---|
//! | on an Azure VM, a scale set, App Service, Functions, Container Apps | [`ManagedIdentity`] |
//! | on an Azure VM (IMDS only) | [`Imds`] |
//! | in App Service, Functions, Container Apps (`IDENTITY_ENDPOINT` only) | [`AppService`] |
//! | on AKS with workload identity (`AZURE_FEDERATED_TOKEN_FILE`) | [`WorkloadIdentity`] |
//!
//! Each is a [`TokenSource`](crate::TokenSource) like any grant: give it to a
//! [`TokenProvider`](crate::TokenProvider), a [token store](crate::store) and both
//! integrations.
//! Azure Arc, Cloud Shell (`MSI_ENDPOINT`) and Service Fabric managed identities are not
//! implemented.
//!
//! # Testing
//!
//! Every endpoint has an override, and tests point it at a local server (the
//! `token-refresh-emulator` plays IMDS, App Service and Entra):
//! [`Imds::endpoint`] (or `AZURE_POD_IDENTITY_AUTHORITY_HOST`), [`AppService::new`] (or
//! `IDENTITY_ENDPOINT`), [`WorkloadIdentity::authority_host`] (or `AZURE_AUTHORITY_HOST`).
//! Nothing is ever sent to `169.254.169.254` by a test.
//!
//! # Recipes
//!
//! On an **Azure VM** (or a scale set) with a managed identity, calling Azure Resource
//! Manager:
//!
//! ```no_run
//! # #[cfg(feature = "reqwest")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use reqwest_middleware::ClientBuilder;
//! use token_refresh::azure::{ManagedIdentity, UserAssignedId};
//! use token_refresh::{AuthMiddleware, TokenProvider};
//!
//! let source = ManagedIdentity::new("https://management.azure.com/");
//! // A user-assigned identity instead of the VM's own:
//! // let source = source.user_assigned(UserAssignedId::ClientId("…".into()));
//! let provider = TokenProvider::new(source);
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(AuthMiddleware::new(provider).for_origin("https://management.azure.com"))
//!     .build();
//! let subscriptions = client
//!     .get("https://management.azure.com/subscriptions?api-version=2022-12-01")
//!     .send()
//!     .await?;
//! # drop(subscriptions); Ok(()) }
//! ```
//!
//! On **AKS** with workload identity (the pod's service account annotated with
//! `azure.workload.identity/client-id`, the pod labelled `azure.workload.identity/use:
//! "true"`), reading a Key Vault secret; the federated token file is read for every token
//! request:
//!
//! ```no_run
//! # #[cfg(feature = "reqwest")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use reqwest_middleware::ClientBuilder;
//! use token_refresh::azure::WorkloadIdentity;
//! use token_refresh::{AuthMiddleware, TokenProvider};
//!
//! let source = WorkloadIdentity::from_env("https://vault.azure.net/.default")?;
//! let provider = TokenProvider::new(source);
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(AuthMiddleware::new(provider).for_origin("https://my-vault.vault.azure.net"))
//!     .build();
//! let secret = client
//!     .get("https://my-vault.vault.azure.net/secrets/db-password?api-version=7.4")
//!     .send()
//!     .await?;
//! # drop(secret); Ok(()) }
//! ```

mod app_service;
mod imds;
mod workload;

use std::time::Duration;

pub use app_service::{
    APP_SERVICE_API_VERSION, AppService, ENV_IDENTITY_ENDPOINT, ENV_IDENTITY_HEADER,
};
pub use imds::{ENV_AZURE_POD_IDENTITY_AUTHORITY_HOST, IMDS_API_VERSION, IMDS_ENDPOINT, Imds};
pub use workload::{
    DEFAULT_AUTHORITY_HOST, ENV_AZURE_AUTHORITY_HOST, ENV_AZURE_CLIENT_ID,
    ENV_AZURE_FEDERATED_TOKEN_FILE, ENV_AZURE_TENANT_ID, WorkloadIdentity,
};

use crate::error::{Error, Result};
use crate::params::TokenParams;
use crate::source::TokenSource;
use crate::store::KeyBuilder;
use crate::token::AccessToken;

/// A user-assigned managed identity, by one of its three names.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserAssignedId {
    /// Its client (application) id.
    ClientId(String),
    /// Its object (principal) id.
    ObjectId(String),
    /// Its Azure resource id, `/subscriptions/…/userAssignedIdentities/{name}`.
    ResourceId(String),
}

impl UserAssignedId {
    /// The query parameter IMDS wants.
    fn imds_param(&self) -> (&'static str, &str) {
        match self {
            Self::ClientId(id) => ("client_id", id),
            Self::ObjectId(id) => ("object_id", id),
            Self::ResourceId(id) => ("msi_res_id", id),
        }
    }

    /// The query parameter App Service wants.
    fn app_service_param(&self) -> (&'static str, &str) {
        match self {
            Self::ClientId(id) => ("client_id", id),
            Self::ObjectId(id) => ("principal_id", id),
            Self::ResourceId(id) => ("mi_res_id", id),
        }
    }

    /// Adds the identity (or its absence) to a store key.
    fn key_parts(id: Option<&Self>, key: KeyBuilder) -> KeyBuilder {
        match id.map(Self::imds_param) {
            Some((name, value)) => key.part([1]).part(name).part(value),
            None => key.part([0]),
        }
    }
}

/// A resource from a resource or a scope: `https://vault.azure.net/.default` asks for
/// `https://vault.azure.net`.
fn resource_of(resource_or_scope: &str) -> String {
    let trimmed = resource_or_scope.trim();
    trimmed
        .strip_suffix("/.default")
        .unwrap_or(trimmed)
        .to_owned()
}

/// The one resource a managed-identity token request asks for under a keyed provider's
/// `params`: a resource, or a scope (`https://vault.azure.net/.default` asks for
/// `https://vault.azure.net`); `own` when `params` name none. Managed identity has no
/// audience parameter, and gives a token for one resource at a time.
fn resource_for(params: &TokenParams, own: &str, service: &str) -> Result<String> {
    if params.audience_value().is_some() {
        return Err(Error::Config(format!(
            "{service} takes a resource, not an audience: route with TokenParams::resource \
             (https://vault.azure.net) or a scope (https://vault.azure.net/.default)"
        )));
    }
    let mut asked: Vec<String> = params
        .resources()
        .iter()
        .chain(params.scopes())
        .map(|r| resource_of(r))
        .collect();
    asked.sort_unstable();
    asked.dedup();
    match asked.len() {
        0 => Ok(own.to_owned()),
        1 => Ok(asked.remove(0)),
        _ => Err(Error::Config(format!(
            "{service} gives a token for one resource at a time, and these parameters name \
             {}: {asked:?}; route each API to its own resource",
            asked.len()
        ))),
    }
}

/// A [`TokenSource`] for an Azure managed identity wherever the code runs: the App
/// Service identity endpoint when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set
/// (App Service, Functions, Container Apps), IMDS otherwise (VMs, scale sets, AKS nodes).
/// The choice is made once, at construction, from the environment.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_refresh::TokenProvider;
/// use token_refresh::azure::{Imds, ManagedIdentity};
/// use token_refresh_emulator::Emulator;
///
/// let emulator = Emulator::start().await?;
/// // In tests, build the platform's source with its override; on Azure,
/// // `ManagedIdentity::new("https://management.azure.com/")` finds it.
/// let source = ManagedIdentity::from(Imds::new("https://management.azure.com/").endpoint(emulator.imds_endpoint()));
/// assert!(!TokenProvider::new(source).token().await?.expose_secret().is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ManagedIdentity {
    inner: Inner,
}

#[derive(Clone, Debug)]
enum Inner {
    Imds(Imds),
    AppService(AppService),
}

impl ManagedIdentity {
    /// Tokens for `resource` (a scope's `/.default` is dropped) from the platform's
    /// managed-identity endpoint, chosen from the environment now. Does no I/O.
    pub fn new(resource: impl Into<String>) -> Self {
        let resource = resource.into();
        let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        let inner = if set(ENV_IDENTITY_ENDPOINT) && set(ENV_IDENTITY_HEADER) {
            Inner::AppService(AppService::from_env(resource))
        } else {
            Inner::Imds(Imds::new(resource))
        };
        Self { inner }
    }

    /// Uses the user-assigned identity `id`. Default: the system-assigned identity.
    pub fn user_assigned(self, id: UserAssignedId) -> Self {
        let inner = match self.inner {
            Inner::Imds(s) => Inner::Imds(s.user_assigned(id)),
            Inner::AppService(s) => Inner::AppService(s.user_assigned(id)),
        };
        Self { inner }
    }

    /// The timeout of one request, connect to last byte. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`](crate::defaults::DEFAULT_REQUEST_TIMEOUT) (10 s).
    pub fn timeout(self, timeout: Duration) -> Self {
        let inner = match self.inner {
            Inner::Imds(s) => Inner::Imds(s.timeout(timeout)),
            Inner::AppService(s) => Inner::AppService(s.timeout(timeout)),
        };
        Self { inner }
    }

    /// Which endpoint was chosen: `"imds"` or `"app-service"`.
    pub fn kind(&self) -> &'static str {
        match self.inner {
            Inner::Imds(_) => "imds",
            Inner::AppService(_) => "app-service",
        }
    }
}

impl From<Imds> for ManagedIdentity {
    fn from(source: Imds) -> Self {
        Self {
            inner: Inner::Imds(source),
        }
    }
}

impl From<AppService> for ManagedIdentity {
    fn from(source: AppService) -> Self {
        Self {
            inner: Inner::AppService(source),
        }
    }
}

#[async_trait::async_trait]
impl TokenSource for ManagedIdentity {
    /// The chosen endpoint's key.
    fn store_key(&self) -> Option<String> {
        match &self.inner {
            Inner::Imds(s) => s.store_key(),
            Inner::AppService(s) => s.store_key(),
        }
    }

    async fn fetch_token(&self) -> Result<AccessToken> {
        match &self.inner {
            Inner::Imds(s) => s.fetch_token().await,
            Inner::AppService(s) => s.fetch_token().await,
        }
    }

    /// The chosen endpoint's token for the resource `params` name.
    async fn fetch_token_for(&self, params: &TokenParams) -> Result<AccessToken> {
        match &self.inner {
            Inner::Imds(s) => s.fetch_token_for(params).await,
            Inner::AppService(s) => s.fetch_token_for(params).await,
        }
    }
}
