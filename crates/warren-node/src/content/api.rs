//! The content part of the local API, and the gateway `/content/<id>`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use utoipa::ToSchema;
use warren_content::ContentId;
use warren_content::blob::PIECE_BYTES;
use warren_types::NodeId;

use super::fetch::Live;
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

/// How long the gateway waits for a download to learn the blob's size.
const GATEWAY_WAIT: Duration = Duration::from_secs(120);
/// How long a reader of a blob still downloading waits for the next piece.
const PIECE_WAIT: Duration = Duration::from_secs(60);
/// Pieces past the one a reader waits for that move up the download's queue with it.
const READ_AHEAD: u64 = 4;
/// Bytes read from disk per chunk of an answer.
const READ_BYTES: u64 = 256 * 1024;

/// Where the gateway reads a blob from.
enum Source {
    /// Held whole.
    Held(tokio::fs::File, u64),
    /// Still downloading: verified pieces are served as they come in.
    Live(Arc<Live>, tokio::sync::watch::Receiver<Progress>),
}

impl Source {
    fn size(&self) -> u64 {
        match self {
            Source::Held(_, size) => *size,
            Source::Live(live, _) => live.size(),
        }
    }
}

/// The held blob `id`, or its download once the download knows the size.
async fn source(content: &Arc<super::Content>, id: ContentId) -> Result<Source, ApiError> {
    let not_held = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("this node does not hold {id}"),
        )
    };
    let held = || async {
        let file = tokio::fs::File::open(content.blobs.data_path(&id))
            .await
            .map_err(|_| not_held())?;
        let size = content.blobs.size(&id).ok_or_else(not_held)?;
        Ok(Source::Held(file, size))
    };
    if content.blobs.contains(&id) {
        return held().await;
    }
    let mut progress = content.fetch(id);
    let waited = tokio::time::timeout(GATEWAY_WAIT, async {
        loop {
            // Seen before looking, so a download that goes live after the look still
            // wakes this wait.
            let finished = progress.borrow_and_update().finished();
            if let Some(live) = content.live(&id) {
                return Some(live);
            }
            if finished || progress.changed().await.is_err() {
                return None;
            }
        }
    })
    .await;
    match waited {
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("still looking for a peer that holds {id}; try again"),
        )),
        Ok(Some(live)) => Ok(Source::Live(live, progress)),
        Ok(None) => {
            let error = progress.borrow().error.clone();
            match error {
                Some(e) if !content.blobs.contains(&id) => {
                    Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", e))
                }
                _ => held().await,
            }
        }
    }
}

/// Waits until piece `piece` of a download is verified and in, asking for it (and the few
/// after it) first.
async fn wait_for_piece(
    live: &Live,
    progress: &mut tokio::sync::watch::Receiver<Progress>,
    piece: u64,
) -> std::io::Result<()> {
    loop {
        let (finished, error) = {
            let p = progress.borrow_and_update();
            (p.finished(), p.error.clone())
        };
        if live.has(piece) {
            return Ok(());
        }
        if finished {
            return Err(std::io::Error::other(error.unwrap_or_else(|| {
                format!("the download ended without piece {piece}")
            })));
        }
        live.prioritise(piece..piece + 1 + READ_AHEAD);
        match tokio::time::timeout(PIECE_WAIT, progress.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // The download is gone; whatever it finished with is in `live`.
                if live.has(piece) {
                    return Ok(());
                }
                return Err(std::io::Error::other("the download stopped"));
            }
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("piece {piece} did not arrive within {PIECE_WAIT:?}"),
                ));
            }
        }
    }
}

/// The bytes `start..start + len` of a blob, as a body stream.
fn body(source: Source, start: u64, len: u64) -> Body {
    type Chunk = std::io::Result<Bytes>;
    match source {
        Source::Held(mut file, _) => {
            let stream = futures::stream::once(async move {
                file.seek(std::io::SeekFrom::Start(start)).await?;
                Ok::<_, std::io::Error>(file.take(len))
            })
            .map(|opened| match opened {
                Ok(f) => futures::stream::unfold(
                    (f, vec![0u8; READ_BYTES as usize]),
                    |(mut f, mut buf)| async move {
                        match f.read(&mut buf).await {
                            Ok(0) => None,
                            Ok(n) => {
                                let chunk = Bytes::copy_from_slice(&buf[..n]);
                                Some((Ok(chunk), (f, buf)))
                            }
                            Err(e) => Some((Err(e), (f, buf))),
                        }
                    },
                )
                .left_stream(),
                Err(e) => futures::stream::iter([Err::<Bytes, _>(e)]).right_stream(),
            })
            .flatten();
            Body::from_stream(stream)
        }
        Source::Live(live, progress) => {
            let end = start + len;
            let stream = futures::stream::unfold(
                (live, progress, start),
                move |(live, mut progress, at)| async move {
                    if at >= end {
                        return None;
                    }
                    let piece = at / PIECE_BYTES;
                    let step: Chunk = async {
                        wait_for_piece(&live, &mut progress, piece).await?;
                        let n = READ_BYTES.min((piece + 1) * PIECE_BYTES - at).min(end - at);
                        let reader = live.clone();
                        tokio::task::spawn_blocking(move || {
                            let mut buf = vec![0u8; n as usize];
                            reader.read_at(at, &mut buf).map(|()| Bytes::from(buf))
                        })
                        .await
                        .map_err(std::io::Error::other)?
                    }
                    .await;
                    // After an error the stream ends: the client sees a cut answer.
                    let next = match &step {
                        Ok(bytes) => at + bytes.len() as u64,
                        Err(_) => end,
                    };
                    Some((step, (live, progress, next)))
                },
            );
            Body::from_stream(stream)
        }
    }
}

/// `GET /content/{id}`: the blob's bytes, with HTTP Range and its media type. A blob not
/// held is fetched from peers, and served while it downloads: each range as soon as the
/// pieces under it have verified (a range being waited for is fetched first). Answers carry
/// `Content-Security-Policy: sandbox`, so published pages and images cannot run script on
/// the API's origin.
#[utoipa::path(get, path = "/content/{id}", tag = "content",
    params(("id" = String, Path, description = "content id")),
    responses(
        (status = 200, description = "The whole blob"),
        (status = 206, description = "The requested range"),
        (status = 404, body = ErrorBody, description = "No peer holds it"),
        (status = 416, description = "The range is outside the blob"),
        (status = 504, body = ErrorBody, description = "No holder found in time")))]
pub(crate) async fn get_gateway(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = content_id(&id)?;
    let content = &shared.content;
    let source = source(content, id).await?;
    let size = source.size();
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
    let mut response = Response::new(body(source, start, len));
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
