//! The harness every integration test shares: a real `enipoold` process per test (own temp data
//! dir, socket inside it, loopback TCP on a free port, every period short), killed by a guard on
//! drop; an HTTP client for its unix socket and its TCP listener that checks every answer against
//! openapi/openapi.json; and bounded polling of observable state.
#![allow(dead_code)]

pub mod container;
pub mod netns;
pub mod spec;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::HeaderMap;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};

pub use spec::{Listener, PROBLEM_JSON, spec};

/// The network name the tests lease on unless they say otherwise.
pub const NET: &str = "aws-cni";

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The static provider's m5.large: IPs a pod can get per ENI.
pub const M5_LARGE_PER_ENI: u64 = 9;

/// The flags of a daemon on the EC2 provider whose EC2 endpoint answers nothing (a port nothing
/// listens on), with one attempt per call; `endpoint` is from [`unreachable_endpoint`].
pub fn unreachable_ec2(endpoint: &str) -> Vec<(&str, &str)> {
    vec![
        ("--provider", "ec2"),
        ("--ec2-endpoint", endpoint),
        ("--instance-id", "i-0123456789abcdef0"),
        ("--ec2-max-attempts", "1"),
    ]
}

/// An http:// URL on loopback where nothing listens.
pub fn unreachable_endpoint() -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    format!("http://{closed}")
}

/// Every environment variable the daemon reads, cleared so the test's flags alone decide.
const DAEMON_ENV: &[&str] = &[
    "ENIPOOL_CONFIG",
    "ENIPOOL_SOCKET",
    "ENIPOOL_LISTEN",
    "ENIPOOL_METRICS_LISTEN",
    "ENIPOOL_DATA_DIR",
    "ENIPOOL_PROVIDER",
    "ENIPOOL_INSTANCE_TYPE",
    "ENIPOOL_VPC_CIDR",
    "ENIPOOL_STATIC_LATENCY",
    "ENIPOOL_INSTANCE_ID",
    "ENIPOOL_IMDS_ENDPOINT",
    "ENIPOOL_EC2_ENDPOINT",
    "ENIPOOL_CLUSTER_NAME",
    "ENIPOOL_EC2_MAX_ATTEMPTS",
    "ENIPOOL_EC2_BACKOFF_BASE",
    "ENIPOOL_EC2_BACKOFF_MAX",
    "ENIPOOL_EC2_TIMEOUT",
    "ENIPOOL_EC2_RATE_LIMIT",
    "ENIPOOL_EC2_BURST",
    "ENIPOOL_EC2_DETACH_WAIT",
    "ENIPOOL_EC2_CONSISTENCY_WINDOW",
    "ENIPOOL_SUBNET_EXHAUSTED_PAUSE",
    "ENIPOOL_LEAKED_ENI_AGE",
    "ENIPOOL_LEAKED_ENI_INTERVAL",
    "ENIPOOL_RECONCILE_INTERVAL",
    "AWS_ENDPOINT_URL_EC2",
    "AWS_ENDPOINT_URL",
    "WARM_ENI_TARGET",
    "WARM_IP_TARGET",
    "MINIMUM_IP_TARGET",
    "MAX_ENI",
    "IP_COOLDOWN_PERIOD",
    "POD_MTU",
    "AWS_VPC_K8S_CNI_EXTERNALSNAT",
    "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
    "AWS_VPC_K8S_CNI_RANDOMIZESNAT",
    "ENIPOOL_POOL_TICK",
    "ENIPOOL_SHRINK_INTERVAL",
    "ENIPOOL_ALLOCATION_WAIT",
    "ENIPOOL_CHECKPOINT_INTERVAL",
    "ENIPOOL_SHUTDOWN_GRACE",
    "ENIPOOL_LOG",
    // Never let a developer's environment make a test daemon write into /etc/cni/net.d.
    "ENIPOOL_CNI_CONF_DIR",
    "ENIPOOL_CNI_CONFLIST",
];

/// The `enipoold` binary under test.
pub fn enipoold() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_enipoold"));
    for var in DAEMON_ENV {
        cmd.env_remove(var);
    }
    // For the EC2 provider's tests (moto): dummy credentials, a region, no real metadata service.
    cmd.envs(enipool_ec2::testing::aws_env());
    cmd.stdin(Stdio::null());
    cmd
}

/// SIGKILLs and reaps the daemon when dropped (also when the test panics).
struct ChildGuard(Child);

/// Run in the forked child before exec.
type PreExec = Box<dyn FnMut() -> std::io::Result<()> + Send + Sync>;

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `enipoold`.
pub struct Daemon {
    child: ChildGuard,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    /// The read-only loopback listener.
    pub http: SocketAddr,
    /// The `/metrics`-only listener, when enabled.
    pub metrics: Option<SocketAddr>,
    /// The flags the test gave (beyond the harness's own).
    flags: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts a daemon on a fresh temp data dir with the short test periods, overridden or
    /// extended by `flags` (`("--warm-ip-target", "5")`), and waits until /readyz says ready.
    pub async fn start(flags: &[(&str, &str)]) -> Daemon {
        let tmp = tempfile::Builder::new().prefix("enipoold-test-").tempdir().expect("temp dir");
        let mut d = Daemon::start_in(tmp.path(), flags).await;
        d._tmp = Some(tmp);
        d
    }

    /// Like `start_in`, but returns as soon as the daemon listens, ready or not.
    pub async fn start_in_unready(data_dir: &Path, flags: &[(&str, &str)]) -> Daemon {
        Daemon::launch(data_dir, flags).await
    }

    /// Like `start`, on a data dir the caller owns (to restart on it).
    pub async fn start_in(data_dir: &Path, flags: &[(&str, &str)]) -> Daemon {
        let d = Daemon::launch(data_dir, flags).await;
        d.wait_ready().await;
        d
    }

    /// Like `start_in_unready`, under an open-files limit (soft, hard) of the test's choosing.
    pub async fn start_in_with_nofile(data_dir: &Path, flags: &[(&str, &str)], nofile: (u64, u64)) -> Daemon {
        let (soft, hard) = nofile;
        let hook = move || {
            let lim = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        Daemon::launch_with(data_dir, flags, Some(Box::new(hook))).await
    }

    /// Like `start_in_unready`, with the process confined as a container runtime starts the
    /// DaemonSet's main container (see [`container::Confinement`]).
    pub async fn start_in_confined(
        data_dir: &Path,
        flags: &[(&str, &str)],
        confinement: container::Confinement,
    ) -> Daemon {
        Daemon::launch_with(data_dir, flags, Some(Box::new(move || confinement.enter()))).await
    }

    /// Spawns the daemon and waits for its listening lines.
    async fn launch(data_dir: &Path, flags: &[(&str, &str)]) -> Daemon {
        Daemon::launch_with(data_dir, flags, None).await
    }

    /// `before_exec` runs in the forked child, before exec: async-signal-safe calls only.
    async fn launch_with(data_dir: &Path, flags: &[(&str, &str)], before_exec: Option<PreExec>) -> Daemon {
        let socket = data_dir.join("enipool.sock");
        let mut args: Vec<(String, String)> = [
            ("--data-dir", data_dir.to_str().expect("UTF-8 temp path")),
            ("--socket", socket.to_str().expect("UTF-8 temp path")),
            ("--listen", "127.0.0.1:0"),
            ("--metrics-listen", "off"),
            ("--pool-tick", "20ms"),
            ("--shrink-interval", "50ms"),
            ("--prefix-burst-window", "100ms"),
            ("--allocation-wait", "1s"),
            ("--ip-cooldown-period", "0"),
            ("--checkpoint-interval", "50ms"),
            ("--shutdown-grace", "2s"),
            // Tests that want it give --host-netns, a namespace they made.
            ("--node-cleanup", "false"),
            ("--log", "info"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in flags {
            match args.iter_mut().find(|(a, _)| a == k) {
                Some(slot) => slot.1 = v.to_string(),
                None => args.push((k.to_string(), v.to_string())),
            }
        }
        let metrics_on = args.iter().any(|(k, v)| k == "--metrics-listen" && v != "off");
        let mut cmd = enipoold();
        for (k, v) in &args {
            cmd.arg(k).arg(v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        if let Some(hook) = before_exec {
            use std::os::unix::process::CommandExt;
            // SAFETY: the hooks make async-signal-safe system calls only, in the child.
            unsafe {
                cmd.pre_exec(hook);
            }
        }
        let mut child = cmd.spawn().expect("spawning enipoold");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut child = ChildGuard(child);

        // The daemon prints where it listens once bound; read its stdout until then.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let (mut socket_line, mut http, mut metrics) = (None, None, None);
        let started = Instant::now();
        while socket_line.is_none() || http.is_none() || (metrics_on && metrics.is_none()) {
            let left = DEADLINE.saturating_sub(started.elapsed());
            let line = match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(line)) => line,
                outcome => {
                    let why = if outcome.is_ok() { "its stdout closed" } else { "timed out" };
                    let status = child.0.try_wait().ok().flatten();
                    panic!("enipoold did not print its listening lines ({why}); exit status {status:?}; args {args:?}")
                }
            };
            let Some(rest) = line.strip_prefix("enipoold listening: ") else { continue };
            if let Some(path) = rest.strip_prefix("socket ") {
                socket_line = Some(path.trim_end_matches(" (all routes)").to_string());
            } else if let Some(addr) = rest.strip_prefix("http://") {
                match addr.split_once(' ') {
                    Some((addr, _)) => http = Some(addr.parse::<SocketAddr>().expect("listen address")),
                    None => {
                        let addr = addr.strip_suffix("/metrics").expect("the metrics line ends in /metrics");
                        metrics = Some(addr.parse::<SocketAddr>().expect("metrics address"));
                    }
                }
            }
        }
        assert_eq!(socket_line.as_deref(), socket.to_str(), "the socket the daemon says it serves");
        Daemon {
            child,
            data_dir: data_dir.to_path_buf(),
            socket,
            http: http.expect("http line"),
            metrics,
            flags: flags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            _tmp: None,
        }
    }

    /// Polls GET /readyz on the socket until it answers 200 `{"ready": true}`.
    pub async fn wait_ready(&self) {
        let api = self.unix();
        eventually("GET /readyz to answer ready", async || {
            let r = api.try_send(Method::GET, "/readyz", &[], None).await.map_err(|e| e.to_string())?;
            let v = r.json();
            if r.status == 200 && v["ready"] == true { Ok(()) } else { Err(format!("{} {v}", r.status)) }
        })
        .await;
    }

    pub fn pid(&self) -> i32 {
        self.child.0.id() as i32
    }

    /// Every route, over the unix socket.
    pub fn unix(&self) -> Api {
        Api { target: Target::Unix(self.socket.clone()) }
    }

    /// The read-only loopback TCP listener.
    pub fn tcp(&self) -> Api {
        Api { target: Target::Tcp(self.http, Listener::ReadOnly) }
    }

    /// The `/metrics`-only listener (started with `--metrics-listen 127.0.0.1:0`).
    pub fn metrics_listener(&self) -> Api {
        Api { target: Target::Tcp(self.metrics.expect("started with --metrics-listen"), Listener::MetricsOnly) }
    }

    /// The crate's own client, on the socket.
    pub fn client(&self) -> enipool_server::client::Client {
        enipool_server::client::Client::new(&self.socket)
    }

    /// SIGTERM, which must end the daemon with status 0 within 5 s; then a new daemon on the same
    /// data dir with the same flags, ready.
    pub async fn restart(self) -> Daemon {
        self.restart_after(async {}).await
    }

    /// Like `restart`, running `between` once the old process has exited and before the new one
    /// starts: for a change to the world (a fault injected) that the old daemon must not see.
    pub async fn restart_after(mut self, between: impl Future<Output = ()>) -> Daemon {
        let status = self.terminate(Duration::from_secs(5)).await;
        assert!(status.success(), "enipoold exited with {status} after SIGTERM");
        assert!(!self.socket.exists(), "a clean stop removes the socket {}", self.socket.display());
        between.await;
        let flags: Vec<(&str, &str)> = self.flags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut d = Daemon::start_in(&self.data_dir, &flags).await;
        d._tmp = self._tmp.take();
        d
    }

    /// Like `restart`, with `extra` flags replacing or joining the ones it ran with.
    pub async fn restart_with(self, extra: &[(&str, &str)]) -> Daemon {
        self.restart_with_after(extra, async {}).await
    }

    /// `restart_with` and `restart_after` in one.
    pub async fn restart_with_after(mut self, extra: &[(&str, &str)], between: impl Future<Output = ()>) -> Daemon {
        for (k, v) in extra {
            match self.flags.iter_mut().find(|(a, _)| a == k) {
                Some(slot) => slot.1 = v.to_string(),
                None => self.flags.push((k.to_string(), v.to_string())),
            }
        }
        self.restart_after(between).await
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns its status.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.signal_term();
        self.wait_exit(within).await
    }

    /// Sends SIGTERM and returns at once.
    pub fn signal_term(&self) {
        // SAFETY: kill(2) on our own child's pid; the guard has not reaped it yet.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM): {}", std::io::Error::last_os_error());
    }

    /// Waits (bounded) for the process to exit; returns its status.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.0.try_wait().expect("waiting for enipoold") {
                return status;
            }
            assert!(started.elapsed() < within, "enipoold did not exit within {within:?} of SIGTERM");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[derive(Clone, Debug)]
pub enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr, Listener),
}

/// An HTTP/1.1 client for one of the daemon's listeners (a connection per request). Every
/// answer is checked against openapi/openapi.json before the caller sees it.
#[derive(Clone, Debug)]
pub struct Api {
    pub target: Target,
}

/// One answer.
#[derive(Debug)]
pub struct Resp {
    pub request: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn content_type(&self) -> Option<String> {
        self.headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {}", self.request, self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the status; returns the answer for chaining.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Resp {
        assert_eq!(self.status, status, "{} answered {}: {}", self.request, self.status, self.text());
        self
    }

    /// Asserts an RFC 9457 problem document with this status, stable type and (if given) field.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, problem_type: &str, field: Option<&str>) -> Value {
        self.expect(status);
        assert_eq!(self.content_type().as_deref(), Some(PROBLEM_JSON), "{}: content type", self.request);
        let p = self.json();
        assert_eq!(p["type"], problem_type, "{}: problem type in {p}", self.request);
        assert_eq!(p["status"], status, "{}: problem status in {p}", self.request);
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{}: problem title in {p}", self.request);
        assert!(p["detail"].as_str().is_some_and(|t| !t.is_empty()), "{}: problem detail in {p}", self.request);
        if let Some(field) = field {
            assert_eq!(p["field"], field, "{}: problem field in {p}", self.request);
        }
        p
    }
}

async fn roundtrip<IO>(io: IO, req: Request<Full<Bytes>>) -> anyhow::Result<(u16, HeaderMap, Bytes)>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}

impl Api {
    /// Sends a request as given (no check of the request) and checks the answer against the
    /// document. Err only when the transport fails.
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Resp> {
        let mut req = Request::builder().method(method.clone()).uri(path).header("host", "enipoold");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let (status, headers, body) = match &self.target {
            Target::Unix(p) => roundtrip(tokio::net::UnixStream::connect(p).await?, req).await?,
            Target::Tcp(a, _) => roundtrip(tokio::net::TcpStream::connect(a).await?, req).await?,
        };
        let (listener, over) = match self.target {
            Target::Unix(_) => (Listener::Socket, "socket"),
            Target::Tcp(_, l @ Listener::MetricsOnly) => (l, "metrics listener"),
            Target::Tcp(_, l) => (l, "tcp"),
        };
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
        spec().check_response(method.as_str(), path, listener, status, content_type, &body);
        Ok(Resp { request: format!("{method} {path} ({over})"), status, headers, body })
    }

    /// `try_send`, failing the test if the transport fails.
    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Resp {
        self.try_send(method.clone(), path, headers, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, &[], None).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, &[], None).await
    }

    /// POSTs a JSON body that must itself be valid per the document.
    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        spec().check_request("POST", path, body);
        self.post_unchecked(path, body).await
    }

    /// POSTs a JSON body without checking it (for bad input).
    pub async fn post_unchecked(&self, path: &str, body: &Value) -> Resp {
        self.post_bytes(path, "application/json", serde_json::to_vec(body).unwrap()).await
    }

    /// POSTs a body the daemon may refuse before reading it all (413): written by a separate
    /// task over a raw HTTP/1.1 connection (`Connection: close`), while the answer is read, so a
    /// write the daemon cut short does not hide its answer.
    pub async fn post_large(&self, path: &str, content_type: &str, body: Vec<u8>) -> Resp {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Target::Unix(socket) = &self.target else { panic!("post_large is for the unix socket") };
        let stream = tokio::net::UnixStream::connect(socket).await.expect("connecting");
        let (mut rd, mut wr) = stream.into_split();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: enipoold\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let writer = tokio::spawn(async move {
            // The daemon may close its end once it has answered; later writes then fail.
            if wr.write_all(head.as_bytes()).await.is_ok() {
                let _ = wr.write_all(&body).await;
            }
            // Handed back, not dropped: dropping a write half shuts the socket down for
            // writing, and the daemon takes a half-closed connection for a gone client.
            wr
        });
        let mut raw = Vec::new();
        let read = async {
            let mut buf = [0u8; 8192];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                    Err(e) => return Err(e),
                }
            }
        };
        let outcome = tokio::time::timeout(DEADLINE, read).await.expect("the answer within the deadline");
        let wr = writer.await.expect("writer task");
        drop(wr);
        if let Err(e) = outcome {
            // Linux reports a reset once the daemon closed a socket holding unread request bytes;
            // what it answered before that has been read.
            assert!(!raw.is_empty(), "no answer to POST {path} ({e})");
        }
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete HTTP head");
        let head = std::str::from_utf8(&raw[..split]).expect("an ASCII head");
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
        let mut headers = HeaderMap::new();
        for line in lines {
            let (k, v) = line.split_once(':').expect("a header line");
            headers.append(
                hyper::header::HeaderName::from_bytes(k.trim().as_bytes()).expect("header name"),
                v.trim().parse().expect("header value"),
            );
        }
        let mut body = raw[split + 4..].to_vec();
        if let Some(len) = headers.get("content-length").and_then(|v| v.to_str().ok()?.parse::<usize>().ok()) {
            assert!(body.len() >= len, "answer body cut short");
            body.truncate(len);
        }
        let ct = headers.get("content-type").and_then(|v| v.to_str().ok());
        spec().check_response("POST", path, Listener::Socket, status, ct, &body);
        Resp { request: format!("POST {path} (socket, raw)"), status, headers, body: Bytes::from(body) }
    }

    pub async fn post_bytes(&self, path: &str, content_type: &str, body: Vec<u8>) -> Resp {
        self.send(Method::POST, path, &[("content-type", content_type)], Some(body)).await
    }

    /// GET /v1/pool (200).
    pub async fn pool(&self) -> Value {
        self.get("/v1/pool").await.expect(200).json()
    }

    /// GET /v1/leases with a query string ("" for all) (200).
    pub async fn leases(&self, query: &str) -> Vec<Value> {
        let path = if query.is_empty() { "/v1/leases".to_string() } else { format!("/v1/leases?{query}") };
        self.get(&path).await.expect(200).json().as_array().expect("an array").clone()
    }

    /// GET /v1/enis (200).
    pub async fn enis(&self) -> Vec<Value> {
        self.get("/v1/enis").await.expect(200).json().as_array().expect("an array").clone()
    }

    /// POSTs a lease request for `container_id`/eth0 on NET; expects 201 and returns the lease.
    pub async fn lease(&self, container_id: &str) -> Value {
        let r = self.post("/v1/leases", &lease_request(NET, container_id, "eth0")).await;
        r.expect(201).json()
    }

    /// DELETEs the lease of `container_id`/eth0 on NET; expects 204.
    pub async fn release(&self, container_id: &str) {
        self.delete(&format!("/v1/leases/{NET}/{container_id}/eth0")).await.expect(204);
    }
}

pub fn lease_request(network: &str, container_id: &str, ifname: &str) -> Value {
    json!({ "network": network, "container_id": container_id, "ifname": ifname })
}

/// `total=.. free=.. ...`: a pool document in one line, for failure messages.
pub fn pool_summary(p: &Value) -> String {
    format!(
        "mode={} enis={} prefixes={} total={} free={} leased={} cooling={} lost={} desired={} deficit={} excess={} exhausted={} last_action={}",
        p["mode"],
        p["enis"],
        p["prefixes"],
        p["total"],
        p["free"],
        p["leased"],
        p["cooling"],
        p["lost"],
        p["desired_total"],
        p["deficit"],
        p["excess"],
        p["exhausted_allocations"],
        p["last_provider_action"]
    )
}

/// Polls `probe` until it returns Ok (or DEADLINE passes: the test fails with the last state the
/// probe saw). The short sleep between polls only yields; the assertion is on state.
pub async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(state) if started.elapsed() >= DEADLINE => {
                panic!("waited {DEADLINE:?} for {what}; last seen: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Checks that `probe` keeps returning Ok over `window` (at least 5 checks).
pub async fn holds(what: &str, window: Duration, mut probe: impl AsyncFnMut() -> Result<(), String>) {
    let started = Instant::now();
    let mut checks = 0;
    while checks < 5 || started.elapsed() < window {
        if let Err(state) = probe().await {
            panic!("{what} stopped holding after {checks} checks ({:?}): {state}", started.elapsed());
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the pool document matches every `(field, value)` of `want` and the pool manager
/// has nothing left to do (deficit and excess 0); then checks that it holds for `hold` (a dozen
/// pool ticks at the test's 20 ms): the counts and every ENI and address stay as they were.
/// Unless `want` names `cooling`, it must be 0: the harness's cooldown is 0, and an address
/// released just before a read is still cooling until the next tick frees it, which then makes
/// an excess the pool gives back (a settled pool seen one tick too early).
/// Returns the pool.
pub async fn pool_settles(api: &Api, want: &[(&str, u64)], hold: Duration) -> Value {
    let cooling_named = want.iter().any(|(k, _)| *k == "cooling");
    let matches = |p: &Value| {
        want.iter().all(|(k, v)| p[*k] == *v)
            && (cooling_named || p["cooling"] == 0)
            && p["deficit"] == 0
            && p["excess"] == 0
            && p["total"] == p["desired_total"]
    };
    let what = format!("the pool to reach {want:?} with deficit 0 and excess 0");
    let reached = eventually(&what, async || {
        let p = api.pool().await;
        if matches(&p) { Ok(p) } else { Err(pool_summary(&p)) }
    })
    .await;
    let layout = eni_layout(api).await;
    holds(&format!("the pool at {want:?}"), hold, async || {
        let p = api.pool().await;
        let same = ["enis", "total", "free", "leased", "cooling", "desired_total"].iter().all(|k| p[*k] == reached[*k]);
        if !(matches(&p) && same) {
            return Err(format!("now {} (was {})", pool_summary(&p), pool_summary(&reached)));
        }
        let now = eni_layout(api).await;
        if now != layout { Err(format!("ENIs now {now:?}, were {layout:?}")) } else { Ok(()) }
    })
    .await;
    reached
}

/// Waits until the node side of the secondary ENI at device 1 (interface `ifname`, primary IP
/// `eni_ip`, subnet gateway 10.0.0.1, `--eni-mtu 9001`) is set up in `ns`: the link up with the
/// MTU, the ENI's /32, table 2 with the gateway's link route and the default route through it,
/// and `from <eni_ip> lookup 2`.
pub async fn eni_node_side_is_set_up(ns: &netns::Netns, ifname: &str, eni_ip: &str) {
    let rule = format!("from {eni_ip} lookup 2");
    eventually("the ENI's interface up, its address, table and rule", async || {
        let link = ns.try_ip(&["link", "show", ifname]);
        let routes = ns.try_ip(&["route", "show", "table", "2"]);
        let rules = ns.try_ip(&["rule", "show"]);
        let addrs = ns.try_ip(&["-4", "addr", "show", "dev", ifname]);
        let ok = link.contains("mtu 9001")
            && link.contains(",UP")
            && routes.contains(&format!("default via 10.0.0.1 dev {ifname}"))
            && routes.contains(&format!("10.0.0.1 dev {ifname}"))
            && rules.contains(&rule)
            && addrs.contains(&format!("{eni_ip}/32"));
        if ok { Ok(()) } else { Err(format!("link {link}\nroutes {routes}\nrules {rules}\naddrs {addrs}")) }
    })
    .await;
}

/// Every ENI id with its addresses.
pub async fn eni_layout(api: &Api) -> Vec<(String, Vec<String>)> {
    api.enis()
        .await
        .iter()
        .map(|e| {
            let ips = e["addresses"].as_array().unwrap().iter().map(|a| a["ip"].as_str().unwrap().to_string());
            (e["id"].as_str().unwrap().to_string(), ips.collect())
        })
        .collect()
}

/// Waits until the pool's last provider action is `action` (it is recorded just after the
/// ledger shows its effect).
pub async fn last_action_is(api: &Api, action: &str) -> Value {
    eventually(&format!("the last provider action to be {action}"), async || {
        let p = api.pool().await;
        if p["last_provider_action"]["action"] == action { Ok(p) } else { Err(pool_summary(&p)) }
    })
    .await
}

/// The value of the one sample `name` (exact series, labels included) in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}
