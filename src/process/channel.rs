//! The message channel between `runvz create` and the processes it forks (a SEQPACKET
//! socketpair: message boundaries are kept, and a dead peer reads as EOF).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("sync channel: {0}")]
    Io(#[from] nix::Error),
    #[error("sync channel: the other side exited")]
    Closed,
    #[error("sync channel: unexpected message {0:?}")]
    Unexpected(Msg),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Msg {
    /// Parent → child: the cgroup is set up; go on.
    Go,
    /// Child → parent: a new user namespace exists; write its id maps.
    UsernsReady,
    /// Parent → child: the maps are written.
    MapsWritten,
    /// Intermediate → parent: the container init's host PID.
    InitPid(i32),
    /// Init → parent: namespaces exist; run the runtime-namespace hooks.
    HooksRuntime,
    /// Parent → init: hooks done, continue.
    Continue,
    /// Init → parent: set up and waiting for `start`.
    Ready,
    /// Child → parent: setup failed with this message.
    Error(String),
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Go => vec![1],
            Msg::UsernsReady => vec![2],
            Msg::MapsWritten => vec![3],
            Msg::InitPid(p) => {
                let mut v = vec![4];
                v.extend_from_slice(&p.to_le_bytes());
                v
            }
            Msg::HooksRuntime => vec![5],
            Msg::Continue => vec![6],
            Msg::Ready => vec![7],
            Msg::Error(s) => {
                let mut v = vec![8];
                v.extend_from_slice(s.as_bytes());
                v
            }
        }
    }

    fn decode(b: &[u8]) -> Option<Msg> {
        Some(match *b.first()? {
            1 => Msg::Go,
            2 => Msg::UsernsReady,
            3 => Msg::MapsWritten,
            4 => Msg::InitPid(i32::from_le_bytes(b.get(1..5)?.try_into().ok()?)),
            5 => Msg::HooksRuntime,
            6 => Msg::Continue,
            7 => Msg::Ready,
            8 => Msg::Error(String::from_utf8_lossy(&b[1..]).into_owned()),
            _ => return None,
        })
    }
}

pub struct Channel {
    fd: OwnedFd,
}

/// A connected pair; both ends close-on-exec and placed at fd numbers >= `min_fd` so that
/// they can never fall into the range of fds preserved for the container.
pub fn pair(min_fd: i32) -> Result<(Channel, Channel), ChannelError> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((
        Channel {
            fd: raise(a, min_fd)?,
        },
        Channel {
            fd: raise(b, min_fd)?,
        },
    ))
}

/// Move an fd to a number >= `min_fd`, close-on-exec.
pub fn raise(fd: OwnedFd, min_fd: i32) -> Result<OwnedFd, nix::Error> {
    if fd.as_raw_fd() >= min_fd {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a live fd returns a new fd that we then own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min_fd) };
    if n < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: `n` was just returned by fcntl and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

impl Channel {
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub fn send(&self, m: &Msg) -> Result<(), ChannelError> {
        let data = m.encode();
        loop {
            match nix::sys::socket::send(
                self.fd.as_raw_fd(),
                &data,
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(_) => return Ok(()),
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EPIPE) | Err(nix::Error::ECONNRESET) => {
                    return Err(ChannelError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn recv(&self) -> Result<Msg, ChannelError> {
        let mut buf = vec![0u8; 8192];
        loop {
            match nix::sys::socket::recv(
                self.fd.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::empty(),
            ) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(n) => return Msg::decode(&buf[..n]).ok_or(ChannelError::Closed),
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::ECONNRESET) => return Err(ChannelError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn expect(&self, want: Msg) -> Result<(), ChannelError> {
        match self.recv()? {
            m if m == want => Ok(()),
            Msg::Error(e) => Err(ChannelError::Unexpected(Msg::Error(e))),
            m => Err(ChannelError::Unexpected(m)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn roundtrip() {
        for m in [
            Msg::Go,
            Msg::InitPid(-7),
            Msg::InitPid(123456),
            Msg::Error("x y".into()),
            Msg::Ready,
        ] {
            assert_eq!(Msg::decode(&m.encode()), Some(m));
        }
        let (a, b) = pair(10).unwrap();
        a.send(&Msg::InitPid(42)).unwrap();
        assert_eq!(b.recv().unwrap(), Msg::InitPid(42));
        drop(a);
        assert!(matches!(b.recv(), Err(ChannelError::Closed)));
    }
}
