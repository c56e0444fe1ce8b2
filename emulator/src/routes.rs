//! Where the emulator serves what: the paths every part of it names.

/// The token endpoint's path.
pub(crate) const TOKEN_PATH: &str = "/oauth2/token";
/// Where RFC 8414 metadata is served (the emulator's issuer has no path).
pub(crate) const OAUTH_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// Where OpenID Connect discovery finds the same document.
pub(crate) const OPENID_METADATA_PATH: &str = "/.well-known/openid-configuration";
/// Where RFC 9728 protected-resource metadata is served (followed by the resource's path).
pub(crate) const RESOURCE_METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
/// The API's path prefix.
pub(crate) const API_PREFIX: &str = "/v2";
