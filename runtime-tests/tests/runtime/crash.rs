//! Crash safety (issue 9): `create`, `exec`, `delete`, `update` and `set` killed with SIGKILL at
//! many points, then `delete --force` as containerd would call it, must leave nothing: no state
//! entry (or staging directory), no cgroup, no process, no mount; `state` in between answers with
//! valid JSON or a clean error. Against runc the leaks are reported, not failed on.

use runtime_tests::{default_config, leaks_for, note, rootfs, run_tag, setup, Runtime};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const POINTS: usize = 60;

/// Processes whose command line mentions `id` (a container init shows its `create` call).
fn procs_mentioning(id: &str) -> Vec<i32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if !zombie && String::from_utf8_lossy(&cmd).split('\0').any(|a| a == id) {
            out.push(pid);
        }
    }
    out
}

/// Remove what a runtime left (so the suite stays clean), also processes naming the container.
fn reap(id: &str, cgroup: &str, root: &std::path::Path) {
    for p in procs_mentioning(id) {
        // SAFETY: kill(2) on a pid with a valid signal number.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    runtime_tests::reap(id, cgroup, root);
}

#[test]
fn sigkill_during_create_then_delete_force_leaves_nothing() {
    let mut t = setup!("crash-create");
    // A state root of its own: runc's `list` fails while containers vanish under it, and this
    // test makes many vanish.
    t.rt.root = t.rt.root.with_extension("crash");
    let rt = &t.rt;
    let mk = |n: usize| {
        let id = format!("{}crash-{n}", run_tag());
        let cgroup = format!("rt-test/{id}");
        let dir = t.scratch().join(&id);
        std::fs::create_dir_all(&dir).expect("bundle dir");
        let mut cfg = default_config(&rootfs(), &format!("/{cgroup}"));
        cfg["process"]["args"] = serde_json::json!(["sleep", "1000"]);
        std::fs::write(dir.join("config.json"), cfg.to_string()).expect("config");
        (id, cgroup, dir)
    };
    let create = |id: &str, dir: &std::path::Path| {
        let mut c = Command::new(&rt.bin);
        c.args([
            "--root",
            rt.root.to_str().expect("utf8"),
            "create",
            "--bundle",
            dir.to_str().expect("utf8"),
            id,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
        c
    };
    // How long a whole create takes here.
    let mut dur = Duration::ZERO;
    for n in 0..3 {
        let (id, cgroup, dir) = mk(1000 + n);
        let t0 = Instant::now();
        let st = create(&id, &dir).status().expect("create");
        dur += t0.elapsed();
        assert!(st.success(), "calibration create failed");
        rt.cmd(&["delete", "--force", &id]).ok();
        reap(&id, &cgroup, &rt.root);
    }
    let full = dur / 3;
    let mut leaked = vec![];
    let mut found = 0;
    for k in 0..POINTS {
        let (id, cgroup, dir) = mk(k);
        let delay = full.mul_f64(1.3 * k as f64 / POINTS as f64);
        let mut child = create(&id, &dir).spawn().expect("spawn create");
        std::thread::sleep(delay);
        let pid = child.id() as i32;
        // Half the points kill the runtime alone, half its helpers too (its process group).
        let target = if k % 2 == 0 { pid } else { -pid };
        // SAFETY: kill(2) on our child (or its process group) with SIGKILL.
        unsafe { libc::kill(target, libc::SIGKILL) };
        let _ = child.wait();
        // (`delete --force` of a container that does not exist succeeds, as runc's does:
        // whether one was left is what the state root holds.)
        let existed = rt.root.join(&id).exists();
        let o = rt.cmd(&["delete", "--force", &id]);
        let acceptable =
            o.success() || o.stderr.contains("does not exist") || o.stderr.contains("not exist");
        if o.success() && existed {
            found += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
        let mut leaks = leaks_for(rt, &id, &cgroup);
        leaks.extend(
            procs_mentioning(&id)
                .into_iter()
                .map(|p| format!("process {p} (cmdline names the container)")),
        );
        let staging: Vec<String> = std::fs::read_dir(&rt.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!(".{id}.")))
            .collect();
        leaks.extend(staging.into_iter().map(|s| format!("staging dir {s}")));
        if !acceptable {
            leaks.push(format!("delete --force failed: {}", o.stderr.trim()));
        }
        if !leaks.is_empty() {
            leaked.push(format!(
                "point {k} (+{:?}, {}): {}",
                delay,
                if k % 2 == 0 { "runtime" } else { "group" },
                leaks.join("; ")
            ));
            reap(&id, &cgroup, &rt.root);
        }
    }
    note(&format!(
        "crash-create: {} killed at {POINTS} points over {:?}; {found} left a container for delete --force; leaks after it at {} of them",
        rt.name,
        full.mul_f64(1.3),
        leaked.len()
    ));
    for l in &leaked {
        note(&format!("  {l}"));
    }
    if rt.is_runvz() {
        // The points fall inside create: some before its record exists, most after.
        assert!(
            found > 0 && found < POINTS,
            "kill points missed create: {found} of {POINTS} left a container"
        );
        assert!(
            leaked.is_empty(),
            "runvz leaked at {} of {POINTS} kill points",
            leaked.len()
        );
    }
}

#[test]
fn parallel_calls_leave_consistent_state() {
    let mut t = setup!("concurrency");
    t.rt.root = t.rt.root.with_extension("concurrency");
    let rt = &t.rt;
    // 20 parallel creates of one ID: exactly one wins, the others say it exists.
    let same = t.bundle().args(&["sleep", "1000"]);
    same.save();
    let mut problems = vec![];
    if rt.is_runvz() {
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..20)
                .map(|_| s.spawn(|| rt.cmd(&["create", "--bundle", &same.dir_str(), &same.id])))
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        let wins = results.iter().filter(|o| o.success()).count();
        if wins != 1 {
            problems.push(format!("{wins} of 20 parallel creates of one ID succeeded"));
        }
        for o in results.iter().filter(|o| !o.success()) {
            if !o.stderr.contains("exists") {
                problems.push(format!(
                    "a losing create did not say the ID exists: {:?}",
                    o.stderr.trim()
                ));
            }
        }
        let winner = rt
            .state(&same.id)
            .ok()
            .and_then(|v| v["status"].as_str().map(String::from));
        if wins == 1 && winner.as_deref() != Some("created") {
            problems.push(format!("the winner is {winner:?}"));
        }
    } else {
        // runc 1.1.5 is vulnerable here: racing creates of one ID can delete the winner's state
        // and orphan its cgroup and init (seen in CI), so only runvz is raced on one ID.
        note("SKIP concurrency same-ID race for runc: runc 1.1.5 orphans a container when creates of one ID race");
        t.create(&same);
    }
    // 100 distinct containers through create/start/kill/delete in parallel, while state
    // and list are polled; none of those may fail.
    let bundles: Vec<_> = (0..100)
        .map(|_| t.bundle().args(&["sleep", "1000"]))
        .collect();
    for b in &bundles {
        b.save();
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failures = std::sync::Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let mut polls = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let l = rt.cmd(&["list", "--format", "json"]);
                if !l.success()
                    || serde_json::from_str::<serde_json::Value>(l.stdout.trim()).is_err()
                {
                    failures
                        .lock()
                        .expect("lock")
                        .push(format!("list failed: {}", l.stderr));
                }
                let st = rt.cmd(&["state", &same.id]);
                if !st.success() {
                    failures
                        .lock()
                        .expect("lock")
                        .push(format!("state failed: {}", st.stderr));
                }
                polls += 1;
            }
            polls
        });
        // All 100 at once (not in batches), as an engine restarting a host would.
        {
            let hs: Vec<_> = bundles
                .iter()
                .map(|b| {
                    s.spawn(|| {
                        let dir = b.dir_str();
                        for args in [
                            vec!["create", "--bundle", dir.as_str(), b.id.as_str()],
                            vec!["start", b.id.as_str()],
                            vec!["kill", b.id.as_str(), "KILL"],
                            vec!["delete", "--force", b.id.as_str()],
                        ] {
                            let o = rt.cmd(&args);
                            if !o.success() && args[0] != "kill" {
                                failures
                                    .lock()
                                    .expect("lock")
                                    .push(format!("{args:?}: {}", o.stderr.trim()));
                            }
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().expect("thread");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let polls = poller.join().expect("poller");
        note(&format!(
            "concurrency: {} list/state polls alongside 100 lifecycles",
            polls
        ));
    });
    problems.extend(failures.into_inner().expect("lock"));
    if !rt.is_runvz() {
        // runc 1.1.5 is not safe here (its `list` fails while containers vanish, racing creates
        // of one ID can all fail): reported, not failed on.
        note(&format!(
            "concurrency: {} shows {} problems, first: {:?}",
            rt.name,
            problems.len(),
            problems.first()
        ));
        // Remove what runc left (its racing creates can orphan a cgroup and an init).
        for (id, cg) in std::iter::once((&same.id, &same.cgroup))
            .chain(bundles.iter().map(|b| (&b.id, &b.cgroup)))
        {
            let _ = rt.cmd(&["delete", "--force", id]);
            reap(id, cg, &rt.root);
        }
        return;
    }
    // 20 parallel calls of every kind on the one container: each succeeds or fails cleanly
    // (a one-line error, no crash, no hang), and the deletes among them leave nothing.
    let calls: Vec<Vec<&str>> = (0..20)
        .map(|i| match i % 5 {
            0 => vec!["start", same.id.as_str()],
            1 => vec!["state", same.id.as_str()],
            2 => vec!["kill", same.id.as_str(), "KILL"],
            3 => vec!["exec", same.id.as_str(), "true"],
            _ => vec!["delete", "--force", same.id.as_str()],
        })
        .collect();
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = calls
            .iter()
            .map(|a| s.spawn(move || (a.clone(), rt.cmd(a))))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    for (a, o) in &results {
        let clean = o.success()
            || (o.code.is_some() && !o.stderr.trim().is_empty() && !o.stderr.contains("panicked"));
        if o.timed_out || !clean {
            problems.push(format!(
                "{a:?} racing on one ID: exit {:?}: {:?}",
                o.code, o.stderr
            ));
        }
    }
    if !results.iter().any(|(a, o)| a[0] == "delete" && o.success()) {
        problems.push("no racing delete --force succeeded".into());
    }
    if rt.state(&same.id).is_ok() {
        problems.push("the container survived 4 racing delete --force".into());
    }
    assert!(
        problems.is_empty(),
        "{} problems, first: {:?}",
        problems.len(),
        problems.first()
    );
    for b in &bundles {
        assert!(
            rt.state(&b.id).is_err(),
            "{} still exists after delete",
            b.id
        );
    }
}

/// `state ID` right after a kill: valid JSON naming the container, or a clean error (a non-zero
/// exit with a message, no panic, no hang). `None` when it is sane.
fn state_insane(rt: &Runtime, id: &str) -> Option<String> {
    let o = rt.cmd(&["state", id]);
    if o.timed_out {
        return Some("state hung".into());
    }
    if o.success() {
        return match serde_json::from_str::<serde_json::Value>(o.stdout.trim()) {
            Ok(v) if v["id"] == id && v["status"].is_string() => None,
            _ => Some(format!("state printed no valid state: {:?}", o.stdout)),
        };
    }
    if o.code.is_none() || o.stderr.trim().is_empty() || o.stderr.contains("panicked") {
        return Some(format!(
            "state failed uncleanly (exit {:?}): {:?}",
            o.code,
            o.stderr.trim()
        ));
    }
    None
}

/// The runtime killed during `op` at `points` points spread over it (`op(b, k)` gives the
/// arguments for point `k`; `op(b, 0)` must finish on its own, it times the operation): before
/// each, `prepare` readies a fresh container; after the kill, `state` must be sane and `delete --force` must
/// leave nothing. Returns the problems (leaks and insane states), one line per point.
fn kill_during(
    t: &runtime_tests::Ctx,
    rt: &Runtime,
    what: &str,
    points: usize,
    prepare: &dyn Fn(&runtime_tests::Bundle),
    op: &dyn Fn(&runtime_tests::Bundle, usize) -> Vec<String>,
) -> Vec<String> {
    let fresh = || {
        let b = t.bundle().args(&["sleep", "1000"]);
        b.save();
        prepare(&b);
        b
    };
    let spawn = |b: &runtime_tests::Bundle, k: usize| {
        let mut full = vec!["--root".to_string(), rt.root.to_string_lossy().into_owned()];
        full.extend(op(b, k));
        let mut c = Command::new(&rt.bin);
        c.args(&full)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        c.spawn().expect("spawn the runtime")
    };
    // How long the whole operation takes here.
    let mut full = Duration::ZERO;
    for _ in 0..3 {
        let b = fresh();
        let t0 = Instant::now();
        let _ = spawn(&b, 0).wait();
        full += t0.elapsed();
        rt.cmd(&["delete", "--force", &b.id]);
    }
    let full = full / 3;
    let mut problems = vec![];
    let mut existed = 0;
    for k in 0..points {
        let b = fresh();
        let delay = full.mul_f64(1.2 * k as f64 / points as f64);
        let mut child = spawn(&b, k);
        std::thread::sleep(delay);
        let pid = child.id() as i32;
        let target = if k % 2 == 0 { pid } else { -pid };
        // SAFETY: kill(2) on our child (or its process group) with SIGKILL.
        unsafe { libc::kill(target, libc::SIGKILL) };
        let _ = child.wait();
        let mut found = vec![];
        if let Some(s) = state_insane(rt, &b.id) {
            found.push(s);
        }
        if rt.state(&b.id).is_ok() {
            existed += 1;
        }
        let o = rt.cmd(&["delete", "--force", &b.id]);
        if !o.success() && !o.stderr.contains("not exist") {
            found.push(format!("delete --force failed: {}", o.stderr.trim()));
        }
        std::thread::sleep(Duration::from_millis(20));
        found.extend(leaks_for(rt, &b.id, &b.cgroup));
        found.extend(
            procs_mentioning(&b.id)
                .into_iter()
                .map(|p| format!("process {p} (cmdline names the container)")),
        );
        if !found.is_empty() {
            problems.push(format!(
                "{what} point {k} (+{delay:?}, {}): {}",
                if k % 2 == 0 { "runtime" } else { "group" },
                found.join("; ")
            ));
            reap(&b.id, &b.cgroup, &rt.root);
        }
    }
    note(&format!(
        "crash-{what}: {} killed at {points} points over {:?}; the container still existed after {existed} of them; problems at {}",
        rt.name,
        full.mul_f64(1.2),
        problems.len()
    ));
    problems
}

/// Reports the problems (runc: printed, not failed on) or fails on them (runvz).
fn judge(rt: &Runtime, what: &str, problems: &[String]) {
    for p in problems {
        note(&format!("  {p}"));
    }
    if rt.is_runvz() {
        assert!(
            problems.is_empty(),
            "runvz {what}: problems at {} kill points, first: {:?}",
            problems.len(),
            problems.first()
        );
    } else if !problems.is_empty() {
        note(&format!(
            "{} leaks or misreports after a killed {what} at {} points (reported, not failed on)",
            rt.name,
            problems.len()
        ));
    }
}

fn create_and_start(t: &runtime_tests::Ctx) -> impl Fn(&runtime_tests::Bundle) + '_ {
    move |b| {
        t.create_raw(b, &b.id, &[]).ok();
        t.rt.cmd(&["start", &b.id]).ok();
    }
}

#[test]
fn sigkill_during_exec_then_delete_force_leaves_nothing() {
    let mut t = setup!("crash-exec");
    t.rt.root = t.rt.root.with_extension("crash");
    let rt = t.rt.clone();
    let prepare = create_and_start(&t);
    // The exec'd shell names the container in its arguments, so a survivor is found. Even
    // points detach (exec returns once the process runs), odd ones wait for it.
    let problems = kill_during(&t, &rt, "exec", 24, &prepare, &|b, k| {
        let mut a = vec!["exec"];
        if k % 2 == 0 {
            a.push("--detach");
        }
        a.extend([b.id.as_str(), "sh", "-c", "sleep 1000; true", &b.id]);
        a.into_iter().map(String::from).collect()
    });
    judge(&rt, "exec", &problems);
}

#[test]
fn sigkill_during_delete_then_delete_force_leaves_nothing() {
    let mut t = setup!("crash-delete");
    t.rt.root = t.rt.root.with_extension("crash");
    let rt = t.rt.clone();
    let prepare = create_and_start(&t);
    let mut problems = kill_during(&t, &rt, "delete", 24, &prepare, &|b, _| {
        ["delete", "--force", &b.id].map(String::from).to_vec()
    });
    // A stopped container's plain delete, killed.
    let stopped = |b: &runtime_tests::Bundle| {
        prepare(b);
        t.rt.cmd(&["kill", &b.id, "KILL"]);
        t.rt.wait_status(&b.id, "stopped", Duration::from_secs(10));
    };
    problems.extend(kill_during(
        &t,
        &rt,
        "delete-stopped",
        12,
        &stopped,
        &|b, _| ["delete", &b.id].map(String::from).to_vec(),
    ));
    judge(&rt, "delete", &problems);
}

#[test]
fn sigkill_during_update_and_set_then_delete_force_leaves_nothing() {
    let mut t = setup!("crash-update");
    t.rt.root = t.rt.root.with_extension("crash");
    let rt = t.rt.clone();
    let prepare = create_and_start(&t);
    let mut problems = kill_during(&t, &rt, "update", 12, &prepare, &|b, _| {
        ["update", "--memory", "200M", "--pids-limit", "500", &b.id]
            .map(String::from)
            .to_vec()
    });
    if rt.is_runvz() {
        problems.extend(kill_during(&t, &rt, "set", 12, &prepare, &|b, _| {
            ["set", "--numproc", "300", "--ram", "256M", &b.id]
                .map(String::from)
                .to_vec()
        }));
    } else {
        note("SKIP crash-set for runc: `set` (OpenVZ limits) is runvz's own command");
    }
    judge(&rt, "update/set", &problems);
}
