//! The one HTTP/1.1 server every path downloads from, and the one client every path uses
//! (straight to the server, or through a SOCKS5 proxy with a no-auth CONNECT by IPv4).
//!
//! Both ends live in this process and only ever bind or dial 127.0.0.1.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Size of the pattern the server repeats, and of each write of a large body.
pub(crate) const PATTERN_LEN: usize = 1 << 20;
/// Read buffer of the client (the same size as Warren's splice buffer).
const READ_BUF: usize = 256 * 1024;
/// Body of `/small`, the request time to first byte is measured with.
const SMALL_LEN: usize = 128;
/// Connect timeout and read/write timeout of every socket this module opens.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request or response head either side accepts.
const MAX_HEAD: usize = 16 * 1024;

/// Deterministic, incompressible bytes (xorshift64*), so nothing random needs a crate.
pub(crate) fn pattern() -> Arc<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(PATTERN_LEN + 8);
    while out.len() < PATTERN_LEN {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(PATTERN_LEN);
    Arc::new(out)
}

/// An HTTP/1.1 server on 127.0.0.1 with a thread per connection and `Connection: close`:
/// `GET /bytes/N` answers N bytes of the pattern, written from memory in 1 MiB writes;
/// `GET /small` answers 128 bytes in the same write as the head. Its threads end with the
/// process.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) addr: SocketAddrV4,
}

impl Server {
    pub(crate) fn start(pattern: Arc<Vec<u8>>) -> Result<Server, String> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("cannot bind the HTTP server on 127.0.0.1: {e}"))?;
        let addr = match listener.local_addr() {
            Ok(SocketAddr::V4(a)) => a,
            other => return Err(format!("HTTP server bound to {other:?}")),
        };
        std::thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let pattern = pattern.clone();
                    let _ = std::thread::Builder::new()
                        .name("http-conn".into())
                        .spawn(move || serve(conn, &pattern));
                }
            })
            .map_err(|e| format!("cannot start the HTTP server thread: {e}"))?;
        Ok(Server { addr })
    }
}

fn serve(mut conn: TcpStream, pattern: &[u8]) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            return;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let body_len: Option<u64> = if path == "/small" {
        Some(SMALL_LEN as u64)
    } else {
        path.strip_prefix("/bytes/").and_then(|n| n.parse().ok())
    };
    let Some(len) = body_len else {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\
         Connection: close\r\n\r\n"
    );
    if len <= SMALL_LEN as u64 {
        // Head and body in one write, so one segment carries the whole answer.
        let mut all = head.into_bytes();
        all.extend_from_slice(&pattern[..len as usize]);
        let _ = conn.write_all(&all);
    } else {
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        let mut left = len;
        while left > 0 {
            let n = left.min(pattern.len() as u64) as usize;
            if conn.write_all(&pattern[..n]).is_err() {
                return;
            }
            left -= n as u64;
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
    // Wait (bounded by the read timeout) for the client to close, so the last bytes are
    // not cut off by a reset.
    let _ = conn.read(&mut buf);
}

/// How the client reaches the server.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Via {
    Direct,
    Socks(SocketAddrV4),
}

/// One download: time to the first byte of the response, time to its last byte (both from
/// the moment the client starts to connect), and the body's length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fetch {
    pub(crate) first_byte: Duration,
    pub(crate) total: Duration,
    pub(crate) body: u64,
}

/// Connects to `dest`, directly or with a SOCKS5 CONNECT (no authentication, IPv4 address)
/// through the proxy; the same steps, one round trip each, that curl takes.
fn open(via: Via, dest: SocketAddrV4) -> io::Result<TcpStream> {
    let first_hop = match via {
        Via::Direct => dest,
        Via::Socks(proxy) => proxy,
    };
    let s = TcpStream::connect_timeout(&SocketAddr::V4(first_hop), CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    if let Via::Socks(_) = via {
        socks5_connect(&s, dest)?;
    }
    Ok(s)
}

fn socks5_connect(mut s: &TcpStream, dest: SocketAddrV4) -> io::Result<()> {
    s.write_all(&[5, 1, 0])?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice)?;
    if choice != [5, 0] {
        return Err(io::Error::other(format!("SOCKS5 method answer {choice:?}")));
    }
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&dest.ip().octets());
    req.extend_from_slice(&dest.port().to_be_bytes());
    s.write_all(&req)?;
    let mut reply = [0u8; 4];
    s.read_exact(&mut reply)?;
    if reply[0] != 5 || reply[1] != 0 {
        return Err(io::Error::other(format!(
            "SOCKS5 reply code {:#04x}",
            reply[1]
        )));
    }
    let rest = match reply[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len)?;
            usize::from(len[0]) + 2
        }
        other => {
            return Err(io::Error::other(format!(
                "SOCKS5 reply address type {other}"
            )));
        }
    };
    let mut skip = [0u8; 18 + 255];
    s.read_exact(&mut skip[..rest])
}

/// `GET path` from the server at `dest` over a fresh connection. The body is read into a
/// 256 KiB buffer and compared with the pattern as it arrives; a short or wrong body is an
/// error.
pub(crate) fn get(
    via: Via,
    dest: SocketAddrV4,
    path: &str,
    pattern: &[u8],
    buf: &mut Vec<u8>,
) -> Result<Fetch, String> {
    buf.resize(READ_BUF, 0);
    let start = Instant::now();
    let mut s = open(via, dest).map_err(|e| format!("connect: {e}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {dest}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send request: {e}"))?;

    // The head (and whatever part of the body came with it).
    let mut first_byte = None;
    let mut head = Vec::new();
    let split = loop {
        let n = s.read(buf).map_err(|e| format!("read head: {e}"))?;
        if n == 0 {
            return Err(format!(
                "connection closed after {} bytes of head",
                head.len()
            ));
        }
        first_byte.get_or_insert_with(|| start.elapsed());
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if head.len() > MAX_HEAD {
            return Err("response head too long".into());
        }
    };
    let first_byte = first_byte.unwrap_or_default();
    let text = String::from_utf8_lossy(&head[..split]).into_owned();
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "status: {}",
            text.lines().next().unwrap_or_default()
        ));
    }
    let len: u64 = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or("no Content-Length")?;

    let mut got = 0u64;
    let early = &head[split..];
    if !matches(pattern, got, early) {
        return Err("body differs from what the server sent (offset 0)".into());
    }
    got += early.len() as u64;
    while got < len {
        let n = s
            .read(buf)
            .map_err(|e| format!("read body after {got} of {len} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("connection closed after {got} of {len} bytes"));
        }
        if !matches(pattern, got, &buf[..n]) {
            return Err(format!(
                "body differs from what the server sent (near offset {got})"
            ));
        }
        got += n as u64;
    }
    let total = start.elapsed();
    if got != len {
        return Err(format!("{got} bytes for a body of {len}"));
    }
    Ok(Fetch {
        first_byte,
        total,
        body: got,
    })
}

/// The same download with curl (`--client curl`): `-x socks5://PROXY` (CONNECT by IPv4
/// address, as above) or `--noproxy '*'`, the body to /dev/null. curl's own clock gives the
/// time to first byte (`time_starttransfer`) and the total; it checks the length, not the
/// content.
pub(crate) fn get_curl(via: Via, dest: SocketAddrV4, path: &str) -> Result<Fetch, String> {
    let mut cmd = std::process::Command::new("curl");
    for k in [
        "ALL_PROXY",
        "all_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(k);
    }
    cmd.args([
        "--silent",
        "--show-error",
        "--max-time",
        "120",
        "-o",
        "/dev/null",
    ])
    .args([
        "-w",
        "%{http_code} %{size_download} %{time_starttransfer} %{time_total}",
    ])
    .stdin(std::process::Stdio::null());
    match via {
        Via::Direct => cmd.args(["--noproxy", "*"]),
        Via::Socks(proxy) => cmd.args(["-x", &format!("socks5://{proxy}")]),
    };
    let out = cmd
        .arg(format!("http://{dest}{path}"))
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "curl: {} ({text})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let f: Vec<&str> = text.split_whitespace().collect();
    let num = |i: usize| -> Result<f64, String> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("curl printed {text:?}"))
    };
    if f.first() != Some(&"200") {
        return Err(format!("curl: status {text:?}"));
    }
    Ok(Fetch {
        first_byte: Duration::from_secs_f64(num(2)?),
        total: Duration::from_secs_f64(num(3)?),
        body: num(1)? as u64,
    })
}

/// Whether `data`, found at `offset` of a body, is what the server sent there: the pattern,
/// repeated.
fn matches(pattern: &[u8], offset: u64, mut data: &[u8]) -> bool {
    let mut at = (offset % pattern.len() as u64) as usize;
    while !data.is_empty() {
        let n = data.len().min(pattern.len() - at);
        if data[..n] != pattern[at..at + n] {
            return false;
        }
        data = &data[n..];
        at = 0;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_arrives_intact_directly() {
        let p = pattern();
        let server = Server::start(p.clone()).unwrap();
        let mut buf = Vec::new();
        let size = 3 * PATTERN_LEN as u64 + 12345;
        let f = get(
            Via::Direct,
            server.addr,
            &format!("/bytes/{size}"),
            &p,
            &mut buf,
        )
        .unwrap();
        assert_eq!(f.body, size);
        assert!(f.first_byte <= f.total);
        let f = get(Via::Direct, server.addr, "/small", &p, &mut buf).unwrap();
        assert_eq!(f.body, SMALL_LEN as u64);
        assert!(get(Via::Direct, server.addr, "/nothing", &p, &mut buf).is_err());
    }

    #[test]
    fn the_check_wraps_around_the_pattern() {
        let p = pattern();
        let n = p.len() as u64;
        let mut data = p[p.len() - 10..].to_vec();
        data.extend_from_slice(&p[..20]);
        assert!(matches(&p, n - 10, &data));
        assert!(matches(&p, 2 * n - 10, &data));
        assert!(!matches(&p, n - 9, &data));
    }
}
