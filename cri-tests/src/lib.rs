//! A small blocking CRI v1 client for the CRI tests: drives the private containerd of
//! `hack/cri/start` the way kubelet does (RunPodSandbox with a RuntimeClass handler, then
//! Create/Start/Stop/Remove containers), and cleans up each pod it made.
//!
//! Env: `CRI_SOCK` (default /tmp/runvz-cri/containerd.sock), `CRI_HANDLER` (runvz or runc,
//! default runvz), `CRI_RUNTIME_BIN` (the handler's binary, for `runvz beancounters`),
//! `CRI_IMAGE` (default localhost/runvz-cri/busybox:1).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1;

/// Parent cgroup of every test pod (cgroupfs driver); hack/cri/stop checks it is empty.
pub const CGROUP_PARENT: &str = "runvz-cri";
/// Where the runc.v2 shim keeps the runtime's state for the CRI namespace (`--root`).
pub const RUNTIME_ROOT: &str = "/run/containerd/runc/k8s.io";

pub fn handler() -> String {
    std::env::var("CRI_HANDLER").unwrap_or_else(|_| "runvz".into())
}

pub fn is_runvz() -> bool {
    handler() == "runvz"
}

fn image() -> String {
    std::env::var("CRI_IMAGE").unwrap_or_else(|_| "localhost/runvz-cri/busybox:1".into())
}

/// A blocking CRI client (one tokio runtime per test).
pub struct Cri {
    rt: tokio::runtime::Runtime,
    rs: RuntimeServiceClient<Channel>,
}

impl Cri {
    pub fn connect() -> Result<Cri> {
        let sock =
            std::env::var("CRI_SOCK").unwrap_or_else(|_| "/tmp/runvz-cri/containerd.sock".into());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let channel = rt
            .block_on(async {
                Endpoint::try_from("http://[::]:50051")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let sock = sock.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(sock).await?,
                            ))
                        }
                    }))
                    .await
            })
            .context("connect to the CRI socket (is hack/cri/start running?)")?;
        Ok(Cri {
            rt,
            rs: RuntimeServiceClient::new(channel),
        })
    }

    fn call<T, F>(&self, what: &str, f: F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        match self.rt.block_on(f) {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => bail!("{what}: {:?}: {}", s.code(), s.message()),
        }
    }

    pub fn rs(&self) -> RuntimeServiceClient<Channel> {
        self.rs.clone()
    }

    /// RunPodSandbox with the handler of `CRI_HANDLER`; `f` adjusts the config first.
    pub fn pod(&self, name: &str, f: impl FnOnce(&mut cri::PodSandboxConfig)) -> Result<Pod<'_>> {
        let uid = format!("{name}-{}-{}", std::process::id(), handler());
        let log_dir = PathBuf::from(format!("/tmp/runvz-cri/logs/{uid}"));
        let cgroup_parent = format!("/{CGROUP_PARENT}/{uid}");
        let mut config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: uid.clone(),
                namespace: "cri-tests".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            labels: HashMap::from([("cri-tests".to_string(), uid.clone())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(kubelet_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        f(&mut config);
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler(),
        };
        let id = self
            .call("RunPodSandbox", self.rs().run_pod_sandbox(req))?
            .pod_sandbox_id;
        Ok(Pod {
            cri: self,
            id,
            config,
            cgroup_parent,
            log_dir,
        })
    }
}

/// A pod sandbox; dropping it stops and removes it (with its containers) and the pod cgroup
/// (as kubelet does), and checks that nothing of it is left.
pub struct Pod<'a> {
    pub cri: &'a Cri,
    pub id: String,
    pub config: cri::PodSandboxConfig,
    pub cgroup_parent: String,
    pub log_dir: PathBuf,
}

/// kubelet's defaults: pod network and IPC, the container's own PID namespace.
pub fn kubelet_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        pid: cri::NamespaceMode::Container as i32,
        ..Default::default()
    }
}

/// The container's Linux security context (always present in `container_config`).
pub fn security(cfg: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The container's Linux resources (always present in `container_config`).
pub fn resources(cfg: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerResources {
    cfg.linux
        .get_or_insert_with(Default::default)
        .resources
        .get_or_insert_with(Default::default)
}

/// The pod's namespace options.
pub fn pod_namespaces(p: &mut cri::PodSandboxConfig) -> &mut cri::NamespaceOption {
    p.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(kubelet_namespaces)
}

pub fn container_config(name: &str, args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image(),
            ..Default::default()
        }),
        command: args.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources::default()),
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

impl Pod<'_> {
    /// CreateContainer (busybox image) running `args`; `f` adjusts the config first.
    pub fn create(
        &self,
        name: &str,
        args: &[&str],
        f: impl FnOnce(&mut cri::ContainerConfig),
    ) -> Result<String> {
        let mut config = container_config(name, args);
        f(&mut config);
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: self.id.clone(),
            config: Some(config),
            sandbox_config: Some(self.config.clone()),
        };
        Ok(self
            .cri
            .call("CreateContainer", self.cri.rs().create_container(req))?
            .container_id)
    }

    pub fn start(&self, id: &str) -> Result<()> {
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        self.cri
            .call("StartContainer", self.cri.rs().start_container(req))
            .map(|_| ())
    }

    /// Create + start.
    pub fn run(
        &self,
        name: &str,
        args: &[&str],
        f: impl FnOnce(&mut cri::ContainerConfig),
    ) -> Result<String> {
        let id = self.create(name, args, f)?;
        self.start(&id)?;
        Ok(id)
    }

    pub fn status(&self, id: &str) -> Result<cri::ContainerStatus> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.cri
            .call("ContainerStatus", self.cri.rs().container_status(req))?
            .status
            .context("ContainerStatus: no status")
    }

    /// Waits (up to `secs`) until the container has exited; returns its status.
    pub fn wait_exited(&self, id: &str, secs: u64) -> Result<cri::ContainerStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.status(id)?;
            if s.state == cri::ContainerState::ContainerExited as i32 {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("container {id} still in state {} after {secs}s", s.state);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<cri::ExecSyncResponse> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        };
        self.cri.call("ExecSync", self.cri.rs().exec_sync(req))
    }

    /// ExecSync that must exit 0; returns trimmed stdout.
    pub fn sh(&self, id: &str, script: &str) -> Result<String> {
        let r = self.exec_sync(id, &["sh", "-c", script])?;
        if r.exit_code != 0 {
            bail!(
                "`{script}` exited {}: {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&r.stdout).trim().to_string())
    }

    pub fn stop(&self, id: &str, timeout: i64) -> Result<()> {
        let req = cri::StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        self.cri
            .call("StopContainer", self.cri.rs().stop_container(req))
            .map(|_| ())
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        let req = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.cri
            .call("RemoveContainer", self.cri.rs().remove_container(req))
            .map(|_| ())
    }

    pub fn update(&self, id: &str, res: cri::LinuxContainerResources) -> Result<()> {
        let req = cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(res),
            ..Default::default()
        };
        self.cri
            .call(
                "UpdateContainerResources",
                self.cri.rs().update_container_resources(req),
            )
            .map(|_| ())
    }

    pub fn stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let req = cri::ContainerStatsRequest {
            container_id: id.into(),
        };
        self.cri
            .call("ContainerStats", self.cri.rs().container_stats(req))?
            .stats
            .context("ContainerStats: no stats")
    }

    pub fn containers(&self) -> Result<Vec<cri::Container>> {
        let req = cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: self.id.clone(),
                ..Default::default()
            }),
        };
        Ok(self
            .cri
            .call("ListContainers", self.cri.rs().list_containers(req))?
            .containers)
    }

    /// A v1 cgroup file of a container of this pod, on the host.
    pub fn cgroup_file(&self, ctrl: &str, id: &str, file: &str) -> Result<String> {
        let p = Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join(self.cgroup_parent.trim_start_matches('/'))
            .join(id)
            .join(file);
        Ok(std::fs::read_to_string(&p)
            .with_context(|| format!("read {}", p.display()))?
            .trim()
            .to_string())
    }

    /// The container's log file (CRI format: `<time> stdout F <line>`), only the text.
    pub fn log_lines(&self, name: &str) -> Result<Vec<String>> {
        let p = self.log_dir.join(format!("{name}.log"));
        let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        Ok(text
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap_or("").to_string())
            .collect())
    }

    fn cleanup(&self) -> Result<()> {
        let rs = self.cri.rs();
        self.cri.call(
            "StopPodSandbox",
            rs.clone().stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: self.id.clone(),
            }),
        )?;
        self.cri.call(
            "RemovePodSandbox",
            rs.clone().remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: self.id.clone(),
            }),
        )?;
        let left = self.containers()?;
        if !left.is_empty() {
            bail!(
                "pod {}: {} container(s) left after RemovePodSandbox",
                self.id,
                left.len()
            );
        }
        // kubelet owns the pod cgroup: remove it, which fails if a container's cgroup is left.
        // Every hierarchy (runc also makes one under name=systemd), and the cgroup2 root itself.
        let mut roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        roots.push(PathBuf::from("/sys/fs/cgroup"));
        for root in roots {
            let d = root.join(self.cgroup_parent.trim_start_matches('/'));
            if d.is_dir() {
                remove_pod_cgroup(&d)?;
            }
        }
        if self.log_dir.exists() {
            std::fs::remove_dir_all(&self.log_dir)?;
        }
        Ok(())
    }
}

/// Removes a pod cgroup, waiting up to 2 s for the containers' cgroups to go. runc 1.1 sometimes
/// leaves a container's (empty) cgroup in the name=systemd or cgroup2 hierarchy: that is
/// reported and removed for the reference handler, and a failure for runvz.
fn remove_pod_cgroup(d: &Path) -> Result<()> {
    for _ in 0..20 {
        if std::fs::remove_dir(d).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let children: Vec<PathBuf> = std::fs::read_dir(d)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    if is_runvz() || children.is_empty() {
        bail!("pod cgroup {} not empty: {children:?}", d.display());
    }
    for c in &children {
        eprintln!(
            "NOTE: handler {} left the cgroup {}",
            handler(),
            c.display()
        );
        std::fs::remove_dir(c).with_context(|| format!("remove {}", c.display()))?;
    }
    std::fs::remove_dir(d).with_context(|| format!("remove {}", d.display()))
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            if std::thread::panicking() {
                eprintln!("cleanup: {e:#}");
            } else {
                panic!("cleanup: {e:#}");
            }
        }
    }
}

/// `<runtime> --root /run/containerd/runc/k8s.io beancounters ID --format json`, as an operator runs it.
pub fn beancounters(id: &str) -> Result<String> {
    let bin =
        std::env::var("CRI_RUNTIME_BIN").context("CRI_RUNTIME_BIN (the runvz binary) not set")?;
    let out = std::process::Command::new(&bin)
        .args([
            "--root",
            RUNTIME_ROOT,
            "beancounters",
            id,
            "--format",
            "json",
        ])
        .output()
        .with_context(|| format!("run {bin}"))?;
    if !out.status.success() {
        bail!(
            "{bin} beancounters {id}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Output of an Exec through containerd's streaming server.
pub struct Streamed {
    /// stdout (with a tty: the terminal's output, stderr merged).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The v4 error channel's final status (`{"status":"Success",...}` on exit code 0).
    pub status: String,
}

impl Pod<'_> {
    /// CRI Exec (as `kubectl exec`), then the streaming URL over a websocket
    /// (`v4.channel.k8s.io`: one byte of channel, then data). The streaming server listens on
    /// 127.0.0.1 inside containerd's network namespace: the TCP connection is made there.
    pub fn exec_streamed(&self, id: &str, cmd: &[&str], tty: bool) -> Result<Streamed> {
        let req = cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            // as `kubectl exec -t` does: containerd 1.6 drops a tty's output without stdin
            stdin: tty,
            stdout: true,
            stderr: !tty,
        };
        let url = self.cri.call("Exec", self.cri.rs().exec(req))?.url;
        let hostport = url
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
            .with_context(|| format!("Exec: unexpected URL {url}"))?
            .to_string();
        let tcp = connect_in_netns(&hostport)?;
        use tungstenite::client::IntoClientRequest;
        let mut wsreq = url.replacen("http://", "ws://", 1).into_client_request()?;
        wsreq
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "v4.channel.k8s.io".parse()?);
        let (mut ws, _) = tungstenite::client::client(wsreq, tcp)
            .map_err(|e| anyhow::anyhow!("websocket to {url}: {e}"))?;
        let mut out = Streamed {
            stdout: vec![],
            stderr: vec![],
            status: String::new(),
        };
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Binary(d)) if !d.is_empty() => match d[0] {
                    1 => out.stdout.extend_from_slice(&d[1..]),
                    2 => out.stderr.extend_from_slice(&d[1..]),
                    3 => out.status.push_str(&String::from_utf8_lossy(&d[1..])),
                    _ => {}
                },
                Ok(tungstenite::Message::Close(_)) => break,
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => break,
                // the server may drop the TCP connection without a close frame once it is done
                Err(_) if !out.status.is_empty() => break,
                Err(e) => bail!("websocket read: {e}"),
            }
        }
        Ok(out)
    }
}

/// A TCP connection made from inside containerd's network namespace (`CRI_NETNS`, default
/// runvz-cri), by a thread that enters it; the socket stays in that namespace.
fn connect_in_netns(hostport: &str) -> Result<std::net::TcpStream> {
    let ns = std::env::var("CRI_NETNS").unwrap_or_else(|_| "runvz-cri".into());
    let hostport = hostport.to_string();
    std::thread::spawn(move || -> Result<std::net::TcpStream> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("open netns {ns}"))?;
        // SAFETY: setns on a valid namespace fd; it changes only this short-lived thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {ns}: {}", std::io::Error::last_os_error());
        }
        Ok(std::net::TcpStream::connect(&hostport)?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}
