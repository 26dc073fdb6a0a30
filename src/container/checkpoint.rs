//! `checkpoint` and `restore` with CRIU (as runc: the same images, flags and notifications).
//!
//! Checkpoint dumps the container's process tree with its mount, PID, IPC, UTS and network
//! namespaces; bind mounts, the cgroup bind mounts and masked paths are declared external
//! (they come from the host) and re-bound on restore. Restore writes the state record as
//! `creating` before anything is made, makes the cgroup with the container's resources and
//! `io.runvz.*` settings, puts criu in it, and lets criu rebuild the tree under the bundle's
//! root. Its own mounts (the bound root, criu's cgroup yard) live in a private mount namespace
//! of the restoring runvz, so they go away with it whatever happens; a failure undoes the
//! cgroup and the record, and `delete --force` does the same for a killed restore.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use super::create::{
    abandon, commit, connect_console, creating_record, load_bundle, write_ub_files,
};
use super::{lock_live, ContainerError};
use crate::cgroups::Cgroup;
use crate::checkpoint::{self, Criu, Notify, Opts, ReqType};
use crate::state::{Status, Store};
use crate::{bundle, hooks, sys};

/// The stdio of the init at checkpoint time (as runc's descriptors.json).
const DESCRIPTORS: &str = "descriptors.json";

#[derive(Debug, Default, Clone)]
pub struct CriuFlags {
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    /// `--empty-ns network`: the network namespace is neither saved nor restored (as runc).
    pub empty_net: bool,
    /// criu_cg_mode (none, props, soft, full, strict).
    pub manage_cgroups_mode: Option<u32>,
    pub lazy_pages: bool,
}

pub struct CheckpointOptions<'a> {
    pub criu: &'a Path,
    pub image_path: &'a Path,
    pub work_path: Option<&'a Path>,
    pub parent_path: Option<&'a Path>,
    pub leave_running: bool,
    pub tcp_skip_in_flight: bool,
    pub link_remap: bool,
    pub pre_dump: bool,
    pub page_server: Option<(String, i32)>,
    pub status_fd: Option<i32>,
    pub flags: CriuFlags,
    /// Set to criu's PID once it runs (a caller in another thread may have to stop it).
    pub criu_pid: Option<&'a std::sync::atomic::AtomicI32>,
}

pub struct RestoreOptions<'a> {
    pub criu: &'a Path,
    pub bundle: &'a Path,
    pub image_path: &'a Path,
    pub work_path: Option<&'a Path>,
    pub detach: bool,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    pub flags: CriuFlags,
}

fn io_err(id: &str, what: String) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Io {
        id: id.to_string(),
        what,
        source,
    }
}

/// Open (making it) an image or work directory.
fn open_dir(id: &str, p: &Path) -> Result<OwnedFd, ContainerError> {
    std::fs::create_dir_all(p).map_err(io_err(id, format!("directory {}", p.display())))?;
    sys::open(p, libc::O_DIRECTORY | libc::O_RDONLY, 0)
        .map_err(io_err(id, format!("directory {}", p.display())))
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

/// The v1 cgroup hierarchies bound below a `cgroup` mount at `dest`: (mount point in the
/// container, host hierarchy mount point). Empty on a cgroup2-only host (a real mount there).
fn cgroup_binds(dest: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mounts = crate::rootfs::host_cgroup_mounts();
    if mounts.len() == 1 && mounts[0].1 == "cgroup2" {
        return vec![];
    }
    mounts
        .into_iter()
        .filter_map(|(mnt, _, _)| {
            let name = mnt.strip_prefix("/sys/fs/cgroup").ok()?.to_path_buf();
            (!name.as_os_str().is_empty()).then(|| (dest.join(name), mnt))
        })
        .collect()
}

fn namespace_path(spec: &Spec, t: LinuxNamespaceType) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == t)
        .and_then(|n| n.path().clone())
}

fn ns_inode(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| m.ino())
}

fn mode_of(f: &CriuFlags, o: &mut Opts) {
    o.tcp_established = f.tcp_established;
    o.ext_unix_sk = f.ext_unix_sk;
    o.shell_job = f.shell_job;
    o.file_locks = f.file_locks;
    o.empty_ns = f.empty_net.then_some(libc::CLONE_NEWNET as u32);
    o.manage_cgroups = true;
    o.manage_cgroups_mode = f.manage_cgroups_mode;
    o.lazy_pages = f.lazy_pages;
    o.log_level = 4;
    o.notify_scripts = true;
    // The pty master is held outside the container (console socket): an external master
    // on dump, a new one sent to the console socket on restore.
    o.orphan_pts_master = true;
}

/// A container criu can move: running or paused (its status is returned), and nothing criu
/// cannot dump. Checked before anything is touched (checkpoint, migrate); `verb` names the
/// operation in the error.
pub(super) fn check_movable(
    id: &str,
    c: &super::Container,
    verb: &str,
) -> Result<Status, ContainerError> {
    let st = c.status();
    if st != Status::Running && st != Status::Paused {
        return Err(ContainerError::WrongState {
            id: id.into(),
            status: st,
            what: format!("only a running or paused container can be {verb}"),
        });
    }
    if c.rec.host_mounts {
        return Err(ContainerError::Config(format!(
            "container {id} has no mount namespace: criu cannot checkpoint it"
        )));
    }
    if c.rec.disk.is_some() {
        return Err(ContainerError::Config(format!(
            "container {id} has an io.runvz disk quota (overlay on an image or a qgroup): checkpoint of it is not supported"
        )));
    }
    if !c.rec.net_links.is_empty() {
        return Err(ContainerError::Config(format!(
            "container {id} has io.runvz.net links ({}): checkpoint of venet/veth containers is not supported",
            c.rec.net_links.join(", ")
        )));
    }
    Ok(st)
}

pub fn checkpoint(store: &Store, id: &str, opts: &CheckpointOptions) -> Result<(), ContainerError> {
    let (locked, c) = lock_live(store, id)?;
    check_movable(id, &c, "checkpointed")?;
    let spec: Spec = c
        .rec
        .config
        .clone()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| ContainerError::Config(format!("container {id}: no config recorded")))?;
    let img = open_dir(id, opts.image_path)?;
    let work = opts.work_path.map(|p| open_dir(id, p)).transpose()?;
    let log_dir = opts.work_path.unwrap_or(opts.image_path);
    let log_name = if opts.pre_dump {
        "pre-dump.log"
    } else {
        "dump.log"
    };
    let mut o = Opts {
        images_dir_fd: img.as_raw_fd(),
        work_dir_fd: work.as_ref().map(|w| w.as_raw_fd()),
        pid: Some(c.rec.pid),
        log_file: log_name.into(),
        leave_running: opts.leave_running,
        tcp_skip_in_flight: opts.tcp_skip_in_flight,
        link_remap: opts.link_remap,
        parent_img: opts.parent_path.map(|p| p.display().to_string()),
        page_server: opts.page_server.clone(),
        status_fd: opts.status_fd,
        ..Default::default()
    };
    mode_of(&opts.flags, &mut o);
    if let Some(cg) = c.cgroup() {
        let f = if cg.is_v2() {
            cg.file("", "")
        } else {
            cg.file("freezer", "")
        };
        o.freeze_cgroup = Some(f.display().to_string());
    }
    for m in spec.mounts().as_deref().unwrap_or(&[]) {
        let dest = m.destination().display().to_string();
        if is_bind(m) {
            o.ext_mnt.push((dest.clone(), dest));
        } else if m.typ().as_deref() == Some("cgroup") {
            for (inside, _) in cgroup_binds(m.destination()) {
                let d = inside.display().to_string();
                o.ext_mnt.push((d.clone(), d));
            }
        }
    }
    // Masked files are /dev/null bound over them (directories get a tmpfs criu dumps).
    let masked = spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default();
    for p in &masked {
        let inside = PathBuf::from(format!("/proc/{}/root{p}", c.rec.pid));
        if std::fs::metadata(&inside).is_ok_and(|m| !m.is_dir()) {
            o.ext_mnt.push((p.clone(), "/dev/null".into()));
        }
    }
    // Namespaces joined by path are not the container's own: criu leaves them alone.
    if let Some(ino) = namespace_path(&spec, LinuxNamespaceType::Network).and_then(|p| ns_inode(&p))
    {
        o.external.push(format!("net[{ino}]:extRootNetNS"));
    }
    let fds: Vec<String> = (0..3)
        .map(|i| {
            std::fs::read_link(format!("/proc/{}/fd/{i}", c.rec.pid))
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        })
        .collect();
    let bin = checkpoint::find(Some(opts.criu))?;
    let mut criu = Criu::start(&bin, &[], log_dir.join(log_name))?;
    let typ = if opts.pre_dump {
        let f = criu.call(ReqType::FeatureCheck, None, &mut |_| Ok(()));
        criu.finish();
        if !f?.features.0 {
            return Err(ContainerError::Config(
                "--pre-dump needs memory dirty tracking, which this kernel lacks (CONFIG_MEM_SOFT_DIRTY; criu feature mem_track): use a plain checkpoint".into(),
            ));
        }
        o.track_mem = true;
        criu = Criu::start(&bin, &[], log_dir.join(log_name))?;
        ReqType::PreDump
    } else {
        ReqType::Dump
    };
    std::fs::write(
        opts.image_path.join(DESCRIPTORS),
        serde_json::to_vec(&fds).unwrap_or_default(),
    )
    .map_err(io_err(
        id,
        format!("{}/{DESCRIPTORS}", opts.image_path.display()),
    ))?;
    if let Some(p) = opts.criu_pid {
        p.store(criu.pid(), std::sync::atomic::Ordering::SeqCst);
    }
    let res = criu.call(typ, Some(&o), &mut |_| Ok(()));
    criu.finish();
    res?;
    drop(locked);
    if !opts.leave_running && !opts.pre_dump {
        // The processes are gone: the container goes too (as runc).
        super::delete(store, id, true)?;
    }
    Ok(())
}

/// The source of a bind mount (relative sources are relative to the bundle).
fn bind_source(m: &Mount, bundle: &Path) -> PathBuf {
    m.source()
        .as_ref()
        .map(|s| {
            if s.is_absolute() {
                s.clone()
            } else {
                bundle.join(s)
            }
        })
        .unwrap_or_default()
}

/// As runc before a restore: the mount points of bind mounts exist in the rootfs (criu binds
/// onto them; a fresh rootfs, e.g. `podman restore --import`, lacks files such as
/// /run/.containerenv). Created through the rootfs, never following its symlinks out.
fn make_bind_targets(spec: &Spec, bundle: &Path, rootfs: &Path) -> Result<(), ContainerError> {
    let root = crate::safe_path::Root::open(rootfs)
        .map_err(|e| ContainerError::Config(format!("rootfs {}: {e}", rootfs.display())))?;
    for m in spec
        .mounts()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .filter(|m| is_bind(m))
    {
        let kind = if bind_source(m, bundle).is_dir() {
            crate::safe_path::Kind::Dir
        } else {
            crate::safe_path::Kind::File
        };
        root.mkdir_all(m.destination(), kind).map_err(|e| {
            ContainerError::Config(format!(
                "mount point {} in the rootfs: {e}",
                m.destination().display()
            ))
        })?;
    }
    Ok(())
}

/// Detaches the restore root (and removes its mount point) when dropped.
struct RootGuard(PathBuf);

impl Drop for RootGuard {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!("unmounting {}: {e}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// (controller, path) of each cgroup `pid` is in, for criu's `cg_root`.
fn cgroup_roots(pid: i32) -> Vec<(String, String)> {
    let data = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let v2_only = crate::cgroups::host_is_v2();
    data.lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctrl, path) = (p.next()?, p.next()?, p.next()?);
            (v2_only || !ctrl.is_empty()).then(|| (ctrl.to_string(), path.to_string()))
        })
        .collect()
}

pub fn restore(store: &Store, id: &str, opts: &RestoreOptions) -> Result<i32, ContainerError> {
    bundle::validate_id(id).map_err(ContainerError::InvalidId)?;
    let (b, ub_settings, ub_plan) = load_bundle(opts.bundle)?;
    // What checkpoint refuses, restore refuses too: a bundle whose create would make a
    // network or a disk image cannot be restored by criu alone.
    if crate::net::Plan::from_spec(&b.spec)?.is_some() {
        return Err(ContainerError::Config(format!(
            "container {id}: restore of a bundle with io.runvz.net.* annotations is not supported"
        )));
    }
    if !ub_settings.disk.is_empty() {
        return Err(ContainerError::Config(format!(
            "container {id}: restore of a bundle with io.runvz disk quotas is not supported"
        )));
    }
    let plan = crate::namespaces::Plan::from_spec(&b.spec);
    if !plan.has(LinuxNamespaceType::Mount) {
        return Err(ContainerError::Config(
            "restore needs a mount namespace in the bundle's config".into(),
        ));
    }
    let linux = b.spec.linux().as_ref();
    let cgroup_path =
        crate::cgroups::path_for(linux.and_then(|l| l.cgroups_path().as_deref()), id)?;
    let terminal = b
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let console = match opts.console_socket {
        Some(p) if terminal => Some(connect_console(p, id, 3)?),
        None if terminal => {
            return Err(ContainerError::Config(
                "process.terminal is true: pass --console-socket".into(),
            ))
        }
        _ => None,
    };
    let descriptors: Vec<String> = std::fs::read(opts.image_path.join(DESCRIPTORS))
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .ok_or_else(|| {
            ContainerError::Config(format!(
                "{}: no checkpoint image ({DESCRIPTORS} missing or unreadable)",
                opts.image_path.display()
            ))
        })?;
    // Our mounts (the bound root, criu's cgroup yard) stay in a namespace of our own.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| io_err(id, "unshare(CLONE_NEWNS)".into())(e.into()))?;
    nix::mount::mount::<str, str, str, str>(
        None,
        "/",
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(|e| io_err(id, "making / private".into())(e.into()))?;
    // The cwd still points into the old namespace's mounts (criu mounts relative to it).
    if let Ok(cwd) = std::env::current_dir() {
        std::env::set_current_dir(&cwd).map_err(io_err(id, cwd.display().to_string()))?;
    }
    // Opened in our namespace: criu works (and mounts its cgroup yard) in the work dir.
    let img = open_dir(id, opts.image_path)?;
    let work = opts.work_path.map(|p| open_dir(id, p)).transpose()?;
    let log_dir = opts.work_path.unwrap_or(opts.image_path).to_path_buf();
    let bin = checkpoint::find(Some(opts.criu))?;
    let net_fd = namespace_path(&b.spec, LinuxNamespaceType::Network)
        .map(|p| sys::open(&p, libc::O_RDONLY, 0).map_err(io_err(id, format!("{}", p.display()))))
        .transpose()?;
    // Everything the user can get wrong is checked above; from here on we make things.
    let mut rec = creating_record(id, &b, &cgroup_path, &ub_settings);
    let locked = store.claim(id, &rec)?;
    let cgroup = match Cgroup::open(&cgroup_path, None) {
        Ok(c) => c,
        Err(e) => {
            let _ = locked.remove();
            return Err(e.into());
        }
    };
    let mut restored = 0;
    let result = (|| -> Result<i32, ContainerError> {
        let root = locked.dir.join("criu-root");
        std::fs::create_dir_all(&root).map_err(io_err(id, root.display().to_string()))?;
        nix::mount::mount::<Path, Path, str, str>(
            Some(&b.rootfs),
            &root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(|e| io_err(id, format!("binding {}", b.rootfs.display()))(e.into()))?;
        // Unmounted whatever happens next: the state directory (removed on failure) must
        // never be walked through the bound rootfs.
        let _unmount = RootGuard(root.clone());
        make_bind_targets(&b.spec, &b.dir, &b.rootfs)?;
        let extra: Vec<i32> = net_fd.iter().map(|f| f.as_raw_fd()).collect();
        let mut criu = Criu::start(&bin, &extra, log_dir.join("restore.log"))?;
        let run = (|| -> Result<i32, ContainerError> {
            cgroup.add(criu.pid())?;
            if let Some(res) = linux.and_then(|l| l.resources().as_ref()) {
                let adj = b.spec.process().as_ref().and_then(|p| p.oom_score_adj());
                cgroup.apply(res, adj)?;
            }
            write_ub_files(&cgroup, &ub_plan)?;
            let mut o = Opts {
                images_dir_fd: img.as_raw_fd(),
                work_dir_fd: work.as_ref().map(|w| w.as_raw_fd()),
                log_file: "restore.log".into(),
                evasive_devices: true,
                rst_sibling: true,
                root: Some(root.display().to_string()),
                cg_root: cgroup_roots(criu.pid()),
                ..Default::default()
            };
            mode_of(&opts.flags, &mut o);
            if net_fd.is_some() {
                o.inherit_fd.push(("extRootNetNS".into(), 4));
            }
            for (i, d) in descriptors.iter().enumerate() {
                if d.contains("pipe:") {
                    o.inherit_fd.push((d.clone(), i as i32));
                }
            }
            for t in [LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts] {
                if let Some(p) = namespace_path(&b.spec, t) {
                    let name = if t == LinuxNamespaceType::Ipc {
                        "ipc"
                    } else {
                        "uts"
                    };
                    o.join_ns.push((name.into(), p.display().to_string()));
                }
            }
            for m in b.spec.mounts().as_deref().unwrap_or(&[]) {
                let dest = m.destination().display().to_string();
                if is_bind(m) {
                    let src = bind_source(m, &b.dir);
                    o.ext_mnt.push((dest, src.display().to_string()));
                } else if m.typ().as_deref() == Some("cgroup") {
                    // Each hierarchy shows the container's new cgroup (the one criu is in).
                    let roots = cgroup_roots(criu.pid());
                    for (inside, mnt) in cgroup_binds(m.destination()) {
                        let ctrls = crate::rootfs::host_cgroup_mounts()
                            .into_iter()
                            .find(|x| x.0 == mnt)
                            .map(|x| x.2)
                            .unwrap_or_default();
                        let rel = roots
                            .iter()
                            .find(|(c, _)| {
                                !c.is_empty()
                                    && c.split(',').all(|x| ctrls.split(',').any(|y| y == x))
                            })
                            .map(|(_, p)| p.clone())
                            .unwrap_or_else(|| "/".into());
                        let src = mnt.join(rel.trim_start_matches('/'));
                        o.ext_mnt
                            .push((inside.display().to_string(), src.display().to_string()));
                    }
                }
            }
            if linux.is_some_and(|l| l.masked_paths().as_ref().is_some_and(|m| !m.is_empty())) {
                o.ext_mnt.push(("/dev/null".into(), "/dev/null".into()));
            }
            let spec = &b.spec;
            let mut on_notify = |n: Notify| -> Result<(), String> {
                match n.script.as_str() {
                    "setup-namespaces" => {
                        let pre_st = hooks::state_json(spec, id, "created", n.pid, &b.dir);
                        if let Some(h) = spec.hooks().as_ref() {
                            #[allow(deprecated)]
                            let pre = h.prestart().clone().unwrap_or_default();
                            hooks::run("prestart", &pre, &pre_st).map_err(|e| e.to_string())?;
                        }
                    }
                    "post-restore" => {
                        restored = n.pid;
                        rec.pid = n.pid;
                        rec.pid_start = sys::proc_start_time(n.pid).map(|s| s.0).unwrap_or(0);
                        locked.write(&rec).map_err(|e| e.to_string())?;
                    }
                    "orphan-pts-master" => {
                        let (Some(fd), Some(sock)) = (n.fd, console.as_ref()) else {
                            return Err(
                                "criu sent no pty master, or there is no console socket".into()
                            );
                        };
                        crate::process::tty::send_master(sock.as_raw_fd(), &fd)
                            .map_err(|e| e.to_string())?;
                    }
                    _ => {}
                }
                Ok(())
            };
            let resp = criu.call(ReqType::Restore, Some(&o), &mut on_notify)?;
            Ok(resp.restored_pid)
        })();
        criu.finish();
        run
    })();
    let pid = match result {
        Ok(pid) if pid > 0 => pid,
        Ok(_) => {
            abandon(locked, Some(&cgroup), restored, &rec);
            return Err(ContainerError::Config("criu restored no process".into()));
        }
        Err(e) => {
            abandon(locked, Some(&cgroup), restored, &rec);
            return Err(e);
        }
    };
    rec.pid = pid;
    rec.pid_start = sys::proc_start_time(pid).map(|s| s.0).unwrap_or(0);
    let locked = commit(
        locked,
        &cgroup,
        pid,
        &mut rec,
        Status::Running,
        opts.pid_file,
    )?;
    drop(locked);
    if opts.detach {
        return Ok(0);
    }
    // Foreground: the restored init is our child (rst_sibling); its exit is ours.
    Ok(super::ops::wait_exit(pid))
}
