//! Harness for differential OCI-runtime tests.
//!
//! The runtime under test is the binary named by `RUNTIME` (runvz, runc, ...). Every test gets a
//! [`Ctx`]: it hands out [`Bundle`]s with unique container IDs (`rt-test-<pid>-<n>-<name>`) and
//! `linux.cgroupsPath = /rt-test/<id>`, and on drop force-deletes every container it handed out
//! and asserts that nothing of them remains (state entry, cgroup directories, processes, mounts).
//! A suite-level leak check runs when the test binary exits (see [`suite_leak_check`]).
//!
//! Environment:
//! - `RUNTIME`       runtime binary (required; without it every test prints why and skips)
//! - `RT_ROOTFS`     busybox rootfs (default `<repo>/target/bundle/rootfs`, made by hack/build-bundle)
//! - `RT_STATE_ROOT` the runtime's `--root` (default `/run/rt-test/<basename of RUNTIME>`)
//! - `RT_TIMEOUT`    seconds one runtime command may take before it is killed (default 30)
//! - `RT_SCRATCH`    parent of the per-test scratch dirs (default the system temp dir)
//! - `RT_SHOW_REFUSALS` print each malformed-bundle refusal message

use serde_json::{json, Value};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Cgroup parent (below each hierarchy's root) of every test container.
pub const CGROUP_PARENT: &str = "rt-test";
/// Prefix of every container ID the suite creates.
pub const ID_PREFIX: &str = "rt-test-";

/// Writes straight to fd 2: libtest does not capture this, so skip reasons are always visible.
pub fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The repository root (parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime-tests lives inside the repository")
        .to_path_buf()
}

/// The shared read-only busybox rootfs every bundle points at.
pub fn rootfs() -> PathBuf {
    std::env::var_os("RT_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/bundle/rootfs"))
}

/// True when the test rootfs has `bin/<tool>` (a helper built by hack/build-bundle); otherwise
/// prints why `test` skips and returns false.
pub fn rootfs_has_tool(tool: &str, test: &str) -> bool {
    if rootfs().join("bin").join(tool).exists() {
        return true;
    }
    note(&format!(
        "SKIP {test}: no bin/{tool} in the rootfs (run hack/build-bundle)"
    ));
    false
}

/// Unique part of this test process, so concurrent suites do not see each other's containers.
pub fn run_tag() -> String {
    format!("{ID_PREFIX}{}-", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Running the runtime

/// Result of one command: exit code, captured stdout/stderr.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub cmdline: String,
    /// `None` when killed by a signal or by the timeout.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    /// File that received stdout (the container's stdout for `create`/`run`): read it again
    /// later with [`CmdOutput::stdout_now`].
    pub stdout_path: PathBuf,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn describe(&self) -> String {
        format!(
            "command: {}\nexit: {}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "killed".into()),
            if self.timed_out { " (TIMED OUT)" } else { "" },
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Panics with the full command, exit code and output unless it exited 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.success(), "expected success\n{}", self.describe());
        self
    }

    /// Panics unless the command exited non-zero (a timeout counts as a failure of the test).
    #[track_caller]
    pub fn fails(self) -> Self {
        assert!(!self.timed_out, "command hung\n{}", self.describe());
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a non-zero exit\n{}",
            self.describe()
        );
        self
    }

    /// Panics unless the exit code is `code`.
    #[track_caller]
    pub fn exit_code(self, code: i32) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code\n{}",
            self.describe()
        );
        self
    }

    /// Panics unless stderr contains `needle` (case-insensitive).
    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "stderr lacks {needle:?}\n{}",
            self.describe()
        );
        self
    }

    /// Stdout file as it is now (a created/started container keeps writing to it).
    pub fn stdout_now(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Waits up to `timeout` for `needle` to show up in the stdout file; returns its content.
    pub fn wait_stdout(&self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let s = self.stdout_now();
            if s.contains(needle) || Instant::now() > end {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", self.describe()))
    }
}

static CMD_SEQ: AtomicUsize = AtomicUsize::new(0);

/// The runtime binary under test and its state root.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub bin: PathBuf,
    pub root: PathBuf,
    /// Basename of the binary (`runc`, `runvz`, ...).
    pub name: String,
    /// Where command output files go.
    pub scratch: PathBuf,
    pub timeout: Duration,
    /// Run the runtime inside this network namespace (a path such as `/run/netns/NAME`,
    /// entered with `nsenter --net`: only the network namespace changes).
    pub netns: Option<PathBuf>,
}

impl Runtime {
    /// From `RUNTIME`; `Err` says why not (unset, missing, not root).
    pub fn from_env(scratch: &Path) -> Result<Runtime, String> {
        let bin = std::env::var_os("RUNTIME")
            .map(PathBuf::from)
            .ok_or("RUNTIME is not set (e.g. RUNTIME=/usr/sbin/runc or target/release/runvz)")?;
        let bin = if bin.is_relative() && bin.components().count() > 1 {
            std::env::current_dir().map(|d| d.join(&bin)).unwrap_or(bin)
        } else {
            bin
        };
        if !bin.exists() {
            // A relative path may be relative to the repository (cargo runs tests in the crate dir).
            let alt = repo_root().join(&bin);
            if !alt.exists() {
                return Err(format!("RUNTIME={} does not exist", bin.display()));
            }
            return Self::finish(alt, scratch);
        }
        Self::finish(bin, scratch)
    }

    fn finish(bin: PathBuf, scratch: &Path) -> Result<Runtime, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("runtime tests need root (real containers, cgroups)".into());
        }
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "runtime".into());
        let root = std::env::var_os("RT_STATE_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/rt-test").join(&name));
        fs::create_dir_all(&root)
            .map_err(|e| format!("cannot create state root {}: {e}", root.display()))?;
        let timeout = std::env::var("RT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30);
        Ok(Runtime {
            bin,
            root,
            name,
            scratch: scratch.to_path_buf(),
            timeout: Duration::from_secs(timeout),
            netns: None,
        })
    }

    /// True when the runtime under test is runvz (for runvz-only assertions).
    pub fn is_runvz(&self) -> bool {
        self.name.contains("runvz")
    }

    /// `RUNTIME --root ROOT args...`
    pub fn cmd(&self, args: &[&str]) -> CmdOutput {
        let mut full: Vec<&str> = vec!["--root"];
        let root = self.root.to_string_lossy().into_owned();
        full.push(&root);
        full.extend_from_slice(args);
        self.exec(&full, None, None)
    }

    /// `RUNTIME --root ROOT args...` with `input` on its stdin (e.g. `update --resources -`).
    pub fn cmd_stdin(&self, args: &[&str], input: &[u8]) -> CmdOutput {
        let root = self.root.to_string_lossy().into_owned();
        let mut full: Vec<&str> = vec!["--root", &root];
        full.extend_from_slice(args);
        self.exec(&full, None, Some(input))
    }

    /// `RUNTIME args...` without `--root` (e.g. `--version`, `spec`), in directory `dir`.
    pub fn cmd_raw(&self, args: &[&str], dir: Option<&Path>) -> CmdOutput {
        self.exec(args, dir, None)
    }

    fn exec(&self, args: &[&str], dir: Option<&Path>, input: Option<&[u8]>) -> CmdOutput {
        let n = CMD_SEQ.fetch_add(1, Ordering::SeqCst);
        let out_path = self.scratch.join(format!("cmd-{n}.out"));
        let err_path = self.scratch.join(format!("cmd-{n}.err"));
        let cmdline = std::iter::once(self.bin.to_string_lossy().into_owned())
            .chain(args.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ");
        let out = fs::File::create(&out_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", out_path.display()));
        let err = fs::File::create(&err_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", err_path.display()));
        let stdin = match input {
            Some(data) => {
                let in_path = self.scratch.join(format!("cmd-{n}.in"));
                fs::write(&in_path, data)
                    .unwrap_or_else(|e| panic!("write {}: {e}", in_path.display()));
                Stdio::from(
                    fs::File::open(&in_path)
                        .unwrap_or_else(|e| panic!("open {}: {e}", in_path.display())),
                )
            }
            None => Stdio::null(),
        };
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        c.args(args)
            .stdin(stdin)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        if let Some(d) = dir {
            c.current_dir(d);
        }
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmdline}: {e}"));
        let end = Instant::now() + self.timeout;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() > end => {
                    timed_out = true;
                    let _ = child.kill();
                    break child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => panic!("waiting for {cmdline}: {e}"),
            }
        };
        CmdOutput {
            cmdline,
            code: if timed_out {
                None
            } else {
                status.and_then(|s| s.code())
            },
            stdout: fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: fs::read_to_string(&err_path).unwrap_or_default(),
            timed_out,
            stdout_path: out_path,
        }
    }

    /// `state ID` parsed; `Err` carries the failed command.
    pub fn state(&self, id: &str) -> Result<Value, CmdOutput> {
        let o = self.cmd(&["state", id]);
        if o.success() {
            Ok(o.json())
        } else {
            Err(o)
        }
    }

    /// Status string from `state ID`, or panics.
    #[track_caller]
    pub fn status(&self, id: &str) -> String {
        let s = self
            .state(id)
            .unwrap_or_else(|o| panic!("state {id} failed\n{}", o.describe()));
        s["status"].as_str().unwrap_or_default().to_string()
    }

    /// Polls `state` until the status is `want` (or `timeout`); returns the last status.
    pub fn wait_status(&self, id: &str, want: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let st = match self.state(id) {
                Ok(v) => v["status"].as_str().unwrap_or_default().to_string(),
                Err(_) => "<state failed>".into(),
            };
            if st == want || Instant::now() > end {
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A `--console-socket` listener: `accept_master` returns the pty master the runtime sends.
pub struct ConsoleSocket {
    pub path: PathBuf,
    listener: std::os::unix::net::UnixListener,
}

impl ConsoleSocket {
    pub fn bind(dir: &Path) -> ConsoleSocket {
        let path = dir.join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        listener.set_nonblocking(true).expect("nonblocking");
        ConsoleSocket { path, listener }
    }

    pub fn path_str(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Waits up to `timeout` for a connection and receives the fd sent with SCM_RIGHTS.
    pub fn accept_master(&self, timeout: Duration) -> std::os::fd::OwnedFd {
        let end = Instant::now() + timeout;
        let conn = loop {
            match self.listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("no connection on the console socket: {e}"),
            }
        };
        conn.set_nonblocking(false).expect("blocking");
        recv_fd(&conn).expect("no fd was sent on the console socket")
    }
}

/// Receives one fd sent with SCM_RIGHTS on `conn` (a console socket connection).
pub fn recv_fd(conn: &std::os::unix::net::UnixStream) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut data = [0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut cmsg = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; the pointers below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg);
    // SAFETY: recvmsg on a connected socket with the buffers set up above.
    if unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) } < 0 {
        return None;
    }
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR/CMSG_DATA stay within msg_control.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            return None;
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const i32);
        Some(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

/// Reads what a pty master has (until `needle` shows up or `timeout`).
pub fn read_pty_until(master: &std::os::fd::OwnedFd, needle: &str, timeout: Duration) -> String {
    use std::os::fd::AsRawFd;
    let end = Instant::now() + timeout;
    let mut out = String::new();
    while !out.contains(needle) && Instant::now() < end {
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a buffer of its own length from an fd we own.
        let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.push_str(&String::from_utf8_lossy(&buf[..n as usize]));
    }
    out
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

// ---------------------------------------------------------------------------------------------
// Bundles

/// A `runc spec`-like default config (terminal=false), rootfs read-only and shared.
pub fn default_config(rootfs: &Path, cgroups_path: &str) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": rootfs.to_string_lossy(), "readonly": true},
        "hostname": "rt-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// Sets `value` at JSON pointer `ptr` (e.g. `/process/args`), creating objects on the way.
pub fn set_ptr(v: &mut Value, ptr: &str, value: Value) {
    let mut cur = v;
    let parts: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if let Ok(idx) = p.parse::<usize>() {
            let arr = cur
                .as_array_mut()
                .unwrap_or_else(|| panic!("{ptr}: {p} indexes a non-array"));
            if last {
                arr[idx] = value;
                return;
            }
            cur = &mut arr[idx];
        } else {
            if !cur.is_object() {
                *cur = json!({});
            }
            let obj = cur.as_object_mut().expect("made an object above");
            if last {
                obj.insert((*p).to_string(), value);
                return;
            }
            cur = obj.entry((*p).to_string()).or_insert_with(|| json!({}));
        }
    }
}

/// Removes the value at JSON pointer `ptr` if present.
pub fn remove_ptr(v: &mut Value, ptr: &str) {
    let (parent, key) = ptr.rsplit_once('/').expect("pointer has a /");
    let target = if parent.is_empty() {
        Some(v)
    } else {
        v.pointer_mut(parent)
    };
    match target {
        Some(Value::Object(m)) => {
            m.remove(key);
        }
        Some(Value::Array(a)) => {
            if let Ok(i) = key.parse::<usize>() {
                if i < a.len() {
                    a.remove(i);
                }
            }
        }
        _ => {}
    }
}

/// A bundle directory with one container ID; config.json is (re)written by [`Bundle::save`],
/// which every [`Ctx`] helper calls before using the bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub id: String,
    /// Cgroup path relative to each hierarchy root, e.g. `rt-test/<id>`.
    pub cgroup: String,
    pub config: Value,
    /// When set, `save` writes these bytes instead of `config` (malformed JSON tests).
    pub raw_config: Option<Vec<u8>>,
    /// When false, `save` writes no config.json at all.
    pub write_config: bool,
}

impl Bundle {
    /// Sets process.args.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.config["process"]["args"] = json!(args);
        self
    }

    /// Runs `script` with `/bin/sh -c`.
    pub fn sh(self, script: &str) -> Self {
        self.args(&["/bin/sh", "-c", script])
    }

    /// Sets a value at a JSON pointer.
    pub fn set(mut self, ptr: &str, value: Value) -> Self {
        set_ptr(&mut self.config, ptr, value);
        self
    }

    /// Removes a value at a JSON pointer.
    pub fn remove(mut self, ptr: &str) -> Self {
        remove_ptr(&mut self.config, ptr);
        self
    }

    /// Arbitrary edit of the config.
    pub fn edit(mut self, f: impl FnOnce(&mut Value)) -> Self {
        f(&mut self.config);
        self
    }

    /// Removes the namespaces of these types from `linux.namespaces` (the container shares
    /// the runtime's).
    pub fn without_namespaces(self, types: &[&str]) -> Self {
        self.edit(|c| {
            if let Some(ns) = c["linux"]["namespaces"].as_array_mut() {
                ns.retain(|n| !types.iter().any(|t| n["type"] == *t));
            }
        })
    }

    /// Appends a mount.
    pub fn mount(mut self, m: Value) -> Self {
        self.config["mounts"]
            .as_array_mut()
            .expect("mounts is an array")
            .push(m);
        self
    }

    /// Appends a namespace entry.
    pub fn namespace(mut self, ns: Value) -> Self {
        self.config["linux"]["namespaces"]
            .as_array_mut()
            .expect("linux.namespaces is an array")
            .push(ns);
        self
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Writes config.json (or the raw bytes, or nothing).
    pub fn save(&self) {
        let p = self.config_path();
        let _ = fs::remove_file(&p);
        if !self.write_config {
            return;
        }
        let bytes = match &self.raw_config {
            Some(b) => b.clone(),
            None => serde_json::to_vec_pretty(&self.config).expect("config serialises"),
        };
        fs::write(&p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    pub fn dir_str(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Per-test context and leak guard

static ID_SEQ: AtomicUsize = AtomicUsize::new(0);
static SUITE_HOOK: Once = Once::new();

/// Per-test context: runtime, scratch directory, and the guard that cleans up and checks leaks.
pub struct Ctx {
    pub rt: Runtime,
    pub name: String,
    scratch: tempfile::TempDir,
    /// (id, cgroup relative path) of every container handed out.
    ids: std::cell::RefCell<Vec<(String, String)>>,
    /// (pid, starttime) of every container init seen.
    pids: std::cell::RefCell<Vec<(i32, u64)>>,
}

/// `let t = setup!("name");` returns from the test (after printing why) when it cannot run.
#[macro_export]
macro_rules! setup {
    ($name:expr) => {
        match $crate::Ctx::new($name) {
            Ok(t) => t,
            Err(why) => {
                $crate::note(&format!("SKIP {}: {}", $name, why));
                return;
            }
        }
    };
}

impl Ctx {
    /// Context for test `name`; `Err` (with the reason) when the suite cannot run here.
    pub fn new(name: &str) -> Result<Ctx, String> {
        let base = std::env::var_os("RT_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        fs::create_dir_all(&base).map_err(|e| format!("scratch {}: {e}", base.display()))?;
        let scratch = tempfile::Builder::new()
            .prefix("rt-scratch-")
            .tempdir_in(&base)
            .map_err(|e| format!("scratch dir: {e}"))?;
        let rt = Runtime::from_env(scratch.path())?;
        let rootfs = rootfs();
        if !rootfs.join("bin/busybox").exists() {
            return Err(format!(
                "no busybox rootfs at {} (run hack/build-bundle or set RT_ROOTFS)",
                rootfs.display()
            ));
        }
        SUITE_HOOK.call_once(|| {
            // SAFETY: registering a plain extern "C" fn with atexit.
            unsafe { libc::atexit(suite_leak_check_atexit) };
        });
        Ok(Ctx {
            rt,
            name: name.to_string(),
            scratch,
            ids: Default::default(),
            pids: Default::default(),
        })
    }

    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// A fresh container ID (registered for cleanup and leak checks).
    pub fn new_id(&self) -> String {
        let n = ID_SEQ.fetch_add(1, Ordering::SeqCst);
        let short: String = self.name.chars().take(24).collect();
        let id = format!("{}{n}-{short}", run_tag());
        self.register(&id, &format!("{CGROUP_PARENT}/{id}"));
        id
    }

    /// Registers an ID (and its cgroup) for force-delete and leak checks at drop.
    pub fn register(&self, id: &str, cgroup_rel: &str) {
        self.ids
            .borrow_mut()
            .push((id.to_string(), cgroup_rel.to_string()));
    }

    /// A new bundle dir with the default config, a unique ID and cgroupsPath `/rt-test/<id>`.
    pub fn bundle(&self) -> Bundle {
        let id = self.new_id();
        let dir = self.scratch().join(format!("bundle-{id}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let cgroup = format!("{CGROUP_PARENT}/{id}");
        Bundle {
            config: default_config(&rootfs(), &format!("/{cgroup}")),
            dir,
            id,
            cgroup,
            raw_config: None,
            write_config: true,
        }
    }

    /// `create --bundle B --pid-file P ID`; asserts success; records the init pid.
    #[track_caller]
    pub fn create(&self, b: &Bundle) -> CmdOutput {
        let o = self.create_raw(b, &b.id, &[]).ok();
        self.record_pid(&b.id);
        o
    }

    /// `create` without asserting; `extra` goes before the ID.
    pub fn create_raw(&self, b: &Bundle, id: &str, extra: &[&str]) -> CmdOutput {
        b.save();
        let dir = b.dir_str();
        let mut args = vec!["create", "--bundle", &dir];
        args.extend_from_slice(extra);
        args.push(id);
        self.rt.cmd(&args)
    }

    /// `run --bundle B ID` in the foreground (stdout captured); not asserted.
    pub fn run(&self, b: &Bundle) -> CmdOutput {
        b.save();
        self.rt.cmd(&["run", "--bundle", &b.dir_str(), &b.id])
    }

    /// `start ID`, asserted.
    #[track_caller]
    pub fn start(&self, id: &str) -> CmdOutput {
        self.rt.cmd(&["start", id]).ok()
    }

    /// Init pid from `state`, recorded for the leak check.
    #[track_caller]
    pub fn pid(&self, id: &str) -> i32 {
        let st = self
            .rt
            .state(id)
            .unwrap_or_else(|o| panic!("state {id} failed\n{}", o.describe()));
        let pid = st["pid"].as_i64().unwrap_or(0) as i32;
        assert!(pid > 0, "state of {id} has no pid: {st}");
        pid
    }

    fn record_pid(&self, id: &str) {
        if let Ok(st) = self.rt.state(id) {
            if let Some(pid) = st["pid"].as_i64().filter(|p| *p > 0) {
                if let Some(t) = proc_starttime(pid as i32) {
                    self.pids.borrow_mut().push((pid as i32, t));
                }
            }
        }
    }

    /// Force-deletes everything this test created and returns what is left behind.
    pub fn cleanup_and_find_leaks(&self) -> Vec<String> {
        let ids = self.ids.borrow().clone();
        for (id, _) in &ids {
            if self.rt.root.join(id).exists() || self.rt.state(id).is_ok() {
                let _ = self.rt.cmd(&["delete", "--force", id]);
            }
        }
        // The runtime may remove things asynchronously (zombies reaped late by PID 1): poll.
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let leaks = self.find_leaks(&ids);
            if leaks.is_empty() || Instant::now() > end {
                return leaks;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn find_leaks(&self, ids: &[(String, String)]) -> Vec<String> {
        let mut leaks = Vec::new();
        for (id, cg) in ids {
            leaks.extend(leaks_for(&self.rt, id, cg));
        }
        for (pid, start) in self.pids.borrow().iter() {
            if proc_alive_with_start(*pid, *start) {
                leaks.push(format!("container init pid {pid} still running"));
            }
        }
        let scratch = self.scratch().to_string_lossy().into_owned();
        for line in mountinfo_lines() {
            if line.contains(&scratch) {
                leaks.push(format!("mount under the test's scratch dir: {line}"));
            }
        }
        leaks
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let leaks = self.cleanup_and_find_leaks();
        if leaks.is_empty() {
            return;
        }
        // Reported below (a failure of this test); removed now, so that a runtime's leak (runc
        // re-creates cgroups after a killed delete now and then) does not outlive its test.
        for (id, cg) in self.ids.borrow().iter() {
            reap(id, cg, &self.rt.root);
        }
        let msg = format!(
            "LEAK after test {} ({}):\n  {}",
            self.name,
            self.rt.name,
            leaks.join("\n  ")
        );
        if std::thread::panicking() {
            note(&msg);
        } else {
            panic!("{msg}");
        }
    }
}

/// What remains of container `id` with cgroup `cgroup_rel`: state entry, cgroup dirs, processes,
/// mounts.
pub fn leaks_for(rt: &Runtime, id: &str, cgroup_rel: &str) -> Vec<String> {
    let mut leaks = Vec::new();
    if !id.is_empty() && id != "." && id != ".." {
        let st = rt.root.join(id);
        if st.exists() {
            leaks.push(format!("state entry {}", st.display()));
        }
    }
    for d in cgroup_dirs(cgroup_rel) {
        leaks.push(format!("cgroup {}", d.display()));
    }
    for pid in procs_in_cgroup(cgroup_rel) {
        leaks.push(format!("process {pid} in cgroup {cgroup_rel}"));
    }
    if !id.is_empty() {
        for line in mountinfo_lines() {
            if line.contains(id) {
                leaks.push(format!("mount: {line}"));
            }
        }
    }
    leaks
}

/// Every cgroup hierarchy mount point on the host (v1 controllers, named, and cgroup2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for line in mountinfo_lines() {
        // mountinfo: ... mountpoint ... - fstype source opts
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let fstype = fields.get(dash + 1).copied().unwrap_or_default();
        if (fstype == "cgroup" || fstype == "cgroup2") && fields.len() > 4 {
            v.push(PathBuf::from(unescape_mount(fields[4])));
        }
    }
    v.sort();
    v.dedup();
    v
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t")
}

/// Existing directories `<hierarchy>/<cgroup_rel>` on the host.
/// Remove what a runtime left of container `id` (processes in its cgroup, its cgroup
/// directories, its state entry), after it was reported.
pub fn reap(id: &str, cgroup_rel: &str, root: &Path) {
    for p in procs_in_cgroup(cgroup_rel) {
        // SAFETY: kill(2) on a pid with a valid signal number.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(50));
    let mut dirs = cgroup_dirs(cgroup_rel);
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = fs::remove_dir(&d);
    }
    if !id.is_empty() && !id.contains('/') && id != "." && id != ".." {
        let _ = fs::remove_dir_all(root.join(id));
    }
}

pub fn cgroup_dirs(cgroup_rel: &str) -> Vec<PathBuf> {
    let rel = cgroup_rel.trim_start_matches('/');
    if rel.is_empty() {
        return vec![];
    }
    cgroup_mounts()
        .into_iter()
        .map(|m| m.join(rel))
        .filter(|p| p.is_dir())
        .collect()
}

/// Live (non-zombie) processes whose /proc/PID/cgroup names `cgroup_rel` (or below it).
pub fn procs_in_cgroup(cgroup_rel: &str) -> Vec<i32> {
    let want = format!("/{}", cgroup_rel.trim_start_matches('/'));
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cg) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        let hit = cg.lines().any(|l| {
            let path = l.splitn(3, ':').nth(2).unwrap_or("");
            path == want || path.starts_with(&format!("{want}/"))
        });
        if hit && !proc_is_zombie(pid) {
            out.push(pid);
        }
    }
    out
}

pub fn mountinfo_lines() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Field 22 (starttime) of /proc/PID/stat.
pub fn proc_starttime(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    // after ") ": field 3 (state) is index 0, so starttime (22) is index 19.
    after.split_whitespace().nth(19)?.parse().ok()
}

pub fn proc_is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 2..].chars().next())
                .map(|c| c == 'Z' || c == 'X')
        })
        .unwrap_or(true)
}

fn proc_alive_with_start(pid: i32, start: u64) -> bool {
    proc_starttime(pid) == Some(start) && !proc_is_zombie(pid)
}

/// Namespace identity (`net:[4026531840]`) of /proc/PID/ns/KIND.
pub fn ns_id(pid: &str, kind: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| panic!("readlink /proc/{pid}/ns/{kind}: {e}"))
}

/// Host path of cgroup `cgroup_rel` for a v1 controller, or in the v2 tree when the host is
/// unified. Returns (dir, is_v1).
pub fn cgroup_controller_dir(controller: &str, cgroup_rel: &str) -> (PathBuf, bool) {
    let v1 = Path::new("/sys/fs/cgroup").join(controller);
    if v1.is_dir() && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        (v1.join(cgroup_rel), true)
    } else {
        (Path::new("/sys/fs/cgroup").join(cgroup_rel), false)
    }
}

/// Reads a cgroup file, trimmed, with a helpful panic.
#[track_caller]
pub fn read_trim(p: &Path) -> String {
    fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// Leaks of the whole run (this process's containers): state entries, cgroups, mounts.
pub fn suite_leak_check() -> Vec<String> {
    let tag = run_tag();
    let mut leaks = Vec::new();
    if let Ok(rt) = Runtime::from_env(&std::env::temp_dir()) {
        if let Ok(rd) = fs::read_dir(&rt.root) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&tag) {
                    leaks.push(format!("state entry {}", e.path().display()));
                }
            }
        }
    }
    for m in cgroup_mounts() {
        if let Ok(rd) = fs::read_dir(m.join(CGROUP_PARENT)) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&tag) {
                    leaks.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
    }
    for line in mountinfo_lines() {
        if line.contains(&tag) || line.contains("rt-scratch-") {
            leaks.push(format!("mount: {line}"));
        }
    }
    leaks
}

extern "C" fn suite_leak_check_atexit() {
    let leaks = suite_leak_check();
    if leaks.is_empty() {
        note("suite leak check: clean (no state entries, cgroups or mounts of this run remain)");
    } else {
        let shown: Vec<&str> = leaks.iter().take(40).map(String::as_str).collect();
        let more = leaks.len().saturating_sub(shown.len());
        note(&format!(
            "SUITE LEAK CHECK FAILED ({} leaks):\n  {}{}",
            leaks.len(),
            shown.join("\n  "),
            if more > 0 {
                format!("\n  ... and {more} more")
            } else {
                String::new()
            }
        ));
        let _ = std::io::stderr().flush();
        // SAFETY: terminating the process from an exit handler with a failure status.
        unsafe { libc::_exit(3) };
    }
}
