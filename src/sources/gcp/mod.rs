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
//! integrations.

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
