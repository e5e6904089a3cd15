//! A participant's ICE-TCP connection to the SFU (RFC 4571 framing: a 16-bit length before
//! every packet), for clients whose network blocks UDP.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mio::{Interest, Registry, Token};

/// Tokens of TCP connections: the participant's key with this bit set.
pub const TCP_TOKEN_BIT: usize = 1 << 30;
const MAX_FRAME: usize = 4096;

pub struct IceTcp {
    pub peer: SocketAddr,
    stream: mio::net::TcpStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
}

impl IceTcp {
    /// Connect (blocking, bounded: the SFU is on this machine or near) and register.
    pub fn connect(peer: SocketAddr, registry: &Registry, token: Token) -> io::Result<IceTcp> {
        let stream = std::net::TcpStream::connect_timeout(&peer, Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(stream);
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(IceTcp {
            peer,
            stream,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
        })
    }

    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if data.len() > usize::from(u16::MAX) || self.outbuf.len() > 1 << 20 {
            return Ok(()); // dropped, as a full queue would
        }
        self.outbuf
            .extend_from_slice(&(data.len() as u16).to_be_bytes());
        self.outbuf.extend_from_slice(data);
        self.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        while !self.outbuf.is_empty() {
            match self.stream.write(&self.outbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read what arrived and hand over each complete frame. Err when the connection ended.
    pub fn read_frames(&mut self, mut on_frame: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf = [0u8; 16 * 1024];
        let mut result = Ok(());
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    result = Err(io::ErrorKind::UnexpectedEof.into());
                    break;
                }
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        while self.inbuf.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([self.inbuf[0], self.inbuf[1]]));
            if len == 0 || len > MAX_FRAME {
                return Err(io::ErrorKind::InvalidData.into());
            }
            if self.inbuf.len() < 2 + len {
                break;
            }
            on_frame(&self.inbuf[2..2 + len]);
            self.inbuf.drain(..2 + len);
        }
        result
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }
}
