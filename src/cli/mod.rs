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
    /// Path of the criu binary (checkpoint is not supported yet).
    #[arg(long, global = true)]
    pub criu: Option<PathBuf>,
    /// Print the version.
    #[arg(short = 'v', long)]
    pub version: bool,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
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

/// `runvz set ID --numproc B:L --physpages B:L --cpuunits N ...`
#[derive(clap::Args, Debug)]
pub struct SetArgs {
    pub id: String,
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
}

impl SetArgs {
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
    /// Write a default config.json.
    Spec {
        #[arg(short = 'b', long, default_value = ".")]
        bundle: PathBuf,
    },
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
    "help",
];

/// Rewrite `-long-flag[=v]` into `--long-flag[=v]` as runc's callers sometimes write it.
pub fn normalize_args(args: Vec<String>) -> Vec<String> {
    let mut seen_sep = false;
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if i == 0 || seen_sep || a.starts_with("--") || !a.starts_with('-') || a.len() < 3 {
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
    }
}
