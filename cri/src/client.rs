//! The CRI `runtime.v1` client (k8s-cri's tonic bindings) over containerd's socket, blocking so
//! tests read like kubelet's sequence of calls. One client may be shared by many threads: each
//! call runs on the client's own runtime and the HTTP/2 channel multiplexes them.

use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::Status;
use tonic::transport::{Channel, Endpoint, Uri};

/// What each call may take before the test calls it failed (containerd's own CNI timeouts are
/// longer; a call this slow is a hang, not a measurement).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A pod as kubelet describes it to the runtime.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// hostPort -> containerPort (TCP): what the `portmap` capability carries.
    pub host_ports: Vec<(u16, u16)>,
    /// The runtime handler (containerd picks the CNI conf dir by it); empty is the default.
    pub runtime_handler: String,
}

impl PodSpec {
    pub fn new(name: &str) -> PodSpec {
        PodSpec {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}-{}", std::process::id()),
            host_ports: Vec::new(),
            runtime_handler: String::new(),
        }
    }
}

/// What PodSandboxStatus says about a sandbox.
#[derive(Clone, Debug)]
pub struct SandboxStatus {
    pub ready: bool,
    pub ip: String,
    /// The pod's network namespace (`/var/run/netns/cni-<uuid>`), from the verbose info's
    /// runtime spec.
    pub netns_path: String,
}

/// A sandbox as ListPodSandbox returns it.
#[derive(Clone, Debug)]
pub struct ListedSandbox {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub ready: bool,
}

#[derive(Debug)]
pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    /// Every sandbox goes below this cgroup (relative: inside containerd's own).
    cgroup_parent: String,
    log_dir: std::path::PathBuf,
}

impl Cri {
    /// A client for the containerd at `socket`. Connects lazily: nothing is called yet.
    pub fn new(socket: &Path, cgroup_parent: &str, log_dir: &Path) -> Cri {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
        let socket = socket.to_path_buf();
        let channel = {
            let _guard = rt.enter();
            Endpoint::try_from("http://[::]")
                .expect("static URI")
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
                }))
        };
        Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
            cgroup_parent: cgroup_parent.into(),
            log_dir: log_dir.to_path_buf(),
        }
    }

    fn call<T, F>(&self, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> Result<T, Status>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let client = self.client.clone();
        self.rt.block_on(async move {
            match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
                Ok(reply) => reply.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded(format!("no answer in {CALL_TIMEOUT:?}"))),
            }
        })
    }

    /// The runtime's name and version ("containerd", "1.6.20~ds1").
    pub fn version(&self) -> Result<(String, String), Status> {
        let v = self.call(|mut c| async move { c.version(cri::VersionRequest { version: "v1".into() }).await })?;
        Ok((v.runtime_name, v.runtime_version))
    }

    /// The runtime's NetworkReady condition: false until it has loaded a CNI config.
    pub fn network_ready(&self) -> Result<bool, Status> {
        let s = self.call(|mut c| async move { c.status(cri::StatusRequest { verbose: false }).await })?;
        let conditions = s.status.map(|s| s.conditions).unwrap_or_default();
        Ok(conditions.iter().any(|c| c.r#type == "NetworkReady" && c.status))
    }

    pub fn run_pod(&self, pod: &PodSpec) -> Result<String, Status> {
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                namespace: pod.namespace.clone(),
                attempt: 0,
            }),
            hostname: pod.name.clone(),
            log_directory: self.log_dir.join(&pod.uid).to_string_lossy().into_owned(),
            port_mappings: pod
                .host_ports
                .iter()
                .map(|&(host, container)| cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port: container.into(),
                    host_port: host.into(),
                    host_ip: String::new(),
                })
                .collect(),
            linux: Some(cri::LinuxPodSandboxConfig { cgroup_parent: self.cgroup_parent.clone(), ..Default::default() }),
            ..Default::default()
        };
        let handler = pod.runtime_handler.clone();
        let reply = self.call(|mut c| async move {
            c.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config), runtime_handler: handler }).await
        })?;
        Ok(reply.pod_sandbox_id)
    }

    pub fn status(&self, id: &str) -> Result<SandboxStatus, Status> {
        let id = id.to_string();
        let reply = self.call(|mut c| async move {
            c.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id, verbose: true }).await
        })?;
        let status = reply.status.ok_or_else(|| Status::internal("PodSandboxStatus without a status"))?;
        let info: serde_json::Value =
            reply.info.get("info").and_then(|i| serde_json::from_str(i).ok()).unwrap_or_default();
        Ok(SandboxStatus {
            ready: status.state == cri::PodSandboxState::SandboxReady as i32,
            ip: status.network.map(|n| n.ip).unwrap_or_default(),
            netns_path: info["runtimeSpec"]["linux"]["namespaces"]
                .as_array()
                .and_then(|nss| nss.iter().find(|ns| ns["type"] == "network"))
                .and_then(|ns| ns["path"].as_str())
                .unwrap_or_default()
                .to_string(),
        })
    }

    pub fn stop(&self, id: &str) -> Result<(), Status> {
        let id = id.to_string();
        self.call(|mut c| async move { c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id }).await })
            .map(drop)
    }

    pub fn remove(&self, id: &str) -> Result<(), Status> {
        let id = id.to_string();
        self.call(
            |mut c| async move { c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }).await },
        )
        .map(drop)
    }

    pub fn list(&self) -> Result<Vec<ListedSandbox>, Status> {
        let reply =
            self.call(|mut c| async move { c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await })?;
        Ok(reply
            .items
            .into_iter()
            .map(|s| {
                let meta = s.metadata.unwrap_or_default();
                ListedSandbox {
                    id: s.id,
                    name: meta.name,
                    namespace: meta.namespace,
                    ready: s.state == cri::PodSandboxState::SandboxReady as i32,
                }
            })
            .collect())
    }
}
