//! The container init: runs in the container's namespaces, builds its filesystem, becomes
//! the configured user, waits for `start` on the exec fifo and execs the user's program.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Process};

use super::channel::{self, Channel, Msg};
use super::identity;
use super::spawn::InitConfig;
use crate::{hooks, rootfs, sys};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Channel(#[from] channel::ChannelError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Tty(#[from] super::tty::TtyError),
    #[error("{0}")]
    Msg(String),
}

/// Entry of the container init. Never returns: execs the user's program or exits.
pub fn run(cfg: &InitConfig, chan: &Channel, fifo: OwnedFd) -> ! {
    match setup(cfg, chan).map(|exec| (fifo, exec)) {
        Ok((fifo, exec)) => wait_and_exec(fifo, exec),
        Err(e) => {
            let _ = chan.send(&Msg::Error(e.to_string()));
            // SAFETY: _exit in a forked child, skipping the parent's destructors.
            unsafe { libc::_exit(1) }
        }
    }
}

/// The program to exec, ready as C strings.
struct Exec {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    /// startContainer hooks, run after `start` and before the user's program.
    start_hooks: Vec<oci_spec::runtime::Hook>,
    start_state: String,
}

fn cstring(s: &str, what: &str) -> Result<CString, InitError> {
    CString::new(s).map_err(|_| InitError::Msg(format!("{what} contains a NUL byte")))
}

fn setup(cfg: &InitConfig, chan: &Channel) -> Result<Option<Exec>, InitError> {
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
    if proc_.terminal().unwrap_or(false) {
        let sock = cfg
            .console
            .ok_or_else(|| InitError::Msg("process.terminal needs a console socket".into()))?;
        let size = proc_
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        super::tty::setup_console(sock, proc_.user().uid(), size)?;
        // SAFETY: the console socket is ours and no longer needed.
        unsafe { libc::close(sock) };
    }
    identity::set_rlimits(proc_.rlimits().as_deref().unwrap_or(&[]))?;
    let caps = proc_.capabilities().as_ref();
    identity::drop_bounding(caps)?;
    // Enter the cwd as root first (checked before any seccomp filter could deny getcwd);
    // a cwd only the user may enter is retried after the switch.
    let cwd_done = enter_cwd(proc_.cwd()).is_ok();
    let nnp = proc_.no_new_privileges().unwrap_or(false);
    // Nothing but stdio and the preserved fds may cross into the user's program. Done before
    // any seccomp filter exists: a profile need not allow the syscalls runvz itself uses.
    let first = 3 + cfg.preserve_fds as u32;
    sys::cloexec_from(first).map_err(|e| InitError::Msg(format!("close_range: {e}")))?;
    for fd in 3..first as i32 {
        sys::clear_cloexec(fd)
            .map_err(|e| InitError::Msg(format!("--preserve-fds: fd {fd}: {e}")))?;
    }
    let exec = resolve_exec(proc_)?;
    install_exit_handlers();
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it while we are root.
    if let (Some(sc), false) = (cfg.seccomp, nnp) {
        sc.install()?;
    }
    identity::switch_user(proc_.user(), caps, setgroups_allowed)?;
    if nnp {
        identity::no_new_privs()?;
    }
    if !cwd_done {
        enter_cwd(proc_.cwd())?;
    }
    // With no_new_privs the filter goes on as late as possible, after our own syscalls.
    if let (Some(sc), true) = (cfg.seccomp, nnp) {
        sc.install()?;
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        proc_.user().umask().unwrap_or(0o022) as _,
    ));
    chan.send(&Msg::Ready)?;
    Ok(Some(Exec {
        start_hooks,
        start_state,
        ..exec
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

/// chdir into the configured cwd and make sure it is inside the container: a cwd reached
/// through a leaked host fd would show as "(unreachable)" (CVE-2024-21626).
fn enter_cwd(cwd: &Path) -> Result<(), InitError> {
    nix::unistd::chdir(cwd)
        .map_err(|e| InitError::Msg(format!("process.cwd {}: {e}", cwd.display())))?;
    let now = nix::unistd::getcwd()
        .map_err(|e| InitError::Msg(format!("process.cwd {}: {e}", cwd.display())))?;
    if !now.is_absolute() || now.as_os_str().as_bytes().starts_with(b"(unreachable)") {
        return Err(InitError::Msg(format!(
            "process.cwd {} is outside the container",
            cwd.display()
        )));
    }
    Ok(())
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn resolve_exec(p: &Process) -> Result<Exec, InitError> {
    let args = p.args().as_deref().unwrap_or(&[]);
    let prog = args
        .first()
        .ok_or_else(|| InitError::Msg("process.args is empty".into()))?;
    let env: Vec<String> = p.env().clone().unwrap_or_default();
    let path: PathBuf = if prog.contains('/') {
        PathBuf::from(prog)
    } else {
        let search = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        search
            .split(':')
            .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(prog))
            .find(|c| is_executable(c))
            .ok_or_else(|| {
                InitError::Msg(format!(
                    "exec: {prog:?}: executable file not found in $PATH"
                ))
            })?
    };
    if !path.exists() {
        return Err(InitError::Msg(format!(
            "exec: {}: no such file or directory",
            path.display()
        )));
    }
    Ok(Exec {
        path: CString::new(path.as_os_str().as_bytes())
            .map_err(|_| InitError::Msg("process.args[0] contains a NUL byte".into()))?,
        args: args
            .iter()
            .map(|a| cstring(a, "process.args"))
            .collect::<Result<_, _>>()?,
        env: env
            .iter()
            .map(|e| cstring(e, "process.env"))
            .collect::<Result<_, _>>()?,
        start_hooks: vec![],
        start_state: String::new(),
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

fn wait_and_exec(fifo: OwnedFd, exec: Option<Exec>) -> ! {
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
    let Some(exec) = exec else {
        // SAFETY: _exit in the forked init: a container without a process ends at start.
        unsafe { libc::_exit(0) }
    };
    if let Err(e) = hooks::run("startContainer", &exec.start_hooks, &exec.start_state) {
        eprintln!("runvz: {e}");
        // SAFETY: _exit in the forked init.
        unsafe { libc::_exit(1) }
    }
    let err = nix::unistd::execve(&exec.path, &exec.args, &exec.env).unwrap_err();
    eprintln!("runvz: exec {}: {err}", exec.path.to_string_lossy());
    // SAFETY: _exit in the forked init.
    unsafe { libc::_exit(if err == nix::Error::ENOENT { 127 } else { 126 }) }
}
