//! The byte pipe under one connection: plain TCP, or TLS over TCP.
//!
//! Both are non-blocking: reads and writes return `WouldBlock` instead of waiting.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

/// A connected (or connecting) stream.
#[derive(Debug)]
pub(crate) enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (feature `tls`).
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::TlsStream>),
}

impl Transport {
    /// The socket, to register with the poll and to check a connect.
    pub(crate) fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(stream) => stream,
            #[cfg(feature = "tls")]
            Transport::Tls(stream) => &mut stream.socket,
        }
    }

    /// Reads plaintext; `Ok(0)` is end of stream.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.read(buf),
            #[cfg(feature = "tls")]
            Transport::Tls(stream) => stream.read(buf),
        }
    }

    /// Writes plaintext; may take fewer bytes than offered.
    pub(crate) fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.write(data),
            #[cfg(feature = "tls")]
            Transport::Tls(stream) => stream.write(data),
        }
    }

    /// Pushes bytes the transport holds itself (TLS records) to the socket.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            #[cfg(feature = "tls")]
            Transport::Tls(stream) => stream.flush_records(),
        }
    }
}
