//! `exec`: a new process in a running container joins its namespaces and cgroup and gets its
//! identity; exit codes, detach with a pid file, overrides and process.json. Differential.

use runtime_tests::{procs_in_cgroup, setup};
use std::fs;

fn running(t: &runtime_tests::Ctx) -> runtime_tests::Bundle {
    let b = t.bundle().args(&["sleep", "1000"]);
    t.create(&b);
    t.start(&b.id);
    b
}

#[test]
fn exec_joins_the_containers_namespaces() {
    let t = setup!("exec-ns");
    let b = running(&t);
    let init = t.pid(&b.id);
    let o =
        t.rt.cmd(&[
            "exec",
            &b.id,
            "sh",
            "-c",
            "for n in pid net ipc uts mnt; do readlink /proc/self/ns/$n; done",
        ])
        .ok();
    let want: Vec<String> = ["pid", "net", "ipc", "uts", "mnt"]
        .iter()
        .map(|n| {
            fs::read_link(format!("/proc/{init}/ns/{n}"))
                .expect("init ns")
                .display()
                .to_string()
        })
        .collect();
    let got: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(got, want, "exec's namespaces differ from the init's");
}

#[test]
fn exec_returns_the_exit_code() {
    let t = setup!("exec-code");
    let b = running(&t);
    t.rt.cmd(&["exec", &b.id, "sh", "-c", "exit 7"])
        .exit_code(7);
    t.rt.cmd(&["exec", &b.id, "true"]).exit_code(0);
}

#[test]
fn exec_detach_writes_the_pid_and_stays_in_the_cgroup() {
    let t = setup!("exec-detach");
    let b = running(&t);
    let pidfile = t.scratch().join("exec.pid");
    t.rt.cmd(&[
        "exec",
        "--detach",
        "--pid-file",
        pidfile.to_str().expect("utf8"),
        &b.id,
        "sleep",
        "100",
    ])
    .ok();
    let pid: i32 = fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");
    assert!(
        procs_in_cgroup(&b.cgroup).contains(&pid),
        "exec'd process {pid} is not in the container's cgroup"
    );
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).expect("process alive");
    assert_eq!(comm.trim(), "sleep");
}

#[test]
fn exec_env_cwd_and_user_overrides() {
    let t = setup!("exec-overrides");
    let b = running(&t);
    let o =
        t.rt.cmd(&[
            "exec",
            "--env",
            "FOO=bar",
            "--cwd",
            "/tmp",
            "--user",
            "1000:1000",
            &b.id,
            "sh",
            "-c",
            "echo $FOO; pwd; id -u; id -g",
        ])
        .ok();
    assert_eq!(
        o.stdout.lines().collect::<Vec<_>>(),
        vec!["bar", "/tmp", "1000", "1000"]
    );
}

#[test]
fn exec_gets_the_containers_capabilities() {
    let t = setup!("exec-caps");
    let b = running(&t);
    let init = t.pid(&b.id);
    let cap = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("CapEff:"))
            .map(|l| l.to_string())
    };
    let want = cap(&fs::read_to_string(format!("/proc/{init}/status")).expect("init status"));
    let o = t.rt.cmd(&["exec", &b.id, "cat", "/proc/self/status"]).ok();
    assert_eq!(cap(&o.stdout), want);
}

#[test]
fn exec_with_a_process_json() {
    let t = setup!("exec-process");
    let b = running(&t);
    let p = t.scratch().join("process.json");
    fs::write(
        &p,
        r#"{"args":["sh","-c","echo from-process-json $X"],"env":["X=1","PATH=/bin"],"cwd":"/","user":{"uid":0,"gid":0}}"#,
    )
    .expect("write process.json");
    let o =
        t.rt.cmd(&["exec", "--process", p.to_str().expect("utf8"), &b.id])
            .ok();
    assert_eq!(o.stdout.trim(), "from-process-json 1");
}

#[test]
fn exec_errors() {
    let t = setup!("exec-errors");
    let b = running(&t);
    t.rt.cmd(&["exec", &b.id, "/no/such/binary"]).fails();
    let gone = t.bundle().args(&["true"]);
    t.create(&gone);
    t.start(&gone.id);
    t.rt.wait_status(&gone.id, "stopped", std::time::Duration::from_secs(10));
    t.rt.cmd(&["exec", &gone.id, "true"]).fails();
    t.rt.cmd(&["exec", "rt-test-no-such-container", "true"])
        .fails();
}

#[test]
fn pause_and_resume_freeze_the_container() {
    let t = setup!("pause");
    let b = running(&t);
    t.rt.cmd(&["pause", &b.id]).ok();
    assert_eq!(t.rt.status(&b.id), "paused");
    let (freezer, v1) = runtime_tests::cgroup_controller_dir("freezer", &b.cgroup);
    if v1 {
        assert_eq!(
            runtime_tests::read_trim(&freezer.join("freezer.state")),
            "FROZEN"
        );
    }
    t.rt.cmd(&["pause", &b.id]).fails();
    // no exec into a frozen container (runc: "use --ignore-paused to override")
    t.rt.cmd(&["exec", &b.id, "true"])
        .fails()
        .stderr_has("paused");
    t.rt.cmd(&["resume", &b.id]).ok();
    assert_eq!(t.rt.status(&b.id), "running");
    if v1 {
        assert_eq!(
            runtime_tests::read_trim(&freezer.join("freezer.state")),
            "THAWED"
        );
    }
    t.rt.cmd(&["resume", &b.id]).fails();
}

// containerd's `task kill -s SIGKILL` of a paused task: runc thaws after SIGKILL so the init dies.
#[test]
fn sigkill_of_a_paused_container_stops_it() {
    let t = setup!("pause-kill");
    let b = running(&t);
    t.rt.cmd(&["pause", &b.id]).ok();
    t.rt.cmd(&["kill", &b.id, "KILL"]).ok();
    assert_eq!(
        t.rt.wait_status(&b.id, "stopped", std::time::Duration::from_secs(10)),
        "stopped",
        "a paused container survived SIGKILL"
    );
    t.rt.cmd(&["delete", &b.id]).ok();
}

#[test]
fn ps_lists_the_containers_processes() {
    let t = setup!("ps");
    let b = running(&t);
    let init = t.pid(&b.id);
    let o = t.rt.cmd(&["ps", "--format", "json", &b.id]).ok();
    let pids: Vec<i64> = serde_json::from_str(o.stdout.trim()).expect("a JSON array of pids");
    assert_eq!(pids, vec![init as i64]);
    let o = t.rt.cmd(&["ps", &b.id]).ok();
    assert!(
        o.stdout.lines().next().is_some_and(|h| h.contains("PID")),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.lines().skip(1).any(|l| l.contains("sleep 1000")),
        "{}",
        o.stdout
    );
}
