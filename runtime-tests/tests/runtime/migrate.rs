//! `runvz migrate` between two runvz roots, each run inside a network namespace of its own
//! that stands in for a host, joined by a veth pair: stop-and-copy and post-copy (lazy pages)
//! keep a counter container counting, with the rootfs changes carried along and the source
//! removed; a migration that fails (wrong token, a restore that fails over there, a cgroup
//! already in use) leaves the source running and nothing at the destination.
//! runvz only: runc has no migrate command.

use runtime_tests::{cgroup_dirs, leaks_for, note, procs_in_cgroup, run_tag, Ctx, Runtime};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::checkpoint::{have_criu, have_uffd, PipeMax};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Counts in the rootfs (not a tmpfs): the count at the destination proves the rootfs
/// changes came along.
const COUNTER: &str = "exec </dev/null >/dev/null 2>&1; i=0; while true; do i=$((i+1)); \
     echo $i > /var/n.t; mv /var/n.t /var/n; sleep 0.05; done";

#[track_caller]
fn sh_ok(cmd: &str) {
    let o = Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("sh -c {cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Two "hosts" (network namespaces A and B joined by a veth pair, 10.234.N.1 and .2), a
/// second runvz root and bundle directory for B, and a shared token. Removed on drop, after
/// B's containers are deleted and checked for leftovers.
struct Pair {
    t: Ctx,
    /// The runtime as seen from B (its own root, run inside B).
    b: Runtime,
    ns: [String; 2],
    n: usize,
    bundles: PathBuf,
    token: String,
    /// The cgroup prefix B receives with (the roots share this host's cgroups).
    prefix: String,
    /// (ID, cgroup) of containers that may exist in B.
    in_b: Vec<(String, String)>,
}

impl Pair {
    fn new(name: &str) -> Option<Pair> {
        let t = match Ctx::new(name) {
            Ok(t) => t,
            Err(why) => {
                note(&format!("SKIP {name}: {why}"));
                return None;
            }
        };
        if !t.rt.is_runvz() {
            note(&format!(
                "SKIP {name}: migrate is runvz's ({} has no migrate command)",
                t.rt.name
            ));
            return None;
        }
        if !have_criu(name) {
            return None;
        }
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = run_tag();
        let ns = [format!("{tag}mg{n}a"), format!("{tag}mg{n}b")];
        let net = (std::process::id() as usize * 7 + n) % 250 + 1;
        let veth = format!("rtmg{}{n}", std::process::id() % 100000);
        sh_ok(&format!(
            "ip netns add {a} && ip netns add {b} && ip link add {veth}a type veth peer name {veth}b \
             && ip link set {veth}a netns {a} && ip link set {veth}b netns {b} \
             && ip -n {a} addr add 10.234.{net}.1/24 dev {veth}a && ip -n {b} addr add 10.234.{net}.2/24 dev {veth}b \
             && ip -n {a} link set {veth}a up && ip -n {b} link set {veth}b up \
             && ip -n {a} link set lo up && ip -n {b} link set lo up",
            a = ns[0],
            b = ns[1]
        ));
        let mut p = Pair {
            b: t.rt.clone(),
            bundles: t.scratch().join("bundles-b"),
            token: t.scratch().join("token").display().to_string(),
            prefix: format!("/rt-test/{tag}mg{n}-b"),
            t,
            ns,
            n: net,
            in_b: vec![],
        };
        p.t.rt.netns = Some(format!("/run/netns/{}", p.ns[0]).into());
        p.b.netns = Some(format!("/run/netns/{}", p.ns[1]).into());
        p.b.root = p.t.scratch().join("root-b");
        p.write_token(&p.token, "a-shared-secret-of-the-two-hosts");
        Some(p)
    }

    fn write_token(&self, path: &str, secret: &str) {
        std::fs::write(path, secret).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// A counter container in A, on a private copy of the rootfs, counting.
    fn counter(&self) -> runtime_tests::Bundle {
        let rootfs = self.t.scratch().join("rootfs-a");
        if !rootfs.exists() {
            sh_ok(&format!(
                "cp -a {} {}",
                runtime_tests::rootfs().display(),
                rootfs.display()
            ));
        }
        let b = self
            .t
            .bundle()
            .sh(COUNTER)
            .set(
                "/root",
                json!({"path": rootfs.display().to_string(), "readonly": false}),
            )
            .set("/annotations", json!({"io.runvz.ub.numproc": "64:64"}));
        self.t.create(&b);
        self.t.start(&b.id);
        assert!(
            self.wait_count(&self.t.rt, &b.id, 3) >= 3,
            "counter did not start"
        );
        b
    }

    fn count(&self, rt: &Runtime, id: &str) -> u64 {
        let Ok(st) = rt.state(id) else { return 0 };
        let pid = st["pid"].as_i64().unwrap_or(0);
        std::fs::read_to_string(format!("/proc/{pid}/root/var/n"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn wait_count(&self, rt: &Runtime, id: &str, min: u64) -> u64 {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let n = self.count(rt, id);
            if n >= min || Instant::now() > end {
                return n;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `runvz migrate-receive --once` in B (with `--criu CRIU`, with or without the cgroup
    /// prefix): (the child, HOST:PORT it listens on).
    fn receiver(&self, token: &str, criu: Option<&str>, prefix: bool) -> (Child, String) {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns[1]))
            .arg(&self.b.bin)
            .arg("--root")
            .arg(&self.b.root);
        if let Some(x) = criu {
            c.args(["--criu", x]);
        }
        c.arg("migrate-receive")
            .arg("--listen")
            .arg(format!("10.234.{}.2:0", self.n))
            .args(["--token-file", token, "--once", "--bundles"])
            .arg(&self.bundles)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if prefix {
            c.args(["--cgroup-prefix", &self.prefix]);
        }
        let mut child = c.spawn().expect("nsenter runvz migrate-receive");
        let mut line = String::new();
        if let Some(out) = child.stdout.as_mut() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let Some(addr) = line
            .trim()
            .strip_prefix("listening on ")
            .map(str::to_string)
        else {
            let _ = child.kill();
            let (_, err) = self.finish(child);
            panic!("receiver said {line:?}: {err}");
        };
        (child, addr)
    }

    fn migrate_args<'a>(
        &'a mut self,
        id: &'a str,
        dest: &'a str,
        extra: &[&'a str],
    ) -> Vec<&'a str> {
        let cg = format!("{}/rt-test/{id}", self.prefix.trim_start_matches('/'));
        self.in_b.push((id.to_string(), cg));
        let mut a = vec!["migrate", "--token-file", &self.token, "--format", "json"];
        a.extend_from_slice(extra);
        a.push(id);
        a.push(dest);
        a
    }

    fn migrate(&mut self, id: &str, dest: &str, extra: &[&str]) -> runtime_tests::CmdOutput {
        let rt = self.t.rt.clone();
        rt.cmd(&self.migrate_args(id, dest, extra))
    }

    /// The receiver's exit status and its stderr.
    fn finish(&self, mut c: Child) -> (bool, String) {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return (st.success(), err);
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                panic!("migrate-receive did not finish");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Nothing of `id` is in B: state, bundle, work dir, cgroup, processes.
    #[track_caller]
    fn assert_b_empty(&self, id: &str) {
        assert!(self.b.state(id).is_err(), "container {id} exists in B");
        let left: Vec<_> = std::fs::read_dir(&self.bundles)
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in B's bundle dir: {left:?}");
        for (i, cg) in &self.in_b {
            if i == id {
                assert!(
                    cgroup_dirs(cg).iter().all(|d| !d.exists()),
                    "cgroup {cg} left in B"
                );
            }
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let mut leaks = vec![];
        for (id, cg) in &self.in_b {
            if self.b.state(id).is_ok() {
                let _ = self.b.cmd(&["delete", "--force", id]);
            }
            leaks.extend(leaks_for(&self.b, id, cg));
        }
        // The prefix's own directories (the runtime makes parents, as runc does).
        for d in cgroup_dirs(&self.prefix).into_iter().rev() {
            let _ = std::fs::remove_dir(d.join("rt-test"));
            let _ = std::fs::remove_dir(&d);
        }
        // The Ctx deletes A's containers after this, from the host's namespace.
        self.t.rt.netns = None;
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if !leaks.is_empty() && !std::thread::panicking() {
            panic!("LEAK in B after {}: {leaks:?}", self.t.name);
        }
    }
}

fn report(o: &runtime_tests::CmdOutput) -> Value {
    serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", o.describe()))
}

/// The shared body: migrate a counter from A to B and check it goes on counting there.
fn migrates(name: &str, extra: &[&str]) {
    let Some(mut p) = Pair::new(name) else { return };
    let b = p.counter();
    let (rx, dest) = p.receiver(&p.token, None, true);
    let before = p.count(&p.t.rt, &b.id);
    let o = p.migrate(&b.id, &dest, extra);
    let (rx_ok, rx_err) = p.finish(rx);
    assert!(o.success(), "{}\nreceiver: {rx_err}", o.describe());
    assert!(rx_ok, "receiver failed: {rx_err}");
    let r = report(&o);
    // The source is gone, the destination runs, in B's cgroup, with the count going on.
    assert!(p.t.rt.state(&b.id).is_err(), "the source still exists");
    assert_eq!(p.b.status(&b.id), "running");
    let at = p.count(&p.b, &b.id);
    assert!(at >= before, "counter went back: {before} -> {at}");
    let later = p.wait_count(&p.b, &b.id, at + 3);
    assert!(
        later > at,
        "counter stopped at the destination: {at} -> {later}"
    );
    let pid = p.b.state(&b.id).unwrap()["pid"].as_i64().unwrap() as i32;
    let cg = &p.in_b[0].1;
    assert!(procs_in_cgroup(cg).contains(&pid), "init {pid} not in {cg}");
    // The beancounter limit came along.
    let (dir, v1) = runtime_tests::cgroup_controller_dir("pids", cg);
    let _ = v1;
    assert_eq!(runtime_tests::read_trim(&dir.join("pids.max")), "64");
    assert!(r["precopy_entries"].as_u64().unwrap() > 100, "{r}");
    assert!(r["frozen_ms"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["dest_pid"].as_i64().unwrap() as i32, pid);
    note(&format!("{name}: {r}"));
    // Delete at B: nothing left there (the Drop checks the cgroup and processes).
    p.b.cmd(&["delete", "--force", &b.id]).ok();
    std::fs::remove_dir_all(&p.bundles).unwrap();
    p.assert_b_empty(&b.id);
}

#[test]
fn stop_and_copy_between_two_roots() {
    migrates("mig-stop-copy", &[]);
}

#[test]
fn lazy_pages_between_two_roots() {
    if !have_uffd("mig-lazy") {
        return;
    }
    let _pipes = PipeMax::raise();
    migrates("mig-lazy", &["--lazy-pages"]);
}

#[test]
fn failed_migrations_leave_the_source_running() {
    let Some(mut p) = Pair::new("mig-fail") else {
        return;
    };
    let b = p.counter();
    let other = p.t.scratch().join("other-token").display().to_string();
    p.write_token(&other, "a-different-secret-altogether");
    let tok = p.token.clone();
    struct Case<'a> {
        what: &'a str,
        token: &'a str,
        /// The receiver's --criu.
        criu: Option<&'a str>,
        /// The receiver puts cgroups below the pair's prefix.
        prefix: bool,
        lazy: bool,
        want: &'a str,
    }
    let fails_there = Some("/bin/false");
    let cases = [
        Case {
            what: "wrong token",
            token: &other,
            criu: None,
            prefix: true,
            lazy: false,
            want: "authentication",
        },
        Case {
            what: "restore fails there",
            token: &tok,
            criu: fails_there,
            prefix: true,
            lazy: false,
            want: "could not restore",
        },
        Case {
            what: "lazy restore fails there",
            token: &tok,
            criu: fails_there,
            prefix: true,
            lazy: true,
            want: "could not restore",
        },
        Case {
            what: "cgroup in use there",
            token: &tok,
            criu: None,
            prefix: false,
            lazy: false,
            want: "in use",
        },
    ];
    for Case {
        what,
        token,
        criu,
        prefix,
        lazy,
        want,
    } in cases
    {
        let (rx, dest) = p.receiver(token, criu, prefix);
        let _pipes = lazy.then(PipeMax::raise);
        let flags: &[&str] = if lazy { &["--lazy-pages"] } else { &[] };
        let o = p.migrate(&b.id, &dest, flags).fails();
        let (rx_ok, _) = p.finish(rx);
        assert!(!rx_ok, "{what}: the receiver said it succeeded");
        assert!(o.stderr.contains(want), "{what}: {}", o.describe());
        assert_eq!(
            o.stderr.trim().lines().count(),
            1,
            "{what}: {}",
            o.describe()
        );
        // The source runs (thawed) and counts; B has nothing.
        assert_eq!(p.t.rt.status(&b.id), "running", "{what}");
        let n = p.count(&p.t.rt, &b.id);
        assert!(
            p.wait_count(&p.t.rt, &b.id, n + 3) > n,
            "{what}: the source does not count"
        );
        p.assert_b_empty(&b.id);
    }
    // The wrong-token receiver is refused before anything is sent: nothing under B.
    assert!(!Path::new(&p.b.root).join(&b.id).exists());
}

/// `migrate` SIGKILLed at points spread over its run (pre-copy, freeze, dump, copy, restore
/// there, deleting the source): the container never runs in two places; the source is left
/// running or paused (then `resume` brings it back) or gone with the destination running; and
/// `delete --force` on both sides leaves nothing.
#[test]
fn killed_migration_never_runs_twice_and_cleans_up() {
    let Some(mut p) = Pair::new("mig-killed") else {
        return;
    };
    let mut outcomes = vec![];
    for delay in [20u64, 80, 160, 260, 380, 520, 700, 1000, 1500] {
        let b = p.counter();
        let (rx, dest) = p.receiver(&p.token.clone(), None, true);
        let root = p.t.rt.root.display().to_string();
        let args: Vec<String> = p
            .migrate_args(&b.id, &dest, &[])
            .into_iter()
            .map(String::from)
            .collect();
        let mut sender = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", p.ns[0]))
            .arg(&p.t.rt.bin)
            .args(["--root", &root])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = sender.kill();
        let _ = sender.wait();
        let _ = p.finish(rx);
        // A criu the sender left (its dump) ends on its own once its parent is gone.
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end && criu_of(&b.id) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let src = if p.t.rt.state(&b.id).is_ok() {
            p.t.rt.status(&b.id)
        } else {
            "gone".into()
        };
        let dst = if p.b.state(&b.id).is_ok() {
            p.b.status(&b.id)
        } else {
            "gone".into()
        };
        outcomes.push(format!("{delay} ms: source {src}, destination {dst}"));
        assert!(
            !(src == "running" && dst == "running"),
            "runs twice after a kill at {delay} ms"
        );
        assert!(
            src != "gone" || dst == "running",
            "lost after a kill at {delay} ms"
        );
        if src == "paused" && dst != "running" {
            p.t.rt.cmd(&["resume", &b.id]).ok();
            let n = p.count(&p.t.rt, &b.id);
            assert!(
                p.wait_count(&p.t.rt, &b.id, n + 3) > n,
                "resumed source does not count"
            );
        }
        p.t.rt.cmd(&["delete", "--force", &b.id]);
        p.b.cmd(&["delete", "--force", &b.id]);
        assert!(p.t.rt.state(&b.id).is_err() && p.b.state(&b.id).is_err());
        let _ = std::fs::remove_dir_all(&p.bundles);
        p.assert_b_empty(&b.id);
        let left = leaks_for(&p.t.rt, &b.id, &b.cgroup);
        assert!(
            left.is_empty(),
            "left in A after a kill at {delay} ms: {left:?}"
        );
    }
    note(&format!("mig-killed: {}", outcomes.join("; ")));
}

/// Whether a criu working on container `id` still runs (an fd of it names the ID: the
/// images directory).
fn criu_of(id: &str) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.filter_map(|e| e.ok()).any(|e| {
        let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
        exe.file_name().is_some_and(|n| n == "criu")
            && std::fs::read_dir(e.path().join("fd")).is_ok_and(|fds| {
                fds.filter_map(|f| f.ok())
                    .filter_map(|f| std::fs::read_link(f.path()).ok())
                    .any(|l| l.to_string_lossy().contains(id))
            })
    })
}
