//! HAProxy PROXY protocol v2 on the SMTP listener, for nodes behind a TCP load
//! balancer: the header carries the real client's address.

use std::net::SocketAddr;

use ppp::v2::{Addresses, Command, Header};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The fixed part: 12-byte signature, version/command, family/protocol, length.
const FIXED: usize = 16;
/// Largest address-and-TLV block we accept (addresses take at most 216 octets).
const MAX_BLOCK: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a PROXY protocol v2 header")]
    Signature,
    #[error("PROXY header block of {0} octets is too long")]
    TooLong(usize),
    #[error("bad PROXY header: {0}")]
    Parse(String),
}

/// Reads exactly one v2 header from the start of `stream`. Returns the client
/// address it names, or `None` for a `LOCAL` header (the balancer's own health check)
/// or an unspecified address family.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut bytes = vec![0u8; FIXED];
    stream.read_exact(&mut bytes).await?;
    if !bytes.starts_with(ppp::v2::PROTOCOL_PREFIX) {
        return Err(ProxyError::Signature);
    }
    let block = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if block > MAX_BLOCK {
        return Err(ProxyError::TooLong(block));
    }
    bytes.resize(FIXED + block, 0);
    stream.read_exact(&mut bytes[FIXED..]).await?;
    let header =
        Header::try_from(bytes.as_slice()).map_err(|e| ProxyError::Parse(e.to_string()))?;
    if header.command == Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Protocol, Version};

    fn header(src: &str, command: Command) -> Vec<u8> {
        let src: SocketAddr = src.parse().unwrap();
        let dst: SocketAddr = if src.is_ipv4() {
            "10.0.0.1:25"
        } else {
            "[2001:db8::25]:25"
        }
        .parse()
        .unwrap();
        Builder::with_addresses(Version::Two | command, Protocol::Stream, (src, dst))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn reads_the_client_address_and_nothing_more() {
        let mut input = header("198.51.100.7:40001", Command::Proxy);
        input.extend_from_slice(b"EHLO x\r\n");
        let mut stream = input.as_slice();
        let addr = read_header(&mut stream).await.unwrap();
        assert_eq!(addr, Some("198.51.100.7:40001".parse().unwrap()));
        assert_eq!(stream, b"EHLO x\r\n");

        let v6 = header("[2001:db8::7]:2", Command::Proxy);
        assert_eq!(
            read_header(&mut v6.as_slice()).await.unwrap(),
            Some("[2001:db8::7]:2".parse().unwrap())
        );
        let local = header("198.51.100.7:1", Command::Local);
        assert_eq!(read_header(&mut local.as_slice()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_v2_header() {
        let mut plain: &[u8] = b"EHLO client.test\r\nQUIT\r\n";
        assert!(matches!(
            read_header(&mut plain).await,
            Err(ProxyError::Signature)
        ));
        let mut v1: &[u8] = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        assert!(read_header(&mut v1).await.is_err());
        let mut huge = header("198.51.100.7:1", Command::Proxy);
        huge[14] = 0xff;
        assert!(matches!(
            read_header(&mut huge.as_slice()).await,
            Err(ProxyError::TooLong(_))
        ));
    }
}
