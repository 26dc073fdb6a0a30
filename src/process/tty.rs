//! Terminals: the container's pty (made from the container's own devpts after pivot_root),
//! its master sent to the caller's console socket, and the proxy that foreground `run` uses
//! when it is the one holding the master.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    #[error("terminal: {what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

fn err(what: &'static str) -> impl FnOnce(io::Error) -> TtyError {
    move |source| TtyError::Io { what, source }
}

fn last(what: &'static str) -> TtyError {
    TtyError::Io {
        what,
        source: io::Error::last_os_error(),
    }
}

/// Make a pty in the container, send its master over `socket`, and make the slave the
/// controlling terminal and stdio of the calling process (which must lead its session).
/// With `bind_console` (the container's init), the slave is also bind-mounted onto
/// `/dev/console`, as the OCI spec asks.
pub fn setup_console(
    socket: RawFd,
    uid: u32,
    size: Option<(u16, u16)>,
    bind_console: bool,
) -> Result<(), TtyError> {
    let master = crate::sys::open(
        std::path::Path::new("/dev/ptmx"),
        libc::O_RDWR | libc::O_NOCTTY,
        0,
    )
    .map_err(err("opening /dev/ptmx"))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK takes a pointer to an int.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(last("unlocking the pty"));
    }
    // SAFETY: TIOCGPTPEER opens the peer of this master (no path lookup, no race).
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(last("opening the pty slave"));
    }
    // SAFETY: a new fd from the kernel that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    if let Some((rows, cols)) = size {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ takes a pointer to a winsize.
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    // The process's user owns its terminal.
    // SAFETY: fchown on an fd we own.
    unsafe { libc::fchown(slave.as_raw_fd(), uid, u32::MAX) };
    if bind_console {
        mount_console(&slave)?;
    }
    send_master(socket, &master)?;
    drop(master);
    for fd in 0..3 {
        // SAFETY: dup2 onto the stdio numbers; the old stdio fds are replaced.
        if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
            return Err(last("making the pty the process's stdio"));
        }
    }
    // SAFETY: TIOCSCTTY on our new stdin, a session leader without a controlling tty.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(last("making the pty the controlling terminal"));
    }
    Ok(())
}

/// Bind the pty slave onto the container's `/dev/console` (CVE-2025-52565: the target is
/// opened without following any symlink and must be a regular file or a character device; it
/// is created in `/dev` when missing; the mount goes through fds, no path is looked up twice).
/// A read-only `/dev` without a console file is left as it is.
fn mount_console(slave: &OwnedFd) -> Result<(), TtyError> {
    let root =
        crate::safe_path::Root::open(std::path::Path::new("/")).map_err(|e| TtyError::Io {
            what: "opening / for /dev/console",
            source: io::Error::other(e.to_string()),
        })?;
    let dev = root
        .open_no_symlinks(
            std::path::Path::new("/dev"),
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .map_err(|e| TtyError::Io {
            what: "opening /dev for /dev/console",
            source: io::Error::other(e.to_string()),
        })?;
    let name = c"console";
    let open_target = || {
        // SAFETY: valid dir fd and C string.
        let fd = unsafe {
            libc::openat(
                dev.as_raw_fd(),
                name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: a new fd that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    };
    let target = match open_target() {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            // SAFETY: valid dir fd and C string; O_EXCL|O_NOFOLLOW never follow a symlink.
            let fd = unsafe {
                libc::openat(
                    dev.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_WRONLY
                        | libc::O_CLOEXEC,
                    0o666 as libc::c_uint,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EROFS) {
                    return Ok(());
                }
                return Err(TtyError::Io {
                    what: "creating /dev/console",
                    source: e,
                });
            }
            // SAFETY: a new fd that nothing else owns; closed at once.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            open_target().map_err(err("opening /dev/console"))?
        }
        Err(e) => {
            return Err(TtyError::Io {
                what: "opening /dev/console",
                source: e,
            })
        }
    };
    let st = crate::sys::fstat(&target).map_err(err("stat of /dev/console"))?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFREG && kind != libc::S_IFCHR {
        return Err(TtyError::Io {
            what: "/dev/console must be a file or a character device, not a symlink or directory",
            source: io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    let tree = crate::sys::open_tree_clone_fd(slave).map_err(err("cloning the pty slave"))?;
    crate::sys::move_mount_fd(&tree, &target).map_err(err("mounting the pty on /dev/console"))
}

/// Receive a pty master sent with SCM_RIGHTS on `sock`.
/// Send a pty master over a console socket (as runc: one SCM_RIGHTS fd, named "/dev/ptmx").
pub fn send_master(socket: RawFd, master: &impl AsRawFd) -> Result<(), TtyError> {
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let name = b"/dev/ptmx";
    let iov = [io::IoSlice::new(name)];
    sendmsg::<()>(socket, &iov, &cmsg, MsgFlags::empty(), None).map_err(|e| TtyError::Io {
        what: "sending the pty master",
        source: e.into(),
    })?;
    Ok(())
}

pub fn recv_master(sock: RawFd) -> Result<OwnedFd, TtyError> {
    let mut buf = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| TtyError::Io {
        what: "receiving the pty master",
        source: e.into(),
    })?;
    for c in msg.cmsgs().map_err(|e| TtyError::Io {
        what: "receiving the pty master",
        source: e.into(),
    })? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel installed this fd for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(TtyError::Io {
        what: "receiving the pty master",
        source: io::Error::other("no fd in the message"),
    })
}

/// Give the pty behind `master` the window size of the terminal on `from` (if it is one).
pub fn copy_winsize(from: RawFd, master: &OwnedFd) {
    // SAFETY: zeroed winsize is a valid out-buffer.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ take a pointer to a winsize.
    if unsafe { libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) } == 0 {
        // SAFETY: as above.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

/// Restores a terminal's settings when dropped.
pub struct RawMode {
    fd: RawFd,
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    /// Put `fd` in raw mode if it is a terminal.
    pub fn enter(fd: RawFd) -> Option<RawMode> {
        // SAFETY: fd 0..2 of this process stay open while the RawMode lives.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let saved = nix::sys::termios::tcgetattr(b).ok()?;
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(b, nix::sys::termios::SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: see `enter`.
        let b = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = nix::sys::termios::tcsetattr(b, nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}

/// Copy our stdin to `master` and `master` to our stdout until the pty closes (the
/// container's processes exited).
pub fn proxy(master: &OwnedFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = [0u8; 8192];
    let mut stdin_open = true;
    loop {
        // SAFETY: fd 0 stays open for the life of this process.
        let stdin = unsafe { BorrowedFd::borrow_raw(0) };
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => return,
        }
        let m = fds[0].revents().unwrap_or(PollFlags::empty());
        let s = fds
            .get(1)
            .and_then(|f| f.revents())
            .unwrap_or(PollFlags::empty());
        if m.contains(PollFlags::POLLIN) {
            match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let _ = write_all(1, &buf[..n]);
                }
            }
        } else if m.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            return;
        }
        if s.contains(PollFlags::POLLIN) {
            match nix::unistd::read(0, &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let _ = write_all(master.as_raw_fd(), &buf[..n]);
                }
            }
        } else if s.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            stdin_open = false;
        }
    }
}

fn write_all(fd: RawFd, mut data: &[u8]) -> nix::Result<()> {
    // SAFETY: the caller's fd is open for the duration of this call.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    while !data.is_empty() {
        match nix::unistd::write(b, data) {
            Ok(n) => data = &data[n..],
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
