//! What the emulator's token and stream endpoints share below their checks: decoding a form
//! body, and the RFC 6749 §5.2 rejection a bad request gets.

use http::StatusCode;

/// Why a token request is refused: an RFC 6749 §5.2 `error` code and a description that
/// names the failed check (never the assertion, the secret or a parameter's value).
#[derive(Debug)]
pub(super) struct Rejection {
    pub(super) error: &'static str,
    pub(super) description: String,
    /// 400, or 401 for `invalid_client`.
    pub(super) status: StatusCode,
    /// Whether the answer carries `WWW-Authenticate: Basic realm="emulator"`: RFC 6749 §5.2
    /// wants it when the client tried to authenticate with the `Authorization` header.
    pub(super) challenge: bool,
}

impl Rejection {
    pub(super) fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            description: description.into(),
            status: StatusCode::BAD_REQUEST,
            challenge: false,
        }
    }

    pub(super) fn request(description: impl Into<String>) -> Self {
        Self::new("invalid_request", description)
    }

    pub(super) fn grant(description: impl Into<String>) -> Self {
        Self::new("invalid_grant", description)
    }

    /// `invalid_client`, 401.
    pub(super) fn client(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            ..Self::new("invalid_client", description)
        }
    }

    /// Adds the Basic challenge.
    pub(super) fn with_challenge(self) -> Self {
        Self {
            challenge: true,
            ..self
        }
    }
}

/// The decoded parameters of a form body.
pub(super) struct Form(Vec<(String, String)>);

impl Form {
    /// Every value of the parameter `name` (only `resource` may repeat).
    pub(super) fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of the parameter `name`, if present.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes `application/x-www-form-urlencoded`: `&`-separated `name=value` pairs, `+` for
/// space, `%XX` escapes, UTF-8. A bad escape, bad UTF-8 or a repeated parameter (RFC 6749
/// §3.1; `resource` may repeat, RFC 8707 §2) is `invalid_request`.
pub(super) fn parse_form(body: &[u8]) -> Result<Form, Rejection> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let name =
            percent_decode(name).ok_or_else(|| Rejection::request("the form body is malformed"))?;
        let value = percent_decode(value)
            .ok_or_else(|| Rejection::request("the form body is malformed"))?;
        if name != "resource" && pairs.iter().any(|(n, _)| *n == name) {
            return Err(Rejection::request(format!(
                "the {name} parameter is repeated"
            )));
        }
        pairs.push((name, value));
    }
    Ok(Form(pairs))
}

/// Decodes one form-urlencoded name or value; `None` for a bad escape or bad UTF-8.
pub(super) fn percent_decode(input: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(input.len());
    let mut bytes = input.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex_value(*bytes.next()?)?;
                let lo = hex_value(*bytes.next()?)?;
                out.push(hi << 4 | lo);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}
