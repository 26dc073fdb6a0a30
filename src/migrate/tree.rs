//! Directory trees (a rootfs, a checkpoint image) sent as tar streams: all of a tree, or only
//! what changed since a moment (the second pass of a rootfs copy, while the container is
//! frozen), and on the other side unpacked inside a directory and pruned to a path list.
//! Symlinks are sent as symlinks and never followed, on either side.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::MigrateError;

/// What a send carried.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub entries: u64,
    pub bytes: u64,
}

fn tree_err(p: &Path, e: impl std::fmt::Display) -> MigrateError {
    MigrateError::Tree(format!("{}: {e}", p.display()))
}

/// Every entry below `root` (relative paths, parents before children), without following
/// symlinks and without crossing into other filesystems mounted below it.
pub fn walk(root: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>, MigrateError> {
    let dev = std::fs::symlink_metadata(root)
        .map_err(|e| tree_err(root, e))?
        .dev();
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| tree_err(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            let full = root.join(&r);
            let Ok(m) = std::fs::symlink_metadata(&full) else {
                continue; // gone meanwhile
            };
            if m.file_type().is_socket() {
                continue;
            }
            let descend = m.is_dir() && m.dev() == dev;
            out.push((r.clone(), m));
            if descend {
                todo.push(r);
            }
        }
    }
    Ok(out)
}

/// What a second pass must send again: entries changed at or after `since` (ctime or mtime,
/// seconds since the epoch), and entries at paths the first pass did not have (below a
/// renamed directory, a file keeps its old ctime).
pub struct Changes<'a> {
    pub since: i64,
    pub first_pass: &'a HashSet<PathBuf>,
}

impl Changes<'_> {
    fn wants(&self, rel: &Path, m: &std::fs::Metadata) -> bool {
        m.ctime() >= self.since || m.mtime() >= self.since || !self.first_pass.contains(rel)
    }
}

/// Sends the entries of `root` (all of them, or only the `changes`) as a tar stream into `w`.
pub fn send<W: Write>(
    w: W,
    root: &Path,
    entries: &[(PathBuf, std::fs::Metadata)],
    changes: Option<&Changes>,
) -> Result<Sent, MigrateError> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    let mut sent = Sent::default();
    for (rel, m) in entries {
        if changes.is_some_and(|c| !c.wants(rel, m)) {
            continue;
        }
        let full = root.join(rel);
        match b.append_path_with_name(&full, rel) {
            Ok(()) => {
                sent.entries += 1;
                if m.is_file() {
                    sent.bytes += m.len();
                }
            }
            // Removed between the walk and now: the path list of the last pass says so.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(tree_err(&full, e)),
        }
    }
    b.into_inner().map_err(|e| tree_err(root, e))?;
    Ok(sent)
}

/// Unpacks a tar stream inside `dir` (entries that would land outside it are refused by the
/// tar reader), keeping modes, owners and times.
pub fn receive<R: Read>(r: R, dir: &Path) -> Result<(), MigrateError> {
    std::fs::create_dir_all(dir).map_err(|e| tree_err(dir, e))?;
    let mut a = tar::Archive::new(r);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_preserve_mtime(true);
    a.set_overwrite(true);
    a.unpack(dir).map_err(|e| tree_err(dir, e))
}

/// Removes what is below `dir` but not in `keep` (relative paths), without following symlinks.
pub fn prune(dir: &Path, keep: &HashSet<PathBuf>) -> Result<u64, MigrateError> {
    let mut removed = 0;
    for (rel, m) in walk(dir)? {
        if keep.contains(&rel) {
            continue;
        }
        let full = dir.join(&rel);
        let r = if m.is_dir() {
            std::fs::remove_dir_all(&full)
        } else {
            std::fs::remove_file(&full)
        };
        match r {
            Ok(()) => removed += 1,
            // Inside a directory removed just before.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(tree_err(&full, e)),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(root: &Path, changes: Option<&Changes>) -> Vec<u8> {
        let mut buf = Vec::new();
        send(&mut buf, root, &walk(root).unwrap(), changes).unwrap();
        buf
    }

    fn paths(root: &Path) -> HashSet<PathBuf> {
        walk(root).unwrap().into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn full_copy_keeps_files_symlinks_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("a/b")).unwrap();
        std::fs::write(s.join("a/b/f"), "data").unwrap();
        std::fs::set_permissions(s.join("a/b/f"), std::fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", s.join("abs")).unwrap();
        std::os::unix::fs::symlink("../..", s.join("a/up")).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let d = dst.path().join("root");
        receive(&pack(s, None)[..], &d).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("a/b/f")).unwrap(), "data");
        let mode = std::fs::metadata(d.join("a/b/f")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o751);
        assert_eq!(
            std::fs::read_link(d.join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            std::fs::read_link(d.join("a/up")).unwrap(),
            Path::new("../..")
        );
    }

    #[test]
    fn incremental_pass_and_prune() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::write(s.join("old"), "1").unwrap();
        std::fs::write(s.join("gone"), "1").unwrap();
        std::fs::create_dir_all(s.join("dir/sub")).unwrap();
        std::fs::write(s.join("dir/sub/f"), "in a dir").unwrap();
        let dst = tempfile::tempdir().unwrap();
        let d = dst.path();
        receive(&pack(s, None)[..], d).unwrap();
        let first = paths(s);
        std::fs::remove_file(s.join("gone")).unwrap();
        std::fs::write(s.join("new"), "2").unwrap();
        std::fs::rename(s.join("dir"), s.join("moved")).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        // Nothing changed after an hour from now, but the paths the first pass lacked: the
        // renamed directory and what is below it (its files keep their ctime), and "new".
        let later = Changes {
            since: now + 3600,
            first_pass: &first,
        };
        let data = pack(s, Some(&later));
        let mut a = tar::Archive::new(&data[..]);
        let mut names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["moved", "moved/sub", "moved/sub/f", "new"]);
        receive(&data[..], d).unwrap();
        assert_eq!(prune(d, &paths(s)).unwrap(), 2, "gone and dir");
        assert!(!d.join("gone").exists());
        assert!(!d.join("dir").exists());
        assert_eq!(std::fs::read_to_string(d.join("new")).unwrap(), "2");
        assert_eq!(
            std::fs::read_to_string(d.join("moved/sub/f")).unwrap(),
            "in a dir"
        );
        assert_eq!(std::fs::read_to_string(d.join("old")).unwrap(), "1");
    }

    #[test]
    fn entries_escaping_the_directory_are_refused() {
        // A hand-made archive with "../escape".
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        let mut b = tar::Builder::new(Vec::new());
        // Builder refuses ".." itself: write the name bytes directly.
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let d = dst.path().join("in");
        let _ = receive(&data[..], &d);
        assert!(!dst.path().join("escape").exists());
    }
}
