//! CRI tests: the private containerd of hack/cri/start, driven as kubelet would, with the
//! RuntimeClass handler of `CRI_HANDLER` (runvz or runc). Each test removes its pod and checks
//! that nothing of it is left; hack/cri/stop checks the whole run.

use std::collections::HashMap;

use anyhow::{ensure, Result};
use cri_tests::v1 as cri;
use cri_tests::{beancounters, handler, is_runvz, pod_namespaces, resources, security, Cri};

fn skip_unless_runvz(what: &str) -> bool {
    if is_runvz() {
        return false;
    }
    eprintln!("skipped on handler {}: {what} is runvz-only", handler());
    true
}

#[test]
fn lifecycle_exit_code_and_logs() -> Result<()> {
    let c = Cri::connect()?;
    let pod = c.pod("lifecycle", |_| {})?;
    let id = pod.create(
        "main",
        &["sh", "-c", "echo hello-cri; echo to-stderr >&2; exit 3"],
        |_| {},
    )?;
    ensure!(
        pod.status(&id)?.state == cri::ContainerState::ContainerCreated as i32,
        "not CREATED after CreateContainer"
    );
    pod.start(&id)?;
    let s = pod.wait_exited(&id, 20)?;
    ensure!(
        s.exit_code == 3,
        "exit code {} (want 3), reason {}",
        s.exit_code,
        s.reason
    );
    ensure!(s.reason == "Error", "reason {:?} (want Error)", s.reason);
    let lines = pod.log_lines("main")?;
    ensure!(
        lines.contains(&"hello-cri".to_string()),
        "log has no stdout line: {lines:?}"
    );
    ensure!(
        lines.contains(&"to-stderr".to_string()),
        "log has no stderr line: {lines:?}"
    );
    pod.remove(&id)?;
    ensure!(
        pod.containers()?.is_empty(),
        "container listed after RemoveContainer"
    );
    Ok(())
}

#[test]
fn exec_sync_and_stop() -> Result<()> {
    let c = Cri::connect()?;
    let pod = c.pod("exec", |_| {})?;
    let id = pod.run("sleeper", &["sleep", "1000"], |_| {})?;
    let r = pod.exec_sync(&id, &["sh", "-c", "echo out; echo err >&2; exit 5"])?;
    ensure!(
        r.exit_code == 5,
        "ExecSync exit code {} (want 5)",
        r.exit_code
    );
    ensure!(
        r.stdout == b"out\n",
        "stdout {:?}",
        String::from_utf8_lossy(&r.stdout)
    );
    ensure!(
        r.stderr == b"err\n",
        "stderr {:?}",
        String::from_utf8_lossy(&r.stderr)
    );
    ensure!(
        pod.sh(&id, "hostname")? == "exec",
        "hostname is not the pod's"
    );
    // sleep as PID 1 ignores SIGTERM: StopContainer kills it after the timeout.
    pod.stop(&id, 1)?;
    let s = pod.status(&id)?;
    ensure!(
        s.state == cri::ContainerState::ContainerExited as i32,
        "state {} after StopContainer",
        s.state
    );
    ensure!(
        s.exit_code == 137,
        "exit code {} after StopContainer (want 137)",
        s.exit_code
    );
    Ok(())
}

#[test]
fn update_resources_and_stats() -> Result<()> {
    let c = Cri::connect()?;
    let pod = c.pod("update", |_| {})?;
    let id = pod.run("main", &["sleep", "1000"], |cfg| {
        resources(cfg).memory_limit_in_bytes = 128 << 20;
    })?;
    ensure!(
        pod.cgroup_file("memory", &id, "memory.limit_in_bytes")? == (128u64 << 20).to_string(),
        "memory limit not set at create"
    );
    pod.update(
        &id,
        cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        },
    )?;
    ensure!(
        pod.cgroup_file("memory", &id, "memory.limit_in_bytes")? == (64u64 << 20).to_string(),
        "memory limit not updated"
    );
    ensure!(
        pod.cgroup_file("cpu", &id, "cpu.shares")? == "512",
        "cpu.shares not updated"
    );
    ensure!(
        pod.cgroup_file("cpu", &id, "cpu.cfs_quota_us")? == "50000",
        "cfs quota not updated"
    );
    pod.sh(&id, "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")?;
    let st = pod.stats(&id)?;
    let mem = st
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value)
        .unwrap_or(0);
    let cpu = st
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value)
        .unwrap_or(0);
    ensure!(mem > 0, "ContainerStats: working set 0");
    ensure!(cpu > 0, "ContainerStats: cpu usage 0");
    Ok(())
}

#[test]
fn ub_annotations_hold_the_pod() -> Result<()> {
    if skip_unless_runvz("io.runvz.* annotations") {
        return Ok(());
    }
    let c = Cri::connect()?;
    let pod = c.pod("ub", |p| {
        p.annotations = HashMap::from([
            ("io.runvz.ub.numproc".to_string(), "16:16".to_string()),
            ("io.runvz.ram".to_string(), "48M".to_string()),
            ("io.runvz.cpuunits".to_string(), "2000".to_string()),
        ]);
    })?;
    let id = pod.run("main", &["sleep", "1000"], |_| {})?;
    ensure!(
        pod.cgroup_file("pids", &id, "pids.max")? == "16",
        "pids.max is not numproc's limit"
    );
    // cpuunits N -> cpu.shares N*1024/1000
    ensure!(
        pod.cgroup_file("cpu", &id, "cpu.shares")? == "2048",
        "cpu.shares is not io.runvz.cpuunits"
    );
    ensure!(
        pod.cgroup_file("memory", &id, "memory.limit_in_bytes")? == (48u64 << 20).to_string(),
        "memory limit is not io.runvz.ram"
    );
    // memory hog: 200 MB in a 48 MB pod -> killed, the container lives on.
    let hog = pod.exec_sync(
        &id,
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    )?;
    ensure!(
        !String::from_utf8_lossy(&hog.stdout).contains("survived"),
        "the memory hog was not stopped"
    );
    // fork bomb: 40 background sleeps in a pod of 16 processes (they keep no pipe of ExecSync open).
    let bomb = "n=0; for i in $(seq 40); do sleep 3 </dev/null >/dev/null 2>&1 & n=$((n+1)); done 2>/dev/null; echo $n";
    let r = pod.exec_sync(&id, &["sh", "-c", bomb])?;
    let err = String::from_utf8_lossy(&r.stderr).to_string();
    ensure!(
        pod.status(&id)?.state == cri::ContainerState::ContainerRunning as i32,
        "container died of its pod's limits"
    );
    let json: serde_json::Value = serde_json::from_str(&beancounters(&id)?)?;
    let failcnt = |res: &str| -> u64 {
        json[0]["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["resource"] == res)
            .and_then(|r| r["failcnt"].as_u64())
            .unwrap_or(0)
    };
    ensure!(
        failcnt("numproc") > 0,
        "numproc failcnt 0 after a fork bomb (exec stderr: {err})"
    );
    ensure!(
        failcnt("physpages") > 0,
        "physpages failcnt 0 after a memory hog"
    );
    let limit = json[0]["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["resource"] == "numproc")
        .and_then(|r| r["limit"].as_u64());
    ensure!(limit == Some(16), "beancounters numproc limit {limit:?}");
    Ok(())
}

#[test]
fn sysctls_user_readonly_root() -> Result<()> {
    let c = Cri::connect()?;
    let pod = c.pod("secctx", |p| {
        p.linux.get_or_insert_with(Default::default).sysctls = HashMap::from([
            ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
            (
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "80".to_string(),
            ),
        ]);
    })?;
    let id = pod.run("main", &["sleep", "1000"], |cfg| {
        let sc = security(cfg);
        sc.run_as_user = Some(cri::Int64Value { value: 1000 });
        sc.readonly_rootfs = true;
    })?;
    ensure!(
        pod.sh(&id, "cat /proc/sys/kernel/shm_rmid_forced")? == "1",
        "ipc sysctl not set"
    );
    ensure!(
        pod.sh(&id, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start")? == "80",
        "net sysctl not set"
    );
    ensure!(pod.sh(&id, "id -u")? == "1000", "not running as uid 1000");
    let r = pod.exec_sync(&id, &["sh", "-c", "touch /rofile"])?;
    ensure!(r.exit_code != 0, "wrote to a read-only root");
    ensure!(
        String::from_utf8_lossy(&r.stderr).contains("Read-only"),
        "touch failed otherwise: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    Ok(())
}

#[test]
fn oom_is_reported_as_oomkilled() -> Result<()> {
    let c = Cri::connect()?;
    let pod = c.pod("oom", |_| {})?;
    let id = pod.run(
        "hog",
        &["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a)"],
        |cfg| {
            resources(cfg).memory_limit_in_bytes = 32 << 20;
        },
    )?;
    let s = pod.wait_exited(&id, 30)?;
    ensure!(
        s.reason == "OOMKilled",
        "reason {:?} exit {} (want OOMKilled)",
        s.reason,
        s.exit_code
    );
    ensure!(s.exit_code == 137, "exit code {} (want 137)", s.exit_code);
    Ok(())
}

#[test]
fn shared_pid_namespace_and_network() -> Result<()> {
    let c = Cri::connect()?;
    let pod = c.pod("shared", |p| {
        let ns = pod_namespaces(p);
        ns.pid = cri::NamespaceMode::Pod as i32;
    })?;
    let a = pod.run("a", &["sleep", "1000"], |cfg| {
        security(cfg)
            .namespace_options
            .get_or_insert_with(Default::default)
            .pid = cri::NamespaceMode::Pod as i32;
    })?;
    let b = pod.run(
        "b",
        &[
            "sh",
            "-c",
            "echo shared > /dev/shm/x; nc -l -p 8080 -e echo pong & sleep 1000",
        ],
        |cfg| {
            security(cfg)
                .namespace_options
                .get_or_insert_with(Default::default)
                .pid = cri::NamespaceMode::Pod as i32;
        },
    )?;
    ensure!(
        pod.sh(&a, "cat /proc/1/cmdline | tr '\\0' ' '")?
            .starts_with("/pause"),
        "PID 1 is not the pod's pause"
    );
    ensure!(
        pod.sh(&a, "ps -o comm | grep -c nc")? == "1",
        "container a does not see b's processes"
    );
    ensure!(
        pod.sh(&a, "cat /dev/shm/x")? == "shared",
        "IPC (/dev/shm) not shared"
    );
    ensure!(pod.sh(&a, "for i in 1 2 3 4 5 6 7 8 9 10; do r=$(echo | nc 127.0.0.1 8080) && break; sleep 0.2; done; echo $r")? == "pong", "network namespace not shared");
    let ip = pod.sh(&a, "ip -4 -o addr show eth0 | awk '{print $4}'")?;
    ensure!(
        ip.starts_with("10.88.77."),
        "no CNI address on eth0: {ip:?}"
    );
    let _ = b;
    Ok(())
}

#[test]
fn seccomp_runtime_default_and_unconfined() -> Result<()> {
    let c = Cri::connect()?;
    let pod = c.pod("seccomp", |_| {})?;
    let profile = |t: cri::security_profile::ProfileType| {
        move |cfg: &mut cri::ContainerConfig| {
            security(cfg).seccomp = Some(cri::SecurityProfile {
                profile_type: t as i32,
                ..Default::default()
            });
        }
    };
    let def = pod.run(
        "default",
        &["sleep", "1000"],
        profile(cri::security_profile::ProfileType::RuntimeDefault),
    )?;
    let unc = pod.run(
        "unconfined",
        &["sleep", "1000"],
        profile(cri::security_profile::ProfileType::Unconfined),
    )?;
    let mode = |id: &str| pod.sh(id, "grep '^Seccomp:' /proc/self/status | tr -d '\\t '");
    ensure!(
        mode(&def)? == "Seccomp:2",
        "RuntimeDefault: no seccomp filter"
    );
    ensure!(mode(&unc)? == "Seccomp:0", "Unconfined: a seccomp filter");
    Ok(())
}

#[test]
fn privileged_container() -> Result<()> {
    let c = Cri::connect()?;
    let pod = c.pod("privileged", |p| {
        p.linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .privileged = true;
    })?;
    let plain = pod.run("plain", &["sleep", "1000"], |_| {})?;
    let priv_id = pod.run("priv", &["sleep", "1000"], |cfg| {
        security(cfg).privileged = true;
    })?;
    let caps = |id: &str| pod.sh(id, "grep '^CapEff:' /proc/self/status | cut -f2");
    let (p, q) = (caps(&priv_id)?, caps(&plain)?);
    ensure!(p != q, "privileged has the default capabilities {p}");
    ensure!(
        u64::from_str_radix(&p, 16)? >> 21 & 1 == 1,
        "privileged lacks CAP_SYS_ADMIN: {p}"
    );
    // CAP_NET_ADMIN in the pod's network namespace.
    pod.sh(
        &priv_id,
        "ip link add rvza0 type veth peer name rvzb0 && ip link del rvza0",
    )?;
    // the host's devices (sysfs stays read-only: containerd makes it writable only with host network)
    let devs = |id: &str| pod.sh(id, "ls /dev | wc -l");
    let (dp, dq) = (
        devs(&priv_id)?.parse::<u32>()?,
        devs(&plain)?.parse::<u32>()?,
    );
    ensure!(
        dp > dq + 10,
        "privileged sees {dp} /dev entries, plain {dq}"
    );
    let r = pod.exec_sync(
        &plain,
        &["sh", "-c", "ip link add rvza1 type veth peer name rvzb1"],
    )?;
    ensure!(r.exit_code != 0, "unprivileged container could add a link");
    Ok(())
}

#[test]
fn exec_with_tty_through_the_streaming_server() -> Result<()> {
    let c = Cri::connect()?;
    let pod = c.pod("stream", |_| {})?;
    let id = pod.run("main", &["sleep", "1000"], |_| {})?;
    let t = pod.exec_streamed(&id, &["sh", "-c", "tty; echo streamed-ok"], true)?;
    let text = String::from_utf8_lossy(&t.stdout).to_string();
    ensure!(
        text.contains("/dev/pts/"),
        "no tty in the exec: {text:?} (status {:?})",
        t.status
    );
    ensure!(
        text.contains("streamed-ok\r\n"),
        "tty output without CRLF: {text:?}"
    );
    ensure!(t.status.contains("Success"), "status {:?}", t.status);
    let n = pod.exec_streamed(&id, &["sh", "-c", "tty; echo to-err >&2; exit 4"], false)?;
    ensure!(
        String::from_utf8_lossy(&n.stdout).contains("not a tty"),
        "a tty without tty=true: {:?}",
        String::from_utf8_lossy(&n.stdout)
    );
    ensure!(
        n.stderr == b"to-err\n",
        "stderr {:?}",
        String::from_utf8_lossy(&n.stderr)
    );
    ensure!(
        n.status.contains("exit code") || n.status.contains("ExitCode"),
        "status of exit 4: {:?}",
        n.status
    );
    ensure!(
        n.status.contains('4'),
        "status does not carry exit code 4: {:?}",
        n.status
    );
    Ok(())
}

#[test]
fn container_annotations_and_a_bad_value() -> Result<()> {
    if skip_unless_runvz("io.runvz.* annotations") {
        return Ok(());
    }
    let c = Cri::connect()?;
    let pod = c.pod("ctrann", |_| {})?;
    let id = pod.run("limited", &["sleep", "1000"], |cfg| {
        cfg.annotations = HashMap::from([("io.runvz.ub.numproc".to_string(), "8:8".to_string())]);
    })?;
    ensure!(
        pod.cgroup_file("pids", &id, "pids.max")? == "8",
        "container annotation did not reach pids.max"
    );
    // a bad value fails CreateContainer (through the shim) with runvz's message; nothing is left
    let bad = pod.create("bad", &["sleep", "1000"], |cfg| {
        cfg.annotations = HashMap::from([("io.runvz.ub.numproc".to_string(), "lots".to_string())]);
    });
    let started = bad.and_then(|b| pod.start(&b));
    let err = match started {
        Ok(()) => anyhow::bail!("a container with io.runvz.ub.numproc=lots started"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("io.runvz.ub.numproc"),
        "the error does not name the key: {err}"
    );
    ensure!(
        pod.containers()?
            .iter()
            .all(|c| c.id == id || c.state != cri::ContainerState::ContainerRunning as i32),
        "a bad container runs"
    );
    Ok(())
}
