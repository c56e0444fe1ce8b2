//! Tokens from where a cloud platform puts them: grants like the others, each a
//! [`TokenSource`](crate::TokenSource) with a store key, behind the features `gcp` and
//! `azure`.
//!
//! Every source talks to its service through [`call`], which reuses the token endpoint's
//! client, timeouts, size cap and transport rules; plain `http` goes only to a metadata
//! service's own link-local host or to loopback.

#[cfg(feature = "azure")]
pub mod azure;
pub(crate) mod call;
#[cfg(feature = "gcp")]
pub mod gcp;
