//! AMI over TLS (Asterisk's `tlsenable`, usually port 5039) with rustls.
//!
//! Certificates are verified: against the CA file you name, or else the Mozilla root
//! set (`webpki-roots`). There is no switch to turn verification off.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

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

/// A verified client configuration, built once per server.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsConnector {
    /// Builds the configuration for `settings`.
    pub fn new(settings: &TlsSettings) -> Result<Self, TlsError> {
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
        Ok(TlsConnector {
            config: Arc::new(config),
            server_name,
        })
    }

    /// Starts a TLS session over a (connecting) socket.
    pub(crate) fn wrap(&self, socket: TcpStream) -> io::Result<TlsStream> {
        let mut session = ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(|e| io::Error::other(e.to_string()))?;
        // Bound the plaintext rustls holds for sending: beyond it `write` takes less,
        // and the rest stays in the connection's own bounded write buffer.
        session.set_buffer_limit(Some(64 * 1024));
        Ok(TlsStream { socket, session })
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

/// A TLS session over a non-blocking socket.
#[derive(Debug)]
pub(crate) struct TlsStream {
    pub(crate) socket: TcpStream,
    session: ClientConnection,
}

impl TlsStream {
    /// Reads plaintext, pulling records from the socket as needed.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // No plaintext yet: take records from the socket (WouldBlock ends the read).
            if self.session.read_tls(&mut self.socket)? == 0 {
                return Ok(0);
            }
            self.session
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            // The handshake may want to answer.
            self.flush_records()?;
        }
    }

    /// Writes plaintext into the session and pushes records to the socket.
    pub(crate) fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.session.writer().write(data)?;
        self.flush_records()?;
        if n == 0 && !data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Pushes pending records; `WouldBlock` leaves them for the next call.
    pub(crate) fn flush_records(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut self.socket) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
