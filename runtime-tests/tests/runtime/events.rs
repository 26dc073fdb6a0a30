//! `events`: runc's JSON stats (`--stats`), the stream every `--interval`, OOM events, and the
//! errors for unknown and stopped containers. Differential; where runc 1.1.5 differs (its
//! stream never ends by itself) the runvz-only part says so.

use runtime_tests::{note, setup};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn running(t: &runtime_tests::Ctx, script: &str) -> runtime_tests::Bundle {
    let b = t
        .bundle()
        .set(
            "/linux/resources",
            json!({"devices": [{"allow": false, "access": "rwm"}],
                   "memory": {"limit": 33554432}, "pids": {"limit": 64}}),
        )
        .sh(script);
    t.create(&b);
    t.start(&b.id);
    b
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn events_stats_prints_runcs_stats_document() {
    let t = setup!("events-stats");
    let b = running(&t, "exec sleep 1000");
    let o = t.rt.cmd(&["events", "--stats", &b.id]).ok();
    assert_eq!(o.stdout.lines().count(), 1, "one line: {}", o.stdout);
    let e = o.json();
    assert_eq!(e["type"], "stats");
    assert_eq!(e["id"], b.id.as_str());
    let d = &e["data"];
    let mut top = keys(d);
    top.sort();
    for k in [
        "blkio",
        "cpu",
        "cpuset",
        "hugetlb",
        "intel_rdt",
        "memory",
        "pids",
    ] {
        assert!(top.contains(&k.to_string()), "data lacks {k}: {top:?}");
    }
    assert!(d.get("network_interfaces").is_some(), "{d}");
    // cpu: total > 0 (the shell ran), kernel/user always present
    let u = &d["cpu"]["usage"];
    assert!(u["total"].as_u64().unwrap_or(0) > 0, "{u}");
    assert!(u.get("kernel").is_some() && u.get("user").is_some(), "{u}");
    assert!(d["cpu"].get("throttling").is_some());
    // memory: the limit we set; usage > 0; raw counters
    let m = &d["memory"];
    assert_eq!(m["usage"]["limit"], 33554432, "{m}");
    assert!(m["usage"]["usage"].as_u64().unwrap_or(0) > 0, "{m}");
    for k in ["swap", "kernel", "kernelTCP"] {
        assert!(
            m[k].get("limit").is_some() && m[k].get("failcnt").is_some(),
            "{k}: {m}"
        );
    }
    if runtime_tests::cgroup_controller_dir("memory", &b.cgroup).1 {
        assert!(
            m["raw"].get("total_rss").is_some(),
            "v1 memory.stat in raw: {m}"
        );
    }
    // pids: the sleep, and our limit
    assert_eq!(d["pids"]["current"], 1, "{}", d["pids"]);
    assert_eq!(d["pids"]["limit"], 64, "{}", d["pids"]);
}

#[test]
fn events_stream_reports_stats_and_oom_kills() {
    let t = setup!("events-oom");
    // The inner shell grows past the 32 MiB limit and is OOM-killed; the container lives on.
    let b = running(
        &t,
        "sleep 2; sh -c 'x=$(head -c 134217728 /dev/zero | tr \"\\0\" a)'; echo hog-gone; exec sleep 1000",
    );
    let mut rt = t.rt.clone();
    rt.timeout = Duration::from_secs(12);
    let id = b.id.clone();
    let stream = std::thread::spawn(move || rt.cmd(&["events", "--interval", "1s", &id]));
    let start = Instant::now();
    // wait for the OOM kill to have happened, then stop the container
    let (mem, v1) = runtime_tests::cgroup_controller_dir("memory", &b.cgroup);
    let counter = if v1 {
        "memory.oom_control"
    } else {
        "memory.events"
    };
    while start.elapsed() < Duration::from_secs(8) {
        let s = std::fs::read_to_string(mem.join(counter)).unwrap_or_default();
        if s.lines()
            .any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    t.rt.cmd(&["kill", &b.id, "KILL"]).ok();
    let o = stream.join().expect("events thread");
    let lines: Vec<Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|e| e == &json!({"type": "oom", "id": b.id})),
        "no oom event: {}",
        o.stdout
    );
    let stats = lines.iter().filter(|e| e["type"] == "stats").count();
    assert!(
        stats >= 2,
        "expected a stats event every second: {}",
        o.stdout
    );
    assert!(lines.iter().all(|e| e["id"] == b.id.as_str()));
    if t.rt.is_runvz() {
        // runc 1.1.5 keeps printing (errors) after the container is gone, until it is killed.
        assert_eq!(o.code, Some(0), "events must end with the container: {o:?}");
    } else {
        note("events-oom: runc's stream does not end when the container stops (not checked)");
    }
}

#[test]
fn events_errors_name_the_container() {
    let t = setup!("events-errors");
    t.rt.cmd(&["events", "--stats", "rt-test-no-such-container"])
        .fails()
        .stderr_has("not exist");
    let b = t.bundle().args(&["true"]);
    t.create(&b);
    t.start(&b.id);
    t.rt.wait_status(&b.id, "stopped", Duration::from_secs(10));
    for args in [vec!["events", "--stats"], vec!["events"]] {
        let mut a = args.clone();
        a.push(&b.id);
        let o = t.rt.cmd(&a).fails().stderr_has("not running");
        assert!(
            o.stderr.trim().lines().count() <= 2,
            "one error line: {}",
            o.stderr
        );
    }
    t.rt.cmd(&["delete", &b.id]).ok();
}
