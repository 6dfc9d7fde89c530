//! Where a server lives, and the rule that keeps DNS out of the tick.
//!
//! By default an endpoint must be an IP literal (`enforce_ip_endpoints`): a hostname
//! would need a blocking DNS lookup. With enforcement off, the caller injects a
//! [`Resolver`] (e.g. [`SystemResolver`]); the driver runs it before every connect
//! attempt on a thread of its own, never inside a tick, so a server that moves to a new
//! address is found again on its next reconnect.

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

/// Turns a hostname into addresses. The driver calls it before every connect attempt
/// to a named server, on a thread of its own, never in a tick: a slow or hanging lookup
/// delays that server's attempt only (its connect deadline still runs), and a failure
/// is reported as the attempt's error, retried with backoff like a refused connect.
pub trait Resolver: Send + Sync {
    /// The addresses of `host`; the first one is used.
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

impl<F> Resolver for F
where
    F: Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync,
{
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        self(host, port)
    }
}

/// The operating system's resolver (`getaddrinfo`, through `std::net::ToSocketAddrs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        use std::net::ToSocketAddrs;
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

/// Where a server's connects go: a fixed address, or a name looked up before each
/// attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Destination {
    /// An IP literal.
    Address(SocketAddr),
    /// A hostname, resolved per attempt.
    Named(Endpoint),
}

/// Why an endpoint has no address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

/// Where to connect for `endpoint`: its address when the host is an IP literal;
/// otherwise the name, if hostnames are allowed and a resolver was given.
pub(crate) fn destination_of(
    endpoint: &Endpoint,
    enforce_ip: bool,
    has_resolver: bool,
) -> Result<Destination, EndpointError> {
    if let Ok(ip) = endpoint.host.parse::<IpAddr>() {
        return Ok(Destination::Address(SocketAddr::new(ip, endpoint.port)));
    }
    let host = endpoint.host.clone();
    if enforce_ip {
        return Err(EndpointError::NotAnIp { host });
    }
    if !has_resolver {
        return Err(EndpointError::NoResolver { host });
    }
    Ok(Destination::Named(endpoint.clone()))
}

/// Resolves `endpoint` to the first address the resolver gives.
pub(crate) fn resolve(
    resolver: &dyn Resolver,
    endpoint: &Endpoint,
) -> Result<SocketAddr, EndpointError> {
    let host = endpoint.host.clone();
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
            destination_of(&ip, true, false).unwrap(),
            Destination::Address("127.0.0.1:5038".parse().unwrap())
        );
        let v6 = Endpoint::new("::1", 5038);
        assert_eq!(
            destination_of(&v6, true, false).unwrap(),
            Destination::Address("[::1]:5038".parse().unwrap())
        );
        let name = Endpoint::new("pbx.example", 5038);
        assert!(matches!(
            destination_of(&name, true, true),
            Err(EndpointError::NotAnIp { .. })
        ));
        assert!(matches!(
            destination_of(&name, false, false),
            Err(EndpointError::NoResolver { .. })
        ));
        assert_eq!(
            destination_of(&name, false, true).unwrap(),
            Destination::Named(name.clone())
        );
        let resolver = |_: &str, port: u16| Ok(vec![SocketAddr::from(([10, 0, 0, 5], port))]);
        assert_eq!(
            resolve(&resolver, &name).unwrap(),
            "10.0.0.5:5038".parse().unwrap()
        );
        let nothing = |_: &str, _: u16| Ok(Vec::new());
        assert!(matches!(
            resolve(&nothing, &name),
            Err(EndpointError::Resolve { .. })
        ));
    }

    #[test]
    fn the_system_resolver_knows_localhost() {
        let found = SystemResolver.resolve("localhost", 5038).unwrap();
        assert!(
            found
                .iter()
                .all(|a| a.port() == 5038 && a.ip().is_loopback())
        );
        assert!(!found.is_empty());
    }
}
