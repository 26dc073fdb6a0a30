//! What a container holds, from the kernel's own counters: cgroup files (memory, pids), the
//! processes' /proc entries (PSS, fds, locked memory, private writable mappings), its network
//! namespace's socket counts, its devpts and the host's lock table.

use std::collections::HashMap;

use super::{Param, PAGE};
use crate::cgroups::Cgroup;

/// One beancounter's usage: held now, the highest the kernel recorded (when it records one)
/// and the refusals it counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub held: u64,
    pub maxheld: Option<u64>,
    pub failcnt: u64,
}

fn num(s: Option<String>) -> Option<u64> {
    s.and_then(|v| v.trim().parse().ok())
}

/// A `key value` line's value from a flat keyed file (pids.events, memory.events, memory.stat).
fn keyed(s: Option<String>, key: &str) -> Option<u64> {
    s?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Sum of a `Name:   N kB` field of /proc/PID/<file> over `pids`, in bytes.
fn sum_kb(pids: &[i32], file: &str, field: &str) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/{file}")).ok())
        .filter_map(|s| {
            s.lines().find_map(|l| {
                let rest = l.strip_prefix(field)?.trim_start_matches(':').trim();
                rest.trim_end_matches("kB").trim().parse::<u64>().ok()
            })
        })
        .sum::<u64>()
        * 1024
}

/// Private writable mappings (`rw-p`) of `pids`, in bytes: what OpenVZ's privvmpages counts.
fn private_writable(pids: &[i32]) -> u64 {
    let mut total = 0;
    for p in pids {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{p}/maps")) else {
            continue;
        };
        for l in maps.lines() {
            let mut it = l.split_whitespace();
            let (Some(range), Some(perms)) = (it.next(), it.next()) else {
                continue;
            };
            if !perms.starts_with("rw") || !perms.ends_with('p') {
                continue;
            }
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    total += b.saturating_sub(a);
                }
            }
        }
    }
    total
}

fn open_fds(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
        .map(|d| d.count() as u64)
        .sum()
}

/// POSIX and flock locks held by `pids` (/proc/locks lists host PIDs).
fn locks(pids: &[i32]) -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/locks") else {
        return 0;
    };
    s.lines()
        .filter(|l| !l.contains("->")) // blocked waiters are not held locks
        .filter_map(|l| l.split_whitespace().nth(4)?.parse::<i32>().ok())
        .filter(|p| pids.contains(p))
        .count() as u64
}

/// Pending signals queued to `pids` (each set bit of SigPnd/ShdPnd).
fn pending_signals(pids: &[i32]) -> u64 {
    let mut n = 0;
    for p in pids {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/status")) else {
            continue;
        };
        for l in s.lines() {
            if let Some(v) = l
                .strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
            {
                n += u64::from_str_radix(v.trim(), 16)
                    .map(|m| m.count_ones() as u64)
                    .unwrap_or(0);
            }
        }
    }
    n
}

/// From /proc/PID/net/sockstat (the init's network namespace): TCP sockets in use and all
/// sockets in use (both counted per namespace; the `mem` figures there are host-wide).
fn sockstat(init: i32) -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{init}/net/sockstat")) else {
        return (0, 0);
    };
    let field = |line: &str, key: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.iter()
                    .position(|x| *x == key)
                    .and_then(|i| f.get(i + 1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    };
    let tcp = field("TCP:", "inuse");
    let all = field("sockets:", "used");
    (tcp, all)
}

/// ptys open on the container's own devpts (entries of its /dev/pts other than ptmx).
fn ptys(init: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{init}/root/dev/pts"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count() as u64
        })
        .unwrap_or(0)
}

/// SysV shared memory in the container's IPC namespace, in bytes. /proc/sysvipc shows the
/// reader's namespace, so a short-lived child joins the container's and reads it.
fn shm_bytes(init: i32) -> u64 {
    let ns = format!("/proc/{init}/ns/ipc");
    if std::fs::read_link(&ns).ok() == std::fs::read_link("/proc/self/ns/ipc").ok() {
        return read_shm();
    }
    let Ok((r, w)) = nix::unistd::pipe() else {
        return 0;
    };
    // SAFETY: single-threaded caller; the child only does setns, a read and _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(r);
            let total = std::fs::File::open(&ns)
                .ok()
                .and_then(|f| nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWIPC).ok())
                .map(|_| read_shm())
                .unwrap_or(0);
            let _ = nix::unistd::write(&w, &total.to_le_bytes());
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(w);
            let mut b = [0u8; 8];
            let got = nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&r), &mut b).unwrap_or(0);
            let _ = nix::sys::wait::waitpid(child, None);
            if got == 8 {
                u64::from_le_bytes(b)
            } else {
                0
            }
        }
        Err(_) => 0,
    }
}

fn read_shm() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/sysvipc/shm") else {
        return 0;
    };
    s.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .sum()
}

/// Usage of every beancounter of a container whose processes are `pids` (host PIDs, the
/// init first) in `cg`.
pub fn measure(cg: &Cgroup, pids: &[i32], init: i32) -> HashMap<Param, Usage> {
    let v2 = cg.is_v2();
    let mem = |f: &str| cg.read_file("memory", f);
    let mut out = HashMap::new();
    let mut put = |p: Param, held: u64, maxheld: Option<u64>, failcnt: u64| {
        out.insert(
            p,
            Usage {
                held,
                maxheld,
                failcnt,
            },
        );
    };
    let pages = |b: u64| b.div_ceil(PAGE);

    // numproc: pids.current / pids.peak / pids.events max
    let procs = num(cg.read_file("pids", "pids.current")).unwrap_or(pids.len() as u64);
    put(
        Param::Numproc,
        procs,
        num(cg.read_file("pids", "pids.peak")),
        keyed(cg.read_file("pids", "pids.events"), "max").unwrap_or(0),
    );

    // physpages: the processes' proportional set size, so pages shared between containers
    // are split between them; maxheld/failcnt from the memory controller.
    let pss = sum_kb(pids, "smaps_rollup", "Pss");
    let (mem_max, mem_fail) = if v2 {
        (
            num(mem("memory.peak")),
            keyed(mem("memory.events"), "max").unwrap_or(0),
        )
    } else {
        (
            num(mem("memory.max_usage_in_bytes")),
            num(mem("memory.failcnt")).unwrap_or(0),
        )
    };
    let phys = pss / PAGE;
    put(
        Param::Physpages,
        phys,
        mem_max.map(pages).map(|m| m.max(phys)),
        mem_fail,
    );

    // swappages
    let (swap, swap_fail) = if v2 {
        (
            num(mem("memory.swap.current")).unwrap_or(0),
            keyed(mem("memory.swap.events"), "max").unwrap_or(0),
        )
    } else {
        let memsw = num(mem("memory.memsw.usage_in_bytes"));
        let usage = num(mem("memory.usage_in_bytes"));
        (
            memsw
                .zip(usage)
                .map(|(a, b)| a.saturating_sub(b))
                .unwrap_or(0),
            num(mem("memory.memsw.failcnt")).unwrap_or(0),
        )
    };
    put(Param::Swappages, pages(swap), None, swap_fail);

    // kmemsize: the memory controller's kernel memory
    if v2 {
        let st = mem("memory.stat");
        let k = keyed(st.clone(), "kernel").or_else(|| {
            Some(keyed(st.clone(), "slab").unwrap_or(0) + keyed(st, "kernel_stack").unwrap_or(0))
        });
        put(Param::Kmemsize, k.unwrap_or(0), None, 0);
    } else {
        put(
            Param::Kmemsize,
            num(mem("memory.kmem.usage_in_bytes")).unwrap_or(0),
            num(mem("memory.kmem.max_usage_in_bytes")),
            num(mem("memory.kmem.failcnt")).unwrap_or(0),
        );
    }

    let locked = sum_kb(pids, "status", "VmLck");
    put(Param::Lockedpages, pages(locked), None, 0);
    let privvm = private_writable(pids);
    put(Param::Privvmpages, pages(privvm), None, 0);
    put(Param::Shmpages, pages(shm_bytes(init)), None, 0);
    put(Param::Vmguarpages, pages(privvm), None, 0);
    put(Param::Oomguarpages, phys + pages(swap), None, 0);
    let (tcp, socks) = sockstat(init);
    put(Param::Numtcpsock, tcp, None, 0);
    put(Param::Numothersock, socks.saturating_sub(tcp), None, 0);
    // The kernel counts the container's socket buffer memory as one figure (send and receive
    // together): it is shown under tcpsndbuf; tcprcvbuf and dgramrcvbuf have no counter.
    let (sock_mem, sock_max, sock_fail) = if v2 {
        (keyed(mem("memory.stat"), "sock").unwrap_or(0), None, 0)
    } else {
        (
            num(mem("memory.kmem.tcp.usage_in_bytes")).unwrap_or(0),
            num(mem("memory.kmem.tcp.max_usage_in_bytes")),
            num(mem("memory.kmem.tcp.failcnt")).unwrap_or(0),
        )
    };
    put(Param::Tcpsndbuf, sock_mem, sock_max, sock_fail);
    put(Param::Tcprcvbuf, 0, None, 0);
    put(Param::Dgramrcvbuf, 0, None, 0);
    put(Param::Othersockbuf, 0, None, 0);
    put(Param::Numflock, locks(pids), None, 0);
    put(Param::Numpty, ptys(init), None, 0);
    put(Param::Numsiginfo, pending_signals(pids), None, 0);
    put(Param::Numfile, open_fds(pids), None, 0);
    let dcache = if v2 {
        keyed(mem("memory.stat"), "slab_reclaimable").unwrap_or(0)
    } else {
        0
    };
    put(Param::Dcachesize, dcache, None, 0);
    put(Param::Numiptent, 0, None, 0);
    out
}
