//! Test doubles for the fronts: openers that connect on loopback only or always refuse, an
//! echo server, and client-side helpers. Nothing here resolves a name or leaves 127.0.0.1/::1.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren_types::{FlowProto, FlowRefusal, Host, RefusalKind, Target};

use crate::{BoxStream, FlowOpener, OpenFuture, udp};

/// A front under test.
pub(crate) struct Server {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Server {
    /// Cancels the front and waits until it has closed every connection.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("front stops after shutdown")
            .expect("front task does not panic");
    }
}

/// Opens TCP flows directly, to loopback and the allowed ports only ("localhost" means
/// 127.0.0.1; any other name fails as a DNS failure would), and UDP flows to an echo that
/// returns each datagram from the destination it was sent to. Records every request.
pub(crate) struct TestOpener {
    allowed_ports: Vec<u16>,
    seen: Mutex<Vec<(Target, FlowProto)>>,
    udp_open: watch::Sender<usize>,
}

impl TestOpener {
    pub fn new(allowed_ports: &[u16]) -> Arc<Self> {
        Arc::new(TestOpener {
            allowed_ports: allowed_ports.to_vec(),
            seen: Mutex::new(Vec::new()),
            udp_open: watch::Sender::new(0),
        })
    }

    pub fn seen(&self) -> Vec<(Target, FlowProto)> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// Waits until every UDP flow this opener gave out has been closed by the front.
    pub async fn wait_udp_flows_closed(&self) {
        let mut rx = self.udp_open.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|n| *n == 0))
            .await
            .expect("UDP flows close")
            .expect("sender alive");
    }

    fn open_udp(&self) -> BoxStream {
        let (near, mut far) = tokio::io::duplex(256 * 1024);
        self.udp_open.send_modify(|n| *n += 1);
        let open = self.udp_open.clone();
        tokio::spawn(async move {
            while let Ok(Some((dest, payload))) = udp::read_datagram(&mut far).await {
                if udp::write_datagram(&mut far, &dest, &payload)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            open.send_modify(|n| *n -= 1);
        });
        Box::new(near)
    }
}

impl FlowOpener for TestOpener {
    fn open(&self, target: Target, proto: FlowProto) -> OpenFuture {
        self.seen
            .lock()
            .expect("not poisoned")
            .push((target.clone(), proto));
        if proto == FlowProto::Udp {
            let stream = self.open_udp();
            return Box::pin(async move { Ok(stream) });
        }
        let ip = match &target.host {
            Host::Ip(ip) if ip.is_loopback() => *ip,
            Host::Domain(d) if d.as_str() == "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Host::Domain(_) => {
                return refuse(RefusalKind::DnsFailed, "test opener resolves no names");
            }
            Host::Ip(_) => return refuse(RefusalKind::Policy, "test opener stays on loopback"),
        };
        if !self.allowed_ports.contains(&target.port) {
            return refuse(RefusalKind::Policy, "port not allowed in this test");
        }
        let addr = SocketAddr::new(ip, target.port);
        Box::pin(async move {
            match TcpStream::connect(addr).await {
                Ok(s) => Ok(Box::new(s) as BoxStream),
                Err(e) => Err(FlowRefusal::new(
                    RefusalKind::ConnectionRefused,
                    e.to_string(),
                )),
            }
        })
    }
}

fn refuse(kind: RefusalKind, message: &str) -> OpenFuture {
    let refusal = FlowRefusal::new(kind, message);
    Box::pin(async move { Err(refusal) })
}

/// Refuses every flow with one kind.
pub(crate) struct RefusingOpener {
    kind: RefusalKind,
}

impl RefusingOpener {
    pub fn new(kind: RefusalKind) -> Arc<Self> {
        Arc::new(RefusingOpener { kind })
    }

    pub fn message(kind: RefusalKind) -> String {
        format!("refused by the test ({kind:?})")
    }
}

impl FlowOpener for RefusingOpener {
    fn open(&self, _target: Target, _proto: FlowProto) -> OpenFuture {
        refuse(self.kind, &Self::message(self.kind))
    }
}

/// A TCP echo server on `bind`; each connection echoes until the client's end of stream.
pub(crate) async fn echo_server(bind: &str) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Sends `len` patterned bytes through `stream` to an echo and checks they all come back.
pub(crate) async fn assert_echoes(stream: TcpStream, len: usize) {
    let pattern = |i: usize| (i.wrapping_mul(7) % 251) as u8;
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let data: Vec<u8> = (0..len).map(pattern).collect();
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(len);
    r.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), len);
    assert!(back.iter().enumerate().all(|(i, b)| *b == pattern(i)));
}

/// Reads until the peer closes (or resets) and returns what arrived.
pub(crate) async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Asserts the peer closes without sending anything more.
pub(crate) async fn assert_closed(s: &mut TcpStream) {
    let rest = tokio::time::timeout(Duration::from_secs(10), read_to_close(s))
        .await
        .expect("connection closes");
    assert!(rest.is_empty(), "unexpected bytes before close: {rest:?}");
}
