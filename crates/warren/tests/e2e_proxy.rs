//! End to end through the real binary on 127.0.0.1: a consumer connects to a provider and
//! browses through it with SOCKS5 (by address and by name) and the HTTP proxy; the bytes
//! arrive intact; UDP associations carry datagrams; 200 flows share one session; malformed requests get errors and leave the
//! node healthy; the exit policy refuses loopback unless widened; and when the provider is
//! killed with -9 the session fails over to another of the same country on its own.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::web::{self, Dest, FileServer, SocksError, curl, sha256, socks_connect};
use support::{NodeProc, eventually, free_port};

const LOOPBACK: [&str; 4] = [
    "--no-mdns",
    "--listen",
    "/ip4/127.0.0.1/tcp/0",
    "--listen=/ip4/127.0.0.1/udp/0/quic-v1",
];

fn node(extra: &[&str]) -> NodeProc {
    let args: Vec<&str> = LOOPBACK.iter().chain(extra).copied().collect();
    NodeProc::start(&args)
}

fn provider(boot: &str, country: &str, price_gib: &str, exit_allow: bool) -> NodeProc {
    let mut args = vec![
        "--bootstrap",
        boot,
        "--socks",
        "off",
        "--provide",
        "--country",
        country,
        "--price-gib",
        price_gib,
        "--price-hour",
        "0.001",
    ];
    if exit_allow {
        args.extend(["--exit-allow", "127.0.0.0/8"]);
    }
    node(&args)
}

struct Consumer {
    node: NodeProc,
    socks: SocketAddr,
    http: SocketAddr,
}

fn consumer(boot: &str) -> Consumer {
    let socks: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = node(&[
        "--bootstrap",
        boot,
        "--socks",
        &socks.to_string(),
        "--http-proxy",
        &http.to_string(),
    ]);
    Consumer { node, socks, http }
}

/// Waits for `n` bandwidth offers and the boot node's hub, then puts 10 WRN into escrow
/// there: the providers charge.
fn wait_offers(c: &NodeProc, n: usize) {
    eventually(Duration::from_secs(30), || {
        let o = c.json(&["offers", "--json"]);
        let hubs = c.json(&["offers", "--service", "hub", "--json"]);
        (o.as_array().map_or(0, Vec::len) >= n && hubs.as_array().map_or(0, Vec::len) >= 1)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the consumer never saw {n} offers and a hub"));
    let out = c.cli(&["wallet", "topup", "10"]);
    assert!(
        out.status.success(),
        "top-up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn session(c: &NodeProc) -> Value {
    c.json(&["status", "--json"])["session"].clone()
}

/// Downloads `url` with curl through `proxy_args`, returning the SHA-256 of what arrived.
fn curl_sha(proxy_args: &[&str], url: &str) -> Result<String, String> {
    let mut args = proxy_args.to_vec();
    args.extend(["--fail", url]);
    let (code, body, err) = curl(&args);
    if code == 0 {
        Ok(sha256(&body))
    } else {
        Err(format!("curl exit {code}: {err}"))
    }
}

#[test]
fn browse_through_a_provider_and_fail_over() {
    let files = FileServer::start(64 << 20);
    let boot = node(&["--socks", "off", "--hub", "--faucet"]);
    let via = boot.addr("tcp");
    // Same country; the cheaper one is chosen first, the other takes over when it dies.
    let mut cheap = provider(&via, "DE", "0.01", true);
    let dear = provider(&via, "DE", "0.02", true);
    let c = consumer(&via);
    wait_offers(&c.node, 2);

    // Before a session exists: SOCKS5 general failure, HTTP 503 "not connected".
    assert_eq!(
        socks_connect(c.socks, Dest::Addr(files.addr)).err(),
        Some(SocksError::Reply(0x01))
    );
    let (code, body, _) = curl(&[
        "-x",
        &format!("http://{}", c.http),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &files.url("/small"),
    ]);
    assert_eq!((code, String::from_utf8_lossy(&body).as_ref()), (0, "503"));

    let start = Instant::now();
    let out = c.node.cli(&["connect", "--country", "DE", "--json"]);
    assert!(
        out.status.success(),
        "connect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["provider"],
        cheap.id.as_str(),
        "the cheapest DE offer wins"
    );
    let status = c.node.json(&["status", "--json"]);
    assert_eq!(status["socks"], c.socks.to_string(), "{status}");
    assert_eq!(status["http_proxy"], c.http.to_string(), "{status}");
    eprintln!("connect took {:?}", start.elapsed());

    // SOCKS5 by address, SOCKS5 by name (resolved at the exit), HTTP proxy (absolute URI)
    // and HTTP CONNECT: the 64 MiB arrive intact every time.
    let socks = format!("socks5://{}", c.socks);
    let socks_h = format!("socks5h://{}", c.socks);
    let http = format!("http://{}", c.http);
    let by_name = format!("http://localhost:{}/big", files.addr.port());
    assert_eq!(
        curl_sha(&["-x", &socks], &files.url("/big")),
        Ok(files.big_sha256.clone())
    );
    assert_eq!(
        curl_sha(&["-x", &socks_h], &by_name),
        Ok(files.big_sha256.clone())
    );
    assert_eq!(
        curl_sha(&["-x", &http], &files.url("/big")),
        Ok(files.big_sha256.clone())
    );
    assert_eq!(
        curl_sha(&["-x", &http, "--proxytunnel"], &files.url("/big")),
        Ok(files.big_sha256.clone())
    );
    // The plain HTTP proxy sent the server an origin-form request without proxy headers.
    let seen = files.requests.lock().unwrap().clone();
    assert!(
        seen.iter().any(|h| h.starts_with("GET /big HTTP/1.1")),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|h| h.to_ascii_lowercase().contains("proxy-connection"))
    );

    let s = session(&c.node);
    assert_eq!(s["provider"], cheap.id.as_str());
    assert!(s["bytes_down"].as_u64().unwrap() >= 4 * (64 << 20), "{s}");
    assert!(s["bytes_up"].as_u64().unwrap() > 0, "{s}");
    assert!(s["spent"].as_u64().unwrap() > 0, "{s}");

    // UDP ASSOCIATE (what a DNS lookup uses) round-trips through the exit.
    let echo = web::udp_echo();
    let (answer, from) = web::socks_udp_roundtrip(c.socks, echo, b"a dns query").unwrap();
    assert_eq!((answer.as_slice(), from), (&b"a dns query"[..], echo));

    // 200 concurrent flows through the one session, each a different 256 KiB body.
    let threads: Vec<_> = (0..200u64)
        .map(|i| {
            let (proxy, dest) = (c.socks, files.addr);
            std::thread::spawn(move || {
                let s = socks_connect(proxy, Dest::Addr(dest)).map_err(|e| format!("{e:?}"))?;
                let body = web::http_get_body(s, &dest.to_string(), &format!("/chunk/{i}"))
                    .map_err(|e| e.to_string())?;
                if body == web::bytes_from(i, web::CHUNK) {
                    Ok(())
                } else {
                    Err(format!("flow {i}: {} bytes, wrong content", body.len()))
                }
            })
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} flows failed: {failures:?}",
        failures.len()
    );

    // Malformed requests get errors, and the node keeps serving.
    malformed_requests_are_refused(c.socks, c.http);
    assert_eq!(
        curl_sha(&["-x", &socks], &files.url("/chunk/7")),
        Ok(sha256(&web::bytes_from(7, web::CHUNK)))
    );

    // kill -9 the provider: a new download works through the other DE provider within 10 s.
    cheap.kill9();
    let killed = Instant::now();
    let recovered = eventually(Duration::from_secs(10), || {
        curl_sha(&["-x", &socks, "--max-time", "5"], &files.url("/chunk/1")).ok()
    });
    assert_eq!(
        recovered,
        Some(sha256(&web::bytes_from(1, web::CHUNK))),
        "no failover within 10 s"
    );
    eprintln!("failover took {:?}", killed.elapsed());
    let s = session(&c.node);
    assert_eq!(s["provider"], dear.id.as_str(), "{s}");
    assert_eq!(s["failovers"], 1, "{s}");

    // disconnect closes it; flows fail clearly again.
    let out = c.node.cli(&["disconnect"]);
    assert!(out.status.success());
    assert_eq!(session(&c.node), Value::Null);
    assert_eq!(
        socks_connect(c.socks, Dest::Addr(files.addr)).err(),
        Some(SocksError::Reply(0x01))
    );
}

fn malformed_requests_are_refused(socks: SocketAddr, http: SocketAddr) {
    let exchange = |addr: SocketAddr, bytes: &[u8]| -> Vec<u8> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let _ = s.write_all(bytes);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    };
    // SOCKS4 greeting to a SOCKS5 server: closed without a success reply.
    let out = exchange(socks, &[4, 1, 0, 80, 127, 0, 0, 1, 0]);
    assert!(out.len() < 4 || out[1] != 0, "{out:?}");
    // No acceptable method: 0xFF.
    assert_eq!(exchange(socks, &[5, 1, 2]), vec![5, 0xFF]);
    // Unknown address type: reply 0x08.
    let out = exchange(socks, &[5, 1, 0, 5, 1, 0, 9, 1, 2, 3, 4]);
    assert_eq!(out.get(2..4), Some(&[5u8, 8][..]), "{out:?}");
    // Garbage to the HTTP proxy: 400.
    let out = exchange(http, b"\x16\x03\x01 not http at all\r\n\r\n");
    assert!(
        out.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // A request for the proxy itself (origin form): 400.
    let out = exchange(http, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        out.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn a_taken_default_socks_port_warns_and_the_node_runs_on() {
    // Hold the default port (if something else holds it, it is taken all the same).
    let _held = std::net::TcpListener::bind("127.0.0.1:1080");
    let n = NodeProc::start_default_socks(&LOOPBACK);
    let said = n.startup.join("\n");
    assert!(
        said.contains("SOCKS5") && said.contains("127.0.0.1:1080") && said.contains("taken"),
        "{said}"
    );
    let status = n.json(&["status", "--json"]);
    assert_eq!(status["node_id"], n.id.as_str());
}

#[test]
fn connect_without_a_match_says_what_to_do() {
    let n = node(&[]);
    let out = n.cli(&["connect", "--country", "JP"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("country JP") && err.contains("warren offers"),
        "{err}"
    );
    let out = n.cli(&["connect", "--provider", "not-an-id"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-id"));
}

#[test]
fn exit_policy_refuses_loopback_unless_allowed() {
    let files = FileServer::start(1024);
    let boot = node(&["--socks", "off", "--hub", "--faucet"]);
    let via = boot.addr("tcp");
    let strict = provider(&via, "NL", "0.01", false);
    let c = consumer(&via);
    wait_offers(&c.node, 1);
    let out = c.node.cli(&["connect", "--provider", &strict.id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // SOCKS5: "connection not allowed by ruleset" (0x02), by address and by name.
    assert_eq!(
        socks_connect(c.socks, Dest::Addr(files.addr)).err(),
        Some(SocksError::Reply(0x02))
    );
    assert_eq!(
        socks_connect(c.socks, Dest::Name("localhost", files.addr.port())).err(),
        Some(SocksError::Reply(0x02))
    );
    // The SMTP port is denied whatever the address.
    assert_eq!(
        socks_connect(c.socks, Dest::Name("localhost", 25)).err(),
        Some(SocksError::Reply(0x02))
    );
    // HTTP proxy: 403 with the reason in the body.
    let (code, body, _) = curl(&["-x", &format!("http://{}", c.http), &files.url("/small")]);
    assert_eq!(code, 0);
    let text = String::from_utf8_lossy(&body).to_lowercase();
    assert!(text.contains("loopback"), "{text}");
    let (_, status, _) = curl(&[
        "-x",
        &format!("http://{}", c.http),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &files.url("/small"),
    ]);
    assert_eq!(String::from_utf8_lossy(&status), "403");
    // The refused destination never reached the file server.
    assert!(files.requests.lock().unwrap().is_empty());
    // And the provider's logs never name it.
    drop(c);
    let dest = files.addr.to_string();
    let logs: Vec<String> = strict.log.try_iter().collect();
    assert!(!logs.iter().any(|l| l.contains(&dest)), "{logs:?}");
}
