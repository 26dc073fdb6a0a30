//! The parent side of container creation and the intermediate process.
//!
//! ```text
//! runvz create ──fork──▶ intermediate ──(join/unshare namespaces)──fork──▶ init (PID 1)
//!      │  puts it in the cgroup, writes uid/gid maps      │ reports init's PID, exits
//!      ◀──────────────── channel: InitPid, HooksRuntime, Ready | Error ─────┘
//! ```
//! Both children die with the parent while setup is under way: the intermediate through
//! PDEATHSIG, the init because its next write to the channel fails.

use std::os::fd::RawFd;
use std::path::Path;

use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};

use super::channel::{self, Channel, Msg};
use super::{init, ProcessError};
use crate::cgroups::Cgroup;
use crate::namespaces::{self, Plan};

/// Everything the container init needs; it is inherited across fork, never serialised.
pub struct InitConfig<'a> {
    pub id: &'a str,
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    /// The exec fifo the init waits on until `start`.
    pub fifo: &'a Path,
    pub no_pivot: bool,
    /// Number of extra fds (from 3 up) passed to the user's process.
    pub preserve_fds: i32,
    pub plan: Plan,
    /// A connected socket to send the pty master to (process.terminal).
    pub console: Option<RawFd>,
    /// The compiled seccomp profile, if any.
    pub seccomp: Option<&'a crate::seccomp::Compiled>,
}

/// What `spawn` reports while it works, so the caller can record it at once.
pub enum Event {
    /// The init exists with this host PID (record it before anything else happens).
    InitPid(i32),
    /// Namespaces exist and the rootfs is not set up yet: run prestart/createRuntime hooks.
    HooksRuntime(i32),
}

fn write_maps(
    pid: i32,
    uid: &[LinuxIdMapping],
    gid: &[LinuxIdMapping],
) -> Result<(), ProcessError> {
    let fmt = |m: &[LinuxIdMapping]| {
        m.iter()
            .map(|x| format!("{} {} {}\n", x.container_id(), x.host_id(), x.size()))
            .collect::<String>()
    };
    std::fs::write(format!("/proc/{pid}/uid_map"), fmt(uid)).map_err(ProcessError::IdMap)?;
    std::fs::write(format!("/proc/{pid}/gid_map"), fmt(gid)).map_err(ProcessError::IdMap)?;
    Ok(())
}

/// Create the container's processes and set them up; returns the init's host PID once it is
/// waiting for `start`. On error every process made is gone (the caller removes the cgroup).
pub fn spawn(
    cfg: &InitConfig,
    cgroup: &Cgroup,
    on_event: &mut dyn FnMut(Event) -> Result<(), String>,
) -> Result<i32, ProcessError> {
    let (parent, child) = channel::pair(3 + cfg.preserve_fds)?;
    // The helper keeps stdio, the preserved fds, the channel and the console: an inherited
    // state-dir lock would block `start` for as long as the init lives.
    let keep: Vec<RawFd> = cfg.console.into_iter().collect();
    let inter = super::fork_helper(&child, 3 + cfg.preserve_fds as u32, &keep, || {
        intermediate(cfg, &child)
    })?;
    drop(child);
    let res = drive(cfg, cgroup, &parent, inter, on_event);
    let _ = waitpid(inter, None);
    res
}

fn drive(
    cfg: &InitConfig,
    cgroup: &Cgroup,
    chan: &Channel,
    inter: Pid,
    on_event: &mut dyn FnMut(Event) -> Result<(), String>,
) -> Result<i32, ProcessError> {
    let kill_inter = || {
        let _ = nix::sys::signal::kill(inter, nix::sys::signal::SIGKILL);
    };
    if let Err(e) = cgroup.add(inter.as_raw()) {
        kill_inter();
        return Err(e.into());
    }
    let linux = cfg.spec.linux().as_ref();
    if let Some(res) = linux.and_then(|l| l.resources().as_ref()) {
        let adj = cfg.spec.process().as_ref().and_then(|p| p.oom_score_adj());
        if let Err(e) = cgroup.apply(res, adj) {
            kill_inter();
            return Err(e.into());
        }
    }
    chan.send(&Msg::Go)?;
    let mut init_pid = 0;
    loop {
        match chan.recv() {
            Ok(Msg::UsernsReady) => {
                let l = linux.expect("validated: a user namespace needs linux");
                write_maps(
                    inter.as_raw(),
                    l.uid_mappings().as_deref().unwrap_or(&[]),
                    l.gid_mappings().as_deref().unwrap_or(&[]),
                )
                .inspect_err(|_| kill_inter())?;
                chan.send(&Msg::MapsWritten)?;
            }
            Ok(Msg::InitPid(p)) => {
                init_pid = p;
                on_event(Event::InitPid(p)).map_err(ProcessError::Hook)?;
                // The init waits for this: nothing it says can overtake its PID.
                chan.send(&Msg::Go)?;
            }
            Ok(Msg::HooksRuntime) => {
                on_event(Event::HooksRuntime(init_pid)).map_err(ProcessError::Hook)?;
                chan.send(&Msg::Continue)?;
            }
            Ok(Msg::Ready) => return Ok(init_pid),
            Ok(Msg::Error(e)) => return Err(ProcessError::Child(e)),
            Ok(m) => return Err(channel::ChannelError::Unexpected(m).into()),
            Err(channel::ChannelError::Closed) => {
                return Err(ProcessError::Child(
                    "container init exited during setup".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The intermediate process: enter/create namespaces, fork the init, report its PID.
fn intermediate(cfg: &InitConfig, chan: &Channel) -> Result<(), ProcessError> {
    chan.expect(Msg::Go)?;
    // Open the exec fifo while we still have the host's credentials (a user namespace's
    // root cannot reach the runtime's state directory).
    let fifo = crate::sys::open(cfg.fifo, libc::O_RDWR, 0).map_err(|e| {
        ProcessError::Child(format!("opening exec fifo {}: {e}", cfg.fifo.display()))
    })?;
    let fifo = channel::raise(fifo, 3 + cfg.preserve_fds)
        .map_err(|e| ProcessError::Child(format!("exec fifo: {e}")))?;
    let plan = &cfg.plan;
    let child_err = |e: namespaces::NamespaceError| ProcessError::Child(e.to_string());
    for (t, p) in plan
        .join
        .iter()
        .filter(|(t, _)| *t == LinuxNamespaceType::User)
    {
        namespaces::join(*t, p).map_err(child_err)?;
    }
    if plan.new_user {
        namespaces::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(child_err)?;
        chan.send(&Msg::UsernsReady)?;
        chan.expect(Msg::MapsWritten)?;
    }
    if plan.in_userns() {
        // Become root of the namespace (when mapped) so files we create are owned by it.
        let _ = nix::unistd::setresgid(0.into(), 0.into(), 0.into());
        let _ = nix::unistd::setresuid(0.into(), 0.into(), 0.into());
    }
    for (t, p) in plan
        .join
        .iter()
        .filter(|(t, _)| *t != LinuxNamespaceType::User)
    {
        namespaces::join(*t, p).map_err(child_err)?;
    }
    namespaces::unshare(plan.new).map_err(child_err)?;
    // SAFETY: single-threaded; the child only runs init code and then execs or exits.
    match unsafe { fork() }.map_err(ProcessError::Fork)? {
        ForkResult::Child => init::run(cfg, chan, fifo),
        ForkResult::Parent { child } => {
            chan.send(&Msg::InitPid(child.as_raw()))?;
            Ok(())
        }
    }
}
