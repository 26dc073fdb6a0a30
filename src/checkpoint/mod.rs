//! CRIU, driven through its RPC interface (`criu swrk`): one request per checkpoint, restore or
//! feature check, with CRIU's notifications (`post-restore`, `orphan-pts-master`, ...) handed to
//! the caller. The container lifecycle around it is `container::checkpoint`.

pub mod proto;
pub mod rpc;

use std::path::{Path, PathBuf};

pub use rpc::{Criu, Notify, Opts, ReqType, Resp};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("criu not found: install CRIU >= 4.1 (hack/install-criu) or pass --criu PATH")]
    NotFound,
    #[error("criu {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("criu RPC: {0}")]
    Io(#[from] nix::Error),
    #[error("criu RPC: {0}")]
    Protocol(String),
    #[error("criu {what} failed{}: {msg} (see {log})", errno_text(*.errno))]
    Failed {
        what: &'static str,
        errno: i32,
        msg: String,
        log: String,
    },
    #[error("{0}")]
    Notify(String),
}

fn errno_text(e: i32) -> String {
    if e > 0 {
        format!(" ({})", nix::errno::Errno::from_raw(e).desc())
    } else {
        String::new()
    }
}

/// The criu binary: `--criu PATH` if given (a bare name is looked up in PATH), else `criu` in PATH.
pub fn find(explicit: Option<&Path>) -> Result<PathBuf, CheckpointError> {
    let name = explicit.unwrap_or(Path::new("criu"));
    if name.components().count() > 1 {
        return if name.is_file() {
            Ok(name.to_path_buf())
        } else {
            Err(CheckpointError::NotFound)
        };
    }
    let path =
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/sbin:/usr/sbin:/usr/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(CheckpointError::NotFound)
}
