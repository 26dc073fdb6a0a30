//! The container's root with the image backend: the image's filesystem mounted at a private
//! runtime-owned point, and an overlay whose lower layer is the bundle's rootfs (shared,
//! never written) and whose upper layer lives on the image.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::DiskError;

/// Where the image's filesystem is mounted, under the container's disk directory.
pub fn image_mnt(dir: &Path) -> PathBuf {
    dir.join("image")
}

/// The overlay the container uses as its root.
pub fn root_mnt(dir: &Path) -> PathBuf {
    dir.join("root")
}

fn mkdir(p: &Path, mode: u32) -> Result<(), DiskError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(mode).create(p) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(DiskError::Io {
            what: format!("mkdir {}", p.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Mount the ext4 filesystem on `dev` at the disk directory's image point.
pub fn mount_image(dev: &Path, dir: &Path) -> Result<PathBuf, DiskError> {
    mkdir(dir, 0o700)?;
    let mnt = image_mnt(dir);
    mkdir(&mnt, 0o700)?;
    mount(
        Some(dev),
        &mnt,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| DiskError::Io {
        what: format!("mounting {} on {}", dev.display(), mnt.display()),
        source: e.into(),
    })?;
    Ok(mnt)
}

/// Escape a path for overlay's option string (`\`, `,` and `:` are special there).
fn escape(p: &Path) -> String {
    let mut s = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, '\\' | ',' | ':') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// Mount the overlay (lower: `lower`, upper and work dirs on the image) and return its path.
pub fn mount_root(lower: &Path, dir: &Path) -> Result<PathBuf, DiskError> {
    let img = image_mnt(dir);
    let (upper, work) = (img.join("upper"), img.join("work"));
    mkdir(&upper, 0o755)?;
    mkdir(&work, 0o700)?;
    let root = root_mnt(dir);
    mkdir(&root, 0o755)?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        escape(lower),
        escape(&upper),
        escape(&work)
    );
    mount(
        Some("runvz-disk"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| DiskError::Io {
        what: format!(
            "mounting the overlay over {} at {}",
            lower.display(),
            root.display()
        ),
        source: e.into(),
    })?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_escaping() {
        assert_eq!(escape(Path::new("/a,b:c\\d")), "/a\\,b\\:c\\\\d");
    }
}
