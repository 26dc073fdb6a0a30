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

/// Make sure this process runs from a read-only mount of its binary, re-executing if needed.
/// Returns only when that holds (or when it cannot be arranged, which is logged).
pub fn ensure_sealed() {
    let exe = Path::new("/proc/self/exe");
    if let Ok(fd) = sys::open(exe, libc::O_PATH, 0) {
        if on_readonly_mount(&fd) {
            std::env::remove_var(MARK);
            return;
        }
    }
    if std::env::var_os(MARK).is_some() {
        // We were re-executed and still are not read-only: do not loop.
        std::env::remove_var(MARK);
        tracing::warn!("could not run from a read-only copy of the runvz binary");
        return;
    }
    let clone = match sys::open_tree_clone(exe) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("open_tree of the runvz binary: {e}");
            return;
        }
    };
    if let Err(e) = sys::mount_setattr_fd(&clone, libc::MOUNT_ATTR_RDONLY) {
        tracing::warn!("making the runvz binary's mount read-only: {e}");
        return;
    }
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
    tracing::warn!("re-executing from a read-only copy of the runvz binary: {err:?}");
}
