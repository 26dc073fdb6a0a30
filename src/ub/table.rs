//! The `/proc/user_beancounters` view: rows in OpenVZ order, held/maxheld/barrier/limit/failcnt
//! in exact units, as text (OpenVZ's columns) or JSON (with unit and enforcement mode).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use super::usage::Usage;
use super::{Param, Settings, ALL};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub param: Param,
    pub held: u64,
    pub maxheld: u64,
    pub barrier: u64,
    pub limit: u64,
    pub failcnt: u64,
}

/// The rows of one container: the beancounters, then diskspace and diskinodes where a disk
/// limit is set. `seen` is the highest usage the runtime has observed per parameter (for
/// counters the kernel keeps no maximum of); it is updated.
pub fn rows(
    st: &Settings,
    usage: &HashMap<Param, Usage>,
    seen: &mut BTreeMap<Param, u64>,
) -> Vec<Row> {
    let disk = [
        (Param::Diskspace, st.disk.space.is_some()),
        (Param::Diskinodes, st.disk.inodes.is_some()),
    ];
    ALL.iter()
        .copied()
        .chain(disk.iter().filter(|(_, set)| *set).map(|(p, _)| *p))
        .map(|p| {
            let u = usage.get(&p).copied().unwrap_or_default();
            let max = seen.entry(p).or_insert(0);
            *max = (*max).max(u.held).max(u.maxheld.unwrap_or(0));
            let l = st.get(p);
            Row {
                param: p,
                held: u.held,
                maxheld: *max,
                barrier: l.barrier,
                limit: l.limit,
                failcnt: u.failcnt,
            }
        })
        .collect()
}

/// Warnings for rows whose usage is above the soft limit (barrier) without a failure
/// counter of their own: diskspace and diskinodes, whose soft limit nothing enforces.
pub fn soft_warnings(id: &str, rows: &[Row]) -> Vec<String> {
    rows.iter()
        .filter(|r| matches!(r.param, Param::Diskspace | Param::Diskinodes))
        .filter(|r| r.held > r.barrier)
        .map(|r| {
            format!(
                "container {id}: {} held {} is above its soft limit {} (hard limit {})",
                r.param.name(),
                r.held,
                r.barrier,
                r.limit
            )
        })
        .collect()
}

/// OpenVZ's text table for several containers.
pub fn text(containers: &[(String, Vec<Row>)]) -> String {
    let mut s = String::from("Version: 2.5\n");
    let _ = writeln!(
        s,
        "{:>10}  {:<12} {:>20} {:>20} {:>20} {:>20} {:>20}",
        "uid", "resource", "held", "maxheld", "barrier", "limit", "failcnt"
    );
    for (id, rows) in containers {
        for (i, r) in rows.iter().enumerate() {
            let uid = if i == 0 {
                format!("{id}:")
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "{:>10}  {:<12} {:>20} {:>20} {:>20} {:>20} {:>20}",
                uid,
                r.param.name(),
                r.held,
                r.maxheld,
                r.barrier,
                r.limit,
                r.failcnt
            );
        }
    }
    s
}

pub fn json(containers: &[(String, Vec<Row>)]) -> serde_json::Value {
    serde_json::Value::Array(
        containers
            .iter()
            .map(|(id, rows)| {
                serde_json::json!({
                    "id": id,
                    "resources": rows.iter().map(|r| serde_json::json!({
                        "resource": r.param.name(),
                        "held": r.held,
                        "maxheld": r.maxheld,
                        "barrier": r.barrier,
                        "limit": r.limit,
                        "failcnt": r.failcnt,
                        "unit": r.param.unit().name(),
                        "mode": r.param.mode().name(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ub::{Limit, UNLIMITED};

    #[test]
    fn openvz_format() {
        let mut st = Settings::default();
        st.ub.insert(
            Param::Numproc,
            Limit {
                barrier: 100,
                limit: 120,
            },
        );
        let mut u = HashMap::new();
        u.insert(
            Param::Numproc,
            Usage {
                held: 12,
                maxheld: Some(15),
                failcnt: 3,
            },
        );
        u.insert(
            Param::Kmemsize,
            Usage {
                held: 2752512,
                maxheld: Some(2976512),
                failcnt: 0,
            },
        );
        let mut seen = BTreeMap::new();
        let r = rows(&st, &u, &mut seen);
        assert_eq!(r.len(), 21);
        let t = text(&[("web01".into(), r)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "Version: 2.5");
        assert_eq!(lines[1], "       uid  resource                     held              maxheld              barrier                limit              failcnt");
        assert_eq!(lines[2], format!("    web01:  kmemsize                  2752512              2976512  {UNLIMITED}  {UNLIMITED}                    0"));
        assert_eq!(lines[6], "            numproc                        12                   15                  100                  120                    3");
        assert!(lines[22].trim_start().starts_with("swappages"));
        // maxheld never goes below held, and is remembered across calls.
        u.insert(
            Param::Numproc,
            Usage {
                held: 2,
                maxheld: None,
                failcnt: 3,
            },
        );
        let r = rows(&st, &u, &mut seen);
        assert_eq!(r[4].maxheld, 15);
    }
}
