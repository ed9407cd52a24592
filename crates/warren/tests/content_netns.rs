//! Content survives a country-wide shutdown: six real `warren node` processes in two
//! "countries" of Linux network namespaces, joined through a router namespace; a publisher
//! in country X keeps reaching its followers in X after X is cut off from the world.
//!
//! ```text
//!   x1 x2 x3            y1 y2 y3        one namespace per node, eth0 = 10.201.{1,2}.1{1,2,3}
//!    \ | /               \ | /
//!     xb (bridge br0)     yb (bridge br0)     one namespace per country
//!        \ up          up /
//!         x ── router ── y                    10.201.1.1 and 10.201.2.1, ip_forward on
//! ```
//!
//! Every node bootstraps to x1 (the "global" bootstrap node). Before the cut the whole
//! network is one; x2 publishes into a channel that x1, x3 and the nodes in Y follow. Then
//! the link between X's bridge and the router is deleted: X is alone. x2 publishes a new
//! 3 MiB entry, which must reach x1 and x3 (entry and blob, byte for byte) and must not
//! reach Y.
//!
//! The test makes every namespace, link and address itself, inside namespaces only (the
//! root namespace's interfaces and routes are never touched), and removes them when it
//! ends, also when it fails. Needs root, iproute2 and bash; without them it prints a line
//! and passes.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::netns::{can_run, del_netns, ip};
use support::web::{bytes_from, sha256};
use support::{NodeProc, eventually, warren_bin};

/// What the nodes log (shown only when the test fails). `WARREN_LOG` overrides it.
const LOG_FILTER: &str = "info,warren_node=debug,warren_net=debug";

/// The port every node listens on, in its own namespace.
const PORT: u16 = 4451;

/// How long any one stage may take.
const STAGE: Duration = Duration::from_secs(60);

/// Runs `cmd` and waits at most `limit` for it; a command still running then is killed
/// (by its pid) and reported as failed.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("could not start a command");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("waiting for a command"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let mut out = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a killed command ends")
                .expect("waiting for a command");
            out.stderr
                .extend_from_slice(format!("\n(killed after {limit:?})").as_bytes());
            out
        }
    }
}

/// The two countries, the router between them and the six nodes' namespaces. Dropping it
/// deletes every namespace (and with them every link in them).
struct World {
    prefix: String,
    made: Vec<String>,
}

/// A country: its label ("x" or "y") and the third octet of its 10.201.N.0/24.
const COUNTRIES: [(&str, u8); 2] = [("x", 1), ("y", 2)];

impl World {
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn node_addr(country: u8, i: u8) -> String {
        format!("10.201.{country}.{}", 10 + i)
    }

    fn build() -> World {
        let pid = std::process::id();
        let mut world = World {
            prefix: format!("wrn-cs{pid}"),
            made: Vec::new(),
        };
        let mut roles = vec!["r".to_string()];
        for (c, _) in COUNTRIES {
            roles.push(format!("{c}b"));
            roles.extend((1..=3).map(|i| format!("{c}{i}")));
        }
        for role in &roles {
            let ns = world.ns(role);
            // Leftovers of an earlier run whose process had this pid.
            del_netns(&ns);
            ip(&["netns", "add", &ns]);
            // From here on, a panic deletes it.
            world.made.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "dev", "lo", "up"]);
        }
        let router = world.ns("r");
        let forward = Command::new("ip")
            .args(["netns", "exec", &router, "sysctl", "-q", "-w"])
            .arg("net.ipv4.ip_forward=1")
            .output()
            .expect("could not run sysctl in the router namespace");
        assert!(
            forward.status.success(),
            "enabling ip_forward in {router}: {}",
            String::from_utf8_lossy(&forward.stderr)
        );
        for (c, octet) in COUNTRIES {
            let bridge_ns = world.ns(&format!("{c}b"));
            let b = bridge_ns.as_str();
            ip(&["-n", b, "link", "add", "br0", "type", "bridge"]);
            ip(&["-n", b, "link", "set", "dev", "br0", "up"]);
            // The country's uplink: "uplink" in the bridge namespace, "x"/"y" in the router.
            // Both ends are created inside namespaces: nothing appears in the root one.
            ip(&[
                "-n", b, "link", "add", "uplink", "type", "veth", "peer", "name", c, "netns",
                &router,
            ]);
            ip(&["-n", b, "link", "set", "dev", "uplink", "master", "br0"]);
            ip(&["-n", b, "link", "set", "dev", "uplink", "up"]);
            let gateway = format!("10.201.{octet}.1");
            ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{gateway}/24"),
                "dev",
                c,
            ]);
            ip(&["-n", &router, "link", "set", "dev", c, "up"]);
            for i in 1..=3u8 {
                let node_ns = world.ns(&format!("{c}{i}"));
                let port = format!("p{i}");
                ip(&[
                    "-n", b, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                    &node_ns,
                ]);
                ip(&["-n", b, "link", "set", "dev", &port, "master", "br0"]);
                ip(&["-n", b, "link", "set", "dev", &port, "up"]);
                let addr = format!("{}/24", Self::node_addr(octet, i));
                ip(&["-n", &node_ns, "addr", "add", &addr, "dev", "eth0"]);
                ip(&[
                    "-n",
                    &node_ns,
                    "link",
                    "set",
                    "dev",
                    "eth0",
                    "multicast",
                    "on",
                ]);
                ip(&["-n", &node_ns, "link", "set", "dev", "eth0", "up"]);
                ip(&["-n", &node_ns, "route", "add", "default", "via", &gateway]);
            }
        }
        world
    }

    /// The shutdown: deletes the link between country `c`'s bridge and the router.
    fn cut(&self, c: &str) {
        ip(&[
            "-n",
            &self.ns(&format!("{c}b")),
            "link",
            "del",
            "dev",
            "uplink",
        ]);
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            del_netns(ns);
        }
    }
}

/// Whether a TCP connection from namespace `ns` to `addr:PORT` comes up within 2 s.
fn reaches(ns: &str, addr: &str) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{addr}/{PORT}"));
    output_within(cmd, Duration::from_secs(2)).status.success()
}

/// One `warren node` in its own namespace.
struct Node {
    name: String,
    ns: String,
    addr: String,
    proc_: NodeProc,
}

impl Node {
    /// Starts `warren node` in `ns` (after `warren init`, which `NodeProc` runs), listening
    /// on every address of the namespace, syncing followed channels every 2 s.
    fn start(name: &str, ns: &str, addr: &str, bootstrap: Option<&str>) -> Node {
        let listen = format!("/ip4/0.0.0.0/tcp/{PORT}");
        let mut args = vec!["--listen", listen.as_str(), "--content-sync", "2"];
        args.extend(["--socks", "off"]);
        if let Some(b) = bootstrap {
            args.extend(["--bootstrap", b]);
        }
        let log = std::env::var("WARREN_LOG").unwrap_or_else(|_| LOG_FILTER.to_string());
        let proc_ = NodeProc::start_in(
            tempfile::tempdir().expect("tempdir"),
            &args,
            &[("WARREN_LOG", &log)],
            Some(&["ip", "netns", "exec", ns]),
        );
        Node {
            name: name.to_string(),
            ns: ns.to_string(),
            addr: addr.to_string(),
            proc_,
        }
    }

    /// Runs a CLI command against this node: inside its namespace, where its API listens.
    fn cli(&self, args: &[&str], limit: Duration) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(warren_bin())
            .arg("--data-dir")
            .arg(self.proc_.dir.path())
            .arg("--api")
            .arg(self.proc_.api.to_string())
            .args(args)
            .env_remove("WARREN_PASSPHRASE");
        output_within(cmd, limit)
    }

    /// The parsed JSON output of a CLI command, or `None` if it failed.
    fn json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let out = self.cli(args, Duration::from_secs(15));
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn peers(&self) -> Option<u64> {
        self.json(&["status", "--json"])
            .and_then(|s| s["peers"].as_u64())
    }

    /// This node's view of `channel` (from `channels --json`), if it lists it.
    fn channel(&self, channel: &str) -> Option<serde_json::Value> {
        self.json(&["channels", "--json"])?
            .as_array()?
            .iter()
            .find(|c| c["id"] == channel)
            .cloned()
    }

    /// How many entries of `channel` this node holds (0 if it does not list it).
    fn entries(&self, channel: &str) -> u64 {
        self.channel(channel)
            .and_then(|c| c["entries"].as_u64())
            .unwrap_or(0)
    }

    /// The addresses of this namespace's established TCP connections' other ends.
    fn tcp_peers(&self) -> BTreeSet<String> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns,
            "ss",
            "-Htn",
            "state",
            "established",
        ]);
        let out = output_within(cmd, Duration::from_secs(5));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .filter_map(|peer| peer.rsplit_once(':').map(|(a, _)| a.to_string()))
            .collect()
    }

    /// `publish FILE --channel news` on this node: (content id, channel id, seq).
    fn publish(&self, file: &Path, title: &str) -> (String, String, u64) {
        let path = file.to_str().expect("a UTF-8 temp path");
        let args = [
            "publish",
            path,
            "--channel",
            "news",
            "--title",
            title,
            "--json",
        ];
        let out = self.cli(&args, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "publish on {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("publish --json");
        let id = v["id"].as_str().expect("id").to_string();
        let channel = v["channel"].as_str().expect("channel").to_string();
        (id, channel, v["seq"].as_u64().expect("seq"))
    }
}

/// The six nodes; dropping it kills every one (each `NodeProc` kills and reaps its child).
struct Nodes(Vec<Node>);

impl Nodes {
    fn get(&self, name: &str) -> &Node {
        self.0
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Everything worth knowing when a stage did not finish: each node's status and
    /// channels as its API reports them, its TCP connections, and its log. The full logs go
    /// to files (kept); the panic message holds their last lines.
    fn diagnose(&self) -> String {
        let dir = std::env::temp_dir().join(format!("warren-content-netns-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let mut out = String::new();
        for n in &self.0 {
            let status = n.cli(&["status", "--json"], Duration::from_secs(10));
            let channels = n.cli(&["channels", "--json"], Duration::from_secs(10));
            let log: Vec<String> = n.proc_.log.try_iter().collect();
            let file = dir.join(format!("{}.log", n.name));
            let _ = std::fs::write(&file, log.join("\n"));
            let tail = log.len().saturating_sub(150);
            out.push_str(&format!(
                "\n=== {} {} ({}) in {}\nstatus: {}{}\nchannels: {}{}\ntcp peers: {:?}\n\
                 log ({} lines in all, in {}), the last {}:\n{}\n",
                n.name,
                n.proc_.id,
                n.addr,
                n.ns,
                String::from_utf8_lossy(&status.stdout),
                String::from_utf8_lossy(&status.stderr),
                String::from_utf8_lossy(&channels.stdout),
                String::from_utf8_lossy(&channels.stderr),
                n.tcp_peers(),
                log.len(),
                file.display(),
                log.len() - tail,
                log[tail..].join("\n"),
            ));
        }
        out
    }

    /// Waits (at most [`STAGE`]) until `done` holds for every node named in `names`.
    fn wait_all(&self, names: &[&str], what: &str, done: impl Fn(&Node) -> bool) {
        let started = Instant::now();
        let ok = eventually(STAGE, || {
            names.iter().all(|n| done(self.get(n))).then_some(())
        });
        if ok.is_none() {
            panic!(
                "{what}: not within {STAGE:?} on all of {names:?}\n{}",
                self.diagnose()
            );
        }
        eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
    }

    /// Runs `warren get ID -o OUT` on `node` and returns the bytes written.
    fn get_content(&self, node: &str, id: &str, out_dir: &Path) -> Vec<u8> {
        let n = self.get(node);
        let out_file: PathBuf = out_dir.join(format!("{node}-{id}"));
        let path = out_file.to_str().expect("a UTF-8 temp path");
        let started = Instant::now();
        let out = n.cli(&["get", id, "-o", path], STAGE);
        if !out.status.success() {
            panic!(
                "`warren get {id}` on {node} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.diagnose()
            );
        }
        eprintln!(
            "`warren get` on {node}: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        std::fs::read(&out_file).expect("the file `warren get` wrote")
    }
}

#[test]
fn content_survives_a_country_cut_off_from_the_world() {
    if !can_run(&["bash"]) {
        return;
    }
    let started = Instant::now();
    // Declared first, so it is dropped last: the nodes are killed before their namespaces go.
    let world = World::build();
    let files = tempfile::tempdir().expect("tempdir");

    // x1 first: everyone else bootstraps to it.
    let mut nodes = Nodes(Vec::new());
    let x1 = Node::start("x1", &world.ns("x1"), &World::node_addr(1, 1), None);
    let bootstrap = format!("/ip4/{}/tcp/{PORT}/p2p/{}", x1.addr, x1.proc_.id);
    nodes.0.push(x1);
    for (c, octet) in COUNTRIES {
        for i in 1..=3u8 {
            let name = format!("{c}{i}");
            if name == "x1" {
                continue;
            }
            let addr = World::node_addr(octet, i);
            nodes.0.push(Node::start(
                &name,
                &world.ns(&name),
                &addr,
                Some(&bootstrap),
            ));
        }
    }
    let ids: BTreeSet<&str> = nodes.0.iter().map(|n| n.proc_.id.as_str()).collect();
    assert_eq!(ids.len(), 6, "six distinct node ids");

    let all = ["x1", "x2", "x3", "y1", "y2", "y3"];
    nodes.wait_all(&all, "every node has 2 peers or more", |n| {
        n.peers().is_some_and(|p| p >= 2)
    });
    // The nodes of X find each other (mDNS, or addresses learnt through the DHT and
    // identify); without that the country could only talk through x1. Not required, so
    // only reported.
    let x_addrs: Vec<String> = (1..=3).map(|i| World::node_addr(1, i)).collect();
    let x_mesh = eventually(Duration::from_secs(20), || {
        ["x1", "x2", "x3"]
            .iter()
            .all(|n| {
                let node = nodes.get(n);
                let tcp = node.tcp_peers();
                x_addrs.iter().all(|a| *a == node.addr || tcp.contains(a))
            })
            .then_some(())
    });
    eprintln!(
        "the nodes of X are connected to each other: {} ({:.1} s since start)",
        x_mesh.is_some(),
        started.elapsed().as_secs_f64()
    );

    // Before the cut X reaches Y (the positive control of the probe used after it).
    let (x2, y1) = (nodes.get("x2"), nodes.get("y1"));
    assert!(
        reaches(&x2.ns, &y1.addr),
        "before the cut, x2 reaches y1 at {}:{PORT}",
        y1.addr
    );

    // x2 publishes; x1, x3 and every node in Y follow.
    let first = files.path().join("first.txt");
    std::fs::write(&first, b"news from before the shutdown\n").expect("write");
    let (first_id, channel, first_seq) = x2.publish(&first, "before");
    for name in ["x1", "x3", "y1", "y2", "y3"] {
        let n = nodes.get(name);
        let out = n.cli(&["follow", &channel, "--json"], Duration::from_secs(15));
        assert!(
            out.status.success(),
            "follow on {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let followers = ["x1", "x3", "y1", "y2", "y3"];
    nodes.wait_all(&followers, "every follower holds the first entry", |n| {
        n.entries(&channel) >= 1
    });
    eprintln!("first entry {first_id} (seq {first_seq}) in channel {channel}");

    // The shutdown: country X loses its link to the router, and with it the world.
    world.cut("x");
    let cut_at = Instant::now();
    assert!(
        !reaches(&x2.ns, &y1.addr),
        "after the cut, x2 must not reach y1 at {}:{PORT}",
        y1.addr
    );
    let x1_addr = nodes.get("x1").addr.clone();
    assert!(
        reaches(&x2.ns, &x1_addr),
        "after the cut, x2 still reaches x1 at {x1_addr}:{PORT} inside X"
    );

    // Inside X, x2 publishes a new 3 MiB entry into the same channel.
    let seed = u64::from(std::process::id()) ^ started.elapsed().as_nanos() as u64;
    let big = bytes_from(seed, 3 << 20);
    let big_sha = sha256(&big);
    let second = files.path().join("second.bin");
    std::fs::write(&second, &big).expect("write");
    let (second_id, second_channel, second_seq) = x2.publish(&second, "after the shutdown");
    assert_eq!(second_channel, channel, "the same channel");
    assert_eq!(second_seq, first_seq + 1, "the channel's next entry");

    nodes.wait_all(&["x1", "x3"], "x1 and x3 hold the new entry", |n| {
        n.entries(&channel) >= 2
    });
    // They follow the channel, so they replicate its blobs without being asked.
    nodes.wait_all(&["x1", "x3"], "x1 and x3 replicated the new blob", |n| {
        n.channel(&channel)
            .is_some_and(|c| c["latest"]["id"] == second_id.as_str() && c["latest"]["held"] == true)
    });
    for name in ["x3", "x1"] {
        let got = nodes.get_content(name, &second_id, files.path());
        assert_eq!(got.len(), big.len(), "{name}: the whole file");
        assert_eq!(sha256(&got), big_sha, "{name}: the same bytes");
    }

    // Y is unreachable: nothing published in X after the cut can be there.
    for name in ["y1", "y2", "y3"] {
        let n = nodes.get(name);
        let held = n.entries(&channel);
        assert!(
            held < 2,
            "{name} holds {held} entries of the channel, but the second was published after \
             X was cut off\n{}",
            nodes.diagnose()
        );
    }
    eprintln!(
        "after the cut, the new entry reached x1 and x3 in {:.1} s; {:.1} s in all",
        cut_at.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(nodes);
    drop(world);
}
