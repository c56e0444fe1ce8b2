//! The built-in grants, one per file; each is a [`TokenSource`](crate::TokenSource) that
//! builds its form and sends it through the shared [`TokenEndpoint`](crate::TokenEndpoint).

pub(crate) mod client;
pub(crate) mod client_credentials;
pub(crate) mod google;
pub(crate) mod jwt_bearer;
pub(crate) mod refresh_token;
pub(crate) mod token_exchange;

/// Splits scopes given as one space-separated string or one at a time, and appends them.
/// Applies a keyed provider's `params` to a grant's scopes and extra form parameters: what
/// `params` names replaces the grant's own (scopes; the `audience` parameter; the `resource`
/// parameters), what it leaves empty stays.
pub(crate) fn apply_params(
    params: &crate::TokenParams,
    scopes: &mut Vec<String>,
    form: &mut Vec<(String, String)>,
) {
    if !params.scopes().is_empty() {
        *scopes = params.scopes().to_vec();
    }
    if let Some(audience) = params.audience_value() {
        form.retain(|(name, _)| name != "audience");
        form.push(("audience".into(), audience.into()));
    }
    if !params.resources().is_empty() {
        form.retain(|(name, _)| name != "resource");
        form.extend(
            params
                .resources()
                .iter()
                .map(|r| ("resource".into(), r.clone())),
        );
    }
}

pub(crate) fn add_scopes(scopes: &mut Vec<String>, scope: &str) {
    for scope in scope.split_whitespace() {
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_owned());
        }
    }
}
