//! Which namespaces a container gets (new or joined by path) and the syscalls to enter them.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("joining {typ} namespace {path}: {source}")]
    Join {
        typ: LinuxNamespaceType,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating namespaces ({flags:?}): {source}")]
    Unshare {
        flags: CloneFlags,
        source: nix::Error,
    },
}

pub fn clone_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        // Refused by bundle validation.
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

/// The namespace plan of a container.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Namespaces to join, user namespace first (it decides the rights for the others).
    pub join: Vec<(LinuxNamespaceType, PathBuf)>,
    /// Namespaces to create (without CLONE_NEWUSER, see `new_user`).
    pub new: CloneFlags,
    pub new_user: bool,
}

impl Plan {
    pub fn from_spec(spec: &Spec) -> Plan {
        let mut plan = Plan {
            join: vec![],
            new: CloneFlags::empty(),
            new_user: false,
        };
        let list = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
        for ns in list.into_iter().flatten() {
            match (ns.typ(), ns.path()) {
                (t, Some(p)) => plan.join.push((t, p.clone())),
                (LinuxNamespaceType::User, None) => plan.new_user = true,
                (t, None) => plan.new |= clone_flag(t),
            }
        }
        plan.join
            .sort_by_key(|(t, _)| *t != LinuxNamespaceType::User);
        plan
    }

    pub fn has(&self, t: LinuxNamespaceType) -> bool {
        (t == LinuxNamespaceType::User && self.new_user)
            || self.new.contains(clone_flag(t))
            || self.join.iter().any(|(j, _)| *j == t)
    }

    pub fn in_userns(&self) -> bool {
        self.has(LinuxNamespaceType::User)
    }
}

/// setns(2) into the namespace at `path`.
pub fn join(typ: LinuxNamespaceType, path: &Path) -> Result<(), NamespaceError> {
    let err = |source| NamespaceError::Join {
        typ,
        path: path.to_path_buf(),
        source,
    };
    let fd = sys::open(path, libc::O_RDONLY, 0).map_err(err)?;
    // SAFETY: setns on an fd we own; the nstype restricts it to the expected kind.
    let r = unsafe { libc::setns(fd.as_raw_fd(), clone_flag(typ).bits()) };
    if r < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

pub fn unshare(flags: CloneFlags) -> Result<(), NamespaceError> {
    if flags.is_empty() {
        return Ok(());
    }
    nix::sched::unshare(flags).map_err(|source| NamespaceError::Unshare { flags, source })
}
