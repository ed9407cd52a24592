//! The `warren` binary: parse flags, set up logging, hand over to the node library or to
//! the running node's local API.

mod cli;
mod client;
mod commands;

use clap::Parser;

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // A testnet runs many nodes in one terminal: only problems are worth printing there.
    let default = match cli.command {
        cli::Command::Testnet { .. } => "warn",
        // mDNS reports LAN addresses of the peers it finds at info: not for a log.
        _ => "info,libp2p_mdns=warn",
    };
    let filter = EnvFilter::try_from_env("WARREN_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // Destinations and client addresses stay out of logs unless the person debugging their
    // own machine asks for them.
    if std::env::var_os("WARREN_LOG_UNREDACTED").is_some_and(|v| v == "1") {
        warren_types::set_redaction(false);
        tracing::warn!("WARREN_LOG_UNREDACTED=1: logs will name destinations; do not share them");
    }
    match commands::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
