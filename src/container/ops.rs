//! `start`, `state`, `kill`, `delete`, `list` and `run`.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::create::{create_with_console, CreateOptions};
use super::{alive, Container, ContainerError};
use crate::state::{Status, Store};
use crate::{hooks, sys};

fn wrong(c: &Container, status: Status, what: &str) -> ContainerError {
    ContainerError::WrongState {
        id: c.rec.id.clone(),
        status,
        what: what.to_string(),
    }
}

pub fn state(store: &Store, id: &str) -> Result<serde_json::Value, ContainerError> {
    Ok(Container::load(store, id)?.oci_state())
}

pub fn list(store: &Store) -> Result<Vec<serde_json::Value>, ContainerError> {
    let mut out = vec![];
    for id in store.ids()? {
        // A container deleted or half-written meanwhile is skipped, never an error.
        if let Ok(c) = Container::load(store, &id) {
            out.push(c.oci_state());
        }
    }
    Ok(out)
}

fn hooks_of(c: &Container, kind: &str) -> Vec<oci_spec::runtime::Hook> {
    c.rec
        .config
        .as_ref()
        .and_then(|cfg| cfg.get("hooks"))
        .and_then(|h| h.get(kind))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

fn hook_state(c: &Container, status: &str, pid: i32) -> String {
    hooks::state_doc(
        &c.rec.oci_version,
        &c.rec.id,
        status,
        pid,
        &c.rec.bundle,
        &c.rec.annotations,
    )
}

pub fn start(store: &Store, id: &str) -> Result<(), ContainerError> {
    let locked = store.lock(id)?;
    let mut c = Container {
        rec: locked.read()?,
        dir: locked.dir.clone(),
    };
    let st = c.status();
    if st != Status::Created {
        return Err(wrong(&c, st, "only a created container can be started"));
    }
    let fifo = locked.fifo_path();
    let f =
        sys::open(&fifo, libc::O_WRONLY | libc::O_NONBLOCK, 0).map_err(|e| ContainerError::Io {
            id: id.into(),
            what: "container init is not waiting for start".into(),
            source: e,
        })?;
    nix::unistd::write(&f, b"0").map_err(|e| ContainerError::Io {
        id: id.into(),
        what: "exec fifo".into(),
        source: e.into(),
    })?;
    wait_for_exec(&f, c.rec.pid, c.rec.pid_start);
    drop(f);
    let _ = std::fs::remove_file(&fifo);
    c.rec.status = Status::Running;
    locked.write(&c.rec)?;
    let post = hooks_of(&c, "poststart");
    if !post.is_empty() {
        let st = hook_state(&c, "running", c.rec.pid);
        for e in hooks::run_all("poststart", &post, &st) {
            tracing::warn!("{e}");
        }
    }
    Ok(())
}

/// Wait until the init has execve'd the user's program (or died): its close-on-exec end of
/// the fifo is then gone, and our write end reports POLLERR. Then wait (at most 50 ms) until
/// the program has been on a CPU, so `start` returns, and poststart hooks run, once the
/// program is really running and not merely loaded.
fn wait_for_exec(fifo: &std::os::fd::OwnedFd, pid: i32, start: u64) {
    wait_for_execve(fifo, pid, start);
    let on_cpu = || -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let Some(t0) = on_cpu() else { return };
    let deadline = Instant::now() + Duration::from_millis(50);
    while Instant::now() < deadline && on_cpu().is_some_and(|t| t == t0) {
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn wait_for_execve(fifo: &std::os::fd::OwnedFd, pid: i32, start: u64) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && alive(pid, start) {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::empty())];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(_)
                if fds[0]
                    .revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)) =>
            {
                return
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => return,
        }
    }
}

pub fn kill(store: &Store, id: &str, sig: Signal, all: bool) -> Result<(), ContainerError> {
    let c = Container::load(store, id)?;
    let st = c.status();
    if matches!(st, Status::Stopped | Status::Creating) && !all {
        return Err(wrong(&c, st, "container not running"));
    }
    if all {
        if let Some(cg) = c.cgroup() {
            if st == Status::Paused {
                let _ = cg.freeze(false);
            }
            cg.signal_all(sig);
            return Ok(());
        }
    }
    signal_init(&c, sig)?;
    // A frozen init cannot die: after SIGKILL thaw it, as runc does (containerd's `task kill -s
    // SIGKILL` of a paused task would leave it paused forever).
    if st == Status::Paused && sig == Signal::SIGKILL {
        if let Some(cg) = c.cgroup() {
            let _ = cg.freeze(false);
        }
    }
    Ok(())
}

/// Signal the init through a pidfd, after checking it is still the same process.
fn signal_init(c: &Container, sig: Signal) -> Result<(), ContainerError> {
    let id = c.rec.id.clone();
    let no_proc = |e: std::io::Error| ContainerError::Io {
        id: id.clone(),
        what: "no such process".into(),
        source: e,
    };
    // SAFETY: pidfd_open with a pid and no flags; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, c.rec.pid, 0) };
    if fd < 0 {
        return Err(no_proc(std::io::Error::last_os_error()));
    }
    // SAFETY: the fd was just returned by pidfd_open and is owned by nothing else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // The pidfd pins the process: if it is still ours now, the signal reaches it.
    if !alive(c.rec.pid, c.rec.pid_start) {
        return Err(no_proc(std::io::Error::from_raw_os_error(libc::ESRCH)));
    }
    // SAFETY: pidfd_send_signal on our pidfd with a valid signal number and no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig as i32,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if r < 0 {
        return Err(no_proc(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn wait_gone(pid: i32, start: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid, start) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

pub fn delete(store: &Store, id: &str, force: bool) -> Result<(), ContainerError> {
    // A create killed before its record was in place leaves only a staging directory.
    let swept = store.sweep_staging(id);
    let locked = match store.lock(id) {
        // `delete --force` of a missing container succeeds, as runc's does: Podman cleans up a
        // failed create that way and would report the "does not exist" over the real error.
        Err(crate::state::StateError::NotFound(_)) if swept > 0 || force => return Ok(()),
        other => other?,
    };
    let c = Container {
        rec: locked.read()?,
        dir: locked.dir.clone(),
    };
    let st = c.status();
    match st {
        Status::Running | Status::Paused if !force => {
            return Err(wrong(
                &c,
                st,
                "cannot delete a container that is not stopped (use --force)",
            ))
        }
        Status::Creating if !force => {
            return Err(wrong(&c, st, "it is being created (use --force)"))
        }
        _ => {}
    }
    if st == Status::Creating {
        // The create in progress would recreate what we remove: stop it first.
        let _ = nix::sys::signal::kill(Pid::from_raw(c.rec.creator_pid), Signal::SIGKILL);
        wait_gone(
            c.rec.creator_pid,
            c.rec.creator_start,
            Duration::from_secs(5),
        );
    }
    // Everything of the container is in its cgroup: kill it all and remove the cgroup.
    match c.cgroup() {
        Some(cg) => cg.destroy()?,
        None if alive(c.rec.pid, c.rec.pid_start) => {
            let _ = nix::sys::signal::kill(Pid::from_raw(c.rec.pid), Signal::SIGKILL);
        }
        None => {}
    }
    if c.rec.pid > 0 && !wait_gone(c.rec.pid, c.rec.pid_start, Duration::from_secs(10)) {
        return Err(ContainerError::Io {
            id: id.into(),
            what: "container init did not exit after SIGKILL".into(),
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        });
    }
    // The init is gone, and with its namespace the container ends of the veth pairs: remove
    // the host ends that remain (and their routes and qdiscs).
    crate::net::teardown(id, &c.rec.net_links)?;
    if c.rec.host_mounts {
        crate::rootfs::unmount_under(&c.rec.rootfs).map_err(|e| ContainerError::Io {
            id: id.into(),
            what: e.to_string(),
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        })?;
    }
    if let Some(d) = crate::disk::Made::from_record(c.rec.disk.as_ref()) {
        // A create that never finished leaves nothing, not even the image it made.
        crate::disk::teardown(&d, c.rec.status == Status::Creating)?;
    }
    let post = hooks_of(&c, "poststop");
    if !post.is_empty() {
        let stj = hook_state(&c, "stopped", 0);
        for e in hooks::run_all("poststop", &post, &stj) {
            tracing::warn!("{e}");
        }
    }
    locked.remove()?;
    Ok(())
}

pub struct RunOptions<'a> {
    pub create: CreateOptions<'a>,
    pub detach: bool,
}

static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Wait for `pid` (our child, or reparented to us as subreaper), forwarding the usual signals
/// to it; its exit code, 128+N when killed by signal N.
pub(super) fn wait_exit(pid: i32) -> i32 {
    FORWARD_TO.store(pid, Ordering::Relaxed);
    {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
        let act = SigAction::new(
            SigHandler::Handler(forward_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGWINCH,
        ] {
            // SAFETY: the handler only calls the async-signal-safe kill().
            let _ = unsafe { sigaction(s, &act) };
        }
    }
    let start = sys::proc_start_time(pid).map(|s| s.0).unwrap_or(0);
    let code = loop {
        match nix::sys::wait::waitpid(Pid::from_raw(pid), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => break c,
            Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                // Not our child after all (e.g. a subreaper above us): poll instead.
                tracing::debug!("waitpid {pid}: {e}");
                wait_gone(pid, start, Duration::from_secs(u64::MAX / 4));
                break 0;
            }
        }
    };
    FORWARD_TO.store(0, Ordering::Relaxed);
    code
}

/// `run`: create + start; without `--detach`, wait for the init, delete the container and
/// return the exit code (128 + signal for a killed process).
pub fn run(store: &Store, id: &str, opts: &RunOptions) -> Result<i32, ContainerError> {
    if !opts.detach {
        // The init is our grandchild: become its reaper so that we can wait for it.
        let _ = sys::set_child_subreaper();
    }
    // A terminal with nobody to hand it to: we hold the pty master and proxy our stdio.
    let (c, ours) = create_with_console(store, id, &opts.create, !opts.detach)?;
    let master = match ours
        .map(|s| crate::process::tty::recv_master(s.as_raw_fd()))
        .transpose()
    {
        Ok(m) => m,
        Err(e) => {
            let _ = delete(store, id, true);
            return Err(e.into());
        }
    };
    if let Err(e) = start(store, id) {
        let _ = delete(store, id, true);
        return Err(e);
    }
    if opts.detach {
        return Ok(0);
    }
    if let Some(m) = &master {
        crate::process::tty::copy_winsize(0, m);
        let _raw = crate::process::tty::RawMode::enter(0);
        crate::process::tty::proxy(m);
    }
    let code = wait_exit(c.rec.pid);
    let _ = std::io::stdout().flush();
    delete(store, id, true)?;
    Ok(code)
}

/// `pause` (freeze every process of the container) and `resume`.
pub fn pause(store: &Store, id: &str, frozen: bool) -> Result<(), ContainerError> {
    let locked = store.lock(id)?;
    let mut c = Container {
        rec: locked.read()?,
        dir: locked.dir.clone(),
    };
    let st = c.status();
    let (want, to) = if frozen {
        (Status::Running, Status::Paused)
    } else {
        (Status::Paused, Status::Running)
    };
    if st != want {
        let what = if frozen {
            "only a running container can be paused"
        } else {
            "container not paused"
        };
        return Err(wrong(&c, st, what));
    }
    let cg = c.cgroup().ok_or_else(|| {
        ContainerError::Config(format!("container {id}: it has no cgroup to freeze"))
    })?;
    cg.freeze(frozen)?;
    c.rec.status = to;
    locked.write(&c.rec)?;
    Ok(())
}

/// Host PIDs of every process in the container (`ps --format json`).
pub fn pids(store: &Store, id: &str) -> Result<Vec<i32>, ContainerError> {
    let c = Container::load(store, id)?;
    let mut pids = match c.cgroup() {
        Some(cg) => cg.pids(),
        None => vec![],
    };
    if pids.is_empty() && alive(c.rec.pid, c.rec.pid_start) {
        pids.push(c.rec.pid);
    }
    pids.sort_unstable();
    Ok(pids)
}
