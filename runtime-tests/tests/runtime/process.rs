//! The container process: capabilities, rlimits, user and groups, cwd, env, hostname,
//! noNewPrivileges, oomScoreAdj.

use runtime_tests::{setup, Ctx};
use serde_json::json;

/// Runs `cat /proc/self/status` in a container built from `b` and returns field `name`.
fn status_fields(t: &Ctx, b: runtime_tests::Bundle, names: &[&str]) -> Vec<String> {
    let b = b.args(&["cat", "/proc/self/status"]);
    let o = t.run(&b).ok();
    names
        .iter()
        .map(|n| {
            o.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{n}:")))
                .unwrap_or_else(|| panic!("no {n} in /proc/self/status:\n{}", o.stdout))
                .trim()
                .to_string()
        })
        .collect()
}

fn cap_mask(names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| match *n {
            "CAP_CHOWN" => 0,
            "CAP_KILL" => 5,
            "CAP_SETUID" => 7,
            "CAP_NET_BIND_SERVICE" => 10,
            "CAP_NET_ADMIN" => 12,
            "CAP_NET_RAW" => 13,
            "CAP_SYS_ADMIN" => 21,
            "CAP_AUDIT_WRITE" => 29,
            other => panic!("add {other} to cap_mask"),
        })
        .fold(0u64, |m, bit| m | (1u64 << bit))
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or_else(|e| panic!("not hex {s:?}: {e}"))
}

fn caps_all(names: &[&str]) -> serde_json::Value {
    json!({"bounding": names, "effective": names, "permitted": names,
           "inheritable": names, "ambient": names})
}

#[test]
fn capabilities_default_set() {
    let t = setup!("caps-default");
    let want = cap_mask(&["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let f = status_fields(&t, t.bundle(), &["CapEff", "CapPrm", "CapBnd"]);
    for (name, v) in ["CapEff", "CapPrm", "CapBnd"].iter().zip(&f) {
        assert_eq!(hex(v), want, "{name} = {v}, want {want:016x}");
    }
}

#[test]
fn capabilities_custom_set_for_root() {
    let t = setup!("caps-root");
    let names = ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_NET_RAW"];
    let b = t.bundle().set("/process/capabilities", caps_all(&names));
    let f = status_fields(&t, b, &["CapEff", "CapBnd"]);
    assert_eq!(hex(&f[0]), cap_mask(&names), "CapEff {}", f[0]);
    assert_eq!(hex(&f[1]), cap_mask(&names), "CapBnd {}", f[1]);
}

#[test]
fn capabilities_non_root_ambient_and_bounding() {
    let t = setup!("caps-nonroot");
    // Non-root keeps only ambient capabilities across exec; bounding may be wider.
    let b = t
        .bundle()
        .set("/process/user", json!({"uid": 1000, "gid": 1000}))
        .set(
            "/process/capabilities",
            json!({
                "bounding": ["CAP_NET_BIND_SERVICE", "CAP_KILL", "CAP_CHOWN"],
                "effective": ["CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_NET_BIND_SERVICE"],
                "inheritable": ["CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_NET_BIND_SERVICE"]
            }),
        );
    let f = status_fields(&t, b, &["CapEff", "CapAmb", "CapBnd"]);
    assert_eq!(hex(&f[0]), cap_mask(&["CAP_NET_BIND_SERVICE"]), "CapEff");
    assert_eq!(hex(&f[1]), cap_mask(&["CAP_NET_BIND_SERVICE"]), "CapAmb");
    assert_eq!(
        hex(&f[2]),
        cap_mask(&["CAP_NET_BIND_SERVICE", "CAP_KILL", "CAP_CHOWN"]),
        "CapBnd"
    );
}

#[test]
fn capabilities_none() {
    let t = setup!("caps-none");
    let b = t.bundle().set("/process/capabilities", caps_all(&[]));
    let f = status_fields(&t, b, &["CapEff", "CapBnd"]);
    assert_eq!(hex(&f[0]), 0, "CapEff");
    assert_eq!(hex(&f[1]), 0, "CapBnd");
}

/// (soft, hard) of a row of /proc/self/limits, e.g. "Max open files".
fn limits_row(limits: &str, row: &str) -> (String, String) {
    let l = limits
        .lines()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("no {row:?} in limits:\n{limits}"));
    let f: Vec<&str> = l[row.len()..].split_whitespace().collect();
    (f[0].to_string(), f[1].to_string())
}

#[test]
fn rlimits_applied() {
    let t = setup!("rlimits");
    let b = t
        .bundle()
        .set(
            "/process/rlimits",
            json!([
                {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 800},
                {"type": "RLIMIT_NPROC", "soft": 100, "hard": 200},
                {"type": "RLIMIT_CORE", "soft": 0, "hard": 4096},
                {"type": "RLIMIT_STACK", "soft": 4194304, "hard": 8388608}
            ]),
        )
        .args(&["cat", "/proc/self/limits"]);
    let o = t.run(&b).ok();
    assert_eq!(
        limits_row(&o.stdout, "Max open files"),
        ("512".into(), "800".into())
    );
    assert_eq!(
        limits_row(&o.stdout, "Max processes"),
        ("100".into(), "200".into())
    );
    assert_eq!(
        limits_row(&o.stdout, "Max core file size"),
        ("0".into(), "4096".into())
    );
    assert_eq!(
        limits_row(&o.stdout, "Max stack size"),
        ("4194304".into(), "8388608".into())
    );
}

#[test]
fn rlimit_default_nofile_1024() {
    let t = setup!("rlimit-default");
    let o = t.run(&t.bundle().sh("ulimit -n; ulimit -Hn")).ok();
    assert_eq!(
        o.stdout.split_whitespace().collect::<Vec<_>>(),
        ["1024", "1024"]
    );
}

#[test]
fn user_uid_gid_and_additional_gids() {
    let t = setup!("user");
    let b = t.bundle().set(
        "/process/user",
        json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20]}),
    );
    let f = status_fields(&t, b, &["Uid", "Gid", "Groups"]);
    assert!(
        f[0].split_whitespace().all(|x| x == "1000"),
        "Uid: {}",
        f[0]
    );
    assert!(
        f[1].split_whitespace().all(|x| x == "1000"),
        "Gid: {}",
        f[1]
    );
    let mut groups: Vec<&str> = f[2].split_whitespace().collect();
    groups.sort();
    groups.dedup();
    assert!(
        groups.contains(&"10") && groups.contains(&"20"),
        "Groups: {}",
        f[2]
    );
    assert!(!groups.contains(&"0"), "root group kept: {}", f[2]);
}

#[test]
fn user_name_resolves_from_rootfs_passwd() {
    let t = setup!("user-name");
    let b = t
        .bundle()
        .set("/process/user", json!({"uid": 1000, "gid": 1000}))
        .sh("id -un; id -u; id -g");
    let o = t.run(&b).ok();
    assert_eq!(
        o.stdout.split_whitespace().collect::<Vec<_>>(),
        ["test", "1000", "1000"]
    );
}

#[test]
fn root_user_has_no_supplementary_groups_by_default() {
    let t = setup!("user-root");
    let f = status_fields(&t, t.bundle(), &["Uid", "Groups"]);
    assert!(f[0].split_whitespace().all(|x| x == "0"), "Uid: {}", f[0]);
    assert!(
        f[1].split_whitespace().all(|g| g == "0"),
        "unexpected groups: {}",
        f[1]
    );
}

#[test]
fn cwd_is_applied() {
    let t = setup!("cwd");
    for dir in ["/tmp", "/home/test", "/"] {
        let b = t.bundle().set("/process/cwd", json!(dir)).args(&["pwd"]);
        assert_eq!(t.run(&b).ok().stdout.trim(), dir);
    }
}

#[test]
fn env_is_exact() {
    let t = setup!("env");
    let b = t
        .bundle()
        .set(
            "/process/env",
            json!(["PATH=/bin:/sbin", "FOO=bar baz", "EMPTY=", "X=1=2"]),
        )
        .args(&["env"]);
    let o = t.run(&b).ok();
    let vars: Vec<&str> = o.stdout.lines().collect();
    for want in ["PATH=/bin:/sbin", "FOO=bar baz", "EMPTY=", "X=1=2"] {
        assert!(vars.contains(&want), "{want:?} missing from env: {vars:?}");
    }
    assert!(
        !vars.iter().any(|v| v.starts_with("TERM=")),
        "TERM leaked in: {vars:?}"
    );
    assert!(
        !vars.iter().any(|v| v.starts_with("CARGO")),
        "host env leaked into the container: {vars:?}"
    );
}

// runc sets HOME when process.env has none: the user's home in the container's /etc/passwd,
// "/" without an entry (ctr's default spec has no HOME; Podman leaves it out for unknown uids).
#[test]
fn home_defaults_from_passwd() {
    let t = setup!("home");
    for (uid, env_home, want) in [
        (0, None, "/root"),
        (1000, None, "/home/test"),
        (12345, None, "/"),
        (1000, Some("HOME=/elsewhere"), "/elsewhere"),
    ] {
        let mut env = vec!["PATH=/bin".to_string()];
        env.extend(env_home.map(String::from));
        let b = t
            .bundle()
            .set("/process/user", json!({"uid": uid, "gid": uid}))
            .set("/process/env", json!(env))
            .sh("echo \"$HOME\"");
        assert_eq!(
            t.run(&b).ok().stdout.trim(),
            want,
            "uid {uid}, {env_home:?}"
        );
    }
}

#[test]
fn hostname_is_set() {
    let t = setup!("hostname");
    let b = t
        .bundle()
        .set("/hostname", json!("rt-host-42"))
        .sh("hostname; cat /proc/sys/kernel/hostname");
    let o = t.run(&b).ok();
    assert_eq!(
        o.stdout.lines().collect::<Vec<_>>(),
        ["rt-host-42", "rt-host-42"]
    );
}

#[test]
fn no_new_privileges_flag() {
    let t = setup!("nnp");
    let on = status_fields(&t, t.bundle(), &["NoNewPrivs"]);
    assert_eq!(on[0], "1");
    let off = status_fields(
        &t,
        t.bundle().set("/process/noNewPrivileges", json!(false)),
        &["NoNewPrivs"],
    );
    assert_eq!(off[0], "0");
}

#[test]
fn oom_score_adj_is_applied() {
    let t = setup!("oom-score-adj");
    let b = t
        .bundle()
        .set("/process/oomScoreAdj", json!(500))
        .args(&["cat", "/proc/self/oom_score_adj"]);
    assert_eq!(t.run(&b).ok().stdout.trim(), "500");
}
