//! Process setup: forking the container's processes, entering namespaces, and turning the
//! container init into the user's process.
//!
//! `spawn` runs in `runvz create`; it forks an intermediate process that enters or creates
//! the namespaces and forks the container init (PID 1 of a new PID namespace); `init` is what
//! that init runs until it execs the user's program at `start`.

pub mod channel;
pub mod exe;
pub mod exec;
pub mod identity;
pub mod init;
pub mod spawn;
pub mod tty;
pub mod user_process;

pub use spawn::{spawn, Event, InitConfig};

/// Fork a helper that dies with the calling process (PDEATHSIG) and runs `f`; an error of `f`
/// is sent on `chan` as the helper's last word. Right after the fork the helper closes every
/// fd from `first_fd` up except `chan` and `keep`: nothing of the runtime's (the state lock,
/// the log) may reach a container. Returns the helper's PID. Single-threaded callers only.
pub(crate) fn fork_helper(
    chan: &channel::Channel,
    first_fd: u32,
    keep: &[std::os::fd::RawFd],
    f: impl FnOnce() -> Result<(), ProcessError>,
) -> Result<nix::unistd::Pid, ProcessError> {
    let me = nix::unistd::getpid();
    // SAFETY: runvz is single-threaded when it forks, so the child may run arbitrary code.
    match unsafe { nix::unistd::fork() }.map_err(ProcessError::Fork)? {
        nix::unistd::ForkResult::Child => {
            let mut keep: Vec<u32> = keep.iter().map(|k| *k as u32).collect();
            keep.push(chan.raw_fd() as u32);
            keep.sort_unstable();
            let mut first = first_fd;
            for k in keep {
                let _ = crate::sys::close_range(first, k.saturating_sub(1));
                first = first.max(k + 1);
            }
            let _ = crate::sys::close_range(first, u32::MAX);
            let _ = crate::sys::set_parent_death_signal(libc::SIGKILL);
            let code = if nix::unistd::getppid() != me {
                1
            } else {
                match f() {
                    Ok(()) => 0,
                    Err(e) => {
                        let _ = chan.send(&channel::Msg::Error(e.to_string()));
                        1
                    }
                }
            };
            // SAFETY: _exit skips atexit handlers and destructors that belong to the parent.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => Ok(child),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{0}")]
    Child(String),
    #[error(transparent)]
    Channel(#[from] channel::ChannelError),
    #[error("fork: {0}")]
    Fork(nix::Error),
    #[error("writing id maps of the user namespace: {0}")]
    IdMap(std::io::Error),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error("{0}")]
    Hook(String),
}
