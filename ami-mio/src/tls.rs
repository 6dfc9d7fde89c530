//! AMI over TLS (Asterisk's `tlsenable`, usually port 5039) with rustls.
//!
//! Certificates are verified (`ami-tls` builds the configuration): against the CA file
//! you name, or else the Mozilla root set. There is no switch to turn verification off.

use std::io::{self, Read, Write};
use std::sync::Arc;

use ami_tls::ClientTls;
use ami_tls::rustls::pki_types::ServerName;
use ami_tls::rustls::{ClientConfig, ClientConnection};
pub use ami_tls::{Roots, TlsError, TlsSettings};
use mio::net::TcpStream;

/// A verified client configuration, built once per server.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsConnector {
    /// Builds the configuration for `settings`.
    pub fn new(settings: &TlsSettings) -> Result<Self, TlsError> {
        let ClientTls {
            config,
            server_name,
        } = ClientTls::new(settings)?;
        Ok(TlsConnector {
            config,
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
