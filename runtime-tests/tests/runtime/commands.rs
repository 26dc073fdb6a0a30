//! Each CLI command: --version, spec, create, start, state, kill, delete, run, list, --pid-file.

use runtime_tests::{proc_is_zombie, setup};
use std::fs;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[test]
fn version_prints_name_version_and_spec() {
    let t = setup!("version");
    let o = t.rt.cmd_raw(&["--version"], None).ok();
    let first = o.stdout.lines().next().unwrap_or_default().to_string();
    // "<name> version X.Y.Z..." on the first line.
    let mut words = first.split_whitespace();
    let (name, kw, ver) = (words.next(), words.next(), words.next());
    assert!(
        name.is_some() && kw == Some("version"),
        "first line {first:?} is not '<name> version X.Y.Z'"
    );
    let ver = ver.unwrap_or_default();
    let nums: Vec<&str> = ver.split(['.', '+', '-', '~']).take(3).collect();
    assert!(
        nums.len() == 3 && nums.iter().all(|n| n.parse::<u32>().is_ok()),
        "version {ver:?} is not X.Y.Z"
    );
    assert!(
        o.stdout.lines().any(|l| l.starts_with("spec: 1.")),
        "no 'spec: 1.x' line in:\n{}",
        o.stdout
    );
    if t.rt.is_runvz() {
        assert!(first.starts_with("runvz version "), "first line: {first:?}");
        assert!(o.stdout.lines().any(|l| l.starts_with("commit:")));
    }
}

#[test]
fn spec_writes_a_valid_config_and_refuses_to_overwrite() {
    let t = setup!("spec");
    let dir = t.scratch().join("spec");
    fs::create_dir_all(&dir).expect("mkdir spec dir");
    t.rt.cmd_raw(&["spec"], Some(&dir)).ok();
    let cfg: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(dir.join("config.json")).expect("spec wrote config.json"),
    )
    .expect("spec's config.json is JSON");
    assert!(
        cfg["ociVersion"].as_str().unwrap_or("").starts_with("1."),
        "ociVersion: {}",
        cfg["ociVersion"]
    );
    assert_eq!(cfg["root"]["path"], "rootfs", "root.path");
    assert!(
        cfg["process"]["args"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "process.args missing"
    );
    let ns: Vec<&str> = cfg["linux"]["namespaces"]
        .as_array()
        .expect("linux.namespaces")
        .iter()
        .filter_map(|n| n["type"].as_str())
        .collect();
    for want in ["pid", "network", "ipc", "uts", "mount"] {
        assert!(ns.contains(&want), "spec lacks namespace {want}: {ns:?}");
    }
    // A second `spec` must not clobber an existing config.json.
    fs::write(dir.join("config.json"), "keep").expect("write marker");
    t.rt.cmd_raw(&["spec"], Some(&dir)).fails();
    assert_eq!(
        fs::read_to_string(dir.join("config.json")).expect("read back"),
        "keep",
        "spec overwrote an existing config.json"
    );
    // --bundle DIR writes there instead of the cwd.
    let other = t.scratch().join("spec2");
    fs::create_dir_all(&other).expect("mkdir spec2");
    t.rt.cmd_raw(&["spec", "--bundle", &other.to_string_lossy()], Some(&dir))
        .ok();
    assert!(other.join("config.json").exists(), "spec --bundle ignored");
}

#[test]
fn lifecycle_create_start_state_kill_delete() {
    let t = setup!("lifecycle");
    let b = t.bundle().sh("echo started; exec sleep 1000");
    let c = t.create(&b);
    let st = t.rt.state(&b.id).expect("state after create");
    assert_eq!(st["status"], "created", "state: {st}");
    assert_eq!(st["id"], b.id.as_str());
    assert_eq!(st["bundle"], b.dir_str().as_str(), "state.bundle");
    assert!(st["ociVersion"].is_string(), "state lacks ociVersion: {st}");
    assert!(st["created"].as_str().is_some_and(|s| s.contains('T')));
    let pid = t.pid(&b.id);
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "init pid {pid} of a created container does not exist"
    );
    // The user process must not have run before `start`.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.stdout_now(), "", "process ran before start");
    t.start(&b.id);
    assert_eq!(
        c.wait_stdout("started", T).trim(),
        "started",
        "no output after start"
    );
    assert_eq!(t.rt.wait_status(&b.id, "running", T), "running");
    assert_eq!(t.pid(&b.id), pid, "pid changed across start");
    t.rt.cmd(&["kill", &b.id, "KILL"]).ok();
    assert_eq!(t.rt.wait_status(&b.id, "stopped", T), "stopped");
    let st = t.rt.state(&b.id).expect("state of a stopped container");
    assert_eq!(st["pid"], 0, "a stopped container reports pid 0: {st}");
    t.rt.cmd(&["delete", &b.id]).ok();
    t.rt.state(&b.id)
        .expect_err("state still works after delete")
        .fails()
        .stderr_has("does not exist");
}

#[test]
fn start_twice_fails_and_kill_of_stopped_fails() {
    let t = setup!("start-twice");
    let b = t.bundle().args(&["true"]);
    t.create(&b);
    t.start(&b.id);
    assert_eq!(t.rt.wait_status(&b.id, "stopped", T), "stopped");
    t.rt.cmd(&["start", &b.id]).fails();
    t.rt.cmd(&["kill", &b.id, "KILL"]).fails();
    t.rt.cmd(&["delete", &b.id]).ok();
}

#[test]
fn delete_of_running_needs_force() {
    let t = setup!("delete-force");
    let b = t.bundle().args(&["sleep", "1000"]);
    t.create(&b);
    t.start(&b.id);
    let pid = t.pid(&b.id);
    t.rt.cmd(&["delete", &b.id]).fails();
    assert_eq!(t.rt.status(&b.id), "running", "failed delete changed state");
    t.rt.cmd(&["delete", "--force", &b.id]).ok();
    assert!(t.rt.state(&b.id).is_err(), "state after delete --force");
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        proc_is_zombie(pid)
    });
    assert!(gone, "init {pid} survived delete --force");
}

#[test]
fn delete_force_of_created_container() {
    let t = setup!("delete-created");
    let b = t.bundle().args(&["true"]);
    t.create(&b);
    t.rt.cmd(&["delete", "--force", &b.id]).ok();
    assert!(t.rt.state(&b.id).is_err());
}

#[test]
fn missing_container_does_not_exist() {
    let t = setup!("missing");
    let id = t.new_id();
    for cmd in [
        vec!["state", id.as_str()],
        vec!["delete", id.as_str()],
        vec!["start", id.as_str()],
        vec!["kill", id.as_str(), "KILL"],
    ] {
        t.rt.cmd(&cmd).fails().stderr_has("does not exist");
    }
}

// Podman runs `delete --force` after a failed create, when there may be no container; runc
// succeeds there, so the engine reports the create's error and not "does not exist".
#[test]
fn delete_force_of_missing_container_succeeds() {
    let t = setup!("missing-force");
    let id = t.new_id();
    t.rt.cmd(&["delete", "--force", &id]).ok();
    t.rt.cmd(&["delete", &id])
        .fails()
        .stderr_has("does not exist");
}

#[test]
fn kill_accepts_signal_names_and_numbers() {
    let t = setup!("kill-forms");
    let b = t.bundle().sh(
        "trap 'echo usr1' USR1; trap 'echo term; exit 3' TERM; echo ready; \
         while :; do sleep 0.05; done",
    );
    let c = t.create(&b);
    t.start(&b.id);
    c.wait_stdout("ready", T);
    for (i, sig) in ["USR1", "SIGUSR1", "10"].iter().enumerate() {
        t.rt.cmd(&["kill", &b.id, sig]).ok();
        let want = "usr1\n".repeat(i + 1);
        let got = c.wait_stdout(&want, T);
        assert!(
            got.contains(&want),
            "after kill {sig}: output {got:?} lacks {} usr1 lines",
            i + 1
        );
    }
    // Default signal of `kill` is SIGTERM.
    t.rt.cmd(&["kill", &b.id]).ok();
    assert_eq!(t.rt.wait_status(&b.id, "stopped", T), "stopped");
    assert!(c.stdout_now().contains("term"), "TERM trap did not run");
}

#[test]
fn kill_with_bad_signal_is_refused_and_harmless() {
    let t = setup!("kill-bad");
    let b = t.bundle().args(&["sleep", "1000"]);
    t.create(&b);
    t.start(&b.id);
    for bad in ["SIGFOO", "NOTASIGNAL", "-1", "99999"] {
        let o = t.rt.cmd(&["kill", &b.id, bad]).fails();
        assert!(!o.stderr.trim().is_empty(), "kill {bad}: no message");
    }
    assert_eq!(t.rt.status(&b.id), "running", "bad kill hurt the container");
}

#[test]
fn run_returns_the_process_exit_code() {
    let t = setup!("run-exit");
    for (script, code) in [("true", 0), ("exit 7", 7), ("false", 1), ("exit 255", 255)] {
        let b = t.bundle().sh(script);
        t.run(&b).exit_code(code);
        assert!(t.rt.state(&b.id).is_err(), "run left {} behind", b.id);
    }
}

#[test]
fn run_of_init_killed_by_signal_exits_128_plus_signal() {
    let t = setup!("run-signal");
    let b = t.bundle().sh("echo up; exec sleep 1000");
    b.save();
    let rt = t.rt.clone();
    let (dir, id) = (b.dir_str(), b.id.clone());
    let runner = std::thread::spawn(move || rt.cmd(&["run", "--bundle", &dir, &id]));
    assert_eq!(t.rt.wait_status(&b.id, "running", T), "running");
    t.rt.cmd(&["kill", &b.id, "KILL"]).ok();
    let o = runner.join().expect("run thread");
    o.exit_code(137);
}

#[test]
fn run_connects_stdout_and_stderr() {
    let t = setup!("run-stdio");
    let b = t.bundle().sh("echo to-out; echo to-err >&2");
    let o = t.run(&b).ok();
    assert_eq!(o.stdout.trim(), "to-out");
    assert!(o.stderr.contains("to-err"), "stderr: {:?}", o.stderr);
}

#[test]
fn run_detach_then_state_running() {
    let t = setup!("run-detach");
    let b = t.bundle().args(&["sleep", "1000"]);
    b.save();
    t.rt.cmd(&["run", "--detach", "--bundle", &b.dir_str(), &b.id])
        .ok();
    assert_eq!(t.rt.wait_status(&b.id, "running", T), "running");
    t.rt.cmd(&["delete", "--force", &b.id]).ok();
}

#[test]
fn pid_file_holds_the_init_pid() {
    let t = setup!("pid-file");
    let b = t.bundle().args(&["sleep", "1000"]);
    let pf = t.scratch().join("init.pid");
    t.create_raw(&b, &b.id, &["--pid-file", &pf.to_string_lossy()])
        .ok();
    let pid: i32 = fs::read_to_string(&pf)
        .expect("pid file written")
        .trim()
        .parse()
        .expect("pid file holds a number");
    assert_eq!(pid, t.pid(&b.id), "pid file vs state");
    let comm = fs::read_to_string(format!("/proc/{pid}/status")).expect("pid exists");
    assert!(comm.contains("NSpid:"), "{pid} is not a live process");
}

#[test]
fn list_shows_containers() {
    let mut t = setup!("list");
    // `list` shows the whole root: a root of its own keeps other tests' containers (and
    // runc's failure to list a root whose containers vanish meanwhile) out of it.
    t.rt.root = t.rt.root.with_extension("list");
    let a = t.bundle().args(&["sleep", "1000"]);
    let b = t.bundle().args(&["sleep", "1000"]);
    t.create(&a);
    t.create(&b);
    t.start(&b.id);
    let l = t.rt.cmd(&["list", "--format", "json"]).ok().json();
    let arr = l.as_array().expect("list --format json is an array");
    let find = |id: &str| {
        arr.iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing from list: {l}"))
            .clone()
    };
    assert_eq!(find(&a.id)["status"], "created");
    assert_eq!(find(&b.id)["status"], "running");
    assert!(find(&b.id)["pid"].as_i64().unwrap_or(0) > 0);
    let q = t.rt.cmd(&["list", "-q"]).ok();
    let ids: Vec<&str> = q.stdout.lines().collect();
    assert!(
        ids.contains(&a.id.as_str()) && ids.contains(&b.id.as_str()),
        "list -q: {ids:?}"
    );
    let plain = t.rt.cmd(&["list"]).ok();
    assert!(
        plain.stdout.lines().next().unwrap_or("").contains("ID"),
        "list header"
    );
    assert!(plain.stdout.contains(&a.id));
}

#[test]
fn features_describes_the_runtime() {
    let t = setup!("features");
    let o = t.rt.cmd(&["features"]).ok();
    let f = o.json();
    assert!(
        f["ociVersionMin"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{f}"
    );
    assert!(
        f["ociVersionMax"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{f}"
    );
    let ns = f["linux"]["namespaces"]
        .as_array()
        .expect("linux.namespaces");
    for want in ["mount", "pid", "network", "ipc", "uts", "user", "cgroup"] {
        assert!(ns.iter().any(|n| n == want), "{want} missing from {ns:?}");
    }
    assert!(
        f["hooks"]
            .as_array()
            .is_some_and(|h| h.iter().any(|x| x == "prestart")),
        "{f}"
    );
}
