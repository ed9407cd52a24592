//! The command line as a person meets it: identity set-up, recovery, passphrases, and what
//! happens when no node is running or input is wrong.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use support::{NodeProc, free_port, warren, warren_bin};

fn nowhere() -> SocketAddr {
    // A port nothing listens on.
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// Runs `warren init --recover EXTRA…` with `input` on standard input.
fn recover(dir: &std::path::Path, extra: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(warren_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(["init", "--recover"])
        .args(extra)
        .env_remove("WARREN_PASSPHRASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{input}").unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn init_shows_the_phrase_once_and_recover_restores_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let out = warren(dir.path(), nowhere(), &["init", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["node_id"].as_str().unwrap().to_string();
    let phrase = v["recovery_phrase"].as_str().unwrap().to_string();
    assert!(id.starts_with("12D3KooW"));
    assert_eq!(phrase.split(' ').count(), 24);

    let key = dir.path().join("identity.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = warren(dir.path(), nowhere(), &["id"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);

    // A second init refuses and leaves the key alone.
    let before = std::fs::read(&key).unwrap();
    let out = warren(dir.path(), nowhere(), &["init"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refusing to overwrite"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);

    // Recover on "another machine" from the phrase on stdin.
    let other = tempfile::tempdir().unwrap();
    let out = recover(other.path(), &["--json"], &phrase);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["node_id"].as_str(), Some(id.as_str()));
    assert!(
        v["recovery_phrase"].is_null(),
        "recover must not print the phrase again"
    );
}

#[test]
fn recover_rejects_a_bad_phrase_and_an_empty_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let out = warren(dir.path(), nowhere(), &["init", "--recover"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no recovery phrase"),
        "{}",
        stderr(&out)
    );
    let out = recover(dir.path(), &[], "correct horse battery staple");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("recovery phrase is not valid"),
        "{}",
        stderr(&out)
    );
    assert!(
        !dir.path().join("identity.key").exists(),
        "a bad phrase must not write a key"
    );
}

#[test]
fn a_passphrase_seals_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], pass: Option<&str>| {
        let mut c = Command::new(warren_bin());
        c.arg("--data-dir").arg(dir.path()).args(args);
        match pass {
            Some(p) => c.env("WARREN_PASSPHRASE", p),
            None => c.env_remove("WARREN_PASSPHRASE"),
        };
        c.output().unwrap()
    };
    let out = run(&["init", "--json"], Some("s3cret"));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["encrypted"], true);
    let out = run(&["id"], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("WARREN_PASSPHRASE"),
        "{}",
        stderr(&out)
    );
    let out = run(&["id"], Some("wrong"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not unlock"), "{}", stderr(&out));
    let out = run(&["id"], Some("s3cret"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        v["node_id"].as_str().unwrap()
    );
}

#[test]
fn commands_without_a_running_node_say_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["offers"][..], &["status", "--json"][..]] {
        let out = warren(dir.path(), nowhere(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("no Warren node is answering"), "{err}");
        assert!(err.contains("warren node"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = warren(dir.path(), nowhere(), &["node"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("warren init"), "{}", stderr(&out));
}

#[test]
fn bad_prices_and_countries_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["offers", "--max-price-gib", "0.0000000001"],
            "more than 9 decimals",
        ),
        (
            &["offers", "--max-price-gib", "1e3"],
            "not a decimal number",
        ),
        (&["offers", "--country", "Germany"], "two-letter"),
        (&["node", "--provide", "--price-gib", "1"], "--price-hour"),
    ];
    for (args, why) in cases {
        let out = warren(dir.path(), nowhere(), args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn a_taken_api_port_is_a_clear_error() {
    let first = NodeProc::start(&["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let dir = tempfile::tempdir().unwrap();
    assert!(warren(dir.path(), first.api, &["init"]).status.success());
    let out = warren(
        dir.path(),
        first.api,
        &["node", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is taken"), "{}", stderr(&out));
    // The first node is unharmed.
    assert!(first.cli(&["status"]).status.success());
}
