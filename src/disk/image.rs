//! The image backend's filesystem: a sparse ext4 image made by `mkfs.ext4` (the one external
//! tool runvz runs), its hard limit, its usage and its growth.
//!
//! The hard limit is not the image's size. ext4's online resize needs CAP_SYS_RESOURCE, which
//! root lacks on hosts like this one, so the filesystem is made with headroom (a sparse file of
//! twice the hard size, at least 512 MiB more) and the hard limit is held by the filesystem's
//! reserved clusters (`/sys/fs/ext4/<dev>/reserved_clusters`): blocks that no writer may take,
//! root and CAP_SYS_RESOURCE included. Raising the limit lowers the reserve, at once and with
//! no tool; past the headroom runvz grows the file and resizes online where it may.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::DiskError;

/// ext4 block size runvz makes images with.
pub const BLOCK: u64 = 4096;
/// The least headroom above the hard limit (for live grow without a resize).
const HEADROOM: u64 = 512 << 20;

/// The apparent size of a new image for a hard limit of `hard_kb` KiB.
pub fn ceiling_bytes(hard_kb: u64) -> u64 {
    let hard = hard_kb.saturating_mul(1024);
    (hard.saturating_mul(2))
        .max(hard.saturating_add(HEADROOM))
        .div_ceil(BLOCK)
        * BLOCK
}

/// The inode count a new image gets: `diskinodes`' hard value, else one per 16 KiB of the
/// hard size (mke2fs's default ratio), at least 64.
pub fn inode_count(hard_kb: u64, inodes: Option<u64>) -> u64 {
    inodes.unwrap_or(hard_kb / 16).max(64)
}

/// `mkfs.ext4` on the host: in PATH or the sbin directories.
pub fn find_mkfs() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
}

/// Make a new image at `tmp` (a sparse file of `size` bytes with an ext4 filesystem of
/// `inodes` inodes). The caller renames it into place, so an image at its final path is always
/// complete.
pub fn make(tmp: &Path, size: u64, inodes: u64) -> Result<(), DiskError> {
    let io = |what: &str, e: io::Error| DiskError::Io {
        what: format!("{what} {}", tmp.display()),
        source: e,
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| io("creating image", e))?;
    f.set_len(size).map_err(|e| io("sizing image", e))?;
    drop(f);
    let mkfs = find_mkfs().ok_or_else(|| DiskError::Unsupported {
        what: format!(
            "making the image {} needs mkfs.ext4 (e2fsprogs), which is not installed",
            tmp.display()
        ),
    })?;
    let mut cmd = Command::new(mkfs);
    cmd.args(["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-N"])
        .arg(inodes.to_string())
        .args([
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            "-L",
            "runvz-disk",
        ])
        .arg(tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the child only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // mkfs dies with a runtime killed mid-create, so it never writes to a removed file.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().map_err(|e| io("running mkfs.ext4 for", e))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let last = msg.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(DiskError::Mkfs {
            image: tmp.to_path_buf(),
            msg: format!("{} {}", out.status, last.trim()),
        });
    }
    Ok(())
}

fn statfs(mnt: &Path) -> io::Result<libc::statfs> {
    let fd = crate::sys::open(mnt, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    // SAFETY: a zeroed statfs is a valid out-buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out-buffer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Used space (KiB) and inodes of the filesystem mounted at `mnt`.
pub fn usage(mnt: &Path) -> io::Result<(u64, u64)> {
    let st = statfs(mnt)?;
    let bs = st.f_bsize as u64;
    let used_kb = (st.f_blocks as u64).saturating_sub(st.f_bfree as u64) * bs / 1024;
    let inodes = (st.f_files as u64).saturating_sub(st.f_ffree as u64);
    Ok((used_kb, inodes))
}

/// The inode count of the filesystem at `mnt`.
pub fn inode_total(mnt: &Path) -> io::Result<u64> {
    Ok(statfs(mnt)?.f_files as u64)
}

fn reserve_file(dev: &str) -> PathBuf {
    Path::new("/sys/fs/ext4")
        .join(dev)
        .join("reserved_clusters")
}

/// The reserve the kernel keeps for itself by default (2%, at most 4096 clusters).
fn min_reserve(blocks: u64) -> u64 {
    (blocks / 50).min(4096)
}

/// Hold the filesystem on loop device `dev`, mounted at `mnt`, to `hard_kb` KiB. Fails with
/// `TooSmall` (and the most it can hold) when the filesystem is too small for it.
pub fn set_hard(dev: &str, mnt: &Path, hard_kb: u64) -> Result<(), DiskError> {
    let st = statfs(mnt).map_err(|e| DiskError::Io {
        what: format!("statfs {}", mnt.display()),
        source: e,
    })?;
    let bs = st.f_bsize as u64;
    let blocks = st.f_blocks as u64;
    let want = (hard_kb.saturating_mul(1024)).div_ceil(bs);
    let floor = min_reserve(blocks);
    if want + floor > blocks {
        return Err(DiskError::TooSmall {
            max_kb: (blocks - floor) * bs / 1024,
        });
    }
    std::fs::write(reserve_file(dev), (blocks - want).to_string()).map_err(|e| DiskError::Io {
        what: format!("setting the hard limit in {}", reserve_file(dev).display()),
        source: e,
    })
}

/// EXT4_IOC_RESIZE_FS = _IOW('f', 16, __u64).
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// Grow the image file and its filesystem online so that it holds `hard_kb` (needs
/// CAP_SYS_RESOURCE, which ext4 demands of online resizes).
pub fn grow(image: &Path, dev: &str, mnt: &Path, hard_kb: u64) -> Result<(), DiskError> {
    if !caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap_or(false)
    {
        return Err(DiskError::Unsupported {
            what: format!(
                "the image {} is too small and growing an ext4 filesystem online needs CAP_SYS_RESOURCE, which runvz does not have here",
                image.display()
            ),
        });
    }
    let size = ceiling_bytes(hard_kb);
    let io = |what: String| move |e: io::Error| DiskError::Io { what, source: e };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(io(format!("opening {}", image.display())))?;
    if f.metadata().map(|m| m.len()).unwrap_or(0) < size {
        f.set_len(size)
            .map_err(io(format!("growing {}", image.display())))?;
    }
    super::loopdev::set_capacity(dev).map_err(io(format!("LOOP_SET_CAPACITY on {dev}")))?;
    let blocks: u64 = size / BLOCK;
    let fd = crate::sys::open(mnt, libc::O_RDONLY | libc::O_DIRECTORY, 0)
        .map_err(io(format!("opening {}", mnt.display())))?;
    // SAFETY: EXT4_IOC_RESIZE_FS reads a u64 block count we own for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), EXT4_IOC_RESIZE_FS, &blocks) } != 0 {
        return Err(io(format!(
            "resizing the filesystem of {}",
            image.display()
        ))(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_has_headroom() {
        assert_eq!(ceiling_bytes(64 * 1024), (64 << 20) + HEADROOM);
        assert_eq!(ceiling_bytes(4 << 20), 8 << 30);
        assert_eq!(ceiling_bytes(1) % BLOCK, 0);
        assert_eq!(inode_count(1 << 20, None), 65536);
        assert_eq!(inode_count(1 << 20, Some(1000)), 1000);
    }
}
