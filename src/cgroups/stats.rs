//! A container's resource usage as `runc events` reports it (runc's `types/events.go`: the
//! same field names, the same omissions), read from the cgroup files of v1/hybrid and v2;
//! and the OOM notification (v1: an eventfd on `memory.oom_control` through
//! `cgroup.event_control`; v2: inotify on `memory.events`, whose `oom_kill` counter grows).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Cgroup, CgroupError};

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub cpu: Cpu,
    pub cpuset: CpuSet,
    pub memory: Memory,
    pub pids: Pids,
    pub blkio: Blkio,
    pub hugetlb: BTreeMap<String, Hugetlb>,
    pub intel_rdt: IntelRdt,
    /// runc fills this only for containers it gave interfaces to itself (never here): `null`.
    pub network_interfaces: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Default, Serialize)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

/// Nanoseconds.
#[derive(Debug, Default, Serialize)]
pub struct CpuUsage {
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_kernel: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_user: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Throttling {
    #[serde(skip_serializing_if = "is_zero")]
    pub periods: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct CpuSet {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<u16>,
    pub cpu_exclusive: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mems: Vec<u16>,
    pub mem_hardwall: u64,
    pub mem_exclusive: u64,
    pub memory_migrate: u64,
    pub memory_spread_page: u64,
    pub memory_spread_slab: u64,
    pub memory_pressure: u64,
    pub sched_load_balance: u64,
    pub sched_relax_domain_level: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct MemoryEntry {
    pub limit: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Memory {
    #[serde(skip_serializing_if = "is_zero")]
    pub cache: u64,
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
    pub kernel: MemoryEntry,
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Pids {
    #[serde(skip_serializing_if = "is_zero")]
    pub current: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct BlkioEntry {
    #[serde(skip_serializing_if = "is_zero")]
    pub major: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub minor: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub op: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub value: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Blkio {
    #[serde(
        rename = "ioServiceBytesRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    #[serde(rename = "ioServicedRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
}

#[derive(Debug, Default, Serialize)]
pub struct Hugetlb {
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

/// Intel RDT is not supported: always `{}` (runc's fields are all omitted when unset).
#[derive(Debug, Default, Serialize)]
pub struct IntelRdt {}

/// A number as the cgroup files write it; `max` (no limit) is 0, as runc reports it for pids.
fn num(s: &str) -> u64 {
    s.trim().parse().unwrap_or(0)
}

/// `key value` lines (memory.stat, cpu.stat, cpuacct.stat).
fn key_values(s: &str) -> BTreeMap<String, u64> {
    s.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// A cpuset list (`0-3,5`).
fn cpu_list(s: &str) -> Vec<u16> {
    let mut out = vec![];
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
            out.extend(a..=b);
        }
    }
    out
}

/// v1 blkio lines: `MAJ:MIN Op Value` (the device-less `Total` line is skipped).
fn blkio_v1(s: &str) -> Vec<BlkioEntry> {
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, op, value) = match f.as_slice() {
                [dev, op, value] => (dev, op, value),
                _ => return None,
            };
            let (maj, min) = dev.split_once(':')?;
            Some(BlkioEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                op: op.to_string(),
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// v2 `io.stat`: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=..` as runc converts it.
fn blkio_v2(s: &str) -> Blkio {
    let mut b = Blkio::default();
    for l in s.lines() {
        let mut it = l.split_whitespace();
        let Some((maj, min)) = it.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (major, minor) = (num(maj), num(min));
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let (list, op) = match k {
                "rbytes" => (&mut b.io_service_bytes_recursive, "Read"),
                "wbytes" => (&mut b.io_service_bytes_recursive, "Write"),
                "rios" => (&mut b.io_serviced_recursive, "Read"),
                "wios" => (&mut b.io_serviced_recursive, "Write"),
                _ => continue,
            };
            list.push(BlkioEntry {
                major,
                minor,
                op: op.into(),
                value: num(v),
            });
        }
    }
    b
}

/// Huge page sizes as runc names them (`2MB`, `1GB`), from /sys/kernel/mm/hugepages.
fn hugepage_sizes() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/sys/kernel/mm/hugepages") else {
        return vec![];
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let kb: u64 = n
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(match kb {
                k if k >= 1 << 20 && k % (1 << 20) == 0 => format!("{}GB", k >> 20),
                k if k >= 1 << 10 && k % (1 << 10) == 0 => format!("{}MB", k >> 10),
                k => format!("{k}KB"),
            })
        })
        .collect();
    out.sort();
    out
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

impl Cgroup {
    fn read(&self, controller: &str, name: &str) -> String {
        self.read_file(controller, name).unwrap_or_default()
    }

    fn memory_entry_v1(&self, prefix: &str) -> MemoryEntry {
        let f = |n: &str| num(&self.read("memory", &format!("{prefix}{n}")));
        MemoryEntry {
            limit: f("limit_in_bytes"),
            usage: f("usage_in_bytes"),
            max: f("max_usage_in_bytes"),
            failcnt: f("failcnt"),
        }
    }

    /// Usage of every controller, as `runc events --stats` reports it. Fails only when the
    /// cgroup itself is gone (its memory or pids directory cannot be read).
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        let probe = if self.is_v2() {
            self.file("", "cgroup.procs")
        } else {
            self.file("pids", "cgroup.procs")
        };
        if let Err(e) = std::fs::metadata(&probe) {
            return Err(CgroupError::Manager {
                path: self.path.clone(),
                reason: format!("reading stats: {}: {e}", probe.display()),
            });
        }
        Ok(if self.is_v2() {
            self.stats_v2()
        } else {
            self.stats_v1()
        })
    }

    fn stats_v1(&self) -> Stats {
        let mut s = Stats::default();
        // cpu
        let u = &mut s.cpu.usage;
        u.total = num(&self.read("cpuacct", "cpuacct.usage"));
        u.percpu = self
            .read("cpuacct", "cpuacct.usage_percpu")
            .split_whitespace()
            .map(num)
            .collect();
        for l in self.read("cpuacct", "cpuacct.usage_all").lines().skip(1) {
            let f: Vec<u64> = l.split_whitespace().map(num).collect();
            if let [_, user, sys] = f.as_slice() {
                u.percpu_user.push(*user);
                u.percpu_kernel.push(*sys);
            }
        }
        let ns_per_tick = 1_000_000_000 / clock_ticks();
        let st = key_values(&self.read("cpuacct", "cpuacct.stat"));
        u.user = st.get("user").copied().unwrap_or(0) * ns_per_tick;
        u.kernel = st.get("system").copied().unwrap_or(0) * ns_per_tick;
        let th = key_values(&self.read("cpu", "cpu.stat"));
        s.cpu.throttling = Throttling {
            periods: th.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: th.get("nr_throttled").copied().unwrap_or(0),
            throttled_time: th.get("throttled_time").copied().unwrap_or(0),
        };
        // cpuset
        let cs = |n: &str| self.read("cpuset", &format!("cpuset.{n}"));
        s.cpuset = CpuSet {
            cpus: cpu_list(&cs("cpus")),
            cpu_exclusive: num(&cs("cpu_exclusive")),
            mems: cpu_list(&cs("mems")),
            mem_hardwall: num(&cs("mem_hardwall")),
            mem_exclusive: num(&cs("mem_exclusive")),
            memory_migrate: num(&cs("memory_migrate")),
            memory_spread_page: num(&cs("memory_spread_page")),
            memory_spread_slab: num(&cs("memory_spread_slab")),
            memory_pressure: num(&cs("memory_pressure")),
            sched_load_balance: num(&cs("sched_load_balance")),
            sched_relax_domain_level: cs("sched_relax_domain_level").trim().parse().unwrap_or(0),
        };
        // memory
        let raw = key_values(&self.read("memory", "memory.stat"));
        s.memory = Memory {
            cache: raw.get("cache").copied().unwrap_or(0),
            usage: self.memory_entry_v1("memory."),
            swap: self.memory_entry_v1("memory.memsw."),
            kernel: self.memory_entry_v1("memory.kmem."),
            kernel_tcp: self.memory_entry_v1("memory.kmem.tcp."),
            raw,
        };
        // pids
        s.pids = Pids {
            current: num(&self.read("pids", "pids.current")),
            limit: num(&self.read("pids", "pids.max")),
        };
        // blkio: BFQ's statistics when the hierarchy has them, else the throttle ones (runc's order)
        for prefix in ["blkio.bfq.", "blkio.throttle."] {
            let bytes =
                blkio_v1(&self.read("blkio", &format!("{prefix}io_service_bytes_recursive")));
            if bytes.is_empty() {
                continue;
            }
            s.blkio = Blkio {
                io_service_bytes_recursive: bytes,
                io_serviced_recursive: blkio_v1(
                    &self.read("blkio", &format!("{prefix}io_serviced_recursive")),
                ),
            };
            break;
        }
        // hugetlb: only a v1 hugetlb hierarchy (on a hybrid host where hugetlb sits on the
        // unified mount, runc reports `{}` too)
        if Path::new("/sys/fs/cgroup/hugetlb").exists() {
            for size in hugepage_sizes() {
                let f = |n: &str| num(&self.read("hugetlb", &format!("hugetlb.{size}.{n}")));
                s.hugetlb.insert(
                    size.clone(),
                    Hugetlb {
                        usage: f("usage_in_bytes"),
                        max: f("max_usage_in_bytes"),
                        failcnt: f("failcnt"),
                    },
                );
            }
        }
        s
    }

    fn stats_v2(&self) -> Stats {
        let mut s = Stats::default();
        let cpu = key_values(&self.read("", "cpu.stat"));
        let us = |k: &str| cpu.get(k).copied().unwrap_or(0) * 1000;
        s.cpu.usage.total = us("usage_usec");
        s.cpu.usage.user = us("user_usec");
        s.cpu.usage.kernel = us("system_usec");
        s.cpu.throttling = Throttling {
            periods: cpu.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: cpu.get("nr_throttled").copied().unwrap_or(0),
            throttled_time: us("throttled_usec"),
        };
        let limit = |n: &str| match self.read("", n).trim() {
            "max" => u64::MAX,
            v => num(v),
        };
        let raw = key_values(&self.read("", "memory.stat"));
        let usage = MemoryEntry {
            limit: limit("memory.max"),
            usage: num(&self.read("", "memory.current")),
            max: num(&self.read("", "memory.peak")),
            failcnt: 0,
        };
        // cgroup v1 reports swap as memory+swap; runc adds them up on v2 for the same meaning.
        let swap_limit = limit("memory.swap.max");
        let swap = MemoryEntry {
            limit: if swap_limit == u64::MAX {
                swap_limit
            } else {
                swap_limit.saturating_add(usage.limit)
            },
            usage: num(&self.read("", "memory.swap.current")) + usage.usage,
            max: 0,
            failcnt: 0,
        };
        s.memory = Memory {
            cache: raw.get("file").copied().unwrap_or(0),
            usage,
            swap,
            kernel: MemoryEntry::default(),
            kernel_tcp: MemoryEntry::default(),
            raw,
        };
        s.pids = Pids {
            current: num(&self.read("", "pids.current")),
            limit: num(&self.read("", "pids.max")),
        };
        s.blkio = blkio_v2(&self.read("", "io.stat"));
        for size in hugepage_sizes() {
            let events = key_values(&self.read("", &format!("hugetlb.{size}.events")));
            s.hugetlb.insert(
                size.clone(),
                Hugetlb {
                    usage: num(&self.read("", &format!("hugetlb.{size}.current"))),
                    max: 0,
                    failcnt: events.get("max").copied().unwrap_or(0),
                },
            );
        }
        s
    }

    /// Start watching for OOM kills in this cgroup.
    pub fn oom_watch(&self) -> Result<OomWatch, CgroupError> {
        let err = |what: &str, e: std::io::Error| CgroupError::Manager {
            path: self.path.clone(),
            reason: format!("watching for OOM: {what}: {e}"),
        };
        if self.is_v2() {
            let events = self.file("", "memory.events");
            // SAFETY: inotify_init1 with valid flags; returns a new fd or -1.
            let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
            if fd < 0 {
                return Err(err("inotify_init1", std::io::Error::last_os_error()));
            }
            // SAFETY: fd was just returned by inotify_init1 and is owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let c = std::ffi::CString::new(events.as_os_str().as_encoded_bytes())
                .map_err(|e| err("path", std::io::Error::other(e)))?;
            // SAFETY: a valid inotify fd and a NUL-terminated path.
            let wd =
                unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) };
            if wd < 0 {
                return Err(err(
                    &events.display().to_string(),
                    std::io::Error::last_os_error(),
                ));
            }
            let last = oom_kills(&events);
            Ok(OomWatch {
                fd,
                source: Source::V2 { events, last },
            })
        } else {
            let control = self.file("memory", "memory.oom_control");
            let oom = std::fs::File::open(&control)
                .map_err(|e| err(&control.display().to_string(), e))?;
            // SAFETY: eventfd with valid flags; returns a new fd or -1.
            let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if efd < 0 {
                return Err(err("eventfd", std::io::Error::last_os_error()));
            }
            // SAFETY: efd was just returned by eventfd and is owned by nothing else.
            let efd = unsafe { OwnedFd::from_raw_fd(efd) };
            let ctl = self.file("memory", "cgroup.event_control");
            std::fs::write(&ctl, format!("{} {}", efd.as_raw_fd(), oom.as_raw_fd()))
                .map_err(|e| err(&ctl.display().to_string(), e))?;
            let last = oom_kills(&control);
            Ok(OomWatch {
                fd: efd,
                source: Source::V1 {
                    control,
                    _file: oom,
                    last,
                },
            })
        }
    }
}

/// The `oom_kill` counter of memory.events (v2) or memory.oom_control (v1).
fn oom_kills(events: &Path) -> u64 {
    std::fs::read_to_string(events)
        .map(|s| key_values(&s).get("oom_kill").copied().unwrap_or(0))
        .unwrap_or(0)
}

enum Source {
    /// v1: the memory.oom_control file registered with the eventfd (kept open while we watch).
    V1 {
        control: PathBuf,
        _file: std::fs::File,
        last: u64,
    },
    /// v2: memory.events and the oom_kill count last seen.
    V2 { events: PathBuf, last: u64 },
}

/// An OOM notification source: poll `fd()` for readability, then call `fired`.
pub struct OomWatch {
    fd: OwnedFd,
    source: Source,
}

impl OomWatch {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Drain the notification; whether it was an OOM kill (v2: the `oom_kill` counter grew;
    /// v1: the eventfd fired and the `oom_kill` counter of memory.oom_control grew).
    pub fn fired(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a buffer we own, of its length, from our own fd.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match &mut self.source {
            Source::V2 { events, last } => {
                let now = oom_kills(events);
                let grew = now > *last;
                *last = now;
                grew
            }
            // The eventfd also fires when the cgroup goes away, and once per reclaim failure:
            // count kills, as on v2.
            // The kernel notifies before it picks and kills a process: give the counter a
            // moment to follow.
            Source::V1 { control, last, .. } => {
                if n <= 0 {
                    return false;
                }
                let deadline = std::time::Instant::now() + std::time::Duration::from_millis(250);
                let mut now = oom_kills(control);
                while now <= *last && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    now = oom_kills(control);
                }
                let grew = now > *last;
                *last = now;
                grew
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(cpu_list("0-2,5\n"), vec![0, 1, 2, 5]);
        let b = blkio_v1("254:0 Read 40960\n254:0 Write 0\nTotal 40960\n");
        assert_eq!(b.len(), 2);
        assert_eq!(
            (b[0].major, b[0].op.as_str(), b[0].value),
            (254, "Read", 40960)
        );
        let b = blkio_v2("8:16 rbytes=100 wbytes=0 rios=3 wios=0 dbytes=0 dios=0\n");
        assert_eq!(b.io_service_bytes_recursive.len(), 2);
        assert_eq!(b.io_serviced_recursive[0].value, 3);
    }

    /// runc's omissions: zero counters and empty lists are left out where runc's struct tags
    /// say `omitempty`, `kernel`/`user`/`limit`/`failcnt` always stay.
    #[test]
    fn omissions_match_runc() {
        let v = serde_json::to_value(Stats::default()).unwrap();
        assert_eq!(
            v["cpu"]["usage"],
            serde_json::json!({"kernel": 0, "user": 0})
        );
        assert_eq!(v["cpu"]["throttling"], serde_json::json!({}));
        assert_eq!(
            v["memory"]["usage"],
            serde_json::json!({"limit": 0, "failcnt": 0})
        );
        assert!(v["memory"].get("raw").is_none() && v["memory"].get("cache").is_none());
        assert!(v["memory"].get("kernelTCP").is_some());
        assert_eq!(v["pids"], serde_json::json!({}));
        assert_eq!(v["blkio"], serde_json::json!({}));
        assert_eq!(v["intel_rdt"], serde_json::json!({}));
        assert!(v["network_interfaces"].is_null());
    }

    /// The v2 files, in a cgroup2-shaped tree.
    #[test]
    fn v2_stats_are_read() {
        let root = std::env::temp_dir().join(format!("runvz-cg2-stats-{}", std::process::id()));
        let dir = super::super::fake_v2_tree(&root, "runvz/s1");
        let w = |f: &str, v: &str| std::fs::write(dir.join(f), v).unwrap();
        w("cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 7\n");
        w("memory.current", "4096\n");
        w("memory.max", "max\n");
        w("memory.swap.current", "0\n");
        w("memory.swap.max", "max\n");
        w("memory.stat", "file 8192\nanon 4096\n");
        w("pids.current", "3\n");
        w("pids.max", "max\n");
        let cg = Cgroup::open_v2_at(&root, Path::new("/runvz/s1")).unwrap();
        let s = cg.stats().unwrap();
        assert_eq!(
            (s.cpu.usage.total, s.cpu.usage.user, s.cpu.usage.kernel),
            (1_500_000, 1_000_000, 500_000)
        );
        assert_eq!(s.cpu.throttling.throttled_time, 7000);
        assert_eq!(
            (s.memory.usage.usage, s.memory.usage.limit),
            (4096, u64::MAX)
        );
        assert_eq!((s.memory.cache, s.memory.swap.usage), (8192, 4096));
        assert_eq!((s.pids.current, s.pids.limit), (3, 0));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
