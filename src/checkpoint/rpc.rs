//! The `criu swrk` client: CRIU runs as our child with one end of a SOCK_SEQPACKET pair as its
//! fd 3; each packet is one `criu_req` / `criu_resp` (field numbers from CRIU's rpc.proto).

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    recvmsg, send, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};

use super::proto::{decode, get_bytes, get_int, Enc};
use super::CheckpointError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqType {
    Dump = 1,
    Restore = 2,
    PreDump = 4,
    Notify = 6,
    FeatureCheck = 9,
    Version = 10,
}

/// `criu_opts`: what runvz sets (every other field keeps CRIU's default).
#[derive(Default, Debug)]
pub struct Opts {
    pub images_dir_fd: RawFd,
    pub work_dir_fd: Option<RawFd>,
    pub pid: Option<i32>,
    pub log_file: String,
    pub log_level: i32,
    pub leave_running: bool,
    pub ext_unix_sk: bool,
    pub tcp_established: bool,
    pub tcp_skip_in_flight: bool,
    pub evasive_devices: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub link_remap: bool,
    pub notify_scripts: bool,
    pub root: Option<String>,
    pub parent_img: Option<String>,
    pub track_mem: bool,
    pub manage_cgroups: bool,
    /// criu_cg_mode: 1 none, 2 props, 3 soft, 4 full, 5 strict.
    pub manage_cgroups_mode: Option<u32>,
    /// Namespaces (CLONE_* flags) created empty on restore, their properties not saved.
    pub empty_ns: Option<u32>,
    pub freeze_cgroup: Option<String>,
    /// (mount point or name, name or host path)
    pub ext_mnt: Vec<(String, String)>,
    pub external: Vec<String>,
    /// (controller, path)
    pub cg_root: Vec<(String, String)>,
    pub rst_sibling: bool,
    /// (key, fd number in criu's process)
    pub inherit_fd: Vec<(String, i32)>,
    /// (namespace, file)
    pub join_ns: Vec<(String, String)>,
    pub orphan_pts_master: bool,
    pub lazy_pages: bool,
    /// (address, port)
    pub page_server: Option<(String, i32)>,
    pub status_fd: Option<i32>,
}

impl Opts {
    fn encode(&self) -> Enc {
        let mut e = Enc::default();
        e.int(1, self.images_dir_fd);
        if let Some(p) = self.pid {
            e.int(2, p);
        }
        e.flag(3, self.leave_running)
            .flag(4, self.ext_unix_sk)
            .flag(5, self.tcp_established)
            .flag(6, self.evasive_devices)
            .flag(7, self.shell_job)
            .flag(8, self.file_locks)
            .int(9, self.log_level)
            .str(10, &self.log_file);
        if let Some((addr, port)) = &self.page_server {
            let mut ps = Enc::default();
            ps.str(1, addr).int(2, *port);
            e.msg(11, &ps);
        }
        e.flag(12, self.notify_scripts);
        if let Some(r) = &self.root {
            e.str(13, r);
        }
        if let Some(p) = &self.parent_img {
            e.str(14, p);
        }
        e.flag(15, self.track_mem);
        if let Some(fd) = self.work_dir_fd {
            e.int(17, fd);
        }
        e.flag(18, self.link_remap);
        for (k, v) in &self.ext_mnt {
            let mut m = Enc::default();
            m.str(1, k).str(2, v);
            e.msg(23, &m);
        }
        e.flag(24, self.manage_cgroups);
        for (c, p) in &self.cg_root {
            let mut m = Enc::default();
            m.str(1, c).str(2, p);
            e.msg(25, &m);
        }
        e.flag(26, self.rst_sibling);
        for (k, fd) in &self.inherit_fd {
            let mut m = Enc::default();
            m.str(1, k).int(2, *fd);
            e.msg(27, &m);
        }
        if let Some(m) = self.manage_cgroups_mode {
            e.uint(34, u64::from(m));
        }
        for x in &self.external {
            e.str(37, x);
        }
        if let Some(m) = self.empty_ns {
            e.uint(38, u64::from(m));
        }
        for (ns, file) in &self.join_ns {
            let mut m = Enc::default();
            m.str(1, ns).str(2, file);
            e.msg(39, &m);
        }
        if let Some(f) = &self.freeze_cgroup {
            e.str(44, f);
        }
        e.flag(46, self.tcp_skip_in_flight)
            .flag(48, self.lazy_pages)
            .flag(50, self.orphan_pts_master);
        if let Some(fd) = self.status_fd {
            e.int(49, fd);
        }
        e
    }
}

/// A notification from CRIU (`notify_scripts`): the action name, a PID for some, and for
/// `orphan-pts-master` the pty master that came with it.
pub struct Notify {
    pub script: String,
    pub pid: i32,
    pub fd: Option<OwnedFd>,
}

/// The final answer to a request.
#[derive(Debug, Default)]
pub struct Resp {
    /// The restored root task (RESTORE).
    pub restored_pid: i32,
    /// FEATURE_CHECK: (mem_track, lazy_pages)
    pub features: (bool, bool),
    /// VERSION: (major, minor)
    pub version: (i64, i64),
}

/// The first real error of a criu log (the cause; later ones follow from it): criu's own
/// message names its first error, which here is a harmless one (it cannot raise RLIMIT_NOFILE without CAP_SYS_RESOURCE).
fn first_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter(|l| l.contains("Error (") && !l.contains("FAILED") && !l.contains("RLIMIT_NOFILE"))
        .find_map(|l| l.split_once("): "))
        .map(|(_, m)| m.trim().to_string())
}

/// A running `criu swrk`.
pub struct Criu {
    sock: OwnedFd,
    child: std::process::Child,
    log: PathBuf,
}

fn raise_fd(fd: RawFd) -> std::io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd number; returns a new fd or -1.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Criu {
    /// Start `criu swrk 3`. `extra` fds become criu's fds 4, 5, ... (for `inherit_fd`); stdio
    /// is ours (a restored process inherits its pipes through `inherit_fd` 0..2). `log` is
    /// where its log will be, for error messages.
    pub fn start(bin: &Path, extra: &[RawFd], log: PathBuf) -> Result<Criu, CheckpointError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let spawn_err = |source| CheckpointError::Spawn {
            path: bin.to_path_buf(),
            source,
        };
        // Above every fd the child will be given, so no dup2 below overwrites a source.
        let mut srcs = vec![raise_fd(theirs.as_raw_fd()).map_err(spawn_err)?];
        for fd in extra {
            srcs.push(raise_fd(*fd).map_err(spawn_err)?);
        }
        // SAFETY: the fds were just made by F_DUPFD_CLOEXEC and are owned here only.
        let owned: Vec<OwnedFd> = srcs
            .iter()
            .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
            .collect();
        let targets: Vec<(RawFd, RawFd)> = srcs
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, 3 + i as RawFd))
            .collect();
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["swrk", "3"]);
        // SAFETY: only dup2 (async-signal-safe) between fork and exec; no allocation.
        unsafe {
            cmd.pre_exec(move || {
                for (src, dst) in &targets {
                    if libc::dup2(*src, *dst) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        drop(owned);
        drop(theirs);
        Ok(Criu {
            sock: ours,
            child,
            log,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn send(&self, e: &Enc) -> Result<(), CheckpointError> {
        send(self.sock.as_raw_fd(), &e.0, MsgFlags::empty())?;
        Ok(())
    }

    /// One packet from CRIU, with an fd if one came along.
    fn recv(&self) -> Result<(Vec<u8>, Option<OwnedFd>), CheckpointError> {
        let mut buf = vec![0u8; 1 << 20];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let (n, fd) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut fd = None;
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for f in fds {
                        // SAFETY: SCM_RIGHTS gave us this fd; nothing else owns it.
                        let f = unsafe { OwnedFd::from_raw_fd(f) };
                        fd.get_or_insert(f);
                    }
                }
            }
            (msg.bytes, fd)
        };
        if n == 0 {
            return Err(CheckpointError::Protocol(format!(
                "criu closed the connection (see {})",
                self.log.display()
            )));
        }
        buf.truncate(n);
        Ok((buf, fd))
    }

    /// Send one request and serve CRIU's notifications until its final answer.
    pub fn call(
        &mut self,
        typ: ReqType,
        opts: Option<&Opts>,
        on_notify: &mut dyn FnMut(Notify) -> Result<(), String>,
    ) -> Result<Resp, CheckpointError> {
        let mut req = Enc::default();
        req.uint(1, typ as u64);
        if let Some(o) = opts {
            req.msg(2, &o.encode());
        }
        if typ == ReqType::FeatureCheck {
            // Ask for every feature: each set field is answered.
            let mut f = Enc::default();
            f.bool(1, true).bool(2, true);
            req.msg(5, &f);
        }
        self.send(&req)?;
        loop {
            let (buf, fd) = self.recv()?;
            let bad = || CheckpointError::Protocol("malformed criu_resp".into());
            let f = decode(&buf).ok_or_else(bad)?;
            let rtype = get_int(&f, 1).ok_or_else(bad)?;
            let success = get_int(&f, 2).unwrap_or(0) != 0;
            if rtype == ReqType::Notify as u64 {
                let n = get_bytes(&f, 5).and_then(decode).unwrap_or_default();
                let note = Notify {
                    script: get_bytes(&n, 1)
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .unwrap_or_default(),
                    pid: get_int(&n, 2).unwrap_or(0) as i32,
                    fd,
                };
                let res = on_notify(note);
                let mut ack = Enc::default();
                ack.uint(1, ReqType::Notify as u64).bool(3, res.is_ok());
                self.send(&ack)?;
                if let Err(e) = res {
                    return Err(CheckpointError::Notify(e));
                }
                continue;
            }
            if rtype != typ as u64 {
                return Err(CheckpointError::Protocol(format!(
                    "answer of type {rtype} to a request of type {}",
                    typ as u64
                )));
            }
            if !success && typ != ReqType::FeatureCheck {
                return Err(CheckpointError::Failed {
                    what: match typ {
                        ReqType::Dump => "dump",
                        ReqType::PreDump => "pre-dump",
                        ReqType::Restore => "restore",
                        _ => "request",
                    },
                    errno: get_int(&f, 7).unwrap_or(0) as i32,
                    msg: first_error(&self.log)
                        .or_else(|| {
                            get_bytes(&f, 9)
                                .map(|s| String::from_utf8_lossy(s).trim().to_string())
                                .filter(|s| !s.is_empty())
                        })
                        .unwrap_or_else(|| "no message".into()),
                    log: self.log.display().to_string(),
                });
            }
            let mut r = Resp::default();
            if let Some(rest) = get_bytes(&f, 4).and_then(decode) {
                r.restored_pid = get_int(&rest, 1).unwrap_or(0) as i32;
            }
            if let Some(feat) = get_bytes(&f, 8).and_then(decode) {
                r.features = (
                    get_int(&feat, 1).unwrap_or(0) != 0,
                    get_int(&feat, 2).unwrap_or(0) != 0,
                );
            }
            if let Some(v) = get_bytes(&f, 10).and_then(decode) {
                r.version = (
                    get_int(&v, 1).unwrap_or(0) as i64,
                    get_int(&v, 2).unwrap_or(0) as i64,
                );
            }
            return Ok(r);
        }
    }

    /// Close the connection and reap criu.
    pub fn finish(mut self) {
        drop(self.sock);
        let _ = self.child.wait();
    }
}
