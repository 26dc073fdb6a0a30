//! Loading a bundle's `config.json` and checking it before anything is made.
//!
//! Everything a user can get wrong in a bundle is found here, so that `create` refuses it
//! with a one-line message naming the field and leaves nothing behind.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {0}: {1}")]
    Bundle(PathBuf, String),
    #[error("config.json: {0}")]
    Parse(String),
    #[error("config.json: {field}: {problem}")]
    Invalid { field: String, problem: String },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        field: one_line(&field.into()),
        problem: one_line(&problem.into()),
    }
}

/// `s` with its control characters escaped (a newline as `\n`), so that an error quoting
/// what the user wrote (a key, a path, a value) stays one line.
pub fn one_line(s: &str) -> String {
    if !s.contains(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A parsed, validated bundle: the spec plus the absolute paths it refers to.
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
}

/// Valid container IDs, as runc accepts them: `[A-Za-z0-9_+.-]+`, not `.` or `..`.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("container ID must not be empty".into());
    }
    if id == "." || id == ".." {
        return Err(format!("invalid container ID {id:?}"));
    }
    if id.len() > 1024 {
        return Err("container ID is longer than 1024 characters".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_+-.".contains(*c)))
    {
        return Err(format!(
            "invalid container ID {id:?}: character {c:?} is not allowed (use letters, digits, _ + - .)"
        ));
    }
    Ok(())
}

impl Bundle {
    /// Read `dir/config.json`, parse it and validate it.
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| BundleError::Bundle(dir.to_path_buf(), e.to_string()))?;
        let cfg = dir.join("config.json");
        let data = std::fs::read(&cfg)
            .map_err(|e| BundleError::Bundle(dir.clone(), format!("config.json: {e}")))?;
        Bundle::from_bytes(dir, &data)
    }

    /// Parse and validate the bytes of a config.json as `load` does, for a bundle in the
    /// (canonical) directory `dir`. Reads nothing but metadata of the paths it names.
    pub fn from_bytes(dir: PathBuf, data: &[u8]) -> Result<Bundle, BundleError> {
        let spec = parse(data)?;
        let rootfs = validate(&dir, &spec)?;
        Ok(Bundle { dir, spec, rootfs })
    }
}

/// Parse config.json, naming the JSON path of the offending field on error.
pub fn parse(data: &[u8]) -> Result<Spec, BundleError> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        BundleError::Parse(one_line(&if path == "." || path.is_empty() {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }))
    })
}

fn validate(dir: &Path, spec: &Spec) -> Result<PathBuf, BundleError> {
    let version = spec.version();
    if !version.starts_with("1.") {
        return Err(invalid(
            "ociVersion",
            format!("unsupported version {version:?}, expected 1.x"),
        ));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root", "missing"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        dir.join(root.path())
    };
    match std::fs::metadata(&rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(invalid(
                "root.path",
                format!("{} is not a directory", rootfs.display()),
            ))
        }
        Err(e) => return Err(invalid("root.path", format!("{}: {e}", rootfs.display()))),
    }
    if let Some(p) = spec.process() {
        validate_process(p)?;
    }
    if let Some(mounts) = spec.mounts() {
        for (i, m) in mounts.iter().enumerate() {
            let field = format!("mounts[{i}]");
            if m.destination().as_os_str().is_empty() {
                return Err(invalid(format!("{field}.destination"), "must not be empty"));
            }
            let typ = m.typ().as_deref().unwrap_or("");
            let opts = m.options().as_deref().unwrap_or(&[]);
            let is_bind = typ == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind");
            if is_bind && m.source().is_none() {
                return Err(invalid(
                    format!("{field}.source"),
                    "a bind mount needs a source",
                ));
            }
            if !is_bind && typ.is_empty() {
                return Err(invalid(
                    format!("{field}.type"),
                    "missing (and options name no bind)",
                ));
            }
        }
    }
    let linux = spec.linux().as_ref();
    let namespaces = linux.and_then(|l| l.namespaces().as_ref());
    let mut seen = HashSet::new();
    for (i, ns) in namespaces.into_iter().flatten().enumerate() {
        if !seen.insert(ns.typ()) {
            return Err(invalid(
                format!("linux.namespaces[{i}]"),
                format!("namespace type {} appears twice", ns.typ()),
            ));
        }
        if ns.typ() == LinuxNamespaceType::Time {
            return Err(invalid(
                format!("linux.namespaces[{i}].type"),
                "time namespaces are not supported",
            ));
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(invalid(
                    format!("linux.namespaces[{i}].path"),
                    "must be absolute",
                ));
            }
            if let Err(e) = std::fs::metadata(p) {
                return Err(invalid(
                    format!("linux.namespaces[{i}].path"),
                    format!("{}: {e}", p.display()),
                ));
            }
        }
    }
    let has = |t: LinuxNamespaceType| seen.contains(&t);
    if let Some(l) = linux {
        let maps = l.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || l.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
        let new_userns = namespaces
            .into_iter()
            .flatten()
            .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
        if maps && !new_userns {
            return Err(invalid(
                "linux.uidMappings",
                "mappings need a new user namespace",
            ));
        }
        if new_userns
            && (l.uid_mappings().as_ref().is_none_or(|m| m.is_empty())
                || l.gid_mappings().as_ref().is_none_or(|m| m.is_empty()))
        {
            return Err(invalid(
                "linux.uidMappings",
                "a new user namespace needs uid and gid mappings",
            ));
        }
        for (key, _) in l.sysctl().iter().flatten() {
            validate_sysctl(key, &has)?;
        }
        if let Some(p) = l.rootfs_propagation() {
            if !matches!(
                p.as_str(),
                "" | "private"
                    | "rprivate"
                    | "slave"
                    | "rslave"
                    | "shared"
                    | "rshared"
                    | "unbindable"
                    | "runbindable"
            ) {
                return Err(invalid(
                    "linux.rootfsPropagation",
                    format!("unknown propagation {p:?}"),
                ));
            }
        }
        for (i, d) in l.devices().iter().flatten().enumerate() {
            if !d.path().is_absolute() {
                return Err(invalid(
                    format!("linux.devices[{i}].path"),
                    "must be absolute",
                ));
            }
        }
    }
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(invalid(
            "hostname",
            "setting a hostname needs a new uts namespace",
        ));
    }
    if spec.domainname().as_deref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts)
    {
        return Err(invalid(
            "domainname",
            "setting a domainname needs a new uts namespace",
        ));
    }
    Ok(rootfs)
}

fn validate_process(p: &oci_spec::runtime::Process) -> Result<(), BundleError> {
    match p.args() {
        Some(a) if !a.is_empty() && !a[0].is_empty() => {}
        _ => return Err(invalid("process.args", "must name the program to run")),
    }
    if !p.cwd().is_absolute() {
        return Err(invalid(
            "process.cwd",
            format!("{:?} is not an absolute path", p.cwd()),
        ));
    }
    for (i, e) in p.env().iter().flatten().enumerate() {
        if !e.contains('=') || e.starts_with('=') {
            return Err(invalid(
                format!("process.env[{i}]"),
                format!("{e:?} is not NAME=VALUE"),
            ));
        }
    }
    let mut types = HashSet::new();
    for (i, r) in p.rlimits().iter().flatten().enumerate() {
        if r.soft() > r.hard() {
            return Err(invalid(
                format!("process.rlimits[{i}]"),
                "soft limit is above the hard limit",
            ));
        }
        if !types.insert(r.typ() as u32) {
            return Err(invalid(
                format!("process.rlimits[{i}].type"),
                format!("{} appears twice", r.typ()),
            ));
        }
    }
    if p.apparmor_profile()
        .as_deref()
        .is_some_and(|a| !a.is_empty())
        && !apparmor_enabled()
    {
        // A security profile that cannot be applied is refused, never silently dropped.
        return Err(invalid(
            "process.apparmorProfile",
            "AppArmor is not enabled on this host",
        ));
    }
    if let Some(adj) = p.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return Err(invalid(
                "process.oomScoreAdj",
                "must be between -1000 and 1000",
            ));
        }
    }
    Ok(())
}

fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

/// Namespaced sysctls only, each with the namespace it lives in (as runc checks them).
fn validate_sysctl(key: &str, has: &dyn Fn(LinuxNamespaceType) -> bool) -> Result<(), BundleError> {
    let field = format!("linux.sysctl[{key:?}]");
    if key.is_empty() || key.split(['.', '/']).any(|c| c.is_empty() || c == "..") {
        return Err(invalid(field, "not a valid sysctl name"));
    }
    let ipc = matches!(
        key,
        "kernel.msgmax"
            | "kernel.msgmnb"
            | "kernel.msgmni"
            | "kernel.sem"
            | "kernel.shmall"
            | "kernel.shmmax"
            | "kernel.shmmni"
            | "kernel.shm_rmid_forced"
    ) || key.starts_with("fs.mqueue.");
    if ipc {
        return if has(LinuxNamespaceType::Ipc) {
            Ok(())
        } else {
            Err(invalid(field, "needs a new ipc namespace"))
        };
    }
    if key.starts_with("net.") {
        return if has(LinuxNamespaceType::Network) {
            Ok(())
        } else {
            Err(invalid(field, "needs a new network namespace"))
        };
    }
    if key == "kernel.hostname" || key == "kernel.domainname" {
        return Err(invalid(field, "set the hostname/domainname fields instead"));
    }
    Err(invalid(
        field,
        "is not namespaced: it would change the host",
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("abc-1_2.3+x").is_ok());
        for bad in ["", ".", "..", "a/b", "../x", "a b", "a\0b"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn parse_errors_name_the_field() {
        let e =
            parse(br#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":"x","gid":0}}}"#)
                .err()
                .unwrap()
                .to_string();
        assert!(e.contains("process.user.uid"), "{e}");
        let e = parse(b"{not json").err().unwrap().to_string();
        assert!(e.starts_with("config.json:"), "{e}");
    }

    /// Found by the `config` fuzz target: serde quotes the offending value (and the JSON path
    /// names the offending key) verbatim, so a newline in either split the error line.
    #[test]
    fn errors_quoting_user_text_stay_one_line() {
        let e = parse(br#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"mo\nt"}]}}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains('\n') && e.contains("mo\\nt"), "{e}");
        let e = parse(b"{\"proce\r").err().unwrap().to_string();
        assert!(!e.contains('\r'), "{e}");
        let spec = parse(br#"{"ociVersion":"1.0.2","root":{"path":"/no\nsuch"}}"#).unwrap();
        let e = validate(Path::new("/"), &spec).err().unwrap().to_string();
        assert!(!e.contains('\n') && e.contains("/no\\nsuch"), "{e}");
    }

    use proptest::prelude::*;

    /// JSON of any shape whose object keys are drawn from `keys` (so that a parser's
    /// checks are reached, not only its "unknown field" errors).
    pub(crate) fn json(keys: &'static [&'static str]) -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let key = prop::sample::select(keys);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            key.clone().prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..6).prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
    }

    const CONFIG_KEYS: &[&str] = &[
        "ociVersion",
        "root",
        "path",
        "process",
        "args",
        "cwd",
        "env",
        "rlimits",
        "type",
        "soft",
        "hard",
        "mounts",
        "destination",
        "source",
        "options",
        "linux",
        "namespaces",
        "uidMappings",
        "gidMappings",
        "sysctl",
        "rootfsPropagation",
        "devices",
        "hostname",
        "domainname",
        "oomScoreAdj",
        "user",
        "uid",
        "gid",
        "1.0.2",
        "/",
        "rootfs",
        "pid",
        "time",
        "bind",
        "RLIMIT_NOFILE",
        "net.ipv4.ip_forward",
        "kernel.shmmax",
    ];

    proptest! {
        #[test]
        fn any_id_is_checked_without_panic(id in "\\PC{0,40}") {
            if validate_id(&id).is_ok() {
                prop_assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c)));
                prop_assert!(id != "." && id != "..");
            }
        }

        #[test]
        fn any_bytes_parse_without_panic(data in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&data);
        }

        #[test]
        fn any_json_validates_without_panic(mut v in json(CONFIG_KEYS)) {
            if let Some(o) = v.as_object_mut() {
                o.insert("ociVersion".into(), "1.0.2".into());
                o.insert("root".into(), serde_json::json!({"path": "/"}));
            }
            let data = serde_json::to_vec(&v).unwrap();
            let _ = Bundle::from_bytes(PathBuf::from("/"), &data);
        }
    }
}
