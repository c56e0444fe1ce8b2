//! The token-endpoint exchange every grant shares, one concern per file: the endpoint and its
//! settings ([`endpoint`]), one token request being built and sent ([`request`]), the RFC 6749
//! §5.1 / §5.2 answer turned into a token or a precise error ([`response`]), and the HTTP
//! every request to an authorization server goes through — the client, timeouts, transport
//! rules, the capped read ([`http`]).

mod dpop;
mod endpoint;
pub(crate) mod http;
mod request;
mod response;

pub use endpoint::TokenEndpoint;
pub(crate) use request::OpenCredential;
pub use request::TokenRequest;
pub use response::TokenResponse;
#[doc(hidden)]
pub use response::parse_token_response;
