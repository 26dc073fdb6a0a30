//! Networking the OpenVZ way (issue 7): `io.runvz.net.venet`, `io.runvz.net.veth`,
//! `io.runvz.net.rate`. runvz-only (runc has no such annotations). Every test runs the runtime
//! inside a network namespace the test makes itself (the "host" here), uses only addresses of
//! its own in 10.213.N.0/24 and fd00:213:N::/64, and checks that the host namespace holds the
//! same links, addresses, routes and rules after its containers are deleted as before.

use runtime_tests::{run_tag, setup, Bundle, Ctx};
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NS_SEQ: AtomicUsize = AtomicUsize::new(0);

/// `sh -c CMD`: (success, stdout + stderr).
fn sh(cmd: &str) -> (bool, String) {
    let o = Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("sh -c {cmd}: {e}"));
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

#[track_caller]
fn sh_ok(cmd: &str) -> String {
    let (ok, out) = sh(cmd);
    assert!(ok, "{cmd} failed:\n{out}");
    out
}

/// A test's "host": a network namespace of its own in which the runtime runs, with
/// 10.213.N.1 and fd00:213:N::1 on its loopback. On drop: the test's containers are deleted,
/// the namespace is compared with its first snapshot, then removed.
struct Host {
    t: Ctx,
    name: String,
    n: u8,
    before: Vec<String>,
}

impl Host {
    /// `None` (after saying why) when the runtime is not runvz.
    fn new(t: Ctx, n: u8) -> Option<Host> {
        if !t.rt.is_runvz() {
            runtime_tests::note(&format!(
                "SKIP {}: io.runvz.net.* annotations are runvz's ({} has no runtime networking)",
                t.name, t.rt.name
            ));
            return None;
        }
        let name = format!("{}net{}", run_tag(), NS_SEQ.fetch_add(1, Ordering::SeqCst));
        sh_ok(&format!("ip netns add {name}"));
        let mut h = Host {
            t,
            name,
            n,
            before: vec![],
        };
        h.t.rt.netns = Some(format!("/run/netns/{}", h.name).into());
        h.ip("link set lo up");
        h.ip(&format!("addr add {} dev lo", h.addr4(1)));
        h.ip(&format!("addr add {} dev lo", h.addr6(1)));
        h.before = h.snapshot();
        Some(h)
    }

    fn addr4(&self, host: u8) -> String {
        format!("10.213.{}.{host}", self.n)
    }

    fn addr6(&self, host: u8) -> String {
        format!("fd00:213:{}::{host}", self.n)
    }

    /// `ip -n NS ARGS`, asserted.
    #[track_caller]
    fn ip(&self, args: &str) -> String {
        sh_ok(&format!("ip -n {} {args}", self.name))
    }

    /// A command in the host namespace (not asserted).
    fn run(&self, cmd: &str) -> (bool, String) {
        sh(&format!("{} {cmd}", self.enter()))
    }

    fn enter(&self) -> String {
        format!("nsenter --net=/run/netns/{}", self.name)
    }

    /// Links, addresses, routes (all tables), rules and qdiscs of the host namespace.
    fn snapshot(&self) -> Vec<String> {
        let mut out = vec![];
        for what in [
            "-o link show",
            "-o addr show",
            "route show table all",
            "-6 route show table all",
            "rule show",
            "-6 rule show",
        ] {
            let (_, s) = sh(&format!("ip -n {} {what}", self.name));
            out.extend(s.lines().map(|l| format!("{what}: {l}")));
        }
        out.sort();
        out
    }

    /// What the snapshot shows now that it did not at the start (and the reverse).
    fn diff(&self) -> Vec<String> {
        let now = self.snapshot();
        let mut d: Vec<String> = now
            .iter()
            .filter(|l| !self.before.contains(l))
            .map(|l| format!("left: {l}"))
            .collect();
        d.extend(
            self.before
                .iter()
                .filter(|l| !now.contains(l))
                .map(|l| format!("gone: {l}")),
        );
        d
    }

    /// A bundle whose container serves `body` over HTTP on port 8080 with `ann` annotations.
    fn serving(&self, body: &str, ann: serde_json::Value) -> Bundle {
        self.t
            .bundle()
            .sh(&format!(
                "mkdir -p /dev/shm/w && echo {body} > /dev/shm/w/i && exec httpd -f -p 8080 -h /dev/shm/w"
            ))
            .set("/annotations", ann)
    }

    /// create + start, returns the init's pid.
    #[track_caller]
    fn up(&self, b: &Bundle) -> i32 {
        self.t.create(b);
        self.t.start(&b.id);
        self.t.pid(&b.id)
    }

    /// Deletes every container of the test and asserts the host namespace is as it was.
    #[track_caller]
    fn assert_clean(&self) {
        let leaks = self.t.cleanup_and_find_leaks();
        assert!(leaks.is_empty(), "leaks: {leaks:?}");
        let d = self.diff();
        assert!(
            d.is_empty(),
            "host namespace changed:\n  {}",
            d.join("\n  ")
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.t.cleanup_and_find_leaks();
        let d = self.diff();
        sh(&format!("ip netns del {}", self.name));
        if !d.is_empty() && !std::thread::panicking() {
            panic!("host namespace changed:\n  {}", d.join("\n  "));
        }
    }
}

/// In the network namespace of pid (with the host's busybox and full root powers there).
fn in_ct(pid: i32, cmd: &str) -> (bool, String) {
    sh(&format!("{} {cmd}", ct(pid)))
}

fn ct(pid: i32) -> String {
    format!("nsenter -t {pid} -n")
}

/// HTTP GET of /i from the httpd on `ip`:8080 (busybox nc: the static busybox's wget crashes
/// here), run with `prefix` (an `nsenter` into the client's namespace); retried briefly while
/// the server starts. Returns the body.
fn fetch(prefix: &str, ip: &str) -> String {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (ok, out) = sh(&format!(
            "printf 'GET /i HTTP/1.0\\r\\n\\r\\n' | {prefix} busybox nc -w 3 {ip} 8080"
        ));
        if (ok && out.contains("200 OK")) || Instant::now() > end {
            return out.lines().last().unwrap_or("").trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pings(via: impl Fn(&str) -> (bool, String), args: &str) -> bool {
    via(&format!("busybox ping -c 1 -W 2 {args}")).0
}

#[test]
fn venet_host_and_container_reach_each_other_by_ip() {
    let t = setup!("net-venet-v4");
    let Some(h) = Host::new(t, 1) else { return };
    let a = h.serving("hello-a", json!({"io.runvz.net.venet": h.addr4(2)}));
    let b = h.serving("hello-b", json!({"io.runvz.net.venet": h.addr4(3)}));
    let pa = h.up(&a);
    let pb = h.up(&b);
    // Inside: venet0, NOARP, the /32, a default route through the device.
    let (_, link) = in_ct(pa, "ip -o addr show dev venet0");
    assert!(link.contains(&format!("{}/32", h.addr4(2))), "{link}");
    let (_, flags) = in_ct(pa, "ip -o link show dev venet0");
    assert!(flags.contains("NOARP"), "{flags}");
    let (_, routes) = in_ct(pa, "ip route");
    assert!(routes.contains("default dev venet0"), "{routes}");
    // host <-> container, container <-> container: ping and TCP.
    let host = |c: &str| h.run(c);
    assert!(pings(host, &h.addr4(2)), "host cannot ping container a");
    let a_ns = |c: &str| in_ct(pa, c);
    assert!(pings(a_ns, &h.addr4(1)), "container a cannot ping the host");
    assert!(
        pings(a_ns, &h.addr4(3)),
        "container a cannot ping container b"
    );
    assert_eq!(fetch(&h.enter(), &h.addr4(2)), "hello-a");
    assert_eq!(fetch(&ct(pa), &h.addr4(3)), "hello-b");
    assert_eq!(fetch(&ct(pb), &h.addr4(2)), "hello-a");
    // No MAC is resolved anywhere: no neighbour entry in the container.
    let (_, neigh) = in_ct(pa, "ip neigh show dev venet0");
    assert!(!neigh.contains("lladdr"), "venet resolved a MAC: {neigh}");
    // state shows the annotations.
    let st = h.t.rt.state(&a.id).expect("state");
    assert_eq!(st["annotations"]["io.runvz.net.venet"], h.addr4(2));
    h.assert_clean();
}

#[test]
fn venet_ipv6() {
    let t = setup!("net-venet-v6");
    let Some(h) = Host::new(t, 2) else { return };
    let a = h.serving(
        "hello-v6",
        json!({"io.runvz.net.venet": format!("{},{}", h.addr4(2), h.addr6(2))}),
    );
    let b = h.serving("hello-b6", json!({"io.runvz.net.venet": h.addr6(3)}));
    let pa = h.up(&a);
    let pb = h.up(&b);
    let (_, addrs) = in_ct(pa, "ip -o -6 addr show dev venet0");
    assert!(addrs.contains(&format!("{}/128", h.addr6(2))), "{addrs}");
    let host = |c: &str| h.run(c);
    assert!(pings(host, &h.addr6(2)), "host cannot ping6 the container");
    assert!(
        pings(|c: &str| in_ct(pb, c), &h.addr6(1)),
        "b cannot ping6 the host"
    );
    assert!(
        pings(|c: &str| in_ct(pb, c), &h.addr6(2)),
        "b cannot ping6 a"
    );
    assert_eq!(fetch(&h.enter(), &h.addr6(2)), "hello-v6");
    assert_eq!(fetch(&ct(pb), &h.addr6(2)), "hello-v6");
    h.assert_clean();
}

/// One counter of /proc/net/snmp (or snmp6) of the host namespace.
fn snmp(prefix: &str, file: &str, key: &str) -> u64 {
    let (_, s) = sh(&format!("{prefix} cat /proc/net/{file}"));
    let lines: Vec<&str> = s.lines().collect();
    if file == "snmp6" {
        return lines
            .iter()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or_else(|| panic!("no {key} in {file}"));
    }
    // "Icmp: InMsgs InErrors ..." then "Icmp: 1 0 ...".
    let (proto, field) = key.split_once(' ').expect("PROTO FIELD");
    let hdr: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with(proto))
        .expect("header")
        .split_whitespace()
        .collect();
    let vals: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with(proto))
        .nth(1)
        .expect("values")
        .split_whitespace()
        .collect();
    let i = hdr.iter().position(|f| *f == field).expect("field");
    vals[i].parse().expect("number")
}

#[test]
fn venet_spoofed_source_never_arrives() {
    let t = setup!("net-venet-spoof");
    let Some(h) = Host::new(t, 3) else { return };
    let a = h.t.bundle().args(&["sleep", "1000"]).set(
        "/annotations",
        json!({"io.runvz.net.venet": format!("{},{}", h.addr4(2), h.addr6(2))}),
    );
    let b =
        h.t.bundle()
            .args(&["sleep", "1000"])
            .set("/annotations", json!({"io.runvz.net.venet": h.addr4(3)}));
    let pa = h.up(&a);
    let pb = h.up(&b);
    // Forged sources: an address nobody has, and the other container's.
    for forged in [h.addr4(99), h.addr4(3)] {
        in_ct(pa, &format!("ip addr add {forged}/32 dev venet0"));
    }
    in_ct(
        pa,
        &format!("ip addr add {}/128 dev venet0 nodad", h.addr6(99)),
    );
    let a_ns = |c: &str| in_ct(pa, c);
    let echos = || snmp(&h.enter(), "snmp", "Icmp: InEchos");
    let echos6 = || snmp(&h.enter(), "snmp6", "Icmp6InEchos");
    let echos_b = || snmp(&ct(pb), "snmp", "Icmp: InEchos");
    // The genuine source arrives (the counters work) ...
    let (e0, e60) = (echos(), echos6());
    assert!(pings(a_ns, &format!("-I {} {}", h.addr4(2), h.addr4(1))));
    assert!(pings(a_ns, &format!("-I {} {}", h.addr6(2), h.addr6(1))));
    assert_eq!(echos(), e0 + 1, "a genuine echo request must be counted");
    assert_eq!(echos6(), e60 + 1, "a genuine echo6 request must be counted");
    // ... forged ones never do, to the host or to the other container.
    let (e1, e61) = (echos(), echos6());
    for forged in [h.addr4(99), h.addr4(3)] {
        assert!(!pings(a_ns, &format!("-I {forged} {}", h.addr4(1))));
    }
    assert!(!pings(a_ns, &format!("-I {} {}", h.addr6(99), h.addr6(1))));
    assert_eq!(echos(), e1, "a forged IPv4 source reached the host");
    assert_eq!(echos6(), e61, "a forged IPv6 source reached the host");
    // To the other container: genuine arrives, forged does not.
    in_ct(pa, &format!("ip addr del {}/32 dev venet0", h.addr4(3)));
    let b0 = echos_b();
    assert!(pings(a_ns, &format!("-I {} {}", h.addr4(2), h.addr4(3))));
    assert_eq!(echos_b(), b0 + 1, "a genuine echo request must reach b");
    assert!(!pings(a_ns, &format!("-I {} {}", h.addr4(99), h.addr4(3))));
    assert_eq!(echos_b(), b0 + 1, "a forged source reached container b");
    h.assert_clean();
}

#[test]
fn veth_in_a_bridge_two_containers_talk_over_l2() {
    let t = setup!("net-veth-bridge");
    let Some(h) = Host::new(t, 4) else { return };
    h.ip("link add rvzbr4 type bridge");
    h.ip("link set rvzbr4 up");
    let mac_b = "02:13:04:00:00:03";
    let a = h.serving(
        "hello-veth-a",
        json!({"io.runvz.net.veth": "eth0,,rvzha4,,rvzbr4",
               "io.runvz.net.veth.eth0.ip": format!("{}/24", h.addr4(2))}),
    );
    let b = h.serving(
        "hello-veth-b",
        json!({"io.runvz.net.veth": format!("eth0,{mac_b},,,rvzbr4"),
               "io.runvz.net.veth.eth0.ip": format!("{}/24,gw={}", h.addr4(3), h.addr4(2))}),
    );
    let pa = h.up(&a);
    let pb = h.up(&b);
    let (_, master) = h.run("cat /sys/class/net/rvzha4/master/uevent");
    let (_, links) = h.run("ip -o link show master rvzbr4");
    assert!(
        links.contains("rvzha4"),
        "host end not in the bridge: {links} {master}"
    );
    let (_, r) = in_ct(pb, "ip route");
    assert!(r.contains(&format!("default via {}", h.addr4(2))), "{r}");
    let a_ns = |c: &str| in_ct(pa, c);
    assert!(pings(a_ns, &h.addr4(3)), "a cannot ping b over the bridge");
    assert_eq!(fetch(&ct(pa), &h.addr4(3)), "hello-veth-b");
    let (_, neigh) = in_ct(pa, &format!("ip neigh show {}", h.addr4(3)));
    assert!(neigh.contains(mac_b), "no ARP entry for b in a: {neigh}");
    h.t.rt.cmd(&["delete", "--force", &a.id]).ok();
    h.t.rt.cmd(&["delete", "--force", &b.id]).ok();
    h.ip("link del rvzbr4");
    h.assert_clean();
}

#[test]
fn net_errors_are_one_line_and_leave_nothing() {
    let t = setup!("net-errors");
    let Some(h) = Host::new(t, 5) else { return };
    let first =
        h.t.bundle()
            .args(&["sleep", "1000"])
            .set("/annotations", json!({"io.runvz.net.venet": h.addr4(2)}));
    h.up(&first);
    let cases: Vec<(serde_json::Value, bool, &str, &str)> = vec![
        (
            json!({"io.runvz.net.venet": "10.213.5.300"}),
            true,
            "io.runvz.net.venet",
            "not an IPv4",
        ),
        (
            json!({"io.runvz.net.venet": h.addr4(2)}),
            true,
            "io.runvz.net.venet",
            "in use",
        ),
        (
            json!({"io.runvz.net.venet": h.addr6(1)}),
            true,
            "io.runvz.net.venet",
            "in use",
        ),
        (
            json!({"io.runvz.net.veth": "eth0,,rvzdup5;eth1,,rvzdup5"}),
            true,
            "io.runvz.net.veth",
            "given twice",
        ),
        (
            json!({"io.runvz.net.veth": "eth0,,,,rvznobr5"}),
            true,
            "io.runvz.net.veth",
            "rvznobr5 does not exist",
        ),
        (
            json!({"io.runvz.net.rate": "fast", "io.runvz.net.venet": h.addr4(3)}),
            true,
            "io.runvz.net.rate",
            "kbit",
        ),
        (
            json!({"io.runvz.net.venet": h.addr4(4)}),
            false,
            "io.runvz.net.venet",
            "new network namespace",
        ),
    ];
    for (ann, netns, key, want) in cases {
        let mut b =
            h.t.bundle()
                .args(&["true"])
                .set("/annotations", ann.clone());
        if !netns {
            b = b.without_namespaces(&["network"]);
        }
        let o = h.t.create_raw(&b, &b.id, &[]).fails();
        let msg = o.stderr.trim();
        assert!(
            msg.lines().count() == 1 && msg.contains(key) && msg.contains(want),
            "{ann}: {msg}"
        );
        assert!(h.t.rt.state(&b.id).is_err(), "{ann}: a record was left");
    }
    h.assert_clean();
}

#[test]
fn fifty_containers_created_and_deleted_leave_nothing() {
    let t = setup!("net-fifty");
    let Some(h) = Host::new(t, 6) else { return };
    for i in 0..50u8 {
        let ann = if i % 2 == 0 {
            json!({"io.runvz.net.venet": format!("{},{}", h.addr4(2 + i), h.addr6(2 + i)),
                   "io.runvz.net.rate": "10000"})
        } else {
            json!({"io.runvz.net.veth": "eth0;eth1",
                   "io.runvz.net.veth.eth0.ip": format!("{}/24", h.addr4(2 + i)),
                   "io.runvz.net.rate": "20000"})
        };
        let b =
            h.t.bundle()
                .args(&["sleep", "1000"])
                .set("/annotations", ann);
        h.t.create(&b);
        let (_, links) = h.run("ip -o link show");
        assert!(
            links.contains("vz"),
            "no host link for container {i}: {links}"
        );
        h.t.rt.cmd(&["delete", "--force", &b.id]).ok();
        // Right after delete, not eventually: the host ends are removed by delete itself.
        let d = h.diff();
        assert!(d.is_empty(), "after container {i}:\n  {}", d.join("\n  "));
    }
    h.assert_clean();
}

#[test]
fn sigkill_during_network_setup_then_delete_force_leaves_nothing() {
    let t = setup!("net-crash");
    let Some(h) = Host::new(t, 7) else { return };
    let ns = format!("--net=/run/netns/{}", h.name);
    let create = |b: &Bundle| {
        b.save();
        let root = h.t.rt.root.to_string_lossy().into_owned();
        let mut c = Command::new("nsenter");
        c.args([&ns, h.t.rt.bin.to_str().expect("utf8"), "--root", &root])
            .args(["create", "--bundle", &b.dir_str(), &b.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let mk = |i: u8| {
        h.t.bundle().args(&["sleep", "1000"]).set(
            "/annotations",
            json!({"io.runvz.net.venet": h.addr4(2 + i), "io.runvz.net.veth": "eth0",
                   "io.runvz.net.rate": "1000"}),
        )
    };
    // How long a whole create takes here, then kill at points spread over it.
    let b = mk(0);
    let t0 = Instant::now();
    assert!(create(&b).status().expect("create").success());
    let full = t0.elapsed();
    h.t.rt.cmd(&["delete", "--force", &b.id]).ok();
    let points = 24u8;
    let mut made_links = 0;
    for k in 1..=points {
        let b = mk(k);
        let mut child = create(&b).spawn().expect("spawn");
        std::thread::sleep(full.mul_f64(1.2 * k as f64 / points as f64));
        // SAFETY: kill(2) on our child with SIGKILL.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        let (_, links) = h.run("ip -o link show");
        if links.contains(" vz") {
            made_links += 1;
        }
        let o = h.t.rt.cmd(&["delete", "--force", &b.id]);
        assert!(
            o.success() || o.stderr.contains("does not exist"),
            "delete --force after SIGKILL at point {k}: {}",
            o.stderr
        );
        let d = h.diff();
        assert!(
            d.is_empty(),
            "after SIGKILL at point {k}:\n  {}",
            d.join("\n  ")
        );
    }
    runtime_tests::note(&format!(
        "net-crash: {made_links} of {points} kills left host links for delete to remove"
    ));
    h.assert_clean();
}

#[test]
fn network_exists_before_create_runtime_hooks_and_rate_is_set_inside() {
    let t = setup!("net-hooks-rate");
    let Some(h) = Host::new(t, 8) else { return };
    // The hook runs in the runtime's (the test host's) namespace: the host route must be there.
    let check = format!("ip route | grep -q '^{} dev vz'", h.addr4(2));
    let b =
        h.t.bundle()
            .args(&["sleep", "1000"])
            .set(
                "/annotations",
                json!({"io.runvz.net.venet": h.addr4(2), "io.runvz.net.rate": "8000"}),
            )
            .set(
                "/hooks/createRuntime",
                json!([{"path": "/bin/sh", "args": ["sh", "-c", check]}]),
            );
    let pid = h.up(&b);
    let (_, q) = in_ct(pid, "tc qdisc show dev venet0");
    assert!(
        q.contains("tbf") && q.contains("rate 8Mbit"),
        "no 8 Mbit/s TBF inside: {q}"
    );
    h.assert_clean();
}
