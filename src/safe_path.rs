//! Resolving paths inside a container's rootfs without ever leaving it.
//!
//! Every lookup goes through openat2(2) with `RESOLVE_IN_ROOT`, so `..` and absolute symlinks
//! are clamped to the rootfs the way they would be after `pivot_root`, and magic links
//! (`/proc/self/fd/N`-style) are refused. Callers receive an `O_PATH` fd and act on the object
//! through it (mount onto `/proc/self/fd/N`, `mknodat`, ...), so a symlink swapped in between
//! the check and the use cannot redirect the operation (CVE-2021-30465, CVE-2024-45310).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::sys;

const RESOLVE_IN_ROOT: u64 = 0x10;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;

#[derive(Debug, thiserror::Error)]
pub enum SafePathError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: expected a {expected}")]
    WrongType {
        path: PathBuf,
        expected: &'static str,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SafePathError + '_ {
    move |source| SafePathError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The kind of object a mount target must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// A directory that acts as `/` for every lookup made through it.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// Turn an in-container path into a relative one: `/a/../b` -> `b`, never escaping.
fn relative(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

impl Root {
    /// Open a host directory as the root for later lookups.
    pub fn open(path: &Path) -> Result<Self, SafePathError> {
        let fd = sys::open(path, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(io_err(path))?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The host path this root was opened from (for messages).
    pub fn host_path(&self) -> &Path {
        &self.path
    }

    /// Open `path` (interpreted inside the root) with `flags`; symlinks are followed but stay
    /// inside the root; magic links are refused.
    pub fn open_in(&self, path: &Path, flags: i32) -> Result<OwnedFd, SafePathError> {
        let rel = relative(path);
        let target = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel.as_path()
        };
        sys::openat2(
            self.fd.as_raw_fd(),
            target,
            flags,
            0,
            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        )
        .map_err(io_err(path))
    }

    /// Like `open_in` but no symlink at all may appear on the path (for /proc, /sys and /dev
    /// targets, where a symlink is an attack rather than a layout choice).
    pub fn open_no_symlinks(&self, path: &Path, flags: i32) -> Result<OwnedFd, SafePathError> {
        let rel = relative(path);
        let target = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel.as_path()
        };
        sys::openat2(
            self.fd.as_raw_fd(),
            target,
            flags,
            0,
            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS,
        )
        .map_err(io_err(path))
    }

    /// An `O_PATH` fd for `path`, creating it (and missing parents, as directories with
    /// `0755`) as `kind` when it does not exist. An existing object of the other kind is an
    /// error, as a file bind-mounted over a directory would be.
    pub fn mkdir_all(&self, path: &Path, kind: Kind) -> Result<OwnedFd, SafePathError> {
        let rel = relative(path);
        let comps: Vec<_> = rel.components().collect();
        let mut dir = self.open_in(Path::new("."), libc::O_PATH | libc::O_DIRECTORY)?;
        let mut sofar = PathBuf::new();
        for (i, c) in comps.iter().enumerate() {
            sofar.push(c);
            let last = i + 1 == comps.len();
            let want_file = last && kind == Kind::File;
            match self.open_in(&sofar, libc::O_PATH) {
                Ok(fd) => {
                    let st = sys::fstat(&fd).map_err(io_err(path))?;
                    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                    if !want_file && !is_dir {
                        return Err(SafePathError::WrongType {
                            path: path.to_path_buf(),
                            expected: "directory",
                        });
                    }
                    if want_file && is_dir {
                        return Err(SafePathError::WrongType {
                            path: path.to_path_buf(),
                            expected: "file (not a directory)",
                        });
                    }
                    dir = fd;
                }
                Err(SafePathError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    let name = CString::new(c.as_os_str().as_bytes())
                        .map_err(|_| io_err(path)(io::Error::from_raw_os_error(libc::EINVAL)))?;
                    if want_file {
                        // SAFETY: `dir` is a live directory fd and `name` a single path
                        // component; O_NOFOLLOW|O_EXCL means we never follow a symlink here.
                        let fd = unsafe {
                            libc::openat(
                                dir.as_raw_fd(),
                                name.as_ptr(),
                                libc::O_CREAT
                                    | libc::O_EXCL
                                    | libc::O_NOFOLLOW
                                    | libc::O_CLOEXEC
                                    | libc::O_RDONLY,
                                0o644,
                            )
                        };
                        if fd < 0 {
                            let e = io::Error::last_os_error();
                            if e.raw_os_error() != Some(libc::EEXIST) {
                                return Err(io_err(path)(e));
                            }
                        } else {
                            // SAFETY: fd was just returned to us by openat.
                            unsafe { libc::close(fd) };
                        }
                    } else {
                        // SAFETY: `dir` is a live directory fd and `name` a single component;
                        // mkdirat never follows a symlink in its last component.
                        let r = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) };
                        if r < 0 {
                            let e = io::Error::last_os_error();
                            if e.raw_os_error() != Some(libc::EEXIST) {
                                return Err(io_err(path)(e));
                            }
                        }
                    }
                    // Re-resolve from the root: a symlink raced in here stays inside it.
                    dir = self.open_in(&sofar, libc::O_PATH)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "runvz-safepath-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn relative_never_escapes() {
        assert_eq!(
            relative(Path::new("/../../etc/passwd")),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(relative(Path::new("a/./b/../c")), PathBuf::from("a/c"));
        assert_eq!(relative(Path::new("/")), PathBuf::new());
    }

    #[test]
    fn absolute_symlink_is_clamped_to_root() {
        let d = tmp();
        let root = d.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(d.join("outside")).unwrap();
        symlink("/outside", root.join("escape")).unwrap();
        let r = Root::open(&root).unwrap();
        // Dangling inside the root: refused, and nothing is made on the host.
        assert!(r.mkdir_all(Path::new("/escape/x"), Kind::Dir).is_err());
        assert!(!d.join("outside/x").exists());
        // Resolving inside the root: created there, never in the host's d/outside.
        std::fs::create_dir_all(root.join("outside")).unwrap();
        r.mkdir_all(Path::new("/escape/x"), Kind::Dir).unwrap();
        assert!(root.join("outside/x").is_dir());
        assert!(!d.join("outside/x").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn dotdot_symlink_is_clamped_and_files_are_created() {
        let d = tmp();
        let root = d.join("root");
        std::fs::create_dir_all(&root).unwrap();
        symlink("../../../..", root.join("up")).unwrap();
        let r = Root::open(&root).unwrap();
        r.mkdir_all(Path::new("up/f"), Kind::File).unwrap();
        assert!(root.join("f").is_file());
        assert!(!d.join("f").exists());
        assert!(matches!(
            r.mkdir_all(Path::new("f"), Kind::Dir),
            Err(SafePathError::WrongType { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn no_symlinks_mode_refuses_symlinks() {
        let d = tmp();
        let root = d.join("root");
        std::fs::create_dir_all(root.join("real")).unwrap();
        symlink("real", root.join("proc")).unwrap();
        let r = Root::open(&root).unwrap();
        assert!(r
            .open_no_symlinks(Path::new("/proc"), libc::O_PATH)
            .is_err());
        assert!(r.open_in(Path::new("/proc"), libc::O_PATH).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
