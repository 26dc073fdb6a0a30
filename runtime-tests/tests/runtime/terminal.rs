//! Terminals: `process.terminal` with `--console-socket` (the pty master arrives over the
//! socket; the process has it as its controlling terminal), `exec -t` with a console socket,
//! and foreground `run`/`exec -t` on the caller's own terminal. Differential.

use runtime_tests::{read_pty_until, setup, ConsoleSocket};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// Runs `RUNTIME --root R args` under script(1), so that its stdin/stdout are a terminal.
fn on_a_tty(t: &runtime_tests::Ctx, args: &[&str]) -> (Option<i32>, String) {
    let mut line = format!("{} --root {}", t.rt.bin.display(), t.rt.root.display());
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    let out = Command::new("timeout")
        .args(["20", "script", "-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script(1) (util-linux) is needed");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn terminal_with_console_socket_is_the_controlling_tty() {
    let t = setup!("tty-socket");
    let sock = ConsoleSocket::bind(t.scratch());
    let b = t
        .bundle()
        .set("/process/terminal", serde_json::json!(true))
        .sh("tty; test -t 0 && test -t 1 && echo std-is-tty; echo x > /dev/tty && echo ctty-ok; exec sleep 1000");
    t.create_raw(&b, &b.id, &["--console-socket", &sock.path_str()])
        .ok();
    let master = sock.accept_master(T);
    t.start(&b.id);
    let out = read_pty_until(&master, "ctty-ok", T);
    assert!(out.contains("/dev/pts/"), "tty(1) inside: {out:?}");
    assert!(
        out.contains("std-is-tty") && out.contains("ctty-ok"),
        "{out:?}"
    );
}

/// The OCI spec: with `process.terminal`, the pty is bind-mounted onto /dev/console.
#[test]
fn terminal_is_bound_onto_dev_console() {
    let t = setup!("tty-console");
    let sock = ConsoleSocket::bind(t.scratch());
    let b = t
        .bundle()
        .set("/process/terminal", serde_json::json!(true))
        .sh("echo via-console-ok > /dev/console; stat -L -c 'dev %t:%T' /dev/console $(tty); echo stat-done; exec sleep 1000");
    t.create_raw(&b, &b.id, &["--console-socket", &sock.path_str()])
        .ok();
    let master = sock.accept_master(T);
    t.start(&b.id);
    let out = read_pty_until(&master, "stat-done", T);
    let devs: Vec<&str> = out.lines().filter(|l| l.starts_with("dev ")).collect();
    assert!(out.contains("via-console-ok"), "{out:?}");
    assert!(
        devs.len() == 2 && devs[0] == devs[1],
        "/dev/console and the tty differ: {out:?}"
    );
}

#[test]
fn exec_tty_with_console_socket() {
    let t = setup!("tty-exec-socket");
    let b = t.bundle().args(&["sleep", "1000"]);
    t.create(&b);
    t.start(&b.id);
    let sock = ConsoleSocket::bind(t.scratch());
    t.rt.cmd(&[
        "exec",
        "-t",
        "-d",
        "--console-socket",
        &sock.path_str(),
        &b.id,
        "sh",
        "-c",
        "test -t 0 && echo exec-is-tty; tty; sleep 100",
    ])
    .ok();
    let master = sock.accept_master(T);
    let out = read_pty_until(&master, "/dev/pts/", T);
    assert!(
        out.contains("exec-is-tty") && out.contains("/dev/pts/"),
        "{out:?}"
    );
    // -t with --detach and no console socket has nowhere to send the terminal
    t.rt.cmd(&["exec", "-t", "-d", &b.id, "true"]).fails();
}

#[test]
fn foreground_run_and_exec_use_the_callers_terminal() {
    let t = setup!("tty-foreground");
    let b = t
        .bundle()
        .set("/process/terminal", serde_json::json!(true))
        .sh("test -t 0 && echo run-in-tty; echo typed-back; exit 3");
    b.save();
    let dir = b.dir_str();
    let (code, out) = on_a_tty(&t, &["run", "--bundle", &dir, &b.id]);
    assert!(
        out.contains("run-in-tty") && out.contains("typed-back"),
        "{out:?}"
    );
    assert_eq!(code, Some(3), "run's exit code through script: {out:?}");
    assert!(t.rt.state(&b.id).is_err(), "run left the container");
    let c = t.bundle().args(&["sleep", "1000"]);
    t.create(&c);
    t.start(&c.id);
    let (code, out) = on_a_tty(&t, &["exec", "-t", &c.id, "sh", "-c", "'test -t 0 && tty'"]);
    assert_eq!(code, Some(0), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
}
