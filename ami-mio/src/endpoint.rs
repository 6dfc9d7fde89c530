//! Where a server lives, and the rule that keeps DNS out of the tick.
//!
//! By default an endpoint must be an IP literal (`enforce_ip_endpoints`): a hostname
//! would need a blocking DNS lookup. With enforcement off, the caller injects a
//! [`Resolver`]; it runs once, when the server is added, never inside a tick or a
//! reconnect.

use std::io;
use std::net::{IpAddr, SocketAddr};

/// Host and port of an AMI server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// An IP literal, or a hostname when a resolver is given.
    pub host: String,
    /// TCP port (5038 plain, 5039 TLS by Asterisk's convention).
    pub port: u16,
}

impl Endpoint {
    /// An endpoint.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Endpoint {
            host: host.into(),
            port,
        }
    }
}

/// Turns a hostname into addresses. Called once per server, at [`Driver::add_server`](crate::Driver::add_server).
pub trait Resolver {
    /// The addresses of `host`; the first one is used.
    fn resolve(&mut self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

impl<F> Resolver for F
where
    F: FnMut(&str, u16) -> io::Result<Vec<SocketAddr>>,
{
    fn resolve(&mut self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        self(host, port)
    }
}

/// Why an endpoint has no address.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// A hostname where an IP literal is required.
    #[error(
        "host {host:?} is not an IP address; use an IP literal, or turn off enforce_ip_endpoints and give a resolver"
    )]
    NotAnIp {
        /// The host.
        host: String,
    },
    /// A hostname, enforcement off, but no resolver given.
    #[error("host {host:?} is a hostname and no resolver was given")]
    NoResolver {
        /// The host.
        host: String,
    },
    /// The resolver failed or found nothing.
    #[error("cannot resolve {host:?}: {message}")]
    Resolve {
        /// The host.
        host: String,
        /// What the resolver said.
        message: String,
    },
}

/// The address to connect to for `endpoint`.
pub(crate) fn address_of(
    endpoint: &Endpoint,
    enforce_ip: bool,
    resolver: Option<&mut Box<dyn Resolver>>,
) -> Result<SocketAddr, EndpointError> {
    if let Ok(ip) = endpoint.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, endpoint.port));
    }
    let host = endpoint.host.clone();
    if enforce_ip {
        return Err(EndpointError::NotAnIp { host });
    }
    let resolver = resolver.ok_or_else(|| EndpointError::NoResolver { host: host.clone() })?;
    let addresses = resolver
        .resolve(&endpoint.host, endpoint.port)
        .map_err(|e| EndpointError::Resolve {
            host: host.clone(),
            message: e.to_string(),
        })?;
    addresses.into_iter().next().ok_or(EndpointError::Resolve {
        host,
        message: "no address".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_pass_hostnames_need_a_resolver() {
        let ip = Endpoint::new("127.0.0.1", 5038);
        assert_eq!(
            address_of(&ip, true, None).unwrap(),
            "127.0.0.1:5038".parse().unwrap()
        );
        let v6 = Endpoint::new("::1", 5038);
        assert_eq!(
            address_of(&v6, true, None).unwrap(),
            "[::1]:5038".parse().unwrap()
        );
        let name = Endpoint::new("pbx.example", 5038);
        assert!(matches!(
            address_of(&name, true, None),
            Err(EndpointError::NotAnIp { .. })
        ));
        assert!(matches!(
            address_of(&name, false, None),
            Err(EndpointError::NoResolver { .. })
        ));
        let mut resolver: Box<dyn Resolver> =
            Box::new(|_: &str, port: u16| Ok(vec![SocketAddr::from(([10, 0, 0, 5], port))]));
        let resolved = address_of(&name, false, Some(&mut resolver)).unwrap();
        assert_eq!(resolved, "10.0.0.5:5038".parse().unwrap());
    }
}
