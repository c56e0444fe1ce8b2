//! `TokenProvider::discover`: the one-call start for a DT service account.
//!
//! It ties the credentials, the grant and the provider together, so it lives apart from all
//! three, and none of them depends on another for it.

use crate::credentials::ServiceAccount;
use crate::error::Result;
use crate::grants::jwt_bearer::JwtBearer;
use crate::provider::TokenProvider;

impl TokenProvider {
    /// A provider for the DT service account that [`ServiceAccount::discover`] finds, using
    /// [`JwtBearer`] with the account's token endpoint (DT's by default). To change the
    /// grant's settings, build it yourself:
    /// `TokenProvider::new(JwtBearer::new(ServiceAccount::discover()?).allow_http(true))`.
    pub fn discover() -> Result<Self> {
        Ok(Self::new(JwtBearer::new(ServiceAccount::discover()?)))
    }
}
