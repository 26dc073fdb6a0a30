//! OpenVZ beancounters (issue 4): io.runvz.* annotations enforced by the kernel, the
//! `runvz beancounters` table, and `runvz set` on a running container. runvz-only: runc has no
//! OpenVZ semantics (it ignores the annotations), so these tests say SKIP for other runtimes.
//! Each test drives `ubtool` (hack/tools/ubtool.c, built into the test rootfs) inside the
//! container and checks the kernel's own counters from the host.

use runtime_tests::{cgroup_controller_dir, note, read_trim, setup, Bundle, Ctx};
use serde_json::{json, Value};
use std::fs;
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

macro_rules! runvz_only {
    ($t:expr, $name:expr) => {
        if !$t.rt.is_runvz() {
            note(&format!("SKIP {}: runvz-only (OpenVZ beancounters are runvz's extension; runc ignores io.runvz.* annotations)", $name));
            return;
        }
        if !runtime_tests::rootfs().join("bin/ubtool").exists() {
            note(&format!("SKIP {}: no bin/ubtool in the rootfs (run hack/build-bundle)", $name));
            return;
        }
    };
}

fn with_annotations(b: Bundle, ann: Value) -> Bundle {
    b.set("/annotations", ann)
}

/// The beancounter rows of one container, by resource name.
fn table(t: &Ctx, id: &str) -> std::collections::HashMap<String, Value> {
    let o = t.rt.cmd(&["beancounters", "--format", "json", id]).ok();
    let v = o.json();
    v[0]["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("no resources in {v}"))
        .iter()
        .map(|r| (r["resource"].as_str().unwrap_or("").to_string(), r.clone()))
        .collect()
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// Create + start `b`, wait for `needle` in its output, return the output so far.
fn start_and_wait(t: &Ctx, b: &Bundle, needle: &str) -> String {
    let o = t.create(b);
    t.start(&b.id);
    let out = o.wait_stdout(needle, T);
    assert!(
        out.contains(needle),
        "no {needle:?} in the container's output: {out:?}"
    );
    out
}

#[test]
fn fork_bomb_is_stopped_at_numproc_and_counted() {
    let t = setup!("ub-numproc");
    runvz_only!(t, "ub-numproc");
    let b = with_annotations(t.bundle(), json!({"io.runvz.ub.numproc": "20:20"}))
        .sh("ubtool fork 1000; ubtool fork 1000; echo done; exec sleep 1000");
    let out = start_and_wait(&t, &b, "done");
    let forked: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("forked ")?.trim().parse().ok())
        .collect();
    assert_eq!(forked.len(), 2, "output: {out}");
    assert!(
        forked.iter().all(|n| *n < 20),
        "more forks than numproc allows: {forked:?}"
    );
    let (pids, _) = cgroup_controller_dir("pids", &b.cgroup);
    assert_eq!(read_trim(&pids.join("pids.max")), "20");
    let row = &table(&t, &b.id)["numproc"];
    assert_eq!((u(row, "barrier"), u(row, "limit")), (20, 20));
    assert!(
        u(row, "failcnt") >= 2,
        "each bomb's refused fork counts: {row}"
    );
    assert!(
        u(row, "maxheld") >= 19 && u(row, "maxheld") <= 20,
        "maxheld at the limit: {row}"
    );
    // The host still forks.
    assert!(std::process::Command::new("true")
        .status()
        .expect("host fork")
        .success());
}

#[test]
fn memory_hog_is_held_at_physpages() {
    let t = setup!("ub-physpages");
    runvz_only!(t, "ub-physpages");
    let b = with_annotations(t.bundle(), json!({"io.runvz.ram": "32M"}))
        .sh("ubtool hog 256; echo hog-exit=$?; exec sleep 1000");
    let out = start_and_wait(&t, &b, "hog-exit=");
    assert!(
        !out.contains("hogged 256"),
        "the hog got all it asked for: {out}"
    );
    let (mem, v1) = cgroup_controller_dir("memory", &b.cgroup);
    if v1 {
        assert_eq!(
            read_trim(&mem.join("memory.limit_in_bytes")),
            (32u64 << 20).to_string()
        );
        let max: u64 = read_trim(&mem.join("memory.max_usage_in_bytes"))
            .parse()
            .unwrap_or(u64::MAX);
        assert!(max <= 32 << 20, "usage went past the limit: {max}");
    }
    let row = &table(&t, &b.id)["physpages"];
    assert_eq!((u(row, "barrier"), u(row, "limit")), (0, 8192));
    assert!(u(row, "failcnt") > 0, "refused charges are counted: {row}");
    assert!(u(row, "maxheld") <= 8192, "{row}");
}

#[test]
fn numpty_refuses_the_pty_past_the_limit() {
    let t = setup!("ub-numpty");
    runvz_only!(t, "ub-numpty");
    let b = with_annotations(t.bundle(), json!({"io.runvz.ub.numpty": "3"}))
        .sh("ubtool ptys 10; echo done; exec sleep 1000");
    let out = start_and_wait(&t, &b, "done");
    assert!(
        out.contains("opened 3 ptys ("),
        "4th pty not refused: {out}"
    );
    assert_eq!(u(&table(&t, &b.id)["numpty"], "limit"), 3);
}

#[test]
fn shmpages_refuses_a_segment_over_the_limit() {
    let t = setup!("ub-shmpages");
    runvz_only!(t, "ub-shmpages");
    // 256 pages = 1 MiB of SysV shm in the container's IPC namespace.
    let b = with_annotations(t.bundle(), json!({"io.runvz.ub.shmpages": "256"}))
        .sh("ubtool shm 524288; ubtool shm 2097152; cat /proc/sys/kernel/shmmax; echo done; exec sleep 1000");
    let out = start_and_wait(&t, &b, "done");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first().copied(), Some("shmget ok"), "{out}");
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.starts_with("shmget ") && *l != "shmget ok"),
        "2 MiB segment allowed: {out}"
    );
    assert_eq!(lines.get(2).copied(), Some("1048576"), "{out}");
    // The host's own limits are untouched.
    assert_ne!(
        read_trim(std::path::Path::new("/proc/sys/kernel/shmmax")),
        "1048576"
    );
}

#[test]
fn numfile_refuses_fd_past_the_limit() {
    let t = setup!("ub-numfile");
    runvz_only!(t, "ub-numfile");
    let b = with_annotations(t.bundle(), json!({"io.runvz.ub.numfile": "64"}))
        .sh("ubtool fds 1000; echo done; exec sleep 1000");
    let out = start_and_wait(&t, &b, "done");
    assert!(out.contains("highest fd 63 (Too many open files)"), "{out}");
    let row = &table(&t, &b.id)["numfile"];
    assert_eq!((u(row, "barrier"), u(row, "limit")), (64, 64));
}

#[test]
fn held_values_match_what_the_container_uses() {
    let t = setup!("ub-held");
    runvz_only!(t, "ub-held");
    let b = with_annotations(t.bundle(), json!({"io.runvz.ub.numproc": "100"}))
        .sh("sleep 1000 & sleep 1000 & echo up; exec sleep 1000");
    start_and_wait(&t, &b, "up");
    std::thread::sleep(Duration::from_millis(200));
    let pids = runtime_tests::procs_in_cgroup(&b.cgroup);
    let pss_pages = || -> u64 {
        pids.iter()
            .filter_map(|p| fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
            .filter_map(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("Pss:")?
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
            })
            .sum::<u64>()
            / 4
    };
    // PSS moves while other containers map the same busybox pages: bracket the table's
    // reading between two of our own.
    let before = pss_pages();
    let tab = table(&t, &b.id);
    let after = pss_pages();
    assert_eq!(
        u(&tab["numproc"], "held"),
        pids.len() as u64,
        "pids {pids:?}"
    );
    let fds: u64 = pids
        .iter()
        .filter_map(|p| fs::read_dir(format!("/proc/{p}/fd")).ok())
        .map(|d| d.count() as u64)
        .sum();
    assert_eq!(u(&tab["numfile"], "held"), fds);
    let held = u(&tab["physpages"], "held");
    let (lo, hi) = (before.min(after), before.max(after));
    assert!(
        held + lo / 4 >= lo && held <= hi + hi / 4,
        "physpages held {held}, PSS before {before}, after {after} pages"
    );
    assert!(held > 0);
    for r in tab.values() {
        assert!(u(r, "maxheld") >= u(r, "held"), "{r}");
    }
}

#[test]
fn shared_file_pages_are_split_between_containers() {
    let t = setup!("ub-pss");
    runvz_only!(t, "ub-pss");
    // 16 MiB = 4096 pages, mapped by both containers through a read-only bind mount.
    let data = t.scratch().join("shared.bin");
    fs::write(&data, vec![7u8; 16 << 20]).expect("write shared file");
    let mk = || {
        t.bundle()
            .mount(json!({"destination": "/shared.bin", "type": "bind", "source": data, "options": ["rbind", "ro"]}))
            .set("/annotations", json!({"io.runvz.ub.numproc": "100"}))
            .args(&["ubtool", "map", "/shared.bin"])
    };
    let (a, b) = (mk(), mk());
    start_and_wait(&t, &a, "mapped 16777216");
    start_and_wait(&t, &b, "mapped 16777216");
    let ha = u(&table(&t, &a.id)["physpages"], "held");
    let hb = u(&table(&t, &b.id)["physpages"], "held");
    // Each container holds about half of the file (plus a little of its own), and together
    // about the file once — not twice.
    assert!(
        ha + hb >= 4096 && ha + hb < 4096 + 1024,
        "sum {} (a {ha}, b {hb})",
        ha + hb
    );
    assert!(ha >= 2048 && hb >= 2048, "a {ha}, b {hb}");
}

#[test]
fn set_changes_a_running_container_at_once() {
    let t = setup!("ub-set");
    runvz_only!(t, "ub-set");
    let b = with_annotations(
        t.bundle(),
        json!({"io.runvz.ub.numproc": "100:120", "io.runvz.cpuunits": "1000"}),
    )
    .sh("echo up; exec sleep 1000");
    start_and_wait(&t, &b, "up");
    let (pids, v1) = cgroup_controller_dir("pids", &b.cgroup);
    assert_eq!(read_trim(&pids.join("pids.max")), "120");
    t.rt.cmd(&[
        "set",
        &b.id,
        "--numproc",
        "50:60",
        "--cpuunits",
        "500",
        "--ram",
        "64M",
    ])
    .ok();
    assert_eq!(read_trim(&pids.join("pids.max")), "60");
    if v1 {
        let (cpu, _) = cgroup_controller_dir("cpu", &b.cgroup);
        assert_eq!(read_trim(&cpu.join("cpu.shares")), "512");
        let (mem, _) = cgroup_controller_dir("memory", &b.cgroup);
        assert_eq!(
            read_trim(&mem.join("memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
    }
    let tab = table(&t, &b.id);
    assert_eq!(
        (u(&tab["numproc"], "barrier"), u(&tab["numproc"], "limit")),
        (50, 60)
    );
    assert_eq!(u(&tab["physpages"], "limit"), 16384);
    // A bad value changes nothing and names the key.
    t.rt.cmd(&["set", &b.id, "--numproc", "70:60"])
        .fails()
        .stderr_has("io.runvz.ub.numproc");
    assert_eq!(read_trim(&pids.join("pids.max")), "60");
}

#[test]
fn bad_annotations_are_refused_and_nothing_is_left() {
    let t = setup!("ub-bad");
    runvz_only!(t, "ub-bad");
    for (k, v, want) in [
        ("io.runvz.ub.numproc", "10K", "io.runvz.ub.numproc"),
        ("io.runvz.ub.numproc", "200:100", "above limit"),
        ("io.runvz.ub.numprocs", "1", "unknown beancounter"),
        ("io.runvz.cpuunit", "1000", "unknown io.runvz annotation"),
        ("io.runvz.ram", "lots", "io.runvz.ram"),
    ] {
        let b = with_annotations(t.bundle(), json!({ k: v })).args(&["true"]);
        let o = t.create_raw(&b, &b.id, &[]).fails().stderr_has(want);
        assert_eq!(
            o.stderr.trim().lines().count(),
            1,
            "one line: {:?}",
            o.stderr
        );
        assert!(t.rt.state(&b.id).is_err(), "{k}={v} left a container");
    }
    // shmpages needs the container's own IPC namespace.
    let b = with_annotations(t.bundle(), json!({"io.runvz.ub.shmpages": "256"}))
        .without_namespaces(&["ipc"])
        .args(&["true"]);
    t.create_raw(&b, &b.id, &[])
        .fails()
        .stderr_has("ipc namespace");
}
