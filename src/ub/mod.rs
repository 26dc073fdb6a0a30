//! OpenVZ user beancounters and CPU/I/O settings: the `io.runvz.*` annotations
//! (`../shared/spec/openvz-semantics.md` §1), their mapping onto the kernel (`apply`), the
//! usage the kernel counts (`usage`) and the `/proc/user_beancounters` view (`table`).

pub mod apply;
pub mod live;
pub mod table;
pub mod usage;

use std::collections::{BTreeMap, HashMap};

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
            | Numiptent => Unit::Items,
        }
    }

    pub fn mode(self) -> Mode {
        use Param::*;
        match self {
            Numproc | Physpages | Swappages | Shmpages | Numpty | Tcpsndbuf | Tcprcvbuf => {
                Mode::Aggregate
            }
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
}

impl Settings {
    pub fn is_empty(&self) -> bool {
        *self == Settings::default()
    }

    pub fn get(&self, p: Param) -> Limit {
        self.ub.get(&p).copied().unwrap_or(Limit::NONE)
    }

    /// Overlay `other` (a `set` call) on these settings.
    pub fn merge(&mut self, other: &Settings) {
        self.ub.extend(other.ub.iter().map(|(k, v)| (*k, *v)));
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(cpuunits, cpulimit, cpus, ioprio, iolimit, iopslimit);
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
/// only; converted to pages, rounding up, for page parameters), or `unlimited`.
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
        return Err(bad(
            key,
            format!("{s:?} is not a number, a number with K/M/G/T, or \"unlimited\""),
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| bad(key, format!("{s:?} is too large")))?;
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| bad(key, format!("{s:?} is too large")))?;
    let v = if mult > 1 && unit == Unit::Pages {
        v.div_ceil(PAGE)
    } else {
        v
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
        "diskspace" | "diskinodes" | "disk.backend" | "disk.image" | "disk.ephemeral" => {
            return Err(UbError::NotYet {
                key: full,
                what: "per-container disk quota",
            })
        }
        "net.venet" | "net.veth" | "net.rate" => {
            return Err(UbError::NotYet {
                key: full,
                what: "runtime networking",
            })
        }
        k if k.starts_with("net.veth.") => {
            return Err(UbError::NotYet {
                key: full,
                what: "runtime networking",
            })
        }
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
