//! `runvz exec`: run another process in a running container, with the container's
//! capabilities, seccomp filter and no_new_privileges unless told otherwise.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{Capability, Process, Spec};

use super::create::write_pid_file;
use super::{Container, ContainerError};
use crate::state::{Status, Store};

/// What the caller asked for, on top of the container's own process.
#[derive(Default)]
pub struct ExecOptions<'a> {
    /// A complete process.json (`--process`); when set, args and the overrides are ignored.
    pub process: Option<Process>,
    pub args: Vec<String>,
    pub tty: bool,
    pub console_socket: Option<&'a Path>,
    pub detach: bool,
    pub pid_file: Option<&'a Path>,
    pub cwd: Option<String>,
    pub env: Vec<String>,
    /// `uid[:gid]`
    pub user: Option<String>,
    pub additional_gids: Vec<u32>,
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub preserve_fds: i32,
    /// `--cgroup [CONTROLLERS:]PATH`: sub-cgroups of the container's cgroup to join.
    pub cgroups: Vec<String>,
}

fn config_err(id: &str, what: impl std::fmt::Display) -> ContainerError {
    ContainerError::Config(format!("exec in {id}: {what}"))
}

/// The process to run: `--process`, or the container's process with args and overrides.
fn build_process(id: &str, spec: &Spec, o: &ExecOptions) -> Result<Process, ContainerError> {
    if let Some(p) = &o.process {
        if p.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(config_err(
                id,
                "--process: args must name the program to run",
            ));
        }
        return Ok(p.clone());
    }
    if o.args.is_empty() {
        return Err(config_err(
            id,
            "no command given (runvz exec ID CMD [ARGS...] or --process FILE)",
        ));
    }
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(o.args.clone()));
    p.set_terminal(Some(o.tty));
    p.set_console_size(None);
    if let Some(cwd) = &o.cwd {
        p.set_cwd(cwd.into());
    }
    if !o.env.is_empty() {
        let mut env = p.env().clone().unwrap_or_default();
        for e in &o.env {
            let key = e.split('=').next().unwrap_or("");
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        p.set_env(Some(env));
    }
    if let Some(u) = &o.user {
        let (uid, gid) = match u.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (u.as_str(), None),
        };
        let uid: u32 = uid
            .parse()
            .map_err(|_| config_err(id, format!("--user {u:?}: expected uid[:gid]")))?;
        let gid: u32 = gid
            .map(|g| g.parse())
            .transpose()
            .map_err(|_| config_err(id, format!("--user {u:?}: expected uid[:gid]")))?
            .unwrap_or(0);
        let user = p.user_mut();
        user.set_uid(uid);
        user.set_gid(gid);
    }
    if !o.additional_gids.is_empty() {
        p.user_mut()
            .set_additional_gids(Some(o.additional_gids.clone()));
    }
    if !o.caps.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for c in &o.caps {
            let cap: Capability = serde_json::from_value(serde_json::Value::String(c.clone()))
                .map_err(|_| config_err(id, format!("--cap {c:?}: unknown capability")))?;
            let add = |set: Option<oci_spec::runtime::Capabilities>| {
                let mut s = set.unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            caps.set_bounding(add(caps.bounding().clone()));
            caps.set_effective(add(caps.effective().clone()));
            caps.set_permitted(add(caps.permitted().clone()));
            caps.set_inheritable(add(caps.inheritable().clone()));
        }
        p.set_capabilities(Some(caps));
    }
    if o.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    Ok(p)
}

/// Run a process in the container. Detached: returns 0 once it runs (its PID in the pid
/// file). Otherwise waits and returns its exit code (128+N for signal N).
pub fn exec(store: &Store, id: &str, o: &ExecOptions) -> Result<i32, ContainerError> {
    let c = Container::load(store, id)?;
    let st = c.status();
    if !matches!(st, Status::Running | Status::Created) {
        return Err(ContainerError::WrongState {
            id: id.into(),
            status: st,
            what: if st == Status::Paused {
                "cannot exec in a paused container (resume it first)".into()
            } else {
                "container not running".into()
            },
        });
    }
    let spec: Spec = c
        .rec
        .config
        .as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .ok_or_else(|| config_err(id, "no recorded config"))?;
    let process = build_process(id, &spec, o)?;
    let subs = crate::cgroups::parse_subs(&o.cgroups)?;
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Some(crate::seccomp::compile(s)?),
        None => None,
    };
    let tty = process.terminal().unwrap_or(false);
    let min_fd = 3 + o.preserve_fds;
    let io = |what: &str, e: std::io::Error| ContainerError::Io {
        id: id.into(),
        what: what.into(),
        source: e,
    };
    // The console: the caller's socket, or (foreground) ours, to proxy our own terminal.
    let (console, ours): (Option<OwnedFd>, Option<std::os::unix::net::UnixStream>) =
        match (tty, o.console_socket) {
            (false, _) => (None, None),
            (true, Some(p)) => {
                let s = std::os::unix::net::UnixStream::connect(p)
                    .map_err(|e| io("--console-socket", e))?;
                (
                    Some(
                        crate::process::channel::raise(s.into(), min_fd)
                            .map_err(|e| io("console", e.into()))?,
                    ),
                    None,
                )
            }
            (true, None) if o.detach => {
                return Err(config_err(id, "--tty with --detach needs --console-socket"))
            }
            (true, None) => {
                let (a, b) = std::os::unix::net::UnixStream::pair()
                    .map_err(|e| io("console socketpair", e))?;
                (
                    Some(
                        crate::process::channel::raise(b.into(), min_fd)
                            .map_err(|e| io("console", e.into()))?,
                    ),
                    Some(a),
                )
            }
        };
    if !o.detach {
        let _ = crate::sys::set_child_subreaper();
    }
    let cfg = crate::process::exec::ExecConfig {
        init_pid: c.rec.pid,
        process: &process,
        seccomp: seccomp.as_ref(),
        console: console.as_ref().map(|c| c.as_raw_fd()),
        preserve_fds: o.preserve_fds,
        cgroup_subs: &subs,
    };
    let cg = c.cgroup();
    let master = match &ours {
        Some(s) => {
            // The process sends the master before it execs: receive it while it sets up.
            let pid = crate::process::exec::spawn(&cfg, cg.as_ref())?;
            (pid, Some(crate::process::tty::recv_master(s.as_raw_fd())?))
        }
        None => (crate::process::exec::spawn(&cfg, cg.as_ref())?, None),
    };
    drop(console);
    let (pid, master) = master;
    if let Some(p) = o.pid_file {
        write_pid_file(p, pid, id)?;
    }
    if o.detach {
        return Ok(0);
    }
    if let Some(m) = &master {
        crate::process::tty::copy_winsize(0, m);
        let _raw = crate::process::tty::RawMode::enter(0);
        crate::process::tty::proxy(m);
    }
    Ok(super::ops::wait_exit(pid))
}
