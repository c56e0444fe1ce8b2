//! Where a token may be sent.

use std::net::IpAddr;

use crate::error::{Error, Result};

/// Whether `host` (as in a URL, IPv6 possibly in brackets) is `localhost` or a loopback
/// address, where plain http never leaves the machine.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses plain `http` to a host that is not loopback unless `allow_http`. `sending` and
/// `allow_with` go into the error: what would have been sent, and how to allow it.
pub(crate) fn check_transport(
    scheme: Option<&str>,
    host: Option<&str>,
    allow_http: bool,
    sending: &'static str,
    allow_with: &'static str,
) -> Result<()> {
    let insecure = scheme.is_some_and(|s| s.eq_ignore_ascii_case("http"));
    if insecure && !allow_http && !host.is_some_and(is_loopback_host) {
        return Err(Error::InsecureTransport {
            host: host.unwrap_or_default().to_owned(),
            sending,
            allow_with,
        });
    }
    Ok(())
}

/// Whether two URLs share scheme, host and port, without allocating as `Url::origin` does.
pub(crate) fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The origin of `url` (scheme, host, port; no path), e.g. `https://auth.example.com`.
pub(crate) fn origin_of(url: &reqwest::Url) -> String {
    url.origin().ascii_serialization()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "127.0.0.1",
            "127.8.9.1",
            "[::1]",
            "::1",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["example.com", "10.0.0.1", "localhost.example.com", "[::2]"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn plain_http_policy() {
        let check =
            |scheme, host, allow| check_transport(Some(scheme), Some(host), allow, "it", "x");
        assert!(check("https", "example.com", false).is_ok());
        assert!(check("http", "127.0.0.1", false).is_ok());
        assert!(matches!(
            check("http", "example.com", false),
            Err(Error::InsecureTransport { host, .. }) if host == "example.com"
        ));
        assert!(check("http", "example.com", true).is_ok());
    }
}
