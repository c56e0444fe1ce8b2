//! Client authentication at the token endpoint (RFC 6749 §2.3.1), for the client-credentials
//! grant: HTTP Basic or `client_id` + `client_secret` form parameters, never both.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::HeaderMap;
use http::header::AUTHORIZATION;
use secrecy::{ExposeSecret, SecretString};

use super::form::{Form, Rejection, parse_form, percent_decode};

/// Base64 as RFC 6749 §2.3.1 wants it (the standard alphabet), decoding with or without
/// padding: clients disagree on the padding, and it carries no information.
const BASIC: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The one OAuth2 client the emulator knows: its id and secret.
#[derive(Clone)]
pub(super) struct Client {
    pub(super) id: String,
    pub(super) secret: SecretString,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

impl Client {
    /// Checks the client authentication of a token request. Errors name the failed check,
    /// never a value: `invalid_request` (400) for Basic and `client_secret` together or a
    /// `client_id` parameter that contradicts Basic; `invalid_client` (401) for missing,
    /// malformed or wrong credentials, with a Basic challenge if the request carried an
    /// `Authorization` header.
    pub(super) fn authenticate(&self, headers: &HeaderMap, form: &Form) -> Result<(), Rejection> {
        let form_id = form.get("client_id");
        let form_secret = form.get("client_secret");
        let Some(authorization) = headers.get(AUTHORIZATION) else {
            return self.check_post(form_id, form_secret);
        };
        if form_secret.is_some() {
            return Err(Rejection::request(
                "the client authenticated with both HTTP Basic and the client_secret parameter",
            ));
        }
        let (id, secret) = decode_basic(authorization.as_bytes())?;
        if form_id.is_some_and(|form_id| form_id != id) {
            return Err(Rejection::request(
                "the client_id parameter does not match the HTTP Basic client id",
            ));
        }
        self.check(&id, &secret).map_err(Rejection::with_challenge)
    }

    fn check_post(&self, id: Option<&str>, secret: Option<&str>) -> Result<(), Rejection> {
        match (id, secret) {
            (None, None) => Err(Rejection::client(
                "the request has no client authentication (HTTP Basic, or the client_id and \
                 client_secret parameters)",
            )),
            (None, Some(_)) => Err(Rejection::client("the client_id parameter is missing")),
            (Some(_), None) => Err(Rejection::client("the client_secret parameter is missing")),
            (Some(id), Some(secret)) => self.check(id, secret),
        }
    }

    fn check(&self, id: &str, secret: &str) -> Result<(), Rejection> {
        if id.is_empty() {
            return Err(Rejection::client("the client id is empty"));
        }
        if secret.is_empty() {
            return Err(Rejection::client("the client secret is empty"));
        }
        if id != self.id {
            return Err(Rejection::client("the client id is not a known client"));
        }
        if secret != self.secret.expose_secret() {
            return Err(Rejection::client(
                "the client secret does not match the client's",
            ));
        }
        Ok(())
    }
}

/// What a server that takes only `methods` (RFC 8414 `token_endpoint_auth_methods_supported`)
/// and, for client assertions, only `algs` says to a token request: `None` if it may go on to
/// the other checks, else `invalid_client` naming the method or algorithm it used. A request
/// without client authentication (a JWT-bearer grant) or whose form does not decode is left
/// to the other checks.
pub(super) fn refuse_method(
    headers: &HeaderMap,
    body: &[u8],
    methods: Option<&[String]>,
    algs: Option<&[String]>,
) -> Option<Rejection> {
    let form = parse_form(body).ok()?;
    let (method, alg) = if let Some(assertion) = form.get("client_assertion") {
        let alg = super::jwt::header(assertion)
            .and_then(|h| h.get("alg").and_then(|a| a.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let method = if alg == "HS256" {
            "client_secret_jwt"
        } else {
            "private_key_jwt"
        };
        (method, Some(alg))
    } else if headers.contains_key(AUTHORIZATION) {
        ("client_secret_basic", None)
    } else if form.get("client_secret").is_some() {
        ("client_secret_post", None)
    } else {
        return None;
    };
    if methods.is_some_and(|m| !m.iter().any(|m| m == method)) {
        return Some(Rejection::client(format!(
            "this server does not accept {method} (token_endpoint_auth_methods_supported)"
        )));
    }
    match (alg, algs) {
        (Some(alg), Some(algs)) if !algs.contains(&alg) => Some(Rejection::client(format!(
            "this server does not accept client assertions signed {alg} \
                 (token_endpoint_auth_signing_alg_values_supported)"
        ))),
        _ => None,
    }
}

/// Decodes `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1): the scheme
/// in any case, then the id and the secret, each form-urlencoded (`+` is a space, `%XX` an
/// escape), split at the first `:`.
fn decode_basic(value: &[u8]) -> Result<(String, String), Rejection> {
    let malformed = |what: &str| Rejection::client(what).with_challenge();
    let value = std::str::from_utf8(value)
        .map_err(|_| malformed("the Authorization header is not valid text"))?;
    let (scheme, credentials) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| malformed("the Authorization header is not HTTP Basic"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed(
            "the Authorization header is not HTTP Basic, the only client authentication \
             scheme supported",
        ));
    }
    let decoded = BASIC
        .decode(credentials.trim())
        .map_err(|_| malformed("the HTTP Basic credentials are not valid base64"))?;
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| malformed("the HTTP Basic credentials have no ':' separator"))?;
    let id = percent_decode(&decoded[..colon])
        .ok_or_else(|| malformed("the HTTP Basic client id is not form-urlencoded UTF-8"))?;
    let secret = percent_decode(&decoded[colon + 1..])
        .ok_or_else(|| malformed("the HTTP Basic client secret is not form-urlencoded UTF-8"))?;
    Ok((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
        .into_bytes()
    }

    #[test]
    fn basic_values_are_form_urldecoded_and_split_at_the_first_colon() {
        let (id, secret) = decode_basic(&basic("my%3Aclient:a+b%25c%3Ad%C3%A9")).unwrap();
        assert_eq!(id, "my:client");
        assert_eq!(secret, "a b%c:dé");
        let (id, secret) = decode_basic(&basic("id:with:colons")).unwrap();
        assert_eq!((id.as_str(), secret.as_str()), ("id", "with:colons"));
    }

    #[test]
    fn padding_is_optional_and_the_scheme_case_insensitive() {
        let unpadded = format!(
            "bAsIc {}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode("a:bc")
        );
        let (id, secret) = decode_basic(unpadded.as_bytes()).unwrap();
        assert_eq!((id.as_str(), secret.as_str()), ("a", "bc"));
    }

    #[test]
    fn malformed_basic_is_invalid_client_with_a_challenge() {
        for value in [
            &b"Basic"[..],
            b"Bearer abc",
            b"Basic !!!not-base64",
            &basic("no-colon"),
            &basic("bad%zz:escape"),
            &basic("id:bad%zz"),
        ] {
            let rejection = decode_basic(value).unwrap_err();
            assert_eq!(rejection.error, "invalid_client");
            assert!(rejection.challenge, "{}", rejection.description);
        }
    }
}
