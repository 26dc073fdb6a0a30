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
