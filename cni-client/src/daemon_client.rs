//! Talking to enipoold over its unix socket, with every failure mapped to a CNI error code:
//! unreachable or pool exhausted is 11 (try again later) and the message says which.

use std::path::{Path, PathBuf};
use std::time::Duration;

use enipool_api::client::{Client, ClientError, Reply};
use enipool_api::{self as api, problem};

use crate::protocol::{CniError, code};

/// How long one call may take. Allocation waits for the pool up to the daemon's
/// `--allocation-wait` (2 s by default) before it answers 503.
const LEASE_TIMEOUT: Duration = Duration::from_secs(15);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Daemon {
    client: Client,
    socket: PathBuf,
}

/// Percent-encodes one path segment (ifnames may hold characters that mean something in a URL).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn lease_path(network: &str, container_id: &str, ifname: &str) -> String {
    format!("/v1/leases/{}/{}/{}", segment(network), segment(container_id), segment(ifname))
}

impl Daemon {
    pub fn new(socket: &Path) -> Daemon {
        Daemon { client: Client::new(socket), socket: socket.to_path_buf() }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> CniError {
        CniError::new(code::TRY_AGAIN_LATER, format!("enipoold is unreachable at {}: {e}", self.socket.display()))
    }

    /// A non-success reply as a CNI error.
    fn failed(what: &str, reply: &Reply) -> CniError {
        let body = String::from_utf8_lossy(&reply.body);
        let Ok(p) = serde_json::from_slice::<api::Problem>(&reply.body) else {
            return CniError::new(code::DAEMON, format!("enipoold answered {what} with {}: {body}", reply.status));
        };
        match p.problem_type.as_str() {
            problem::POOL_EXHAUSTED => CniError::new(
                code::TRY_AGAIN_LATER,
                format!("no IP available: enipoold's pool is exhausted: {}", p.detail),
            ),
            problem::SHUTTING_DOWN | problem::NOT_READY => {
                CniError::new(code::TRY_AGAIN_LATER, format!("enipoold is not serving yet: {}", p.detail))
            }
            problem::INVALID_FIELD => {
                let field = p.field.as_deref().unwrap_or("");
                let c =
                    if matches!(field, "container_id" | "ifname") { code::INVALID_ENV } else { code::INVALID_CONFIG };
                CniError::new(c, format!("enipoold refused {what}: {}", p.detail))
            }
            _ => CniError::new(code::DAEMON, format!("enipoold answered {what} with {}: {}", reply.status, p.detail)),
        }
    }

    /// Connects ahead of the first call (see [`Client::preconnect`]).
    pub async fn connect(&mut self) -> Result<(), CniError> {
        Self::timed(CALL_TIMEOUT, self.client.preconnect()).await.map_err(|e| self.unreachable(e))
    }

    pub async fn lease(&mut self, req: &api::LeaseRequest) -> Result<api::Lease, CniError> {
        let fut = self.client.post_json("/v1/leases", req);
        let reply = Self::timed(LEASE_TIMEOUT, fut).await.map_err(|e| self.unreachable(e))?;
        if !reply.status.is_success() {
            return Err(Self::failed("the lease request", &reply));
        }
        reply.json::<api::Lease>().map_err(|e| CniError::new(code::DAEMON, format!("{e:#}")))
    }

    /// Releases a lease; 204 (also when there was none) is success.
    pub async fn release(&mut self, network: &str, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let path = lease_path(network, container_id, ifname);
        let fut = self.client.delete(&path);
        let reply = Self::timed(CALL_TIMEOUT, fut).await.map_err(|e| self.unreachable(e))?;
        if reply.status.as_u16() == 204 {
            return Ok(());
        }
        Err(Self::failed("the release", &reply))
    }

    /// The lease of a key, or None when the daemon has none.
    pub async fn get_lease(
        &mut self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<api::Lease>, CniError> {
        let path = lease_path(network, container_id, ifname);
        let fut = self.client.get(&path);
        let reply = Self::timed(CALL_TIMEOUT, fut).await.map_err(|e| self.unreachable(e))?;
        match reply.status.as_u16() {
            200 => reply.json().map(Some).map_err(|e| CniError::new(code::DAEMON, format!("{e:#}"))),
            404 => Ok(None),
            _ => Err(Self::failed("the lease lookup", &reply)),
        }
    }

    /// GET /readyz: Ok(None) when ready, Ok(Some(reason)) when not.
    pub async fn readiness(&mut self) -> Result<Option<String>, CniError> {
        let fut = self.client.get("/readyz");
        let reply = Self::timed(CALL_TIMEOUT, fut).await.map_err(|e| self.unreachable(e))?;
        match reply.json::<api::Readiness>() {
            Ok(r) if r.ready && reply.status.is_success() => Ok(None),
            Ok(r) => Ok(Some(r.reason.unwrap_or_else(|| format!("/readyz answered {}", reply.status)))),
            Err(e) => Ok(Some(format!("{e:#}"))),
        }
    }

    /// Every lease the daemon holds in `network`.
    pub async fn leases(&mut self, network: &str) -> Result<Vec<api::Lease>, CniError> {
        let path = format!("/v1/leases?network={}", segment(network));
        let fut = self.client.get(&path);
        let reply = Self::timed(CALL_TIMEOUT, fut).await.map_err(|e| self.unreachable(e))?;
        if !reply.status.is_success() {
            return Err(Self::failed("the lease listing", &reply));
        }
        reply.json().map_err(|e| CniError::new(code::DAEMON, format!("{e:#}")))
    }

    pub async fn gc(&mut self, req: &api::GcRequest) -> Result<api::GcReply, CniError> {
        let fut = self.client.post_json("/v1/gc", req);
        let reply = Self::timed(CALL_TIMEOUT, fut).await.map_err(|e| self.unreachable(e))?;
        if !reply.status.is_success() {
            return Err(Self::failed("GC", &reply));
        }
        reply.json().map_err(|e| CniError::new(code::DAEMON, format!("{e:#}")))
    }

    async fn timed<T>(timeout: Duration, fut: impl Future<Output = Result<T, ClientError>>) -> Result<T, String> {
        match tokio::time::timeout(timeout, fut).await {
            Err(_) => Err(format!("no answer within {timeout:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(r)) => Ok(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(lease_path("aws-cni", "abc.1_2", "eth0"), "/v1/leases/aws-cni/abc.1_2/eth0");
        assert_eq!(lease_path("n", "c", "e#?%"), "/v1/leases/n/c/e%23%3F%25");
    }
}
