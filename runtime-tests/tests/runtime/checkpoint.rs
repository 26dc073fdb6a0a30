//! Checkpoint/restore with CRIU (`checkpoint`, `restore`): a counter container continues from
//! its count, `--leave-running`, restore under a new ID, an established TCP connection inside
//! the container's own network namespace, a pty, beancounter limits (runvz), and a failed
//! restore leaving nothing behind. Differential; every test skips when criu >= 4.1 is missing.
//!
//! The containers redirect their stdio to their own /dev/null first: a host file as a
//! container's stdio cannot be dumped by criu ("Can't lookup mount"), and the harness gives
//! the runtime files.

use runtime_tests::{
    cgroup_controller_dir, cgroup_dirs, mountinfo_lines, note, read_pty_until, read_trim, setup,
    Bundle, ConsoleSocket, Ctx,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const COUNTER: &str = "exec </dev/null >/dev/null 2>&1; i=0; while true; do i=$((i+1)); \
     echo $i > /dev/shm/n.t; mv /dev/shm/n.t /dev/shm/n; sleep 0.1; done";

/// Whether a criu >= 4.1 is on PATH (else the test is skipped with the reason).
pub(crate) fn have_criu(test: &str) -> bool {
    let out = std::process::Command::new("criu").arg("--version").output();
    let ver = out
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let v: Vec<u32> = ver
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .map(|v| v.split('.').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default();
    if v.len() >= 2 && (v[0], v[1]) >= (4, 1) {
        return true;
    }
    note(&format!(
        "SKIP {test}: criu >= 4.1 not found in PATH (hack/install-criu)"
    ));
    false
}

/// `have_criu`, and the runtime is runvz (else skipped with `why`).
fn runvz_with_criu(t: &Ctx, test: &str, why: &str) -> bool {
    if !have_criu(test) {
        return false;
    }
    if !t.rt.is_runvz() {
        note(&format!("SKIP {test}: {why}"));
        return false;
    }
    true
}

/// The counter of the container `id` (its init's view of /dev/shm/n), 0 if unreadable.
fn count(t: &Ctx, id: &str, file: &str) -> u64 {
    let Ok(st) = t.rt.state(id) else { return 0 };
    let pid = st["pid"].as_i64().unwrap_or(0);
    for _ in 0..50 {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/root/dev/shm/{file}")) {
            if let Some(n) = s.lines().last().and_then(|l| l.trim().parse().ok()) {
                return n;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    0
}

fn wait_count(t: &Ctx, id: &str, file: &str, min: u64) -> u64 {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let n = count(t, id, file);
        if n >= min || Instant::now() > end {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(t: &Ctx, b: &Bundle) {
    t.create(b);
    t.start(&b.id);
    assert!(wait_count(t, &b.id, "n", 3) >= 3, "counter did not start");
}

fn img(t: &Ctx, name: &str) -> (PathBuf, String) {
    let p = t.scratch().join(name);
    let s = p.display().to_string();
    (p, s)
}

fn checkpoint(t: &Ctx, id: &str, image: &str, extra: &[&str]) -> runtime_tests::CmdOutput {
    let mut a = vec!["checkpoint", "--image-path", image];
    a.extend_from_slice(extra);
    a.push(id);
    t.rt.cmd(&a)
}

fn restore(t: &Ctx, b: &Bundle, id: &str, image: &str, extra: &[&str]) -> runtime_tests::CmdOutput {
    let dir = b.dir_str();
    let mut a = vec!["restore", "-d", "--image-path", image, "-b", &dir];
    a.extend_from_slice(extra);
    a.push(id);
    t.rt.cmd(&a)
}

#[track_caller]
fn dump_ok(t: &Ctx, id: &str, ip: &Path, is: &str, extra: &[&str]) {
    let o = checkpoint(t, id, is, extra);
    assert!(
        o.success(),
        "{}\n{}",
        o.describe(),
        log_tail(ip, "dump.log")
    );
}

#[track_caller]
fn restore_ok(t: &Ctx, b: &Bundle, id: &str, ip: &Path, is: &str, extra: &[&str]) {
    let o = restore(t, b, id, is, extra);
    assert!(
        o.success(),
        "{}\n{}",
        o.describe(),
        log_tail(ip, "restore.log")
    );
}

/// A counter container, started and checkpointed (stopped) into `img`.
fn checkpointed_counter(t: &Ctx, b: &Bundle) -> (PathBuf, String) {
    start(t, b);
    let (ip, is) = img(t, "img");
    dump_ok(t, &b.id, &ip, &is, &[]);
    (ip, is)
}

fn log_tail(image: &Path, log: &str) -> String {
    std::fs::read_to_string(image.join(log))
        .map(|s| {
            s.lines()
                .filter(|l| l.contains("Error"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// No cgroup of `b`, and no mount naming its ID or below the test's scratch dir (the image
/// and work dirs, where criu mounts its cgroup yard; the bundle).
#[track_caller]
fn assert_nothing_left(t: &Ctx, b: &Bundle, when: &str) {
    let left: Vec<_> = cgroup_dirs(&b.cgroup)
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(left.is_empty(), "cgroup left {when}: {left:?}");
    let scratch = t.scratch().display().to_string();
    let mounts: Vec<_> = mountinfo_lines()
        .into_iter()
        .filter(|l| l.contains(&b.id) || l.contains(&scratch))
        .collect();
    assert!(mounts.is_empty(), "mounts left {when}: {mounts:?}");
}

#[test]
fn checkpoint_and_restore_continue_the_count() {
    let t = setup!("cpt-counter");
    if !have_criu("cpt-counter") {
        return;
    }
    let b = t.bundle().sh(COUNTER);
    let (ip, is) = checkpointed_counter(&t, &b);
    // The container is gone, as with runc.
    assert!(t.rt.state(&b.id).is_err(), "state after checkpoint");
    let at = std::fs::read_to_string(ip.join("descriptors.json"));
    assert!(at.is_ok(), "no descriptors.json in the image");
    restore_ok(&t, &b, &b.id, &ip, &is, &[]);
    assert_eq!(t.rt.status(&b.id), "running");
    let c1 = count(&t, &b.id, "n");
    let c2 = wait_count(&t, &b.id, "n", c1 + 3);
    assert!(c1 >= 3, "restored counter starts from its count: {c1}");
    assert!(c2 > c1, "restored counter keeps counting: {c1} -> {c2}");
}

/// The container's network namespace is saved with its configuration (runvz's default: lo
/// is up again after restore) unless `--empty-ns network` (runc's fixed choice: a new, empty
/// namespace, lo down). Differential for the flag; the default is runvz's.
#[test]
fn network_namespace_saved_or_left_empty() {
    let t = setup!("cpt-netns");
    if !have_criu("cpt-netns") {
        return;
    }
    let lo_up = |id: &str| {
        let pid = t.pid(id).to_string();
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid, "-n", "ip", "-o", "link", "show", "lo"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("UP")
    };
    // The container brings lo up itself, then counts.
    let b = t
        .bundle()
        .sh(&format!(
            "ip link set lo up 2>/dev/null || ifconfig lo up; {COUNTER}"
        ))
        .set("/process/capabilities/effective", json!(["CAP_NET_ADMIN"]))
        .set("/process/capabilities/permitted", json!(["CAP_NET_ADMIN"]))
        .set("/process/capabilities/bounding", json!(["CAP_NET_ADMIN"]));
    start(&t, &b);
    assert!(lo_up(&b.id), "the container did not bring lo up");
    // In this order: each round dumps what the one before restored.
    let cases: &[(&[&str], Option<bool>)] = &[
        // runc always leaves the namespace empty; runvz saves it.
        (&[], t.rt.is_runvz().then_some(true)),
        (&["--empty-ns", "network"], Some(false)),
    ];
    for (i, (flags, want_up)) in cases.iter().enumerate() {
        let (ip, is) = img(&t, &format!("img{i}"));
        dump_ok(&t, &b.id, &ip, &is, flags);
        restore_ok(&t, &b, &b.id, &ip, &is, flags);
        let c1 = count(&t, &b.id, "n");
        assert!(
            wait_count(&t, &b.id, "n", c1 + 3) > c1,
            "{flags:?}: restored counter keeps counting"
        );
        if let Some(up) = want_up {
            assert_eq!(lo_up(&b.id), *up, "{flags:?}: lo up after restore");
        }
    }
}

#[test]
fn leave_running_then_restore_goes_back_in_time() {
    let t = setup!("cpt-leave");
    if !have_criu("cpt-leave") {
        return;
    }
    let b = t.bundle().sh(COUNTER);
    start(&t, &b);
    let (ip, is) = img(&t, "img");
    let before = count(&t, &b.id, "n");
    dump_ok(&t, &b.id, &ip, &is, &["--leave-running"]);
    let after = count(&t, &b.id, "n");
    assert_eq!(t.rt.status(&b.id), "running");
    let later = wait_count(&t, &b.id, "n", after + 15);
    assert!(later >= after + 15, "kept counting: {after} -> {later}");
    t.rt.cmd(&["delete", "--force", &b.id]).ok();
    restore_ok(&t, &b, &b.id, &ip, &is, &[]);
    let r = count(&t, &b.id, "n");
    assert!(
        r >= before && r < later,
        "restored at the checkpoint's count ({before}..{after}), not {later}: {r}"
    );
}

#[test]
fn restore_under_a_new_id() {
    let t = setup!("cpt-newid");
    if !have_criu("cpt-newid") {
        return;
    }
    let b = t.bundle().sh(COUNTER);
    let (ip, is) = checkpointed_counter(&t, &b);
    let new = format!("{}-new", b.id);
    t.register(&new, &b.cgroup);
    restore_ok(&t, &b, &new, &ip, &is, &[]);
    assert_eq!(t.rt.status(&new), "running");
    assert!(t.rt.state(&b.id).is_err(), "the old ID stays gone");
    let c1 = count(&t, &new, "n");
    assert!(
        wait_count(&t, &new, "n", c1 + 3) > c1,
        "counting under {new}"
    );
}

#[test]
fn established_tcp_connection_survives() {
    let t = setup!("cpt-tcp");
    if !have_criu("cpt-tcp") {
        return;
    }
    // A server and a client on loopback inside the container's own network namespace.
    let b = t
        .bundle()
        .edit(|c| {
            for set in ["bounding", "effective", "permitted"] {
                if let Some(a) = c["process"]["capabilities"][set].as_array_mut() {
                    a.push(json!("CAP_NET_ADMIN"));
                }
            }
        })
        .sh(
        "exec </dev/null >/dev/null 2>&1; ip link set lo up; \
         sleep 100000 | nc -l -p 5000 > /dev/shm/got & sleep 0.5; \
         i=0; while true; do i=$((i+1)); echo $i; echo $i > /dev/shm/n.t; mv /dev/shm/n.t /dev/shm/n; sleep 0.1; done \
         | nc 127.0.0.1 5000 & wait",
    );
    t.create(&b);
    t.start(&b.id);
    assert!(
        wait_count(&t, &b.id, "got", 5) >= 5,
        "data over the connection"
    );
    let (ip, is) = img(&t, "img");
    // Without --tcp-established criu refuses (which shows the connection is there).
    let o = checkpoint(&t, &b.id, &is, &["--leave-running"]);
    assert!(
        !o.success(),
        "dump of an established connection without the flag"
    );
    assert_eq!(
        t.rt.status(&b.id),
        "running",
        "a failed checkpoint leaves it running"
    );
    let _ = ip;
    let (ip2, is2) = img(&t, "img2");
    let o = checkpoint(&t, &b.id, &is2, &["--tcp-established"]);
    let log = log_tail(&ip2, "dump.log");
    if !o.success() && log.contains("Can't get 1:16 opt") {
        // Kernel >= 6.16 refuses SO_PASSCRED on TCP sockets; criu 4.1.1 still reads it.
        assert_eq!(
            t.rt.status(&b.id),
            "running",
            "a failed dump leaves it running"
        );
        note("SKIP cpt-tcp restore: criu 4.1.1 cannot dump TCP sockets on this kernel (getsockopt SO_PASSCRED: EOPNOTSUPP)");
        return;
    }
    assert!(o.success(), "{}\n{log}", o.describe());
    restore_ok(&t, &b, &b.id, &ip2, &is2, &["--tcp-established"]);
    let g1 = count(&t, &b.id, "got");
    let g2 = wait_count(&t, &b.id, "got", g1 + 5);
    assert!(
        g2 >= g1 + 5,
        "the restored connection carries data: {g1} -> {g2}"
    );
}

#[test]
fn container_with_a_pty() {
    let t = setup!("cpt-pty");
    if !have_criu("cpt-pty") {
        return;
    }
    let sock = ConsoleSocket::bind(t.scratch());
    let b = t
        .bundle()
        .set("/process/terminal", json!(true))
        .sh("i=0; while true; do i=$((i+1)); echo tick$i; echo $i > /dev/shm/n.t; mv /dev/shm/n.t /dev/shm/n; sleep 0.1; done");
    t.create_raw(&b, &b.id, &["--console-socket", &sock.path_str()])
        .ok();
    let master = sock.accept_master(Duration::from_secs(10));
    t.start(&b.id);
    read_pty_until(&master, "tick3", Duration::from_secs(10));
    let (ip, is) = img(&t, "img");
    dump_ok(&t, &b.id, &ip, &is, &["--shell-job"]);
    drop(master);
    let s2 = t.scratch().join("s2");
    std::fs::create_dir_all(&s2).unwrap();
    let sock2 = ConsoleSocket::bind(&s2);
    restore_ok(
        &t,
        &b,
        &b.id,
        &ip,
        &is,
        &["--shell-job", "--console-socket", &sock2.path_str()],
    );
    let master = sock2.accept_master(Duration::from_secs(10));
    let c = count(&t, &b.id, "n");
    let want = format!("tick{}", c + 3);
    let out = read_pty_until(&master, &want, Duration::from_secs(10));
    assert!(out.contains(&want), "output on the new pty: {out:?}");
}

#[test]
fn beancounter_limits_survive_restore() {
    let t = setup!("cpt-ub");
    if !runvz_with_criu(&t, "cpt-ub", "io.runvz.* beancounters are runvz's") {
        return;
    }
    let b = t
        .bundle()
        .set("/annotations", json!({"io.runvz.ub.numproc": "100:120"}))
        .sh(COUNTER);
    let (ip, is) = checkpointed_counter(&t, &b);
    restore_ok(&t, &b, &b.id, &ip, &is, &[]);
    let (pids, _) = cgroup_controller_dir("pids", &b.cgroup);
    assert_eq!(read_trim(&pids.join("pids.max")), "120");
    let pid = t.pid(&b.id);
    let procs = std::fs::read_to_string(pids.join("cgroup.procs")).unwrap_or_default();
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "restored init {pid} in the limited cgroup: {procs:?}"
    );
    let o = t.rt.cmd(&["beancounters", "--format", "json", &b.id]).ok();
    assert!(o.stdout.contains("numproc"), "{}", o.stdout);
}

#[test]
fn failed_restore_leaves_nothing() {
    let t = setup!("cpt-corrupt");
    if !have_criu("cpt-corrupt") {
        return;
    }
    let b = t.bundle().sh(COUNTER);
    let (ip, is) = checkpointed_counter(&t, &b);
    // Corrupt the process tree image: criu must fail.
    std::fs::write(ip.join("pstree.img"), b"garbage, not a criu image").unwrap();
    let o = restore(&t, &b, &b.id, &is, &[]);
    assert!(!o.success(), "restore from a corrupt image succeeded");
    assert!(
        t.rt.state(&b.id).is_err(),
        "state left after a failed restore"
    );
    assert!(
        !t.rt.root.join(&b.id).exists() || !t.rt.is_runvz(),
        "state dir left"
    );
    assert_nothing_left(&t, &b, "after a failed restore");
}

/// A restore SIGKILLed part-way: `delete --force` removes what it made (its own mounts were in
/// a private mount namespace). runvz only.
#[test]
fn killed_restore_is_undone_by_delete_force() {
    let t = setup!("cpt-killed");
    if !runvz_with_criu(
        &t,
        "cpt-killed",
        "runc restores in the host mount namespace (a killed criu may leave its cgroup yard mounted)",
    ) {
        return;
    }
    let b = t.bundle().sh(COUNTER);
    let (_ip, is) = checkpointed_counter(&t, &b);
    for delay in [60u64, 200] {
        let mut child = std::process::Command::new(&t.rt.bin)
            .args(["--root", &t.rt.root.display().to_string()])
            .args([
                "restore",
                "-d",
                "--image-path",
                &is,
                "-b",
                &b.dir_str(),
                &b.id,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn restore");
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        t.rt.cmd(&["delete", "--force", &b.id]).ok();
        assert!(t.rt.state(&b.id).is_err(), "state left ({delay} ms)");
        assert_nothing_left(&t, &b, &format!("after a kill at {delay} ms"));
    }
}

/// Raises fs.pipe-max-size to 4 MiB while any test holds one (criu's page server needs 3.3 MB
/// pipes; this host's default is 1 MiB and criu lacks CAP_SYS_RESOURCE to exceed it); the
/// last one to go puts the old value back.
pub(crate) struct PipeMax;

const PIPE_MAX: &str = "/proc/sys/fs/pipe-max-size";

/// (holders, the value to put back)
static PIPE_HOLDERS: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));

impl PipeMax {
    pub(crate) fn raise() -> PipeMax {
        let mut h = PIPE_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        if h.0 == 0 {
            let old = std::fs::read_to_string(PIPE_MAX).unwrap_or_default();
            if old.trim().parse::<u64>().unwrap_or(0) < 4 << 20 {
                std::fs::write(PIPE_MAX, (4u64 << 20).to_string())
                    .expect("raising fs.pipe-max-size");
                h.1 = Some(old);
            }
        }
        h.0 += 1;
        PipeMax
    }
}

impl Drop for PipeMax {
    fn drop(&mut self) {
        let mut h = PIPE_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        h.0 -= 1;
        if h.0 == 0 {
            if let Some(old) = h.1.take() {
                let _ = std::fs::write(PIPE_MAX, old.trim());
            }
        }
    }
}

/// Whether criu can restore lazily here (userfaultfd), else the test is skipped.
pub(crate) fn have_uffd(test: &str) -> bool {
    let ok = std::process::Command::new("criu")
        .args(["check", "--feature", "uffd-noncoop"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        note(&format!(
            "SKIP {test}: no userfaultfd here (criu check --feature uffd-noncoop)"
        ));
    }
    ok
}

/// Post-copy as runc's callers do it: `checkpoint --lazy-pages --page-server --status-fd`
/// leaves the pages behind a page server, `criu lazy-pages` pulls them for a `restore
/// --lazy-pages` under a new ID; the counter goes on and the source is gone.
#[test]
fn lazy_pages_restore() {
    let t = setup!("cpt-lazy");
    if !have_criu("cpt-lazy") || !have_uffd("cpt-lazy") {
        return;
    }
    let _pipes = PipeMax::raise();
    let b = t.bundle().sh(COUNTER);
    start(&t, &b);
    let (ip, is) = img(&t, "img");
    let work = t.scratch().join("work");
    let rwork = t.scratch().join("rwork");
    std::fs::create_dir_all(&rwork).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    // The status fd is a fifo opened as fd 3 of the runtime (and inherited by its criu).
    let fifo = t.scratch().join("status");
    let fifo_s = fifo.display().to_string();
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let script = format!(
        "exec \"$0\" --root \"$1\" checkpoint --lazy-pages --page-server 127.0.0.1:{port} \
         --status-fd 3 --image-path \"$2\" --work-path \"$3\" \"$4\" 3>\"$5\""
    );
    let mut dump = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg(&t.rt.bin)
        .arg(&t.rt.root)
        .arg(&ip)
        .arg(&work)
        .arg(&b.id)
        .arg(&fifo)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Blocks until the runtime opens the fifo; then criu's \0 says the page server is up.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [9u8; 1];
        let r = std::fs::File::open(&fifo_s)
            .and_then(|mut f| std::io::Read::read(&mut f, &mut b))
            .map(|n| (n, b[0]));
        let _ = tx.send(r);
    });
    let ready = rx.recv_timeout(Duration::from_secs(20));
    let before = count(&t, &b.id, "n");
    if !matches!(ready, Ok(Ok((1, 0)))) {
        let _ = dump.kill();
        let out = dump.wait_with_output().unwrap();
        panic!(
            "no ready byte from the page server ({ready:?}): {}{}",
            String::from_utf8_lossy(&out.stderr),
            log_tail(&work, "dump.log")
        );
    }
    let mut daemon = std::process::Command::new("criu")
        .args([
            "lazy-pages",
            "--page-server",
            "--address",
            "127.0.0.1",
            "--port",
        ])
        .arg(port.to_string())
        .arg("-D")
        .arg(&ip)
        .arg("-W")
        .arg(&rwork)
        .args(["-o", "lazy-pages.log"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sock = rwork.join("lazy-pages.socket");
    let end = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Restored into a cgroup of its own: the source's runtime deletes the source (and kills
    // what is in its cgroup) only when the last page has been pulled, after this restore.
    let b2 = t.bundle().sh(COUNTER);
    b2.save();
    let new = b2.id.clone();
    let rw = rwork.display().to_string();
    let o = restore(&t, &b2, &new, &is, &["--lazy-pages", "--work-path", &rw]);
    // The dump and the daemon end once every page has been pulled.
    let dump_out = dump.wait_with_output().unwrap();
    let lp = daemon.wait().unwrap();
    assert!(
        o.success(),
        "{}\n{}",
        o.describe(),
        log_tail(&rwork, "restore.log")
    );
    assert!(
        dump_out.status.success(),
        "checkpoint: {}{}",
        String::from_utf8_lossy(&dump_out.stderr),
        log_tail(&work, "dump.log")
    );
    assert!(
        lp.success(),
        "lazy-pages: {}",
        log_tail(&rwork, "lazy-pages.log")
    );
    assert_eq!(t.rt.status(&new), "running");
    assert!(t.rt.state(&b.id).is_err(), "the source stays gone");
    let c1 = count(&t, &new, "n");
    assert!(c1 >= before, "counter went back: {before} -> {c1}");
    assert!(
        wait_count(&t, &new, "n", c1 + 3) > c1,
        "counting under {new}"
    );
}
