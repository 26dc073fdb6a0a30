//! The btrfs backend: the rootfs is a btrfs subvolume, and its level-0 qgroup (`0/<subvolid>`)
//! gets the hard limit on referenced bytes (BTRFS_IOC_QGROUP_LIMIT; quotas are enabled first
//! when the filesystem has none). Usage is the qgroup's `referenced` in sysfs. btrfs counts
//! bytes only: it has no inode limit.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::sys;

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// The inode number of every subvolume's root directory.
const FIRST_FREE_OBJECTID: u64 = 256;

// _IOWR/_IOR(0x94, nr, struct): direction << 30 | size << 16 | 0x94 << 8 | nr.
const fn ioc(dir: u64, nr: u64, size: usize) -> libc::c_ulong {
    ((dir << 30) | ((size as u64) << 16) | (0x94 << 8) | nr) as libc::c_ulong
}
const RW: u64 = 3;
const R: u64 = 2;
const NONE: u64 = 0;

#[repr(C)]
struct InoLookup {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

#[repr(C)]
struct QuotaCtl {
    cmd: u64,
    status: u64,
}

#[repr(C)]
struct QgroupLimit {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

#[repr(C)]
struct FsInfo {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    rest: [u8; 1024 - 32],
}

const IOC_INO_LOOKUP: libc::c_ulong = ioc(RW, 18, std::mem::size_of::<InoLookup>());
const IOC_FS_INFO: libc::c_ulong = ioc(R, 31, std::mem::size_of::<FsInfo>());
const IOC_QUOTA_CTL: libc::c_ulong = ioc(RW, 40, std::mem::size_of::<QuotaCtl>());
const IOC_QGROUP_LIMIT: libc::c_ulong = ioc(R, 43, std::mem::size_of::<QgroupLimit>());
const IOC_QUOTA_RESCAN_WAIT: libc::c_ulong = ioc(NONE, 46, 0);
const QUOTA_CTL_ENABLE: u64 = 1;
const LIMIT_MAX_RFER: u64 = 1;
/// max_rfer value that removes the limit.
const CLEAR: u64 = u64::MAX;

fn open_dir(p: &Path) -> io::Result<OwnedFd> {
    sys::open(p, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)
}

/// Whether `p` is the root of a btrfs subvolume.
pub fn is_subvolume(p: &Path) -> bool {
    let Ok(fd) = open_dir(p) else { return false };
    // SAFETY: a zeroed statfs is a valid out-buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out-buffer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    st.f_type as i64 == BTRFS_SUPER_MAGIC
        && sys::fstat(&fd).is_ok_and(|s| s.st_ino == FIRST_FREE_OBJECTID)
}

/// The subvolume id of the subvolume whose root is `p`.
pub fn subvol_id(p: &Path) -> io::Result<u64> {
    let fd = open_dir(p)?;
    let mut a = InoLookup {
        treeid: 0,
        objectid: FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    // SAFETY: BTRFS_IOC_INO_LOOKUP reads and writes the struct we own for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), IOC_INO_LOOKUP, &mut a) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(a.treeid)
}

/// The sysfs directory of the filesystem holding `p` (/sys/fs/btrfs/<fsid>).
fn sysfs_dir(p: &Path) -> io::Result<PathBuf> {
    let fd = open_dir(p)?;
    let mut a = FsInfo {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        rest: [0; 1024 - 32],
    };
    // SAFETY: BTRFS_IOC_FS_INFO fills the struct we own for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), IOC_FS_INFO, &mut a) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let h: String = a.fsid.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    Ok(Path::new("/sys/fs/btrfs").join(uuid))
}

fn qgroup_dir(p: &Path, id: u64) -> io::Result<PathBuf> {
    Ok(sysfs_dir(p)?.join("qgroups").join(format!("0_{id}")))
}

/// Whether quotas are on for the filesystem holding `p`.
pub fn quota_enabled(p: &Path) -> bool {
    sysfs_dir(p).is_ok_and(|d| d.join("qgroups").is_dir())
}

/// Turn quotas on for the filesystem holding `p` and wait for the first scan.
pub fn enable_quota(p: &Path) -> io::Result<()> {
    let fd = open_dir(p)?;
    let mut a = QuotaCtl {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: BTRFS_IOC_QUOTA_CTL reads and writes the struct we own for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), IOC_QUOTA_CTL, &mut a) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: BTRFS_IOC_QUOTA_RESCAN_WAIT takes no argument.
    unsafe { libc::ioctl(fd.as_raw_fd(), IOC_QUOTA_RESCAN_WAIT, 0) };
    Ok(())
}

/// Set (Some) or clear (None) the referenced-bytes limit of subvolume `id` under `p`.
/// The ioctl's transaction is charged to the subvolume it is called on, so it is called on the
/// parent directory when that is on the same filesystem: on a subvolume over its limit the
/// change (even one raising the limit) would fail with EDQUOT.
pub fn set_limit(p: &Path, id: u64, bytes: Option<u64>) -> io::Result<()> {
    let on = match p.parent() {
        Some(parent) if sysfs_dir(parent).ok() == sysfs_dir(p).ok() => parent,
        _ => p,
    };
    let fd = open_dir(on)?;
    let a = QgroupLimit {
        qgroupid: id,
        flags: LIMIT_MAX_RFER,
        max_rfer: bytes.unwrap_or(CLEAR),
        max_excl: 0,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    // SAFETY: BTRFS_IOC_QGROUP_LIMIT reads the struct we own for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), IOC_QGROUP_LIMIT, &a) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes referenced by subvolume `id`'s qgroup.
pub fn referenced(p: &Path, id: u64) -> io::Result<u64> {
    let s = std::fs::read_to_string(qgroup_dir(p, id)?.join("referenced"))?;
    s.trim()
        .parse()
        .map_err(|_| io::Error::other("unreadable qgroup counter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(IOC_INO_LOOKUP, 0xd000_9412);
        assert_eq!(IOC_FS_INFO, 0x8400_941f);
        assert_eq!(IOC_QUOTA_CTL, 0xc010_9428);
        assert_eq!(IOC_QGROUP_LIMIT, 0x8030_942b);
        assert_eq!(IOC_QUOTA_RESCAN_WAIT, 0x942e);
    }
}
