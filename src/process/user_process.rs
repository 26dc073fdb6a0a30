//! Turning a process that is already in the container's namespaces into the user's process:
//! terminal, rlimits, capabilities, user, cwd, seccomp, fds — shared by the container init
//! and `runvz exec`. Order matters and is explained at each step.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Process;

use super::{identity, tty};
use crate::seccomp::{Compiled, SeccompError};
use crate::sys;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum UserProcessError {
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Tty(#[from] tty::TtyError),
    #[error("{0}")]
    Msg(String),
}

fn msg(s: impl Into<String>) -> UserProcessError {
    UserProcessError::Msg(s.into())
}

pub struct Options<'a> {
    pub seccomp: Option<&'a Compiled>,
    /// A connected socket to send the pty master to (process.terminal).
    pub console: Option<RawFd>,
    /// Bind the terminal onto /dev/console (the container's init, not `exec`).
    pub bind_console: bool,
    pub preserve_fds: i32,
    /// setgroups(2) is allowed (not denied in this user namespace).
    pub setgroups_allowed: bool,
}

/// The program to exec, ready as C strings, and the seccomp filter still to install right
/// before the execve (with no_new_privs: then the runtime's own last syscalls — the ready
/// message, waiting for `start`, startContainer hooks — need not be allowed by the profile).
pub struct Exec<'a> {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    late_seccomp: Option<&'a Compiled>,
}

/// Everything up to the execve, in the calling (already namespaced) process.
pub fn prepare<'a>(p: &Process, o: &Options<'a>) -> Result<Exec<'a>, UserProcessError> {
    if p.terminal().unwrap_or(false) {
        let sock = o
            .console
            .ok_or_else(|| msg("process.terminal needs a console socket"))?;
        let size = p
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        tty::setup_console(sock, p.user().uid(), size, o.bind_console)?;
        // SAFETY: the console socket is ours and no longer needed.
        unsafe { libc::close(sock) };
    }
    identity::set_rlimits(p.rlimits().as_deref().unwrap_or(&[]))?;
    let caps = p.capabilities().as_ref();
    identity::drop_bounding(caps)?;
    // Enter the cwd as root first (checked before any seccomp filter could deny getcwd);
    // a cwd only the user may enter is retried after the switch.
    let cwd_done = enter_cwd(p.cwd()).is_ok();
    let nnp = p.no_new_privileges().unwrap_or(false);
    // Nothing but stdio and the preserved fds may cross into the user's program. Done before
    // any seccomp filter exists: a profile need not allow the syscalls runvz itself uses.
    let first = 3 + o.preserve_fds as u32;
    sys::cloexec_from(first).map_err(|e| msg(format!("close_range: {e}")))?;
    for fd in 3..first as i32 {
        sys::clear_cloexec(fd).map_err(|e| msg(format!("--preserve-fds: fd {fd}: {e}")))?;
    }
    let mut exec = resolve(p)?;
    // Before any filter: a profile need not allow umask (nix would panic on its errno).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        p.user().umask().unwrap_or(0o022) as _,
    ));
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it while we are root.
    if let (Some(sc), false) = (o.seccomp, nnp) {
        sc.install()?;
    }
    identity::switch_user(p.user(), caps, o.setgroups_allowed)?;
    if nnp {
        identity::no_new_privs()?;
    }
    if !cwd_done {
        enter_cwd(p.cwd())?;
    }
    // With no_new_privs the filter goes on as late as possible: right before the execve.
    if nnp {
        exec.late_seccomp = o.seccomp;
    }
    Ok(exec)
}

/// Install the late seccomp filter (if any) and execve the program; returns only on failure,
/// with the reason and whether the program was missing.
fn install_and_exec(e: &Exec) -> (String, bool) {
    if let Some(sc) = e.late_seccomp {
        if let Err(err) = sc.install() {
            return (err.to_string(), false);
        }
    }
    let err = nix::unistd::execve(&e.path, &e.args, &e.env).unwrap_err();
    (
        format!("exec {}: {err}", e.path.to_string_lossy()),
        err == nix::Error::ENOENT,
    )
}

/// execve the program; returns only on failure, with the reason.
pub fn try_exec(e: &Exec) -> String {
    install_and_exec(e).0
}

/// execve the program; on failure say why on stderr and exit 127/126.
pub fn exec(e: &Exec) -> ! {
    let (err, missing) = install_and_exec(e);
    eprintln!("runvz: {err}");
    // SAFETY: _exit in a forked child, skipping the parent's destructors.
    unsafe { libc::_exit(if missing { 127 } else { 126 }) }
}

/// chdir into the configured cwd and make sure it is inside the container: a cwd reached
/// through a leaked host fd would show as "(unreachable)" (CVE-2024-21626).
fn enter_cwd(cwd: &Path) -> Result<(), UserProcessError> {
    nix::unistd::chdir(cwd).map_err(|e| msg(format!("process.cwd {}: {e}", cwd.display())))?;
    let now =
        nix::unistd::getcwd().map_err(|e| msg(format!("process.cwd {}: {e}", cwd.display())))?;
    if !now.is_absolute() || now.as_os_str().as_bytes().starts_with(b"(unreachable)") {
        return Err(msg(format!(
            "process.cwd {} is outside the container",
            cwd.display()
        )));
    }
    Ok(())
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn cstring(s: &str, what: &str) -> Result<CString, UserProcessError> {
    CString::new(s).map_err(|_| msg(format!("{what} contains a NUL byte")))
}

/// The program's path (looked up in the process's own PATH) and its argv/envp.
fn resolve<'a>(p: &Process) -> Result<Exec<'a>, UserProcessError> {
    let args = p.args().as_deref().unwrap_or(&[]);
    let prog = args.first().ok_or_else(|| msg("process.args is empty"))?;
    let mut env: Vec<String> = p.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        // As runc: HOME from the container's passwd entry of the user, "/" without one.
        env.push(format!("HOME={}", identity::home_of(p.user().uid())));
    }
    let path: PathBuf = if prog.contains('/') {
        PathBuf::from(prog)
    } else {
        let search = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        search
            .split(':')
            .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(prog))
            .find(|c| is_executable(c))
            .ok_or_else(|| {
                msg(format!(
                    "exec: {prog:?}: executable file not found in $PATH"
                ))
            })?
    };
    // Checked before `start`, as runc does: a missing or non-executable program (a directory,
    // a file without x bits) fails the create, and the engine reports it then.
    let errno = if !path.exists() {
        libc::ENOENT
    } else if !is_executable(&path) {
        libc::EACCES
    } else {
        0
    };
    if errno != 0 {
        return Err(msg(format!(
            "exec: {}: {}",
            path.display(),
            io::Error::from_raw_os_error(errno)
        )));
    }
    Ok(Exec {
        path: CString::new(path.as_os_str().as_bytes())
            .map_err(|_| msg("process.args[0] contains a NUL byte"))?,
        args: args
            .iter()
            .map(|a| cstring(a, "process.args"))
            .collect::<Result<_, _>>()?,
        env: env
            .iter()
            .map(|e| cstring(e, "process.env"))
            .collect::<Result<_, _>>()?,
        late_seccomp: None,
    })
}
