//! Per-container disk quotas (`io.runvz.diskspace`, `diskinodes`, `disk.*`; spec "Disk"):
//! the `image` backend (a sparse ext4 image on a loop device, the writable layer of an overlay
//! over the bundle's rootfs) and the `btrfs` backend (a qgroup limit on the rootfs subvolume).
//!
//! Crash safety follows the state store's rule: `Plan::intent` is recorded before anything is
//! made, `setup` reports every step before taking it (the image's temporary name, the loop
//! device), and `teardown` undoes whatever of it exists, any number of times.

mod btrfs;
mod image;
mod loopdev;
mod overlay;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ub::usage::Usage;
use crate::ub::{self, DiskBackend, Limit, Param, UNLIMITED};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("annotation {key}: {problem}")]
    Config { key: &'static str, problem: String },
    #[error("disk quota: {what}")]
    Unsupported { what: String },
    #[error("disk image {}: in use by {dev} (a container that uses it still exists: delete it first)", image.display())]
    InUse { image: PathBuf, dev: String },
    #[error("mkfs.ext4 for disk image {}: {msg}", image.display())]
    Mkfs { image: PathBuf, msg: String },
    #[error("disk image holds at most {max_kb} KiB")]
    TooSmall { max_kb: u64 },
    #[error("disk quota: {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn config(key: &'static str, problem: impl Into<String>) -> DiskError {
    DiskError::Config {
        key,
        problem: problem.into(),
    }
}

const SPACE: &str = "io.runvz.diskspace";
const INODES: &str = "io.runvz.diskinodes";
const BACKEND: &str = "io.runvz.disk.backend";
/// The image's name in the bundle directory when `io.runvz.disk.image` is not given.
pub const DEFAULT_IMAGE: &str = "runvz-disk.img";
/// The smallest hard limit: room for the overlay's directories and a little more.
const MIN_HARD_KB: u64 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Btrfs,
    Image,
}

/// What the disk annotations ask for, checked against this host: made by `Plan::new` at
/// create before anything exists.
#[derive(Clone, Debug)]
pub struct Plan {
    pub backend: Backend,
    pub space: Limit,
    pub inodes: Option<Limit>,
    /// The image (image backend) or the subvolume (btrfs).
    pub path: PathBuf,
    pub ephemeral: bool,
    pub lower: PathBuf,
}

impl Plan {
    /// Check the disk annotations against the bundle and the host; None when there are none.
    pub fn new(d: &ub::Disk, bundle: &Path, rootfs: &Path) -> Result<Option<Plan>, DiskError> {
        if d.is_empty() {
            return Ok(None);
        }
        let space = d.space.ok_or_else(|| {
            config(
                SPACE,
                "missing: io.runvz.diskinodes and io.runvz.disk.* need a diskspace limit",
            )
        })?;
        if space.limit == UNLIMITED {
            return Err(config(
                SPACE,
                "the hard limit must be a size, not unlimited",
            ));
        }
        if space.limit < MIN_HARD_KB {
            return Err(config(
                SPACE,
                format!(
                    "hard limit {} KiB is below the minimum of {MIN_HARD_KB} KiB",
                    space.limit
                ),
            ));
        }
        let inodes = d.inodes.filter(|l| l.limit != UNLIMITED);
        let image_only = inodes.is_some() || d.image.is_some() || d.ephemeral.is_some();
        let backend = match d.backend.unwrap_or_default() {
            DiskBackend::Auto if !image_only && btrfs::is_subvolume(rootfs) => Backend::Btrfs,
            DiskBackend::Auto | DiskBackend::Image => Backend::Image,
            DiskBackend::Btrfs if !btrfs::is_subvolume(rootfs) => {
                return Err(config(
                    BACKEND,
                    format!("btrfs: the rootfs {} is not a btrfs subvolume", rootfs.display()),
                ))
            }
            DiskBackend::Btrfs if inodes.is_some() => {
                return Err(config(
                    INODES,
                    "the btrfs backend cannot limit inodes (qgroups count bytes only); use io.runvz.disk.backend=image",
                ))
            }
            DiskBackend::Btrfs if image_only => {
                return Err(config(
                    BACKEND,
                    "btrfs: io.runvz.disk.image and io.runvz.disk.ephemeral belong to the image backend",
                ))
            }
            DiskBackend::Btrfs => Backend::Btrfs,
        };
        let path = match backend {
            Backend::Btrfs => rootfs.to_path_buf(),
            Backend::Image => {
                let p = match &d.image {
                    Some(p) if p.is_absolute() => p.clone(),
                    Some(p) => bundle.join(p),
                    None => bundle.join(DEFAULT_IMAGE),
                };
                check_image_host(&p)?;
                p
            }
        };
        Ok(Some(Plan {
            backend,
            space,
            inodes,
            path,
            ephemeral: d.ephemeral.unwrap_or(false),
            lower: rootfs.to_path_buf(),
        }))
    }

    /// What is about to be made, to record before making it. `dir` is the runtime-owned
    /// directory (in the container's state directory) that holds the mount points.
    pub fn intent(&self, dir: &Path) -> Result<Made, DiskError> {
        let fresh = self.backend == Backend::Image && !self.path.exists();
        // Absolute: `delete` may run from another directory than `create`.
        let dir = std::path::absolute(dir).map_err(io_err(format!("path {}", dir.display())))?;
        Ok(Made {
            backend: self.backend,
            path: self.path.clone(),
            dir,
            image_tmp: fresh.then(|| tmp_name(&self.path)),
            fresh,
            ephemeral: self.ephemeral,
            loop_dev: None,
            image_id: None,
            subvol: None,
        })
    }
}

fn tmp_name(image: &Path) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    image.with_file_name(format!(".{name}.{}.runvz-tmp", std::process::id()))
}

/// What the image backend needs from the host, checked before anything is made.
fn check_image_host(image: &Path) -> Result<(), DiskError> {
    const KEY: &str = "io.runvz.disk.image";
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for need in ["ext4", "overlay"] {
        if !fs
            .lines()
            .any(|l| l.split_whitespace().last() == Some(need))
        {
            return Err(DiskError::Unsupported {
                what: format!("the image backend needs {need}, which this kernel does not offer"),
            });
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err(DiskError::Unsupported {
            what: "the image backend needs loop devices (/dev/loop-control is missing)".into(),
        });
    }
    match std::fs::metadata(image) {
        Ok(m) if !m.is_file() => Err(config(
            KEY,
            format!("{} exists and is not a regular file", image.display()),
        )),
        Ok(_) => Ok(()),
        Err(_) => {
            let parent = image.parent().unwrap_or(Path::new("/"));
            if !parent.is_dir() {
                return Err(config(
                    KEY,
                    format!(
                        "{}: directory {} does not exist",
                        image.display(),
                        parent.display()
                    ),
                ));
            }
            if image::find_mkfs().is_none() {
                return Err(DiskError::Unsupported {
                    what: format!(
                        "making the image {} needs mkfs.ext4 (e2fsprogs), which is not installed",
                        image.display()
                    ),
                });
            }
            Ok(())
        }
    }
}

/// What exists (or may exist) of a container's disk setup: recorded in its state before each
/// step is taken, read back by `teardown`, `usage` and `resize`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Made {
    pub backend: Backend,
    /// The image file, or the btrfs subvolume.
    pub path: PathBuf,
    /// Holds the mount points (image backend).
    pub dir: PathBuf,
    /// An image being made under this name (removed by teardown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_tmp: Option<PathBuf>,
    /// This create makes the image: a failed create removes it.
    #[serde(default)]
    pub fresh: bool,
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_dev: Option<String>,
    /// Device and inode of the image this create made (to tell it from one made by another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<(u64, u64)>,
    /// The btrfs subvolume id whose qgroup holds the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subvol: Option<u64>,
}

impl Made {
    pub fn from_record(v: Option<&serde_json::Value>) -> Option<Made> {
        v.and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    pub fn to_record(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }
}

/// (device, inode) of the file at `p`.
fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> DiskError {
    move |source| DiskError::Io { what, source }
}

/// Make the disk setup of `plan`; `record` is called with what is about to exist before each
/// step. Returns the path the container uses as its root.
pub fn setup(
    plan: &Plan,
    made: &mut Made,
    record: &mut dyn FnMut(&Made) -> Result<(), String>,
) -> Result<PathBuf, DiskError> {
    let rec = |m: &Made, record: &mut dyn FnMut(&Made) -> Result<(), String>| {
        record(m).map_err(|e| DiskError::Io {
            what: "recording the disk setup".into(),
            source: std::io::Error::other(e),
        })
    };
    match plan.backend {
        Backend::Btrfs => {
            let id = btrfs::subvol_id(&plan.path)
                .map_err(io_err(format!("subvolume id of {}", plan.path.display())))?;
            made.subvol = Some(id);
            rec(made, record)?;
            if !btrfs::quota_enabled(&plan.path) {
                btrfs::enable_quota(&plan.path).map_err(io_err(format!(
                    "enabling btrfs quotas on {}",
                    plan.path.display()
                )))?;
            }
            btrfs::set_limit(&plan.path, id, Some(plan.space.limit.saturating_mul(1024)))
                .map_err(io_err(format!("qgroup limit on 0/{id}")))?;
            Ok(plan.path.clone())
        }
        Backend::Image => setup_image(plan, made, &mut |m| rec(m, record)),
    }
}

fn setup_image(
    plan: &Plan,
    made: &mut Made,
    rec: &mut dyn FnMut(&Made) -> Result<(), DiskError>,
) -> Result<PathBuf, DiskError> {
    let image = &plan.path;
    if let Some(tmp) = made.image_tmp.clone() {
        image::make(
            &tmp,
            image::ceiling_bytes(plan.space.limit),
            image::inode_count(plan.space.limit, plan.inodes.map(|l| l.limit)),
        )?;
        // Record which file is ours before it takes the image's name: a teardown after a
        // crash at any later point recognises it by device and inode.
        made.image_id = file_id(&tmp);
        rec(made)?;
        match crate::sys::rename_noreplace(&tmp, image) {
            Ok(()) => {}
            // Another create made it meanwhile: use that one (the in-use check follows).
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&tmp);
                made.fresh = false;
                made.image_id = None;
            }
            Err(e) => return Err(io_err(format!("renaming {}", tmp.display()))(e)),
        }
        made.image_tmp = None;
        rec(made)?;
    }
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .map_err(io_err(format!("opening {}", image.display())))
    };
    // Serialise with other creates of the same image between the in-use check and the mount.
    // The lock sits on an open file of its own: the loop device keeps the file it is given.
    let _lock = lock(open()?, image)?;
    if let Some(dev) = loopdev::users_of(image).into_iter().next() {
        return Err(DiskError::InUse {
            image: image.clone(),
            dev,
        });
    }
    let fd = std::os::fd::OwnedFd::from(open()?);
    let lo = loopdev::attach(&fd, image).map_err(io_err(format!(
        "attaching {} to a loop device",
        image.display()
    )))?;
    made.loop_dev = Some(lo.name.clone());
    rec(made)?;
    let mnt = overlay::mount_image(&lo.path(), &made.dir)?;
    // The mount holds the device now; at its unmount autoclear detaches it.
    drop(lo);
    match image::set_hard(
        made.loop_dev.as_deref().unwrap_or_default(),
        &mnt,
        plan.space.limit,
    ) {
        Err(DiskError::TooSmall { max_kb }) => {
            return Err(config(
                SPACE,
                format!(
                    "the existing image {} holds at most {max_kb} KiB, below the hard limit {} KiB",
                    image.display(),
                    plan.space.limit
                ),
            ))
        }
        other => other?,
    }
    if let (Some(l), false) = (plan.inodes, made.fresh) {
        let have = image::inode_total(&mnt).unwrap_or(l.limit);
        if have.abs_diff(l.limit) > l.limit / 20 + 64 {
            tracing::warn!(
                "disk image {}: it has {have} inodes (fixed when it was made), not the {} of {INODES}",
                image.display(),
                l.limit
            );
        }
    }
    overlay::mount_root(&plan.lower, &made.dir)
}

/// An exclusive flock on `f`, waited for at most 30 s.
fn lock(f: std::fs::File, image: &Path) -> Result<std::fs::File, DiskError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) || std::time::Instant::now() > deadline {
            return Err(io_err(format!("locking {}", image.display()))(e));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Undo what `made` records, in any state and any number of times. `failed_create`: the create
/// that made it failed, so an image it made itself goes too.
pub fn teardown(made: &Made, failed_create: bool) -> Result<(), DiskError> {
    match made.backend {
        Backend::Btrfs => {
            if let Some(id) = made.subvol {
                match btrfs::set_limit(&made.path, id, None) {
                    Ok(()) => {}
                    // The subvolume or its filesystem is gone: nothing holds a limit.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTTY)) => {}
                    Err(e) => {
                        return Err(io_err(format!("clearing the qgroup limit of 0/{id}"))(e))
                    }
                }
            }
            Ok(())
        }
        Backend::Image => teardown_image(made, failed_create),
    }
}

fn teardown_image(made: &Made, failed_create: bool) -> Result<(), DiskError> {
    let unmount = |p: &Path| {
        crate::rootfs::unmount_under(p).map_err(|e| DiskError::Io {
            what: format!("unmounting {}", p.display()),
            source: std::io::Error::other(e.to_string()),
        })
    };
    // Mount points are listed with symlinks resolved; a directory that is gone holds none.
    let dir = std::fs::canonicalize(&made.dir).unwrap_or_else(|_| made.dir.clone());
    let (root, mnt) = (overlay::root_mnt(&dir), overlay::image_mnt(&dir));
    unmount(&root)?;
    unmount(&mnt)?;
    if let Some(dev) = &made.loop_dev {
        loopdev::detach_if_backing(dev, &made.path);
        // Autoclear may finish just after the unmount: wait for it, briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while loopdev::backing_file(dev).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    if let Some(tmp) = &made.image_tmp {
        let _ = std::fs::remove_file(tmp);
    }
    // The image is this container's only when it attached it or made it (a create refused
    // because another container uses the image must not remove it, ephemeral or not).
    let made_it = made.image_id.is_some() && file_id(&made.path) == made.image_id;
    let ours = made.loop_dev.is_some() || made_it;
    if ours && (made.ephemeral || (failed_create && made_it)) {
        match std::fs::remove_file(&made.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(format!("removing {}", made.path.display()))(e))
            }
            _ => {}
        }
    }
    // Only empty directories: something still mounted there makes this fail, and then the
    // state directory (removed recursively after this) is kept.
    for d in [&root, &mnt, &dir] {
        match std::fs::remove_dir(d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(format!("removing {}", d.display()))(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Held/maxheld/failcnt of the diskspace (KiB) and diskinodes rows.
pub fn usage(made: &Made) -> HashMap<Param, Usage> {
    let mut out = HashMap::new();
    let (space, inodes) = match made.backend {
        Backend::Image => image::usage(&overlay::image_mnt(&made.dir)).unwrap_or((0, 0)),
        Backend::Btrfs => (
            made.subvol
                .and_then(|id| btrfs::referenced(&made.path, id).ok())
                .map(|b| b / 1024)
                .unwrap_or(0),
            0,
        ),
    };
    for (p, held) in [(Param::Diskspace, space), (Param::Diskinodes, inodes)] {
        out.insert(
            p,
            Usage {
                held,
                maxheld: None,
                failcnt: 0,
            },
        );
    }
    out
}

/// Change the limits of a live container (`set --diskspace`): the image's hard limit moves at
/// once (grown online past its size where the kernel lets runvz), the qgroup limit is reset.
/// `inodes` is given only when its hard value changes.
pub fn resize(made: &Made, space: Option<Limit>, inodes: Option<Limit>) -> Result<(), DiskError> {
    match made.backend {
        Backend::Btrfs => {
            if inodes.is_some_and(|l| l.limit != UNLIMITED) {
                return Err(config(INODES, "the btrfs backend cannot limit inodes"));
            }
            if let (Some(l), Some(id)) = (space, made.subvol) {
                let bytes = (l.limit != UNLIMITED).then(|| l.limit.saturating_mul(1024));
                btrfs::set_limit(&made.path, id, bytes)
                    .map_err(io_err(format!("qgroup limit on 0/{id}")))?;
            }
            Ok(())
        }
        Backend::Image => {
            let mnt = overlay::image_mnt(&made.dir);
            if inodes.is_some() {
                return Err(config(
                    INODES,
                    "an image's inode count is fixed when it is made; it cannot change",
                ));
            }
            let Some(l) = space else { return Ok(()) };
            if l.limit == UNLIMITED {
                return Err(config(
                    SPACE,
                    "the hard limit must be a size, not unlimited",
                ));
            }
            let dev = made
                .loop_dev
                .as_deref()
                .ok_or_else(|| DiskError::Unsupported {
                    what: "the container's image has no loop device recorded".into(),
                })?;
            match image::set_hard(dev, &mnt, l.limit) {
                Err(DiskError::TooSmall { .. }) => {
                    image::grow(&made.path, dev, &mnt, l.limit)?;
                    image::set_hard(dev, &mnt, l.limit)
                }
                other => other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(kv: &[(&str, &str)]) -> ub::Disk {
        let mut st = ub::Settings::default();
        for (k, v) in kv {
            ub::set_one(&mut st, k, v).unwrap();
        }
        st.disk
    }

    fn err(d: &ub::Disk) -> String {
        let dir = std::env::temp_dir();
        Plan::new(d, &dir, &dir).unwrap_err().to_string()
    }

    #[test]
    fn plans_are_checked_before_anything_is_made() {
        let dir = std::env::temp_dir();
        assert!(Plan::new(&ub::Disk::default(), &dir, &dir)
            .unwrap()
            .is_none());
        assert!(err(&disk(&[("diskinodes", "10")])).contains(SPACE));
        assert!(err(&disk(&[("diskspace", "unlimited")])).contains("not unlimited"));
        assert!(err(&disk(&[("diskspace", "512")])).contains("below the minimum"));
        let e = err(&disk(&[("diskspace", "1G"), ("disk.backend", "btrfs")]));
        assert!(
            e.contains(BACKEND) && e.contains("not a btrfs subvolume"),
            "{e}"
        );
        let e = err(&disk(&[
            ("diskspace", "1G"),
            ("disk.image", "no/such/dir/x.img"),
        ]));
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn image_path_defaults_into_the_bundle_and_intent_is_absolute() {
        let dir = std::env::temp_dir();
        let d = disk(&[("diskspace", "1G:2G"), ("disk.image", "c1.img")]);
        let Ok(Some(p)) = Plan::new(&d, &dir, &dir) else {
            return; // a host without ext4/overlay/loop: covered by the error above
        };
        assert_eq!(p.backend, Backend::Image);
        assert_eq!(p.path, dir.join("c1.img"));
        assert_eq!(p.space.limit, 2 << 20);
        let m = p.intent(Path::new("rel/disk")).unwrap();
        assert!(m.dir.is_absolute() && m.fresh && m.image_tmp.is_some());
        let back = Made::from_record(m.to_record().as_ref()).unwrap();
        assert_eq!(back, m);
    }
}
