//! The container's filesystem view: propagation, the OCI mounts, devices, `pivot_root`, masked
//! and read-only paths, sysctls and the read-only root. Runs inside the container's new mount
//! namespace, in the container's init, before the user's process exists.
//!
//! Every target inside the rootfs is resolved with `safe_path` and acted on through its fd, so
//! a symlink in the rootfs can never make a mount or a device node land outside it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::safe_path::{Kind, Root, SafePathError};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mount {what} on {dest}: {source}")]
    Mount {
        what: String,
        dest: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Path(#[from] SafePathError),
    #[error("mount {dest:?}: unsupported option {opt:?}")]
    Option { dest: PathBuf, opt: String },
    #[error("device {path}: {source}")]
    Device { path: PathBuf, source: io::Error },
    #[error("pivot_root into {rootfs}: {source}")]
    Pivot { rootfs: PathBuf, source: io::Error },
    #[error("{what}: {source}")]
    Other { what: String, source: io::Error },
    #[error("{0}")]
    Unsafe(String),
}

fn other(what: impl Into<String>) -> impl FnOnce(nix::Error) -> RootfsError {
    let what = what.into();
    move |e| RootfsError::Other {
        what,
        source: e.into(),
    }
}

/// Options of the rootfs setup that do not come from config.json.
pub struct Options {
    pub no_pivot: bool,
    /// The container has a mount namespace of its own. Without one, every mount lands in
    /// the runtime's namespace under the rootfs, and `delete` removes them
    /// (`unmount_under`).
    pub own_mountns: bool,
    pub in_userns: bool,
    pub new_cgroupns: bool,
}

/// Parsed mount options.
#[derive(Debug)]
struct MountOpts {
    flags: MsFlags,
    clear: MsFlags,
    propagation: MsFlags,
    data: Vec<String>,
    bind: bool,
    recursive: bool,
}

fn parse_options(dest: &Path, opts: &[String]) -> Result<MountOpts, RootfsError> {
    let mut m = MountOpts {
        flags: MsFlags::empty(),
        clear: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: vec![],
        bind: false,
        recursive: false,
    };
    for o in opts {
        let (set, clr) = match o.as_str() {
            "defaults" | "tmpcopyup" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "lazytime" => (MsFlags::MS_LAZYTIME, MsFlags::empty()),
            "nolazytime" => (MsFlags::empty(), MsFlags::MS_LAZYTIME),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "bind" => {
                m.bind = true;
                continue;
            }
            "rbind" => {
                m.bind = true;
                m.recursive = true;
                continue;
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                m.propagation |= propagation_flag(o).unwrap_or(MsFlags::empty());
                continue;
            }
            "idmap" | "ridmap" | "rro" | "rrw" | "rnosuid" | "rnodev" | "rnoexec" | "rnoatime" => {
                return Err(RootfsError::Option {
                    dest: dest.to_path_buf(),
                    opt: o.clone(),
                })
            }
            _ => {
                m.data.push(o.clone());
                continue;
            }
        };
        m.flags.insert(set);
        m.flags.remove(clr);
        m.clear.insert(clr);
    }
    Ok(m)
}

/// Check the options of every mount in `spec` as the container's setup will parse them, so
/// that `create` refuses an unsupported option before anything is made. Pure.
pub fn check_mount_options(spec: &Spec) -> Result<(), RootfsError> {
    for m in spec.mounts().iter().flatten() {
        parse_options(m.destination(), m.options().as_deref().unwrap_or(&[]))?;
    }
    Ok(())
}

fn propagation_flag(p: &str) -> Option<MsFlags> {
    Some(match p {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

fn do_mount(
    src: Option<&Path>,
    target: &OwnedFd,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
    dest: &Path,
) -> Result<(), RootfsError> {
    mount(src, &sys::fd_path(target), fstype, flags, data).map_err(|e| RootfsError::Mount {
        what: what.to_string(),
        dest: dest.to_path_buf(),
        source: e.into(),
    })
}

/// The flags of the mount an fd sits on that a bind remount must keep (the kernel refuses
/// to clear them when they are locked, e.g. in a user namespace).
fn locked_flags(fd: &OwnedFd) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::fstatvfs(fd) else {
        return MsFlags::empty();
    };
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut m = MsFlags::empty();
    for (s, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(s) {
            m |= ms;
        }
    }
    m
}

/// Everything before pivot_root: propagation, the rootfs bind, the OCI mounts, devices.
pub fn prepare(
    spec: &Spec,
    bundle: &Path,
    rootfs: &Path,
    opts: &Options,
) -> Result<(), RootfsError> {
    let linux = spec.linux().as_ref();
    let prop = linux
        .and_then(|l| l.rootfs_propagation().clone())
        .unwrap_or_default();
    // Never let our mounts propagate back to the host: slave (or private) recursively first.
    let base = if prop.ends_with("private") {
        MsFlags::MS_PRIVATE | MsFlags::MS_REC
    } else {
        MsFlags::MS_SLAVE | MsFlags::MS_REC
    };
    if opts.own_mountns {
        mount(None::<&str>, "/", None::<&str>, base, None::<&str>)
            .map_err(other("making / a slave mount"))?;
    }
    // The rootfs must be a mount point for pivot_root (and, without a mount namespace, so
    // that a read-only root never touches the host's mount).
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| RootfsError::Mount {
        what: "rootfs bind".into(),
        dest: rootfs.to_path_buf(),
        source: e.into(),
    })?;
    if !opts.own_mountns {
        // In the host's namespace: keep what we mount below the rootfs from propagating.
        mount(
            None::<&str>,
            rootfs,
            None::<&str>,
            MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(other("making the rootfs private"))?;
    }
    let root = Root::open(rootfs)?;
    let mut dev_is_bind = false;
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination();
        if dest == Path::new("/dev") && m.typ().as_deref() == Some("bind") {
            dev_is_bind = true;
        }
        mount_one(&root, bundle, m, opts)?;
    }
    if !dev_is_bind {
        create_devices(
            &root,
            linux
                .and_then(|l| l.devices().as_ref())
                .map(|v| v.as_slice())
                .unwrap_or(&[]),
            opts.in_userns,
        )?;
        dev_symlinks(&root, spec)?;
    }
    Ok(())
}

fn mount_one(root: &Root, bundle: &Path, m: &Mount, opts: &Options) -> Result<(), RootfsError> {
    let dest = m.destination();
    let typ = m.typ().as_deref().unwrap_or("");
    let mo = parse_options(dest, m.options().as_deref().unwrap_or(&[]))?;
    let is_bind = mo.bind || typ == "bind";
    if is_bind {
        return bind_mount(root, bundle, m, &mo);
    }
    match typ {
        "cgroup" | "cgroup2" => return mount_cgroups(root, dest, &mo, opts),
        "proc" | "sysfs" => {
            // /proc and /sys targets must be real directories: a symlink here is an attack
            // (CVE-2019-16884, CVE-2019-19921).
            root.mkdir_all(dest, Kind::Dir)?;
            let fd = root.open_no_symlinks(dest, libc::O_PATH | libc::O_DIRECTORY)?;
            let data = mo.data.join(",");
            let data = (!data.is_empty()).then_some(data.as_str());
            match mount(Some(typ), &sys::fd_path(&fd), Some(typ), mo.flags, data) {
                Ok(()) => {}
                // sysfs cannot be mounted in a user namespace without its own network
                // namespace: bind the host's instead, as runc does.
                Err(nix::Error::EPERM) if opts.in_userns && typ == "sysfs" => {
                    do_mount(
                        Some(Path::new("/sys")),
                        &fd,
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None,
                        "sysfs (bind)",
                        dest,
                    )?;
                    remount_bind(
                        root,
                        dest,
                        MsFlags::MS_NOSUID
                            | MsFlags::MS_NODEV
                            | MsFlags::MS_NOEXEC
                            | (mo.flags & MsFlags::MS_RDONLY),
                    )?;
                }
                Err(e) => {
                    return Err(RootfsError::Mount {
                        what: typ.into(),
                        dest: dest.to_path_buf(),
                        source: e.into(),
                    })
                }
            }
        }
        _ => {
            root.mkdir_all(dest, Kind::Dir)?;
            let fd = root.open_in(dest, libc::O_PATH | libc::O_DIRECTORY)?;
            let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
            let data = mo.data.join(",");
            let data = (!data.is_empty()).then_some(data.as_str());
            match mount(Some(&src), &sys::fd_path(&fd), Some(typ), mo.flags, data) {
                Ok(()) => {}
                // mqueue needs its own ipc namespace in a user namespace: bind the host's.
                Err(nix::Error::EPERM) if opts.in_userns && typ == "mqueue" => {
                    do_mount(
                        Some(Path::new("/dev/mqueue")),
                        &fd,
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None,
                        "mqueue (bind)",
                        dest,
                    )?;
                }
                Err(e) => {
                    return Err(RootfsError::Mount {
                        what: typ.into(),
                        dest: dest.to_path_buf(),
                        source: e.into(),
                    })
                }
            }
        }
    }
    if !mo.propagation.is_empty() {
        let fd = root.open_in(dest, libc::O_PATH)?;
        do_mount(None, &fd, None, mo.propagation, None, "propagation", dest)?;
    }
    Ok(())
}

fn bind_mount(root: &Root, bundle: &Path, m: &Mount, mo: &MountOpts) -> Result<(), RootfsError> {
    let dest = m.destination();
    let src = m.source().clone().unwrap_or_default();
    let src = if src.is_absolute() {
        src
    } else {
        bundle.join(src)
    };
    // Open the source once and mount through the fd: what we checked is what we mount.
    let src_fd = sys::open(&src, libc::O_PATH, 0).map_err(|e| RootfsError::Mount {
        what: format!("bind of {}", src.display()),
        dest: dest.to_path_buf(),
        source: e,
    })?;
    let st = sys::fstat(&src_fd).map_err(|e| RootfsError::Other {
        what: src.display().to_string(),
        source: e,
    })?;
    let kind = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        Kind::Dir
    } else {
        Kind::File
    };
    let target = root.mkdir_all(dest, kind)?;
    let mut flags = MsFlags::MS_BIND;
    if mo.recursive {
        flags |= MsFlags::MS_REC;
    }
    do_mount(
        Some(&sys::fd_path(&src_fd)),
        &target,
        None,
        flags,
        None,
        &format!("bind of {}", src.display()),
        dest,
    )?;
    let change = mo.flags & !(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_REC);
    if !change.is_empty() || !mo.clear.is_empty() {
        remount_bind(root, dest, change)?;
    }
    if !mo.propagation.is_empty() {
        let fd = root.open_in(dest, libc::O_PATH)?;
        do_mount(None, &fd, None, mo.propagation, None, "propagation", dest)?;
    }
    Ok(())
}

/// Remount the bind mount now on `dest` with `flags`, keeping the flags the kernel locks.
fn remount_bind(root: &Root, dest: &Path, flags: MsFlags) -> Result<(), RootfsError> {
    // Re-resolve: the old fd points below the new mount.
    let fd = root.open_in(dest, libc::O_PATH)?;
    let keep = locked_flags(&fd);
    do_mount(
        None,
        &fd,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | keep,
        None,
        "remount",
        dest,
    )
}

/// Host cgroup mount points (v1 hierarchies and cgroup2), from /proc/self/mountinfo.
pub fn host_cgroup_mounts() -> Vec<(PathBuf, String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = vec![];
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let fstype = post[0];
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let mnt = PathBuf::from(pre[4]);
        if !mnt.starts_with("/sys/fs/cgroup") {
            continue;
        }
        // The controller list of a v1 hierarchy is in its super options.
        let ctrls = post[2]
            .split(',')
            .filter(|o| {
                !matches!(*o, "rw" | "ro")
                    && !o.starts_with("release_agent")
                    && *o != "clone_children"
            })
            .collect::<Vec<_>>()
            .join(",");
        out.push((mnt, fstype.to_string(), ctrls));
    }
    out
}

/// The process's own cgroup in the hierarchy holding `ctrls` ("" for cgroup2).
fn own_cgroup(ctrls: &str, v2: bool) -> PathBuf {
    let data = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in data.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, c, p) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("/"),
        );
        let hit = if v2 {
            c.is_empty()
        } else {
            let have: Vec<&str> = c.split(',').collect();
            ctrls
                .split(',')
                .filter(|x| !x.starts_with("name=") || have.contains(x))
                .all(|x| have.contains(&x))
                && !c.is_empty()
        };
        if hit {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("/")
}

/// A `cgroup` mount: on v2 a cgroup2 view of the container's cgroup; on v1/hybrid a tmpfs
/// holding one directory per hierarchy, each showing the container's own cgroup.
fn mount_cgroups(
    root: &Root,
    dest: &Path,
    mo: &MountOpts,
    opts: &Options,
) -> Result<(), RootfsError> {
    let mounts = host_cgroup_mounts();
    let flags = mo.flags
        & (MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_RELATIME);
    root.mkdir_all(dest, Kind::Dir)?;
    let unified_only =
        mounts.len() == 1 && mounts[0].1 == "cgroup2" && mounts[0].0 == Path::new("/sys/fs/cgroup");
    if unified_only {
        let fd = root.open_no_symlinks(dest, libc::O_PATH | libc::O_DIRECTORY)?;
        if opts.new_cgroupns {
            return do_mount(
                Some(Path::new("cgroup2")),
                &fd,
                Some("cgroup2"),
                flags,
                None,
                "cgroup2",
                dest,
            );
        }
        let own = own_cgroup("", true);
        let src = Path::new("/sys/fs/cgroup").join(own.strip_prefix("/").unwrap_or(&own));
        do_mount(
            Some(&src),
            &fd,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            "cgroup2 (bind)",
            dest,
        )?;
        return remount_bind(root, dest, flags);
    }
    let fd = root.open_no_symlinks(dest, libc::O_PATH | libc::O_DIRECTORY)?;
    do_mount(
        Some(Path::new("tmpfs")),
        &fd,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
        "cgroup tmpfs",
        dest,
    )?;
    for (mnt, fstype, ctrls) in &mounts {
        let Some(name) = mnt
            .strip_prefix("/sys/fs/cgroup")
            .ok()
            .filter(|n| !n.as_os_str().is_empty())
        else {
            continue;
        };
        let sub = dest.join(name);
        root.mkdir_all(&sub, Kind::Dir)?;
        let v2 = fstype == "cgroup2";
        let own = own_cgroup(ctrls, v2);
        let src = mnt.join(own.strip_prefix("/").unwrap_or(&own));
        let sfd = root.open_no_symlinks(&sub, libc::O_PATH | libc::O_DIRECTORY)?;
        do_mount(
            Some(&src),
            &sfd,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            &format!("cgroup {}", name.display()),
            &sub,
        )?;
        remount_bind(root, &sub, flags)?;
    }
    // The tmpfs itself is read-only like runc's when asked.
    if flags.contains(MsFlags::MS_RDONLY) {
        remount_tmpfs_ro(root, dest)?;
    }
    Ok(())
}

fn remount_tmpfs_ro(root: &Root, dest: &Path) -> Result<(), RootfsError> {
    let fd = root.open_in(dest, libc::O_PATH)?;
    do_mount(
        None,
        &fd,
        None,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        Some("mode=755"),
        "cgroup tmpfs (ro)",
        dest,
    )
}

/// The devices every container gets (as runc), plus `linux.devices`.
fn create_devices(root: &Root, extra: &[LinuxDevice], in_userns: bool) -> Result<(), RootfsError> {
    let default = [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ];
    for (p, maj, min) in default {
        if extra.iter().any(|d| d.path() == Path::new(p)) {
            continue;
        }
        make_device(
            root,
            Path::new(p),
            SFlag::S_IFCHR,
            maj,
            min,
            0o666,
            0,
            0,
            in_userns,
        )?;
    }
    for d in extra {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(RootfsError::Unsafe(format!(
                    "device {}: type \"a\" is only valid in cgroup rules",
                    d.path().display()
                )))
            }
        };
        make_device(
            root,
            d.path(),
            kind,
            d.major(),
            d.minor(),
            d.file_mode().unwrap_or(0o666),
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
            in_userns,
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn make_device(
    root: &Root,
    path: &Path,
    kind: SFlag,
    major: i64,
    minor: i64,
    mode: u32,
    uid: u32,
    gid: u32,
    in_userns: bool,
) -> Result<(), RootfsError> {
    let derr = |source: io::Error| RootfsError::Device {
        path: path.to_path_buf(),
        source,
    };
    if !path.starts_with("/dev") {
        return Err(RootfsError::Unsafe(format!(
            "device {}: devices must be under /dev",
            path.display()
        )));
    }
    if in_userns {
        // mknod is not allowed in a user namespace: bind the host's node instead.
        let target = root.mkdir_all(path, Kind::File)?;
        let src = sys::open(path, libc::O_PATH, 0).map_err(derr)?;
        return do_mount(
            Some(&sys::fd_path(&src)),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
            "device bind",
            path,
        );
    }
    let parent = path.parent().unwrap_or(Path::new("/dev"));
    let name = path
        .file_name()
        .ok_or_else(|| derr(io::Error::from_raw_os_error(libc::EINVAL)))?;
    let dir = root.mkdir_all(parent, Kind::Dir)?;
    let dirfd = dir.as_raw_fd();
    // Replace whatever is there (never following a symlink: unlinkat removes the link itself).
    let _ = nix::unistd::unlinkat(Some(dirfd), name, nix::unistd::UnlinkatFlags::NoRemoveDir);
    let dev = nix::sys::stat::makedev(major as u64, minor as u64);
    nix::sys::stat::mknodat(
        Some(dirfd),
        name,
        kind,
        Mode::from_bits_truncate(mode & 0o7777),
        dev,
    )
    .map_err(|e| derr(e.into()))?;
    nix::unistd::fchownat(
        Some(dirfd),
        name,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| derr(e.into()))?;
    Ok(())
}

fn dev_symlinks(root: &Root, spec: &Spec) -> Result<(), RootfsError> {
    let dir = root.mkdir_all(Path::new("/dev"), Kind::Dir)?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if std::path::Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    let has_devpts =
        spec.mounts().iter().flatten().any(|m| {
            m.destination() == Path::new("/dev/pts") && m.typ().as_deref() == Some("devpts")
        });
    if has_devpts {
        let _ = nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            "ptmx",
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        links.push(("pts/ptmx", "ptmx"));
    }
    for (target, name) in links {
        match nix::unistd::symlinkat(target, Some(dir.as_raw_fd()), name) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => {
                return Err(RootfsError::Other {
                    what: format!("/dev/{name}"),
                    source: e.into(),
                })
            }
        }
    }
    Ok(())
}

/// Make `rootfs` the root: pivot_root and detach the old root, or (--no-pivot) move it over /
/// and chroot.
pub fn pivot(rootfs: &Path, no_pivot: bool, own_mountns: bool) -> Result<(), RootfsError> {
    let perr = |e: nix::Error| RootfsError::Pivot {
        rootfs: rootfs.to_path_buf(),
        source: e.into(),
    };
    nix::unistd::chdir(rootfs).map_err(perr)?;
    if !own_mountns {
        // pivot_root or MS_MOVE would change the host's root: only chroot.
        nix::unistd::chroot(".").map_err(perr)?;
    } else if no_pivot {
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(perr)?;
        nix::unistd::chroot(".").map_err(perr)?;
    } else {
        // pivot_root(".", "."): the old root ends up stacked on "/", then we detach it.
        nix::unistd::pivot_root(".", ".").map_err(perr)?;
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(perr)?;
        umount2(".", MntFlags::MNT_DETACH).map_err(perr)?;
    }
    nix::unistd::chdir("/").map_err(perr)
}

fn is_procfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Write the namespaced sysctls through the container's own /proc (after pivot).
pub fn sysctls(spec: &Spec) -> Result<(), RootfsError> {
    let Some(map) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) else {
        return Ok(());
    };
    if map.is_empty() {
        return Ok(());
    }
    if !is_procfs(Path::new("/proc")) {
        return Err(RootfsError::Unsafe(
            "linux.sysctl needs procfs mounted at /proc in the container".into(),
        ));
    }
    let root = Root::open(Path::new("/proc/sys"))?;
    for (k, v) in map {
        let rel = PathBuf::from(k.replace('.', "/"));
        // No O_TRUNC: nothing is changed before the file is known to be procfs's.
        let fd = root.open_no_symlinks(&rel, libc::O_WRONLY)?;
        // CVE-2025-52881: a mount over part of /proc/sys (a volume, a tmpfs) would take the
        // write; only a file of procfs itself is written.
        let on_procfs = nix::sys::statfs::fstatfs(&fd)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC);
        if !on_procfs {
            return Err(RootfsError::Unsafe(format!(
                "linux.sysctl {k}: /proc/sys/{} is not a procfs file (something is mounted over it)",
                rel.display()
            )));
        }
        nix::unistd::write(&fd, v.as_bytes()).map_err(|e| RootfsError::Other {
            what: format!("sysctl {k}={v}"),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Masked paths, read-only paths, the read-only root and the rootfs propagation (after pivot).
/// As runc: stdio that is the host's /dev/null (conmon, `run -d </dev/null`) is reopened as
/// the container's /dev/null, so that no file of the host's mounts stays open in the container
/// (criu cannot dump such an fd: "Can't lookup mount"). No-op without a null device in /dev.
pub fn reopen_dev_null() -> Result<(), RootfsError> {
    let root = Root::open(Path::new("/"))?;
    let Ok(null) = root.open_no_symlinks(Path::new("/dev/null"), libc::O_RDWR | libc::O_CLOEXEC)
    else {
        return Ok(());
    };
    let io = |e| RootfsError::Other {
        what: "/dev/null".into(),
        source: e,
    };
    let nst = sys::fstat(&null).map_err(io)?;
    let is_null = |st: &libc::stat| {
        st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == nix::sys::stat::makedev(1, 3)
    };
    if !is_null(&nst) {
        return Ok(());
    }
    for fd in 0..3 {
        // SAFETY: fds 0..2 are borrowed only for this fstat.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let Ok(st) = sys::fstat(&b) else { continue };
        if is_null(&st) && (st.st_dev, st.st_ino) != (nst.st_dev, nst.st_ino) {
            // SAFETY: dup2 of an fd we own onto a stdio number.
            if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
                return Err(io(std::io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}

pub fn finish(spec: &Spec) -> Result<(), RootfsError> {
    let linux = spec.linux().as_ref();
    let root = Root::open(Path::new("/"))?;
    let masked = linux.and_then(|l| l.masked_paths().as_ref());
    if masked.is_some_and(|m| !m.is_empty()) {
        // Mask with the real /dev/null only (CVE-2025-31133: a swapped /dev/null).
        let null = root.open_no_symlinks(Path::new("/dev/null"), libc::O_PATH)?;
        let st = sys::fstat(&null).map_err(|e| RootfsError::Other {
            what: "/dev/null".into(),
            source: e,
        })?;
        if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != nix::sys::stat::makedev(1, 3)
        {
            return Err(RootfsError::Unsafe(
                "/dev/null in the container is not the null device".into(),
            ));
        }
        for p in masked.into_iter().flatten() {
            let path = Path::new(p);
            let fd = match root.open_no_symlinks(path, libc::O_PATH) {
                Ok(fd) => fd,
                Err(SafePathError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            let st = sys::fstat(&fd).map_err(|e| RootfsError::Other {
                what: p.clone(),
                source: e,
            })?;
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                do_mount(
                    Some(Path::new("tmpfs")),
                    &fd,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None,
                    "mask (tmpfs)",
                    path,
                )?;
            } else {
                do_mount(
                    Some(&sys::fd_path(&null)),
                    &fd,
                    None,
                    MsFlags::MS_BIND,
                    None,
                    "mask (/dev/null)",
                    path,
                )?;
            }
        }
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = Path::new(p);
        let fd = match root.open_no_symlinks(path, libc::O_PATH) {
            Ok(fd) => fd,
            Err(SafePathError::Io { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        };
        do_mount(
            Some(&sys::fd_path(&fd)),
            &fd,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            "readonly bind",
            path,
        )?;
        remount_bind(&root, path, MsFlags::MS_RDONLY | MsFlags::MS_REC)?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        let fd = root.open_in(Path::new("/"), libc::O_PATH)?;
        let keep = locked_flags(&fd);
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | keep,
            None::<&str>,
        )
        .map_err(|e| RootfsError::Mount {
            what: "read-only root".into(),
            dest: "/".into(),
            source: e.into(),
        })?;
    }
    let prop = linux
        .and_then(|l| l.rootfs_propagation().clone())
        .unwrap_or_default();
    if prop.contains("shared") || prop.contains("unbindable") {
        let flag = propagation_flag(&prop).unwrap_or(MsFlags::empty());
        mount(None::<&str>, "/", None::<&str>, flag, None::<&str>)
            .map_err(other("rootfs propagation"))?;
    }
    Ok(())
}

/// Unmount every mount below `rootfs` in the caller's mount namespace, deepest first (the
/// mounts of a container that ran without a mount namespace of its own).
pub fn unmount_under(rootfs: &Path) -> Result<(), RootfsError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| RootfsError::Other {
        what: "/proc/self/mountinfo".into(),
        source: e,
    })?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(rootfs))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        match umount2(&p, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => {
                return Err(RootfsError::Other {
                    what: format!("unmounting {}", p.display()),
                    source: e.into(),
                })
            }
        }
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Set the hostname and domainname (needs the container's uts namespace).
pub fn set_names(spec: &Spec) -> Result<(), RootfsError> {
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).map_err(other(format!("hostname {h:?}")))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        // SAFETY: pointer and length describe the string's bytes.
        let r = unsafe { libc::setdomainname(d.as_ptr() as *const libc::c_char, d.len()) };
        if r < 0 {
            return Err(RootfsError::Other {
                what: format!("domainname {d:?}"),
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn options() {
        let o: Vec<String> = ["nosuid", "ro", "mode=755", "size=1k", "rbind", "rslave"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = parse_options(Path::new("/x"), &o).unwrap();
        assert!(m.flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_RDONLY));
        assert_eq!(m.data, vec!["mode=755", "size=1k"]);
        assert!(m.bind && m.recursive);
        assert_eq!(m.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        let m = parse_options(Path::new("/x"), &["ro".into(), "rw".into()]).unwrap();
        assert!(!m.flags.contains(MsFlags::MS_RDONLY));
        assert!(parse_options(Path::new("/x"), &["idmap".into()]).is_err());
    }

    #[test]
    fn mount_options_checked_before_create() {
        let mut spec = Spec::default();
        assert!(check_mount_options(&spec).is_ok());
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        let mut m = Mount::default();
        m.set_destination(PathBuf::from("/data"));
        m.set_options(Some(vec!["rbind".into(), "ridmap".into()]));
        mounts.push(m);
        spec.set_mounts(Some(mounts));
        let e = check_mount_options(&spec).unwrap_err().to_string();
        assert!(e.contains("ridmap"), "{e}");
    }
}
