#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # ami-tls: how the drivers verify an Asterisk's TLS certificate
//!
//! AMI over TLS (Asterisk's `tlsenable`, usually port 5039) with rustls. Certificates
//! are always verified: against the CA file you name, or else the Mozilla root set
//! (`webpki-roots`); there is no switch to turn verification off. This crate only
//! builds the verified client configuration; each driver wraps its own sockets with it
//! (`ami-mio` over non-blocking mio sockets, `ami-tokio` with tokio-rustls).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use rustls::{ClientConfig, RootCertStore};

pub use rustls;

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

/// A verified client configuration and the name to verify, built once per server.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The rustls configuration (ring provider, safe default protocol versions).
    pub config: Arc<ClientConfig>,
    /// The name the server's certificate must carry.
    pub server_name: ServerName<'static>,
}

impl ClientTls {
    /// Builds the configuration for `settings`.
    pub fn new(settings: &TlsSettings) -> Result<ClientTls, TlsError> {
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
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |message: String| TlsError::CaFile {
        path: path.to_owned(),
        message,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("no certificate in the file".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_inputs_are_typed_errors() {
        let missing = TlsSettings {
            server_name: "127.0.0.1".into(),
            ca_file: Some("/nonexistent/ca.pem".into()),
        };
        assert!(matches!(
            ClientTls::new(&missing),
            Err(TlsError::CaFile { .. })
        ));
        let bad_name = TlsSettings {
            server_name: "not a name!".into(),
            ca_file: None,
        };
        assert!(matches!(
            ClientTls::new(&bad_name),
            Err(TlsError::ServerName(_))
        ));
        let good = TlsSettings {
            server_name: "pbx.example".into(),
            ca_file: None,
        };
        assert!(ClientTls::new(&good).is_ok());
    }
}
