//! From `Settings` to the kernel: cgroup values (through the OCI `linux.resources` the cgroup
//! manager applies), rlimits, sysctls in the container's IPC namespace, the devpts `max=`
//! option, and cgroup files libcgroups does not write. Where this host has no interface for a
//! setting, a warning says so; nothing is silently dropped.

use std::path::Path;

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxNamespaceType, LinuxPids, LinuxResources,
    LinuxThrottleDevice, LinuxThrottleDeviceBuilder, PosixRlimitBuilder, PosixRlimitType, Spec,
};

use super::{Limit, Param, Settings, UbError, PAGE, UNLIMITED};

/// OpenVZ's I/O priority 0..7 as a proportional weight.
pub const IOPRIO_WEIGHT: [u16; 8] = [320, 365, 410, 460, 500, 550, 600, 640];
pub const CPU_PERIOD: u64 = 100_000;

/// What `apply` decided, beyond the spec it edited.
#[derive(Debug, Default)]
pub struct Plan {
    pub warnings: Vec<String>,
    /// Cgroup files to write after the cgroup exists: (controller, file, value).
    pub cgroup_files: Vec<(String, String, String)>,
    /// The I/O weight of `ioprio`, for `write_io_weight`.
    pub io_weight: Option<u16>,
    /// Settings of config.json an annotation replaced (logged at create; expected at `set`,
    /// which maps onto a spec that already carries the previous values).
    pub overrides: Vec<String>,
}

/// Write the ioprio weight into whichever weight file the container's cgroup has
/// (blkio.weight, blkio.bfq.weight; io.weight, io.bfq.weight); a warning when none.
pub fn write_io_weight(
    cg: &crate::cgroups::Cgroup,
    w: u16,
) -> Result<Option<String>, crate::cgroups::CgroupError> {
    let candidates: &[(&str, &str, String)] = if cg.is_v2() {
        &[
            ("io", "io.weight", format!("default {w}")),
            ("io", "io.bfq.weight", w.to_string()),
        ]
    } else {
        &[
            ("blkio", "blkio.weight", w.to_string()),
            ("blkio", "blkio.bfq.weight", w.to_string()),
        ]
    };
    for (ctrl, file, value) in candidates {
        if cg.file(ctrl, file).exists() {
            cg.write_file(ctrl, file, value)?;
            return Ok(None);
        }
    }
    Ok(Some(format!(
        "io.runvz.ioprio: this kernel has no blkio/io weight interface: weight {w} not applied"
    )))
}

/// Which cgroup layout the host has, for the parts of the mapping that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1, also the hybrid layout (controllers on v1).
    V1,
    V2,
}

fn bytes(pages: u64) -> i64 {
    if pages == UNLIMITED {
        -1
    } else {
        pages.saturating_mul(PAGE).min(i64::MAX as u64) as i64
    }
}

fn rlim(v: u64, scale: u64) -> u64 {
    if v == UNLIMITED {
        u64::MAX // RLIM_INFINITY
    } else {
        v.saturating_mul(scale)
    }
}

fn set_rlimit(
    spec: &mut Spec,
    typ: PosixRlimitType,
    soft: u64,
    hard: u64,
    key: &str,
    plan: &mut Plan,
) {
    let Some(p) = spec.process_mut() else {
        plan.warnings
            .push(format!("{key}: no process in config.json, rlimit not set"));
        return;
    };
    let mut list = p.rlimits().clone().unwrap_or_default();
    if list.iter().any(|r| r.typ() == typ) {
        plan.overrides
            .push(format!("{key} overrides process.rlimits {typ}"));
        list.retain(|r| r.typ() != typ);
    }
    match PosixRlimitBuilder::default()
        .typ(typ)
        .soft(soft)
        .hard(hard)
        .build()
    {
        Ok(r) => list.push(r),
        Err(e) => plan.warnings.push(format!("{key}: {e}")),
    }
    p.set_rlimits(Some(list));
}

fn key(p: Param) -> String {
    format!("io.runvz.ub.{}", p.name())
}

/// Edit `spec` so that creating it enforces `st`; `rootfs_dev` is the device of the
/// container's root (for iolimit). Returns the warnings and the extra cgroup writes.
pub fn apply(
    st: &Settings,
    spec: &mut Spec,
    layout: Layout,
    rootfs: &Path,
) -> Result<Plan, UbError> {
    let mut plan = Plan::default();
    if st.is_empty() {
        return Ok(plan);
    }
    let has_ns = |spec: &Spec, t: LinuxNamespaceType| {
        spec.linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|v| v.iter().any(|n| n.typ() == t))
    };
    let ipc_ns = has_ns(spec, LinuxNamespaceType::Ipc);
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let mut res: LinuxResources = linux.resources().clone().unwrap_or_default();

    // numproc: pids.max = L
    if let Some(l) = st.ub.get(&Param::Numproc) {
        if res.pids().is_some() {
            plan.overrides.push(format!(
                "{} overrides linux.resources.pids.limit",
                key(Param::Numproc)
            ));
        }
        let mut pids = LinuxPids::default();
        pids.set_limit(if l.limit == UNLIMITED {
            -1
        } else {
            l.limit as i64
        });
        res.set_pids(Some(pids));
    }

    // physpages / swappages / guarantees / tcp buffers: the memory controller
    let mem_keys = [
        Param::Physpages,
        Param::Swappages,
        Param::Vmguarpages,
        Param::Oomguarpages,
        Param::Tcpsndbuf,
        Param::Tcprcvbuf,
    ];
    if mem_keys.iter().any(|p| st.ub.contains_key(p)) {
        let mut mem: LinuxMemory = (*res.memory()).unwrap_or_default();
        let phys = st.get(Param::Physpages);
        if st.ub.contains_key(&Param::Physpages) {
            if mem.limit().is_some() {
                plan.overrides.push(format!(
                    "{} overrides linux.resources.memory.limit",
                    key(Param::Physpages)
                ));
            }
            mem.set_limit(Some(bytes(phys.limit)));
            let soft = phys.barrier > 0 && phys.barrier < phys.limit;
            match layout {
                Layout::V1 => {
                    mem.set_reservation(soft.then(|| bytes(phys.barrier)));
                }
                Layout::V2 if soft => plan.cgroup_files.push((
                    "memory".into(),
                    "memory.high".into(),
                    bytes(phys.barrier).to_string(),
                )),
                Layout::V2 => {}
            }
        }
        if let Some(sw) = st.ub.get(&Param::Swappages) {
            if phys.limit == UNLIMITED {
                plan.warnings.push(format!(
                    "{}: swap is limited together with memory (memory+swap); set physpages or io.runvz.ram too",
                    key(Param::Swappages)
                ));
            } else if sw.limit == UNLIMITED {
                mem.set_swap(Some(-1));
            } else {
                mem.set_swap(Some(bytes(phys.limit).saturating_add(bytes(sw.limit))));
            }
        }
        for (p, file) in [
            (Param::Vmguarpages, "memory.low"),
            (Param::Oomguarpages, "memory.min"),
        ] {
            if let Some(g) = st.ub.get(&p) {
                match layout {
                    Layout::V2 if g.barrier != UNLIMITED => plan.cgroup_files.push((
                        "memory".into(),
                        file.into(),
                        bytes(g.barrier).to_string(),
                    )),
                    _ => plan.warnings.push(format!(
                        "{}: cgroup v1 has no memory guarantee: accounted only",
                        key(p)
                    )),
                }
            }
        }
        let tcp: Vec<Limit> = [Param::Tcpsndbuf, Param::Tcprcvbuf]
            .iter()
            .filter_map(|p| st.ub.get(p).copied())
            .collect();
        if !tcp.is_empty() {
            match layout {
                Layout::V1 if tcp.iter().all(|l| l.limit != UNLIMITED) => {
                    mem.set_kernel_tcp(Some(tcp.iter().map(|l| l.limit).sum::<u64>().min(i64::MAX as u64) as i64));
                }
                Layout::V1 => {}
                Layout::V2 => plan.warnings.push(
                    "io.runvz.ub.tcpsndbuf/tcprcvbuf: cgroup v2 has no TCP buffer limit: accounted only".into(),
                ),
            }
        }
        res.set_memory(Some(mem));
    }

    // CPU: fair share and quota
    if st.cpuunits.is_some() || st.cpu_quota().is_some() {
        let mut cpu: LinuxCpu = res.cpu().clone().unwrap_or_default();
        if let Some(u) = st.cpuunits {
            if cpu.shares().is_some() {
                plan.overrides
                    .push("io.runvz.cpuunits overrides linux.resources.cpu.shares".into());
            }
            match layout {
                Layout::V1 => {
                    cpu.set_shares(Some(u.saturating_mul(1024) / 1000));
                }
                Layout::V2 => {
                    cpu.set_shares(None);
                    plan.cgroup_files.push((
                        "cpu".into(),
                        "cpu.weight".into(),
                        (u / 10).clamp(1, 10_000).to_string(),
                    ))
                }
            }
        }
        if let Some(q) = st.cpu_quota() {
            if cpu.quota().is_some() {
                plan.overrides
                    .push("io.runvz.cpulimit/cpus override linux.resources.cpu.quota".into());
            }
            cpu.set_quota(Some(q.min(i64::MAX as u64) as i64));
            cpu.set_period(Some(CPU_PERIOD));
        }
        res.set_cpu(Some(cpu));
    }

    // I/O: priority as a weight, limits as throttles on the root's disk
    // The weight file depends on the kernel and the disk's scheduler: chosen once the
    // container's cgroup exists (`write_io_weight`).
    plan.io_weight = st
        .ioprio
        .map(|p| IOPRIO_WEIGHT[usize::from(p).min(IOPRIO_WEIGHT.len() - 1)]);
    if st.iolimit.is_some_and(|v| v > 0) || st.iopslimit.is_some_and(|v| v > 0) {
        match root_disk(rootfs) {
            Some((major, minor)) => {
                let mut bio: LinuxBlockIo = res.block_io().clone().unwrap_or_default();
                let dev = |rate: u64| -> Vec<LinuxThrottleDevice> {
                    LinuxThrottleDeviceBuilder::default()
                        .major(major)
                        .minor(minor)
                        .rate(rate)
                        .build()
                        .into_iter()
                        .collect()
                };
                if let Some(b) = st.iolimit.filter(|v| *v > 0) {
                    bio.set_throttle_read_bps_device(Some(dev(b)));
                    bio.set_throttle_write_bps_device(Some(dev(b)));
                }
                if let Some(n) = st.iopslimit.filter(|v| *v > 0) {
                    bio.set_throttle_read_iops_device(Some(dev(n)));
                    bio.set_throttle_write_iops_device(Some(dev(n)));
                }
                res.set_block_io(Some(bio));
            }
            None => plan.warnings.push(format!(
                "io.runvz.iolimit/iopslimit: {} is not on a block device: no throttle applied",
                rootfs.display()
            )),
        }
    }
    linux.set_resources(Some(res));

    // shmpages: SysV shm limits of the container's own IPC namespace
    if let Some(l) = st.ub.get(&Param::Shmpages) {
        if !ipc_ns {
            return Err(UbError::Bad {
                key: key(Param::Shmpages),
                problem: "needs a new ipc namespace".into(),
            });
        }
        if l.limit != UNLIMITED {
            let mut sys = linux.sysctl().clone().unwrap_or_default();
            sys.insert("kernel.shmall".into(), l.limit.to_string());
            sys.insert(
                "kernel.shmmax".into(),
                l.limit.saturating_mul(PAGE).to_string(),
            );
            linux.set_sysctl(Some(sys));
        }
    }

    // numpty: max= on the container's own devpts
    if let Some(l) = st.ub.get(&Param::Numpty) {
        let mounts = spec.mounts_mut().get_or_insert_with(Vec::new);
        let Some(m) = mounts
            .iter_mut()
            .find(|m| m.typ().as_deref() == Some("devpts"))
        else {
            return Err(UbError::Bad {
                key: key(Param::Numpty),
                problem: "needs a devpts mount in config.json".into(),
            });
        };
        let mut opts: Vec<String> = m.options().clone().unwrap_or_default();
        opts.retain(|o| !o.starts_with("max="));
        if l.limit != UNLIMITED {
            opts.push(format!("max={}", l.limit));
        }
        if !opts.iter().any(|o| o == "newinstance") {
            opts.push("newinstance".into());
        }
        m.set_options(Some(opts));
    }

    // per-process limits: rlimits
    for (p, typ, scale) in [
        (Param::Lockedpages, PosixRlimitType::RlimitMemlock, PAGE),
        (Param::Privvmpages, PosixRlimitType::RlimitAs, PAGE),
        (Param::Numfile, PosixRlimitType::RlimitNofile, 1),
        (Param::Numsiginfo, PosixRlimitType::RlimitSigpending, 1),
    ] {
        if let Some(l) = st.ub.get(&p) {
            set_rlimit(
                spec,
                typ,
                rlim(l.barrier, scale),
                rlim(l.limit, scale),
                &key(p),
                &mut plan,
            );
        }
    }
    Ok(plan)
}

/// The whole disk (major, minor) holding `path`, for blkio throttles (which work on disks,
/// not partitions); `None` for overlay and other filesystems without a block device.
pub fn root_disk(path: &Path) -> Option<(i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    if major == 0 {
        return None;
    }
    let sys = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let disk = if sys.join("partition").exists() {
        sys.join("..")
    } else {
        sys
    };
    let mm = std::fs::read_to_string(disk.join("dev")).ok()?;
    let (a, b) = mm.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::Cgroup;
    use std::collections::HashMap;

    fn settings(kv: &[(&str, &str)]) -> Settings {
        let m: HashMap<String, String> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::ub::from_annotations(&m).unwrap()
    }

    /// The v2 mapping, written by the same code paths as on a real host into a
    /// cgroup2-shaped tree (this host's controllers are bound to v1).
    #[test]
    fn v2_mapping_lands_in_cgroup2_files() {
        let st = settings(&[
            ("io.runvz.ub.numproc", "100:120"),
            ("io.runvz.ub.physpages", "1000:2000"),
            ("io.runvz.ub.swappages", "0:500"),
            ("io.runvz.ub.oomguarpages", "300"),
            ("io.runvz.cpuunits", "2000"),
            ("io.runvz.cpulimit", "50"),
        ]);
        let mut spec = Spec::default();
        let plan = apply(&st, &mut spec, Layout::V2, Path::new("/")).unwrap();
        let root = std::env::temp_dir().join(format!("runvz-ubv2-{}", std::process::id()));
        let dir = crate::cgroups::fake_v2_tree(&root, "c1");
        let cg = Cgroup::open_v2_at(&root, Path::new("/c1")).unwrap();
        cg.apply(
            spec.linux().as_ref().unwrap().resources().as_ref().unwrap(),
            None,
        )
        .unwrap();
        for (ctrl, file, value) in &plan.cgroup_files {
            cg.write_file(ctrl, file, value).unwrap();
        }
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(read("pids.max"), "120");
        assert_eq!(read("memory.max"), (2000 * 4096).to_string());
        assert_eq!(read("memory.high"), (1000 * 4096).to_string());
        // swap.max is the swap part alone on v2 (memory+swap minus memory).
        assert_eq!(read("memory.swap.max"), (500 * 4096).to_string());
        assert_eq!(read("memory.min"), (300 * 4096).to_string());
        assert_eq!(read("cpu.weight"), "200");
        assert_eq!(read("cpu.max"), "50000 100000");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn v1_mapping_and_per_process_limits() {
        let st = settings(&[
            ("io.runvz.ram", "1G"),
            ("io.runvz.swap", "512M"),
            ("io.runvz.cpuunits", "500"),
            ("io.runvz.ub.numfile", "1000:2000"),
            ("io.runvz.ub.lockedpages", "16:32"),
            ("io.runvz.ub.numpty", "8"),
            ("io.runvz.ub.shmpages", "256"),
        ]);
        let mut spec = Spec::default();
        let plan = apply(&st, &mut spec, Layout::V1, Path::new("/")).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let mem = linux.resources().as_ref().unwrap().memory().unwrap();
        assert_eq!(mem.limit(), Some(1 << 30));
        assert_eq!(mem.swap(), Some((1 << 30) + (512 << 20)));
        assert_eq!(mem.reservation(), None);
        assert_eq!(
            linux
                .resources()
                .as_ref()
                .unwrap()
                .cpu()
                .as_ref()
                .unwrap()
                .shares(),
            Some(512)
        );
        let rl = spec.process().as_ref().unwrap().rlimits().clone().unwrap();
        let nofile = rl
            .iter()
            .find(|r| r.typ() == PosixRlimitType::RlimitNofile)
            .unwrap();
        assert_eq!((nofile.soft(), nofile.hard()), (1000, 2000));
        let memlock = rl
            .iter()
            .find(|r| r.typ() == PosixRlimitType::RlimitMemlock)
            .unwrap();
        assert_eq!((memlock.soft(), memlock.hard()), (16 * 4096, 32 * 4096));
        assert!(plan
            .overrides
            .iter()
            .any(|w| w.contains("overrides process.rlimits")));
        let devpts = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.typ().as_deref() == Some("devpts"))
            .unwrap();
        assert!(devpts
            .options()
            .as_ref()
            .unwrap()
            .iter()
            .any(|o| o == "max=8"));
        let sys = spec.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(sys["kernel.shmall"], "256");
        assert_eq!(sys["kernel.shmmax"], "1048576");
    }
}
