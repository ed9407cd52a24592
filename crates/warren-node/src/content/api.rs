//! The content part of the local API, and the gateway `/content/<id>`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use utoipa::ToSchema;
use warren_content::ContentId;
use warren_types::NodeId;

use super::{ContentError, Progress, Published};
use crate::Shared;
use crate::api::{ApiError, ErrorBody};

/// A channel this node holds, publishes or follows.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChannelView {
    /// The channel's id (its key).
    pub id: String,
    pub name: String,
    /// Published by this node.
    pub own: bool,
    pub following: bool,
    /// Entries held.
    pub entries: u64,
    pub latest: Option<EntryView>,
}

/// One entry of a channel.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EntryView {
    pub seq: u64,
    /// The content id.
    pub id: String,
    pub title: String,
    pub media_type: String,
    pub size: u64,
    /// Unix seconds, by the publisher's clock.
    pub published_at: u64,
    /// Whether this node holds the blob whole.
    pub held: bool,
}

/// A channel and its entries, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChannelDetail {
    pub channel: ChannelView,
    pub entries: Vec<EntryView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishRequest {
    /// A file the node can read.
    pub path: String,
    /// The channel's name (default "main").
    pub channel: Option<String>,
    /// Default: the file's name.
    pub title: Option<String>,
    /// Default: from the file's extension.
    pub media_type: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DirRequest {
    /// A directory on the node's machine.
    pub dir: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ExportReport {
    pub channel: String,
    pub entries: u64,
    /// Blobs written.
    pub blobs: u64,
    /// Entries whose blob this node does not hold (not written).
    pub missing: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportedChannel {
    pub id: String,
    pub entries: u64,
    /// Entries this node did not hold before.
    pub new_entries: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportReport {
    pub channels: Vec<ImportedChannel>,
    /// Blobs taken in (each hashed and checked against its entry's id).
    pub blobs: u64,
}

/// Where a blob stands on this node.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ContentStatus {
    pub id: String,
    /// Held whole and verified.
    pub complete: bool,
    pub size: Option<u64>,
    /// Verified bytes held.
    pub have: u64,
    /// The download, if one ran since the node started.
    pub fetch: Option<Progress>,
}

impl From<ContentError> for ApiError {
    fn from(e: ContentError) -> Self {
        let (status, kind) = match &e {
            ContentError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ContentError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ContentError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ContentError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "failed"),
        };
        ApiError::new(status, kind, e.to_string())
    }
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &Bytes, shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("bad request body ({e}); send {shape}"),
        )
    })
}

fn content_id(text: &str) -> Result<ContentId, ApiError> {
    text.parse::<ContentId>()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e))
}

fn channel_id(shared: &Shared, text: &str) -> Result<NodeId, ApiError> {
    Ok(shared.content.resolve(text)?)
}

/// `POST /api/v1/content`: publishes a file in a channel of this node's.
#[utoipa::path(post, path = "/api/v1/content", tag = "content", security(("token" = [])),
    request_body = PublishRequest,
    responses((status = 200, body = Published), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn post_content(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<Published>, ApiError> {
    let req: PublishRequest = json_body(
        &body,
        r#"{"path": "<file>", "channel": "<name>", "title": "<title>"}"#,
    )?;
    let published = shared
        .content
        .publish(
            PathBuf::from(req.path),
            req.channel.unwrap_or_else(|| "main".into()),
            req.title,
            req.media_type,
        )
        .await?;
    Ok(Json(published))
}

/// `GET /api/v1/content/{id}`: whether the blob is held, and its download's progress.
#[utoipa::path(get, path = "/api/v1/content/{id}", tag = "content",
    params(("id" = String, Path, description = "content id")),
    responses((status = 200, body = ContentStatus), (status = 400, body = ErrorBody)))]
pub(crate) async fn get_content_status(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<ContentStatus>, ApiError> {
    let id = content_id(&id)?;
    Ok(Json(status_of(&shared, id)))
}

fn status_of(shared: &Shared, id: ContentId) -> ContentStatus {
    let progress = shared.content.progress(&id);
    let complete = shared.content.blobs.contains(&id);
    let fetch = shared.content.fetch_progress(&id);
    ContentStatus {
        id: id.to_string(),
        complete,
        size: progress
            .map(|p| p.1)
            .or_else(|| fetch.as_ref().and_then(|f| f.size)),
        have: progress.map_or(0, |p| p.0),
        fetch,
    }
}

/// `POST /api/v1/content/{id}/fetch`: starts fetching a blob from peers (or joins the
/// download under way); poll `GET /api/v1/content/{id}` for progress.
#[utoipa::path(post, path = "/api/v1/content/{id}/fetch", tag = "content", security(("token" = [])),
    params(("id" = String, Path, description = "content id")),
    responses((status = 200, body = ContentStatus), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn post_fetch(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<ContentStatus>, ApiError> {
    let id = content_id(&id)?;
    if !shared.content.blobs.contains(&id) {
        shared.content.fetch(id);
    }
    Ok(Json(status_of(&shared, id)))
}

/// `GET /api/v1/channels`: channels held, published or followed.
#[utoipa::path(get, path = "/api/v1/channels", tag = "content",
    responses((status = 200, body = [ChannelView])))]
pub(crate) async fn get_channels(State(shared): State<Arc<Shared>>) -> Json<Vec<ChannelView>> {
    Json(shared.content.channel_views())
}

/// `GET /api/v1/channels/{id}`: a channel and its entries, newest first (`id` may be the
/// name of one of this node's own channels).
#[utoipa::path(get, path = "/api/v1/channels/{id}", tag = "content",
    params(("id" = String, Path, description = "channel id, or the name of an own channel")),
    responses((status = 200, body = ChannelDetail), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_channel(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<ChannelDetail>, ApiError> {
    let channel = channel_id(&shared, &id)?;
    shared
        .content
        .channel_detail(&channel)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("this node neither holds nor follows channel {channel}"),
            )
        })
}

/// `POST /api/v1/channels/{id}/follow`: replicate a channel from now on.
#[utoipa::path(post, path = "/api/v1/channels/{id}/follow", tag = "content", security(("token" = [])),
    params(("id" = String, Path, description = "channel id")),
    responses((status = 200, body = ChannelView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn post_follow(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<ChannelView>, ApiError> {
    let channel: NodeId = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{id:?} is not a channel id"),
        )
    })?;
    shared.content.follow(channel).await;
    let view = shared
        .content
        .channel_views()
        .into_iter()
        .find(|v| v.id == channel.to_string())
        .expect("a followed channel is listed");
    Ok(Json(view))
}

/// `DELETE /api/v1/channels/{id}/follow`: stop replicating a channel (what is held stays).
#[utoipa::path(delete, path = "/api/v1/channels/{id}/follow", tag = "content", security(("token" = [])),
    params(("id" = String, Path, description = "channel id")),
    responses((status = 200, body = [ChannelView], description = "The channels listed after"), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn delete_follow(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<ChannelView>>, ApiError> {
    let channel = channel_id(&shared, &id)?;
    if shared.content.unfollow(channel).await {
        Ok(Json(shared.content.channel_views()))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("this node does not follow {channel}"),
        ))
    }
}

/// `POST /api/v1/channels/{id}/export`: writes the channel's log and held blobs into a dir.
#[utoipa::path(post, path = "/api/v1/channels/{id}/export", tag = "content", security(("token" = [])),
    params(("id" = String, Path, description = "channel id, or the name of an own channel")),
    request_body = DirRequest,
    responses((status = 200, body = ExportReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn post_export(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ExportReport>, ApiError> {
    let channel = channel_id(&shared, &id)?;
    let req: DirRequest = json_body(&body, r#"{"dir": "<directory>"}"#)?;
    Ok(Json(
        shared
            .content
            .export(channel, PathBuf::from(req.dir))
            .await?,
    ))
}

/// `POST /api/v1/import`: takes in channels and blobs exported into a dir, verifying every
/// signature and hash, and follows them.
#[utoipa::path(post, path = "/api/v1/import", tag = "content", security(("token" = [])),
    request_body = DirRequest,
    responses((status = 200, body = ImportReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn post_import(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<ImportReport>, ApiError> {
    let req: DirRequest = json_body(&body, r#"{"dir": "<directory>"}"#)?;
    Ok(Json(shared.content.import(PathBuf::from(req.dir)).await?))
}

/// A single byte range of `size`, from a `Range` header; `Err` when unsatisfiable.
fn parse_range(header: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(text) = header.and_then(|h| h.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges: answer the whole, as RFC 9110 allows.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.checked_sub(1).ok_or(())?)
        }
        (a, "") => (a.parse().map_err(|_| ())?, size.checked_sub(1).ok_or(())?),
        (a, b) => {
            let a: u64 = a.parse().map_err(|_| ())?;
            let b: u64 = b.parse().map_err(|_| ())?;
            if b < a {
                return Err(());
            }
            (a, b.min(size.saturating_sub(1)))
        }
    };
    if start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// How long the gateway waits for a blob it is fetching.
const GATEWAY_WAIT: Duration = Duration::from_secs(120);

/// `GET /content/{id}`: the blob's bytes, with HTTP Range and its media type; a blob not
/// held is fetched from peers first. Answers carry `Content-Security-Policy: sandbox`, so
/// published pages and images cannot run script on the API's origin.
#[utoipa::path(get, path = "/content/{id}", tag = "content",
    params(("id" = String, Path, description = "content id")),
    responses(
        (status = 200, description = "The whole blob"),
        (status = 206, description = "The requested range"),
        (status = 404, body = ErrorBody, description = "No peer holds it"),
        (status = 416, description = "The range is outside the blob")))]
pub(crate) async fn get_gateway(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = content_id(&id)?;
    let content = &shared.content;
    if !content.blobs.contains(&id) {
        let mut progress = content.fetch(id);
        let waited = tokio::time::timeout(GATEWAY_WAIT, async {
            while !progress.borrow_and_update().finished() {
                if progress.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        if waited.is_err() {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("still fetching {id}; try again"),
            ));
        }
        let last = progress.borrow().clone();
        if let Some(e) = last.error {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", e));
        }
    }
    let path = content.blobs.data_path(&id);
    let mut file = tokio::fs::File::open(&path).await.map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("this node does not hold {id}"),
        )
    })?;
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "failed", e.to_string()))?
        .len();
    let media_type = content
        .entry_for(&id)
        .map(|e| e.media_type)
        .unwrap_or_else(|| "application/octet-stream".into());
    let range = match parse_range(headers.get(header::RANGE), size) {
        Ok(r) => r,
        Err(()) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response());
        }
    };
    let (status, start, len) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        None => (StatusCode::OK, 0, size),
    };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "failed", e.to_string()))?;
    let stream = futures::stream::unfold(
        (file.take(len), vec![0u8; 64 * 1024]),
        |(mut f, mut buf)| async move {
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    Some((Ok::<_, std::io::Error>(chunk), (f, buf)))
                }
                Err(e) => Some((Err(e), (f, buf))),
            }
        },
    );
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{id}\"")) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let v = format!("bytes {}-{}/{size}", start, start + len - 1);
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
        parse_range(Some(&HeaderValue::from_str(text).unwrap()), size)
    }

    #[test]
    fn ranges_parse_like_rfc_9110() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(r("bytes=0-4", 10), Ok(Some((0, 4))));
        assert_eq!(r("bytes=5-", 10), Ok(Some((5, 9))));
        assert_eq!(r("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(r("bytes=-30", 10), Ok(Some((0, 9))));
        assert_eq!(r("bytes=8-100", 10), Ok(Some((8, 9))));
        assert_eq!(r("bytes=0-0,5-6", 10), Ok(None));
        assert_eq!(r("items=0-1", 10), Ok(None));
        assert_eq!(r("bytes=10-", 10), Err(()));
        assert_eq!(r("bytes=4-2", 10), Err(()));
        assert_eq!(r("bytes=-0", 10), Err(()));
        assert_eq!(r("bytes=x-2", 10), Err(()));
        assert_eq!(r("bytes=0-", 0), Err(()));
    }
}
