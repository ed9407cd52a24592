//! The command line, as SPEC §6 fixes it: outside checks rely on these names.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use warren_node::FeeBps;
use warren_types::{Amount, Country, IpKind, NodeId, Service};

#[derive(Debug, Parser)]
#[command(
    name = "warren",
    version,
    about = "Warren: a people-powered VPN and publishing network that no single party can switch off"
)]
pub struct Cli {
    /// Where the identity, peer cache and node data live.
    #[arg(long, global = true, env = "WARREN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// The running node's local API address.
    #[arg(
        long,
        global = true,
        env = "WARREN_API",
        default_value = "127.0.0.1:4450",
        value_name = "ADDR"
    )]
    pub api: SocketAddr,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this node's identity and show its recovery phrase (once).
    Init {
        /// Restore the identity from a 24-word recovery phrase read on standard input.
        #[arg(long)]
        recover: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print this node's id.
    Id,
    /// Run the node.
    Node(NodeArgs),
    /// List the offers this node has seen and verified.
    Offers {
        /// Only offers from this country (ISO 3166 alpha-2, e.g. DE).
        #[arg(long, value_name = "CC")]
        country: Option<Country>,
        /// Only offers at most this price per GiB, in WRN (e.g. 0.05).
        #[arg(long, value_name = "WRN")]
        max_price_gib: Option<Amount>,
        /// Only offers at most this price per hour, in WRN.
        #[arg(long, value_name = "WRN")]
        max_price_hour: Option<Amount>,
        /// Only offers of this service: "proxy" (bandwidth, the default) or "hub" (payment
        /// hubs); "all" lists every offer.
        #[arg(long, value_name = "NAME", default_value = "proxy", value_parser = parse_service)]
        service: ServiceFilter,
        #[arg(long)]
        json: bool,
    },
    /// Open a session with the best matching provider; the SOCKS5 and HTTP proxies then
    /// carry traffic through it.
    Connect {
        /// This provider (a node id from `warren offers`).
        #[arg(long, value_name = "ID", conflicts_with = "country")]
        provider: Option<NodeId>,
        /// The cheapest (then quickest) provider in this country.
        #[arg(long, value_name = "CC")]
        country: Option<Country>,
        /// Use no offer above this price per GiB, in WRN.
        #[arg(long, value_name = "WRN")]
        max_price_gib: Option<Amount>,
        /// Use no offer above this price per hour, in WRN.
        #[arg(long, value_name = "WRN")]
        max_price_hour: Option<Amount>,
        #[arg(long)]
        json: bool,
    },
    /// Close the session.
    Disconnect {
        #[arg(long)]
        json: bool,
    },
    /// Show the node's id, addresses, peers and session.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Balances and escrow at the payment hub, and earnings; top up, settle, history.
    Wallet {
        #[command(subcommand)]
        action: Option<WalletAction>,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Publish a file into one of this node's channels; prints its content id.
    Publish {
        /// The file to publish (it is copied into the node's store).
        file: PathBuf,
        /// The channel's name; each name is a channel with its own id.
        #[arg(long, value_name = "NAME", default_value = "main")]
        channel: String,
        /// The entry's title (default: the file's name).
        #[arg(long, value_name = "T")]
        title: Option<String>,
        /// The media type (default: from the file's extension, e.g. video/mp4).
        #[arg(long = "type", value_name = "MEDIA_TYPE")]
        media_type: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the channels this node publishes, follows or holds.
    Channels {
        #[arg(long)]
        json: bool,
    },
    /// Follow a channel: replicate its entries and blobs (within the storage quota) and
    /// serve them to others.
    Follow {
        /// The channel's id (as `warren publish` or `warren channels` prints it).
        #[arg(value_name = "CHANNEL")]
        channel: NodeId,
        #[arg(long)]
        json: bool,
    },
    /// Fetch content from peers, verified piece by piece, with a progress bar.
    Get {
        /// The content id (64 hex digits).
        #[arg(value_name = "ID")]
        id: warren_content::ContentId,
        /// Write it here; without it, to standard output if that is not a terminal, else to
        /// a file named by the id in the current directory.
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write a channel (its signed log and the blobs held of it) into a directory, e.g. on
    /// a USB stick.
    Export {
        /// The channel's id, or the name of one of this node's channels.
        #[arg(value_name = "CHANNEL")]
        channel: String,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Take in channels exported into a directory, verifying every signature and hash, and
    /// follow them.
    Import {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run a whole local network in one process: providers in several countries, a payment
    /// hub with a faucet, and a consumer (10 WRN in escrow) whose API is on --api.
    Testnet {
        /// How many providers to start.
        #[arg(long, default_value_t = 4)]
        providers: usize,
        /// The consumer's SOCKS5 proxy (if the port is taken, the testnet runs without it).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1080")]
        socks: SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum WalletAction {
    /// Get WRN from a test hub's faucet and put it into escrow for sessions.
    Topup {
        /// How much, in WRN (e.g. 10 or 0.5).
        #[arg(value_name = "WRN")]
        amount: Amount,
        /// The hub to top up at (a node id from `warren offers --service hub`); default the
        /// hub the wallet uses.
        #[arg(long, value_name = "ID")]
        hub: Option<NodeId>,
    },
    /// Hand the promises this node earned as a provider to their hubs for payment.
    Settle,
    /// The latest movements of this node's account at the hub, newest first.
    History {
        /// How many entries (at most 1000).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
}

/// Which offers `warren offers` lists: one service, or all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFilter(pub Option<Service>);

/// "proxy", "hub", or "all" (no filter).
fn parse_service(text: &str) -> Result<ServiceFilter, String> {
    if text == "all" {
        return Ok(ServiceFilter(None));
    }
    Service::new(text)
        .map(|s| ServiceFilter(Some(s)))
        .map_err(|_| format!("{text:?} is not a service name such as proxy or hub (or all)"))
}

/// A hub fee as a percentage ("1", "0.5"), exact to a basis point, at most 5 %.
pub fn parse_fee(text: &str) -> Result<FeeBps, String> {
    let t = text.trim().trim_end_matches('%').trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
        return Err(format!("{text:?} is not a percentage such as 1 or 0.5"));
    }
    if frac.len() > 2 {
        return Err(format!("{text:?} is finer than a basis point (0.01 %)"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| format!("{text:?} is above the protocol cap of 5 %"))?
    };
    let frac: u64 = format!("{frac:0<2}").parse().unwrap_or(0);
    let bps = whole.saturating_mul(100).saturating_add(frac);
    if bps > u64::from(FeeBps::CAP.0) {
        return Err(format!(
            "a hub fee of {text} % is above the protocol cap of 5 %"
        ));
    }
    Ok(FeeBps(bps as u16))
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Multiaddress to listen on; repeat for several. Default: QUIC and TCP on port 4451.
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Multiaddress of a peer to join through (ending in /p2p/<node id>); repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Do not look for peers on the local network with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Sell bandwidth: publish a signed offer.
    #[arg(long, requires_all = ["price_gib", "price_hour"])]
    pub provide: bool,
    /// Price per GiB of traffic (both directions), in WRN, e.g. 0.05.
    #[arg(long, value_name = "WRN", requires = "provide")]
    pub price_gib: Option<Amount>,
    /// Price per hour, in WRN, pro-rated per second.
    #[arg(long, value_name = "WRN", requires = "provide")]
    pub price_hour: Option<Amount>,
    /// The country your traffic leaves from (ISO 3166 alpha-2). Unknown (ZZ) if unset.
    #[arg(long, value_name = "CC")]
    pub country: Option<Country>,
    /// What kind of address your traffic leaves from: residential, hosting or unknown.
    #[arg(long, value_name = "KIND", default_value = "unknown")]
    pub ip_kind: IpKind,
    /// Seconds an offer stays valid (it is re-signed at two thirds of this).
    #[arg(long, value_name = "SECS", default_value_t = 180)]
    pub offer_lifetime: u64,
    /// Do not serve as a circuit relay for peers behind NAT.
    #[arg(long)]
    pub no_relay_server: bool,
    /// Let the exit reach this network although the default policy denies it (e.g.
    /// 127.0.0.0/8 for a test network on one machine); repeatable.
    #[arg(long, value_name = "CIDR")]
    pub exit_allow: Vec<ipnet::IpNet>,
    /// The SOCKS5 proxy for this node's own traffic. Default 127.0.0.1:1080 (if that port is
    /// taken the node warns and runs without it); "off" runs none.
    #[arg(long, value_name = "ADDR")]
    pub socks: Option<String>,
    /// An HTTP proxy (CONNECT and plain http:// requests) for this node's own traffic;
    /// none unless given.
    #[arg(long, value_name = "ADDR")]
    pub http_proxy: Option<SocketAddr>,
    /// The config file (exit rules and caps). Default: config.toml in the data directory,
    /// if it exists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run a payment hub: hold consumers' escrows and settle providers' promises (ledger in
    /// hub/hub.db in the data directory), and announce it in an offer.
    #[arg(long)]
    pub hub: bool,
    /// Give free top-ups from the hub (test networks only).
    #[arg(long, requires = "hub")]
    pub faucet: bool,
    /// The hub's fee on every settlement, in percent (default 1, at most 5).
    #[arg(long, value_name = "PERCENT", requires = "hub", value_parser = parse_fee)]
    pub hub_fee: Option<FeeBps>,
    /// As a provider, take escrow only at this hub (repeat for several). Default: every hub
    /// this node has seen.
    #[arg(long = "accept-hub", value_name = "ID")]
    pub accept_hub: Vec<NodeId>,
    /// Most disk the blobs of followed channels may take, e.g. 10GiB or 500MiB (what this
    /// node publishes or fetches by hand is always kept, and counts towards it).
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = parse_size)]
    pub content_quota: u64,
    /// Seconds between syncs of followed channels with peers (news also comes by gossip).
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub content_sync: u64,
    /// Hours between scrubs, which hash every held blob whole again to find rot on disk
    /// (at most a quarter of one core while it runs).
    #[arg(long, value_name = "HOURS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=8760))]
    pub content_scrub: u64,
}

/// A size such as 10GiB, 500MiB, 2GB or 1048576 (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 10GiB or 500MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "{other:?} is not a size unit (use B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("500MiB"), Ok(500 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1 tib"), Ok(1 << 40));
        for bad in ["", "GiB", "10 parsecs", "-1", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hub_fees_parse_exactly_and_stop_at_the_cap() {
        assert_eq!(parse_fee("1"), Ok(FeeBps(100)));
        assert_eq!(parse_fee("0.5"), Ok(FeeBps(50)));
        assert_eq!(parse_fee("2.25%"), Ok(FeeBps(225)));
        assert_eq!(parse_fee("5"), Ok(FeeBps(500)));
        assert_eq!(parse_fee("0"), Ok(FeeBps(0)));
        for bad in [
            "5.01",
            "6",
            "99999999999999999999",
            "0.001",
            "one",
            "",
            "-1",
        ] {
            assert!(parse_fee(bad).is_err(), "{bad}");
        }
        assert!(parse_fee("7").unwrap_err().contains("cap of 5 %"));
    }
}
