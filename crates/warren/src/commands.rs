//! What each command does. Commands that need the running node use [`ApiClient`].

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use warren_content::ContentId;
use warren_net::NetConfig;
use warren_node::api::{Disconnected, OfferView, Status, TopupRequest};
use warren_node::config::FileConfig;
use warren_node::content::Published;
use warren_node::content::api::{
    ChannelView, ContentStatus, DirRequest, ExportReport, ImportReport, PublishRequest,
};
use warren_node::keystore;
use warren_node::session::consumer::{ConnectRequest, SessionView};
use warren_node::wallet::{HistoryView, SettleReport, WalletView};
use warren_node::{
    HubConfig, NodeConfig, NodeHandle, ProvideConfig, ProxyListen, testnet::Testnet,
};
use warren_types::{Amount, Country, Identity, NodeId, Price, Service};

use crate::cli::{Cli, Command, NodeArgs, WalletAction};
use crate::client::ApiClient;

fn passphrase() -> Option<String> {
    std::env::var("WARREN_PASSPHRASE")
        .ok()
        .filter(|p| !p.is_empty())
}

/// A client of the node's API, with the token the node left in the data directory.
fn client(cli: &Cli) -> Result<ApiClient> {
    let token = data_dir(cli)
        .ok()
        .and_then(|d| warren_node::api_guard::ApiToken::read_from(&d));
    ApiClient::new(cli.api, token)
}

fn data_dir(cli: &Cli) -> Result<PathBuf> {
    if let Some(d) = &cli.data_dir {
        return Ok(d.clone());
    }
    directories::ProjectDirs::from("", "", "warren")
        .map(|p| p.data_dir().to_path_buf())
        .context("could not find a data directory for this user; pass --data-dir DIR")
}

pub async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Init { recover, json } => init(&data_dir(&cli)?, *recover, *json),
        Command::Id => {
            let id = keystore::load(&data_dir(&cli)?, passphrase().as_deref())?;
            println!("{}", id.node_id());
            Ok(())
        }
        Command::Node(args) => node(&cli, args).await,
        Command::Offers {
            country,
            max_price_gib,
            max_price_hour,
            service,
            json,
        } => {
            let filter = OffersFilter {
                country: *country,
                max_gib: *max_price_gib,
                max_hour: *max_price_hour,
                service: service.0.clone(),
            };
            offers(&cli, filter, *json).await
        }
        Command::Status { json } => status(&cli, *json).await,
        Command::Connect {
            provider,
            country,
            max_price_gib,
            max_price_hour,
            json,
        } => {
            let req = ConnectRequest {
                provider: *provider,
                country: *country,
                max_price_per_gib: *max_price_gib,
                max_price_per_hour: *max_price_hour,
            };
            connect(&cli, req, *json).await
        }
        Command::Disconnect { json } => disconnect(&cli, *json).await,
        Command::Wallet { action, json } => match action {
            None => wallet(&cli, *json).await,
            Some(WalletAction::Topup { amount, hub }) => topup(&cli, *amount, *hub, *json).await,
            Some(WalletAction::Settle) => settle(&cli, *json).await,
            Some(WalletAction::History { limit }) => history(&cli, *limit, *json).await,
        },
        Command::Publish {
            file,
            channel,
            title,
            media_type,
            json,
        } => {
            publish(
                &cli,
                file,
                channel.clone(),
                title.clone(),
                media_type.clone(),
                *json,
            )
            .await
        }
        Command::Channels { json } => channels(&cli, *json).await,
        Command::Follow { channel, json } => follow(&cli, *channel, *json).await,
        Command::Get { id, output } => get(&cli, *id, output.clone()).await,
        Command::Export { channel, dir, json } => export(&cli, channel, dir, *json).await,
        Command::Import { dir, json } => import(&cli, dir, *json).await,
        Command::Testnet { providers, socks } => testnet(&cli, *providers, *socks).await,
    }
}

fn init(dir: &std::path::Path, recover: bool, json: bool) -> Result<()> {
    let identity = if recover {
        let mut phrase = String::new();
        std::io::stdin()
            .take(4096)
            .read_to_string(&mut phrase)
            .context("reading the recovery phrase from standard input")?;
        if phrase.trim().is_empty() {
            bail!(
                "no recovery phrase on standard input: pipe in the 24 words, e.g. `warren init --recover < phrase.txt`"
            );
        }
        keystore::identity_from_phrase(&phrase)?
    } else {
        Identity::generate()
    };
    keystore::save(dir, &identity, passphrase().as_deref())?;
    let phrase = (!recover).then(|| keystore::recovery_phrase(&identity));
    if json {
        let out = serde_json::json!({
            "node_id": identity.node_id().to_string(),
            "recovery_phrase": phrase,
            "data_dir": dir,
            "encrypted": passphrase().is_some(),
        });
        println!("{out}");
        return Ok(());
    }
    let verb = if recover { "Restored" } else { "Created" };
    println!(
        "{verb} identity {} in {}",
        identity.node_id(),
        dir.display()
    );
    if passphrase().is_some() {
        println!("The key file is encrypted with WARREN_PASSPHRASE.");
    }
    if let Some(phrase) = phrase {
        println!();
        println!("Recovery phrase: write these 24 words down. They are shown only this once,");
        println!("and anyone who has them controls this node and its earnings.");
        println!();
        let words: Vec<&str> = phrase.split(' ').collect();
        for (row, chunk) in words.chunks(6).enumerate() {
            let line: Vec<String> = chunk
                .iter()
                .enumerate()
                .map(|(i, w)| format!("{:>2}. {w:<10}", row * 6 + i + 1))
                .collect();
            println!("  {}", line.join(" "));
        }
        println!();
        println!("Restore it on another machine with `warren init --recover`.");
    }
    Ok(())
}

async fn node(cli: &Cli, args: &NodeArgs) -> Result<()> {
    let dir = data_dir(cli)?;
    let identity = keystore::load(&dir, passphrase().as_deref())?;
    let mut net = NetConfig::new(identity);
    if !args.listen.is_empty() {
        net.listen = args.listen.clone();
    }
    net.bootstrap = args.bootstrap.clone();
    net.mdns = !args.no_mdns;
    net.relay_server = !args.no_relay_server;
    let mut config = NodeConfig::new(net);
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| dir.join("config.toml"));
    if args.config.is_some() || config_path.exists() {
        let file = FileConfig::load(&config_path)?;
        if let Some(rules) = file.exit {
            config.exit.rules = rules;
        }
    }
    config.exit.allow = args.exit_allow.clone();
    config.socks = match args.socks.as_deref() {
        None => Some(ProxyListen {
            addr: SocketAddr::from(([127, 0, 0, 1], 1080)),
            required: false,
        }),
        Some("off") => None,
        Some(text) => Some(ProxyListen {
            addr: text.parse().with_context(|| {
                format!("--socks {text:?} is not an address like 127.0.0.1:1080 (or \"off\")")
            })?,
            required: true,
        }),
    };
    config.http_proxy = args.http_proxy.map(|addr| ProxyListen {
        addr,
        required: true,
    });
    config.data_dir = Some(dir);
    config.api = Some(cli.api);
    if args.provide {
        let (Some(per_gib), Some(per_hour)) = (args.price_gib, args.price_hour) else {
            bail!("--provide needs --price-gib WRN and --price-hour WRN");
        };
        let mut p = ProvideConfig::new(
            Price { per_gib, per_hour },
            args.country.unwrap_or(Country::UNKNOWN),
        );
        p.ip_kind = args.ip_kind;
        p.offer_lifetime = Duration::from_secs(args.offer_lifetime);
        config.provide = Some(p);
    }
    config.accept_hubs = args.accept_hub.clone();
    config.content.quota = args.content_quota;
    config.content.sync_every = Duration::from_secs(args.content_sync);
    config.content.scrub_every = Duration::from_secs(args.content_scrub * 3600);
    if args.hub {
        config.hub = Some(HubConfig {
            faucet: args.faucet,
            fee: args.hub_fee.unwrap_or(warren_node::FeeBps::DEFAULT),
        });
        if config.provide.is_none() {
            // A hub that sells no bandwidth still announces itself, where it says it is.
            let mut p = ProvideConfig::hub_only(args.country.unwrap_or(Country::UNKNOWN));
            p.offer_lifetime = Duration::from_secs(args.offer_lifetime);
            config.provide = Some(p);
        }
    }
    let handle = NodeHandle::spawn(config).await?;
    eprintln!(
        "warren node {} is running; local API on http://{}",
        handle.node_id(),
        cli.api
    );
    for a in handle.dial_addrs() {
        eprintln!("  reachable at {a}");
    }
    if let Some(a) = handle.socks_addr() {
        eprintln!("  SOCKS5 proxy on {a}");
    }
    if let Some(a) = handle.http_proxy_addr() {
        eprintln!("  HTTP proxy on {a}");
    }
    if let Some(h) = handle.hub_info() {
        eprintln!(
            "  payment hub: fee {} %, faucet {}",
            warren_node::hub::percent(h.fee_bps),
            if h.faucet { "on" } else { "off" }
        );
    }
    eprintln!("stop it with Ctrl-C or SIGTERM");
    wait_for_signal().await?;
    eprintln!("stopping…");
    handle.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

struct OffersFilter {
    country: Option<Country>,
    max_gib: Option<Amount>,
    max_hour: Option<Amount>,
    service: Option<Service>,
}

async fn offers(cli: &Cli, filter: OffersFilter, json: bool) -> Result<()> {
    let mut query = Vec::new();
    if let Some(c) = filter.country {
        query.push(("country", c.to_string()));
    }
    if let Some(m) = filter.max_gib {
        query.push(("max_price_per_gib", m.nano().to_string()));
    }
    if let Some(m) = filter.max_hour {
        query.push(("max_price_per_hour", m.nano().to_string()));
    }
    if let Some(s) = &filter.service {
        query.push(("service", s.as_str().to_string()));
    }
    let offers: Vec<OfferView> = client(cli)?.get("/api/v1/offers", &query).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&offers)?);
        return Ok(());
    }
    if offers.is_empty() {
        println!("No offers match (yet). Offers arrive within seconds of joining the network.");
        return Ok(());
    }
    println!(
        "{:<54} {:<7} {:>14} {:>14} {:<12} SERVICES",
        "PROVIDER", "COUNTRY", "WRN/GiB", "WRN/HOUR", "IP"
    );
    for o in &offers {
        let services: Vec<&str> = o.services.iter().map(|s| s.as_str()).collect();
        println!(
            "{:<54} {:<7} {:>14} {:>14} {:<12} {}",
            o.provider.to_string(),
            o.country.to_string(),
            o.price_per_gib.to_string(),
            o.price_per_hour.to_string(),
            format!("{:?}", o.ip_kind).to_lowercase(),
            services.join(",")
        );
    }
    Ok(())
}

async fn status(cli: &Cli, json: bool) -> Result<()> {
    let s: Status = client(cli)?.get("/api/v1/status", &[]).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("node       {}", s.node_id);
    println!("version    {}", s.version);
    println!("peers      {}", s.peers);
    println!("reachable  {:?}", s.reachability);
    println!("offers     {} in the catalog", s.offers);
    for a in &s.listen_addrs {
        println!("listening  {a}");
    }
    if let Some(a) = &s.socks {
        println!("socks5     {a}");
    }
    if let Some(a) = &s.http_proxy {
        println!("http proxy {a}");
    }
    match &s.provider {
        Some(p) => println!(
            "selling    in {} at {} WRN/GiB and {} WRN/hour",
            p.country, p.price_per_gib, p.price_per_hour
        ),
        None => println!("selling    no (start the node with --provide to sell bandwidth)"),
    }
    match &s.session {
        Some(v) => print_session(v),
        None => println!("session    none (`warren connect` opens one)"),
    }
    if s.serving > 0 {
        println!("serving    {} session(s)", s.serving);
    }
    if let Some(h) = &s.hub {
        println!(
            "hub        yes, fee {} %, faucet {}",
            warren_node::hub::percent(h.fee_bps),
            if h.faucet { "on" } else { "off" }
        );
    }
    println!("uptime     {} s", s.uptime_secs);
    Ok(())
}

fn print_session(v: &SessionView) {
    println!(
        "session    {} with {} ({}) at {} WRN/GiB and {} WRN/hour",
        v.state, v.provider, v.country, v.price_per_gib, v.price_per_hour
    );
    println!(
        "           {} up, {} down, {} s, spent {} WRN, promised {} WRN{}",
        human_bytes(v.bytes_up),
        human_bytes(v.bytes_down),
        v.duration_secs,
        v.spent,
        v.promised,
        if v.failovers > 0 {
            format!(", {} failover(s)", v.failovers)
        } else {
            String::new()
        }
    );
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

async fn connect(cli: &Cli, req: ConnectRequest, json: bool) -> Result<()> {
    let client = client(cli)?;
    let v: SessionView = client.post("/api/v1/session", &req).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "Connected to {} ({}) at {} WRN/GiB and {} WRN/hour.",
            v.provider, v.country, v.price_per_gib, v.price_per_hour
        );
        let status: Status = client.get("/api/v1/status", &[]).await?;
        match (&status.socks, &status.http_proxy) {
            (None, None) => println!(
                "This node runs no proxy: restart it with --socks ADDR or --http-proxy ADDR."
            ),
            (socks, http) => {
                if let Some(a) = socks {
                    println!("Point applications at the SOCKS5 proxy on {a}.");
                }
                if let Some(a) = http {
                    println!("Or at the HTTP proxy on {a}.");
                }
            }
        }
    }
    Ok(())
}

async fn disconnect(cli: &Cli, json: bool) -> Result<()> {
    let d: Disconnected = client(cli)?.delete("/api/v1/session").await?;
    if json {
        println!("{}", serde_json::to_string(&d)?);
    } else if d.closed {
        println!("Disconnected.");
    } else {
        println!("There was no session to close.");
    }
    Ok(())
}

fn print_wallet(w: &WalletView) {
    match w.hub {
        Some(h) => println!("hub               {h}"),
        None => println!(
            "hub               none known yet (hubs announce themselves; `warren offers --service hub`)"
        ),
    }
    println!("balance           {} WRN", w.balance);
    println!("escrow            {} WRN", w.escrow);
    println!("earned, unsettled {} WRN", w.earned_unsettled);
    println!("earned, settled   {} WRN", w.earned_settled);
    if w.pending_promises > 0 {
        println!(
            "                  {} promise(s) to settle: `warren wallet settle`",
            w.pending_promises
        );
    }
}

async fn wallet(cli: &Cli, json: bool) -> Result<()> {
    let w: WalletView = client(cli)?.get("/api/v1/wallet", &[]).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&w)?);
    } else {
        print_wallet(&w);
    }
    Ok(())
}

async fn topup(cli: &Cli, amount: Amount, hub: Option<NodeId>, json: bool) -> Result<()> {
    let w: WalletView = client(cli)?
        .post("/api/v1/wallet/topup", &TopupRequest { amount, hub })
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&w)?);
    } else {
        let at = w.hub.map(|h| h.to_string()).unwrap_or_default();
        println!("Topped up {amount} WRN at hub {at}; it is in escrow for sessions.");
        println!();
        print_wallet(&w);
    }
    Ok(())
}

async fn settle(cli: &Cli, json: bool) -> Result<()> {
    let r: SettleReport = client(cli)?
        .post("/api/v1/wallet/settle", &serde_json::json!({}))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else if r.promises == 0 && r.errors.is_empty() {
        println!("Nothing to settle: this node holds no unsettled promises.");
    } else {
        println!(
            "Settled {} of {} promise(s): {} WRN earned (after {} WRN in hub fees).",
            r.paid_promises, r.promises, r.earned, r.fees
        );
        if r.pending_promises > 0 {
            println!(
                "{} promise(s) worth {} WRN still wait for settlement.",
                r.pending_promises, r.earned_unsettled
            );
        }
    }
    if !r.errors.is_empty() {
        for e in &r.errors {
            eprintln!("  {e}");
        }
        bail!(
            "{} problem(s) while settling; promises that were not paid are kept: run `warren wallet settle` again later",
            r.errors.len()
        );
    }
    Ok(())
}

async fn history(cli: &Cli, limit: u32, json: bool) -> Result<()> {
    let entries: Vec<HistoryView> = client(cli)?
        .get("/api/v1/wallet/history", &[("limit", limit.to_string())])
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("No movements yet (or no payment hub known).");
        return Ok(());
    }
    println!(
        "{:<12} {:<14} {:>16} {:>12}  {:<10} MEMO",
        "WHEN (UNIX)", "KIND", "WRN", "FEE", "WITH"
    );
    for e in &entries {
        println!(
            "{:<12} {:<14} {:>16} {:>12}  {:<10} {}",
            e.at,
            e.kind,
            e.amount.to_string(),
            e.fee.to_string(),
            e.counterparty.map(|c| c.short()).unwrap_or_default(),
            e.memo
        );
    }
    Ok(())
}

async fn testnet(cli: &Cli, providers: usize, socks: SocketAddr) -> Result<()> {
    let net = Testnet::start(providers, cli.api, Some(socks)).await?;
    let api = net.consumer.api_addr().unwrap_or(cli.api);
    // The CLI finds the consumer's API token where it looks for a node's: the data dir.
    let token_at = data_dir(cli).and_then(|dir| {
        net.consumer
            .api_token()
            .write_to(&dir)
            .with_context(|| format!("writing the API token to {}", dir.display()))
    });
    let proxies = warren_node::OfferFilter {
        service: Some(Service::proxy()),
        ..Default::default()
    };
    let everyone = net
        .consumer
        .wait_for_catalog(Duration::from_secs(15), |c| {
            c.list(&proxies).len() >= providers
        })
        .await;
    println!(
        "Warren testnet is up: {providers} providers, a payment hub and a consumer, all on loopback."
    );
    println!();
    println!("Open the dashboard: http://{api}/");
    if !everyone {
        println!("(the consumer has not seen every offer yet; they are still arriving)");
    }
    println!();
    let fee = net
        .hub
        .hub_info()
        .map_or_else(String::new, |h| warren_node::hub::percent(h.fee_bps));
    println!(
        "Payment hub {} (faucet on, fee {fee} %); the consumer's wallet: {} WRN in escrow.",
        net.hub.node_id().short(),
        net.wallet.escrow
    );
    println!();
    println!("Providers' own dashboards:");
    for p in &net.providers {
        if let (Some(addr), Some(offer)) = (p.api_addr(), p.own_offer()) {
            println!(
                "  {}  {}  http://{addr}/#provider",
                offer.country,
                p.node_id().short()
            );
        }
    }
    println!();
    println!("Offers the consumer sees:");
    for o in net.consumer.offers(&proxies) {
        println!(
            "  {}  {}  {:>6} WRN/GiB  {:>6} WRN/hour  {}",
            o.provider.short(),
            o.country,
            o.price.per_gib.to_string(),
            o.price.per_hour.to_string(),
            format!("{:?}", o.ip_kind).to_lowercase()
        );
    }
    println!();
    println!("Try, in another terminal:");
    println!("  warren --api {api} offers");
    if let Some(socks) = net.consumer.socks_addr() {
        println!("  warren --api {api} connect --country DE");
        println!(
            "  curl --socks5-hostname {socks} http://{api}/api/v1/status   # through a provider"
        );
        println!("  warren --api {api} disconnect");
    }
    println!("  warren --api {api} offers --country DE --json");
    println!("  warren --api {api} status");
    println!("  warren --api {api} wallet");
    println!("  warren --api {api} wallet topup 5");
    println!("  curl http://{api}/api/v1/offers");
    println!("  curl http://{api}/api/v1/status");
    match token_at {
        Ok(path) => println!(
            "(calls that change something carry the API token from {}; the CLI reads it there)",
            path.display()
        ),
        Err(e) => println!("(no API token file, so the CLI can only read: {e:#})"),
    }
    println!();
    println!("Press Ctrl-C to stop.");
    wait_for_signal().await?;
    println!("stopping…");
    net.shutdown().await;
    Ok(())
}

fn absolute(path: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("{} is not a usable path", path.display()))
}

async fn publish(
    cli: &Cli,
    file: &std::path::Path,
    channel: String,
    title: Option<String>,
    media_type: Option<String>,
    json: bool,
) -> Result<()> {
    if !file.is_file() {
        bail!("{} is not a file", file.display());
    }
    let req = PublishRequest {
        path: absolute(file)?.to_string_lossy().into_owned(),
        channel: Some(channel),
        title,
        media_type,
    };
    let p: Published = client(cli)?.post("/api/v1/content", &req).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        println!("{}", p.id);
        eprintln!(
            "published as entry #{} of channel {:?} ({}), {}",
            p.seq,
            p.name,
            p.channel,
            human_bytes(p.size)
        );
        eprintln!("others can follow it with: warren follow {}", p.channel);
    }
    Ok(())
}

async fn channels(cli: &Cli, json: bool) -> Result<()> {
    let list: Vec<ChannelView> = client(cli)?.get("/api/v1/channels", &[]).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!(
            "no channels yet: `warren publish FILE` makes one, `warren follow ID` follows one"
        );
        return Ok(());
    }
    println!(
        "{:<52}  {:<16}  {:>7}  {:<9}  LATEST",
        "CHANNEL", "NAME", "ENTRIES", "ROLE"
    );
    for c in list {
        let role = match (c.own, c.following) {
            (true, _) => "publisher",
            (false, true) => "follower",
            (false, false) => "held",
        };
        let latest = c.latest.map(|e| e.title).unwrap_or_default();
        println!(
            "{:<52}  {:<16}  {:>7}  {:<9}  {}",
            c.id, c.name, c.entries, role, latest
        );
    }
    Ok(())
}

async fn follow(cli: &Cli, channel: NodeId, json: bool) -> Result<()> {
    let view: ChannelView = client(cli)?
        .post(&format!("/api/v1/channels/{channel}/follow"), &())
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        println!(
            "following {channel}: {} entries held so far; replication goes on in the node",
            view.entries
        );
    }
    Ok(())
}

/// Asks the node to fetch `id` from peers, shows progress, then writes the verified bytes
/// and hashes them once more on the way out.
async fn get(cli: &Cli, id: ContentId, output: Option<PathBuf>) -> Result<()> {
    use std::io::{IsTerminal, Write};

    let api = client(cli)?;
    let status: ContentStatus = api
        .post(&format!("/api/v1/content/{id}/fetch"), &())
        .await?;
    let bar = if std::io::stderr().is_terminal() && !status.complete {
        let bar = indicatif::ProgressBar::new(status.size.unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bar:30} {bytes_per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let mut last_have = 0;
    let mut stalled_since = std::time::Instant::now();
    loop {
        let s: ContentStatus = api.get(&format!("/api/v1/content/{id}"), &[]).await?;
        if let Some(bar) = &bar {
            if let Some(size) = s.size {
                bar.set_length(size);
            }
            bar.set_position(s.have);
            if let Some(f) = &s.fetch {
                bar.set_message(format!("from {} peers", f.sources));
            }
        }
        if s.complete {
            break;
        }
        if let Some(f) = &s.fetch
            && f.state == "failed"
        {
            if let Some(bar) = &bar {
                bar.abandon();
            }
            bail!(
                "could not fetch {id}: {}",
                f.error.clone().unwrap_or_else(|| "unknown error".into())
            );
        }
        if s.have > last_have {
            last_have = s.have;
            stalled_since = std::time::Instant::now();
        } else if stalled_since.elapsed() > Duration::from_secs(300) {
            bail!(
                "fetching {id} made no progress for 5 minutes; what was fetched is kept, run the command again to resume"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }

    let to_stdout = output.is_none() && !std::io::stdout().is_terminal();
    let path = match output {
        Some(p) => Some(p),
        None if to_stdout => None,
        None => Some(PathBuf::from(id.to_string())),
    };
    let mut response = api.stream(&format!("/content/{id}")).await?;
    let mut hasher = blake3::Hasher::new();
    let tmp = path.as_ref().map(|p| {
        let mut t = p.clone().into_os_string();
        t.push(".part");
        PathBuf::from(t)
    });
    let mut sink: Box<dyn Write> = match &tmp {
        Some(t) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(t).with_context(|| format!("cannot write {}", t.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut written = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("reading {id} from the node"))?
    {
        hasher.update(&chunk);
        sink.write_all(&chunk).context("writing the output")?;
        written += chunk.len() as u64;
    }
    sink.flush().context("writing the output")?;
    drop(sink);
    if ContentId(*hasher.finalize().as_bytes()) != id {
        if let Some(t) = &tmp {
            let _ = std::fs::remove_file(t);
        }
        bail!("what the node sent does not hash to {id}; nothing was kept");
    }
    if let (Some(t), Some(p)) = (&tmp, &path) {
        std::fs::rename(t, p).with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!(
            "{} verified, written to {}",
            human_bytes(written),
            p.display()
        );
    }
    Ok(())
}

async fn export(cli: &Cli, channel: &str, dir: &std::path::Path, json: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let req = DirRequest {
        dir: absolute(dir)?.to_string_lossy().into_owned(),
    };
    let r: ExportReport = client(cli)?
        .post(&format!("/api/v1/channels/{channel}/export"), &req)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "exported channel {}: {} entries, {} blobs into {}{}",
            r.channel,
            r.entries,
            r.blobs,
            dir.display(),
            if r.missing > 0 {
                format!(" ({} blobs not held here were left out)", r.missing)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

async fn import(cli: &Cli, dir: &std::path::Path, json: bool) -> Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let req = DirRequest {
        dir: absolute(dir)?.to_string_lossy().into_owned(),
    };
    let r: ImportReport = client(cli)?.post("/api/v1/import", &req).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for c in &r.channels {
            println!(
                "imported channel {}: {} entries ({} new), verified",
                c.id, c.entries, c.new_entries
            );
        }
        println!("{} blobs taken in, each checked against its id", r.blobs);
    }
    Ok(())
}
