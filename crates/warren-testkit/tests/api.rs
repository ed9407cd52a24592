//! The local API of an in-process node over real HTTP on 127.0.0.1: every endpoint, its
//! error bodies (a machine-readable kind and a message), and the guard: the Host and Origin
//! checks and the token that state-changing calls need.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_node::{NodeConfig, NodeHandle};
use warren_testkit::memory_net;
use warren_types::Identity;

struct Answer {
    status: u16,
    body: Value,
}

/// One HTTP/1.1 request with exactly these headers (Host included), read to the end.
async fn request(
    api: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut s = TcpStream::connect(api).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Answer { status, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

struct Api {
    node: NodeHandle,
    addr: SocketAddr,
    host: String,
    bearer: String,
}

impl Api {
    async fn start() -> Api {
        let mut config = NodeConfig::new(memory_net(Identity::generate()));
        config.api = Some("127.0.0.1:0".parse().unwrap());
        let node = NodeHandle::spawn(config).await.unwrap();
        let addr = node.api_addr().unwrap();
        let bearer = format!("Bearer {}", node.api_token().as_str());
        Api {
            host: addr.to_string(),
            node,
            addr,
            bearer,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        request(self.addr, "GET", path, &[("Host", &self.host)], "").await
    }

    async fn send(&self, method: &str, path: &str, body: &str) -> Answer {
        let headers = [
            ("Host", self.host.as_str()),
            ("Authorization", &self.bearer),
        ];
        request(self.addr, method, path, &headers, body).await
    }
}

fn error_kind(a: &Answer) -> &str {
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no error message in {}",
        a.body
    );
    a.body["error"]["kind"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_and_errors_say_what_was_wrong() {
    let api = Api::start().await;
    let s = api.get("/api/v1/status").await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.body["node_id"], api.node.node_id().to_string());
    assert!(s.body["session"].is_null() && s.body["peers"].is_u64());

    let offers = api.get("/api/v1/offers?country=DE").await;
    assert_eq!(
        (offers.status, offers.body.clone()),
        (200, serde_json::json!([]))
    );
    let bad = api.get("/api/v1/offers?colour=red").await;
    assert_eq!(bad.status, 400);
    assert_eq!(error_kind(&bad), "bad_request");
    assert!(
        bad.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour")
    );

    let session = api.get("/api/v1/session").await;
    assert_eq!((session.status, session.body.clone()), (200, Value::Null));
    let none = api.send("POST", "/api/v1/session", "").await;
    assert_eq!(none.status, 404, "{}", none.body);
    assert_eq!(error_kind(&none), "no_offers");
    let garbled = api
        .send("POST", "/api/v1/session", "{\"country\": 5}")
        .await;
    assert_eq!((garbled.status, error_kind(&garbled)), (400, "bad_request"));
    let closed = api.send("DELETE", "/api/v1/session", "").await;
    assert_eq!(closed.status, 200);
    assert_eq!(closed.body["closed"], false);

    // Selling on and off, and the exit policy, through the API.
    let policy = api.get("/api/v1/provider/policy").await;
    assert_eq!(policy.status, 200);
    assert_eq!(policy.body["max_sessions"], 32, "{}", policy.body);
    assert!(
        policy.body["default_deny"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "loopback")
    );
    let no_country = api
        .send(
            "PUT",
            "/api/v1/provider",
            r#"{"price_per_gib": 5, "price_per_hour": 1}"#,
        )
        .await;
    assert_eq!(
        (no_country.status, error_kind(&no_country)),
        (400, "bad_request")
    );
    let sell = api
        .send(
            "PUT",
            "/api/v1/provider",
            r#"{"price_per_gib": 50000000, "price_per_hour": 1000000, "country": "DE"}"#,
        )
        .await;
    assert_eq!(sell.status, 200, "{}", sell.body);
    assert_eq!(sell.body["country"], "DE");
    assert_eq!(sell.body["price_per_gib"], 50_000_000);
    let cheaper = api
        .send(
            "PUT",
            "/api/v1/provider",
            r#"{"price_per_gib": 1, "price_per_hour": 0}"#,
        )
        .await;
    assert_eq!(
        (cheaper.status, cheaper.body["country"].clone()),
        (200, "DE".into())
    );
    let s = api.get("/api/v1/status").await;
    assert_eq!(s.body["provider"]["price_per_gib"], 1, "{}", s.body);
    let stop = api.send("DELETE", "/api/v1/provider", "").await;
    assert_eq!(
        (stop.status, stop.body["was_selling"].clone()),
        (200, true.into())
    );
    let s = api.get("/api/v1/status").await;
    assert!(s.body["provider"].is_null(), "{}", s.body);
    let unauthorised = request(
        api.addr,
        "PUT",
        "/api/v1/provider",
        &[("Host", &api.host)],
        r#"{"price_per_gib": 1, "price_per_hour": 0, "country": "DE"}"#,
    )
    .await;
    assert_eq!(unauthorised.status, 401);

    let served = api.get("/api/v1/provider/sessions").await;
    assert_eq!(
        (served.status, served.body.clone()),
        (200, serde_json::json!([]))
    );

    let wallet = api.get("/api/v1/wallet").await;
    assert_eq!(wallet.status, 200, "{}", wallet.body);
    assert!(wallet.body["hub"].is_null());
    for field in ["balance", "escrow", "earned_unsettled", "earned_settled"] {
        assert_eq!(wallet.body[field], 0, "{field}");
    }
    let topup = api
        .send("POST", "/api/v1/wallet/topup", "{\"amount\": \"10\"}")
        .await;
    assert_eq!((topup.status, error_kind(&topup)), (400, "bad_request"));
    let no_hub = api
        .send("POST", "/api/v1/wallet/topup", "{\"amount\": 10}")
        .await;
    assert_eq!((no_hub.status, error_kind(&no_hub)), (409, "no_hub"));
    let settle = api.send("POST", "/api/v1/wallet/settle", "").await;
    assert_eq!(settle.status, 200, "{}", settle.body);
    assert_eq!(settle.body["promises"], 0);
    let history = api.get("/api/v1/wallet/history?limit=5").await;
    assert_eq!(
        (history.status, history.body.clone()),
        (200, serde_json::json!([]))
    );
    let bad = api.get("/api/v1/wallet/history?limit=0").await;
    assert_eq!((bad.status, error_kind(&bad)), (400, "bad_request"));

    let doc = api.get("/api/v1/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert!(
        doc.body["paths"]["/api/v1/session"]["post"].is_object(),
        "{}",
        doc.body
    );
    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .as_str()
            .is_some_and(|t| t.contains("# TYPE warren_peers gauge")),
        "{}",
        metrics.body
    );

    // The dashboard, embedded, with the token for its own calls.
    let page = api.get("/").await;
    assert_eq!(page.status, 200);
    let html = page.body.as_str().unwrap();
    assert!(html.contains(&format!("content=\"{}\"", api.node.api_token().as_str())));
    for asset in ["/dashboard/app.js", "/dashboard/style.css"] {
        let a = api.get(asset).await;
        assert_eq!(a.status, 200, "{asset}");
        assert!(a.body.as_str().is_some_and(|t| t.len() > 1000), "{asset}");
    }

    let missing = api.get("/api/v1/nothing-here").await;
    assert_eq!((missing.status, error_kind(&missing)), (404, "not_found"));
    api.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_and_origins_are_refused_and_changes_need_the_token() {
    let api = Api::start().await;
    let port = api.addr.port();
    // DNS rebinding: a page's own name pointed at 127.0.0.1 arrives as its Host.
    let rebound = request(
        api.addr,
        "GET",
        "/api/v1/status",
        &[("Host", &format!("attacker.example:{port}"))],
        "",
    )
    .await;
    assert_eq!(
        (rebound.status, error_kind(&rebound)),
        (403, "forbidden_host")
    );
    let localhost = request(
        api.addr,
        "GET",
        "/api/v1/status",
        &[("Host", &format!("localhost:{port}"))],
        "",
    )
    .await;
    assert_eq!(localhost.status, 200);
    // CSRF: a page elsewhere posting to the node, even with the token, is refused.
    let host = api.host.clone();
    let csrf = request(
        api.addr,
        "DELETE",
        "/api/v1/session",
        &[
            ("Host", host.as_str()),
            ("Origin", "http://attacker.example"),
            ("Authorization", &api.bearer),
        ],
        "",
    )
    .await;
    assert_eq!((csrf.status, error_kind(&csrf)), (403, "forbidden_origin"));
    // The dashboard's own origin reads without set-up.
    let own = request(
        api.addr,
        "GET",
        "/api/v1/status",
        &[
            ("Host", host.as_str()),
            ("Origin", &format!("http://{host}")),
        ],
        "",
    )
    .await;
    assert_eq!(own.status, 200);
    // State changes need the token: none, a wrong one, the right one.
    let none = request(
        api.addr,
        "DELETE",
        "/api/v1/session",
        &[("Host", &host)],
        "",
    )
    .await;
    assert_eq!((none.status, error_kind(&none)), (401, "token_required"));
    assert!(
        none.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api.token")
    );
    let wrong = request(
        api.addr,
        "POST",
        "/api/v1/wallet/settle",
        &[("Host", &host), ("Authorization", "Bearer 00")],
        "",
    )
    .await;
    assert_eq!((wrong.status, error_kind(&wrong)), (401, "bad_token"));
    let header = request(
        api.addr,
        "POST",
        "/api/v1/wallet/settle",
        &[
            ("Host", &host),
            ("X-Warren-Token", api.node.api_token().as_str()),
        ],
        "",
    )
    .await;
    assert_eq!(header.status, 200, "{}", header.body);
    api.node.shutdown().await;
}
