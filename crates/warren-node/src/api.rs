//! The local REST API under `/api/v1/`, and the JSON shapes it answers with (the CLI reads
//! the same types). Amounts are integers of nano-WRN; ids are node id strings.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use warren_net::Reachability;
use warren_types::{Amount, Country, IpKind, NodeId, Offer, Service};

use crate::Shared;
use crate::catalog::OfferFilter;
use crate::content::api as content;
use crate::session::consumer::{ConnectError, ConnectRequest, SessionView};
use crate::session::provider::ServedView;
use crate::wallet::{DEFAULT_HISTORY, HistoryView, SettleReport, WalletError, WalletView};

/// An offer as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OfferView {
    #[schema(value_type = String)]
    pub provider: NodeId,
    #[schema(value_type = String)]
    pub country: Country,
    /// nano-WRN per GiB of payload, both directions together.
    #[schema(value_type = u64)]
    pub price_per_gib: Amount,
    /// nano-WRN per hour, pro-rated per second.
    #[schema(value_type = u64)]
    pub price_per_hour: Amount,
    #[schema(value_type = Vec<String>)]
    pub services: Vec<Service>,
    #[schema(value_type = String)]
    pub ip_kind: IpKind,
    pub addrs: Vec<String>,
    pub seq: u64,
    pub issued_at: u64,
    pub expires_at: u64,
}

impl From<&Offer> for OfferView {
    fn from(o: &Offer) -> Self {
        Self {
            provider: o.provider,
            country: o.country,
            price_per_gib: o.price.per_gib,
            price_per_hour: o.price.per_hour,
            services: o.services.clone(),
            ip_kind: o.ip_kind,
            addrs: o.addrs.clone(),
            seq: o.seq,
            issued_at: o.issued_at,
            expires_at: o.expires_at,
        }
    }
}

/// What this node sells, when it provides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderView {
    #[schema(value_type = String)]
    pub country: Country,
    #[schema(value_type = u64)]
    pub price_per_gib: Amount,
    #[schema(value_type = u64)]
    pub price_per_hour: Amount,
    #[schema(value_type = String)]
    pub ip_kind: IpKind,
    /// When the offer now in the market expires (it is refreshed before that).
    pub offer_expires_at: Option<u64>,
}

/// `GET /api/v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    #[schema(value_type = String)]
    pub node_id: NodeId,
    pub version: String,
    pub listen_addrs: Vec<String>,
    /// Peers connected now.
    pub peers: usize,
    #[schema(value_type = String)]
    pub reachability: Reachability,
    /// Offers in this node's catalog.
    pub offers: usize,
    pub provider: Option<ProviderView>,
    /// The consumer session; null while none is open.
    pub session: Option<SessionView>,
    /// Sessions this node serves as a provider.
    pub serving: usize,
    /// Where this node's SOCKS5 proxy listens; null when it runs none.
    pub socks: Option<String>,
    /// Where this node's HTTP proxy listens; null when it runs none.
    pub http_proxy: Option<String>,
    /// The payment hub this node runs; null unless started with --hub.
    #[serde(default)]
    pub hub: Option<HubView>,
    pub uptime_secs: u64,
}

/// This node's own payment hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HubView {
    /// Its fee in basis points (100 = 1 %).
    pub fee_bps: u16,
    pub faucet: bool,
}

/// `PUT /api/v1/provider`: start selling, or change what is sold. Omitted fields keep what
/// the node sells now (a node that never sold needs `country`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SellRequest {
    /// nano-WRN per GiB.
    #[schema(value_type = u64)]
    pub price_per_gib: Amount,
    /// nano-WRN per hour.
    #[schema(value_type = u64)]
    pub price_per_hour: Amount,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub country: Option<Country>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub ip_kind: Option<IpKind>,
}

/// `DELETE /api/v1/provider`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stopped {
    /// Whether the node was selling before.
    pub was_selling: bool,
}

/// One `[[exit.rule]]` of the config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleView {
    /// "allow" or "deny".
    pub action: String,
    pub cidr: Option<String>,
    pub domain_suffix: Option<String>,
    pub ports: Option<String>,
}

/// `GET /api/v1/provider/policy`: what the exit lets through, in the order it decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyView {
    /// The config file's rules, first match wins.
    pub rules: Vec<RuleView>,
    /// Networks `--exit-allow` lets through despite the default denials.
    pub allow: Vec<String>,
    /// What is denied unless a rule or `--exit-allow` says otherwise.
    pub default_deny: Vec<String>,
    pub max_sessions: usize,
    pub max_flows_per_session: usize,
    /// null: unlimited.
    pub max_bytes_per_session: Option<u64>,
}

impl PolicyView {
    pub(crate) fn of(
        exit: &crate::config::ExitConfig,
        caps: &warren_tunnel::exit::ExitCaps,
    ) -> Self {
        let rules = exit
            .rules
            .rules
            .iter()
            .map(|r| RuleView {
                action: serde_json::to_value(r.action)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                cidr: r.cidr.clone(),
                domain_suffix: r.domain_suffix.clone(),
                ports: r.ports.clone(),
            })
            .collect();
        PolicyView {
            rules,
            allow: exit.allow.iter().map(|n| n.to_string()).collect(),
            default_deny: [
                "loopback",
                "private networks (RFC 1918)",
                "carrier-grade NAT (100.64.0.0/10)",
                "link-local",
                "multicast and broadcast",
                "unspecified addresses",
                "unique-local and site-local IPv6",
                "this host's own addresses",
                "SMTP ports (25, 465, 587)",
            ]
            .into_iter()
            .map(str::to_string)
            .collect(),
            max_sessions: caps.max_sessions,
            max_flows_per_session: caps.max_flows_per_session,
            max_bytes_per_session: caps.max_bytes_per_session,
        }
    }
}

/// `POST /api/v1/wallet/topup`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopupRequest {
    /// nano-WRN.
    #[schema(value_type = u64)]
    pub amount: Amount,
    /// The hub to top up at; default the hub in use (see `GET /api/v1/wallet`).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub hub: Option<NodeId>,
}

/// The body of every error answer: a machine-readable kind and a message for people.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub kind: String,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: String) -> Self {
        Self {
            status,
            kind,
            message,
        }
    }

    fn bad_request(message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "bad_request",
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// The API's routes behind the [`guard`](crate::api_guard): Host and Origin checks on
/// every request, the token on every state-changing one.
pub(crate) fn router(shared: Arc<Shared>, guard: Arc<crate::api_guard::Guard>) -> Router {
    routes(shared).layer(axum::middleware::from_fn_with_state(
        guard,
        crate::api_guard::guard,
    ))
}

/// Every (method, path) the router serves, in the order they are registered: the one list
/// the router is built from, and what the OpenAPI test holds the document to.
pub fn route_list() -> Vec<(&'static str, &'static str)> {
    routes_with_list(None).1
}

fn routes(shared: Arc<Shared>) -> Router {
    routes_with_list(Some(shared)).0
}

/// Builds the router (when given the state) and the list of its routes from one table.
fn routes_with_list(shared: Option<Arc<Shared>>) -> (Router, Vec<(&'static str, &'static str)>) {
    use axum::routing::{MethodRouter, delete, put};
    type Handler = MethodRouter<Arc<Shared>>;
    let table: Vec<(&'static str, &'static str, Handler)> = vec![
        ("get", "/api/v1/status", get(get_status)),
        ("get", "/api/v1/offers", get(get_offers)),
        ("get", "/api/v1/session", get(get_session)),
        ("post", "/api/v1/session", post(post_session)),
        ("delete", "/api/v1/session", delete(delete_session)),
        ("get", "/api/v1/provider/sessions", get(get_served)),
        ("put", "/api/v1/provider", put(put_provider)),
        ("delete", "/api/v1/provider", delete(delete_provider)),
        ("get", "/api/v1/provider/policy", get(get_policy)),
        ("get", "/api/v1/wallet", get(get_wallet)),
        ("post", "/api/v1/wallet/topup", post(post_topup)),
        ("post", "/api/v1/wallet/settle", post(post_settle)),
        ("get", "/api/v1/wallet/history", get(get_history)),
        ("get", "/api/v1/events", get(get_events)),
        ("post", "/api/v1/content", post(content::post_content)),
        (
            "get",
            "/api/v1/content/{id}",
            get(content::get_content_status),
        ),
        (
            "post",
            "/api/v1/content/{id}/fetch",
            post(content::post_fetch),
        ),
        ("get", "/api/v1/channels", get(content::get_channels)),
        ("get", "/api/v1/channels/{id}", get(content::get_channel)),
        (
            "post",
            "/api/v1/channels/{id}/follow",
            post(content::post_follow),
        ),
        (
            "delete",
            "/api/v1/channels/{id}/follow",
            delete(content::delete_follow),
        ),
        (
            "post",
            "/api/v1/channels/{id}/export",
            post(content::post_export),
        ),
        ("post", "/api/v1/import", post(content::post_import)),
        ("get", "/content/{id}", get(content::get_gateway)),
        ("get", "/api/v1/openapi.json", get(get_openapi)),
        ("get", "/metrics", get(get_metrics)),
        ("get", "/", get(get_dashboard)),
        ("get", "/dashboard/app.js", get(get_dashboard_js)),
        ("get", "/dashboard/style.css", get(get_dashboard_css)),
    ];
    let list = table.iter().map(|(m, p, _)| (*m, *p)).collect();
    let mut router: Router<Arc<Shared>> = Router::new();
    for (_, path, handler) in table {
        router = router.route(path, handler);
    }
    let router = router.fallback(not_found);
    let router = match shared {
        Some(s) => router.with_state(s),
        None => Router::new(),
    };
    (router, list)
}

/// The OpenAPI 3 document of this API, generated from the handlers and types.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "Warren local API", description = "The node's local API: the CLI and the dashboard use nothing else. Amounts are integers of nano-WRN (1 WRN = 10^9); ids are node id strings. Calls other than GET need the token from api.token in the node's data directory."),
    paths(
        get_status, get_offers, get_session, post_session, delete_session, get_served,
        put_provider, delete_provider, get_policy,
        get_wallet, post_topup, post_settle, get_history, get_events, get_openapi, get_metrics,
        content::post_content, content::get_content_status, content::post_fetch,
        content::get_channels, content::get_channel, content::post_follow, content::delete_follow,
        content::post_export, content::post_import, content::get_gateway,
        get_dashboard, get_dashboard_js, get_dashboard_css
    ),
    components(schemas(ErrorBody, ErrorDetail, crate::telemetry::Event)),
    modifiers(&TokenScheme)
)]
pub struct ApiDoc;

struct TokenScheme;

impl utoipa::Modify for TokenScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The dashboard's files, embedded: it works with no network beyond the node.
const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/app.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/style.css");

/// `GET /`: the dashboard, carrying the API token (only pages of this origin can read it,
/// and the guard turns away other origins and hosts).
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, description = "The web dashboard", content_type = "text/html")))]
async fn get_dashboard(State(shared): State<Arc<Shared>>) -> Response {
    let page = DASHBOARD_HTML.replace("{{WARREN_TOKEN}}", shared.api_token.as_str());
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'",
            ),
        ],
        page,
    )
        .into_response()
}

#[utoipa::path(get, path = "/dashboard/app.js", tag = "dashboard",
    responses((status = 200, description = "The dashboard's script", content_type = "text/javascript")))]
async fn get_dashboard_js() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        DASHBOARD_JS,
    )
        .into_response()
}

#[utoipa::path(get, path = "/dashboard/style.css", tag = "dashboard",
    responses((status = 200, description = "The dashboard's style sheet", content_type = "text/css")))]
async fn get_dashboard_css() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/css; charset=utf-8")],
        DASHBOARD_CSS,
    )
        .into_response()
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json")))]
async fn get_openapi() -> Response {
    use utoipa::OpenApi;
    Json(ApiDoc::openapi()).into_response()
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "not_found",
        message: "no such endpoint; /api/v1/openapi.json lists them all".into(),
    }
}

pub(crate) fn status(shared: &Shared) -> Status {
    let net = shared.net.state();
    let provider = shared
        .provide
        .borrow()
        .as_ref()
        .filter(|p| p.sells_proxy())
        .map(|p| ProviderView {
            country: p.country,
            price_per_gib: p.price.per_gib,
            price_per_hour: p.price.per_hour,
            ip_kind: p.ip_kind,
            offer_expires_at: shared.own_offer.borrow().as_ref().map(|o| o.expires_at),
        });
    Status {
        node_id: shared.net.local_id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        listen_addrs: net.listen_addrs,
        peers: net.connected.len(),
        reachability: net.reachability,
        offers: shared.market.len(),
        provider,
        session: shared.consumer.view(),
        serving: shared.provider.sessions().len(),
        socks: shared.socks_addr.map(|a| a.to_string()),
        http_proxy: shared.http_proxy_addr.map(|a| a.to_string()),
        hub: shared.hub.as_ref().map(|h| {
            let info = h.info();
            HubView {
                fee_bps: info.fee_bps,
                faucet: info.faucet,
            }
        }),
        uptime_secs: shared.started.elapsed().as_secs(),
    }
}

#[utoipa::path(get, path = "/api/v1/status", tag = "node",
    responses((status = 200, body = Status), (status = 403, body = ErrorBody, description = "Foreign Host or Origin")))]
async fn get_status(State(shared): State<Arc<Shared>>) -> Json<Status> {
    Json(status(&shared))
}

/// Parses the offer filters, naming the parameter that is wrong.
fn parse_filter(q: &HashMap<String, String>) -> Result<OfferFilter, ApiError> {
    let mut f = OfferFilter::default();
    for (key, value) in q {
        let nano = || {
            value.parse::<u64>().map(Amount::from_nano).map_err(|_| {
                ApiError::bad_request(format!(
                    "{key}={value:?} is not an integer number of nano-WRN"
                ))
            })
        };
        match key.as_str() {
            "country" => {
                f.country = Some(value.parse().map_err(
                    |e: warren_types::offer::CountryError| ApiError::bad_request(e.to_string()),
                )?);
            }
            "max_price_per_gib" => f.max_price_per_gib = Some(nano()?),
            "max_price_per_hour" => f.max_price_per_hour = Some(nano()?),
            "service" => {
                f.service = Some(Service::new(value).map_err(|_| {
                    ApiError::bad_request(format!("service={value:?} is not a service name"))
                })?);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown filter {other:?}; use country, max_price_per_gib, max_price_per_hour or service"
                )));
            }
        }
    }
    Ok(f)
}

#[utoipa::path(get, path = "/api/v1/offers", tag = "consumer",
    params(
        ("country" = Option<String>, Query, description = "ISO 3166 alpha-2 code"),
        ("max_price_per_gib" = Option<u64>, Query, description = "nano-WRN"),
        ("max_price_per_hour" = Option<u64>, Query, description = "nano-WRN"),
        ("service" = Option<String>, Query, description = "proxy (default), hub"),
    ),
    responses((status = 200, body = Vec<OfferView>), (status = 400, body = ErrorBody, description = "A filter is malformed or unknown")))]
async fn get_offers(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<OfferView>>, ApiError> {
    let filter = parse_filter(&q)?;
    Ok(Json(
        shared
            .market
            .list(&filter)
            .iter()
            .map(OfferView::from)
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/session", tag = "consumer",
    responses((status = 200, body = Option<SessionView>, description = "The session, or null")))]
async fn get_session(State(shared): State<Arc<Shared>>) -> Json<Option<SessionView>> {
    Json(shared.consumer.view())
}

/// `POST /api/v1/session`: body is a [`ConnectRequest`] (every field optional; an empty body
/// means any provider). Answers the opened session.
#[utoipa::path(post, path = "/api/v1/session", tag = "consumer", security(("token" = [])),
    request_body(content = ConnectRequest, description = "Every field optional; an empty body means any provider"),
    responses(
        (status = 200, body = SessionView),
        (status = 400, body = ErrorBody, description = "Malformed request"),
        (status = 401, body = ErrorBody, description = "Missing or wrong token"),
        (status = 404, body = ErrorBody, description = "No offer matches (kind no_offers)"),
        (status = 502, body = ErrorBody, description = "No provider accepted (kind providers_failed)"),
        (status = 503, body = ErrorBody, description = "Shutting down")))]
async fn post_session(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<SessionView>, ApiError> {
    let req: ConnectRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ConnectRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("bad connect request: {e}")))?
    };
    shared.consumer.connect(req).await.map(Json).map_err(|e| {
        let (status, kind) = match e {
            ConnectError::NoOffers(_) => (StatusCode::NOT_FOUND, "no_offers"),
            ConnectError::AllFailed(_) => (StatusCode::BAD_GATEWAY, "providers_failed"),
            ConnectError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        };
        ApiError {
            status,
            kind,
            message: e.to_string(),
        }
    })
}

/// Whether `DELETE /api/v1/session` closed a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Disconnected {
    pub closed: bool,
}

#[utoipa::path(delete, path = "/api/v1/session", tag = "consumer", security(("token" = [])),
    responses((status = 200, body = Disconnected), (status = 401, body = ErrorBody)))]
async fn delete_session(State(shared): State<Arc<Shared>>) -> Json<Disconnected> {
    Json(Disconnected {
        closed: shared.consumer.disconnect().await,
    })
}

#[utoipa::path(get, path = "/api/v1/provider/sessions", tag = "provider",
    responses((status = 200, body = Vec<ServedView>)))]
async fn get_served(State(shared): State<Arc<Shared>>) -> Json<Vec<ServedView>> {
    Json(shared.provider.sessions())
}

#[utoipa::path(put, path = "/api/v1/provider", tag = "provider", security(("token" = [])),
    request_body = SellRequest,
    responses(
        (status = 200, body = ProviderView, description = "What the node sells now"),
        (status = 400, body = ErrorBody, description = "Malformed request, or no country for a first offer"),
        (status = 401, body = ErrorBody)))]
async fn put_provider(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<ProviderView>, ApiError> {
    let req: SellRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "bad provider request ({e}); send {{\"price_per_gib\": <nano-WRN>, \"price_per_hour\": <nano-WRN>, \"country\": \"DE\"}}"
        ))
    })?;
    let before = shared.provide.borrow().clone().filter(|p| p.sells_proxy());
    let country = req
        .country
        .or(before.as_ref().map(|p| p.country))
        .ok_or_else(|| {
            ApiError::bad_request(
                "name the country this node sells from (\"country\": \"DE\")".into(),
            )
        })?;
    let price = warren_types::Price {
        per_gib: req.price_per_gib,
        per_hour: req.price_per_hour,
    };
    let mut provide = crate::ProvideConfig::new(price, country);
    if let Some(before) = &before {
        provide.ip_kind = before.ip_kind;
        provide.offer_lifetime = before.offer_lifetime;
    }
    if let Some(kind) = req.ip_kind {
        provide.ip_kind = kind;
    }
    crate::announce(&shared, Some(provide))
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    status(&shared).provider.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the offer did not start".into(),
        )
    })
}

#[utoipa::path(delete, path = "/api/v1/provider", tag = "provider", security(("token" = [])),
    responses((status = 200, body = Stopped), (status = 401, body = ErrorBody)))]
async fn delete_provider(State(shared): State<Arc<Shared>>) -> Json<Stopped> {
    let was_selling = shared
        .provide
        .borrow()
        .as_ref()
        .is_some_and(|p| p.sells_proxy());
    crate::stop_providing(&shared).await;
    Json(Stopped { was_selling })
}

#[utoipa::path(get, path = "/api/v1/provider/policy", tag = "provider",
    responses((status = 200, body = PolicyView)))]
async fn get_policy(State(shared): State<Arc<Shared>>) -> Json<PolicyView> {
    Json(shared.exit_policy.clone())
}

impl From<WalletError> for ApiError {
    fn from(e: WalletError) -> Self {
        use warren_pay::rpc::RpcErrorKind;
        let (status, kind) = match &e {
            WalletError::NoHub => (StatusCode::CONFLICT, "no_hub"),
            WalletError::ZeroAmount | WalletError::BadPromise(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            WalletError::Call(_) => (StatusCode::BAD_GATEWAY, "hub_unreachable"),
            WalletError::Unexpected { .. } => (StatusCode::BAD_GATEWAY, "hub_protocol"),
            WalletError::Refused { error, .. } => (
                match error.kind {
                    RpcErrorKind::BadRequest | RpcErrorKind::AmountTooLarge => {
                        StatusCode::BAD_REQUEST
                    }
                    RpcErrorKind::Internal => StatusCode::BAD_GATEWAY,
                    _ => StatusCode::CONFLICT,
                },
                error.kind.as_str(),
            ),
            WalletError::TooManyPending => (StatusCode::CONFLICT, "too_many_pending"),
            WalletError::Store { .. } | WalletError::Damaged { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "wallet_store")
            }
        };
        ApiError {
            status,
            kind,
            message: e.to_string(),
        }
    }
}

/// `GET /api/v1/wallet`: balances at the hub in use, and unsettled earnings.
#[utoipa::path(get, path = "/api/v1/wallet", tag = "wallet",
    responses((status = 200, body = WalletView), (status = 502, body = ErrorBody, description = "The hub did not answer")))]
async fn get_wallet(State(shared): State<Arc<Shared>>) -> Result<Json<WalletView>, ApiError> {
    Ok(Json(shared.wallet.view().await?))
}

/// `POST /api/v1/wallet/topup`: a faucet top-up, moved into escrow. Answers the wallet.
#[utoipa::path(post, path = "/api/v1/wallet/topup", tag = "wallet", security(("token" = [])),
    request_body = TopupRequest,
    responses(
        (status = 200, body = WalletView),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "No hub known, or the hub runs no faucet"),
        (status = 502, body = ErrorBody)))]
async fn post_topup(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<WalletView>, ApiError> {
    let req: TopupRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "bad top-up request ({e}); send {{\"amount\": <nano-WRN integer>, \"hub\": <optional node id>}}"
        ))
    })?;
    Ok(Json(shared.wallet.topup(req.amount, req.hub).await?))
}

/// `POST /api/v1/wallet/settle`: hands pending promises to their hubs.
#[utoipa::path(post, path = "/api/v1/wallet/settle", tag = "wallet", security(("token" = [])),
    responses((status = 200, body = SettleReport), (status = 401, body = ErrorBody)))]
async fn post_settle(State(shared): State<Arc<Shared>>) -> Result<Json<SettleReport>, ApiError> {
    Ok(Json(shared.wallet.settle().await?))
}

/// `GET /metrics`: Prometheus text format, `warren_` prefix.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format, warren_ prefix", content_type = "text/plain")))]
async fn get_metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = crate::telemetry::render(
        &shared.telemetry.counters,
        &crate::telemetry::gauges(&shared),
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /api/v1/events`: server-sent events, one per [`Event`](crate::telemetry::Event)
/// (`event:` its type, `data:` its JSON); a `lagged` event says how many a slow reader
/// missed. A comment every 15 s keeps idle connections open.
#[utoipa::path(get, path = "/api/v1/events", tag = "node",
    responses((status = 200, description = "Server-sent events: `event:` the type, `data:` an Event as JSON", content_type = "text/event-stream", body = crate::telemetry::Event)))]
async fn get_events(
    State(shared): State<Arc<Shared>>,
) -> axum::response::sse::Sse<
    impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event as Sse, KeepAlive};
    use futures::StreamExt;
    use tokio::sync::broadcast::error::RecvError;
    let rx = shared.telemetry.subscribe();
    let stopped = shared.telemetry.stopped();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let item = match rx.recv().await {
            Ok(ev) => {
                let json = serde_json::to_value(&ev).unwrap_or_default();
                let kind = json["type"].as_str().unwrap_or("event").to_string();
                Sse::default().event(kind).data(json.to_string())
            }
            Err(RecvError::Lagged(n)) => Sse::default()
                .event("lagged")
                .data(format!("{{\"type\":\"lagged\",\"missed\":{n}}}")),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(item), rx))
    })
    .take_until(stopped);
    axum::response::sse::Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
}

/// `GET /api/v1/wallet/history?limit=N` (default 50, at most 1000), newest first.
#[utoipa::path(get, path = "/api/v1/wallet/history", tag = "wallet",
    params(("limit" = Option<u32>, Query, description = "1 to 1000, default 50")),
    responses((status = 200, body = Vec<HistoryView>), (status = 400, body = ErrorBody)))]
async fn get_history(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<HistoryView>>, ApiError> {
    let mut limit = DEFAULT_HISTORY;
    for (key, value) in &q {
        match key.as_str() {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=warren_pay::rpc::MAX_HISTORY as usize).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit={value:?} is not a number from 1 to {}",
                            warren_pay::rpc::MAX_HISTORY
                        ))
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}; use limit"
                )));
            }
        }
    }
    Ok(Json(shared.wallet.history(limit).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filters_parse_and_errors_name_the_parameter() {
        let f = parse_filter(&q(&[("country", "de"), ("max_price_per_gib", "500")])).unwrap();
        assert_eq!(f.country.unwrap().as_str(), "DE");
        assert_eq!(f.max_price_per_gib, Some(Amount::from_nano(500)));
        let e = parse_filter(&q(&[("max_price_per_hour", "0.5")])).unwrap_err();
        assert!(e.message.contains("max_price_per_hour"), "{}", e.message);
        let e = parse_filter(&q(&[("country", "Germany")])).unwrap_err();
        assert!(e.message.contains("Germany"), "{}", e.message);
        let e = parse_filter(&q(&[("colour", "red")])).unwrap_err();
        assert!(e.message.contains("colour"), "{}", e.message);
    }

    #[test]
    fn wallet_errors_map_to_kinds_and_statuses() {
        use warren_pay::rpc::{RpcError, RpcErrorKind};
        let e = ApiError::from(WalletError::NoHub);
        assert_eq!((e.status, e.kind), (StatusCode::CONFLICT, "no_hub"));
        assert!(e.message.contains("--hub"), "{}", e.message);
        let refused = WalletError::Refused {
            hub: warren_types::Identity::generate().node_id(),
            what: "the top-up",
            error: RpcError::new(RpcErrorKind::FaucetOff, "this hub has no faucet"),
            hint: "",
        };
        let e = ApiError::from(refused);
        assert_eq!((e.status, e.kind), (StatusCode::CONFLICT, "faucet_off"));
        let e = ApiError::from(WalletError::ZeroAmount);
        assert_eq!((e.status, e.kind), (StatusCode::BAD_REQUEST, "bad_request"));
    }

    /// Every `$ref` in `v` names a schema in `components`.
    fn refs_resolve(v: &serde_json::Value, schemas: &serde_json::Map<String, serde_json::Value>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                    let name = r
                        .strip_prefix("#/components/schemas/")
                        .unwrap_or_else(|| panic!("unexpected $ref {r}"));
                    assert!(
                        schemas.contains_key(name),
                        "$ref to a missing schema {name}"
                    );
                }
                m.values().for_each(|x| refs_resolve(x, schemas));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs_resolve(x, schemas)),
            _ => {}
        }
    }

    #[test]
    fn the_openapi_document_is_valid_and_lists_every_route() {
        use utoipa::OpenApi;
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3."),
            "{}",
            doc["openapi"]
        );
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        let paths = doc["paths"].as_object().unwrap();
        let routes = route_list();
        // The router's routes, exactly: none undocumented, none documented but not served.
        let mut documented = Vec::new();
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                documented.push((method.clone(), path.clone()));
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.contains_key("200"), "{method} {path} has no 200");
                // Calls that change something say they need the token, with its error body.
                if method != "get" {
                    assert_eq!(
                        op["security"][0]["token"],
                        serde_json::json!([]),
                        "{method} {path}"
                    );
                    assert!(responses.contains_key("401"), "{method} {path} has no 401");
                }
            }
        }
        let mut served: Vec<(String, String)> = routes
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        documented.sort();
        assert_eq!(served, documented);
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "Status",
            "OfferView",
            "SessionView",
            "WalletView",
            "ErrorBody",
            "Event",
        ] {
            assert!(schemas.contains_key(name), "no schema {name}");
        }
        // Amounts and ids are integers and strings, as the JSON is.
        assert_eq!(
            schemas["WalletView"]["properties"]["balance"]["type"],
            "integer"
        );
        assert_eq!(
            schemas["OfferView"]["properties"]["provider"]["type"],
            "string"
        );
        refs_resolve(&doc, schemas);
        assert!(doc["components"]["securitySchemes"]["token"]["scheme"] == "bearer");
    }

    #[test]
    fn topup_bodies_are_strict() {
        let ok: TopupRequest = serde_json::from_str(r#"{"amount": 1000}"#).unwrap();
        assert_eq!((ok.amount, ok.hub), (Amount::from_nano(1000), None));
        assert!(serde_json::from_str::<TopupRequest>(r#"{"amount": "10"}"#).is_err());
        assert!(serde_json::from_str::<TopupRequest>(r#"{"amount": 1, "hubb": null}"#).is_err());
    }
}
