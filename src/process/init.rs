//! The container init: runs in the container's namespaces, builds its filesystem, becomes
//! the configured user, waits for `start` on the exec fifo and execs the user's program.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use oci_spec::runtime::LinuxNamespaceType;

use super::channel::{self, Channel, Msg};
use super::spawn::InitConfig;
use super::user_process;
use crate::{hooks, rootfs, sys};

#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    UserProcess(#[from] user_process::UserProcessError),
    #[error(transparent)]
    Channel(#[from] channel::ChannelError),
    #[error("{0}")]
    Msg(String),
}

/// Entry of the container init. Never returns: execs the user's program or exits.
pub fn run(cfg: &InitConfig, chan: &Channel, fifo: OwnedFd) -> ! {
    // Wait until the parent has our PID (the intermediate reports it after forking us).
    if chan.expect(Msg::Go).is_err() {
        // SAFETY: _exit in the forked init.
        unsafe { libc::_exit(1) }
    }
    match setup(cfg, chan).map(|exec| (fifo, exec)) {
        Ok((fifo, exec)) => wait_and_exec(fifo, exec),
        Err(e) => {
            let _ = chan.send(&Msg::Error(e.to_string()));
            // SAFETY: _exit in a forked child, skipping the parent's destructors.
            unsafe { libc::_exit(1) }
        }
    }
}

/// What the init does at `start`: the startContainer hooks, then the user's program.
struct Start<'a> {
    exec: user_process::Exec<'a>,
    start_hooks: Vec<oci_spec::runtime::Hook>,
    start_state: String,
}

fn setup<'a>(cfg: &InitConfig<'a>, chan: &Channel) -> Result<Option<Start<'a>>, InitError> {
    let spec = cfg.spec;
    let _ = nix::unistd::setsid();
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());

    if let Some(adj) = spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
        set_oom_score_adj(adj)?;
    }
    let setgroups_allowed = std::fs::read_to_string("/proc/self/setgroups")
        .map(|s| s.trim() != "deny")
        .unwrap_or(true);

    let has_hooks = spec.hooks().as_ref().is_some_and(|h| {
        #[allow(deprecated)]
        let pre = h.prestart().as_ref().is_some_and(|v| !v.is_empty());
        pre || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
    });
    if has_hooks {
        chan.send(&Msg::HooksRuntime)?;
        chan.expect(Msg::Continue)?;
    }

    let plan = &cfg.plan;
    let opts = rootfs::Options {
        no_pivot: cfg.no_pivot,
        own_mountns: plan.has(LinuxNamespaceType::Mount),
        in_userns: plan.in_userns(),
        new_cgroupns: plan.new.contains(nix::sched::CloneFlags::CLONE_NEWCGROUP),
    };
    rootfs::prepare(spec, cfg.bundle, cfg.rootfs, &opts)?;
    if let Some(h) = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.create_container().as_ref())
        .filter(|h| !h.is_empty())
    {
        let state = hooks::state_json(spec, cfg.id, "creating", hooks::host_pid(), cfg.bundle);
        hooks::run("createContainer", h, &state).map_err(|e| InitError::Msg(e.to_string()))?;
    }
    let start_hooks = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.start_container().clone())
        .unwrap_or_default();
    let start_state = hooks::state_json(spec, cfg.id, "created", hooks::host_pid(), cfg.bundle);
    rootfs::pivot(cfg.rootfs, cfg.no_pivot, opts.own_mountns)?;
    if opts.own_mountns {
        rootfs::reopen_dev_null()?;
    }
    rootfs::set_names(spec)?;
    rootfs::sysctls(spec)?;
    rootfs::finish(spec)?;

    // `process` is optional: such a container exists (namespaces, cgroup, filesystem) and
    // simply ends when started.
    let Some(proc_) = spec.process().as_ref() else {
        sys::cloexec_from(3).map_err(|e| InitError::Msg(format!("close_range: {e}")))?;
        install_exit_handlers();
        chan.send(&Msg::Ready)?;
        return Ok(None);
    };
    let exec = user_process::prepare(
        proc_,
        &user_process::Options {
            seccomp: cfg.seccomp,
            console: cfg.console,
            bind_console: true,
            preserve_fds: cfg.preserve_fds,
            setgroups_allowed,
        },
    )?;
    install_exit_handlers();
    chan.send(&Msg::Ready)?;
    Ok(Some(Start {
        exec,
        start_hooks,
        start_state,
    }))
}

fn set_oom_score_adj(adj: i32) -> Result<(), InitError> {
    let cur = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
    std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| {
        InitError::Msg(format!(
            "process.oomScoreAdj: cannot set {adj} (current {}): {e}{}",
            cur.trim(),
            if e.kind() == io::ErrorKind::PermissionDenied {
                "; lowering it needs CAP_SYS_RESOURCE"
            } else {
                ""
            }
        ))
    })
}

extern "C" fn exit_on_signal(sig: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + sig) }
}

/// While waiting for `start`, the init is PID 1 of its namespace and would ignore signals it
/// has no handler for; make the usual termination signals end it, as they would the user's
/// program. Handlers are reset by execve.
fn install_exit_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(exit_on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        // SAFETY: the handler only calls the async-signal-safe _exit.
        let _ = unsafe { sigaction(s, &act) };
    }
}

fn wait_and_exec(fifo: OwnedFd, start: Option<Start>) -> ! {
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(fifo.as_raw_fd(), &mut b) {
            Ok(1) => break,
            Err(nix::Error::EINTR) => continue,
            // SAFETY: _exit in the forked init.
            _ => unsafe { libc::_exit(1) },
        }
    }
    drop(fifo);
    let Some(start) = start else {
        // SAFETY: _exit in the forked init: a container without a process ends at start.
        unsafe { libc::_exit(0) }
    };
    if let Err(e) = hooks::run("startContainer", &start.start_hooks, &start.start_state) {
        eprintln!("runvz: {e}");
        // SAFETY: _exit in the forked init.
        unsafe { libc::_exit(1) }
    }
    user_process::exec(&start.exec)
}
