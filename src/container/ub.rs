//! `runvz beancounters` and `runvz set`: the OpenVZ view of containers and live changes.

use std::collections::BTreeMap;

use oci_spec::runtime::Spec;

use super::{Container, ContainerError};
use crate::state::{Status, Store};
use crate::ub::{self, apply, table, Param, Settings};

fn settings_of(c: &Container) -> Settings {
    c.rec
        .ub
        .as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

const SEEN: &str = "ub-maxheld.json";

/// The beancounter rows of every live container named (all when `ids` is empty).
pub fn beancounters(
    store: &Store,
    ids: &[String],
) -> Result<Vec<(String, Vec<table::Row>)>, ContainerError> {
    let all = if ids.is_empty() {
        store.ids()?
    } else {
        ids.to_vec()
    };
    let mut out = vec![];
    for id in &all {
        let c = match Container::load(store, id) {
            Ok(c) => c,
            Err(e) if !ids.is_empty() => return Err(e),
            Err(_) => continue,
        };
        if matches!(c.status(), Status::Stopped | Status::Creating) {
            if !ids.is_empty() {
                return Err(ContainerError::WrongState {
                    id: id.clone(),
                    status: c.status(),
                    what: "container not running".into(),
                });
            }
            continue;
        }
        let Some(cg) = c.cgroup() else { continue };
        let mut pids = cg.pids();
        pids.retain(|p| *p != c.rec.pid);
        pids.insert(0, c.rec.pid);
        let mut usage = ub::usage::measure(&cg, &pids, c.rec.pid);
        if let Some(d) = crate::disk::Made::from_record(c.rec.disk.as_ref()) {
            usage.extend(crate::disk::usage(&d));
        }
        // The highest usage seen, for counters the kernel keeps no maximum of.
        let seen_path = c.dir.join(SEEN);
        let mut seen: BTreeMap<Param, u64> = std::fs::read(&seen_path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default();
        let rows = table::rows(&settings_of(&c), &usage, &mut seen);
        for w in table::soft_warnings(id, &rows) {
            tracing::warn!("{w}");
        }
        if let Ok(data) = serde_json::to_vec(&seen) {
            let tmp = c.dir.join(".ub-maxheld.tmp");
            if std::fs::write(&tmp, data).is_ok() {
                let _ = std::fs::rename(&tmp, &seen_path);
            }
        }
        out.push((id.clone(), rows));
    }
    Ok(out)
}

/// `runvz set ID --numproc B:L ...`: change the settings of a live container at once.
/// `changes` are (key, value) with keys as in the annotations without `io.runvz.`
/// (`ub.numproc`, `ram`, `cpuunits`, ...). Returns warnings.
pub fn set(
    store: &Store,
    id: &str,
    changes: &[(String, String)],
) -> Result<Vec<String>, ContainerError> {
    let (locked, mut c) = super::lock_live(store, id)?;
    let mut patch = Settings::default();
    for (k, v) in changes {
        ub::set_one(&mut patch, k, v)?;
    }
    let old = settings_of(&c);
    let mut merged = old.clone();
    merged.merge(&patch);
    let d = &patch.disk;
    if d.backend.is_some() || d.image.is_some() || d.ephemeral.is_some() {
        return Err(ContainerError::Config(format!(
            "container {id}: the disk backend, image and ephemeral flag are fixed at create"
        )));
    }
    if d.space.is_some() || d.inodes.is_some() {
        let made = crate::disk::Made::from_record(c.rec.disk.as_ref()).ok_or_else(|| {
            ContainerError::Config(format!(
                "container {id}: it was created without a disk quota (io.runvz.diskspace)"
            ))
        })?;
        let inodes = d
            .inodes
            .filter(|l| old.disk.inodes.is_none_or(|o| o.limit != l.limit));
        crate::disk::resize(&made, d.space, inodes)?;
    }
    let mut spec: Spec = c
        .rec
        .config
        .as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .ok_or_else(|| {
            ContainerError::Config(format!("container {id}: no recorded config to update"))
        })?;
    let layout = if crate::cgroups::host_is_v2() {
        apply::Layout::V2
    } else {
        apply::Layout::V1
    };
    let plan = apply::apply(&merged, &mut spec, layout, &c.rec.rootfs)?;
    let mut warnings = plan.warnings;
    let cg = c
        .cgroup()
        .ok_or_else(|| ContainerError::Config(format!("container {id}: it has no cgroup")))?;
    if let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
        cg.apply(res, None)?;
    }
    for (ctrl, file, value) in &plan.cgroup_files {
        cg.write_file(ctrl, file, value)?;
    }
    if let Some(w) = plan.io_weight {
        warnings.extend(apply::write_io_weight(&cg, w)?);
    }
    let pid = c.rec.pid;
    if let Some(l) = patch.ub.get(&Param::Shmpages) {
        if l.limit != ub::UNLIMITED {
            ub::live::set_shm(pid, l.limit)
                .map_err(|e| ContainerError::Config(format!("shmpages: {e}")))?;
        }
    }
    if let Some(l) = patch.ub.get(&Param::Numpty) {
        ub::live::set_numpty(pid, (l.limit != ub::UNLIMITED).then_some(l.limit))
            .map_err(|e| ContainerError::Config(format!("numpty: {e}")))?;
    }
    let pids = cg.pids();
    for (p, res, scale) in [
        (Param::Lockedpages, libc::RLIMIT_MEMLOCK, ub::PAGE),
        (Param::Privvmpages, libc::RLIMIT_AS, ub::PAGE),
        (Param::Numfile, libc::RLIMIT_NOFILE, 1),
        (Param::Numsiginfo, libc::RLIMIT_SIGPENDING, 1),
    ] {
        if let Some(l) = patch.ub.get(&p) {
            let conv = |v: u64| {
                if v == ub::UNLIMITED {
                    u64::MAX
                } else {
                    v.saturating_mul(scale)
                }
            };
            warnings.extend(ub::live::set_rlimit(
                &pids,
                res,
                conv(l.barrier),
                conv(l.limit),
            ));
        }
    }
    c.rec.ub = serde_json::to_value(&merged).ok();
    c.rec.config = serde_json::to_value(&spec).ok();
    locked.write(&c.rec)?;
    Ok(warnings)
}

/// Overlay JSON `patch` on `base`: objects merge key by key, anything else replaces.
fn merge_json(base: &mut serde_json::Value, patch: &serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    continue;
                }
                merge_json(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// `runvz update`: merge `patch` (an OCI `linux.resources` document, as runc's `--resources`
/// and flags give it) into the container's resources and apply them at once.
pub fn update(store: &Store, id: &str, patch: &serde_json::Value) -> Result<(), ContainerError> {
    let (locked, mut c) = super::lock_live(store, id)?;
    let mut config = c.rec.config.clone().ok_or_else(|| {
        ContainerError::Config(format!("container {id}: no recorded config to update"))
    })?;
    let mut res = config
        .pointer("/linux/resources")
        .cloned()
        .unwrap_or(serde_json::json!({}));
    merge_json(&mut res, patch);
    let parsed: oci_spec::runtime::LinuxResources = serde_json::from_value(res.clone())
        .map_err(|e| ContainerError::Config(format!("--resources: {e}")))?;
    let cg = c
        .cgroup()
        .ok_or_else(|| ContainerError::Config(format!("container {id}: it has no cgroup")))?;
    cg.apply(&parsed, None)?;
    if let Some(linux) = config.get_mut("linux").and_then(|l| l.as_object_mut()) {
        linux.insert("resources".into(), res);
    }
    c.rec.config = Some(config);
    locked.write(&c.rec)?;
    Ok(())
}
