//! `linux.seccomp` compiled to BPF with `seccompiler` and installed in the container init.
//!
//! OCI profiles give each syscall rule its own action; a seccompiler filter has one match
//! action. So a profile becomes a small stack of filters, one per distinct action, plus one
//! that applies the default action to everything no rule matched. The kernel runs every
//! filter and keeps the strictest result, which is exactly the profile's meaning: a call
//! matched by a rule gets that rule's action, any other call the default.
//!
//! Every rule is also added for the x32 ABI number of its syscall, so that a deny-list cannot
//! be bypassed through x32. Calls from other architectures (i386) are killed: a stricter
//! reading of profiles that allow them, said in docs/security.md.

mod syscalls;

use std::collections::BTreeMap;
use std::io;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

const X32_SYSCALL_BIT: i64 = 0x4000_0000;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("linux.seccomp: {0}")]
    Unsupported(String),
    #[error("linux.seccomp: {0}")]
    Compile(String),
    #[error("installing the seccomp filter: {0}")]
    Install(io::Error),
}

/// A compiled profile: the filters to install, in order, and the flags for each.
#[derive(Clone, Debug)]
pub struct Compiled {
    programs: Vec<BpfProgram>,
    flags: u64,
}

pub fn syscall_number(name: &str) -> Option<i64> {
    syscalls::X86_64
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, nr)| *nr)
}

fn action(a: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<SeccompAction, SeccompError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno_ret.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => {
            SeccompAction::Trace(errno_ret.unwrap_or(libc::EPERM as u32))
        }
        other => {
            return Err(SeccompError::Unsupported(format!(
                "action {other} is not supported"
            )))
        }
    })
}

fn operator(op: LinuxSeccompOperator, value_two: Option<u64>) -> SeccompCmpOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
        LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
        LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
        LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
        LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
        LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
        // OCI: `value` is the mask, `valueTwo` the value compared after masking.
        LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(value_two.unwrap_or(0)),
    }
}

/// The seccompiler rules of one OCI syscall entry: one rule with every condition (AND), or,
/// when an argument index repeats (libseccomp ORs those), one rule per condition. An empty
/// list means "match unconditionally".
fn rules_of(args: &[oci_spec::runtime::LinuxSeccompArg]) -> Result<Vec<SeccompRule>, SeccompError> {
    if args.is_empty() {
        return Ok(vec![]);
    }
    let cond = |a: &oci_spec::runtime::LinuxSeccompArg| {
        let (op, value) = match a.op() {
            LinuxSeccompOperator::ScmpCmpMaskedEq => (operator(a.op(), a.value_two()), a.value()),
            _ => (operator(a.op(), None), a.value()),
        };
        // For MaskedEq seccompiler takes the mask in the operator and the value separately.
        let value = if let SeccompCmpOp::MaskedEq(_) = op {
            a.value_two().unwrap_or(0)
        } else {
            value
        };
        let op = if let SeccompCmpOp::MaskedEq(_) = op {
            SeccompCmpOp::MaskedEq(a.value())
        } else {
            op
        };
        let index = u8::try_from(a.index()).map_err(|_| {
            SeccompError::Compile(format!("argument index {} out of range", a.index()))
        })?;
        SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
            .map_err(|e| SeccompError::Compile(e.to_string()))
    };
    let mut seen = std::collections::HashSet::new();
    let repeats = args.iter().any(|a| !seen.insert(a.index()));
    let mk = |c: Vec<SeccompCondition>| {
        SeccompRule::new(c).map_err(|e| SeccompError::Compile(e.to_string()))
    };
    if repeats {
        args.iter().map(|a| mk(vec![cond(a)?])).collect()
    } else {
        Ok(vec![mk(args
            .iter()
            .map(cond)
            .collect::<Result<_, _>>()?)?])
    }
}

type RuleMap = BTreeMap<i64, Vec<SeccompRule>>;

/// Add `rules` for syscall `nr` (and its x32 twin). In seccompiler an empty rule list means
/// "always matches", so an unconditional entry absorbs every conditional one.
fn add(map: &mut RuleMap, nr: i64, rules: &[SeccompRule]) {
    for n in [nr, nr | X32_SYSCALL_BIT] {
        match map.get_mut(&n) {
            None => {
                map.insert(n, rules.to_vec());
            }
            Some(e) if e.is_empty() => {}
            Some(e) if rules.is_empty() => e.clear(),
            Some(e) => e.extend(rules.iter().cloned()),
        }
    }
}

fn build(
    rules: RuleMap,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let f = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| SeccompError::Compile(e.to_string()))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))
}

/// Compile a profile. Done in `create` before anything is made, so a bad profile leaves
/// nothing behind.
pub fn compile(s: &LinuxSeccomp) -> Result<Compiled, SeccompError> {
    if s.listener_path().is_some() {
        return Err(SeccompError::Unsupported(
            "listenerPath (seccomp notify) is not supported".into(),
        ));
    }
    let default = action(s.default_action(), s.default_errno_ret())?;
    let mut flags = 0u64;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            other => {
                return Err(SeccompError::Unsupported(format!(
                    "flag {other} is not supported"
                )))
            }
        };
    }
    // Rules grouped by action; every rule also goes into `all`, which lets matched calls
    // through the default filter.
    let mut by_action: Vec<(SeccompAction, RuleMap)> = vec![];
    let mut all = RuleMap::new();
    for (i, sc) in s.syscalls().iter().flatten().enumerate() {
        let act = action(sc.action(), sc.errno_ret())?;
        let rules = rules_of(sc.args().as_deref().unwrap_or(&[]))
            .map_err(|e| SeccompError::Compile(format!("syscalls[{i}]: {e}")))?;
        for name in sc.names() {
            let Some(nr) = syscall_number(name) else {
                // As runc with libseccomp: a name this architecture lacks is skipped.
                tracing::debug!("seccomp: unknown syscall {name:?} skipped");
                continue;
            };
            add(&mut all, nr, &rules);
            if act == default {
                continue;
            }
            match by_action.iter_mut().find(|(a, _)| *a == act) {
                Some((_, m)) => add(m, nr, &rules),
                None => {
                    let mut m = RuleMap::new();
                    add(&mut m, nr, &rules);
                    by_action.push((act.clone(), m));
                }
            }
        }
    }
    let mut programs = vec![];
    for (act, rules) in by_action {
        if act == SeccompAction::Allow {
            continue; // allowing is what the other filters do for unmatched calls anyway
        }
        programs.push(build(rules, SeccompAction::Allow, act)?);
    }
    if default != SeccompAction::Allow {
        programs.push(build(all, default, SeccompAction::Allow)?);
    }
    Ok(Compiled { programs, flags })
}

impl Compiled {
    /// Install every filter into the calling thread (needs no_new_privs or CAP_SYS_ADMIN).
    pub fn install(&self) -> Result<(), SeccompError> {
        for p in &self.programs {
            let prog = libc::sock_fprog {
                len: p.len() as u16,
                filter: p.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: `prog` points at a live BPF program (seccompiler's sock_filter has the
            // kernel's layout); the kernel copies it and keeps no pointer.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    self.flags,
                    &prog as *const libc::sock_fprog,
                )
            };
            if r < 0 {
                return Err(SeccompError::Install(io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn table_knows_common_syscalls() {
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("getcwd"), Some(79));
        assert_eq!(syscall_number("mseal"), Some(462));
        assert_eq!(syscall_number("no_such_call"), None);
    }

    #[test]
    fn deny_list_gives_one_filter() {
        let c = compile(&profile(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getcwd"],"action":"SCMP_ACT_ERRNO"}]}"#)).unwrap();
        assert_eq!(c.programs.len(), 1);
    }

    #[test]
    fn allow_list_with_exceptions() {
        let c = compile(&profile(r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["read","write","bogus_name"],"action":"SCMP_ACT_ALLOW"},
            {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"},{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
            {"names":["ptrace"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#)).unwrap();
        // kill filter + default filter
        assert_eq!(c.programs.len(), 2);
    }

    #[test]
    fn notify_is_refused() {
        assert!(compile(&profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#)).is_err());
        assert!(compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/x"}"#
        ))
        .is_err());
    }
}
