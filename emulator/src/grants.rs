//! The emulator's other grants and its metadata: refresh tokens with rotation and reuse
//! detection, token exchange, and the RFC 8414 / OpenID discovery document.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::form::Rejection;
use super::routes::TOKEN_PATH;

/// Refresh tokens by family: each refresh spends one and issues the next in its family;
/// spending one twice revokes the family, as Auth0 and Okta do.
#[derive(Default)]
pub(super) struct RefreshTokens {
    /// Token → (family, spent).
    tokens: HashMap<String, (u64, bool)>,
    revoked: HashSet<u64>,
    families: u64,
    /// Set to keep refresh tokens as they are (no rotation); by default a refresh spends
    /// the old token and issues a new one.
    pub(super) no_rotation: bool,
}

/// What spending a refresh token did.
pub(super) enum Spent {
    /// Accepted: the next refresh token of the family (the same one if rotation is off).
    Ok(String),
    /// Refused: unknown, or its family is revoked.
    Refused(Rejection),
    /// Spent before: the family is now revoked.
    Reused(Rejection),
}

fn new_token() -> String {
    format!("rt-{:032x}", fastrand::u128(..))
}

impl RefreshTokens {
    /// A new family's first refresh token.
    pub(super) fn issue(&mut self) -> String {
        self.families += 1;
        let token = new_token();
        self.tokens.insert(token.clone(), (self.families, false));
        token
    }

    pub(super) fn spend(&mut self, token: &str) -> Spent {
        let Some(&(family, spent)) = self.tokens.get(token) else {
            return Spent::Refused(Rejection::grant("the refresh token is not known"));
        };
        if self.revoked.contains(&family) {
            return Spent::Refused(Rejection::grant("the refresh token's family was revoked"));
        }
        if spent {
            self.revoked.insert(family);
            return Spent::Reused(Rejection::grant(
                "the refresh token was already spent: reuse detected, its family is revoked",
            ));
        }
        if self.no_rotation {
            return Spent::Ok(token.to_owned());
        }
        self.tokens.insert(token.to_owned(), (family, true));
        let next = new_token();
        self.tokens.insert(next.clone(), (family, false));
        Spent::Ok(next)
    }
}

/// Whether `kind` is an RFC 8693 token type URI.
pub(super) fn is_token_type(kind: &str) -> bool {
    kind.strip_prefix("urn:ietf:params:oauth:token-type:")
        .is_some_and(|rest| !rest.is_empty())
}

/// The metadata document for the emulator at `origin`, naming `issuer` (the origin unless a
/// test makes it lie).
pub(super) fn metadata(origin: &str, issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "token_endpoint": format!("{origin}{TOKEN_PATH}"),
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "private_key_jwt", "client_secret_jwt"
        ],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA", "HS256"],
        "grant_types_supported": [
            "client_credentials",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ],
    })
}
