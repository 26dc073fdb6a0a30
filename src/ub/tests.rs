use super::*;
use proptest::prelude::*;

fn ann(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn pairs_suffixes_and_unlimited() {
    let st = from_annotations(&ann(&[
        ("io.runvz.ub.numproc", "100:120"),
        ("io.runvz.ub.physpages", "256M"),
        ("io.runvz.ub.kmemsize", "1K:unlimited"),
        ("io.runvz.ub.lockedpages", "1k"),
        ("other.key", "ignored"),
    ]))
    .unwrap();
    assert_eq!(
        st.get(Param::Numproc),
        Limit {
            barrier: 100,
            limit: 120
        }
    );
    assert_eq!(
        st.get(Param::Physpages),
        Limit {
            barrier: 65536,
            limit: 65536
        }
    );
    assert_eq!(
        st.get(Param::Kmemsize),
        Limit {
            barrier: 1024,
            limit: UNLIMITED
        }
    );
    // 1 KiB is a quarter page: rounded up to one page.
    assert_eq!(
        st.get(Param::Lockedpages),
        Limit {
            barrier: 1,
            limit: 1
        }
    );
    assert_eq!(st.get(Param::Numfile), Limit::NONE);
}

#[test]
fn vswap_shortcuts_and_explicit_override() {
    let st = from_annotations(&ann(&[("io.runvz.ram", "1G"), ("io.runvz.swap", "512M")])).unwrap();
    assert_eq!(
        st.get(Param::Physpages),
        Limit {
            barrier: 0,
            limit: 262144
        }
    );
    assert_eq!(
        st.get(Param::Swappages),
        Limit {
            barrier: 0,
            limit: 131072
        }
    );
    let st = from_annotations(&ann(&[
        ("io.runvz.ram", "1G"),
        ("io.runvz.ub.physpages", "100:200"),
    ]))
    .unwrap();
    assert_eq!(
        st.get(Param::Physpages),
        Limit {
            barrier: 100,
            limit: 200
        }
    );
}

#[test]
fn cpu_and_io() {
    let st = from_annotations(&ann(&[
        ("io.runvz.cpuunits", "2000"),
        ("io.runvz.cpulimit", "150"),
        ("io.runvz.cpus", "1"),
        ("io.runvz.ioprio", "7"),
        ("io.runvz.iolimit", "10"),
        ("io.runvz.iopslimit", "500"),
    ]))
    .unwrap();
    assert_eq!(st.cpuunits, Some(2000));
    // 150% of a CPU vs 1 CPU: the stricter (100000 µs per 100 ms) wins.
    assert_eq!(st.cpu_quota(), Some(100_000));
    assert_eq!(st.iolimit, Some(10 << 20));
    assert_eq!(st.ioprio, Some(7));
}

#[test]
fn errors_name_the_key() {
    let cases = [
        ("io.runvz.ub.numproc", "10K", "takes no size suffix"),
        ("io.runvz.ub.numproc", "200:100", "above limit"),
        ("io.runvz.ub.numprocs", "1", "unknown beancounter"),
        ("io.runvz.cpuunit", "1", "unknown io.runvz annotation"),
        ("io.runvz.cpuunits", "7", "outside 8..500000"),
        ("io.runvz.ioprio", "8", "outside 0..7"),
        ("io.runvz.ub.physpages", "-1", "is not a number"),
        ("io.runvz.ub.physpages", "99999999999999999999", "too large"),
        ("io.runvz.ub.physpages", "99999999999T", "too large"),
        ("io.runvz.ub.physpages", "", "empty"),
        ("io.runvz.diskspace", "2G:1G", "above limit"),
        ("io.runvz.diskinodes", "1K", "takes no size suffix"),
        ("io.runvz.disk.backend", "zfs", "not auto, btrfs or image"),
        ("io.runvz.disk.ephemeral", "yes", "not true or false"),
    ];
    for (k, v, want) in cases {
        let e = from_annotations(&ann(&[(k, v)])).unwrap_err().to_string();
        assert!(e.contains(k) && e.contains(want), "{k}={v}: {e}");
    }
}

#[test]
fn merge_overlays() {
    let mut a = from_annotations(&ann(&[
        ("io.runvz.ub.numproc", "10:20"),
        ("io.runvz.cpuunits", "500"),
    ]))
    .unwrap();
    let b = from_annotations(&ann(&[("io.runvz.ub.numproc", "30:40")])).unwrap();
    a.merge(&b);
    assert_eq!(
        a.get(Param::Numproc),
        Limit {
            barrier: 30,
            limit: 40
        }
    );
    assert_eq!(a.cpuunits, Some(500));
}

proptest! {
    #[test]
    fn parser_never_panics(key in "[a-z.]{0,24}", value in "\\PC{0,24}") {
        let _ = from_annotations(&ann(&[(&format!("io.runvz.{key}"), &value)]));
        let _ = from_annotations(&ann(&[(&format!("io.runvz.ub.{key}"), &value)]));
    }

    #[test]
    fn pairs_roundtrip(b in 0u64..1_000_000, extra in 0u64..1_000_000) {
        let l = b + extra;
        let got = parse_pair("k", &format!("{b}:{l}"), Unit::Items).unwrap();
        prop_assert_eq!(got, Limit { barrier: b, limit: l });
        let reversed = format!("{}:{}", l, b);
        prop_assert!(parse_pair("k", &reversed, Unit::Items).is_err() || extra == 0);
    }

    #[test]
    fn page_suffixes_are_exact(n in 0u64..1_000_000) {
        prop_assert_eq!(parse_value("k", &format!("{n}K"), Unit::Pages).unwrap(), (n * 1024).div_ceil(4096));
        prop_assert_eq!(parse_value("k", &format!("{n}M"), Unit::Bytes).unwrap(), n << 20);
    }
}

#[test]
fn disk_annotations() {
    let st = from_annotations(&ann(&[
        ("io.runvz.diskspace", "1G:2G"),
        ("io.runvz.diskinodes", "100000"),
        ("io.runvz.disk.backend", "image"),
        ("io.runvz.disk.image", "/var/lib/c1.img"),
        ("io.runvz.disk.ephemeral", "true"),
    ]))
    .unwrap();
    assert_eq!(
        st.get(Param::Diskspace),
        Limit {
            barrier: 1 << 20,
            limit: 2 << 20
        }
    );
    assert_eq!(st.get(Param::Diskinodes).limit, 100000);
    assert_eq!(st.disk.backend, Some(DiskBackend::Image));
    assert_eq!(st.disk.ephemeral, Some(true));
    // Plain numbers are 1 KiB blocks; a byte suffix rounds up to whole blocks.
    let st = from_annotations(&ann(&[("io.runvz.diskspace", "1000:1025")])).unwrap();
    assert_eq!(st.get(Param::Diskspace).limit, 1025);
    assert_eq!(
        parse_value("k", "1537", Unit::Kbytes).unwrap(),
        1537,
        "no suffix: blocks"
    );
    assert!(from_annotations(&ann(&[("io.runvz.ub.diskspace", "1G")])).is_err());
    // Settings with a disk part survive the record's JSON.
    let mut a = Settings::default();
    a.merge(&st);
    let back: Settings = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
    assert_eq!(back, a);
}
