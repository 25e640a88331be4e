use crate::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What a [`Client`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway answered with a non-success status.
    #[error("HTTP {status}: {message}")]
    Status {
        status: u16,
        message: String,
        request_id: Option<String>,
    },
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("unexpected body: {0}")]
    Body(String),
}

impl ClientError {
    /// The HTTP status, if the gateway answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            ClientError::Transport(e) => e.status().map(|s| s.as_u16()),
            ClientError::Body(_) => None,
        }
    }

    /// The envelope's message, or the error's text.
    pub fn message(&self) -> String {
        match self {
            ClientError::Status { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// A typed client of the gateway's HTTP API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: String,
}

impl Client {
    /// `base_url` like `http://127.0.0.1:7055` (no trailing path).
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Self::with_http(http, base_url, api_key)
    }

    /// Shares an existing `reqwest::Client` (connection pool).
    pub fn with_http(
        http: reqwest::Client,
        base_url: impl Into<String>,
        api_key: impl Into<String>,
    ) -> Self {
        let base = base_url.into().trim_end_matches('/').to_string();
        Self {
            http,
            base,
            api_key: api_key.into(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub async fn charge(
        &self,
        device_id: &str,
        req: &ChargeRequest,
    ) -> Result<OrderRef, ClientError> {
        self.post(&format!("/api/v1/third/devices/{device_id}/charge"), req)
            .await
    }

    pub async fn stop(&self, device_id: &str, req: &StopRequest) -> Result<OrderRef, ClientError> {
        self.post(&format!("/api/v1/third/devices/{device_id}/stop"), req)
            .await
    }

    pub async fn device(&self, device_id: &str) -> Result<DeviceView, ClientError> {
        self.get(&format!("/api/v1/third/devices/{device_id}"), &())
            .await
    }

    pub async fn devices(&self, query: &DeviceListQuery) -> Result<Page<DeviceView>, ClientError> {
        self.get("/api/v1/third/devices", query).await
    }

    pub async fn order(&self, order_no: &str) -> Result<OrderView, ClientError> {
        self.get(&format!("/api/v1/third/orders/{order_no}"), &())
            .await
    }

    pub async fn orders(&self, query: &OrderListQuery) -> Result<Page<OrderView>, ClientError> {
        self.get("/api/v1/third/orders", query).await
    }

    pub async fn progress(&self, order_no: &str) -> Result<Vec<ProgressSample>, ClientError> {
        self.get(&format!("/api/v1/third/orders/{order_no}/progress"), &())
            .await
    }

    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.get("/api/v1/admin/stats", &()).await
    }

    /// The gateway instances sharing the database (`GET /api/v1/admin/instances`). A gateway
    /// that runs as a single instance answers 404 ([`ClientError::status`]).
    pub async fn instances(&self) -> Result<Vec<InstanceView>, ClientError> {
        self.get("/api/v1/admin/instances", &()).await
    }

    pub async fn consistency(&self) -> Result<Consistency, ClientError> {
        self.get("/api/v1/admin/consistency", &()).await
    }

    pub async fn frames(&self, device_id: &str) -> Result<Vec<FrameRecord>, ClientError> {
        self.get(&format!("/api/v1/admin/devices/{device_id}/frames"), &())
            .await
    }

    pub async fn healthz(&self) -> Result<Health, ClientError> {
        self.get("/healthz", &()).await
    }

    pub async fn readyz(&self) -> Result<Health, ClientError> {
        self.get("/readyz", &()).await
    }

    pub async fn dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Page<DeadLetter>, ClientError> {
        self.get("/api/v1/admin/webhooks/dead", query).await
    }

    pub async fn replay_dead_letter(&self, event_id: &str) -> Result<ReplayResult, ClientError> {
        self.post(
            &format!("/api/v1/admin/webhooks/dead/{event_id}/replay"),
            &serde_json::json!({}),
        )
        .await
    }

    /// Sends a signed `webhook.test` event now and reports the receiver's answer.
    pub async fn webhook_test(&self) -> Result<WebhookTestResult, ClientError> {
        self.post("/api/v1/admin/webhooks/test", &serde_json::json!({}))
            .await
    }

    /// Opens the live event stream (server-sent events); read it with [`EventStream::next`].
    pub async fn event_stream(&self, query: &EventStreamQuery) -> Result<EventStream, ClientError> {
        let resp = self
            .http
            .get(format!("{}/api/v1/events/stream", self.base))
            .header("X-Api-Key", &self.api_key)
            .header("Accept", "text/event-stream")
            .query(query)
            .send()
            .await?;
        let status = resp.status().as_u16();
        if status != 200 {
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Envelope<serde_json::Value>>(&text)
                .map(|e| e.message)
                .unwrap_or(text);
            return Err(ClientError::Status {
                status,
                message,
                request_id: None,
            });
        }
        Ok(EventStream {
            resp,
            buf: String::new(),
        })
    }

    async fn get<Q: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<T, ClientError> {
        let req = self
            .http
            .get(format!("{}{}", self.base, path))
            .header("X-Api-Key", &self.api_key)
            .query(query);
        Self::send(req).await
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let req = self
            .http
            .post(format!("{}{}", self.base, path))
            .header("X-Api-Key", &self.api_key)
            .json(body);
        Self::send(req).await
    }

    async fn send<T: DeserializeOwned>(req: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let env: Envelope<T> = match serde_json::from_slice(&bytes) {
            Ok(env) => env,
            Err(e) => {
                if (200..300).contains(&status) {
                    return Err(ClientError::Body(e.to_string()));
                }
                // An error without a readable envelope (e.g. a proxy's page).
                let message = String::from_utf8_lossy(&bytes).chars().take(200).collect();
                return Err(ClientError::Status {
                    status,
                    message,
                    request_id: None,
                });
            }
        };
        if !(200..300).contains(&status) || env.code != 0 {
            return Err(ClientError::Status {
                status: if env.code != 0 { env.code } else { status },
                message: env.message,
                request_id: Some(env.request_id),
            });
        }
        env.data
            .ok_or_else(|| ClientError::Body("envelope without data".into()))
    }
}

/// A live event stream: server-sent events whose `data` is an [`EventMessage`].
#[derive(Debug)]
pub struct EventStream {
    resp: reqwest::Response,
    buf: String,
}

impl EventStream {
    /// The next event; `None` when the gateway closed the stream. Keep-alive comments are
    /// skipped.
    pub async fn next(&mut self) -> Option<Result<EventMessage, ClientError>> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return Some(
                    serde_json::from_str(&data.join("\n"))
                        .map_err(|e| ClientError::Body(e.to_string())),
                );
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self
                    .buf
                    .push_str(&String::from_utf8_lossy(&bytes).replace("\r\n", "\n")),
                Ok(None) => return None,
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}
