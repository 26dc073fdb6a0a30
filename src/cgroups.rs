//! The container's cgroup, through `libcgroups` (v1, hybrid and v2): where it lives, putting
//! processes in it, applying `linux.resources`, signalling and removing it; its usage and OOM
//! notifications (`stats`).

pub mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcgroups::common::{
    create_cgroup_manager_with_root, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
    FreezerState,
};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {reason}")]
    Manager { path: PathBuf, reason: String },
    #[error("cgroup {path}: applying linux.resources: {reason}")]
    Apply { path: PathBuf, reason: String },
    #[error("cgroup {path}: adding process {pid}: {reason}")]
    Add {
        path: PathBuf,
        pid: i32,
        reason: String,
    },
    #[error("cgroup {path}: still busy after killing its processes: {reason}")]
    Remove { path: PathBuf, reason: String },
    #[error("invalid cgroupsPath {0:?}: {1}")]
    BadPath(String, String),
    #[error("--cgroup {0:?}: {1}")]
    BadSub(String, String),
}

/// A sub-cgroup of a container's cgroup that an exec'd process joins (`exec --cgroup
/// [CONTROLLER[,CONTROLLER]:]PATH`, as runc): no controllers means every hierarchy.
#[derive(Debug, Clone, PartialEq)]
pub struct SubCgroup {
    pub controllers: Vec<String>,
    pub path: PathBuf,
}

/// Parse runc's `exec --cgroup` values; at most one may omit the controllers.
pub fn parse_subs(flags: &[String]) -> Result<Vec<SubCgroup>, CgroupError> {
    let mut out: Vec<SubCgroup> = vec![];
    for f in flags {
        let bad = |why: &str| CgroupError::BadSub(f.clone(), why.into());
        let (ctrls, path) = match f.split_once(':') {
            Some((c, p)) => (c.split(',').map(String::from).collect::<Vec<_>>(), p),
            None => (vec![], f.as_str()),
        };
        if ctrls.iter().any(|c| c.is_empty()) {
            return Err(bad("an empty controller name"));
        }
        let path = PathBuf::from(path.trim_start_matches('/'));
        if path.as_os_str().is_empty()
            || path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(bad("expected a path inside the container's cgroup"));
        }
        if ctrls.is_empty() && out.iter().any(|s| s.controllers.is_empty()) {
            return Err(bad("only one sub-cgroup may be given without controllers"));
        }
        out.push(SubCgroup {
            controllers: ctrls,
            path,
        });
    }
    Ok(out)
}

/// The cgroup path of a container: `linux.cgroupsPath` or `/runvz-<id>` (flat: no shared
/// parent that would outlive its containers or race between a delete and a create). A systemd-style
/// `slice:prefix:name` is mapped onto the cgroupfs path systemd would use, since no systemd
/// runs here to ask.
pub fn path_for(cgroups_path: Option<&Path>, id: &str) -> Result<PathBuf, CgroupError> {
    let Some(p) = cgroups_path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(PathBuf::from(format!("/runvz-{id}")));
    };
    let s = p.to_string_lossy();
    let path = if !s.starts_with('/') && s.matches(':').count() == 2 {
        let mut it = s.splitn(3, ':');
        let (slice, prefix, name) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        );
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        let unit = if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        PathBuf::from("/").join(slice).join(unit)
    } else {
        Path::new("/").join(p)
    };
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(CgroupError::BadPath(
            s.into_owned(),
            "must not contain \"..\"".into(),
        ));
    }
    Ok(path)
}

pub struct Cgroup {
    path: PathBuf,
    mgr: AnyCgroupManager,
    /// The cgroup2 mount root (v2 only).
    v2_root: PathBuf,
}

/// Whether this host's controllers live on cgroup v2 (unified) rather than v1/hybrid.
pub fn host_is_v2() -> bool {
    matches!(
        libcgroups::common::get_cgroup_setup(),
        Ok(libcgroups::common::CgroupSetup::Unified)
    )
}

impl Cgroup {
    /// A handle on the cgroup at `path` (not created until a process is added).
    /// `root` overrides the cgroup mount root (tests of the v2 paths use a fake tree).
    pub fn open(path: &Path, root: Option<&Path>) -> Result<Cgroup, CgroupError> {
        let cfg = CgroupConfig {
            cgroup_path: path.to_path_buf(),
            systemd_cgroup: false,
            container_name: String::new(),
        };
        let mgr = create_cgroup_manager_with_root(root, cfg).map_err(|e| CgroupError::Manager {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let v2_root = root.unwrap_or(Path::new("/sys/fs/cgroup")).to_path_buf();
        Ok(Cgroup {
            path: path.to_path_buf(),
            mgr,
            v2_root,
        })
    }

    /// A cgroup v2 handle on `path` below `root` without detecting the host's layout: how the
    /// v2 paths are exercised on this hybrid host (a cgroup2-shaped tree in a scratch dir).
    pub fn open_v2_at(root: &Path, path: &Path) -> Result<Cgroup, CgroupError> {
        let m = libcgroups::v2::manager::Manager::new(root.to_path_buf(), path.to_path_buf())
            .map_err(|e| CgroupError::Manager {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Cgroup {
            path: path.to_path_buf(),
            mgr: AnyCgroupManager::V2(m),
            v2_root: root.to_path_buf(),
        })
    }

    /// The path of a control file of this cgroup (`controller` names the v1 hierarchy; on
    /// cgroup v2 all files are in one directory).
    pub fn file(&self, controller: &str, name: &str) -> PathBuf {
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        match &self.mgr {
            AnyCgroupManager::V2(_) => self.v2_root.join(rel).join(name),
            _ => Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(rel)
                .join(name),
        }
    }

    pub fn read_file(&self, controller: &str, name: &str) -> Option<String> {
        std::fs::read_to_string(self.file(controller, name)).ok()
    }

    /// Write a control file libcgroups does not manage (e.g. the BFQ weight).
    pub fn write_file(&self, controller: &str, name: &str, value: &str) -> Result<(), CgroupError> {
        let f = self.file(controller, name);
        std::fs::write(&f, value).map_err(|e| CgroupError::Manager {
            path: self.path.clone(),
            reason: format!("writing {} = {value}: {e}", f.display()),
        })
    }

    pub fn is_v2(&self) -> bool {
        matches!(self.mgr, AnyCgroupManager::V2(_))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        self.mgr
            .add_task(Pid::from_raw(pid))
            .map_err(|e| CgroupError::Add {
                path: self.path.clone(),
                pid,
                reason: e.to_string(),
            })
    }

    /// The directories of this cgroup that exist, with the controllers of their hierarchy
    /// (v1: one per hierarchy mounted under /sys/fs/cgroup; v2: the one directory).
    fn hierarchy_dirs(&self) -> Vec<(Vec<String>, PathBuf)> {
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        if self.is_v2() {
            return vec![(vec![], self.v2_root.join(rel))];
        }
        let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
            return vec![];
        };
        rd.flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| {
                let names = e
                    .file_name()
                    .to_string_lossy()
                    .split(',')
                    .map(String::from)
                    .collect();
                (names, e.path().join(rel))
            })
            .filter(|(_, d)| d.is_dir())
            .collect()
    }

    /// Remove the (empty) child cgroups below this one, deepest first (an `exec --cgroup`
    /// target or what the container made in its own cgroup namespace).
    fn remove_children(&self) {
        fn rm_below(dir: &Path) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rm_below(&e.path());
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        for (_, dir) in self.hierarchy_dirs() {
            rm_below(&dir);
        }
    }

    /// Move `pid` (already in this cgroup) into the existing sub-cgroups `subs`: on v1 each
    /// hierarchy of this cgroup takes the sub-cgroup naming one of its controllers, else the
    /// one without controllers; a missing sub-cgroup is an error (nothing is created).
    pub fn add_to_subs(&self, pid: i32, subs: &[SubCgroup]) -> Result<(), CgroupError> {
        if subs.is_empty() {
            return Ok(());
        }
        for (names, dir) in self.hierarchy_dirs() {
            let sub = subs
                .iter()
                .find(|s| {
                    s.controllers
                        .iter()
                        .any(|c| self.is_v2() || names.contains(c))
                })
                .or_else(|| subs.iter().find(|s| s.controllers.is_empty()));
            let Some(sub) = sub else { continue };
            let procs = dir.join(&sub.path).join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(|e| CgroupError::Add {
                path: self.path.join(&sub.path),
                pid,
                reason: format!("{}: {e}", procs.display()),
            })?;
        }
        Ok(())
    }

    pub fn apply(
        &self,
        resources: &LinuxResources,
        oom_score_adj: Option<i32>,
    ) -> Result<(), CgroupError> {
        let opt = ControllerOpt {
            resources,
            disable_oom_killer: resources
                .memory()
                .as_ref()
                .and_then(|m| m.disable_oom_killer())
                .unwrap_or(false),
            oom_score_adj,
            freezer_state: None,
        };
        self.mgr.apply(&opt).map_err(|e| CgroupError::Apply {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// PIDs of every process in the cgroup (empty when it does not exist).
    pub fn pids(&self) -> Vec<i32> {
        self.mgr
            .get_all_pids()
            .map(|v| v.into_iter().map(|p| p.as_raw()).collect())
            .unwrap_or_default()
    }

    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let st = if frozen {
            FreezerState::Frozen
        } else {
            FreezerState::Thawed
        };
        self.mgr.freeze(st).map_err(|e| CgroupError::Manager {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// Send `sig` to every process in the cgroup. Returns how many were signalled.
    pub fn signal_all(&self, sig: Signal) -> usize {
        let pids = self.pids();
        for p in &pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(*p), sig);
        }
        pids.len()
    }

    /// Kill everything in the cgroup (frozen first, so nothing forks in between) and remove it.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        let _ = self.freeze(true);
        self.signal_all(Signal::SIGKILL);
        let _ = self.freeze(false);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.pids().is_empty() {
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            self.signal_all(Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut last = None;
        for _ in 0..50 {
            self.remove_children();
            match self.mgr.remove() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(CgroupError::Remove {
            path: self.path.clone(),
            reason: last.unwrap_or_default(),
        })
    }
}

/// A cgroup2-shaped tree in `root` with the directory `rel` holding the control files a real
/// cgroup2 directory with the cpu, memory, pids and io controllers has (cgroupfs makes them;
/// libcgroups never creates control files). For tests of the v2 paths on hosts whose
/// controllers are bound to v1.
#[cfg(test)]
pub(crate) fn fake_v2_tree(root: &Path, rel: &str) -> PathBuf {
    let dir = root.join(rel);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        root.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids",
    )
    .unwrap();
    std::fs::write(root.join("cgroup.subtree_control"), "").unwrap();
    for f in [
        "memory.max",
        "memory.high",
        "memory.low",
        "memory.min",
        "memory.swap.max",
        "pids.max",
        "cpu.max",
        "cpu.weight",
        "cpu.idle",
        "cgroup.procs",
    ] {
        std::fs::write(dir.join(f), "").unwrap();
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    /// linux.resources land in the cgroup v2 files, in a cgroup2-shaped tree.
    #[test]
    fn v2_values_are_written() {
        let root = std::env::temp_dir().join(format!("runvz-cg2-{}", std::process::id()));
        fake_v2_tree(&root, "runvz/c1");
        let cg = Cgroup::open_v2_at(&root, Path::new("/runvz/c1")).unwrap();
        cg.add(std::process::id() as i32).ok();
        let res: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":67108864,"reservation":33554432},"pids":{"limit":100},
                "cpu":{"shares":2048,"quota":50000,"period":100000}}"#,
        )
        .unwrap();
        cg.apply(&res, None).unwrap();
        let read =
            |f: &str| std::fs::read_to_string(root.join("runvz/c1").join(f)).unwrap_or_default();
        assert_eq!(read("memory.max").trim(), "67108864");
        assert_eq!(read("memory.low").trim(), "33554432");
        assert_eq!(read("pids.max").trim(), "100");
        assert_eq!(read("cpu.max").trim(), "50000 100000");
        // shares -> weight by the quadratic mapping runc 1.3 and crun use (1024 -> 100):
        // log2(2048) = 11, 10^((121 + 1375) / 612 - 7/34) = 173.9 -> 174
        assert_eq!(read("cpu.weight").trim(), "174");
        std::fs::remove_dir_all(&root).unwrap();
    }
    #[test]
    fn exec_cgroup_flags() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let subs = parse_subs(&v(&["memory,pids:a/b", "c"])).unwrap();
        assert_eq!(subs[0].controllers, vec!["memory", "pids"]);
        assert_eq!(subs[0].path, PathBuf::from("a/b"));
        assert!(subs[1].controllers.is_empty());
        assert!(parse_subs(&v(&["../x"])).is_err());
        assert!(parse_subs(&v(&["memory:"])).is_err());
        assert!(parse_subs(&v(&["a", "b"])).is_err());
    }
    #[test]
    fn paths() {
        assert_eq!(path_for(None, "c").unwrap(), PathBuf::from("/runvz-c"));
        assert_eq!(
            path_for(Some(Path::new("/a/b")), "c").unwrap(),
            PathBuf::from("/a/b")
        );
        assert_eq!(
            path_for(Some(Path::new("a/b")), "c").unwrap(),
            PathBuf::from("/a/b")
        );
        assert_eq!(
            path_for(Some(Path::new("system.slice:runvz:c1")), "c").unwrap(),
            PathBuf::from("/system.slice/runvz-c1.scope")
        );
        assert!(path_for(Some(Path::new("/a/../../b")), "c").is_err());
    }
}
