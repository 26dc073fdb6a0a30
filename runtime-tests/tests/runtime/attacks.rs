//! Attacks from runc's CVE history (issue 9), each made the way a hostile container or bundle
//! author would make it. A runtime passes when it refuses the bundle or when the attack does no
//! harm. runc 1.1.5 (Debian 12, with the CVE-2024-21626 backport) is still vulnerable to some of
//! them: for those the test reports "runc vulnerable: ..." and does not fail (see
//! docs/security.md). The in-container half of some attacks is `attack` (hack/tools/attack.c,
//! built into the test rootfs by hack/build-bundle).

use runtime_tests::{
    mountinfo_lines, note, rootfs, rootfs_has_tool, setup, Bundle, CmdOutput, Ctx,
};
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

/// Fails the test on `problems`, except for runc when runc 1.1.5 is known vulnerable to `cve`:
/// then the problems are printed as "runc vulnerable: ...".
#[track_caller]
fn verdict(t: &Ctx, cve: &str, runc_vulnerable: bool, problems: &[String]) {
    if problems.is_empty() {
        if !t.rt.is_runvz() && runc_vulnerable {
            note(&format!(
                "{cve}: {} resisted this time (a race may simply not have been won)",
                t.rt.name
            ));
        }
        return;
    }
    if !t.rt.is_runvz() && runc_vulnerable {
        note(&format!("runc vulnerable: {cve}: {}", problems.join("; ")));
        return;
    }
    panic!(
        "{cve}: {} is vulnerable: {}",
        t.rt.name,
        problems.join("; ")
    );
}

/// "ran the bundle" or "refused the bundle: <its error>".
fn outcome(o: &CmdOutput) -> String {
    if o.success() {
        "ran the bundle".into()
    } else {
        format!(
            "refused the bundle: {}",
            o.stderr.lines().last().unwrap_or_default().trim()
        )
    }
}

/// A private copy of the busybox rootfs the attack may rearrange.
fn own_rootfs(t: &Ctx, name: &str) -> PathBuf {
    let dst = t.scratch().join(name);
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(rootfs())
        .arg(&dst)
        .status()
        .expect("cp");
    assert!(
        st.success(),
        "cp -a {} {}",
        rootfs().display(),
        dst.display()
    );
    dst
}

/// A host directory (a "volume") with `files` in it.
fn volume(t: &Ctx, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let d = t.scratch().join(name);
    fs::create_dir_all(&d).expect("volume dir");
    for (f, content) in files {
        let p = d.join(f);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, content).expect("volume file");
    }
    d
}

fn bind(src: &Path, dest: &str) -> Value {
    json!({"destination": dest, "type": "bind", "source": src.to_string_lossy(),
           "options": ["rbind", "rw"]})
}

fn with_rootfs(b: Bundle, r: &Path) -> Bundle {
    b.set("/root/path", json!(r.to_string_lossy()))
}

/// A relative symlink target that climbs out of any root and lands on host path `p`.
fn escape_to(p: &Path) -> String {
    format!(
        "{}{}",
        "../".repeat(24),
        p.to_string_lossy().trim_start_matches('/')
    )
}

/// Every file below `d` (relative), for "nothing appeared here" checks.
fn tree(d: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![d.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).into_iter().flatten().flatten() {
            let path = e.path();
            out.push(
                path.strip_prefix(d)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned(),
            );
            if e.file_type().is_ok_and(|f| f.is_dir()) {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Host mounts at or below `p`.
fn host_mounts_at(p: &Path) -> Vec<String> {
    let p = p.to_string_lossy().into_owned();
    mountinfo_lines()
        .into_iter()
        .filter(|l| {
            l.split_whitespace()
                .nth(4)
                .is_some_and(|m| m.starts_with(&p))
        })
        .collect()
}

fn checksum(p: &Path) -> (u64, u64) {
    use std::hash::{Hash, Hasher};
    let bytes = fs::read(p).expect("read binary");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    (bytes.len() as u64, h.finish())
}

/// CVE-2019-5736: a process in the container catches the runtime while it runs inside (an
/// `exec` whose command is a `#!/proc/self/exe` script re-runs the runtime binary in the
/// container; a created container's PID 1 before `start` runs a `#!/proc/self/exe`
/// entrypoint), holds its /proc/PID/exe open and writes it once it exits. The runtime binary on
/// the host (here a copy, so a vulnerable runtime only spoils the copy) must be unchanged and
/// every write must fail.
#[test]
fn cve_2019_5736_runtime_binary_cannot_be_overwritten() {
    let mut t = setup!("cve-2019-5736");
    if !rootfs_has_tool("attack", "cve-2019-5736") {
        return;
    }
    let copy = t.scratch().join(&t.rt.name);
    fs::copy(&t.rt.bin, &copy).expect("copy the runtime");
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod");
    t.rt.bin = copy.clone();
    let before = checksum(&copy);
    let vol = volume(&t, "vol", &[("evil", "#!/proc/self/exe\n")]);
    fs::set_permissions(vol.join("evil"), fs::Permissions::from_mode(0o755)).expect("chmod");
    let b = t
        .bundle()
        .mount(bind(&vol, "/mnt"))
        .sh("exec attack exewatch 6");
    let o = t.create(&b);
    t.start(&b.id);
    assert!(o.wait_stdout("watching", T).contains("watching"));
    for _ in 0..8 {
        // Each runs the runtime binary inside the container for a moment (and fails).
        let _ = t.rt.cmd(&["exec", &b.id, "/mnt/evil"]);
        let _ = t.rt.cmd(&["exec", &b.id, "true"]);
    }
    let out = o.wait_stdout("caught ", T);
    let out = if out.contains("last write error") {
        out
    } else {
        o.wait_stdout("last write error", T)
    };
    // The entrypoint variant: a watcher exec'd into a created container, whose PID 1 is still
    // the runtime, holds its exe; `start` then runs `#!/proc/self/exe` as the entrypoint.
    let b2 = t.bundle().mount(bind(&vol, "/mnt")).args(&["/mnt/evil"]);
    t.create(&b2);
    let watch = vol.join("watch.out");
    t.rt.cmd(&[
        "exec",
        "--detach",
        &b2.id,
        "sh",
        "-c",
        "exec attack exewatch 3 > /mnt/watch.out 2>&1",
    ])
    .ok();
    let end = std::time::Instant::now() + T;
    while !fs::read_to_string(&watch).is_ok_and(|s| s.contains("caught pid"))
        && std::time::Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = t.rt.cmd(&["start", &b2.id]);
    t.rt.wait_status(&b2.id, "stopped", T);
    let out2 = fs::read_to_string(&watch).unwrap_or_default();
    let mut problems = vec![];
    if checksum(&copy) != before {
        problems.push("the runtime binary on the host changed".to_string());
    }
    for o in [&out, &out2] {
        problems.extend(
            o.lines()
                .filter(|l| l.starts_with("WROTE"))
                .map(String::from),
        );
    }
    // runvz relies on its read-only binary, so the attack must have had its chance: the watcher
    // caught the runtime inside (PID 1 of a created container is, deterministically; an exec's
    // helper usually is, see the note). runc makes its processes in the container non-dumpable:
    // their /proc/PID/exe cannot be opened at all, there is nothing to catch.
    assert!(
        !t.rt.is_runvz() || out2.contains("caught pid 1 "),
        "the watcher did not catch runvz's init in the created container: {out2}"
    );
    verdict(&t, "CVE-2019-5736", false, &problems);
    note(&format!(
        "CVE-2019-5736: {}: exec: {}; entrypoint: {}",
        t.rt.name,
        out.lines().last().unwrap_or_default(),
        out2.lines()
            .filter(|l| l.starts_with("caught"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
}

/// Climbs from the cwd far past any root and compares with `/`: equal when the cwd is inside
/// the container; a cwd on a leaked host fd climbs to the host's root (which has /work, /usr…).
const CLIMB: &str = "echo climb=$(stat -c %d:%i ../../../../../../../../../../../../../../..) root=$(stat -c %d:%i /)";

fn climb_ok(out: &str) -> Result<(), String> {
    let line = out
        .lines()
        .find(|l| l.starts_with("climb="))
        .ok_or_else(|| format!("no climb line in {out:?}"))?;
    let mut parts = line.split_whitespace();
    let a = parts.next().unwrap_or("").trim_start_matches("climb=");
    let b = parts.next().unwrap_or("").trim_start_matches("root=");
    if a.is_empty() || a != b {
        return Err(format!("the cwd is outside the container's root: {line}"));
    }
    Ok(())
}

/// CVE-2024-21626: process.cwd = /proc/self/fd/N lands on whatever fd N the runtime holds
/// when it enters the cwd (runc leaked /sys/fs/cgroup there). Refused, or the cwd is inside.
#[test]
fn cve_2024_21626_cwd_on_a_leaked_fd() {
    let t = setup!("cve-2024-21626-cwd");
    let mut problems = vec![];
    let mut refused = 0;
    for n in 3..=10 {
        let b = t
            .bundle()
            .set("/process/cwd", json!(format!("/proc/self/fd/{n}")))
            .sh(CLIMB);
        let o = t.run(&b);
        assert!(!o.timed_out, "run with cwd /proc/self/fd/{n} hung");
        if !o.success() {
            refused += 1;
            continue;
        }
        if let Err(e) = climb_ok(&o.stdout) {
            problems.push(format!("cwd /proc/self/fd/{n}: {e}"));
        }
    }
    note(&format!(
        "CVE-2024-21626 cwd: {} refused {refused} of 8 /proc/self/fd/N cwds",
        t.rt.name
    ));
    verdict(&t, "CVE-2024-21626 (process.cwd)", false, &problems);
}

/// CVE-2024-21626 through `exec --cwd`.
#[test]
fn cve_2024_21626_exec_cwd_on_a_leaked_fd() {
    let t = setup!("cve-2024-21626-exec-cwd");
    let b = t.bundle().args(&["sleep", "1000"]);
    t.create(&b);
    t.start(&b.id);
    let mut problems = vec![];
    for n in 3..=10 {
        let cwd = format!("/proc/self/fd/{n}");
        let o = t.rt.cmd(&["exec", "--cwd", &cwd, &b.id, "sh", "-c", CLIMB]);
        assert!(!o.timed_out, "exec --cwd {cwd} hung");
        if o.success() {
            if let Err(e) = climb_ok(&o.stdout) {
                problems.push(format!("exec --cwd {cwd}: {e}"));
            }
        }
    }
    verdict(&t, "CVE-2024-21626 (exec --cwd)", false, &problems);
}

fn fd_problems(what: &str, out: &str) -> Vec<String> {
    match out.lines().find(|l| l.starts_with("fds")) {
        Some("fds 0 1 2") => vec![],
        Some(l) => vec![format!("{what} holds more than stdio: {l}; {out}")],
        None => vec![format!("{what}: no fd list in {out:?}")],
    }
}

/// CVE-2024-21626: no host fd reaches the container's process or an exec'd one: only 0, 1, 2.
#[test]
fn cve_2024_21626_no_fd_leaks_into_the_container() {
    let t = setup!("cve-2024-21626-fds");
    if !rootfs_has_tool("attack", "cve-2024-21626-fds") {
        return;
    }
    let mut problems = vec![];
    let b = t.bundle().args(&["attack", "fds"]);
    let o = t.run(&b);
    problems.extend(fd_problems("the container's process", &o.stdout));
    let b = t.bundle().args(&["sleep", "1000"]);
    t.create(&b);
    t.start(&b.id);
    let o = t.rt.cmd(&["exec", &b.id, "attack", "fds"]);
    problems.extend(fd_problems("an exec'd process", &o.stdout));
    let o =
        t.rt.cmd(&["exec", "--cwd", "/proc", &b.id, "attack", "fds"]);
    problems.extend(fd_problems("an exec'd process with --cwd", &o.stdout));
    verdict(&t, "CVE-2024-21626 (fd leak)", false, &problems);
}

/// Mount destinations `/mnt/p` and `/mnt/x/sub/deeper` where a container sharing the volume at
/// /mnt swaps `p` and `x` (directories) with symlinks (renameat2 RENAME_EXCHANGE in a tight
/// loop) that climb out of the root: `x` to a host directory (CVE-2024-45310: the runtime
/// creates `sub/deeper` there), `p` to the rootfs's own /etc through the host's tree
/// (CVE-2021-30465: the tmpfs lands where the symlink leads).
#[test]
fn cve_2021_30465_and_2024_45310_racing_symlinks_in_mount_targets() {
    let t = setup!("cve-2021-30465");
    if !rootfs_has_tool("attack", "cve-2021-30465") {
        return;
    }
    let vol = volume(&t, "vol", &[]);
    let host = volume(&t, "host-target", &[]);
    let rootfs_b = own_rootfs(&t, "rootfs-b");
    fs::create_dir(vol.join("x")).expect("mkdir");
    fs::create_dir(vol.join("p")).expect("mkdir");
    symlink(escape_to(&host), vol.join("y")).expect("symlink");
    symlink(escape_to(&rootfs_b.join("etc")), vol.join("q")).expect("symlink");
    let racer = t
        .bundle()
        .mount(bind(&vol, "/mnt"))
        .sh("attack swap 120 /mnt/x /mnt/y & attack swap 120 /mnt/p /mnt/q & wait");
    let ro = t.create(&racer);
    t.start(&racer.id);
    assert!(ro.wait_stdout("swapping", T).contains("swapping"));
    let mut problems = vec![];
    let (mut made, mut refused) = (0, 0);
    for i in 0..40 {
        let dest = if i % 2 == 0 {
            "/mnt/x"
        } else {
            "/mnt/x/sub/deeper"
        };
        let b = with_rootfs(t.bundle(), &rootfs_b)
            .mount(bind(&vol, "/mnt"))
            .mount(
                json!({"destination": dest, "type": "tmpfs", "source": "tmpfs",
                          "options": ["size=64k"]}),
            )
            .args(&["sleep", "1000"]);
        let o = t.create_raw(&b, &b.id, &[]);
        assert!(!o.timed_out, "create hung");
        if o.success() {
            made += 1;
            let pid = t.pid(&b.id);
            let mi = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
            if let Some(l) = mi
                .lines()
                .find(|l| l.split_whitespace().nth(4) == Some("/etc"))
            {
                problems.push(format!(
                    "the tmpfs for {dest} landed on the container's /etc: {l}"
                ));
            }
        } else {
            refused += 1;
        }
        let entries = tree(&host);
        if !entries.is_empty() {
            problems.push(format!(
                "created on the host outside the rootfs: {entries:?}"
            ));
            for e in entries {
                let _ = fs::remove_dir_all(host.join(&e));
            }
        }
        let m = host_mounts_at(&host);
        if !m.is_empty() {
            problems.push(format!("mounted on the host: {m:?}"));
        }
        t.rt.cmd(&["delete", "--force", &b.id]);
    }
    t.rt.cmd(&["delete", "--force", &racer.id]);
    note(&format!(
        "CVE-2021-30465/2024-45310: {}: {made} creates succeeded, {refused} refused while the symlink raced",
        t.rt.name
    ));
    problems.dedup();
    // runc 1.1.5 predates the CVE-2024-45310 fix (1.1.14); CVE-2021-30465 is fixed there.
    let only_45310 = problems.iter().all(|p| p.contains("created on the host"));
    verdict(&t, "CVE-2021-30465/CVE-2024-45310", only_45310, &problems);
}

/// The same escapes without a race: a mount target that is a symlink out of the root.
#[test]
fn cve_2021_30465_symlinked_mount_target_stays_inside() {
    let t = setup!("cve-2021-30465-static");
    let host = volume(&t, "host-target", &[]);
    let r = own_rootfs(&t, "rootfs");
    symlink(escape_to(&host), r.join("mnt/out")).expect("symlink");
    symlink(escape_to(&r.join("etc")), r.join("mnt/etc")).expect("symlink");
    symlink(&host, r.join("mnt/abs")).expect("symlink");
    let mut problems = vec![];
    for dest in ["/mnt/out", "/mnt/etc", "/mnt/abs", "/mnt/out/new/dir"] {
        let b = with_rootfs(t.bundle(), &r)
            .mount(
                json!({"destination": dest, "type": "tmpfs", "source": "tmpfs",
                          "options": ["size=64k"]}),
            )
            .args(&["sleep", "1000"]);
        if t.create_raw(&b, &b.id, &[]).success() {
            let pid = t.pid(&b.id);
            let mi = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
            if mi
                .lines()
                .any(|l| l.split_whitespace().nth(4) == Some("/etc"))
            {
                problems.push(format!("{dest}: the tmpfs covers the container's /etc"));
            }
        }
        let entries = tree(&host);
        if !entries.is_empty() {
            problems.push(format!("{dest}: made on the host: {entries:?}"));
        }
        t.rt.cmd(&["delete", "--force", &b.id]);
    }
    verdict(&t, "CVE-2021-30465 (static)", false, &problems);
}

/// CVE-2025-31133: /dev/null in the rootfs is a symlink to another file (core_pattern in the
/// real attack; here a file in a volume, so a vulnerable runtime harms nothing): masking a path
/// then binds that file read-write over the masked path, and the container writes it.
#[test]
fn cve_2025_31133_dev_null_symlink_does_not_unmask() {
    let t = setup!("cve-2025-31133");
    let vol = volume(&t, "vol", &[("canary", "orig\n")]);
    let r = own_rootfs(&t, "rootfs");
    let _ = fs::remove_file(r.join("dev/null"));
    symlink("/mnt/canary", r.join("dev/null")).expect("symlink");
    let b = with_rootfs(t.bundle(), &r)
        .edit(|c| {
            // /dev is the rootfs's own directory, as when a bundle ships its /dev.
            if let Some(m) = c["mounts"].as_array_mut() {
                m.retain(|m| m["destination"] != "/dev");
            }
        })
        .mount(bind(&vol, "/mnt"))
        .sh("echo pwned > /proc/kcore; echo pwned > /proc/timer_list; echo done");
    let o = t.run(&b);
    assert!(!o.timed_out, "run hung");
    let canary = fs::read_to_string(vol.join("canary")).unwrap_or_default();
    let mut problems = vec![];
    if canary != "orig\n" {
        problems.push(format!(
            "the container wrote the file /dev/null pointed at through a masked path: {canary:?}"
        ));
    }
    note(&format!("CVE-2025-31133: {} {}", t.rt.name, outcome(&o)));
    verdict(&t, "CVE-2025-31133", true, &problems);
}

/// CVE-2025-52881 (and CVE-2019-19921/CVE-2023-27561's overmount): a volume mounted over
/// /proc/sys/kernel, so that the sysctl write for kernel.shmmax goes into a host file.
#[test]
fn cve_2025_52881_sysctl_write_redirected_by_an_overmount() {
    let t = setup!("cve-2025-52881");
    let vol = volume(
        &t,
        "fakesys",
        &[("shmmax", "orig\n"), ("hostname", "orig\n")],
    );
    let b = t
        .bundle()
        .mount(bind(&vol, "/proc/sys/kernel"))
        .set("/linux/sysctl", json!({"kernel.shmmax": "68719476736"}))
        .sh("echo done");
    let o = t.run(&b);
    assert!(!o.timed_out, "run hung");
    let mut problems = vec![];
    let got = fs::read_to_string(vol.join("shmmax")).unwrap_or_default();
    if got != "orig\n" {
        problems.push(format!("the sysctl was written into a host file: {got:?}"));
    }
    note(&format!("CVE-2025-52881: {} {}", t.rt.name, outcome(&o)));
    verdict(&t, "CVE-2025-52881", true, &problems);
}

/// What a container sees as /proc: must be procfs whenever the bundle is accepted.
const PROC_CHECK: &str =
    "echo procfs=$(stat -f -c %T /proc) self=$(readlink /proc/self); echo done";

/// `want_procfs`: the bundle asked for procfs at /proc (a volume mounted over it is what a
/// bundle may ask for; the runtime's own /proc writes must still not reach the volume).
fn proc_problems(
    what: &str,
    want_procfs: bool,
    out: &str,
    vol: &Path,
    before: &[String],
) -> Vec<String> {
    let mut p = vec![];
    if want_procfs && out.contains("done") && !out.contains("procfs=proc ") {
        p.push(format!(
            "{what}: the container's /proc is not procfs: {out:?}"
        ));
    }
    let after = tree(vol);
    if after != before {
        p.push(format!(
            "{what}: the volume changed: {before:?} -> {after:?}"
        ));
    }
    p
}

/// CVE-2019-16884 / CVE-2019-19921 / CVE-2023-27561: /proc in the rootfs is a symlink (to a
/// volume), or a volume is mounted over /proc, so that the runtime's proc writes (AppArmor label,
/// oom_score_adj, sysctls, masks) go to files the container controls.
#[test]
fn cve_2019_16884_and_2019_19921_proc_symlink_or_overmount() {
    let t = setup!("cve-2019-16884");
    let files = [
        ("self/attr/exec", "orig"),
        ("self/oom_score_adj", "0"),
        ("sys/kernel/shmmax", "orig"),
        ("kcore", "secret"),
    ];
    let mut problems = vec![];
    // A symlinked /proc.
    let vol = volume(&t, "vol1", &files);
    let r = own_rootfs(&t, "rootfs");
    fs::remove_dir(r.join("proc")).expect("rmdir proc");
    symlink("/mnt", r.join("proc")).expect("symlink");
    let before = tree(&vol);
    let b = with_rootfs(t.bundle(), &r)
        .mount(bind(&vol, "/mnt"))
        .edit(|c| {
            // The volume first, so that /proc -> /mnt leads into it.
            let m = c["mounts"].as_array_mut().expect("mounts");
            let v = m.pop().expect("the volume");
            m.insert(0, v);
        })
        .set("/process/oomScoreAdj", json!(500))
        .set("/linux/sysctl", json!({"kernel.shmmax": "68719476736"}))
        .sh(PROC_CHECK);
    let o = t.run(&b);
    assert!(!o.timed_out, "run hung");
    note(&format!(
        "CVE-2019-16884 symlinked /proc: {} {}",
        t.rt.name,
        outcome(&o)
    ));
    problems.extend(proc_problems(
        "symlinked /proc",
        true,
        &o.stdout,
        &vol,
        &before,
    ));
    // A volume over /proc after procfs is mounted (with and without a sysctl to write).
    for sysctl in [true, false] {
        let vol = volume(&t, &format!("vol-{sysctl}"), &files);
        let before = tree(&vol);
        let mut b = t
            .bundle()
            .mount(bind(&vol, "/proc"))
            .set("/process/oomScoreAdj", json!(500))
            .sh(PROC_CHECK);
        if sysctl {
            b = b.set("/linux/sysctl", json!({"kernel.shmmax": "68719476736"}));
        }
        let o = t.run(&b);
        assert!(!o.timed_out, "run hung");
        note(&format!(
            "CVE-2019-19921 volume over /proc (sysctl {sysctl}): {} {}",
            t.rt.name,
            outcome(&o)
        ));
        problems.extend(proc_problems(
            "volume over /proc",
            false,
            &o.stdout,
            &vol,
            &before,
        ));
        for (f, content) in files {
            let got = fs::read_to_string(vol.join(f)).unwrap_or_default();
            if got != content {
                problems.push(format!("volume over /proc: {f} was written: {got:?}"));
            }
        }
    }
    verdict(&t, "CVE-2019-16884/CVE-2019-19921", false, &problems);
}

fn cap_mask(names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| match *n {
            "CAP_CHOWN" => 1u64 << 0,
            "CAP_KILL" => 1 << 5,
            "CAP_NET_BIND_SERVICE" => 1 << 10,
            "CAP_AUDIT_WRITE" => 1 << 29,
            other => panic!("cap_mask: add {other}"),
        })
        .sum()
}

fn caps_of(out: &str) -> std::collections::HashMap<String, u64> {
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), u64::from_str_radix(v.trim(), 16).ok()?))
        })
        .filter(|(k, _)| k.starts_with("Cap"))
        .collect()
}

/// CVE-2022-29162: the inheritable set is exactly the configured one (runc before 1.1.2 filled
/// it), for the container's process and an exec'd one; ambient only within inheritable.
#[test]
fn cve_2022_29162_inheritable_capabilities_are_as_configured() {
    let t = setup!("cve-2022-29162");
    let mut problems = vec![];
    let base = [
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_CHOWN",
    ];
    for (inh, user) in [(vec![], 0), (vec!["CAP_KILL"], 0), (vec!["CAP_KILL"], 1000)] {
        let caps = json!({"bounding": base, "effective": base, "permitted": base,
                          "inheritable": inh, "ambient": []});
        let b = t
            .bundle()
            .set("/process/capabilities", caps)
            .set("/process/user", json!({"uid": user, "gid": user}))
            .args(&["sleep", "1000"]);
        t.create(&b);
        t.start(&b.id);
        let pid = t.pid(&b.id);
        let init = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ex = t.rt.cmd(&["exec", &b.id, "cat", "/proc/self/status"]).ok();
        for (what, out) in [("init", init), ("exec", ex.stdout)] {
            let c = caps_of(&out);
            let want = cap_mask(&inh);
            if c.get("CapInh") != Some(&want) {
                problems.push(format!(
                    "{what} (uid {user}, inheritable {inh:?}): CapInh {:x?}, want {want:x}",
                    c.get("CapInh")
                ));
            }
            if c.get("CapAmb").copied().unwrap_or(u64::MAX) != 0 {
                problems.push(format!(
                    "{what}: ambient capabilities nobody asked for: {c:x?}"
                ));
            }
            let bound = cap_mask(&base);
            if c.get("CapBnd").copied().unwrap_or(u64::MAX) & !bound != 0 {
                problems.push(format!(
                    "{what}: bounding set wider than configured: {c:x?}"
                ));
            }
        }
        t.rt.cmd(&["delete", "--force", &b.id]);
    }
    verdict(&t, "CVE-2022-29162", false, &problems);
}

/// Accepts one connection on a console socket and returns the pty master the runtime sends.
fn receive_pty(listener: &std::os::unix::net::UnixListener) -> Option<std::os::fd::OwnedFd> {
    let (conn, _) = listener.accept().ok()?;
    runtime_tests::recv_fd(&conn)
}

/// CVE-2025-52565: with process.terminal, /dev/console in the rootfs is a symlink to another
/// file (a /proc file in the real attack; here a file in a volume): a runtime that bind-mounts
/// the pty on /dev/console following the symlink covers that file instead.
#[test]
fn cve_2025_52565_dev_console_symlink_is_not_followed() {
    let t = setup!("cve-2025-52565");
    let vol = volume(&t, "vol", &[("canary", "orig\n")]);
    let r = own_rootfs(&t, "rootfs");
    symlink("/mnt/canary", r.join("dev/console")).expect("symlink");
    let sock = t.scratch().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("console socket");
    let b = with_rootfs(t.bundle(), &r)
        .edit(|c| {
            if let Some(m) = c["mounts"].as_array_mut() {
                m.retain(|m| m["destination"] != "/dev");
            }
        })
        .mount(bind(&vol, "/mnt"))
        .set("/process/terminal", json!(true))
        .sh("stat -c %F /mnt/canary > /mnt/result; exec sleep 1000");
    let (pty, o) = std::thread::scope(|s| {
        let h = s.spawn(|| receive_pty(&listener));
        let o = t.create_raw(
            &b,
            &b.id,
            &["--console-socket", sock.to_str().expect("utf8")],
        );
        if !o.success() {
            // Unblock the accept.
            let _ = std::os::unix::net::UnixStream::connect(&sock);
        }
        (h.join().expect("thread"), o)
    });
    let mut problems = vec![];
    if o.success() {
        t.start(&b.id);
        let end = std::time::Instant::now() + T;
        while !vol.join("result").exists() && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        let kind = fs::read_to_string(vol.join("result")).unwrap_or_default();
        if kind.trim() != "regular file" {
            problems.push(format!(
                "the file /dev/console pointed at is now a {:?} in the container",
                kind.trim()
            ));
        }
    }
    if fs::read_to_string(vol.join("canary")).unwrap_or_default() != "orig\n" {
        problems.push("the file /dev/console pointed at was written".into());
    }
    note(&format!("CVE-2025-52565: {} {}", t.rt.name, outcome(&o)));
    t.rt.cmd(&["delete", "--force", &b.id]);
    drop(pty);
    verdict(&t, "CVE-2025-52565", true, &problems);
}
