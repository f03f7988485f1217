//! A minimal HTTP/1.1 client over the daemon's unix socket, for `enipoold status|leases`, tests and
//! load generators (feature `client`).

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// What went wrong talking to the daemon; each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to enipoold at {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("the HTTP exchange with enipoold: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("encoding the request body: {0}")]
    Encode(serde_json::Error),
    #[error("reply ({status}) is not the expected JSON: {source}: {body}")]
    Decode { status: StatusCode, body: String, source: serde_json::Error },
}

/// One keep-alive connection to the daemon.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Reply {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|source| ClientError::Decode {
            status: self.status,
            body: String::from_utf8_lossy(&self.body).into_owned(),
            source,
        })
    }
}

impl Client {
    pub fn new(socket: impl AsRef<Path>) -> Client {
        Client { socket: socket.as_ref().to_path_buf(), sender: None }
    }

    async fn connect(&mut self) -> Result<&mut http1::SendRequest<Full<Bytes>>, ClientError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect { path: self.socket.clone(), source })?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("connected above"))
    }

    /// Connects now, if not connected yet, rather than at the first request: a caller that will
    /// send a request and then block its thread (the plugin's ADD, which creates a veth while its
    /// lease is on the wire) lets the connection task run in between, so the request goes out first.
    pub async fn preconnect(&mut self) -> Result<(), ClientError> {
        self.connect().await.map(|_| ())
    }

    /// Sends one request; `body` is sent as JSON when given.
    pub async fn request(&mut self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Reply, ClientError> {
        let sender = self.connect().await?;
        sender.ready().await?;
        let mut req = Request::builder().method(method).uri(path).header("host", "enipoold");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(e.into());
            }
        };
        let status = resp.status();
        let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply { status, content_type, body })
    }

    pub async fn get(&mut self, path: &str) -> Result<Reply, ClientError> {
        self.request(Method::GET, path, None).await
    }

    pub async fn post_json<T: serde::Serialize>(&mut self, path: &str, body: &T) -> Result<Reply, ClientError> {
        self.request(Method::POST, path, Some(serde_json::to_vec(body).map_err(ClientError::Encode)?)).await
    }

    pub async fn delete(&mut self, path: &str) -> Result<Reply, ClientError> {
        self.request(Method::DELETE, path, None).await
    }
}
