//! OpenVZ user beancounters and CPU/I/O settings: the `io.runvz.*` annotations
//! (`../shared/spec/openvz-semantics.md` §1), their mapping onto the kernel (`apply`), the
//! usage the kernel counts (`usage`) and the `/proc/user_beancounters` view (`table`).

pub mod apply;
pub mod live;
pub mod table;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// "unlimited", as OpenVZ reports it.
pub const UNLIMITED: u64 = i64::MAX as u64;
pub const PAGE: u64 = 4096;
pub const PREFIX: &str = "io.runvz.";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UbError {
    #[error("annotation {key}: {problem}")]
    Bad { key: String, problem: String },
    #[error("annotation {key}: {what} is not implemented yet; remove the annotation")]
    NotYet { key: String, what: &'static str },
}

fn bad(key: &str, problem: impl Into<String>) -> UbError {
    UbError::Bad {
        key: key.to_string(),
        problem: problem.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Pages,
    Items,
    /// 1 KiB blocks (diskspace).
    Kbytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Aggregate,
    PerProcess,
    Accounted,
    Guarantee,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Bytes => "bytes",
            Unit::Pages => "pages",
            Unit::Items => "items",
            Unit::Kbytes => "kbytes",
        }
    }
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Aggregate => "aggregate",
            Mode::PerProcess => "per-process",
            Mode::Accounted => "accounted",
            Mode::Guarantee => "guarantee",
        }
    }
}

/// The beancounters, in OpenVZ's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Param {
    Kmemsize,
    Lockedpages,
    Privvmpages,
    Shmpages,
    Numproc,
    Physpages,
    Vmguarpages,
    Oomguarpages,
    Numtcpsock,
    Numflock,
    Numpty,
    Numsiginfo,
    Tcpsndbuf,
    Tcprcvbuf,
    Othersockbuf,
    Dgramrcvbuf,
    Numothersock,
    Dcachesize,
    Numfile,
    Numiptent,
    Swappages,
    /// Disk space (1 KiB blocks) and inodes: rows shown after the beancounters when a disk
    /// limit is set; not `ub.*` keys (they are `io.runvz.diskspace`/`diskinodes`).
    Diskspace,
    Diskinodes,
}

pub const ALL: [Param; 21] = [
    Param::Kmemsize,
    Param::Lockedpages,
    Param::Privvmpages,
    Param::Shmpages,
    Param::Numproc,
    Param::Physpages,
    Param::Vmguarpages,
    Param::Oomguarpages,
    Param::Numtcpsock,
    Param::Numflock,
    Param::Numpty,
    Param::Numsiginfo,
    Param::Tcpsndbuf,
    Param::Tcprcvbuf,
    Param::Othersockbuf,
    Param::Dgramrcvbuf,
    Param::Numothersock,
    Param::Dcachesize,
    Param::Numfile,
    Param::Numiptent,
    Param::Swappages,
];

impl Param {
    pub fn name(self) -> &'static str {
        match self {
            Param::Kmemsize => "kmemsize",
            Param::Lockedpages => "lockedpages",
            Param::Privvmpages => "privvmpages",
            Param::Shmpages => "shmpages",
            Param::Numproc => "numproc",
            Param::Physpages => "physpages",
            Param::Vmguarpages => "vmguarpages",
            Param::Oomguarpages => "oomguarpages",
            Param::Numtcpsock => "numtcpsock",
            Param::Numflock => "numflock",
            Param::Numpty => "numpty",
            Param::Numsiginfo => "numsiginfo",
            Param::Tcpsndbuf => "tcpsndbuf",
            Param::Tcprcvbuf => "tcprcvbuf",
            Param::Othersockbuf => "othersockbuf",
            Param::Dgramrcvbuf => "dgramrcvbuf",
            Param::Numothersock => "numothersock",
            Param::Dcachesize => "dcachesize",
            Param::Numfile => "numfile",
            Param::Numiptent => "numiptent",
            Param::Swappages => "swappages",
            Param::Diskspace => "diskspace",
            Param::Diskinodes => "diskinodes",
        }
    }

    pub fn from_name(s: &str) -> Option<Param> {
        ALL.iter().copied().find(|p| p.name() == s)
    }

    pub fn unit(self) -> Unit {
        use Param::*;
        match self {
            Kmemsize | Tcpsndbuf | Tcprcvbuf | Othersockbuf | Dgramrcvbuf | Dcachesize => {
                Unit::Bytes
            }
            Lockedpages | Privvmpages | Shmpages | Physpages | Vmguarpages | Oomguarpages
            | Swappages => Unit::Pages,
            Numproc | Numtcpsock | Numflock | Numpty | Numsiginfo | Numothersock | Numfile
            | Numiptent | Diskinodes => Unit::Items,
            Diskspace => Unit::Kbytes,
        }
    }

    pub fn mode(self) -> Mode {
        use Param::*;
        match self {
            Numproc | Physpages | Swappages | Shmpages | Numpty | Tcpsndbuf | Tcprcvbuf
            | Diskspace | Diskinodes => Mode::Aggregate,
            Lockedpages | Privvmpages | Numfile | Numsiginfo => Mode::PerProcess,
            Vmguarpages | Oomguarpages => Mode::Guarantee,
            Kmemsize | Numflock | Numtcpsock | Numothersock | Othersockbuf | Dgramrcvbuf
            | Dcachesize | Numiptent => Mode::Accounted,
        }
    }
}

/// A barrier:limit pair in the parameter's own unit; `UNLIMITED` for none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub barrier: u64,
    pub limit: u64,
}

impl Limit {
    pub const NONE: Limit = Limit {
        barrier: UNLIMITED,
        limit: UNLIMITED,
    };
}

/// `io.runvz.disk.backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskBackend {
    #[default]
    Auto,
    Btrfs,
    Image,
}

/// The disk annotations: `io.runvz.diskspace`, `io.runvz.diskinodes`, `io.runvz.disk.*`
/// (carried out by `crate::disk`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Soft:hard space in 1 KiB blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<Limit>,
    /// Soft:hard inodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<DiskBackend>,
    /// The image file (absolute, or relative to the bundle directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<bool>,
}

impl Disk {
    pub fn is_empty(&self) -> bool {
        *self == Disk::default()
    }
}

/// Everything the `io.runvz.*` CPU, I/O and beancounter annotations ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub ub: BTreeMap<Param, Limit>,
    /// Fair-share weight, 8..=500000 (OpenVZ default 1000).
    pub cpuunits: Option<u64>,
    /// Percent of one CPU; 0 = none.
    pub cpulimit: Option<u64>,
    /// Whole CPUs' worth of time.
    pub cpus: Option<u64>,
    pub ioprio: Option<u8>,
    /// Bytes per second; 0 = none.
    pub iolimit: Option<u64>,
    pub iopslimit: Option<u64>,
    #[serde(default, skip_serializing_if = "Disk::is_empty")]
    pub disk: Disk,
}

impl Settings {
    pub fn is_empty(&self) -> bool {
        *self == Settings::default()
    }

    pub fn get(&self, p: Param) -> Limit {
        let v = match p {
            Param::Diskspace => self.disk.space,
            Param::Diskinodes => self.disk.inodes,
            _ => self.ub.get(&p).copied(),
        };
        v.unwrap_or(Limit::NONE)
    }

    /// Overlay `other` (a `set` call) on these settings.
    pub fn merge(&mut self, other: &Settings) {
        self.ub.extend(other.ub.iter().map(|(k, v)| (*k, *v)));
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(cpuunits, cpulimit, cpus, ioprio, iolimit, iopslimit);
        let (d, o) = (&mut self.disk, &other.disk);
        if o.space.is_some() {
            d.space = o.space;
        }
        if o.inodes.is_some() {
            d.inodes = o.inodes;
        }
        if o.backend.is_some() {
            d.backend = o.backend;
        }
        if o.image.is_some() {
            d.image.clone_from(&o.image);
        }
        if o.ephemeral.is_some() {
            d.ephemeral = o.ephemeral;
        }
    }

    /// The CFS quota (µs per 100 ms period) from cpulimit and cpus, the stricter winning.
    pub fn cpu_quota(&self) -> Option<u64> {
        let a = self
            .cpulimit
            .filter(|p| *p > 0)
            .map(|p| p.saturating_mul(1000));
        let b = self
            .cpus
            .filter(|n| *n > 0)
            .map(|n| n.saturating_mul(100_000));
        match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }
    }
}

/// Parse one value in `unit`: a number, a number with a K/M/G/T suffix (bytes and pages
/// only; converted to pages, or to 1 KiB blocks, rounding up), or `unlimited`.
pub fn parse_value(key: &str, s: &str, unit: Unit) -> Result<u64, UbError> {
    let s = s.trim();
    if s == "unlimited" {
        return Ok(UNLIMITED);
    }
    if s.is_empty() {
        return Err(bad(key, "empty value"));
    }
    let (digits, mult) = match s.as_bytes()[s.len() - 1] {
        c @ (b'K' | b'M' | b'G' | b'T' | b'k' | b'm' | b'g' | b't') => {
            if unit == Unit::Items {
                return Err(bad(key, format!("{s:?}: a count takes no size suffix")));
            }
            let shift = match c.to_ascii_uppercase() {
                b'K' => 10,
                b'M' => 20,
                b'G' => 30,
                _ => 40,
            };
            (&s[..s.len() - 1], 1u64 << shift)
        }
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        let what = if unit == Unit::Items {
            "a count or \"unlimited\""
        } else {
            "a number, a number with K/M/G/T, or \"unlimited\""
        };
        return Err(bad(key, format!("{s:?} is not {what}")));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| bad(key, format!("{s:?} is too large")))?;
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| bad(key, format!("{s:?} is too large")))?;
    let v = match unit {
        Unit::Pages if mult > 1 => v.div_ceil(PAGE),
        Unit::Kbytes if mult > 1 => v.div_ceil(1024),
        _ => v,
    };
    if v > UNLIMITED {
        return Err(bad(key, format!("{s:?} is too large")));
    }
    Ok(v)
}

/// Parse `B[:L]` (one value sets both; B must not exceed L).
pub fn parse_pair(key: &str, s: &str, unit: Unit) -> Result<Limit, UbError> {
    let (b, l) = match s.split_once(':') {
        Some((b, l)) => (parse_value(key, b, unit)?, parse_value(key, l, unit)?),
        None => {
            let v = parse_value(key, s, unit)?;
            (v, v)
        }
    };
    if b > l {
        return Err(bad(key, format!("barrier {b} is above limit {l} in {s:?}")));
    }
    Ok(Limit {
        barrier: b,
        limit: l,
    })
}

fn parse_int(key: &str, s: &str, lo: u64, hi: u64) -> Result<u64, UbError> {
    let v: u64 = s
        .trim()
        .parse()
        .map_err(|_| bad(key, format!("{s:?} is not a whole number")))?;
    if v < lo || v > hi {
        return Err(bad(key, format!("{v} is outside {lo}..{hi}")));
    }
    Ok(v)
}

/// `iolimit`: N[B|K|M|G], default unit MB/s.
fn parse_iolimit(key: &str, s: &str) -> Result<u64, UbError> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('B' | 'b') => (&s[..s.len() - 1], 1u64),
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1 << 20),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| bad(key, format!("{s:?} is not N[B|K|M|G]")))?;
    n.checked_mul(mult)
        .ok_or_else(|| bad(key, format!("{s:?} is too large")))
}

/// Apply one `key=value` (the key without the `io.runvz.` prefix) to `st`.
pub fn set_one(st: &mut Settings, key: &str, value: &str) -> Result<(), UbError> {
    // Escaped: every error below names the key, and must stay one line.
    let full = format!("{PREFIX}{}", crate::bundle::one_line(key));
    if let Some(p) = key.strip_prefix("ub.") {
        let param = Param::from_name(p).ok_or_else(|| bad(&full, "unknown beancounter"))?;
        st.ub.insert(param, parse_pair(&full, value, param.unit())?);
        return Ok(());
    }
    match key {
        // VSwap shortcuts: ram=SIZE is physpages=0:SIZE, swap=SIZE is swappages=0:SIZE.
        "ram" | "swap" => {
            let param = if key == "ram" {
                Param::Physpages
            } else {
                Param::Swappages
            };
            let l = parse_value(&full, value, Unit::Pages)?;
            st.ub.insert(
                param,
                Limit {
                    barrier: 0,
                    limit: l,
                },
            );
        }
        "cpuunits" => st.cpuunits = Some(parse_int(&full, value, 8, 500_000)?),
        "cpulimit" => st.cpulimit = Some(parse_int(&full, value, 0, 100 * 4096)?),
        "cpus" => st.cpus = Some(parse_int(&full, value, 0, 4096)?),
        "ioprio" => st.ioprio = Some(parse_int(&full, value, 0, 7)? as u8),
        "iolimit" => st.iolimit = Some(parse_iolimit(&full, value)?),
        "iopslimit" => st.iopslimit = Some(parse_int(&full, value, 0, u32::MAX as u64)?),
        "diskspace" => st.disk.space = Some(parse_pair(&full, value, Unit::Kbytes)?),
        "diskinodes" => st.disk.inodes = Some(parse_pair(&full, value, Unit::Items)?),
        "disk.backend" => {
            st.disk.backend = Some(match value.trim() {
                "auto" => DiskBackend::Auto,
                "btrfs" => DiskBackend::Btrfs,
                "image" => DiskBackend::Image,
                v => return Err(bad(&full, format!("{v:?} is not auto, btrfs or image"))),
            })
        }
        "disk.image" => {
            if value.is_empty() || value.contains('\0') {
                return Err(bad(&full, "expected a file path"));
            }
            st.disk.image = Some(PathBuf::from(value));
        }
        "disk.ephemeral" => {
            st.disk.ephemeral = Some(match value.trim() {
                "true" => true,
                "false" => false,
                v => return Err(bad(&full, format!("{v:?} is not true or false"))),
            })
        }
        // Networking is parsed and checked by `net`.
        k if k.starts_with("net.") => {}
        _ => {
            return Err(bad(
                &full,
                "unknown io.runvz annotation (a typo must not silently disable a limit)",
            ))
        }
    }
    Ok(())
}

/// Parse every `io.runvz.*` annotation; other annotations are ignored.
pub fn from_annotations(ann: &HashMap<String, String>) -> Result<Settings, UbError> {
    let mut st = Settings::default();
    let mut keys: Vec<&String> = ann.keys().filter(|k| k.starts_with(PREFIX)).collect();
    // Deterministic, and explicit ub.* settings override the ram/swap shortcuts.
    keys.sort_by_key(|k| (k.contains(".ub."), k.to_string()));
    for k in keys {
        set_one(&mut st, &k[PREFIX.len()..], &ann[k])?;
    }
    Ok(st)
}

#[cfg(test)]
mod tests;
