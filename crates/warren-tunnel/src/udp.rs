//! Datagram framing for UDP flows, and the SOCKS5-style address encoding both the framing and
//! the SOCKS5 front use.
//!
//! On a UDP flow's stream each datagram is `len: u16 BE` followed by `len` bytes of body; the
//! body is the peer address (`ATYP | ADDR | PORT`, as in RFC 1928) then the payload. Towards
//! the exit the address is the destination; back towards the consumer it is the source.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use warren_types::{DomainName, Host, Target};

/// Largest frame body (address + payload).
pub const MAX_FRAME: usize = u16::MAX as usize;

pub const ATYP_V4: u8 = 0x01;
pub const ATYP_DOMAIN: u8 = 0x03;
pub const ATYP_V6: u8 = 0x04;

/// Appends `target` in SOCKS5 form (`ATYP | ADDR | PORT`).
pub fn encode_addr(target: &Target, out: &mut Vec<u8>) {
    match &target.host {
        Host::Ip(IpAddr::V4(ip)) => {
            out.push(ATYP_V4);
            out.extend_from_slice(&ip.octets());
        }
        Host::Ip(IpAddr::V6(ip)) => {
            out.push(ATYP_V6);
            out.extend_from_slice(&ip.octets());
        }
        Host::Domain(d) => {
            // DomainName is at most 253 bytes, so the length fits one byte.
            out.push(ATYP_DOMAIN);
            out.push(d.as_str().len() as u8);
            out.extend_from_slice(d.as_str().as_bytes());
        }
    }
    out.extend_from_slice(&target.port.to_be_bytes());
}

/// Reads a SOCKS5 address from the front of `buf`; returns it and the bytes it used.
pub fn decode_addr(buf: &[u8]) -> Result<(Target, usize), AddrError> {
    let (&atyp, rest) = buf.split_first().ok_or(AddrError::Truncated)?;
    let (host, used) = match atyp {
        ATYP_V4 => {
            let b: [u8; 4] = rest
                .get(..4)
                .ok_or(AddrError::Truncated)?
                .try_into()
                .unwrap_or([0; 4]);
            (Host::Ip(IpAddr::V4(Ipv4Addr::from(b))), 4)
        }
        ATYP_V6 => {
            let b: [u8; 16] = rest
                .get(..16)
                .ok_or(AddrError::Truncated)?
                .try_into()
                .unwrap_or([0; 16]);
            (Host::Ip(IpAddr::V6(Ipv6Addr::from(b))), 16)
        }
        ATYP_DOMAIN => {
            let (&len, name) = rest.split_first().ok_or(AddrError::Truncated)?;
            let name = name.get(..len as usize).ok_or(AddrError::Truncated)?;
            let name = std::str::from_utf8(name).map_err(|_| AddrError::BadDomain)?;
            let domain: DomainName = name.parse().map_err(|_| AddrError::BadDomain)?;
            (Host::Domain(domain), 1 + len as usize)
        }
        other => return Err(AddrError::UnknownType(other)),
    };
    let port = rest.get(used..used + 2).ok_or(AddrError::Truncated)?;
    let port = u16::from_be_bytes([port[0], port[1]]);
    Ok((Target { host, port }, 1 + used + 2))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("address is cut short")]
    Truncated,
    #[error("address type {0:#04x} is not IPv4 (1), domain (3) or IPv6 (4)")]
    UnknownType(u8),
    #[error("domain name is not valid")]
    BadDomain,
}

/// Writes one datagram frame.
pub async fn write_datagram<W: AsyncWrite + Unpin>(
    w: &mut W,
    peer: &Target,
    payload: &[u8],
) -> io::Result<()> {
    let mut body = Vec::with_capacity(payload.len() + 24);
    encode_addr(peer, &mut body);
    body.extend_from_slice(payload);
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "datagram too large",
        ));
    }
    let mut frame = Vec::with_capacity(body.len() + 2);
    frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads one datagram frame; `Ok(None)` at a clean end of stream.
pub async fn read_datagram<R: AsyncRead + Unpin>(
    r: &mut R,
) -> io::Result<Option<(Target, Vec<u8>)>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    r.read_exact(&mut body).await?;
    let (peer, used) =
        decode_addr(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    body.drain(..used);
    Ok(Some((peer, body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test]
    async fn datagrams_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let t1 = Target::parse_authority("dns.example:53").unwrap();
        let t2 = Target::parse_authority("[2001:db8::1]:5353").unwrap();
        write_datagram(&mut a, &t1, b"query").await.unwrap();
        write_datagram(&mut a, &t2, b"").await.unwrap();
        drop(a);
        assert_eq!(
            read_datagram(&mut b).await.unwrap(),
            Some((t1, b"query".to_vec()))
        );
        assert_eq!(read_datagram(&mut b).await.unwrap(), Some((t2, vec![])));
        assert_eq!(read_datagram(&mut b).await.unwrap(), None);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_addr(&bytes);
        }

        #[test]
        fn v4_round_trip(ip in any::<u32>(), port in any::<u16>()) {
            let t = Target { host: Host::Ip(IpAddr::V4(Ipv4Addr::from(ip))), port };
            let mut buf = Vec::new();
            encode_addr(&t, &mut buf);
            prop_assert_eq!(decode_addr(&buf).unwrap(), (t, buf.len()));
        }
    }
}
