//! Tokens from Google Cloud (feature `gcp`).
//!
//! | you run | reach for |
//! |---|---|
//! | anywhere: a key file, `gcloud auth application-default login`, or on Google Cloud | [`ApplicationDefaultCredentials`] |
//! | on Compute Engine, GKE, Cloud Run, Cloud Functions | [`MetadataServer`] |
//! | a call to a Cloud Run service or through IAP (an ID token) | [`MetadataServer::id_token`] |
//! | off Google Cloud with workload identity federation (a Kubernetes token, an OIDC file, a URL, an executable) | [`ExternalAccount`] |
//! | as another service account | [`ImpersonatedServiceAccount`] |
//!
//! Each is a [`TokenSource`](crate::TokenSource) like any grant: give it to a
//! [`TokenProvider`](crate::TokenProvider), a [token store](crate::store) and both
//! integrations. The `aws` credential source of `external_account` (a SigV4-signed
//! `GetCallerIdentity` request) is not implemented: a file that names it is refused with
//! an error saying so.
//!
//! # Testing
//!
//! Every endpoint has an override, and tests point it at a local server (the
//! `token-refresh-emulator` plays the metadata server, STS and IAM Credentials):
//! [`MetadataServer::endpoint`] (or `GCE_METADATA_HOST=127.0.0.1:PORT`), and the
//! `token_url`, `service_account_impersonation_url` and `token_uri` of credentials files.
//! Nothing is ever sent to `169.254.169.254` or `metadata.google.internal` by a test.
//!
//! # Recipes
//!
//! On **GKE with Workload Identity** (the pod's Kubernetes service account bound to a
//! Google service account), the node's GKE metadata server hands out the bound account's
//! tokens; Application Default Credentials find it (and a key file or a gcloud login on a
//! laptop):
//!
//! ```no_run
//! # #[cfg(feature = "reqwest")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use reqwest_middleware::ClientBuilder;
//! use token_refresh::gcp::ApplicationDefaultCredentials;
//! use token_refresh::{AuthMiddleware, TokenProvider};
//!
//! let source = ApplicationDefaultCredentials::new()?;
//! let provider = TokenProvider::builder(source).name("gcs").build();
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(AuthMiddleware::new(provider).for_origin("https://storage.googleapis.com"))
//!     .build();
//! let objects = client
//!     .get("https://storage.googleapis.com/storage/v1/b/my-bucket/o")
//!     .send()
//!     .await?;
//! # drop(objects); Ok(()) }
//! ```
//!
//! On **Cloud Run**, calling another Cloud Run service that requires authentication: an ID
//! token for the receiver's URL, from the metadata server, refreshed before its `exp`:
//!
//! ```no_run
//! # #[cfg(feature = "reqwest")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use reqwest_middleware::ClientBuilder;
//! use token_refresh::gcp::MetadataServer;
//! use token_refresh::{AuthMiddleware, TokenProvider};
//!
//! let receiver = "https://receiver-abc123-uc.a.run.app";
//! let provider = TokenProvider::new(MetadataServer::new().id_token(receiver));
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(AuthMiddleware::new(provider).for_origin(receiver))
//!     .build();
//! let answer = client.get(format!("{receiver}/work")).send().await?;
//! # drop(answer); Ok(()) }
//! ```
//!
//! **Outside Google Cloud** (a Kubernetes cluster elsewhere, AKS, CI) with workload
//! identity federation: the credentials file `gcloud iam workload-identity-pools
//! create-cred-config` wrote, whose subject token (here the pod's projected token) is read
//! afresh at every exchange:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use token_refresh::TokenProvider;
//! use token_refresh::gcp::ExternalAccount;
//!
//! let source = ExternalAccount::from_file("/etc/workload-identity/credential-configuration.json")?;
//! let provider = TokenProvider::new(source);
//! let token = provider.token().await?;
//! # drop(token); Ok(()) }
//! ```

mod adc;
mod external_account;
mod impersonated;
mod metadata;

pub use adc::{ApplicationDefaultCredentials, ENV_CLOUDSDK_CONFIG, GOOGLE_TOKEN_URL};
pub use external_account::{
    DEFAULT_EXECUTABLE_TIMEOUT, ENV_ALLOW_EXECUTABLES, EXECUTABLE_REUSE_MARGIN, ExternalAccount,
};
pub use impersonated::{
    CLOUD_PLATFORM_SCOPE, DEFAULT_IMPERSONATION_LIFETIME, IAM_CREDENTIALS_URL,
    ImpersonatedServiceAccount,
};
pub use metadata::{
    ENV_GCE_METADATA_HOST, METADATA_DETECT_TIMEOUT, METADATA_HOST, METADATA_REPROBE_AFTER,
    MetadataIdToken, MetadataServer,
};
