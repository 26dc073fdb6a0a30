//! linux.resources landing in the cgroup files (read from the host), and cgroup placement.
//! This host is hybrid (v1 controllers under /sys/fs/cgroup/<ctrl>); a pure v2 host is handled too.

use runtime_tests::{cgroup_controller_dir, cgroup_dirs, read_trim, setup};
use serde_json::json;
use std::fs;
use std::time::Duration;

#[test]
fn memory_pids_cpu_limits_land_in_cgroup_files() {
    let t = setup!("cgroup-limits");
    let b = t
        .bundle()
        .set(
            "/linux/resources",
            json!({
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": 67108864},
                "pids": {"limit": 42},
                "cpu": {"shares": 512, "quota": 50000, "period": 100000}
            }),
        )
        .args(&["sleep", "1000"]);
    t.create(&b);
    let (mem, v1) = cgroup_controller_dir("memory", &b.cgroup);
    if v1 {
        assert_eq!(read_trim(&mem.join("memory.limit_in_bytes")), "67108864");
        let (pids, _) = cgroup_controller_dir("pids", &b.cgroup);
        assert_eq!(read_trim(&pids.join("pids.max")), "42");
        let (cpu, _) = cgroup_controller_dir("cpu", &b.cgroup);
        assert_eq!(read_trim(&cpu.join("cpu.shares")), "512");
        assert_eq!(read_trim(&cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read_trim(&cpu.join("cpu.cfs_period_us")), "100000");
    } else {
        assert_eq!(read_trim(&mem.join("memory.max")), "67108864");
        assert_eq!(read_trim(&mem.join("pids.max")), "42");
        assert_eq!(read_trim(&mem.join("cpu.max")), "50000 100000");
        // runc's shares->weight conversion: 1 + ((shares - 2) * 9999) / 262142
        assert_eq!(read_trim(&mem.join("cpu.weight")), "20");
    }
}

#[test]
fn container_is_placed_in_its_cgroup_path() {
    let t = setup!("cgroup-path");
    let b = t.bundle().args(&["sleep", "1000"]);
    t.create(&b);
    let pid = t.pid(&b.id);
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup of init");
    let want = format!("/{}", b.cgroup);
    for ctrl in ["memory", "pids", "cpu", "devices", "freezer"] {
        let (_, v1) = cgroup_controller_dir(ctrl, &b.cgroup);
        let line = cg
            .lines()
            .find(|l| {
                if v1 {
                    l.split(':')
                        .nth(1)
                        .is_some_and(|c| c.split(',').any(|x| x == ctrl))
                } else {
                    l.starts_with("0::")
                }
            })
            .unwrap_or_else(|| panic!("no {ctrl} line in {cg}"));
        assert!(line.ends_with(&want), "{ctrl}: {line}, want {want}");
    }
    let dirs = cgroup_dirs(&b.cgroup);
    assert!(!dirs.is_empty(), "no cgroup directory for {}", b.cgroup);
    let (mem, _) = cgroup_controller_dir("memory", &b.cgroup);
    let procs = read_trim(&mem.join("cgroup.procs"));
    assert!(
        procs.lines().any(|p| p == pid.to_string()),
        "init {pid} not in {}: {procs}",
        mem.display()
    );
}

#[test]
fn pids_limit_is_enforced() {
    let t = setup!("cgroup-pids-enforced");
    // Try to start 8 background sleeps under pids.max=5; count from the host.
    let b = t
        .bundle()
        .set("/linux/resources/pids", json!({"limit": 5}))
        .sh("for i in 1 2 3 4 5 6 7 8; do sleep 1000 & done 2>/dev/null; echo spawned; exec sleep 1000");
    let c = t.create(&b);
    t.start(&b.id);
    // busybox sh exits when a fork fails ("can't fork"); otherwise it prints "spawned".
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !c.stdout_now().contains("spawned")
        && t.rt.status(&b.id) != "stopped"
        && std::time::Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (pids, v1) = cgroup_controller_dir("pids", &b.cgroup);
    assert_eq!(read_trim(&pids.join("pids.max")), "5");
    let current: u32 = read_trim(&pids.join("pids.current"))
        .parse()
        .expect("pids.current is a number");
    assert!(current <= 5, "pids.current = {current} with pids.max = 5");
    let events = read_trim(&pids.join("pids.events"));
    let max_hits: u64 = events
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        max_hits > 0,
        "no fork was refused (pids.events: {events:?}, v1={v1})"
    );
}

#[test]
fn memory_limit_is_enforced() {
    let t = setup!("cgroup-mem-enforced");
    // 16 MiB limit (this host has no swap): allocating 64 MiB in a shell variable gets the shell OOM-killed.
    let b = t
        .bundle()
        .set("/linux/resources/memory", json!({"limit": 16777216}))
        .sh("x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived ${#x}");
    let o = t.run(&b);
    assert!(
        !o.stdout.contains("survived 67108864"),
        "allocated 64 MiB under a 16 MiB limit: {o:?}"
    );
    assert_ne!(o.code, Some(0), "expected an OOM kill, got {o:?}");
}

#[test]
fn cpuset_and_update_visible() {
    let t = setup!("cgroup-cpuset");
    let b = t
        .bundle()
        .set("/linux/resources/cpu", json!({"cpus": "0", "mems": "0"}))
        .args(&["sleep", "1000"]);
    t.create(&b);
    // Same file name in v1 and v2 (v2: cpuset.cpus holds the requested set).
    let (cs, _) = cgroup_controller_dir("cpuset", &b.cgroup);
    assert_eq!(read_trim(&cs.join("cpuset.cpus")), "0");
    let pid = t.pid(&b.id);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_string();
    assert_eq!(allowed, "0", "init's affinity");
    // The cgroup is gone after delete (the Ctx leak check verifies the same at drop).
    t.rt.cmd(&["delete", "--force", &b.id]).ok();
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while !cgroup_dirs(&b.cgroup).is_empty() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(cgroup_dirs(&b.cgroup).is_empty(), "cgroup survived delete");
}

#[test]
fn update_changes_a_running_container() {
    let t = setup!("cgroup-update");
    let b = t.bundle().args(&["sleep", "1000"]);
    t.create(&b);
    t.start(&b.id);
    t.rt.cmd(&[
        "update",
        "--memory",
        "128m",
        "--pids-limit",
        "77",
        "--cpu-share",
        "300",
        &b.id,
    ])
    .ok();
    let (mem, v1) = cgroup_controller_dir("memory", &b.cgroup);
    if v1 {
        assert_eq!(
            read_trim(&mem.join("memory.limit_in_bytes")),
            (128u64 << 20).to_string()
        );
        let (pids, _) = cgroup_controller_dir("pids", &b.cgroup);
        assert_eq!(read_trim(&pids.join("pids.max")), "77");
        let (cpu, _) = cgroup_controller_dir("cpu", &b.cgroup);
        assert_eq!(read_trim(&cpu.join("cpu.shares")), "300");
    } else {
        assert_eq!(
            read_trim(&mem.join("memory.max")),
            (128u64 << 20).to_string()
        );
        assert_eq!(read_trim(&mem.join("pids.max")), "77");
    }
    // --resources FILE, as containerd and Podman pass it.
    let res = t.scratch().join("res.json");
    fs::write(&res, r#"{"pids":{"limit":33}}"#).expect("write resources");
    t.rt.cmd(&[
        "update",
        "--resources",
        res.to_str().expect("utf8 path"),
        &b.id,
    ])
    .ok();
    let (pids, _) = cgroup_controller_dir("pids", &b.cgroup);
    assert_eq!(read_trim(&pids.join("pids.max")), "33");
    // The other values stay.
    if v1 {
        assert_eq!(
            read_trim(&mem.join("memory.limit_in_bytes")),
            (128u64 << 20).to_string()
        );
    }
}
