//! runc's command line.

pub mod log;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "runvz",
    disable_version_flag = true,
    about = "OCI container runtime with OpenVZ resource semantics"
)]
pub struct Cli {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = "/run/runvz")]
    pub root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted for runc compatibility: cgroupsPath "slice:prefix:name" is mapped to cgroupfs.
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility (true|false|auto); runvz runs as root.
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    pub rootless: Option<String>,
    /// The criu binary for checkpoint/restore (a path, or a name looked up in PATH).
    #[arg(long, global = true)]
    pub criu: Option<PathBuf>,
    /// Print the version.
    #[arg(short = 'v', long)]
    pub version: bool,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

/// CRIU options checkpoint and restore share (runc's flags).
#[derive(clap::Args, Debug)]
pub struct CriuArgs {
    /// Path for saving criu image files.
    #[arg(long = "image-path", default_value = "checkpoint")]
    pub image_path: PathBuf,
    /// Path for saving work files and logs (default: the image path).
    #[arg(long = "work-path")]
    pub work_path: Option<PathBuf>,
    #[command(flatten)]
    pub flags: CriuFlagArgs,
    /// Accepted for runc compatibility.
    #[arg(long = "auto-dedup")]
    pub auto_dedup: bool,
}

/// What criu may dump and how (checkpoint, restore and migrate share them).
#[derive(clap::Args, Debug)]
pub struct CriuFlagArgs {
    /// Allow open TCP connections.
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Allow external unix sockets.
    #[arg(long = "ext-unix-sk")]
    pub ext_unix_sk: bool,
    /// Allow shell jobs.
    #[arg(long = "shell-job")]
    pub shell_job: bool,
    /// Handle file locks.
    #[arg(long = "file-locks")]
    pub file_locks: bool,
    /// Cgroups mode: none, props, soft, full or strict (default: criu's).
    #[arg(long = "manage-cgroups-mode", value_parser = ["none", "props", "soft", "full", "strict"])]
    pub manage_cgroups_mode: Option<String>,
    /// Use userfaultfd to lazily restore memory pages.
    #[arg(long = "lazy-pages")]
    pub lazy_pages: bool,
    /// Create this namespace empty on restore and do not save its properties ("network":
    /// runc always does this; runvz saves the container's addresses, routes and firewall
    /// unless asked not to).
    #[arg(long = "empty-ns", value_parser = ["network"])]
    pub empty_ns: Option<String>,
}

/// Podman repeats flags (`--leave-running --leave-running`): the last one wins.
#[derive(clap::Args, Debug)]
#[command(args_override_self = true)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub criu: CriuArgs,
    /// Path of a previous (pre-dump) image, relative to the image path.
    #[arg(long = "parent-path")]
    pub parent_path: Option<PathBuf>,
    /// Leave the process running after checkpointing.
    #[arg(long = "leave-running")]
    pub leave_running: bool,
    /// Skip TCP connections still being established (in flight).
    #[arg(long = "tcp-skip-in-flight")]
    pub tcp_skip_in_flight: bool,
    /// Allow criu to link-remap deleted but open files.
    #[arg(long = "link-remap")]
    pub link_remap: bool,
    /// Dump memory only, leave the container running (needs soft-dirty tracking).
    #[arg(long = "pre-dump")]
    pub pre_dump: bool,
    /// ADDRESS:PORT of a page server.
    #[arg(long = "page-server")]
    pub page_server: Option<String>,
    /// Fd criu writes \0 to when the lazy-pages server is ready.
    #[arg(long = "status-fd")]
    pub status_fd: Option<i32>,
    pub id: String,
}

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The secret both ends share (mode 0600, at least 16 bytes).
    #[arg(long = "token-file")]
    pub token_file: PathBuf,
    /// The page server's port (default: a free one).
    #[arg(long = "page-server-port")]
    pub page_server_port: Option<u16>,
    /// The rootfs is on storage the destination sees at the same path: do not copy it.
    #[arg(long = "shared-rootfs")]
    pub shared_rootfs: bool,
    /// Dump the images below this directory (default: the container's state directory).
    #[arg(long = "work-path")]
    pub work_path: Option<PathBuf>,
    /// criu's flags; --lazy-pages is post-copy: the container runs there at once and its
    /// memory pages are pulled on demand from a criu page server here (needs
    /// fs.pipe-max-size >= 4 MiB and userfaultfd).
    #[command(flatten)]
    pub flags: CriuFlagArgs,
    /// Report format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
    pub id: String,
    /// HOST:PORT of the receiving runvz.
    pub dest: String,
}

#[derive(clap::Args, Debug)]
pub struct MigrateReceiveArgs {
    /// ADDRESS:PORT to listen on (port 0: a free one; the address is printed).
    #[arg(long)]
    pub listen: String,
    /// The secret both ends share (mode 0600, at least 16 bytes).
    #[arg(long = "token-file")]
    pub token_file: PathBuf,
    /// Where received bundles are made (BUNDLES/ID: config.json and rootfs).
    #[arg(long, default_value = "/var/lib/runvz/migrated")]
    pub bundles: PathBuf,
    /// Put received containers' cgroups below this one (for two roots on one host).
    #[arg(long = "cgroup-prefix")]
    pub cgroup_prefix: Option<String>,
    /// Receive one container, then exit with its result.
    #[arg(long)]
    pub once: bool,
}

#[derive(clap::Args, Debug)]
#[command(args_override_self = true)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub criu: CriuArgs,
    /// Path to the bundle directory.
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    /// Do not wait for the restored container.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// File to write the restored init's PID to.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to (terminal: true).
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long = "no-subreaper")]
    pub no_subreaper: bool,
    /// Accepted for runc compatibility (criu restores the root as it was).
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "lsm-profile")]
    pub lsm_profile: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long = "lsm-mount-context")]
    pub lsm_mount_context: Option<String>,
    pub id: String,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Path to the bundle directory.
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket to send the pty master to (terminal: true).
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Unix socket to send a pidfd of the init to.
    #[arg(long = "pidfd-socket")]
    pub pidfd_socket: Option<PathBuf>,
    /// File to write the container init's PID to.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root.
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Do not create a new session keyring (runvz never does).
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    /// Pass N extra fds (3 .. 3+N-1) to the process.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: i32,
    /// Container ID.
    pub id: String,
}

/// runc's `exec` flags.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    #[arg(long)]
    pub cwd: Option<String>,
    /// KEY=VALUE (repeatable).
    #[arg(short = 'e', long)]
    pub env: Vec<String>,
    #[arg(short = 't', long)]
    pub tty: bool,
    /// uid[:gid]
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// A process.json to run (instead of args and the overrides).
    #[arg(short = 'p', long)]
    pub process: Option<PathBuf>,
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Accepted for runc compatibility (no SELinux here).
    #[arg(long = "process-label")]
    pub process_label: Option<String>,
    /// Accepted for runc compatibility (no AppArmor here).
    #[arg(long)]
    pub apparmor: Option<String>,
    #[arg(long = "no-new-privs")]
    pub no_new_privs: bool,
    /// Add a capability (repeatable).
    #[arg(short = 'c', long)]
    pub cap: Vec<String>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: i32,
    /// Join an existing sub-cgroup of the container's cgroup: [CONTROLLER[,CONTROLLER]:]PATH
    /// (repeatable).
    #[arg(long)]
    pub cgroup: Vec<String>,
    /// Accepted for runc compatibility; exec into a paused container is refused all the same
    /// (the process would start frozen).
    #[arg(long = "ignore-paused")]
    pub ignore_paused: bool,
    pub id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `runvz set ID --numproc B:L --physpages B:L --cpuunits N ...`
#[derive(clap::Args, Debug)]
pub struct SetArgs {
    pub id: String,
    #[command(flatten)]
    pub ub: UbFlags,
}

/// runc's `update` flags, and the OpenVZ ones `set` takes.
#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    pub id: String,
    /// linux.resources JSON to merge ('-' reads stdin).
    #[arg(short = 'r', long)]
    pub resources: Option<String>,
    #[arg(long = "blkio-weight")]
    pub blkio_weight: Option<u16>,
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<u64>,
    #[arg(long = "cpu-quota")]
    pub cpu_quota: Option<i64>,
    #[arg(long = "cpu-share")]
    pub cpu_share: Option<u64>,
    #[arg(long = "cpu-rt-period")]
    pub cpu_rt_period: Option<u64>,
    #[arg(long = "cpu-rt-runtime")]
    pub cpu_rt_runtime: Option<i64>,
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    /// Memory limit (bytes, or with k/m/g).
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long = "memory-reservation")]
    pub memory_reservation: Option<String>,
    /// Memory plus swap ("-1" = unlimited).
    #[arg(long = "memory-swap")]
    pub memory_swap: Option<String>,
    #[arg(long = "kernel-memory")]
    pub kernel_memory: Option<String>,
    #[arg(long = "kernel-memory-tcp")]
    pub kernel_memory_tcp: Option<String>,
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<i64>,
    #[command(flatten)]
    pub ub: UbFlags,
}

/// The vzctl-style OpenVZ flags of `set` and `update`.
#[derive(clap::Args, Debug)]
pub struct UbFlags {
    #[arg(long)]
    pub kmemsize: Option<String>,
    #[arg(long)]
    pub lockedpages: Option<String>,
    #[arg(long)]
    pub privvmpages: Option<String>,
    #[arg(long)]
    pub shmpages: Option<String>,
    #[arg(long)]
    pub numproc: Option<String>,
    #[arg(long)]
    pub physpages: Option<String>,
    #[arg(long)]
    pub vmguarpages: Option<String>,
    #[arg(long)]
    pub oomguarpages: Option<String>,
    #[arg(long)]
    pub numtcpsock: Option<String>,
    #[arg(long)]
    pub numflock: Option<String>,
    #[arg(long)]
    pub numpty: Option<String>,
    #[arg(long)]
    pub numsiginfo: Option<String>,
    #[arg(long)]
    pub tcpsndbuf: Option<String>,
    #[arg(long)]
    pub tcprcvbuf: Option<String>,
    #[arg(long)]
    pub othersockbuf: Option<String>,
    #[arg(long)]
    pub dgramrcvbuf: Option<String>,
    #[arg(long)]
    pub numothersock: Option<String>,
    #[arg(long)]
    pub dcachesize: Option<String>,
    #[arg(long)]
    pub numfile: Option<String>,
    #[arg(long)]
    pub numiptent: Option<String>,
    #[arg(long)]
    pub swappages: Option<String>,
    /// VSwap: physpages 0:SIZE.
    #[arg(long)]
    pub ram: Option<String>,
    /// VSwap: swappages 0:SIZE.
    #[arg(long)]
    pub swap: Option<String>,
    #[arg(long)]
    pub cpuunits: Option<String>,
    #[arg(long)]
    pub cpulimit: Option<String>,
    #[arg(long)]
    pub cpus: Option<String>,
    #[arg(long)]
    pub ioprio: Option<String>,
    #[arg(long)]
    pub iolimit: Option<String>,
    #[arg(long)]
    pub iopslimit: Option<String>,
    /// Disk space soft[:hard] in 1 KiB blocks (K/M/G/T suffixes); raised online.
    #[arg(long)]
    pub diskspace: Option<String>,
    /// Disk inodes soft[:hard].
    #[arg(long)]
    pub diskinodes: Option<String>,
}

impl UbFlags {
    /// The changes as (annotation key without `io.runvz.`, value).
    pub fn changes(&self) -> Vec<(String, String)> {
        let ub = [
            ("kmemsize", &self.kmemsize),
            ("lockedpages", &self.lockedpages),
            ("privvmpages", &self.privvmpages),
            ("shmpages", &self.shmpages),
            ("numproc", &self.numproc),
            ("physpages", &self.physpages),
            ("vmguarpages", &self.vmguarpages),
            ("oomguarpages", &self.oomguarpages),
            ("numtcpsock", &self.numtcpsock),
            ("numflock", &self.numflock),
            ("numpty", &self.numpty),
            ("numsiginfo", &self.numsiginfo),
            ("tcpsndbuf", &self.tcpsndbuf),
            ("tcprcvbuf", &self.tcprcvbuf),
            ("othersockbuf", &self.othersockbuf),
            ("dgramrcvbuf", &self.dgramrcvbuf),
            ("numothersock", &self.numothersock),
            ("dcachesize", &self.dcachesize),
            ("numfile", &self.numfile),
            ("numiptent", &self.numiptent),
            ("swappages", &self.swappages),
        ];
        let other = [
            ("ram", &self.ram),
            ("swap", &self.swap),
            ("cpuunits", &self.cpuunits),
            ("cpulimit", &self.cpulimit),
            ("cpus", &self.cpus),
            ("ioprio", &self.ioprio),
            ("iolimit", &self.iolimit),
            ("iopslimit", &self.iopslimit),
            ("diskspace", &self.diskspace),
            ("diskinodes", &self.diskinodes),
        ];
        // The VSwap shortcuts first, so that explicit ub values win, as in annotations.
        let mut out: Vec<(String, String)> = other
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
            .collect();
        out.extend(
            ub.iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (format!("ub.{k}"), v.clone()))),
        );
        out
    }
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a container (it waits for `start`).
    Create(CreateArgs),
    /// Run a process in a running container.
    Exec(Box<ExecArgs>),
    /// Freeze every process of a running container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// List the container's processes (host PIDs with --format json; else ps(1) lines).
    Ps {
        #[arg(short = 'f', long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        id: String,
        /// ps(1) options (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Print the OCI features document: what this runtime supports.
    Features,
    /// Report the container's resource usage (every --interval, or once with --stats) and its
    /// OOM kills, as runc's JSON events, until it stops.
    Events {
        /// Print one stats event and exit.
        #[arg(long)]
        stats: bool,
        /// Time between stats events (a Go duration: 5s, 500ms, 1m).
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        interval: std::time::Duration,
        id: String,
    },
    /// Start a created container.
    Start { id: String },
    /// Print the state of a container as JSON.
    State { id: String },
    /// Send a signal to the container's init (default SIGTERM).
    Kill {
        /// Signal every process in the container.
        #[arg(short = 'a', long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container.
    Delete {
        /// Kill a running container first.
        #[arg(short = 'f', long)]
        force: bool,
        id: String,
    },
    /// Create and start a container; wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Do not wait for the container.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Accepted for runc compatibility.
        #[arg(long)]
        keep: bool,
        /// Accepted for runc compatibility.
        #[arg(long = "no-subreaper")]
        no_subreaper: bool,
    },
    /// Checkpoint a running container with CRIU (it stops unless --leave-running).
    Checkpoint(Box<CheckpointArgs>),
    /// Restore a container from a CRIU checkpoint.
    Restore(Box<RestoreArgs>),
    /// Move a running container to a `runvz migrate-receive` at DEST (HOST:PORT): the rootfs
    /// is copied while it runs, then it is frozen, dumped, sent and restored there; the source
    /// is removed once it runs at DEST, and thawed if anything fails before.
    Migrate(Box<MigrateArgs>),
    /// Receive containers sent by `runvz migrate` and restore them into this root.
    MigrateReceive(Box<MigrateReceiveArgs>),
    /// List containers.
    List {
        #[arg(short = 'f', long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Show the OpenVZ beancounters (/proc/user_beancounters) of live containers.
    Beancounters {
        /// Containers to show (default: all).
        ids: Vec<String>,
        #[arg(short = 'f', long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
    /// Change OpenVZ limits of a running container at once (vzctl set style).
    Set(Box<SetArgs>),
    /// Change the resources of a running container (runc's flags, or --resources JSON).
    Update(Box<UpdateArgs>),
    /// Write a default config.json.
    Spec {
        #[arg(short = 'b', long, default_value = ".")]
        bundle: PathBuf,
    },
}

/// A Go duration as runc's flags take it (`5s`, `1.5s`, `500ms`, `1m30s`); it must be positive.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("invalid duration {s:?}: expected e.g. 5s, 500ms or 1m");
    let mut rest = s.trim();
    let mut total = 0f64;
    if rest == "0" {
        return Err("duration interval must be greater than 0".into());
    }
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * unit;
        rest = &rest[u..];
    }
    if total <= 0.0 || !total.is_finite() {
        return Err("duration interval must be greater than 0".into());
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

/// A byte size as runc takes it: a number with an optional k/m/g/t (powers of 1024), or -1.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.trim_end_matches('b');
    let (num, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        Some('t') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: i64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with an optional k, m, g or t")
    })?;
    n.checked_mul(1 << shift)
        .filter(|v| *v >= 0)
        .ok_or_else(|| format!("invalid size {s:?}"))
}

impl UpdateArgs {
    /// The linux.resources patch these flags describe.
    pub fn patch(&self) -> Result<serde_json::Value, String> {
        let mut p = match &self.resources {
            Some(src) => {
                let data = if src == "-" {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                        .map_err(|e| format!("--resources -: {e}"))?;
                    s
                } else {
                    std::fs::read_to_string(src).map_err(|e| format!("--resources {src}: {e}"))?
                };
                serde_json::from_str(&data).map_err(|e| format!("--resources: {e}"))?
            }
            None => serde_json::json!({}),
        };
        let mut set = |ptr: &str, v: serde_json::Value| {
            let mut cur = &mut p;
            for part in ptr.split('/').filter(|x| !x.is_empty()) {
                if !cur.is_object() {
                    *cur = serde_json::json!({});
                }
                cur = cur
                    .as_object_mut()
                    .expect("object")
                    .entry(part)
                    .or_insert(serde_json::Value::Null);
            }
            *cur = v;
        };
        let b = |s: &Option<String>| s.as_deref().map(parse_bytes).transpose();
        if let Some(v) = self.blkio_weight {
            set("/blockIO/weight", v.into());
        }
        if let Some(v) = self.cpu_period {
            set("/cpu/period", v.into());
        }
        if let Some(v) = self.cpu_quota {
            set("/cpu/quota", v.into());
        }
        if let Some(v) = self.cpu_share {
            set("/cpu/shares", v.into());
        }
        if let Some(v) = self.cpu_rt_period {
            set("/cpu/realtimePeriod", v.into());
        }
        if let Some(v) = self.cpu_rt_runtime {
            set("/cpu/realtimeRuntime", v.into());
        }
        if let Some(v) = &self.cpuset_cpus {
            set("/cpu/cpus", v.clone().into());
        }
        if let Some(v) = &self.cpuset_mems {
            set("/cpu/mems", v.clone().into());
        }
        if let Some(v) = b(&self.memory)? {
            set("/memory/limit", v.into());
        }
        if let Some(v) = b(&self.memory_reservation)? {
            set("/memory/reservation", v.into());
        }
        if let Some(v) = b(&self.memory_swap)? {
            set("/memory/swap", v.into());
        }
        if let Some(v) = b(&self.kernel_memory)? {
            set("/memory/kernel", v.into());
        }
        if let Some(v) = b(&self.kernel_memory_tcp)? {
            set("/memory/kernelTCP", v.into());
        }
        if let Some(v) = self.pids_limit {
            set("/pids/limit", v.into());
        }
        Ok(p)
    }
}

/// Long flags runc (Go's flag package) also accepts with a single dash.
const LONG: &[&str] = &[
    "root",
    "log",
    "log-format",
    "debug",
    "systemd-cgroup",
    "rootless",
    "criu",
    "image-path",
    "work-path",
    "parent-path",
    "leave-running",
    "tcp-established",
    "tcp-skip-in-flight",
    "ext-unix-sk",
    "shell-job",
    "file-locks",
    "link-remap",
    "pre-dump",
    "page-server",
    "status-fd",
    "lazy-pages",
    "manage-cgroups-mode",
    "empty-ns",
    "auto-dedup",
    "lsm-profile",
    "lsm-mount-context",
    "token-file",
    "page-server-port",
    "shared-rootfs",
    "listen",
    "bundles",
    "cgroup-prefix",
    "once",
    "bundle",
    "console-socket",
    "pidfd-socket",
    "pid-file",
    "no-pivot",
    "no-new-keyring",
    "preserve-fds",
    "detach",
    "force",
    "all",
    "format",
    "quiet",
    "keep",
    "no-subreaper",
    "version",
    "resources",
    "memory",
    "memory-swap",
    "memory-reservation",
    "kernel-memory",
    "kernel-memory-tcp",
    "pids-limit",
    "cpu-share",
    "cpu-quota",
    "cpu-period",
    "cpuset-cpus",
    "cpuset-mems",
    "blkio-weight",
    "cpu-rt-period",
    "cpu-rt-runtime",
    "cwd",
    "env",
    "tty",
    "user",
    "additional-gids",
    "process",
    "process-label",
    "apparmor",
    "no-new-privs",
    "cap",
    "cgroup",
    "stats",
    "interval",
    "ignore-paused",
    "help",
];

/// Flags of `exec` that take a separate value, to find where its ID stands.
const EXEC_VALUE_FLAGS: &[&str] = &[
    "--console-socket",
    "--cwd",
    "--env",
    "-e",
    "--user",
    "-u",
    "--additional-gids",
    "-g",
    "--process",
    "-p",
    "--pid-file",
    "--process-label",
    "--apparmor",
    "--cap",
    "-c",
    "--preserve-fds",
    "--cgroup",
    "-console-socket",
    "-cwd",
    "-env",
    "-user",
    "-additional-gids",
    "-process",
    "-pid-file",
    "-process-label",
    "-apparmor",
    "-cap",
    "-preserve-fds",
    "-cgroup",
];

/// Index of the first argument after `exec ... ID`: the user's command, never rewritten.
fn exec_command_start(args: &[String]) -> Option<usize> {
    let e = args.iter().position(|a| a == "exec")?;
    let mut i = e + 1;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            return Some(i + 2);
        }
        if a.starts_with('-') {
            i += if EXEC_VALUE_FLAGS.contains(&a.as_str()) {
                2
            } else {
                1
            };
            continue;
        }
        return Some(i + 1); // args[i] is the ID
    }
    None
}

/// Rewrite `-long-flag[=v]` into `--long-flag[=v]` as runc's callers sometimes write it.
pub fn normalize_args(args: Vec<String>) -> Vec<String> {
    let mut seen_sep = false;
    let user_cmd = exec_command_start(&args).unwrap_or(usize::MAX);
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if i == 0
                || i >= user_cmd
                || seen_sep
                || a.starts_with("--")
                || !a.starts_with('-')
                || a.len() < 3
            {
                if a == "--" {
                    seen_sep = true;
                }
                return a;
            }
            let name = a[1..].split('=').next().unwrap_or("");
            if LONG.contains(&name) {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn go_durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").unwrap_err().contains("greater than 0"));
        assert!(parse_duration("5").is_err() && parse_duration("x").is_err());
    }
    #[test]
    fn single_dash_long_flags() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            normalize_args(v(&[
                "runvz",
                "-root",
                "/r",
                "restore",
                "-no-subreaper",
                "-d",
                "x"
            ])),
            v(&[
                "runvz",
                "--root",
                "/r",
                "restore",
                "--no-subreaper",
                "-d",
                "x"
            ])
        );
        assert_eq!(
            normalize_args(v(&["runvz", "kill", "x", "-9"])),
            v(&["runvz", "kill", "x", "-9"])
        );
        // The user's command after `exec ... ID` is never touched.
        assert_eq!(
            normalize_args(v(&[
                "runvz", "exec", "-cwd", "/", "-t", "c1", "ps", "-format", "x"
            ])),
            v(&["runvz", "exec", "--cwd", "/", "-t", "c1", "ps", "-format", "x"])
        );
    }

    use proptest::prelude::*;

    proptest! {
        /// `update --memory 512m` and friends: any text is a size or a one-line error.
        #[test]
        fn sizes_never_panic(s in "\\PC{0,24}") {
            if let Err(e) = parse_bytes(&s) {
                prop_assert!(!e.contains('\n'), "{}", e);
            }
        }

        #[test]
        fn sizes_read_back(n in 0i64..(1 << 23), unit in 0usize..5) {
            let (suffix, shift) = [("", 0), ("k", 10), ("m", 20), ("G", 30), ("t", 40)][unit];
            prop_assert_eq!(parse_bytes(&format!("{n}{suffix}")), Ok(n << shift));
            prop_assert_eq!(parse_bytes(&format!("{n}{suffix}b")), Ok(n << shift));
        }

        /// Any argument vector goes through the Go-style flag normalization unharmed: same
        /// length, and anything not starting with one dash is kept as it is.
        #[test]
        fn normalization_never_panics(args in prop::collection::vec("-{0,2}[a-z-]{0,8}|\\PC{0,8}", 0..8)) {
            let out = normalize_args(args.clone());
            prop_assert_eq!(out.len(), args.len());
            for (a, b) in args.iter().zip(&out) {
                if !a.starts_with('-') {
                    prop_assert_eq!(a, b);
                }
            }
        }
    }
}
