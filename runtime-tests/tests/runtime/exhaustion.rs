//! Resource exhaustion inside a container leaves the host unharmed (issue 9): a fork bomb, a
//! memory hog, pty and fd exhaustion and a disk filler, each stopped at its limit, counted where
//! the kernel counts, bounded in time and cleaned up. runvz gets the OpenVZ beancounter
//! annotations; other runtimes the plain OCI limit that means the same where one exists.

use runtime_tests::{cgroup_controller_dir, note, rootfs, rootfs_has_tool, setup, Bundle, Ctx};
use serde_json::{json, Value};
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// The host still forks, opens ptys and answers runtime calls promptly.
#[track_caller]
fn assert_host_unharmed(t: &Ctx) {
    let t0 = Instant::now();
    for _ in 0..20 {
        let st = Command::new("true").status().expect("the host cannot fork");
        assert!(st.success(), "the host cannot run true");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "20 forks on the host took {:?}",
        t0.elapsed()
    );
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/ptmx")
        .expect("the host cannot open a pty");
    t.rt.cmd(&["list"]).ok();
}

/// The beancounter row `name` of container `id` (runvz only).
fn ub_row(t: &Ctx, id: &str, name: &str) -> Value {
    let v =
        t.rt.cmd(&["beancounters", "--format", "json", id])
            .ok()
            .json();
    v[0]["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["resource"] == name).cloned())
        .unwrap_or_else(|| panic!("no {name} row in {v}"))
}

fn failcnt(row: &Value) -> u64 {
    row["failcnt"].as_u64().unwrap_or(0)
}

/// runvz: the beancounter annotation; others: the OCI equivalent set by `oci`.
fn limited(t: &Ctx, annotation: Value, oci: impl FnOnce(Bundle) -> Bundle) -> Bundle {
    if t.rt.is_runvz() {
        t.bundle().set("/annotations", annotation)
    } else {
        oci(t.bundle())
    }
}

/// Create + start, wait for `needle` in the output (bounded), return the output.
fn start_until(t: &Ctx, b: &Bundle, needle: &str) -> String {
    let o = t.create(b);
    t.start(&b.id);
    let out = o.wait_stdout(needle, T);
    assert!(out.contains(needle), "no {needle:?} in {out:?}");
    out
}

#[test]
fn fork_bomb_is_held_at_numproc_and_the_host_forks() {
    let t = setup!("exhaust-forkbomb");
    let b = limited(&t, json!({"io.runvz.ub.numproc": "64:64"}), |b| {
        b.set("/linux/resources/pids", json!({"limit": 64}))
    })
    // The classic bomb; its forks fail at the limit and it keeps trying until deleted.
    .sh("echo bombing; b() { b | b & }; b; sleep 1000");
    start_until(&t, &b, "bombing");
    std::thread::sleep(Duration::from_secs(2));
    assert_host_unharmed(&t);
    let (pids, _) = cgroup_controller_dir("pids", &b.cgroup);
    let current: u64 = fs::read_to_string(pids.join("pids.current"))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(current <= 64, "{current} tasks in a cgroup limited to 64");
    let refused = fs::read_to_string(pids.join("pids.events"))
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(refused > 0, "the bomb never hit the limit (pids.events)");
    if t.rt.is_runvz() {
        let row = ub_row(&t, &b.id, "numproc");
        assert!(failcnt(&row) > 0, "numproc failcnt did not rise: {row}");
        note(&format!("fork bomb: numproc {row}"));
    }
    // Bounded: delete --force stops the bomb.
    let t0 = Instant::now();
    t.rt.cmd(&["delete", "--force", &b.id]).ok();
    note(&format!(
        "fork bomb: {} refused forks, {current} tasks held, deleted in {:?}",
        refused,
        t0.elapsed()
    ));
}

#[test]
fn memory_hog_is_oom_killed_inside_and_the_host_is_fine() {
    let t = setup!("exhaust-memhog");
    if !rootfs_has_tool("ubtool", "exhaust-memhog") {
        return;
    }
    let b = limited(&t, json!({"io.runvz.ram": "32M"}), |b| {
        b.set("/linux/resources/memory", json!({"limit": 32 << 20}))
    })
    .sh("ubtool hog 1024; echo hog-exit=$?; exec sleep 1000");
    let out = start_until(&t, &b, "hog-exit=");
    assert!(!out.contains("hogged 1024"), "the hog got 1 GiB: {out}");
    let (mem, v1) = cgroup_controller_dir("memory", &b.cgroup);
    if v1 {
        let oom = fs::read_to_string(mem.join("memory.oom_control")).unwrap_or_default();
        let kills: u64 = oom
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(kills > 0, "no OOM kill inside the container: {oom}");
        let fc: u64 = fs::read_to_string(mem.join("memory.failcnt"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0);
        assert!(fc > 0, "memory.failcnt did not rise");
    }
    if t.rt.is_runvz() {
        let row = ub_row(&t, &b.id, "physpages");
        assert!(failcnt(&row) > 0, "physpages failcnt did not rise: {row}");
    }
    assert_host_unharmed(&t);
    // The container itself lives on (only the hog was killed).
    assert_eq!(t.rt.status(&b.id), "running");
}

#[test]
fn pty_exhaustion_stops_at_numpty() {
    let t = setup!("exhaust-pty");
    if !rootfs_has_tool("ubtool", "exhaust-pty") {
        return;
    }
    // runc: devpts's own max= option is the pty limit.
    let b = limited(&t, json!({"io.runvz.ub.numpty": "4"}), |b| {
        b.edit(|c| {
            for m in c["mounts"].as_array_mut().expect("mounts") {
                if m["destination"] == "/dev/pts" {
                    m["options"]
                        .as_array_mut()
                        .expect("options")
                        .push(json!("max=4"));
                }
            }
        })
    })
    .sh("ubtool ptys 1000; echo done; exec sleep 1000");
    let out = start_until(&t, &b, "done");
    assert!(
        out.contains("opened 4 ptys ("),
        "openpty not refused at the limit of 4: {out}"
    );
    if t.rt.is_runvz() {
        // devpts refuses the pty itself; the kernel counts no failures for it.
        note(&format!(
            "pty exhaustion: numpty {} (failcnt stays 0: devpts's max= refuses without counting)",
            ub_row(&t, &b.id, "numpty")
        ));
    }
    assert_host_unharmed(&t);
}

#[test]
fn fd_exhaustion_stops_at_numfile() {
    let t = setup!("exhaust-fds");
    if !rootfs_has_tool("ubtool", "exhaust-fds") {
        return;
    }
    let b = limited(&t, json!({"io.runvz.ub.numfile": "64"}), |b| {
        b.set(
            "/process/rlimits",
            json!([{"type": "RLIMIT_NOFILE", "hard": 64, "soft": 64}]),
        )
    })
    .sh("ubtool fds 100000; echo done; exec sleep 1000");
    let out = start_until(&t, &b, "done");
    assert!(
        out.contains("highest fd 63 (Too many open files)"),
        "EMFILE not at the limit: {out}"
    );
    if t.rt.is_runvz() {
        // numfile is RLIMIT_NOFILE per process: the kernel refuses with EMFILE and counts
        // nothing, so failcnt stays 0 (runvz reports no number it cannot know).
        let row = ub_row(&t, &b.id, "numfile");
        assert_eq!(row["limit"].as_u64(), Some(64), "{row}");
        note(&format!("fd exhaustion: numfile {row}"));
    }
    assert_host_unharmed(&t);
}

#[test]
fn disk_filler_stops_at_the_tmpfs_size() {
    let t = setup!("exhaust-disk");
    let b = t
        .bundle()
        .mount(
            json!({"destination": "/mnt", "type": "tmpfs", "source": "tmpfs",
                      "options": ["size=4m"]}),
        )
        .sh(
            "dd if=/dev/zero of=/mnt/fill bs=64k count=4096 2>&1 | tail -n 3; echo dd-exit=$?; \
             echo root; echo x > /fill 2>&1; echo size=$(stat -c %s /mnt/fill)",
        );
    let t0 = Instant::now();
    let o = t.run(&b).ok();
    assert!(t0.elapsed() < T, "the filler ran {:?}", t0.elapsed());
    assert!(
        o.stdout.contains("No space left on device"),
        "the filler was not stopped: {}",
        o.stdout
    );
    let size: u64 = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("size="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(u64::MAX);
    assert!(size <= 4 << 20, "wrote {size} bytes into a 4 MiB tmpfs");
    assert!(
        !rootfs().join("fill").exists(),
        "the filler wrote through the read-only root into the shared rootfs"
    );
    assert_host_unharmed(&t);
}
