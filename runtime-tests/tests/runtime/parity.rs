//! runc parity of the remaining commands and flags callers use: exec's --cap,
//! --no-new-privs, --preserve-fds, --cgroup, -g; kill --all; delete --force of a paused and
//! a stopped container; --log-format json; ps with ps(1) args; update from stdin and runc's
//! resource flags; features (checkpoint advertised); Differential.

use runtime_tests::{cgroup_controller_dir, note, procs_in_cgroup, read_trim, setup};
use serde_json::{json, Value};
use std::fs;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

fn running(t: &runtime_tests::Ctx) -> runtime_tests::Bundle {
    let b = t.bundle().args(&["sleep", "1000"]);
    t.create(&b);
    t.start(&b.id);
    b
}

fn status_field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or("")
        .trim()
        .to_string()
}

#[test]
fn exec_cap_adds_a_capability() {
    let t = setup!("exec-cap");
    let b = running(&t);
    let eff = |extra: &[&str]| {
        let mut a = vec!["exec"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&[&b.id, "cat", "/proc/self/status"]);
        let o = t.rt.cmd(&a).ok();
        u64::from_str_radix(&status_field(&o.stdout, "CapEff:"), 16).expect("CapEff")
    };
    const NET_ADMIN: u64 = 1 << 12;
    assert_eq!(
        eff(&[]) & NET_ADMIN,
        0,
        "the container has no CAP_NET_ADMIN"
    );
    assert_ne!(
        eff(&["--cap", "CAP_NET_ADMIN"]) & NET_ADMIN,
        0,
        "--cap added it"
    );
}

#[test]
fn exec_no_new_privs_flag() {
    let t = setup!("exec-nnp");
    let b = t
        .bundle()
        .set("/process/noNewPrivileges", json!(false))
        .args(&["sleep", "1000"]);
    t.create(&b);
    t.start(&b.id);
    let nnp = |extra: &[&str]| {
        let mut a = vec!["exec"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&[&b.id, "cat", "/proc/self/status"]);
        status_field(&t.rt.cmd(&a).ok().stdout, "NoNewPrivs:")
    };
    assert_eq!(nnp(&[]), "0");
    assert_eq!(nnp(&["--no-new-privs"]), "1");
    // a container with noNewPrivileges passes it on to exec'd processes
    let c = running(&t);
    let o = t.rt.cmd(&["exec", &c.id, "cat", "/proc/self/status"]).ok();
    assert_eq!(status_field(&o.stdout, "NoNewPrivs:"), "1");
}

#[test]
fn exec_preserve_fds_passes_extra_fds() {
    let t = setup!("exec-preserve-fds");
    let b = running(&t);
    let f = t.scratch().join("fd3.txt");
    fs::write(&f, "through-fd-3\n").expect("write");
    let script = format!(
        "exec 3<{}; exec {} --root {} exec --preserve-fds 1 {} sh -c 'cat <&3'",
        f.display(),
        t.rt.bin.display(),
        t.rt.root.display(),
        b.id
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("sh");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "through-fd-3");
    // without --preserve-fds the fd does not reach the process
    let script = script.replace("--preserve-fds 1 ", "");
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("sh");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("through-fd-3"),
        "{out:?}"
    );
}

#[test]
fn exec_cgroup_joins_an_existing_sub_cgroup() {
    let t = setup!("exec-cgroup");
    let b = running(&t);
    let (mem, _) = cgroup_controller_dir("memory", &b.cgroup);
    let (pids, v1) = cgroup_controller_dir("pids", &b.cgroup);
    for d in [&mem, &pids] {
        fs::create_dir_all(d.join("sub")).expect("mkdir sub-cgroup");
    }
    let o =
        t.rt.cmd(&[
            "exec",
            "--cgroup",
            "memory:sub",
            "--cgroup",
            "pids:sub",
            &b.id,
            "cat",
            "/proc/self/cgroup",
        ])
        .ok();
    if v1 {
        for c in ["memory", "pids"] {
            let line = o
                .stdout
                .lines()
                .find(|l| l.contains(&format!(":{c}:")))
                .unwrap_or("");
            assert!(
                line.ends_with(&format!("{}/sub", b.cgroup)),
                "{c}: {}",
                o.stdout
            );
        }
    } else {
        assert!(o.stdout.trim().ends_with("/sub"), "{}", o.stdout);
    }
    // a sub-cgroup that does not exist is an error, not a silent fallback
    t.rt.cmd(&["exec", "--cgroup", "memory:nope", &b.id, "true"])
        .fails();
    // delete --force removes the sub-cgroups with the container (the Ctx checks leaks)
    t.rt.cmd(&["delete", "--force", &b.id]).ok();
    assert!(!mem.exists() && !pids.exists(), "cgroup left after delete");
}

#[test]
fn exec_additional_gids() {
    let t = setup!("exec-gids");
    let b = running(&t);
    let o =
        t.rt.cmd(&[
            "exec",
            "--user",
            "1000:1000",
            "-g",
            "10",
            "-g",
            "20",
            &b.id,
            "id",
            "-G",
        ])
        .ok();
    assert_eq!(o.stdout.trim(), "1000 10 20");
}

#[test]
fn kill_all_signals_every_process() {
    let t = setup!("kill-all");
    // The init ignores TERM; its children would not die with a plain `kill` of the init.
    let b = t
        .bundle()
        .sh("trap '' TERM; sleep 1000 & sleep 1000 & echo ready; wait");
    let c = t.create(&b);
    t.start(&b.id);
    c.wait_stdout("ready", T);
    let end = Instant::now() + T;
    while procs_in_cgroup(&b.cgroup).len() < 3 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(procs_in_cgroup(&b.cgroup).len(), 3, "init and two sleeps");
    t.rt.cmd(&["kill", "--all", &b.id, "KILL"]).ok();
    let end = Instant::now() + T;
    while !procs_in_cgroup(&b.cgroup).is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        procs_in_cgroup(&b.cgroup).is_empty(),
        "kill --all left processes"
    );
    assert_eq!(t.rt.wait_status(&b.id, "stopped", T), "stopped");
    t.rt.cmd(&["delete", &b.id]).ok();
}

#[test]
fn delete_force_of_paused_and_stopped_containers() {
    let t = setup!("delete-force-states");
    let p = running(&t);
    t.rt.cmd(&["pause", &p.id]).ok();
    assert_eq!(t.rt.status(&p.id), "paused");
    t.rt.cmd(&["delete", &p.id]).fails();
    t.rt.cmd(&["delete", "--force", &p.id]).ok();
    assert!(
        t.rt.state(&p.id).is_err(),
        "paused container survived delete --force"
    );
    assert!(procs_in_cgroup(&p.cgroup).is_empty());
    let s = t.bundle().args(&["true"]);
    t.create(&s);
    t.start(&s.id);
    assert_eq!(t.rt.wait_status(&s.id, "stopped", T), "stopped");
    t.rt.cmd(&["delete", "--force", &s.id]).ok();
    assert!(t.rt.state(&s.id).is_err());
    // and of one that does not exist: --force succeeds (containerd's cleanup relies on it),
    // a plain delete fails
    t.rt.cmd(&["delete", "--force", "rt-test-no-such-container"])
        .ok();
    t.rt.cmd(&["delete", "rt-test-no-such-container"])
        .fails()
        .stderr_has("does not exist");
}

/// JSON log lines: every line an object with level, msg and time; the last is the error.
fn check_json_log(text: &str, want: &str) {
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in &lines {
        for k in ["level", "msg", "time"] {
            assert!(l[k].is_string(), "{k} missing: {l}");
        }
    }
    let last = lines.last().expect("a line");
    assert_eq!(last["level"], "error", "{last}");
    assert!(last["msg"].as_str().unwrap_or("").contains(want), "{last}");
}

#[test]
fn log_format_json_ends_with_the_error() {
    let t = setup!("log-json");
    let log = t.scratch().join("runtime.log");
    let logs = log.to_string_lossy().into_owned();
    t.rt.cmd(&[
        "--log",
        &logs,
        "--log-format",
        "json",
        "start",
        "rt-test-no-such-container",
    ])
    .fails();
    check_json_log(
        &fs::read_to_string(&log).unwrap_or_default(),
        "does not exist",
    );
    // without --log the lines go to stderr
    let o =
        t.rt.cmd(&["--log-format", "json", "kill", "rt-test-no-such-container"])
            .fails();
    check_json_log(&o.stderr, "does not exist");
}

#[test]
fn ps_passes_ps_args() {
    let t = setup!("ps-args");
    let b = running(&t);
    let o = t.rt.cmd(&["ps", &b.id, "-o", "pid,comm"]).ok();
    let mut lines = o.stdout.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, vec!["PID", "COMMAND"], "{}", o.stdout);
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 1, "only the container's process: {}", o.stdout);
    assert!(rows[0].trim_end().ends_with("sleep"), "{}", o.stdout);
    t.rt.cmd(&["ps", "--format", "json", "rt-test-no-such-container"])
        .fails();
}

#[test]
fn update_from_stdin_and_runc_flags() {
    let t = setup!("update-flags");
    let b = running(&t);
    t.rt.cmd_stdin(
        &["update", "--resources", "-", &b.id],
        br#"{"pids":{"limit":42}}"#,
    )
    .ok();
    let (pids, v1) = cgroup_controller_dir("pids", &b.cgroup);
    assert_eq!(read_trim(&pids.join("pids.max")), "42");
    t.rt.cmd(&[
        "update",
        "--cpu-period",
        "100000",
        "--cpu-quota",
        "50000",
        "--memory-reservation",
        "64m",
        "--cpuset-cpus",
        "0",
        &b.id,
    ])
    .ok();
    if v1 {
        let (cpu, _) = cgroup_controller_dir("cpu", &b.cgroup);
        assert_eq!(read_trim(&cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read_trim(&cpu.join("cpu.cfs_period_us")), "100000");
        let (mem, _) = cgroup_controller_dir("memory", &b.cgroup);
        assert_eq!(
            read_trim(&mem.join("memory.soft_limit_in_bytes")),
            (64u64 << 20).to_string()
        );
    } else {
        assert_eq!(read_trim(&pids.join("cpu.max")), "50000 100000");
    }
    let (cs, _) = cgroup_controller_dir("cpuset", &b.cgroup);
    assert_eq!(read_trim(&cs.join("cpuset.cpus")), "0");
    // a malformed value is refused and changes nothing
    t.rt.cmd(&["update", "--memory", "lots", &b.id]).fails();
    t.rt.cmd_stdin(&["update", "--resources", "-", &b.id], b"{not json")
        .fails();
    assert_eq!(read_trim(&pids.join("pids.max")), "42");
}

#[test]
fn features_is_true_to_the_runtime() {
    let t = setup!("features-true");
    let f = t.rt.cmd(&["features"]).ok().json();
    let sc = &f["linux"]["seccomp"];
    assert_eq!(sc["enabled"], true, "{f}");
    for a in [
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_LOG",
    ] {
        assert!(
            sc["actions"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x == a)),
            "{a}: {sc}"
        );
    }
    let hooks = f["hooks"].as_array().cloned().unwrap_or_default();
    for h in [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ] {
        assert!(hooks.iter().any(|x| x == h), "{h}: {f}");
    }
    if t.rt.is_runvz() {
        // checkpoint/restore (CRIU): advertised as runc 1.2 does, and the commands exist
        // (Podman probes `checkpoint --help`).
        assert_eq!(
            f["annotations"]["org.opencontainers.runc.checkpoint.enabled"],
            json!("true"),
            "{f}"
        );
        assert_eq!(
            f["linux"]["seccomp"]["supportedFlags"]
                .as_array()
                .map(|v| v.len()),
            Some(2)
        );
        t.rt.cmd(&["checkpoint", "--help"]).ok();
        t.rt.cmd(&["restore", "--help"]).ok();
    } else {
        note("features-true: runc 1.1.5 has checkpoint (not checked)");
    }
}
