//! The built-in grants, one per file; each is a [`TokenSource`](crate::TokenSource) that
//! builds its form and sends it through the shared [`TokenEndpoint`](crate::TokenEndpoint).

pub(crate) mod client;
pub(crate) mod client_credentials;
pub(crate) mod google;
pub(crate) mod jwt_bearer;
pub(crate) mod refresh_token;
pub(crate) mod token_exchange;

/// Splits scopes given as one space-separated string or one at a time, and appends them.
pub(crate) fn add_scopes(scopes: &mut Vec<String>, scope: &str) {
    for scope in scope.split_whitespace() {
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_owned());
        }
    }
}
