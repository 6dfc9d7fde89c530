//! AMI over TLS on Tokio (Asterisk's `tlsenable`, usually port 5039), with
//! tokio-rustls. Certificates are verified: against the CA file you name, or else the
//! Mozilla root set (`webpki-roots`). There is no switch to turn verification off.
//!
//! [`TokioTls`] is a [`Runtime`]: Tokio's clock and spawner, and connections that are
//! TCP plus a verified TLS handshake. Give it to [`Client::spawn`](crate::Client::spawn)
//! instead of [`Tokio`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use rustls::{ClientConfig, RootCertStore};
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::runtime::{BoxFuture, BoxTransport, Runtime, Tokio};

/// How to verify the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The name the certificate must carry (a DNS name or an IP address).
    pub server_name: String,
    /// PEM file of the CA(s) to trust; `None` trusts the Mozilla root set.
    pub ca_file: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or holds no certificate.
    #[error("cannot load CA certificates from {path}: {message}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The server name is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

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
        let mut roots = RootCertStore::empty();
        match &settings.ca_file {
            Some(path) => {
                for cert in load_certs(path)? {
                    roots.add(cert).map_err(|e| TlsError::CaFile {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(settings.server_name.clone())
            .map_err(|_| TlsError::ServerName(settings.server_name.clone()))?;
        Ok(TokioTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
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

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |message: String| TlsError::CaFile {
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("no certificate in the file".into()));
    }
    Ok(certs)
}
