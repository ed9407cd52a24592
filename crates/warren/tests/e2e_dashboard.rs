//! The dashboard in headless Chromium, driven through chromedriver's W3C WebDriver API,
//! against a running `warren testnet` on 127.0.0.1: the offers table shows the testnet's
//! countries, clicking Connect opens a session that the page and `warren status` show,
//! traffic flows and is paid, and the provider's own dashboard shows the session and its
//! earnings; the Content view lists a channel the consumer publishes (titles as text) and
//! plays its entry from the gateway. Screenshots go to `target/test-artifacts/` (or
//! `$WARREN_TEST_ARTIFACTS`).
//!
//! Skips (saying so) when chromium or chromedriver is missing; `scripts/test.sh` installs
//! both (Debian `chromium`, `chromium-driver`).

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::web::curl;
use support::{ChildGuard, eventually, free_port, warren};

fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("WARREN_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts")
        });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A WebDriver session on a chromedriver this test started.
struct Browser {
    base: String,
    session: String,
    _driver: ChildGuard,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = ChildGuard(Some(driver));
        let base = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(20), || {
            let (code, body, _) = curl(&["-s", &format!("{base}/status")]);
            (code == 0 && String::from_utf8_lossy(&body).contains("ready")).then_some(())
        })
        .expect("chromedriver never became ready");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let mut b = Browser {
            base,
            session: String::new(),
            _driver: driver,
            _profile: profile,
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b
    }

    /// One WebDriver command; returns its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| b.to_string());
        let mut args = vec!["-s", "-X", method, "-H", "Content-Type: application/json"];
        if let Some(b) = &body {
            args.extend(["--data-binary", b]);
        }
        args.push(&url);
        let (code, out, err) = curl(&args);
        assert_eq!(code, 0, "webdriver {method} {path}: {err}");
        let v: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|_| panic!("webdriver answered {}", String::from_utf8_lossy(&out)));
        v["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn go(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(json!({ "url": url })),
        );
    }

    fn script(&self, js: &str) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({ "script": js, "args": [] })),
        )
    }

    /// Runs `js` until it returns something truthy, or panics after `limit`.
    fn until(&self, what: &str, limit: Duration, js: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.script(js);
            let truthy = !(v.is_null()
                || v == json!(false)
                || v == json!("")
                || v == json!(0)
                || v.as_array().is_some_and(Vec::is_empty));
            if truthy {
                return v;
            }
            assert!(start.elapsed() < limit, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn click(&self, css: &str) {
        let el = self.call(
            "POST",
            &self.session_path("/element"),
            Some(json!({ "using": "css selector", "value": css })),
        );
        let id = el
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {el}"))
            .to_string();
        self.call(
            "POST",
            &self.session_path(&format!("/element/{id}/click")),
            Some(json!({})),
        );
    }

    fn screenshot(&self, name: &str) {
        let png = self.call("GET", &self.session_path("/screenshot"), None);
        let b64 = png.as_str().expect("a base64 screenshot");
        let path = artifacts().join(name);
        let mut child = Command::new("base64")
            .args(["-d"])
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&path).unwrap())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b64.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = curl(&["-s", "-X", "DELETE", &url]);
        }
    }
}

/// What the dashboard's Content view must show as text: a publisher picks titles.
const HOSTILE_TITLE: &str = "Clip <b>html</b> <img src=x onerror=alert(1)> & more";

/// The Content view of the consumer's dashboard: a channel the consumer publishes through
/// the CLI is listed with its entry (the title as text), the entry plays from the gateway,
/// and the follow form and Unfollow work.
fn content_view(browser: &Browser, data_dir: &std::path::Path, api: &str, other_node: &str) {
    // A tiny "video": the dashboard only has to point a <video> at it.
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("x.webm");
    let bytes = b"\x1a\x45\xdf\xa3 not really a webm, just bytes to stream\n".to_vec();
    std::fs::write(&file, &bytes).unwrap();
    let out = warren(
        data_dir,
        api.parse().unwrap(),
        &[
            "publish",
            file.to_str().unwrap(),
            "--channel",
            "news",
            "--title",
            HOSTILE_TITLE,
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let published: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = published["id"].as_str().unwrap().to_string();
    let channel = published["channel"].as_str().unwrap().to_string();
    let title = json!(HOSTILE_TITLE).to_string();

    browser.go(&format!("http://{api}/#content"));
    let listed = browser.until(
        "the Content view lists the channel news",
        Duration::from_secs(20),
        "const r = document.querySelector(\"#channels tbody tr[data-name='news']\");
         return r && [r.dataset.channel, r.dataset.role, r.cells[1].title, r.cells[1].textContent,
                      r.cells[3].textContent, r.cells[4].textContent];",
    );
    let id_short = format!("…{}", &channel[channel.len() - 8..]);
    assert_eq!(
        listed,
        json!([channel, "publisher", channel, id_short, "1", HOSTILE_TITLE]),
    );

    // The follow form follows a channel by id (here the provider's, which has none yet),
    // and Unfollow drops it again.
    browser.script(&format!(
        "document.getElementById('follow-id').value = {}; return true;",
        json!(other_node)
    ));
    browser.click("#follow-go");
    let followed = format!("#channels tbody tr[data-channel='{other_node}']");
    browser.until(
        "the followed channel is listed as followed",
        Duration::from_secs(20),
        &format!(
            "const r = document.querySelector(\"{followed}\");
             return r && r.dataset.role === 'follower' && !!r.querySelector('button.unfollow')
                 && document.getElementById('follow-id').value === '';"
        ),
    );
    browser.click(&format!("{followed} button.unfollow"));
    browser.until(
        "the unfollowed channel leaves the list",
        Duration::from_secs(20),
        &format!("return !document.querySelector(\"{followed}\");"),
    );

    // The channel's entries: the title shown as text, not as markup.
    browser.click("#channels tbody tr[data-name='news'] button.open-channel");
    let row = format!("#entries tbody tr[data-content='{id}']");
    let cells = browser.until(
        "the channel's entry is listed",
        Duration::from_secs(20),
        &format!(
            "const r = document.querySelector(\"{row}\");
             return r && [...r.cells].map(c => c.textContent);"
        ),
    );
    assert_eq!(cells[0], json!(HOSTILE_TITLE), "{cells}");
    assert_eq!(cells[1], json!("video/webm"), "{cells}");
    assert_eq!(cells[2], json!(format!("{} B", bytes.len())), "{cells}");
    assert_eq!(cells[4], json!("yes"), "{cells}");
    let markup = browser.script(&format!(
        "return [document.querySelectorAll('#content b, #content img, #content script').length,
                 document.getElementById('channel-h').textContent,
                 [...document.querySelectorAll('#entries tbody td.title')].some(td => td.textContent === {title})];"
    ));
    assert_eq!(markup, json!([0, "Entries of news", true]));

    // Play: a <video> streaming from the gateway.
    browser.click(&format!("{row} button.play"));
    let src = browser.until(
        "the viewer shows a video of the entry",
        Duration::from_secs(20),
        &format!(
            "const v = document.querySelector('#viewer-media video');
             return !document.getElementById('viewer').hidden && v
                 && document.getElementById('viewer-title').textContent === {title}
                 && v.getAttribute('src');"
        ),
    );
    let src = src.as_str().unwrap().to_string();
    assert!(src.ends_with(&format!("/content/{id}")), "{src}");
    // These bytes are no video: the element settles on an error, which the viewer says.
    browser.until(
        "the video element has tried the stream",
        Duration::from_secs(20),
        "const v = document.querySelector('#viewer-media video');
         if (!(v.error || v.readyState >= 1)) return false;
         document.getElementById('viewer').scrollIntoView({block: 'end'});
         return true;",
    );
    browser.screenshot("dashboard-content.png");

    // What the <video> streams: the published bytes, as video/webm, with Range.
    let url = format!("http://{api}{src}");
    let headers = files.path().join("headers");
    let (code, body, err) = curl(&["--fail", "-D", headers.to_str().unwrap(), &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, bytes);
    let head = std::fs::read_to_string(&headers).unwrap().to_lowercase();
    assert!(head.contains("content-type: video/webm"), "{head}");
    let (code, body, err) = curl(&[
        "--fail",
        "-D",
        headers.to_str().unwrap(),
        "-H",
        "Range: bytes=4-7",
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, bytes[4..8]);
    let head = std::fs::read_to_string(&headers).unwrap().to_lowercase();
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert!(
        head.contains(&format!("content-range: bytes 4-7/{}", bytes.len())),
        "{head}"
    );
}

#[test]
fn the_dashboard_browses_connects_and_shows_the_provider_earning() {
    if !(found("chromium") && found("chromedriver")) {
        eprintln!("skipping: chromium and chromedriver are needed (scripts/test.sh installs them)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let api = format!("127.0.0.1:{}", free_port());
    let socks = format!("127.0.0.1:{}", free_port());
    let (guard, printed) = support::start_testnet(dir.path(), &api, &socks, 3);
    let dashboard = format!("http://{api}/");
    assert!(
        printed.iter().any(|l| l.contains(&dashboard)),
        "{printed:#?}"
    );
    // "  DE  <short id>  http://127.0.0.1:PORT/#provider"
    let provider_pages: Vec<(String, String)> = printed
        .iter()
        .filter(|l| l.ends_with("/#provider"))
        .map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            (parts[1].to_string(), parts[2].to_string())
        })
        .collect();
    assert_eq!(provider_pages.len(), 3, "{printed:#?}");

    let browser = Browser::start();
    browser.go(&dashboard);
    // The offers table fills with the testnet's countries.
    let countries = browser.until(
        "the offers table lists several countries",
        Duration::from_secs(30),
        "const c = [...document.querySelectorAll('#offers tbody tr')].map(r => r.dataset.country);
         return new Set(c).size >= 3 ? [...new Set(c)].sort() : null;",
    );
    assert!(
        countries.as_array().unwrap().contains(&json!("DE")),
        "{countries}"
    );
    browser.screenshot("dashboard-offers.png");

    // Connect to the German provider from the table.
    browser.click("#offers tbody tr[data-country='DE'] button.connect");
    browser.until(
        "the page shows the session",
        Duration::from_secs(30),
        "return document.getElementById('session-state').textContent.startsWith('Connected')
            && document.getElementById('s-country').textContent === 'DE';",
    );
    let status = warren(dir.path(), api.parse().unwrap(), &["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["session"]["country"], "DE", "{status}");
    let provider = status["session"]["provider"].as_str().unwrap().to_string();

    // Traffic through the session (the consumer's own API, through the provider's exit),
    // which the testnet's prices make paid.
    let port = api.rsplit(':').next().unwrap();
    for _ in 0..5 {
        let (code, _, err) = curl(&[
            "--fail",
            "-s",
            "-o",
            "/dev/null",
            "--socks5-hostname",
            &socks,
            &format!("http://localhost:{port}/dashboard/app.js"),
        ]);
        assert_eq!(code, 0, "{err}");
    }
    browser.until(
        "the page shows a payment",
        Duration::from_secs(20),
        "const p = document.getElementById('s-promised').textContent;
         return p && p !== '0 WRN';",
    );
    browser.screenshot("dashboard-connected.png");

    // The provider's dashboard shows the session and what it earns.
    // The printed short id is the provider id's last 8 characters.
    let page = provider_pages
        .iter()
        .find(|(short, _)| provider.ends_with(short.as_str()))
        .expect("the session's provider has a dashboard")
        .1
        .clone();
    browser.go(&page);
    browser.until(
        "the provider view shows the session with earnings",
        Duration::from_secs(20),
        "const rows = [...document.querySelectorAll('#served tbody tr')];
         return rows.some(r => r.cells.length === 7 && r.cells[5].textContent !== '0 WRN');",
    );
    let selling = browser.script("return document.getElementById('selling').textContent;");
    assert!(
        selling.as_str().unwrap().contains("Selling in DE"),
        "{selling}"
    );
    // The exit policy is listed, and the prices change from the page.
    let rules = browser.script("return document.querySelectorAll('#policy tbody tr').length;");
    assert!(rules.as_u64().unwrap() >= 3, "{rules}");
    browser.script("document.getElementById('sell-gib').value = '0.05'; return true;");
    browser.click("#sell-start");
    browser.until(
        "the new price is on sale",
        Duration::from_secs(20),
        "return document.getElementById('selling').textContent.includes('0.05 WRN/GiB');",
    );
    browser.screenshot("dashboard-provider.png");

    content_view(&browser, dir.path(), &api, &provider);
    drop(browser);

    let out = warren(dir.path(), api.parse().unwrap(), &["disconnect"]);
    assert!(out.status.success());
    let pid = guard.0.as_ref().unwrap().id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
}
