//! A tiny HTTP/1.1 file server on 127.0.0.1 and a raw SOCKS5 client, for proxy tests.
//!
//! The server answers `GET /big` with a fixed pseudo-random body of `big_len` bytes and
//! `GET /chunk/N` with 256 KiB derived from N; every connection gets its own thread and
//! `Connection: close`. It records each request line so tests can check what a proxy sent.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub const CHUNK: usize = 256 * 1024;

/// Deterministic bytes from a seed (xorshift64*), so nothing random needs a crate.
pub fn bytes_from(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

pub struct FileServer {
    pub addr: SocketAddr,
    pub big_sha256: String,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl FileServer {
    pub fn start(big_len: usize) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind file server");
        let addr = listener.local_addr().expect("addr");
        let big = Arc::new(bytes_from(0xB16, big_len));
        let big_sha256 = sha256(&big);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let big = big.clone();
                let log = log.clone();
                std::thread::spawn(move || serve(conn, &big, &log));
            }
        });
        FileServer {
            addr,
            big_sha256,
            requests,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn serve(mut conn: TcpStream, big: &[u8], log: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let line = head.lines().next().unwrap_or_default().to_string();
    log.lock().unwrap().push(head.clone());
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let body: Vec<u8> = if path == "/big" {
        big.to_vec()
    } else if let Some(n) = path.strip_prefix("/chunk/") {
        bytes_from(n.parse().unwrap_or(0), CHUNK)
    } else {
        b"warren test server\n".to_vec()
    };
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if conn.write_all(header.as_bytes()).is_ok() {
        let _ = conn.write_all(&body);
    }
    let _ = conn.shutdown(Shutdown::Write);
}

/// What a SOCKS5 CONNECT ended in.
#[derive(Debug, PartialEq, Eq)]
pub enum SocksError {
    /// The proxy answered with this reply code.
    Reply(u8),
    Io(String),
}

/// Where to go through SOCKS5: an address, or a name the exit resolves.
pub enum Dest<'a> {
    Addr(SocketAddr),
    Name(&'a str, u16),
}

/// A SOCKS5 CONNECT (no authentication) through `proxy`.
pub fn socks_connect(proxy: SocketAddr, dest: Dest<'_>) -> Result<TcpStream, SocksError> {
    let io = |e: std::io::Error| SocksError::Io(e.to_string());
    let mut s = TcpStream::connect(proxy).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    s.write_all(&[5, 1, 0]).map_err(io)?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).map_err(io)?;
    if choice != [5, 0] {
        return Err(SocksError::Io(format!("method answer {choice:?}")));
    }
    let mut req = vec![5, 1, 0];
    match dest {
        Dest::Addr(SocketAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
            req.extend_from_slice(&a.port().to_be_bytes());
        }
        Dest::Addr(SocketAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
            req.extend_from_slice(&a.port().to_be_bytes());
        }
        Dest::Name(name, port) => {
            req.push(3);
            req.push(name.len() as u8);
            req.extend_from_slice(name.as_bytes());
            req.extend_from_slice(&port.to_be_bytes());
        }
    }
    s.write_all(&req).map_err(io)?;
    let mut reply = [0u8; 4];
    s.read_exact(&mut reply).map_err(io)?;
    if reply[1] != 0 {
        return Err(SocksError::Reply(reply[1]));
    }
    let rest = match reply[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).map_err(io)?;
            len[0] as usize + 2
        }
        other => return Err(SocksError::Io(format!("reply address type {other}"))),
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip).map_err(io)?;
    Ok(s)
}

/// Sends a GET over an open stream (to the server, or tunnelled) and returns the body.
pub fn http_get_body(mut s: TcpStream, host: &str, path: &str) -> std::io::Result<Vec<u8>> {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of head"))?;
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status: {head}")));
    }
    Ok(all[split + 4..].to_vec())
}

/// Runs curl (it must be installed; the test script installs it) and returns
/// (exit code, stdout bytes, stderr text).
pub fn curl(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "120"])
        .args(args)
        .output()
        .expect("curl must be installed (scripts/test.sh installs it)");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A UDP echo server on 127.0.0.1 (a stand-in for a DNS server).
pub fn udp_echo() -> SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp echo");
    let addr = sock.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    addr
}

/// SOCKS5 UDP ASSOCIATE: sends `payload` to `dest` through the proxy and returns the reply
/// datagram's payload and source. The TCP control connection stays open meanwhile.
pub fn socks_udp_roundtrip(
    proxy: SocketAddr,
    dest: SocketAddr,
    payload: &[u8],
) -> Result<(Vec<u8>, SocketAddr), String> {
    let e = |e: std::io::Error| e.to_string();
    let mut control = TcpStream::connect(proxy).map_err(e)?;
    control
        .set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(e)?;
    control.write_all(&[5, 1, 0]).map_err(e)?;
    let mut choice = [0u8; 2];
    control.read_exact(&mut choice).map_err(e)?;
    control
        .write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
        .map_err(e)?;
    let mut reply = [0u8; 10];
    control.read_exact(&mut reply).map_err(e)?;
    if reply[1] != 0 || reply[3] != 1 {
        return Err(format!("UDP ASSOCIATE refused: {reply:?}"));
    }
    let relay = SocketAddr::from((
        [reply[4], reply[5], reply[6], reply[7]],
        u16::from_be_bytes([reply[8], reply[9]]),
    ));
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").map_err(e)?;
    udp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(e)?;
    let SocketAddr::V4(d) = dest else {
        return Err("IPv4 only".into());
    };
    let mut datagram = vec![0, 0, 0, 1];
    datagram.extend_from_slice(&d.ip().octets());
    datagram.extend_from_slice(&d.port().to_be_bytes());
    datagram.extend_from_slice(payload);
    udp.send_to(&datagram, relay).map_err(e)?;
    let mut buf = [0u8; 2048];
    let (n, _) = udp.recv_from(&mut buf).map_err(e)?;
    if n < 10 || buf[3] != 1 {
        return Err(format!("short or odd reply datagram: {:?}", &buf[..n]));
    }
    let from = SocketAddr::from((
        [buf[4], buf[5], buf[6], buf[7]],
        u16::from_be_bytes([buf[8], buf[9]]),
    ));
    drop(control);
    Ok((buf[10..n].to_vec(), from))
}
