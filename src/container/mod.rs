//! The container lifecycle: `create`, `start`, `state`, `kill`, `delete`, `run`, `list`,
//! `events`.
//!
//! A container's truth is split in two: what the runtime recorded (`state::Record`) and what
//! the kernel says (is the init alive, is it the same process). `Container::status` combines
//! them, so a crashed runtime or a killed container never leaves a status that lies.

mod checkpoint;
mod create;
mod events;
mod exec;
mod migrate;
mod ops;
mod ub;

pub use checkpoint::{checkpoint, restore, CheckpointOptions, CriuFlags, RestoreOptions};
pub use create::{create, CreateOptions};
pub use events::{events, stats, Event};
pub use exec::{exec, ExecOptions};
pub use migrate::{migrate, receive, MigrateOptions, MigrateReport, ReceiveOptions};
pub use ops::{delete, kill, list, pause, pids, run, start, state, RunOptions};
pub use ub::{beancounters, merge_resources, set, update};

use std::path::PathBuf;

use crate::state::{Record, StateError, Status, Store};
use crate::{bundle, cgroups, hooks, process, signal, sys};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    #[error(transparent)]
    Hook(#[from] hooks::HookError),
    #[error(transparent)]
    Signal(#[from] signal::SignalError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Ub(#[from] crate::ub::UbError),
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Migrate(#[from] crate::migrate::MigrateError),
    #[error("{0}")]
    InvalidId(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Tty(#[from] process::tty::TtyError),
    #[error("container {id} is {status}: {what}")]
    WrongState {
        id: String,
        status: Status,
        what: String,
    },
    #[error("container {id}: {what}: {source}")]
    Io {
        id: String,
        what: String,
        source: std::io::Error,
    },
}

/// A container as found in the store.
pub struct Container {
    pub rec: Record,
    pub dir: PathBuf,
}

/// Whether `pid` still is the process that had `start` as its start time (and not a zombie).
fn alive(pid: i32, start: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    match sys::proc_start_time(pid) {
        Some((s, state)) => s == start && state != 'Z' && state != 'X',
        None => false,
    }
}

/// Lock a container that must be live (created, running or paused) for a change.
pub(crate) fn lock_live(
    store: &Store,
    id: &str,
) -> Result<(crate::state::Locked, Container), ContainerError> {
    let locked = store.lock(id)?;
    let c = Container {
        rec: locked.read()?,
        dir: locked.dir.clone(),
    };
    c.require_live()?;
    Ok((locked, c))
}

impl Container {
    pub fn load(store: &Store, id: &str) -> Result<Container, ContainerError> {
        let rec = store.read(id)?;
        Ok(Container {
            rec,
            dir: store.root().join(id),
        })
    }

    /// An error unless the container is created, running or paused.
    pub(crate) fn require_live(&self) -> Result<(), ContainerError> {
        let st = self.status();
        if matches!(st, Status::Stopped | Status::Creating) {
            return Err(ContainerError::WrongState {
                id: self.rec.id.clone(),
                status: st,
                what: "container not running".into(),
            });
        }
        Ok(())
    }

    /// The status derived from the record and the live process.
    pub fn status(&self) -> Status {
        let r = &self.rec;
        match r.status {
            Status::Creating if alive(r.creator_pid, r.creator_start) => Status::Creating,
            // The create that made it died: whatever is left is not a usable container.
            Status::Creating => Status::Stopped,
            Status::Stopped => Status::Stopped,
            Status::Created | Status::Running | Status::Paused => {
                if !alive(r.pid, r.pid_start) {
                    Status::Stopped
                } else if self.dir.join(crate::state::FIFO).exists() {
                    Status::Created
                } else if r.status == Status::Paused {
                    Status::Paused
                } else {
                    Status::Running
                }
            }
        }
    }

    /// The OCI state document (`runvz state`).
    pub fn oci_state(&self) -> serde_json::Value {
        let status = self.status();
        let pid = if status == Status::Stopped {
            0
        } else {
            self.rec.pid
        };
        serde_json::json!({
            "ociVersion": self.rec.oci_version,
            "id": self.rec.id,
            "pid": pid,
            "status": status.to_string(),
            "bundle": self.rec.bundle,
            "rootfs": self.rec.rootfs,
            "created": self.rec.created,
            "annotations": self.rec.annotations,
            "owner": self.rec.owner,
        })
    }

    pub fn cgroup(&self) -> Option<cgroups::Cgroup> {
        self.rec
            .cgroup_path
            .as_deref()
            .and_then(|p| cgroups::Cgroup::open(p, None).ok())
    }
}
