//! Changing a running container's per-namespace and per-process limits (`runvz set`): the
//! parts that are not cgroup files.

use std::os::fd::AsRawFd;

use nix::sched::CloneFlags;

/// Run `f` in a short-lived child that joined namespace `ns` ("ipc", "mnt") of `pid`; its
/// error comes back as text.
fn in_namespace(
    pid: i32,
    ns: &str,
    flag: CloneFlags,
    f: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let (r, w) = nix::unistd::pipe().map_err(|e| e.to_string())?;
    // SAFETY: single-threaded caller; the child only joins a namespace, runs `f` and exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| e.to_string())? {
        nix::unistd::ForkResult::Child => {
            drop(r);
            let res = std::fs::File::open(format!("/proc/{pid}/ns/{ns}"))
                .map_err(|e| e.to_string())
                .and_then(|f| nix::sched::setns(f, flag).map_err(|e| e.to_string()))
                .and_then(|_| f());
            if let Err(e) = res {
                let _ = nix::unistd::write(&w, e.as_bytes());
            }
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut buf = vec![0u8; 4096];
            let n = nix::unistd::read(r.as_raw_fd(), &mut buf).unwrap_or(0);
            let _ = nix::sys::wait::waitpid(child, None);
            if n > 0 {
                Err(String::from_utf8_lossy(&buf[..n]).into_owned())
            } else {
                Ok(())
            }
        }
    }
}

/// shmpages: kernel.shmall/shmmax in the container's IPC namespace.
pub fn set_shm(pid: i32, limit_pages: u64) -> Result<(), String> {
    in_namespace(pid, "ipc", CloneFlags::CLONE_NEWIPC, || {
        std::fs::write("/proc/sys/kernel/shmall", limit_pages.to_string())
            .map_err(|e| format!("kernel.shmall: {e}"))?;
        std::fs::write(
            "/proc/sys/kernel/shmmax",
            (limit_pages * super::PAGE).to_string(),
        )
        .map_err(|e| format!("kernel.shmmax: {e}"))
    })
}

/// numpty: remount the container's devpts with `max=N`.
pub fn set_numpty(pid: i32, max: Option<u64>) -> Result<(), String> {
    in_namespace(pid, "mnt", CloneFlags::CLONE_NEWNS, || {
        // After setns into a mount namespace our root is that namespace's root.
        let data = match max {
            Some(m) => format!("max={m}"),
            None => format!("max={}", 1 << 20),
        };
        nix::mount::mount(
            None::<&str>,
            "/dev/pts",
            Some("devpts"),
            nix::mount::MsFlags::MS_REMOUNT
                | nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NOEXEC,
            Some(data.as_str()),
        )
        .map_err(|e| format!("remounting /dev/pts with {data}: {e}"))
    })
}

/// A per-process limit on every process of the container (prlimit). Raising another
/// process's hard limit, or touching a process of another user, needs CAP_SYS_RESOURCE;
/// failures are returned as warnings.
pub fn set_rlimit(
    pids: &[i32],
    resource: libc::__rlimit_resource_t,
    soft: u64,
    hard: u64,
) -> Vec<String> {
    let mut warnings = vec![];
    for p in pids {
        let new = libc::rlimit64 {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: prlimit64 with a valid new limit and no old-limit buffer.
        let r = unsafe { libc::prlimit64(*p, resource, &new, std::ptr::null_mut()) };
        if r < 0 {
            warnings.push(format!(
                "process {p}: rlimit {resource}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    warnings
}
