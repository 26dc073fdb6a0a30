//! Seccomp from config.json: the default action, per-syscall actions (errno with errnoRet,
//! kill, kill_process, trap, log), argument conditions, flags, and exec'd processes under the
//! same filter; constructs a runtime cannot honour are refused at create. Differential.

use runtime_tests::setup;
use serde_json::{json, Value};

/// A profile that allows everything but `rules`.
fn profile(rules: Value) -> Value {
    json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": rules})
}

fn run_with(t: &runtime_tests::Ctx, seccomp: Value, script: &str) -> runtime_tests::CmdOutput {
    let b = t.bundle().set("/linux/seccomp", seccomp).sh(script);
    t.run(&b)
}

#[test]
fn seccomp_errno_with_errno_ret() {
    let t = setup!("seccomp-errno");
    let o = run_with(
        &t,
        profile(json!([
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO"},
            // no tracer attached: the call fails with ENOSYS
            {"names": ["link", "linkat"], "action": "SCMP_ACT_TRACE"}
        ])),
        "mkdir /dev/shm/d 2>&1; rmdir /dev/shm 2>&1; touch /dev/shm/a; ln /dev/shm/a /dev/shm/b 2>&1; echo end",
    );
    let out = o.stdout.to_lowercase();
    assert!(
        out.contains("permission denied"),
        "errnoRet 13 (EACCES): {o:?}"
    );
    assert!(
        out.contains("operation not permitted"),
        "default errno EPERM: {o:?}"
    );
    assert!(
        out.contains("function not implemented"),
        "SCMP_ACT_TRACE without a tracer: {o:?}"
    );
    assert!(out.contains("end"), "{o:?}");
}

#[test]
fn seccomp_kill_trap_and_log_actions() {
    let t = setup!("seccomp-kill");
    // The child that calls sync(2) dies of SIGSYS (31): exit status 128+31 in the shell
    // (a subshell: busybox runs some applets inside the shell's own process).
    for action in [
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
    ] {
        let o = run_with(
            &t,
            profile(json!([{"names": ["sync"], "action": action}])),
            "(exec sync); echo rc=$?",
        );
        assert!(o.stdout.contains("rc=159"), "{action}: {o:?}");
    }
    // LOG lets the call through.
    let o = run_with(
        &t,
        profile(json!([{"names": ["sync"], "action": "SCMP_ACT_LOG"}])),
        "uname -s; echo rc=$?",
    );
    assert!(
        o.stdout.contains("Linux") && o.stdout.contains("rc=0"),
        "{o:?}"
    );
}

#[test]
fn seccomp_default_errno_with_an_allow_list() {
    let t = setup!("seccomp-default");
    // Everything the shell needs is allowed; uname is not on the list.
    let allowed = [
        "read",
        "write",
        "writev",
        "open",
        "openat",
        "close",
        "fstat",
        "newfstatat",
        "stat",
        "lstat",
        "statx",
        "mmap",
        "munmap",
        "mprotect",
        "brk",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "ioctl",
        "access",
        "execve",
        "exit",
        "exit_group",
        "wait4",
        "clone",
        "clone3",
        "fork",
        "vfork",
        "getpid",
        "getppid",
        "getuid",
        "geteuid",
        "getgid",
        "getegid",
        "fcntl",
        "dup",
        "dup2",
        "dup3",
        "pipe",
        "pipe2",
        "arch_prctl",
        "set_tid_address",
        "set_robust_list",
        "prlimit64",
        "getcwd",
        "chdir",
        "lseek",
        "getpgrp",
        "setpgid",
        "getpgid",
        "futex",
        "rseq",
        "getrandom",
        "readlink",
        "poll",
        "getdents64",
        "sigaltstack",
        "madvise",
        "sched_getaffinity",
        "nanosleep",
        "clock_nanosleep",
        // what runc 1.1.5 calls after loading the filter
        "fstatfs",
        "statfs",
        "capget",
        "capset",
        "prctl",
        "setgroups",
        "setuid",
        "setgid",
        "setresuid",
        "setresgid",
        "fchdir",
        "gettid",
        "tgkill",
        "sched_yield",
        "epoll_pwait",
        "epoll_ctl",
        "epoll_create1",
        "uname",
        "close_range",
        "fchown",
    ];
    let o = run_with(
        &t,
        json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
               "syscalls": [{"names": allowed.to_vec(), "action": "SCMP_ACT_ALLOW"}]}),
        "mkdir /dev/shm/d 2>&1; echo end",
    );
    assert!(
        o.stdout.contains("Function not implemented") && o.stdout.contains("end"),
        "mkdir is not on the list: ENOSYS (38): {o:?}"
    );
}

#[test]
fn seccomp_argument_conditions() {
    let t = setup!("seccomp-args");
    // kill(2) with signal 15 is refused (EPERM); other signals go through (ESRCH: no such pid).
    let o = run_with(
        &t,
        profile(json!([{"names": ["kill"], "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 1, "value": 15, "op": "SCMP_CMP_EQ"}]}])),
        "kill -TERM 99999 2>&1; kill -HUP 99999 2>&1; echo end",
    );
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(
        lines.len() == 3
            && lines[0].contains("not permitted")
            && lines[1].contains("No such process"),
        "{o:?}"
    );
    // masked equality: mode & 0o7000 == 0o4000 (setuid bit) refused for chmod/fchmodat
    let o = run_with(
        &t,
        profile(
            json!([{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 2, "value": 3584, "valueTwo": 2048, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 1, "value": 3584, "valueTwo": 2048, "op": "SCMP_CMP_MASKED_EQ"}]}]),
        ),
        "touch /dev/shm/f; chmod 4755 /dev/shm/f 2>&1; chmod 755 /dev/shm/f && echo plain-ok",
    );
    assert!(
        o.stdout.contains("not permitted") && o.stdout.contains("plain-ok"),
        "{o:?}"
    );
}

#[test]
fn seccomp_flags_and_status() {
    let t = setup!("seccomp-flags");
    let mut p = profile(json!([{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]));
    p["flags"] = json!(["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]);
    if !t.rt.is_runvz() {
        // runc 1.1.5 supports no seccomp flags at all and says so (a refusal, not a weaker
        // filter): "seccomp flags are not yet supported by runc".
        let b = t.bundle().set("/linux/seccomp", p).args(&["true"]);
        t.create_raw(&b, &b.id, &[]).fails().stderr_has("flags");
        return;
    }
    let o = run_with(
        &t,
        p,
        "grep Seccomp: /proc/self/status; mkdir /dev/shm/d 2>/dev/null; echo rc=$?",
    );
    assert!(o.stdout.contains("Seccomp:\t2"), "filter mode: {o:?}");
    assert!(o.stdout.contains("rc=1"), "{o:?}");
}

#[test]
fn seccomp_unsupported_constructs_are_refused() {
    let t = setup!("seccomp-refused");
    // An unknown flag and an unknown action: a filter that would be weaker than asked for.
    for bad in [
        {
            let mut p = profile(json!([]));
            p["flags"] = json!(["SECCOMP_FILTER_FLAG_NO_SUCH_FLAG"]);
            p
        },
        profile(json!([{"names": ["uname"], "action": "SCMP_ACT_NO_SUCH_ACTION"}])),
        profile(json!([{"names": ["uname"], "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_NO_SUCH_OP"}]}])),
    ] {
        let b = t
            .bundle()
            .set("/linux/seccomp", bad.clone())
            .args(&["true"]);
        let o = t.create_raw(&b, &b.id, &[]).fails();
        assert!(
            t.rt.state(&b.id).is_err(),
            "refused create left a container: {bad}"
        );
        if t.rt.is_runvz() {
            assert!(
                o.stderr.contains("seccomp"),
                "the message names seccomp: {o:?}"
            );
            assert_eq!(o.stderr.trim().lines().count(), 1, "one line: {o:?}");
        }
    }
}

#[test]
fn exec_runs_under_the_containers_filter() {
    let t = setup!("seccomp-exec");
    let b = t
        .bundle()
        .set(
            "/linux/seccomp",
            profile(json!([{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}])),
        )
        .args(&["sleep", "1000"]);
    t.create(&b);
    t.start(&b.id);
    let o =
        t.rt.cmd(&[
            "exec",
            &b.id,
            "sh",
            "-c",
            "mkdir /dev/shm/d 2>&1; grep Seccomp: /proc/self/status",
        ])
        .ok();
    assert!(!o.stdout.contains("Linux"), "{o:?}");
    assert!(
        o.stdout.contains("Permission denied") && o.stdout.contains("Seccomp:\t2"),
        "{o:?}"
    );
}

#[test]
fn seccomp_architectures() {
    let t = setup!("seccomp-arch");
    // the native one with its 32-bit companions: the rules still bite
    let mut p = profile(json!([{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]));
    p["architectures"] = json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
    let o = run_with(&t, p, "mkdir /dev/shm/d 2>&1; echo end");
    assert!(
        o.stdout.contains("not permitted") && o.stdout.contains("end"),
        "{o:?}"
    );
    // an architecture nobody knows is refused, nothing left
    let mut p = profile(json!([]));
    p["architectures"] = json!(["SCMP_ARCH_NO_SUCH_ARCH"]);
    let b = t.bundle().set("/linux/seccomp", p).args(&["true"]);
    t.create_raw(&b, &b.id, &[]).fails();
    assert!(t.rt.state(&b.id).is_err());
}
