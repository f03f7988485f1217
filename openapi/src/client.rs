//! A minimal HTTP/1.1 client over the daemon's unix socket, for `enipoold status|leases`, tests and
//! load generators (feature `client`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

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
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!("reply ({}) is not the expected JSON: {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }
}

impl Client {
    pub fn new(socket: impl AsRef<Path>) -> Client {
        Client { socket: socket.as_ref().to_path_buf(), sender: None }
    }

    async fn connect(&mut self) -> anyhow::Result<&mut http1::SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = UnixStream::connect(&self.socket)
                .await
                .with_context(|| format!("connecting to enipoold at {}", self.socket.display()))?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("connected above"))
    }

    /// Sends one request; `body` is sent as JSON when given.
    pub async fn request(&mut self, method: Method, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<Reply> {
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

    pub async fn get(&mut self, path: &str) -> anyhow::Result<Reply> {
        self.request(Method::GET, path, None).await
    }

    pub async fn post_json<T: serde::Serialize>(&mut self, path: &str, body: &T) -> anyhow::Result<Reply> {
        self.request(Method::POST, path, Some(serde_json::to_vec(body)?)).await
    }

    pub async fn delete(&mut self, path: &str) -> anyhow::Result<Reply> {
        self.request(Method::DELETE, path, None).await
    }
}
