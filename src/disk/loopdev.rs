//! Loop devices through their ioctls (no losetup): a free device from `/dev/loop-control`,
//! the image attached with `LOOP_CONFIGURE` (or `LOOP_SET_FD` + `LOOP_SET_STATUS64` on kernels
//! without it) with direct I/O and `LO_FLAGS_AUTOCLEAR`, so the device frees itself when its last user — the
//! mounted filesystem, or this process if it dies before mounting — lets go.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::sys;

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// Direct I/O to the backing file: no second copy of the data in the host's page cache (the
/// kernel falls back to buffered I/O where the file's filesystem cannot do it).
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn info_for(image: &Path) -> LoopInfo64 {
    // SAFETY: LoopInfo64 is plain old data; all-zero is its "nothing set" value.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    info.flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
    let name = image.as_os_str().as_encoded_bytes();
    let n = name.len().min(63);
    info.file_name[..n].copy_from_slice(&name[..n]);
    info
}

/// An attached loop device; the fd keeps it alive until the filesystem on it is mounted.
pub struct Attached {
    pub name: String,
    _fd: OwnedFd,
}

impl Attached {
    pub fn path(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }
}

/// Attach `image` (an open read-write fd) to a free loop device with autoclear.
pub fn attach(image: &OwnedFd, image_path: &Path) -> io::Result<Attached> {
    let ctl = sys::open(Path::new("/dev/loop-control"), libc::O_RDWR, 0)?;
    // Another process may take the device between GET_FREE and CONFIGURE: try again.
    let mut last = io::Error::from_raw_os_error(libc::EBUSY);
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let name = format!("loop{n}");
        let dev = sys::open(
            &Path::new("/dev").join(&name),
            libc::O_RDWR | libc::O_CLOEXEC,
            0,
        )?;
        let cfg = LoopConfig {
            fd: image.as_raw_fd() as u32,
            block_size: 0,
            info: info_for(image_path),
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads a struct loop_config we own for the call.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg) };
        if r == 0 {
            return Ok(Attached { name, _fd: dev });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EBUSY) => last = e,
            Some(libc::EINVAL) | Some(libc::ENOTTY) => {
                return attach_old(dev, name, image, image_path)
            }
            _ => return Err(e),
        }
    }
    Err(last)
}

/// Kernels before 5.8: LOOP_SET_FD, then the flags with LOOP_SET_STATUS64.
fn attach_old(
    dev: OwnedFd,
    name: String,
    image: &OwnedFd,
    image_path: &Path,
) -> io::Result<Attached> {
    // SAFETY: LOOP_SET_FD takes the backing file's fd as its argument.
    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD, image.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let info = info_for(image_path);
    // SAFETY: LOOP_SET_STATUS64 reads a struct loop_info64 we own for the call.
    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_STATUS64, &info) } != 0 {
        let e = io::Error::last_os_error();
        // SAFETY: LOOP_CLR_FD takes no argument.
        unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD, 0) };
        return Err(e);
    }
    Ok(Attached { name, _fd: dev })
}

/// The file backing loop device `name`, if it is attached.
pub fn backing_file(name: &str) -> Option<PathBuf> {
    let s = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(s.trim_end_matches('\n')))
}

/// The loop devices backed by `image` (compared by canonical path).
pub fn users_of(image: &Path) -> Vec<String> {
    let Ok(canon) = std::fs::canonicalize(image) else {
        return vec![];
    };
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return vec![];
    };
    let mut out: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("loop"))
        .filter(|n| backing_file(n).is_some_and(|b| b == canon))
        .collect();
    out.sort();
    out
}

/// Detach `name` if it is still backed by `image` (with autoclear set this only hurries what
/// the kernel does at the last close; a device in use is marked to clear itself later).
pub fn detach_if_backing(name: &str, image: &Path) {
    let Ok(canon) = std::fs::canonicalize(image) else {
        return;
    };
    if backing_file(name).is_some_and(|b| b == canon) {
        if let Ok(dev) = sys::open(&Path::new("/dev").join(name), libc::O_RDONLY, 0) {
            // SAFETY: LOOP_CLR_FD takes no argument.
            unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD, 0) };
        }
    }
}

/// Tell loop device `name` that its backing file grew.
pub fn set_capacity(name: &str) -> io::Result<()> {
    let dev = sys::open(&Path::new("/dev").join(name), libc::O_RDONLY, 0)?;
    // SAFETY: LOOP_SET_CAPACITY takes no argument.
    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_CAPACITY, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
