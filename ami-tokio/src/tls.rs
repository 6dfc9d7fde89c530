//! AMI over TLS on Tokio (Asterisk's `tlsenable`, usually port 5039), with
//! tokio-rustls. Certificates are verified (`ami-tls` builds the configuration):
//! against the CA file you name, or else the Mozilla root set. There is no switch to
//! turn verification off.
//!
//! [`TokioTls`] is a [`Runtime`]: Tokio's clock and spawner, and connections that are
//! TCP plus a verified TLS handshake. Give it to [`Client::spawn`](crate::Client::spawn)
//! instead of [`Tokio`].

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use ami_tls::ClientTls;
use ami_tls::rustls::pki_types::ServerName;
pub use ami_tls::{Roots, TlsError, TlsSettings};
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::runtime::{BoxFuture, BoxTransport, Runtime, Tokio};

/// Tokio with TLS connections for one server name.
#[derive(Clone)]
pub struct TokioTls {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TokioTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TokioTls {
    /// Builds the verified client configuration for `settings`.
    pub fn new(settings: &TlsSettings) -> Result<TokioTls, TlsError> {
        let ClientTls {
            config,
            server_name,
        } = ClientTls::new(settings)?;
        Ok(TokioTls {
            connector: tokio_rustls::TlsConnector::from(config),
            server_name,
        })
    }
}

impl Runtime for TokioTls {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<io::Result<BoxTransport>> {
        let (connector, name) = (self.connector.clone(), self.server_name.clone());
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok(Box::new(tls.compat()) as BoxTransport)
        })
    }

    fn now(&self) -> Instant {
        Tokio.now()
    }

    fn sleep_until(&self, at: Instant) -> BoxFuture<()> {
        Tokio.sleep_until(at)
    }

    fn spawn(&self, task: BoxFuture<()>) {
        Tokio.spawn(task)
    }
}
