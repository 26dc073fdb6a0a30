//! One fuzz target per kind of input a user hands runvz. Each takes arbitrary bytes and runs
//! the same checks the runtime runs before it makes anything; none may panic or hang, and
//! where a value is written and read back (annotations into the state record, signal names)
//! the round trip must hold. Nothing here changes the system: at most it reads metadata of
//! paths the input names, and creates one empty bundle directory under the temp dir.
//!
//! Shared by the AFL++ binaries (`fuzz/src/bin/`) and by the main crate's
//! `tests/fuzz_corpus.rs`, which replays the kept corpus in `cargo test`.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use oci_spec::runtime::Spec;
use runvz::ub::{self, apply::Layout, Settings};

/// A fuzz target: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target by name (the directory names under `fuzz/corpus/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("annotations", annotations),
    ("resources", resources),
    ("signal", signal),
    ("id", id),
];

/// A bundle directory with an empty `rootfs/`, for configs naming a relative root.
fn bundle_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("runvz-fuzz-bundle");
        // Best effort: without it, relative roots are refused, which is still a valid run.
        let _ = std::fs::create_dir_all(dir.join("rootfs"));
        std::fs::canonicalize(&dir).unwrap_or(dir)
    })
    .clone()
}

/// Every user error is one line (runvz prints it as one log line): control characters from
/// the input must come out escaped.
fn one_line<T, E: std::fmt::Display>(r: Result<T, E>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains(['\n', '\r']), "a multi-line error: {msg:?}");
            None
        }
    }
}

/// Map `st` onto copies of `spec` for both cgroup layouts, as `create` and `set` do.
fn apply_both(st: &Settings, spec: &Spec, rootfs: &Path) {
    for layout in [Layout::V1, Layout::V2] {
        let mut s = spec.clone();
        if ub::apply::apply(st, &mut s, layout, rootfs).is_ok() {
            // The edited spec is recorded in the state file and read back by `set`/`update`.
            let v = serde_json::to_value(&s).expect("a mapped spec serializes");
            let back: Spec = serde_json::from_value(v).expect("a mapped spec reads back");
            assert!(back == s, "mapped spec changed through the state record");
        }
    }
}

/// The state record keeps the settings as JSON; `set` reads them back.
fn settings_round_trip(st: &Settings) {
    let v = serde_json::to_value(st).expect("settings serialize");
    let back: Settings = serde_json::from_value(v).expect("settings read back");
    assert_eq!(&back, st, "settings changed through the state record");
}

/// config.json as `create` takes it: parse and validate, the io.runvz.* annotations and their
/// mapping, the cgroup path, the namespace plan, seccomp compilation, mount options, and the
/// state document hooks receive.
pub fn config(data: &[u8]) {
    let Some(b) = one_line(runvz::bundle::Bundle::from_bytes(bundle_dir(), data)) else {
        return;
    };
    let spec = &b.spec;
    let empty = HashMap::new();
    if let Some(st) = one_line(ub::from_annotations(
        spec.annotations().as_ref().unwrap_or(&empty),
    )) {
        settings_round_trip(&st);
        apply_both(&st, spec, &b.rootfs);
    }
    let linux = spec.linux().as_ref();
    one_line(runvz::cgroups::path_for(
        linux.and_then(|l| l.cgroups_path().as_deref()),
        "fuzz",
    ));
    let _ = runvz::namespaces::Plan::from_spec(spec);
    if let Some(s) = linux.and_then(|l| l.seccomp().as_ref()) {
        one_line(runvz::seccomp::compile(s));
    }
    one_line(runvz::rootfs::check_mount_options(spec));
    one_line(runvz::net::Plan::from_spec(spec));
    if let Some(st) = one_line(ub::from_annotations(
        spec.annotations().as_ref().unwrap_or(&empty),
    )) {
        // Checks host paths (metadata only): the image, the rootfs's filesystem, the tools.
        one_line(runvz::disk::Plan::new(&st.disk, &b.dir, &b.rootfs));
    }
    let doc = runvz::hooks::state_json(spec, "fuzz", "creating", 1, &b.dir);
    assert!(
        serde_json::from_str::<serde_json::Value>(&doc).is_ok(),
        "hook state is not JSON: {doc}"
    );
}

/// `io.runvz.*` annotations, one `key=value` a line (a key without the prefix gets it), as
/// config.json carries them and as `runvz set` passes them one by one.
pub fn annotations(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut ann = HashMap::new();
    let mut patch = Settings::default();
    for line in text.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        let key = k.strip_prefix(ub::PREFIX).unwrap_or(k);
        if one_line(ub::set_one(&mut patch, key, v)).is_some() {
            settings_round_trip(&patch);
        }
        ann.insert(format!("{}{key}", ub::PREFIX), v.to_string());
    }
    one_line(runvz::net::Plan::from_annotations(&ann));
    let Some(mut st) = one_line(ub::from_annotations(&ann)) else {
        return;
    };
    settings_round_trip(&st);
    let _ = st.cpu_quota();
    let mut spec = Spec::default();
    apply_both(&st, &spec, Path::new("/"));
    spec.set_process(None);
    apply_both(&st, &spec, Path::new("/"));
    st.merge(&patch);
    settings_round_trip(&st);
}

/// `runvz update --resources FILE`: the JSON document, merged into a container's recorded
/// `linux.resources` (none, or a full one) and parsed as the OCI type.
pub fn resources(data: &[u8]) {
    let Ok(patch) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let current = serde_json::json!({
        "memory": {"limit": 536870912, "reservation": 268435456, "swap": 1073741824},
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1"},
        "pids": {"limit": 100},
        "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
        "devices": [{"allow": false, "access": "rwm"}]
    });
    for base in [None, Some(&current)] {
        if let Some((_, parsed)) = one_line(runvz::container::merge_resources(base, &patch)) {
            let v = serde_json::to_value(&parsed).expect("resources serialize");
            let _: oci_spec::runtime::LinuxResources =
                serde_json::from_value(v).expect("resources read back");
        }
    }
}

/// `runvz kill ID SIGNAL`: a name or number; a parsed signal reads back from its name, its
/// name without SIG in lower case, and its number.
pub fn signal(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sig) = runvz::signal::parse(s) else {
        return;
    };
    let name = sig.as_str();
    assert_eq!(runvz::signal::parse(name).ok(), Some(sig), "{name}");
    let short = name.trim_start_matches("SIG").to_ascii_lowercase();
    assert_eq!(runvz::signal::parse(&short).ok(), Some(sig), "{short}");
    let num = (sig as i32).to_string();
    assert_eq!(runvz::signal::parse(&num).ok(), Some(sig), "{num}");
}

/// A container ID: validated as every command does; an accepted ID must name exactly one
/// entry directly under the state root and a cgroup directly under the cgroup root, and
/// reading its state from an empty root must fail cleanly.
pub fn id(data: &[u8]) {
    let Ok(id) = std::str::from_utf8(data) else {
        return;
    };
    match runvz::bundle::validate_id(id) {
        Err(msg) => assert!(!msg.contains('\n'), "a multi-line error: {msg}"),
        Ok(()) => {
            let root = Path::new("/nonexistent/runvz-fuzz-state");
            let dir = root.join(id);
            assert_eq!(dir.parent(), Some(root), "{id:?} escapes the state root");
            assert!(
                matches!(dir.components().next_back(), Some(Component::Normal(_))),
                "{id:?} is not a plain name"
            );
            let cg = runvz::cgroups::path_for(None, id).expect("default cgroup path");
            assert_eq!(cg.parent(), Some(Path::new("/")), "{id:?}: cgroup {cg:?}");
            let store = runvz::state::Store::new(root);
            assert!(store.read(id).is_err(), "{id:?} read from an empty root");
        }
    }
}
