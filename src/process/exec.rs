//! `runvz exec`: a new process in a running container.
//!
//! ```text
//! runvz exec ──fork──▶ intermediate (in the container's cgroup) ──setns(user, mnt, ipc, uts,
//!     net, cgroup, pid)──fork──▶ process ──user_process::prepare──▶ execve
//! ```
//! The intermediate reports the process's host PID; the process reports `Ready` once only
//! the execve is left, and its close-on-exec channel end then closes on a successful exec or
//! carries the error of a failed one.

use std::os::fd::{AsRawFd, RawFd};

use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::Process;

use super::channel::{self, Channel, Msg};
use super::{user_process, ProcessError};
use crate::cgroups::Cgroup;

pub struct ExecConfig<'a> {
    /// Host PID of the container's init, whose namespaces the process joins.
    pub init_pid: i32,
    pub process: &'a Process,
    pub seccomp: Option<&'a crate::seccomp::Compiled>,
    pub console: Option<RawFd>,
    pub preserve_fds: i32,
    /// Sub-cgroups of the container's cgroup to join (`--cgroup`).
    pub cgroup_subs: &'a [crate::cgroups::SubCgroup],
}

/// The namespaces of `pid` that differ from ours, user namespace first; `pid` last but one
/// (it applies to children), `mnt` after the others (it changes our root).
fn namespaces_to_join(pid: i32) -> Vec<(&'static str, nix::sched::CloneFlags)> {
    use nix::sched::CloneFlags as F;
    let order = [
        ("user", F::CLONE_NEWUSER),
        ("ipc", F::CLONE_NEWIPC),
        ("uts", F::CLONE_NEWUTS),
        ("net", F::CLONE_NEWNET),
        ("cgroup", F::CLONE_NEWCGROUP),
        ("pid", F::CLONE_NEWPID),
        ("mnt", F::CLONE_NEWNS),
    ];
    order
        .into_iter()
        .filter(|(n, _)| {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{n}")).ok();
            let ours = std::fs::read_link(format!("/proc/self/ns/{n}")).ok();
            theirs.is_some() && theirs != ours
        })
        .collect()
}

/// Start the process; returns its host PID once it has exec'd.
pub fn spawn(cfg: &ExecConfig, cgroup: Option<&Cgroup>) -> Result<i32, ProcessError> {
    let (parent, child) = channel::pair(3 + cfg.preserve_fds)?;
    // Open the namespaces before forking: the init may exit meanwhile, the fds keep them.
    let ns: Vec<(std::fs::File, nix::sched::CloneFlags)> = namespaces_to_join(cfg.init_pid)
        .into_iter()
        .map(|(n, f)| {
            std::fs::File::open(format!("/proc/{}/ns/{n}", cfg.init_pid))
                .map(|file| (file, f))
                .map_err(|e| ProcessError::Child(format!("container namespace {n}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let keep: Vec<RawFd> = cfg
        .console
        .into_iter()
        .chain(ns.iter().map(|(f, _)| f.as_raw_fd()))
        .collect();
    let inter = super::fork_helper(&child, 3 + cfg.preserve_fds as u32, &keep, || {
        intermediate(cfg, &child, ns)
    })?;
    drop(child);
    let res = drive(&parent, inter, cgroup, cfg.cgroup_subs);
    let _ = waitpid(inter, None);
    res
}

fn drive(
    chan: &Channel,
    inter: Pid,
    cgroup: Option<&Cgroup>,
    subs: &[crate::cgroups::SubCgroup],
) -> Result<i32, ProcessError> {
    if let Some(cg) = cgroup {
        if let Err(e) = cg
            .add(inter.as_raw())
            .and_then(|()| cg.add_to_subs(inter.as_raw(), subs))
        {
            let _ = nix::sys::signal::kill(inter, nix::sys::signal::SIGKILL);
            return Err(e.into());
        }
    }
    chan.send(&Msg::Go)?;
    let mut pid = 0;
    loop {
        match chan.recv() {
            Ok(Msg::InitPid(p)) => {
                pid = p;
                // The process waits for this: its Ready can never overtake its PID.
                chan.send(&Msg::Go)?;
            }
            Ok(Msg::Ready) => break,
            Ok(Msg::Error(e)) => return Err(ProcessError::Child(e)),
            Ok(m) => return Err(channel::ChannelError::Unexpected(m).into()),
            Err(channel::ChannelError::Closed) => {
                return Err(ProcessError::Child(
                    "exec: the process exited during setup".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    // After Ready only the execve is left: EOF means it succeeded, a message that it failed.
    match chan.recv() {
        Err(channel::ChannelError::Closed) => Ok(pid),
        Ok(Msg::Error(e)) => Err(ProcessError::Child(e)),
        Ok(m) => Err(channel::ChannelError::Unexpected(m).into()),
        Err(e) => Err(e.into()),
    }
}

fn intermediate(
    cfg: &ExecConfig,
    chan: &Channel,
    ns: Vec<(std::fs::File, nix::sched::CloneFlags)>,
) -> Result<(), ProcessError> {
    chan.expect(Msg::Go)?;
    let setgroups_allowed = std::fs::read_to_string(format!("/proc/{}/setgroups", cfg.init_pid))
        .map(|s| s.trim() != "deny")
        .unwrap_or(true);
    for (file, flag) in ns {
        nix::sched::setns(file, flag)
            .map_err(|e| ProcessError::Child(format!("joining the container's {flag:?}: {e}")))?;
    }
    // Nothing of ours may be inherited (the container must not reach a host fd).
    // SAFETY: single-threaded; the child only prepares and execs.
    match unsafe { fork() }.map_err(ProcessError::Fork)? {
        ForkResult::Child => {
            if chan.expect(Msg::Go).is_err() {
                // SAFETY: _exit in the forked child.
                unsafe { libc::_exit(1) }
            }
            let _ = nix::unistd::setsid();
            let opts = user_process::Options {
                seccomp: cfg.seccomp,
                console: cfg.console,
                bind_console: false,
                preserve_fds: cfg.preserve_fds,
                setgroups_allowed,
            };
            match user_process::prepare(cfg.process, &opts) {
                Ok(exec) => {
                    if chan.send(&Msg::Ready).is_err() {
                        // SAFETY: _exit in the forked child.
                        unsafe { libc::_exit(1) }
                    }
                    let e = user_process::try_exec(&exec);
                    let _ = chan.send(&Msg::Error(e));
                    // SAFETY: _exit in the forked child.
                    unsafe { libc::_exit(127) }
                }
                Err(e) => {
                    let _ = chan.send(&Msg::Error(e.to_string()));
                    // SAFETY: _exit in the forked child.
                    unsafe { libc::_exit(1) }
                }
            }
        }
        ForkResult::Parent { child } => {
            chan.send(&Msg::InitPid(child.as_raw()))?;
            Ok(())
        }
    }
}
