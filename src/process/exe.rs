//! Keeping the container away from the runvz binary (CVE-2019-5736).
//!
//! A process that runvz forks into a container runs the runvz binary until it execs the
//! user's program; if that program is a script whose interpreter is `/proc/self/exe`, the
//! container gets a process whose executable *is* runvz, and could reopen it for writing once
//! runvz exits. So before forking into a container, runvz re-executes itself from a private,
//! read-only bind mount of its own binary: every `/proc/self/exe` the container can reach then
//! sits on a read-only mount, and writes fail with EROFS. No copy of the binary is made; when
//! the binary already lives on a read-only mount, nothing is done at all.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::sys;

const MARK: &str = "_RUNVZ_SEALED_EXE";

fn on_readonly_mount(fd: &impl AsRawFd) -> bool {
    // SAFETY: zeroed statvfs is a valid out-buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out-buffer.
    let r = unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) };
    r == 0 && st.f_flag & libc::ST_RDONLY != 0
}

/// Why the runvz binary could not be sealed; runvz then refuses to enter a container.
#[derive(Debug, thiserror::Error)]
pub enum ExeError {
    #[error("cannot protect the runvz binary (CVE-2019-5736): {step}: {source}")]
    Seal {
        step: &'static str,
        source: std::io::Error,
    },
    #[error(
        "cannot protect the runvz binary (CVE-2019-5736): still not on a read-only mount after re-executing"
    )]
    StillWritable,
}

fn seal_err(step: &'static str) -> impl FnOnce(std::io::Error) -> ExeError {
    move |source| ExeError::Seal { step, source }
}

/// Make sure this process runs from a read-only mount of its binary, re-executing if needed.
/// Returns `Ok` only when that holds: runvz never forks into a container from a writable
/// binary (fail closed, unlike a warning that an attacker could provoke).
pub fn ensure_sealed() -> Result<(), ExeError> {
    let exe = Path::new("/proc/self/exe");
    let fd = sys::open(exe, libc::O_PATH, 0).map_err(seal_err("opening /proc/self/exe"))?;
    if on_readonly_mount(&fd) {
        std::env::remove_var(MARK);
        return Ok(());
    }
    if std::env::var_os(MARK).is_some() {
        // Re-executed (or told so by the caller's environment) and still not read-only: the
        // mark only stops a loop, it never lets runvz go on unsealed.
        return Err(ExeError::StillWritable);
    }
    let clone = sys::open_tree_clone(exe).map_err(seal_err("open_tree of the binary"))?;
    sys::mount_setattr_fd(&clone, libc::MOUNT_ATTR_RDONLY)
        .map_err(seal_err("making the binary's mount read-only"))?;
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    std::env::set_var(MARK, "1");
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let err = nix::unistd::execveat(
        Some(clone.as_raw_fd()),
        c"",
        &args,
        &env,
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    );
    std::env::remove_var(MARK);
    let errno = match err {
        Err(e) => e as i32,
        Ok(_) => libc::EINVAL,
    };
    Err(ExeError::Seal {
        step: "re-executing from the read-only mount",
        source: std::io::Error::from_raw_os_error(errno),
    })
}
