//! The state store: one directory per container under the runtime root, holding `state.json`
//! (written atomically: temp file + rename) and the `exec.fifo` that `start` opens.
//!
//! A container's directory is created with `mkdir`, so of two concurrent `create`s with one ID
//! exactly one wins; every call that reads-modifies-writes a container takes an exclusive
//! `flock` on the directory, so concurrent calls on one container serialise instead of
//! corrupting each other. The record is written *before* anything is made on the host
//! (status `creating`, with the cgroup it is about to create), so that `delete --force` after a
//! crash at any point finds everything that may exist.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sys;

pub const STATE_FILE: &str = "state.json";
pub const FIFO: &str = "exec.fifo";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} is locked by another runvz call (waited {1}s)")]
    Busy(String, u64),
    #[error("state of container {id}: {source}")]
    Io { id: String, source: io::Error },
    #[error("state of container {id} is unreadable: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("runtime root {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
}

/// The status recorded by the runtime. The status a caller sees is derived from this and the
/// real process (see `container::Container::status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// The persistent record of one container.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    /// Host PID of the container's init; 0 until known.
    pub pid: i32,
    /// Start time (clock ticks since boot) of `pid`, to tell it from a reused PID.
    #[serde(default)]
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub owner: String,
    /// The cgroup path the container uses (recorded before it is created).
    #[serde(default)]
    pub cgroup_path: Option<PathBuf>,
    /// The container has no mount namespace of its own: its mounts live in the runtime's
    /// namespace below `rootfs` and `delete` unmounts them.
    #[serde(default)]
    pub host_mounts: bool,
    /// The `runvz create` process making this container, while status is `creating`.
    #[serde(default)]
    pub creator_pid: i32,
    #[serde(default)]
    pub creator_start: u64,
    /// The container's config, kept for what `delete` needs later (poststop hooks).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// The OpenVZ settings in force (from the io.runvz.* annotations, changed by `set`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ub: Option<serde_json::Value>,
    /// The disk quota setup (`disk::Made`), recorded before each part of it is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<serde_json::Value>,
    /// Host network links the runtime makes for this container (recorded before they are
    /// made; `delete` removes them, and with them their peers, routes and qdiscs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net_links: Vec<String>,
}

/// The runtime root directory (`--root`).
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// One container's directory, exclusively locked while this value lives.
pub struct Locked {
    pub id: String,
    pub dir: PathBuf,
    _lock: OwnedFd,
}

/// How long a call waits for another call on the same container before giving up.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn lock_dir(dir: &Path, id: &str) -> Result<OwnedFd, StateError> {
    let fd = sys::open(dir, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOENT) {
            StateError::NotFound(id.to_string())
        } else {
            StateError::Io {
                id: id.to_string(),
                source: e,
            }
        }
    })?;
    // Poll rather than block: a lock that is never released (a stuck process holding it)
    // must end in an error, not a hung engine.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut pause = std::time::Duration::from_micros(200);
    loop {
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(fd);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) && e.raw_os_error() != Some(libc::EINTR) {
            return Err(StateError::Io {
                id: id.to_string(),
                source: e,
            });
        }
        if std::time::Instant::now() > deadline {
            return Err(StateError::Busy(id.to_string(), LOCK_WAIT.as_secs()));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
}

impl Store {
    pub fn new(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ensure_root(&self) -> Result<(), StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.root)
            .map_err(|source| StateError::Root {
                path: self.root.clone(),
                source,
            })
    }

    /// Claim a new container ID with its first record: fails if the ID exists. The
    /// directory is built under a temporary name and renamed into place (never replacing),
    /// so a container is never visible without a record. The lock is held until dropped.
    pub fn claim(&self, id: &str, rec: &Record) -> Result<Locked, StateError> {
        self.ensure_root()?;
        let dir = self.root.join(id);
        if dir.exists() {
            return Err(StateError::Exists(id.to_string()));
        }
        let io = |source| StateError::Io {
            id: id.to_string(),
            source,
        };
        let tmp = self.root.join(format!(".{id}.{}.new", std::process::id()));
        fs::DirBuilder::new().mode(0o711).create(&tmp).map_err(io)?;
        let lock = match lock_dir(&tmp, id) {
            Ok(l) => l,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let staged = Locked {
            id: id.to_string(),
            dir: tmp.clone(),
            _lock: lock,
        };
        if let Err(e) = staged.write(rec) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        match sys::rename_noreplace(&tmp, &dir) {
            Ok(()) => Ok(Locked { dir, ..staged }),
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Err(StateError::Exists(id.to_string()))
                } else {
                    Err(io(e))
                }
            }
        }
    }

    /// Remove staging directories of `id` whose process is gone (a `create` killed inside
    /// `claim`, a `delete` killed inside `Locked::remove`). Called by `delete`, not by `create`: it reads the whole root, which a
    /// create on a host with thousands of containers should not. Returns how many were removed.
    pub fn sweep_staging(&self, id: &str) -> usize {
        let prefix = format!(".{id}.");
        let Ok(rd) = fs::read_dir(&self.root) else {
            return 0;
        };
        let mut n = 0;
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".new").or_else(|| r.strip_suffix(".old")))
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() as i32 && sys::proc_start_time(pid).is_none() {
                let _ = fs::remove_dir_all(e.path());
                n += 1;
            }
        }
        n
    }

    /// Lock an existing container. Fails with NotFound if it does not exist (also when it was
    /// deleted while we waited for the lock).
    pub fn lock(&self, id: &str) -> Result<Locked, StateError> {
        let dir = self.root.join(id);
        let lock = lock_dir(&dir, id)?;
        let locked = Locked {
            id: id.to_string(),
            dir,
            _lock: lock,
        };
        if !locked.dir.join(STATE_FILE).exists() && !locked.dir.exists() {
            return Err(StateError::NotFound(id.to_string()));
        }
        Ok(locked)
    }

    /// Read a container's record without locking (the file is replaced atomically).
    pub fn read(&self, id: &str) -> Result<Record, StateError> {
        read_record(&self.root.join(id), id)
    }

    /// IDs of all containers in the store.
    pub fn ids(&self) -> Result<Vec<String>, StateError> {
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => {
                return Err(StateError::Root {
                    path: self.root.clone(),
                    source,
                })
            }
        };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

fn read_record(dir: &Path, id: &str) -> Result<Record, StateError> {
    let data = match fs::read(dir.join(STATE_FILE)) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StateError::NotFound(id.to_string()))
        }
        Err(source) => {
            return Err(StateError::Io {
                id: id.to_string(),
                source,
            })
        }
    };
    serde_json::from_slice(&data).map_err(|e| StateError::Corrupt {
        id: id.to_string(),
        reason: e.to_string(),
    })
}

impl Locked {
    pub fn read(&self) -> Result<Record, StateError> {
        read_record(&self.dir, &self.id)
    }

    /// Replace the record atomically (write a temp file, fsync, rename).
    pub fn write(&self, rec: &Record) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            id: self.id.clone(),
            source,
        };
        let tmp = self.dir.join(".state.json.tmp");
        let data = serde_json::to_vec(rec).map_err(|e| io(io::Error::other(e)))?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&data).map_err(io)?;
        f.sync_data().map_err(io)?;
        fs::rename(&tmp, self.dir.join(STATE_FILE)).map_err(io)
    }

    pub fn fifo_path(&self) -> PathBuf {
        self.dir.join(FIFO)
    }

    /// Remove the container's directory and everything in it. The directory is first renamed
    /// to a hidden `.ID.PID.old` in one step, so a runvz killed while removing it never leaves
    /// an entry without its record (which `delete` could no longer find); `delete` sweeps what
    /// such a kill leaves (see [`Store::sweep_staging`]).
    pub fn remove(self) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            id: self.id.clone(),
            source,
        };
        let parent = self.dir.parent().unwrap_or(Path::new("."));
        let gone = parent.join(format!(".{}.{}.old", self.id, std::process::id()));
        match fs::rename(&self.dir, &gone) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        }
        match fs::remove_dir_all(&gone) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }
}

/// Now as RFC 3339 UTC with nanoseconds, as runc writes `created`.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_shape() {
        let s = now_rfc3339();
        assert_eq!(s.len(), 30, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T', "{s}");
    }

    #[test]
    fn claim_is_exclusive_and_remove_cleans() {
        let root = std::env::temp_dir().join(format!("runvz-state-{}", std::process::id()));
        let store = Store::new(&root);
        let rec = Record {
            oci_version: "1.0.2".into(),
            id: "c1".into(),
            status: Status::Creating,
            pid: 0,
            pid_start: 0,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: now_rfc3339(),
            annotations: Default::default(),
            owner: String::new(),
            cgroup_path: None,
            host_mounts: false,
            creator_pid: 0,
            creator_start: 0,
            config: None,
            ub: None,
            disk: None,
            net_links: Vec::new(),
        };
        let l = store.claim("c1", &rec).unwrap();
        assert_eq!(store.read("c1").unwrap().id, "c1");
        assert!(matches!(
            store.claim("c1", &rec),
            Err(StateError::Exists(_))
        ));
        l.remove().unwrap();
        assert!(matches!(store.read("c1"), Err(StateError::NotFound(_))));
        assert!(matches!(store.lock("c1"), Err(StateError::NotFound(_))));
        // What a delete killed inside `remove` leaves (renamed away, half removed; its pid
        // gone) is swept; a live process's is not.
        let dead = root.join(format!(".c1.{}.old", i32::MAX));
        let live = root.join(format!(".c1.{}.old", std::process::id()));
        fs::create_dir_all(dead.join("sub")).unwrap();
        fs::create_dir_all(&live).unwrap();
        assert_eq!(store.sweep_staging("c1"), 1);
        assert!(!dead.exists() && live.exists());
        assert_eq!(
            fs::read_dir(&root).unwrap().count(),
            1,
            "only the live one left"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
