use std::collections::HashMap;
use std::net::IpAddr;

use super::*;

fn plan(pairs: &[(&str, &str)]) -> Result<Option<Plan>, NetError> {
    let ann: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Plan::from_annotations(&ann)
}

fn err(pairs: &[(&str, &str)]) -> String {
    plan(pairs).expect_err("should fail").to_string()
}

#[test]
fn no_annotations_no_plan() {
    assert_eq!(plan(&[("io.runvz.ram", "1G")]).unwrap(), None);
}

#[test]
fn venet_addresses() {
    let p = plan(&[(VENET, "10.213.0.2, fd00:213::2")])
        .unwrap()
        .unwrap();
    assert_eq!(
        p.venet,
        vec![
            "10.213.0.2".parse::<IpAddr>().unwrap(),
            "fd00:213::2".parse().unwrap()
        ]
    );
    assert!(err(&[(VENET, "10.213.0.256")]).contains("io.runvz.net.venet"));
    assert!(err(&[(VENET, "10.0.0.1,10.0.0.1")]).contains("twice"));
    assert!(err(&[(VENET, "127.0.0.1")]).contains("cannot be"));
    assert!(err(&[(VENET, "")]).contains("not an IPv4"));
}

#[test]
fn veth_syntax() {
    let p = plan(&[
        (VETH, "eth0,02:00:00:00:00:01,vzh0,,br0;eth1"),
        ("io.runvz.net.veth.eth0.ip", "10.213.1.2/24,gw=10.213.1.1"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(p.veths.len(), 2);
    let e = &p.veths[0];
    assert_eq!(e.mac, Some([2, 0, 0, 0, 0, 1]));
    assert_eq!(e.host_name.as_deref(), Some("vzh0"));
    assert_eq!(e.host_mac, None);
    assert_eq!(e.bridge.as_deref(), Some("br0"));
    assert_eq!(e.ip, Some(("10.213.1.2".parse().unwrap(), 24)));
    assert_eq!(e.gw, Some("10.213.1.1".parse().unwrap()));
    assert_eq!(p.veths[1].name, "eth1");
    assert!(err(&[(VETH, "eth0,01:00:00:00:00:01")]).contains("unicast"));
    assert!(err(&[(VETH, "eth0,zz")]).contains("MAC"));
    assert!(err(&[(VETH, "averyveryverylongname")]).contains("interface name"));
    assert!(err(&[(VETH, "eth0;eth0")]).contains("twice"));
    assert!(err(&[(VETH, "venet0")]).contains("reserved"));
    assert!(
        err(&[(VETH, "eth0"), ("io.runvz.net.veth.eth1.ip", "10.0.0.2/24")])
            .contains("no interface eth1")
    );
    assert!(
        err(&[(VETH, "eth0"), ("io.runvz.net.veth.eth0.ip", "10.0.0.2/33")]).contains("prefix")
    );
    assert!(err(&[
        (VETH, "eth0"),
        ("io.runvz.net.veth.eth0.ip", "10.0.0.2/24,gw=fd00::1")
    ])
    .contains("family"));
    let ip = |v: &str| plan(&[(VETH, "eth0"), ("io.runvz.net.veth.eth0.ip", v)]);
    assert!(ip("10.0.0.2/24,gw=10.0.1.1")
        .unwrap_err()
        .to_string()
        .contains("not in 10.0.0.2/24"));
    assert!(ip("10.0.0.130/25,gw=10.0.0.129").is_ok());
    assert!(ip("10.0.0.130/25,gw=10.0.0.1").is_err());
    assert!(ip("fd00::2/64,gw=fd00::1").is_ok());
    assert!(ip("fd00::2/64,gw=fd00:1::1").is_err());
}

#[test]
fn rate_and_unknown() {
    let p = plan(&[(VENET, "10.0.0.2"), (RATE, "1000")])
        .unwrap()
        .unwrap();
    assert_eq!(p.rate_kbit, Some(1000));
    assert!(err(&[(VENET, "10.0.0.2"), (RATE, "fast")]).contains("io.runvz.net.rate"));
    assert!(err(&[(RATE, "1000")]).contains("needs"));
    assert!(err(&[("io.runvz.net.vent", "10.0.0.2")]).contains("unknown"));
}

#[test]
fn derived_names_fit_and_differ() {
    let a = venet::host_name("web01");
    let b = venet::host_name("web02");
    assert_ne!(a, b);
    assert!(a.len() <= 15 && a.starts_with("vz"));
    let mac = derived_mac(&["x"]);
    assert_eq!(mac[0] & 3, 2, "locally administered unicast");
}

#[test]
fn antispoof_program_shape() {
    let ips: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
    let p = venet::antispoof_program(&ips);
    // ldh, jeq v4, ld, (jeq, ret)x1, ret, jeq v6, 9 per v6 address, ret
    assert_eq!(p.len(), 1 + 1 + 1 + 2 + 1 + 1 + 9 + 1);
    let last = p.last().unwrap();
    assert_eq!(u32::from_ne_bytes([last[4], last[5], last[6], last[7]]), 2);
}

#[test]
fn tbf_params_are_sane() {
    let (bps, burst, limit) = rate::tbf_params(8000);
    assert_eq!(bps, 1_000_000);
    assert!(burst >= 1514 && limit > burst);
}

/// Found by fuzzing: a key or value with control characters made a multi-line error.
#[test]
fn errors_stay_on_one_line() {
    let ann = HashMap::from([("io.runvz.net.ve\rth\n".to_string(), "x".to_string())]);
    let e = Plan::from_annotations(&ann).unwrap_err().to_string();
    assert!(!e.contains(['\n', '\r']), "{e:?}");
    let ann = HashMap::from([("io.runvz.net.rate".to_string(), "1\n0".to_string())]);
    let e = Plan::from_annotations(&ann).unwrap_err().to_string();
    assert!(!e.contains(['\n', '\r']), "{e:?}");
}
