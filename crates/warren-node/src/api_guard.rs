//! What keeps other programs and web pages from driving the node through its local API.
//!
//! - **Host**: a request must name the API by a loopback name (`127.0.0.1`, `localhost`,
//!   `[::1]`) or the address it listens on, with its port. A page on another site that
//!   re-points its own name at 127.0.0.1 (DNS rebinding) sends its own name and is refused.
//! - **Origin**: when a browser sends one, it must be this API's own (`http://` + an allowed
//!   host); a page elsewhere cannot even make the node do work.
//! - **Token**: every call that changes something (any method but GET, HEAD and OPTIONS)
//!   needs `Authorization: Bearer <token>` (or `X-Warren-Token`). The node makes a new token
//!   at each start and writes it to `api.token` in its data directory, readable by its owner
//!   only; the CLI reads it there, and the dashboard the node serves carries it (a page of
//!   another origin cannot read the dashboard, and a rebinding one is refused by Host).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;

/// The token's file in the data directory.
pub const TOKEN_FILE: &str = "api.token";
/// The header the token may also travel in.
pub const TOKEN_HEADER: &str = "x-warren-token";

/// A secret that allows state-changing API calls: 32 random bytes, hex.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(…)")
    }
}

impl ApiToken {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        // Without the OS random source no identity could have been made either.
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        ApiToken(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Writes the token to `dir/api.token`, readable and writable by the owner only,
    /// replacing an older one whole.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(TOKEN_FILE);
        let tmp = dir.join(format!("{TOKEN_FILE}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(self.0.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Reads the token a node wrote to `dir`; `None` when there is none.
    pub fn read_from(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(TOKEN_FILE)).ok()?;
        let text = text.trim();
        (text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| ApiToken(text.to_string()))
    }

    /// Compares in time that does not depend on where the strings differ.
    fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// What the guard checks requests against.
#[derive(Debug)]
pub(crate) struct Guard {
    pub token: ApiToken,
    /// Where the API listens.
    pub addr: SocketAddr,
}

impl Guard {
    /// Whether `host` (a Host header's value, or an Origin's host part) names this API.
    fn allowed_host(&self, host: &str) -> bool {
        let Some((name, port)) = host.rsplit_once(':') else {
            return false;
        };
        if port.parse::<u16>().ok() != Some(self.addr.port()) {
            return false;
        }
        let name = name.to_ascii_lowercase();
        let own = match self.addr.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        matches!(name.as_str(), "127.0.0.1" | "localhost" | "[::1]") || name == own
    }

    fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !self.allowed_host(host) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                format!(
                    "the Host header {host:?} does not name this node's API; use http://127.0.0.1:{}/",
                    self.addr.port()
                ),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let own = origin
                .strip_prefix("http://")
                .is_some_and(|h| self.allowed_host(h));
            if !own {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden_origin",
                    format!("requests from the web origin {origin:?} are not allowed"),
                ));
            }
        }
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        let given = bearer.or_else(|| headers.get(TOKEN_HEADER).and_then(|h| h.to_str().ok()));
        match given {
            Some(t) if self.token.matches(t.trim()) => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_token",
                format!(
                    "the API token is not this node's; the node writes a new one to {TOKEN_FILE} in its data directory at each start"
                ),
            )),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_required",
                format!(
                    "this call changes the node and needs its API token (Authorization: Bearer …); the CLI reads it from {TOKEN_FILE} in the node's data directory, so give it the same --data-dir"
                ),
            )),
        }
    }
}

/// The middleware: refuses what [`Guard::check`] refuses, with a JSON error body.
pub(crate) async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    match g.check(req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn guard() -> Guard {
        Guard {
            token: ApiToken("ab".repeat(32)),
            addr: "127.0.0.1:4450".parse().unwrap(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn kind(r: Result<(), ApiError>) -> Option<&'static str> {
        r.err().map(|e| e.kind)
    }

    #[test]
    fn hosts_origins_and_tokens() {
        let g = guard();
        let token = format!("Bearer {}", "ab".repeat(32));
        for host in [
            "127.0.0.1:4450",
            "localhost:4450",
            "LOCALHOST:4450",
            "[::1]:4450",
        ] {
            assert_eq!(
                kind(g.check(&Method::GET, &headers(&[("host", host)]))),
                None,
                "{host}"
            );
        }
        for host in [
            "evil.example:4450",
            "127.0.0.1:80",
            "127.0.0.1",
            "",
            "localhost.evil:4450",
        ] {
            assert_eq!(
                kind(g.check(&Method::GET, &headers(&[("host", host)]))),
                Some("forbidden_host"),
                "{host}"
            );
        }
        let ok = [
            ("host", "127.0.0.1:4450"),
            ("origin", "http://localhost:4450"),
        ];
        assert_eq!(kind(g.check(&Method::GET, &headers(&ok))), None);
        for origin in [
            "http://evil.example",
            "null",
            "https://127.0.0.1:4450",
            "http://127.0.0.1:9999",
        ] {
            let h = headers(&[("host", "127.0.0.1:4450"), ("origin", origin)]);
            assert_eq!(
                kind(g.check(&Method::GET, &h)),
                Some("forbidden_origin"),
                "{origin}"
            );
        }
        let h = headers(&[("host", "127.0.0.1:4450")]);
        assert_eq!(kind(g.check(&Method::POST, &h)), Some("token_required"));
        assert_eq!(kind(g.check(&Method::DELETE, &h)), Some("token_required"));
        let h = headers(&[("host", "127.0.0.1:4450"), ("authorization", "Bearer nope")]);
        assert_eq!(kind(g.check(&Method::POST, &h)), Some("bad_token"));
        let h = headers(&[("host", "127.0.0.1:4450"), ("authorization", &token)]);
        assert_eq!(kind(g.check(&Method::POST, &h)), None);
        let h = headers(&[("host", "127.0.0.1:4450"), (TOKEN_HEADER, &"ab".repeat(32))]);
        assert_eq!(kind(g.check(&Method::DELETE, &h)), None);
        // A right token does not lift the Host check.
        let h = headers(&[("host", "evil.example:4450"), ("authorization", &token)]);
        assert_eq!(kind(g.check(&Method::POST, &h)), Some("forbidden_host"));
    }

    #[test]
    fn the_token_file_is_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let t = ApiToken::generate();
        let path = t.write_to(dir.path()).unwrap();
        assert_eq!(ApiToken::read_from(dir.path()), Some(t.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A new one replaces it whole.
        let u = ApiToken::generate();
        u.write_to(dir.path()).unwrap();
        assert_eq!(ApiToken::read_from(dir.path()), Some(u));
        std::fs::write(&path, "not a token").unwrap();
        assert_eq!(ApiToken::read_from(dir.path()), None);
        assert!(format!("{t:?}").contains('…'));
    }
}
