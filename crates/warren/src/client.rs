//! A client of the running node's local API: every command but init, id, node and testnet
//! goes through here.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::de::DeserializeOwned;
use warren_node::api::ErrorBody;
use warren_node::api_guard::ApiToken;

pub struct ApiClient {
    base: String,
    api: SocketAddr,
    http: reqwest::Client,
    /// Sent with calls that change something; the node wrote it to its data directory.
    token: Option<ApiToken>,
}

impl ApiClient {
    pub fn new(api: SocketAddr, token: Option<ApiToken>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(45))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .context("could not set up the HTTP client")?;
        Ok(Self {
            base: format!("http://{api}"),
            api,
            http,
            token,
        })
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T> {
        self.send(
            self.http.get(format!("{}{path}", self.base)).query(query),
            path,
        )
        .await
    }

    pub async fn post<T: DeserializeOwned, B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(self.authorised(request), path).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let request = self.http.delete(format!("{}{path}", self.base));
        self.send(self.authorised(request), path).await
    }

    /// A GET whose body the caller streams (a download can take longer than any timeout
    /// for a whole call); fails on a non-success status with the node's message.
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .context("could not set up the HTTP client")?;
        let response = http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| anyhow!("talking to the node at {} failed: {e}", self.api))?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.unwrap_or_default();
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(anyhow!("the node refused {path} ({status}): {message}"));
        }
        Ok(response)
    }

    fn authorised(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => request.bearer_auth(t.as_str()),
            None => request,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<T> {
        let response = request.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                anyhow!(
                    "no Warren node is answering at {api}.\n\
                         Start one with `warren node` (or try `warren testnet`), \
                         or point --api / WARREN_API at the node you run.",
                    api = self.api
                )
            } else {
                anyhow!("talking to the node at {} failed: {e}", self.api)
            }
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("reading the node's answer to {path}"))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(anyhow!("the node refused {path} ({status}): {message}"));
        }
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the node at {} answered {path} with something this warren cannot read; \
                 are the CLI and node the same version?",
                self.api
            )
        })
    }
}
