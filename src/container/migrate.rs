//! `migrate` and `migrate-receive`: moving a running container to another runvz (another
//! host, or another root standing in for one), as vzmigrate moved OpenVZ containers.
//!
//! The sender copies the rootfs while the container runs, freezes it, dumps it with criu
//! (`leave_running`: the frozen processes stay), sends what changed in the rootfs since the
//! copy began and the images, and asks the receiver to restore. Only when the receiver
//! answers that the container runs is the source deleted; any failure before that thaws the
//! source, which never stopped existing. With `--lazy-pages` (post-copy) the dump leaves the
//! memory pages behind a criu page server: the receiver restores at once and its `criu
//! lazy-pages` daemon pulls the pages as they are touched; the source goes when all are pulled.
//!
//! The receiver unpacks into `BUNDLES/ID` (config.json + rootfs) and restores with its own
//! binary (`restore` makes a private mount namespace of the process that runs it, so each
//! restore is a process of its own).

use std::collections::HashSet;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use super::checkpoint::{check_movable, checkpoint, CheckpointOptions, CriuFlags};
use super::ops::{delete, pause};
use super::{Container, ContainerError};
use crate::migrate::{auth, tree, Conn, MigrateError, Msg, Offer, Token, TreeDest};
use crate::state::{Status, Store};

/// In a bundle `migrate-receive` made: a later migration away removes the bundle with the
/// container (vzmigrate removed the source's private area).
const MARK: &str = ".runvz-migrated";

/// How long a silent other end is waited for (a restore, a rootfs unpack).
const PEER_TIMEOUT: Duration = Duration::from_secs(300);

pub struct MigrateOptions<'a> {
    pub criu: &'a Path,
    /// HOST:PORT of a `runvz migrate-receive`.
    pub dest: &'a str,
    pub token: &'a Path,
    /// The page server's port for post-copy (`flags.lazy_pages`; default: a free one).
    pub page_server_port: Option<u16>,
    /// The rootfs is on storage both hosts see at the same path: do not copy it.
    pub shared_rootfs: bool,
    /// Where the images are dumped (default: the container's state directory).
    pub work_path: Option<&'a Path>,
    /// criu's flags; `lazy_pages` makes it a post-copy migration.
    pub flags: CriuFlags,
}

/// What a migration did and how long each part took.
#[derive(Debug, Default, serde::Serialize)]
pub struct MigrateReport {
    pub id: String,
    pub dest: String,
    pub mode: &'static str,
    /// Rootfs copy while the container ran.
    pub precopy_entries: u64,
    pub precopy_bytes: u64,
    pub precopy_ms: u64,
    /// From freeze to "runs at the destination": the downtime.
    pub frozen_ms: u64,
    pub dump_ms: u64,
    /// Rootfs changes and images sent while frozen.
    pub changed_entries: u64,
    pub image_bytes: u64,
    pub copy_ms: u64,
    /// The receiver's restore.
    pub restore_ms: u64,
    /// Post-copy: until the last page was pulled.
    pub pages_ms: u64,
    pub dest_pid: i32,
}

fn mig(e: impl Into<MigrateError>) -> ContainerError {
    ContainerError::Migrate(e.into())
}

fn since_epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn ms(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

/// A directory removed (recursively) when dropped, unless kept.
struct TempDir(PathBuf);

impl TempDir {
    /// What an earlier, killed run left there is removed first.
    fn fresh(p: PathBuf) -> TempDir {
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }

    fn keep(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", self.0.display());
            }
        }
    }
}

/// Thaws the source when dropped armed: a migration that failed leaves it as it was.
struct Thaw<'a> {
    store: &'a Store,
    id: &'a str,
    armed: bool,
}

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = pause(self.store, self.id, false) {
                tracing::warn!("thawing {} after a failed migration: {e}", self.id);
            }
        }
    }
}

fn send_tree(
    conn: &mut Conn,
    into: TreeDest,
    root: &Path,
    entries: &[(PathBuf, std::fs::Metadata)],
    changes: Option<&tree::Changes>,
) -> Result<tree::Sent, ContainerError> {
    conn.send(&Msg::Tree { into }).map_err(mig)?;
    let mut w = conn.chunks();
    let sent = tree::send(&mut w, root, entries, changes).map_err(mig)?;
    let bytes = w.finish().map_err(mig)?;
    Ok(tree::Sent { bytes, ..sent })
}

/// The other end's answer to the restore.
fn restored(conn: &mut Conn, dest: &str, id: &str) -> Result<(i32, u64), ContainerError> {
    match conn.recv().map_err(mig)? {
        Msg::Restored { pid, restore_ms } => Ok((pid, restore_ms)),
        Msg::Failed { reason } => Err(ContainerError::Config(format!(
            "{dest} could not restore container {id}: {reason}"
        ))),
        m => Err(mig(MigrateError::Protocol(format!(
            "expected the restore's result, got {m:?}"
        )))),
    }
}

/// A pipe whose write end (not close-on-exec, numbered above criu's own fds) criu inherits
/// as its status fd.
fn status_pipe() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    let io = |e: std::io::Error| mig(MigrateError::Io(e));
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io(e.into()))?;
    // SAFETY: F_DUPFD on a valid fd; returns a new fd (without FD_CLOEXEC) or -1.
    let n = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_DUPFD, 100) };
    if n < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    // SAFETY: n was just made by F_DUPFD and nothing else owns it.
    Ok((r, unsafe { OwnedFd::from_raw_fd(n) }))
}

/// Waits until criu writes its "ready" byte, or the dump ends without it.
fn wait_ready(r: &OwnedFd, done: impl Fn() -> bool) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(r), PollFlags::POLLIN)];
        if let Ok(n) = poll(&mut fds, PollTimeout::from(100u16)) {
            if n > 0 {
                let mut b = [1u8; 1];
                return nix::unistd::read(r.as_raw_fd(), &mut b).is_ok_and(|n| n == 1 && b[0] == 0);
            }
        }
        if done() {
            return false;
        }
    }
}

fn connect(dest: &str) -> Result<TcpStream, ContainerError> {
    let bad =
        |what: String| ContainerError::Config(format!("migration destination {dest}: {what}"));
    let addrs: Vec<SocketAddr> = dest
        .to_socket_addrs()
        .map_err(|e| {
            bad(format!(
                "{e} (expected HOST:PORT of a runvz migrate-receive)"
            ))
        })?
        .collect();
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
            Ok(s) => {
                s.set_read_timeout(Some(PEER_TIMEOUT)).map_err(mig)?;
                s.set_nodelay(true).map_err(mig)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(bad(last.map_or("no address".into(), |e| e.to_string())))
}

/// The config the receiver restores from: relative bind sources made absolute (they must
/// exist there too), root.path set by the receiver.
fn offered_config(c: &Container) -> Result<serde_json::Value, ContainerError> {
    let mut cfg = c.rec.config.clone().ok_or_else(|| {
        ContainerError::Config(format!("container {}: no config recorded", c.rec.id))
    })?;
    if let Some(mounts) = cfg.get_mut("mounts").and_then(|m| m.as_array_mut()) {
        for m in mounts {
            let bind = m.get("type").and_then(|t| t.as_str()) == Some("bind")
                || m.get("options")
                    .and_then(|o| o.as_array())
                    .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"));
            if let Some(src) = m.get("source").and_then(|s| s.as_str()) {
                if bind && !src.starts_with('/') {
                    let abs = c.rec.bundle.join(src).display().to_string();
                    m["source"] = abs.into();
                }
            }
        }
    }
    Ok(cfg)
}

pub fn migrate(
    store: &Store,
    id: &str,
    o: &MigrateOptions,
) -> Result<MigrateReport, ContainerError> {
    let c = Container::load(store, id)?;
    let st = check_movable(id, &c, "migrated")?;
    let lazy = o.flags.lazy_pages;
    let token = Token::load(o.token).map_err(mig)?;
    let mut rep = MigrateReport {
        id: id.into(),
        dest: o.dest.into(),
        mode: if lazy { "lazy-pages" } else { "stop-and-copy" },
        ..Default::default()
    };
    let rootfs = c.rec.rootfs.clone();
    let mut conn = Conn {
        stream: connect(o.dest)?,
    };
    auth::connect(&mut conn, &token).map_err(mig)?;
    let offer = Offer {
        id: id.into(),
        config: offered_config(&c)?,
        cgroup_path: c
            .rec
            .cgroup_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        shared_rootfs: o.shared_rootfs.then(|| rootfs.display().to_string()),
        lazy,
        tcp_established: o.flags.tcp_established,
        ext_unix_sk: o.flags.ext_unix_sk,
        shell_job: o.flags.shell_job,
        file_locks: o.flags.file_locks,
        empty_net: o.flags.empty_net,
    };
    conn.send(&Msg::Offer(Box::new(offer))).map_err(mig)?;
    match conn.recv().map_err(mig)? {
        Msg::Accept => {}
        Msg::Refuse { reason } => {
            return Err(ContainerError::Config(format!(
                "{} refused container {id}: {reason}",
                o.dest
            )))
        }
        m => {
            return Err(mig(MigrateError::Protocol(format!(
                "expected accept or refuse, got {m:?}"
            ))))
        }
    }
    // Pass 1: the whole rootfs, while the container runs.
    let t0 = since_epoch();
    let started = Instant::now();
    let mut first_pass = HashSet::new();
    if !o.shared_rootfs {
        let entries = tree::walk(&rootfs).map_err(mig)?;
        let s = send_tree(&mut conn, TreeDest::Rootfs, &rootfs, &entries, None)?;
        rep.precopy_entries = s.entries;
        rep.precopy_bytes = s.bytes;
        first_pass = entries.into_iter().map(|(p, _)| p).collect();
    }
    rep.precopy_ms = ms(started);
    // Frozen from here until the receiver runs it (or we thaw it).
    let frozen = Instant::now();
    if st == Status::Running {
        pause(store, id, true)?;
    }
    let mut thaw = Thaw {
        store,
        id,
        armed: st == Status::Running,
    };
    // In the container's state directory unless told otherwise: a sender killed mid-way
    // leaves them where `delete` removes them (and the next migration starts afresh).
    let images = TempDir::fresh(match o.work_path {
        Some(w) => w.join(format!("runvz-migrate-{id}")),
        None => store.root().join(id).join("migrate"),
    });
    let local = conn.stream.local_addr().map_err(mig)?;
    let criu_pid = AtomicI32::new(0);
    let (status_r, status_w) = if lazy {
        let (r, w) = status_pipe()?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let port = match (lazy, o.page_server_port) {
        (false, _) => 0,
        (true, Some(p)) => p,
        (true, None) => TcpListener::bind((local.ip(), 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(mig)?,
    };
    let copts = CheckpointOptions {
        criu: o.criu,
        image_path: &images.0,
        work_path: None,
        parent_path: None,
        leave_running: true,
        tcp_skip_in_flight: false,
        link_remap: false,
        pre_dump: false,
        page_server: lazy.then(|| (local.ip().to_string(), i32::from(port))),
        status_fd: status_w.as_ref().map(|w| w.as_raw_fd()),
        flags: o.flags.clone(),
        criu_pid: Some(&criu_pid),
    };
    let after_dump = |conn: &mut Conn, rep: &mut MigrateReport| -> Result<(), ContainerError> {
        rep.dump_ms = ms(frozen);
        let copy = Instant::now();
        if !o.shared_rootfs {
            let entries = tree::walk(&rootfs).map_err(mig)?;
            // One second back: ctime has whole seconds here, and a write in the second the
            // copy began may have missed it.
            let changes = tree::Changes {
                since: t0 - 1,
                first_pass: &first_pass,
            };
            let s = send_tree(conn, TreeDest::Rootfs, &rootfs, &entries, Some(&changes))?;
            rep.changed_entries = s.entries;
            let paths = entries
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect();
            conn.send(&Msg::Paths { paths }).map_err(mig)?;
        }
        let img = tree::walk(&images.0).map_err(mig)?;
        rep.image_bytes = send_tree(conn, TreeDest::Images, &images.0, &img, None)?.bytes;
        rep.copy_ms = ms(copy);
        conn.send(&Msg::Restore {
            page_server: lazy.then(|| (local.ip().to_string(), port)),
        })
        .map_err(mig)?;
        let (pid, restore_ms) = restored(conn, o.dest, id)?;
        rep.dest_pid = pid;
        rep.restore_ms = restore_ms;
        rep.frozen_ms = ms(frozen);
        Ok(())
    };
    if lazy {
        let dumped = std::thread::scope(|s| -> Result<(), ContainerError> {
            let h = s.spawn(|| checkpoint(store, id, &copts));
            let ready = status_r
                .as_ref()
                .is_some_and(|r| wait_ready(r, || h.is_finished()));
            if !ready {
                let res = h.join().unwrap_or_else(|_| {
                    Err(ContainerError::Config("the dump thread panicked".into()))
                });
                res?;
                return Err(ContainerError::Config(
                    "criu finished the dump without starting its page server".into(),
                ));
            }
            let sent = after_dump(&mut conn, &mut rep);
            if sent.is_err() {
                let p = criu_pid.load(Ordering::SeqCst);
                if p > 0 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let pages = h
                .join()
                .unwrap_or_else(|_| Err(ContainerError::Config("the dump thread panicked".into())));
            sent?;
            rep.pages_ms = ms(frozen);
            pages.map_err(|e| {
                ContainerError::Config(format!(
                    "container {id} runs at {} but its memory pages did not all arrive: {e}; the source is left paused",
                    o.dest
                ))
            })
        });
        if let Err(e) = dumped {
            // Runs at the destination, or not: only the message knows; never thaw a
            // container that may run twice.
            if rep.dest_pid > 0 {
                thaw.armed = false;
            }
            return Err(e);
        }
    } else {
        checkpoint(store, id, &copts)?;
        after_dump(&mut conn, &mut rep)?;
    }
    drop(status_w);
    // It runs at the destination: the source goes (with its bundle if a migration made it).
    thaw.armed = false;
    delete(store, id, true)?;
    if c.rec.bundle.join(MARK).is_file() {
        if let Err(e) = std::fs::remove_dir_all(&c.rec.bundle) {
            tracing::warn!("removing {}: {e}", c.rec.bundle.display());
        }
    }
    Ok(rep)
}

pub struct ReceiveOptions<'a> {
    /// ADDRESS:PORT to listen on (port 0: any free one).
    pub listen: &'a str,
    pub token: &'a Path,
    /// Where migrated bundles are made (`BUNDLES/ID`).
    pub bundles: &'a Path,
    /// Put each container's cgroup below this one (two roots on one host must not share
    /// cgroups).
    pub cgroup_prefix: Option<&'a str>,
    /// Serve one migration, then return its result.
    pub once: bool,
    /// The runvz binary and the global flags its `restore` needs.
    pub runvz: &'a Path,
    pub criu: &'a Path,
}

/// Serves migrations: `on_listen` is told the bound address first.
pub fn receive(
    store: &Store,
    o: &ReceiveOptions,
    on_listen: &mut dyn FnMut(SocketAddr),
    on_done: &mut dyn FnMut(&str, i32, SocketAddr),
) -> Result<(), ContainerError> {
    let token = Token::load(o.token).map_err(mig)?;
    let l = TcpListener::bind(o.listen).map_err(|e| {
        ContainerError::Config(format!(
            "--listen {}: {e} (expected ADDRESS:PORT to listen on)",
            o.listen
        ))
    })?;
    on_listen(l.local_addr().map_err(mig)?);
    loop {
        let (s, peer) = l.accept().map_err(mig)?;
        s.set_read_timeout(Some(PEER_TIMEOUT)).map_err(mig)?;
        let mut conn = Conn { stream: s };
        match serve(store, o, &token, &mut conn) {
            Ok((id, pid)) => {
                on_done(&id, pid, peer);
                if o.once {
                    return Ok(());
                }
            }
            Err(e) if o.once => return Err(e),
            Err(e) => tracing::warn!("migration from {peer}: {e}"),
        }
    }
}

fn refuse(conn: &mut Conn, reason: String) -> ContainerError {
    let _ = conn.send(&Msg::Refuse {
        reason: reason.clone(),
    });
    ContainerError::Config(reason)
}

/// The receiving half of one migration: (ID, PID of the restored init).
fn serve(
    store: &Store,
    o: &ReceiveOptions,
    token: &Token,
    conn: &mut Conn,
) -> Result<(String, i32), ContainerError> {
    auth::accept(conn, token).map_err(mig)?;
    let offer = match conn.recv().map_err(mig)? {
        Msg::Offer(x) => x,
        m => {
            return Err(mig(MigrateError::Protocol(format!(
                "expected an offer, got {m:?}"
            ))))
        }
    };
    let id = offer.id.clone();
    if let Err(e) = crate::bundle::validate_id(&id) {
        return Err(refuse(conn, e));
    }
    if store.root().join(&id).exists() {
        return Err(refuse(conn, format!("container {id} already exists here")));
    }
    let cg = match o.cgroup_prefix {
        Some(p) => format!(
            "{}/{}",
            p.trim_end_matches('/'),
            offer.cgroup_path.trim_start_matches('/')
        ),
        None => offer.cgroup_path.clone(),
    };
    // Two roots on one host would share the container's cgroup: a failed restore would
    // then kill the frozen source.
    if !cg.is_empty() {
        let busy = crate::cgroups::Cgroup::open(Path::new(&cg), None)
            .map(|c| !c.pids().is_empty())
            .unwrap_or(false);
        if busy {
            return Err(refuse(
                conn,
                format!("cgroup {cg} is in use on this host (receive with --cgroup-prefix)"),
            ));
        }
    }
    let bundle = o.bundles.join(&id);
    if bundle.exists() {
        return Err(refuse(
            conn,
            format!("bundle directory {} already exists", bundle.display()),
        ));
    }
    if let Err(e) = std::fs::create_dir_all(&bundle) {
        return Err(refuse(conn, format!("{}: {e}", bundle.display())));
    }
    // Removed unless the container runs at the end.
    let made = TempDir(bundle.clone());
    let work = TempDir::fresh(o.bundles.join(format!(".{id}.migrate")));
    let images = work.0.join("images");
    conn.send(&Msg::Accept).map_err(mig)?;
    let rootfs = bundle.join("rootfs");
    let page_server = loop {
        match conn.recv().map_err(mig)? {
            Msg::Tree { into } => {
                let dir = match into {
                    TreeDest::Rootfs => &rootfs,
                    TreeDest::Images => &images,
                };
                let mut r = conn.chunk_reader();
                let res = tree::receive(&mut r, dir);
                r.drain().map_err(mig)?;
                res.map_err(mig)?;
            }
            Msg::Paths { paths } => {
                let keep: HashSet<PathBuf> = paths.into_iter().map(PathBuf::from).collect();
                tree::prune(&rootfs, &keep).map_err(mig)?;
            }
            Msg::Restore { page_server } => break page_server,
            m => {
                return Err(mig(MigrateError::Protocol(format!(
                    "unexpected {m:?} while receiving"
                ))))
            }
        }
    };
    let result = restore_here(
        store.root(),
        o,
        &offer,
        &cg,
        &bundle,
        &work.0,
        &images,
        page_server,
    );
    match result {
        Ok((pid, restore_ms, lazy_daemon)) => {
            // The sender must know it runs here before it deletes the source; if it cannot
            // be told, it may thaw the source: this one goes, so it never runs twice.
            if let Err(e) = conn.send(&Msg::Restored { pid, restore_ms }) {
                if let Some(mut d) = lazy_daemon {
                    let _ = d.kill();
                    let _ = d.wait();
                }
                if let Err(de) = delete(store, &id, true) {
                    tracing::warn!("deleting {id} after the sender went: {de}");
                }
                return Err(mig(e));
            }
            made.keep();
            if let Some(mut d) = lazy_daemon {
                // The pages are pulled in the background; the images go when it is done.
                let end = Instant::now() + PEER_TIMEOUT;
                while Instant::now() < end && matches!(d.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = d.kill();
                let _ = d.wait();
            }
            Ok((id, pid))
        }
        Err(reason) => {
            let _ = conn.send(&Msg::Failed {
                reason: reason.clone(),
            });
            Err(ContainerError::Config(format!(
                "restoring container {id}: {reason}"
            )))
        }
    }
}

/// Writes the bundle's config and restores the container with our own binary: (PID, restore
/// milliseconds, the lazy-pages daemon still pulling pages).
#[allow(clippy::too_many_arguments)]
fn restore_here(
    root: &Path,
    o: &ReceiveOptions,
    offer: &Offer,
    cg: &str,
    bundle: &Path,
    work: &Path,
    images: &Path,
    page_server: Option<(String, u16)>,
) -> Result<(i32, u64, Option<std::process::Child>), String> {
    let mut cfg = offer.config.clone();
    let rootfs = offer
        .shared_rootfs
        .clone()
        .unwrap_or_else(|| "rootfs".into());
    cfg["root"]["path"] = rootfs.into();
    if !cg.is_empty() {
        if let Some(l) = cfg.get_mut("linux").and_then(|l| l.as_object_mut()) {
            l.insert("cgroupsPath".into(), cg.into());
        }
    }
    let data = serde_json::to_vec_pretty(&cfg).map_err(|e| e.to_string())?;
    std::fs::write(bundle.join("config.json"), data)
        .map_err(|e| format!("{}/config.json: {e}", bundle.display()))?;
    std::fs::write(bundle.join(MARK), b"")
        .map_err(|e| format!("{}/{MARK}: {e}", bundle.display()))?;
    let rwork = work.join("restore");
    std::fs::create_dir_all(&rwork).map_err(|e| format!("{}: {e}", rwork.display()))?;
    let mut daemon = match &page_server {
        Some((addr, port)) => Some(lazy_pages_daemon(o.criu, addr, *port, images, &rwork)?),
        None => None,
    };
    let kill = |d: &mut Option<std::process::Child>| {
        if let Some(d) = d {
            let _ = d.kill();
            let _ = d.wait();
        }
    };
    let pid_file = work.join("pid");
    let mut cmd = std::process::Command::new(o.runvz);
    cmd.arg("--root").arg(root).arg("--criu").arg(o.criu);
    cmd.args(["restore", "-d", "--image-path"])
        .arg(images)
        .arg("--work-path")
        .arg(&rwork)
        .arg("-b")
        .arg(bundle)
        .arg("--pid-file")
        .arg(&pid_file);
    for (on, flag) in [
        (page_server.is_some(), "--lazy-pages"),
        (offer.tcp_established, "--tcp-established"),
        (offer.ext_unix_sk, "--ext-unix-sk"),
        (offer.shell_job, "--shell-job"),
        (offer.file_locks, "--file-locks"),
        (offer.empty_net, "--empty-ns=network"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    cmd.arg(&offer.id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    let t = Instant::now();
    let out = match cmd.output() {
        Ok(x) => x,
        Err(e) => {
            kill(&mut daemon);
            return Err(format!("{}: {e}", o.runvz.display()));
        }
    };
    let restore_ms = ms(t);
    if !out.status.success() {
        kill(&mut daemon);
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(msg
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim_start_matches("runvz: "))
            .unwrap_or("restore failed")
            .to_string());
    }
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    Ok((pid, restore_ms, daemon))
}

/// `criu lazy-pages` pulling from the source's page server; ready when its socket exists.
fn lazy_pages_daemon(
    criu: &Path,
    addr: &str,
    port: u16,
    images: &Path,
    work: &Path,
) -> Result<std::process::Child, String> {
    let bin = crate::checkpoint::find(Some(criu)).map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(&bin)
        .args(["lazy-pages", "--page-server", "--address", addr, "--port"])
        .arg(port.to_string())
        .arg("-D")
        .arg(images)
        .arg("-W")
        .arg(work)
        .args(["-o", "lazy-pages.log", "-v4"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let sock = work.join("lazy-pages.socket");
    let end = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if Instant::now() > end || !matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
            let mut log = String::new();
            let _ = std::fs::File::open(work.join("lazy-pages.log"))
                .and_then(|mut f| f.read_to_string(&mut log));
            let why = log
                .lines()
                .find(|l| l.contains("Error"))
                .unwrap_or("no socket")
                .to_string();
            return Err(format!("criu lazy-pages did not start: {why}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}
