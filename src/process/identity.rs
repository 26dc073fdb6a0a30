//! Who the user's process is: rlimits, user and groups, the five capability sets,
//! no_new_privileges, umask.

use std::io;
use std::str::FromStr;

use oci_spec::runtime::{Capabilities, LinuxCapabilities, PosixRlimit, PosixRlimitType, User};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("process.rlimits: setting {typ} to soft {soft}, hard {hard}: {source}")]
    Rlimit {
        typ: PosixRlimitType,
        soft: u64,
        hard: u64,
        source: io::Error,
    },
    #[error("process.user: {what}: {source}")]
    User { what: String, source: io::Error },
    #[error("process.capabilities: {0}")]
    Caps(String),
    #[error("process.noNewPrivileges: {0}")]
    NoNewPrivs(io::Error),
}

fn resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

pub fn set_rlimits(limits: &[PosixRlimit]) -> Result<(), IdentityError> {
    for l in limits {
        let rl = libc::rlimit {
            rlim_cur: l.soft(),
            rlim_max: l.hard(),
        };
        // SAFETY: `rl` is a valid rlimit struct.
        if unsafe { libc::setrlimit(resource(l.typ()), &rl) } < 0 {
            let mut source = io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EPERM) {
                source = io::Error::other(
                    "Operation not permitted (EPERM): raising a hard limit above the current one needs CAP_SYS_RESOURCE",
                );
            }
            return Err(IdentityError::Rlimit {
                typ: l.typ(),
                soft: l.soft(),
                hard: l.hard(),
                source,
            });
        }
    }
    Ok(())
}

fn cap_bits(set: Option<&Capabilities>) -> Result<u64, IdentityError> {
    let mut bits = 0u64;
    for c in set.into_iter().flatten() {
        let name = format!("CAP_{c}");
        let cap = caps::Capability::from_str(&name)
            .map_err(|_| IdentityError::Caps(format!("unknown capability {name}")))?;
        bits |= 1u64 << cap.index();
    }
    Ok(bits)
}

/// The capabilities this kernel knows (bits below /proc/sys/kernel/cap_last_cap).
fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capset(e: u64, p: u64, i: u64) -> io::Result<()> {
    let mut hdr = CapHeader {
        version: 0x20080522,
        pid: 0,
    };
    let data = [
        CapData {
            effective: e as u32,
            permitted: p as u32,
            inheritable: i as u32,
        },
        CapData {
            effective: (e >> 32) as u32,
            permitted: (p >> 32) as u32,
            inheritable: (i >> 32) as u32,
        },
    ];
    // SAFETY: header and a two-element data array of the v3 layout, as capset(2) expects.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drop capabilities from the bounding set that are not in `bounding` (needs CAP_SETPCAP,
/// so it runs before the user switch).
pub fn drop_bounding(c: Option<&LinuxCapabilities>) -> Result<(), IdentityError> {
    let keep = cap_bits(c.and_then(|c| c.bounding().as_ref()))?;
    for bit in 0..=last_cap() {
        if keep & (1u64 << bit) == 0 {
            // SAFETY: a prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, bit as libc::c_ulong, 0, 0, 0) } < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(IdentityError::Caps(format!(
                        "dropping bounding capability {bit}: {e}"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Become the configured user (keeping capabilities across the switch), then set the
/// effective, permitted and inheritable sets exactly and raise the ambient ones.
pub fn switch_user(
    user: &User,
    c: Option<&LinuxCapabilities>,
    setgroups_allowed: bool,
) -> Result<(), IdentityError> {
    let uerr = |what: &str| {
        let what = what.to_string();
        move |e: nix::Error| IdentityError::User {
            what,
            source: e.into(),
        }
    };
    crate::sys::set_keep_caps(true).map_err(|e| IdentityError::User {
        what: "keepcaps".into(),
        source: e,
    })?;
    if setgroups_allowed {
        let groups: Vec<nix::unistd::Gid> = user
            .additional_gids()
            .iter()
            .flatten()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&groups).map_err(uerr("setgroups"))?;
    }
    let gid = nix::unistd::Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(uerr(&format!("gid {}", user.gid())))?;
    let uid = nix::unistd::Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(uerr(&format!("uid {}", user.uid())))?;
    crate::sys::set_keep_caps(false).map_err(|e| IdentityError::User {
        what: "keepcaps".into(),
        source: e,
    })?;

    let e = cap_bits(c.and_then(|c| c.effective().as_ref()))?;
    let p = cap_bits(c.and_then(|c| c.permitted().as_ref()))?;
    let i = cap_bits(c.and_then(|c| c.inheritable().as_ref()))?;
    let a = cap_bits(c.and_then(|c| c.ambient().as_ref()))?;
    capset(e, p, i).map_err(|err| {
        IdentityError::Caps(format!(
            "setting effective/permitted/inheritable (effective must be within permitted): {err}"
        ))
    })?;
    // SAFETY: a prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    for bit in 0..64u64 {
        if a & (1 << bit) != 0 {
            // SAFETY: a prctl with integer arguments only.
            if unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    bit as libc::c_ulong,
                    0,
                    0,
                )
            } < 0
            {
                // As runc: an ambient capability that is not also permitted and inheritable
                // is skipped with a warning (runc's own default spec lists such ones).
                tracing::debug!(
                    "process.capabilities.ambient: capability {bit} not raised (it must be permitted and inheritable): {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
    Ok(())
}

/// The home directory of `uid` in the container's /etc/passwd (read from the current root), or
/// "/" when there is no entry: what runc puts in HOME when process.env has none.
pub fn home_of(uid: u32) -> String {
    let passwd = std::fs::read("/etc/passwd").unwrap_or_default();
    home_in(&String::from_utf8_lossy(&passwd), uid).unwrap_or_else(|| "/".into())
}

/// name:password:uid:gid:gecos:home:shell
fn home_in(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[2].parse() == Ok(uid) && !f[5].is_empty()).then(|| f[5].to_string())
    })
}

pub fn no_new_privs() -> Result<(), IdentityError> {
    crate::sys::set_no_new_privs().map_err(IdentityError::NoNewPrivs)
}

#[cfg(test)]
mod tests {
    use super::home_in;

    #[test]
    fn home_from_passwd() {
        let pw = "root:x:0:0:root:/root:/bin/sh\nbad line\nnohome:x:7:7::::\ntest:x:1000:1000:t:/home/test:/bin/sh\n";
        assert_eq!(home_in(pw, 0).as_deref(), Some("/root"));
        assert_eq!(home_in(pw, 1000).as_deref(), Some("/home/test"));
        assert_eq!(home_in(pw, 7), None);
        assert_eq!(home_in(pw, 12345), None);
    }
}
