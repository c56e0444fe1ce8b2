//! Disruptive Technologies facts: where its identity service and API live, and the
//! environment variables its service accounts are read from.

/// DT's token endpoint, the default token URL of [`JwtBearer`](crate::JwtBearer).
pub const TOKEN_URL: &str = "https://identity.disruptive-technologies.com/oauth2/token";

/// DT's REST API base URL.
pub const API_URL: &str = "https://api.disruptive-technologies.com/v2";

/// Names the credentials file to read, in [`ServiceAccount::discover`](crate::ServiceAccount::discover).
pub const ENV_CREDENTIALS_FILE: &str = "DT_CREDENTIALS_FILE";

/// The service account's key id (the JWT `kid`).
pub const ENV_KEY_ID: &str = "DT_SERVICE_ACCOUNT_KEY_ID";

/// The service account's secret (the HMAC key).
pub const ENV_SECRET: &str = "DT_SERVICE_ACCOUNT_SECRET";

/// The service account's email (the JWT `iss`).
pub const ENV_EMAIL: &str = "DT_SERVICE_ACCOUNT_EMAIL";
