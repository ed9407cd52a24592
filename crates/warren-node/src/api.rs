//! The local REST API under `/api/v1/`, and the JSON shapes it answers with (the CLI reads
//! the same types). Amounts are integers of nano-WRN; ids are node id strings.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use warren_net::Reachability;
use warren_types::{Amount, Country, IpKind, NodeId, Offer, Service};

use crate::Shared;
use crate::catalog::OfferFilter;
use crate::session::consumer::{ConnectError, ConnectRequest, SessionView};
use crate::session::provider::ServedView;

/// An offer as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferView {
    pub provider: NodeId,
    pub country: Country,
    /// nano-WRN per GiB of payload, both directions together.
    pub price_per_gib: Amount,
    /// nano-WRN per hour, pro-rated per second.
    pub price_per_hour: Amount,
    pub services: Vec<Service>,
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderView {
    pub country: Country,
    pub price_per_gib: Amount,
    pub price_per_hour: Amount,
    pub ip_kind: IpKind,
    /// When the offer now in the market expires (it is refreshed before that).
    pub offer_expires_at: Option<u64>,
}

/// `GET /api/v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node_id: NodeId,
    pub version: String,
    pub listen_addrs: Vec<String>,
    /// Peers connected now.
    pub peers: usize,
    pub reachability: Reachability,
    /// Offers in this node's catalog.
    pub offers: usize,
    pub provider: Option<ProviderView>,
    /// The consumer session; null while none is open.
    pub session: Option<SessionView>,
    /// Sessions this node serves as a provider.
    pub serving: usize,
    pub uptime_secs: u64,
}

/// The body of every error answer: a machine-readable kind and a message for people.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub kind: String,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
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

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/status", get(get_status))
        .route("/api/v1/offers", get(get_offers))
        .route(
            "/api/v1/session",
            get(get_session).post(post_session).delete(delete_session),
        )
        .route("/api/v1/provider/sessions", get(get_served))
        .fallback(not_found)
        .with_state(shared)
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "not_found",
        message: "no such endpoint; see /api/v1/status, /api/v1/offers and /api/v1/session".into(),
    }
}

pub(crate) fn status(shared: &Shared) -> Status {
    let net = shared.net.state();
    let provider = shared.provide.borrow().as_ref().map(|p| ProviderView {
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
        uptime_secs: shared.started.elapsed().as_secs(),
    }
}

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

async fn get_session(State(shared): State<Arc<Shared>>) -> Json<Option<SessionView>> {
    Json(shared.consumer.view())
}

/// `POST /api/v1/session`: body is a [`ConnectRequest`] (every field optional; an empty body
/// means any provider). Answers the opened session.
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnected {
    pub closed: bool,
}

async fn delete_session(State(shared): State<Arc<Shared>>) -> Json<Disconnected> {
    Json(Disconnected {
        closed: shared.consumer.disconnect().await,
    })
}

async fn get_served(State(shared): State<Arc<Shared>>) -> Json<Vec<ServedView>> {
    Json(shared.provider.sessions())
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
}
