//! The command line, as SPEC §6 fixes it: outside checks rely on these names.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use warren_types::{Amount, Country, IpKind, NodeId};

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
    /// Run a whole local network in one process: providers in several countries and a
    /// consumer whose API is on --api.
    Testnet {
        /// How many providers to start.
        #[arg(long, default_value_t = 4)]
        providers: usize,
        /// The consumer's SOCKS5 proxy (if the port is taken, the testnet runs without it).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1080")]
        socks: SocketAddr,
    },
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
}
