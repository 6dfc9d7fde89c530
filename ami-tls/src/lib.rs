#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # ami-tls: how the drivers verify an Asterisk's TLS certificate
//!
//! AMI over TLS (Asterisk's `tlsenable`, usually port 5039) with rustls. Certificates
//! are always verified: against the CA file you name, or else a root set chosen by
//! [`Roots`]: Mozilla's, bundled in the binary (`webpki-roots`), or the operating
//! system's store (`rustls-native-certs`: `/etc/ssl/certs` on Debian, where a private
//! PBX CA added with `update-ca-certificates` lives). There is no switch to turn
//! verification off. This crate only
//! builds the verified client configuration; each driver wraps its own sockets with it
//! (`ami-mio` over non-blocking mio sockets, `ami-tokio` with tokio-rustls).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use rustls::{ClientConfig, RootCertStore};

pub use rustls;

/// Which roots to trust when no CA file is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Roots {
    /// Mozilla's root set, compiled into the binary (`webpki-roots`): the same on
    /// every machine, updated with the crate.
    #[default]
    Bundled,
    /// The operating system's trust store, read when the connection is set up (a
    /// private CA installed there is trusted).
    System,
}

/// How to verify the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The name the certificate must carry (a DNS name or an IP address).
    pub server_name: String,
    /// PEM file of the CA(s) to trust; `None` trusts [`TlsSettings::roots`].
    pub ca_file: Option<PathBuf>,
    /// The roots trusted when there is no `ca_file`.
    pub roots: Roots,
}

impl TlsSettings {
    /// Verifies `server_name` against the bundled Mozilla roots.
    pub fn new(server_name: impl Into<String>) -> TlsSettings {
        TlsSettings {
            server_name: server_name.into(),
            ca_file: None,
            roots: Roots::Bundled,
        }
    }
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
    /// The system trust store could not be read or holds no certificate.
    #[error("cannot load the system's root certificates: {0}")]
    SystemRoots(String),
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
            None => match settings.roots {
                Roots::Bundled => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                Roots::System => {
                    let found = rustls_native_certs::load_native_certs();
                    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                    if added == 0 {
                        let why = found
                            .errors
                            .first()
                            .map_or_else(|| "no certificate found".to_owned(), ToString::to_string);
                        return Err(TlsError::SystemRoots(why));
                    }
                }
            },
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
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsSettings::new("127.0.0.1")
        };
        assert!(matches!(
            ClientTls::new(&missing),
            Err(TlsError::CaFile { .. })
        ));
        let bad_name = TlsSettings::new("not a name!");
        assert!(matches!(
            ClientTls::new(&bad_name),
            Err(TlsError::ServerName(_))
        ));
        assert!(ClientTls::new(&TlsSettings::new("pbx.example")).is_ok());
    }
}
