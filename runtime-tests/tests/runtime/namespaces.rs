//! Namespaces: new ones differ from the host's, absent ones equal the host's, `path` joins.

use runtime_tests::{ns_id, setup};
use serde_json::json;
use std::fs;
use std::time::Duration;

/// (OCI type, /proc/PID/ns name)
const KINDS: &[(&str, &str)] = &[
    ("pid", "pid"),
    ("network", "net"),
    ("ipc", "ipc"),
    ("uts", "uts"),
    ("mount", "mnt"),
    ("cgroup", "cgroup"),
    ("user", "user"),
];

fn host_ns(kind: &str) -> String {
    ns_id("self", kind)
}

#[test]
fn default_namespaces_differ_from_host() {
    let t = setup!("ns-default");
    let b = t.bundle().args(&["sleep", "1000"]);
    t.create(&b);
    let pid = t.pid(&b.id).to_string();
    for (oci, proc_name) in KINDS {
        let inside = ns_id(&pid, proc_name);
        let host = host_ns(proc_name);
        let in_config = ["pid", "network", "ipc", "uts", "mount"].contains(oci);
        if in_config {
            assert_ne!(inside, host, "{oci}: container shares the host's namespace");
        } else {
            assert_eq!(inside, host, "{oci}: not requested, but not the host's");
        }
    }
}

#[test]
fn cgroup_namespace_is_new_when_requested() {
    let t = setup!("ns-cgroup");
    let b = t
        .bundle()
        .namespace(json!({"type": "cgroup"}))
        .sh("cat /proc/self/cgroup; exec sleep 1000");
    let c = t.create(&b);
    t.start(&b.id);
    let pid = t.pid(&b.id).to_string();
    assert_ne!(ns_id(&pid, "cgroup"), host_ns("cgroup"));
    // Inside a cgroup namespace the container's own cgroup is the root: "memory:/".
    let out = c.wait_stdout("memory:", Duration::from_secs(10));
    let mem = out
        .lines()
        .find(|l| l.contains(":memory:"))
        .unwrap_or_else(|| panic!("no memory line in {out:?}"));
    assert!(mem.ends_with(":/"), "cgroup ns root is not /: {mem}");
}

#[test]
fn user_namespace_with_mappings() {
    let t = setup!("ns-user");
    let b = t
        .bundle()
        .namespace(json!({"type": "user"}))
        .set(
            "/linux/uidMappings",
            json!([{"containerID": 0, "hostID": 100000, "size": 65536}]),
        )
        .set(
            "/linux/gidMappings",
            json!([{"containerID": 0, "hostID": 100000, "size": 65536}]),
        )
        // The cgroup mount needs a cgroup namespace in a user namespace for some runtimes.
        .remove("/mounts/6")
        .sh("id -u; exec sleep 1000");
    let c = t.create(&b);
    t.start(&b.id);
    let pid = t.pid(&b.id).to_string();
    assert_ne!(ns_id(&pid, "user"), host_ns("user"), "no new user ns");
    let map = fs::read_to_string(format!("/proc/{pid}/uid_map")).expect("uid_map");
    let f: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(f, ["0", "100000", "65536"], "uid_map: {map:?}");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    assert!(
        uid.split_whitespace().nth(1) == Some("100000"),
        "host view of container root: {uid}"
    );
    assert_eq!(
        c.wait_stdout("0", Duration::from_secs(10)).trim(),
        "0",
        "uid inside"
    );
}

#[test]
fn joining_namespaces_by_path() {
    let t = setup!("ns-join");
    let a = t.bundle().args(&["sleep", "1000"]);
    t.create(&a);
    let apid = t.pid(&a.id).to_string();
    let b = t
        .bundle()
        .edit(|c| {
            for ns in c["linux"]["namespaces"].as_array_mut().expect("namespaces") {
                match ns["type"].as_str() {
                    Some("network") => ns["path"] = json!(format!("/proc/{apid}/ns/net")),
                    Some("ipc") => ns["path"] = json!(format!("/proc/{apid}/ns/ipc")),
                    Some("uts") => ns["path"] = json!(format!("/proc/{apid}/ns/uts")),
                    _ => {}
                }
            }
        })
        // Joining a UTS namespace: setting a hostname would change A's as well.
        .remove("/hostname")
        .args(&["sleep", "1000"]);
    t.create(&b);
    let bpid = t.pid(&b.id).to_string();
    for k in ["net", "ipc", "uts"] {
        assert_eq!(ns_id(&bpid, k), ns_id(&apid, k), "{k}: path not joined");
        assert_ne!(ns_id(&bpid, k), host_ns(k), "{k}: joined the host's?");
    }
    for k in ["pid", "mnt"] {
        assert_ne!(ns_id(&bpid, k), ns_id(&apid, k), "{k}: should be new");
    }
}

#[test]
fn missing_namespace_means_host_namespace() {
    let t = setup!("ns-host-net");
    let b = t
        .bundle()
        .without_namespaces(&["network", "uts"])
        .remove("/hostname")
        .args(&["sleep", "1000"]);
    t.create(&b);
    let pid = t.pid(&b.id).to_string();
    assert_eq!(ns_id(&pid, "net"), host_ns("net"));
    assert_eq!(ns_id(&pid, "uts"), host_ns("uts"));
    assert_ne!(ns_id(&pid, "pid"), host_ns("pid"));
}

#[test]
fn pid_namespace_makes_the_process_pid_1() {
    let t = setup!("ns-pid1");
    let b = t.bundle().sh("echo $$; ls /proc | grep -c '^[0-9]'");
    let o = t.run(&b).ok();
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("1"),
        "pid inside: {:?}",
        o.stdout
    );
    let n: u32 = lines.get(1).and_then(|s| s.parse().ok()).unwrap_or(999);
    assert!(n <= 3, "container sees {n} processes: host pid ns?");
}
