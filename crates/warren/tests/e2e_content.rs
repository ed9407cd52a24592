//! End to end, real processes on 127.0.0.1: A publishes a random 50 MiB file; C, which only
//! knows B, gets it with a matching SHA-256 and serves Range requests on its gateway; B
//! follows A's channel and replicates it; A is killed with -9; a newcomer D that only knows
//! B gets the content. Then the channel travels on a "USB stick": exported from B, imported
//! by a node that meets nobody, and a tampered copy is refused.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::web::{bytes_from, curl, sha256};
use support::{NodeProc, eventually};

const MIB: usize = 1 << 20;

fn node(extra: &[&str]) -> NodeProc {
    let mut args = vec![
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--listen=/ip4/127.0.0.1/udp/0/quic-v1",
        "--content-sync",
        "1",
    ];
    args.extend_from_slice(extra);
    NodeProc::start(&args)
}

fn logs(nodes: &[(&str, &NodeProc)]) -> String {
    nodes
        .iter()
        .map(|(name, n)| {
            let lines: Vec<String> = n.log.try_iter().collect();
            format!("--- {name} ---\n{}", lines.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The channel's view on `node`, if it lists it.
fn channel_on(node: &NodeProc, channel: &str) -> Option<Value> {
    let list = node.json(&["channels", "--json"]);
    list.as_array()?
        .iter()
        .find(|c| c["id"] == channel)
        .cloned()
}

fn get(node: &NodeProc, id: &str, out: &Path) -> std::process::Output {
    node.cli(&["get", id, "-o", out.to_str().unwrap()])
}

#[test]
fn content_spreads_survives_its_publisher_and_travels_by_usb_stick() {
    let a = node(&[]);
    let b = node(&["--bootstrap", &a.addr("tcp")]);
    let c = node(&["--bootstrap", &b.addr("tcp")]);

    let work = tempfile::tempdir().unwrap();
    let original = bytes_from(6, 50 * MIB);
    let file = work.path().join("protest.mp4");
    std::fs::write(&file, &original).unwrap();
    let published = a.json(&[
        "publish",
        file.to_str().unwrap(),
        "--channel",
        "news",
        "--title",
        "Protest, day 3",
        "--json",
    ]);
    let id = published["id"].as_str().unwrap().to_string();
    let channel = published["channel"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 64, "{published}");
    assert_ne!(channel, a.id, "a channel has its own key");

    // C knows only B, and still gets it (A is found through the DHT).
    let out_c = work.path().join("from-c.mp4");
    let got = get(&c, &id, &out_c);
    assert!(
        got.status.success(),
        "get on C failed: {}\n{}",
        String::from_utf8_lossy(&got.stderr),
        logs(&[("A", &a), ("B", &b), ("C", &c)])
    );
    assert_eq!(
        sha256(&std::fs::read(&out_c).unwrap()),
        sha256(&original),
        "C's copy differs"
    );

    // C's gateway answers a Range request with 206 and exactly those bytes.
    let url = format!("http://{}/content/{id}", c.api);
    let (code, body, _) = curl(&["-s", "-D", "-", "-H", "Range: bytes=1000000-1000999", &url]);
    assert_eq!(code, 0);
    let (head, bytes) = split_response(&body);
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "content-range: bytes 1000000-1000999/{}",
            50 * MIB
        )),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: video/mp4"),
        "{head}"
    );
    assert_eq!(bytes, &original[1_000_000..1_001_000]);
    let (_, body, _) = curl(&["-s", "-D", "-", "-H", "Range: bytes=999999999-", &url]);
    let (head, _) = split_response(&body);
    assert!(head.starts_with("HTTP/1.1 416"), "{head}");

    // B follows the channel and replicates entry and blob.
    let followed = b.cli(&["follow", &channel]);
    assert!(followed.status.success(), "{followed:?}");
    let replicated = eventually(Duration::from_secs(60), || {
        let ch = channel_on(&b, &channel)?;
        (ch["entries"] == 1 && ch["latest"]["held"] == true).then_some(ch)
    });
    assert!(
        replicated.is_some(),
        "B did not replicate: {:?}\n{}",
        channel_on(&b, &channel),
        logs(&[("A", &a), ("B", &b)])
    );
    assert_eq!(replicated.unwrap()["name"], "news");

    // The publisher disappears; a newcomer that only knows B still gets the content.
    let mut a = a;
    a.kill9();
    drop(c);
    let d = node(&["--bootstrap", &b.addr("tcp")]);
    let out_d = work.path().join("from-d.mp4");
    let got = get(&d, &id, &out_d);
    assert!(
        got.status.success(),
        "get on D failed: {}\n{}",
        String::from_utf8_lossy(&got.stderr),
        logs(&[("B", &b), ("D", &d)])
    );
    assert_eq!(sha256(&std::fs::read(&out_d).unwrap()), sha256(&original));

    // Sneakernet: B writes the channel to a stick; E, which meets nobody, takes it in.
    let stick = work.path().join("stick");
    let exported = b.json(&["export", &channel, stick.to_str().unwrap(), "--json"]);
    assert_eq!(exported["entries"], 1, "{exported}");
    assert_eq!(exported["blobs"], 1, "{exported}");
    let e = node(&[]);
    let imported = e.json(&["import", stick.to_str().unwrap(), "--json"]);
    assert_eq!(imported["blobs"], 1, "{imported}");
    assert_eq!(imported["channels"][0]["id"], channel.as_str());
    assert_eq!(imported["channels"][0]["new_entries"], 1);
    let ch = channel_on(&e, &channel).expect("E lists the imported channel");
    assert_eq!(ch["latest"]["held"], true, "{ch}");
    let out_e = work.path().join("from-e.mp4");
    assert!(get(&e, &id, &out_e).status.success());
    assert_eq!(sha256(&std::fs::read(&out_e).unwrap()), sha256(&original));

    // A tampered stick is refused by name, and nothing of it is taken in.
    let blob_on_stick = stick.join("blobs").join(&id);
    let mut bytes = std::fs::read(&blob_on_stick).unwrap();
    bytes[12345] ^= 1;
    std::fs::write(&blob_on_stick, &bytes).unwrap();
    let f = node(&[]);
    let refused = f.cli(&["import", stick.to_str().unwrap()]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("does not hash to its name"), "{why}");
    let log = stick.join(format!("{channel}.log"));
    let mut entries = std::fs::read(&log).unwrap();
    let n = entries.len();
    entries[n - 5] ^= 1;
    std::fs::write(&log, &entries).unwrap();
    let refused = f.cli(&["import", stick.to_str().unwrap()]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("refused"), "{why}");
    let list = f.json(&["channels", "--json"]);
    assert_eq!(list, serde_json::json!([]), "nothing was taken in");
}

/// Splits curl's `-D -` output (headers, then body, both on stdout) into the head of the
/// last response and its body.
fn split_response(stdout: &[u8]) -> (String, &[u8]) {
    let at = stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    (
        String::from_utf8_lossy(&stdout[..at]).into_owned(),
        &stdout[at + 4..],
    )
}
