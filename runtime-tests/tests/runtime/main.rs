//! Differential OCI-runtime tests, run against the binary named by `RUNTIME`.
//!
//! `RUNTIME=/usr/sbin/runc cargo test -p runtime-tests` (as root, after hack/build-bundle).
//! Every test uses a `Ctx` (see runtime-tests/src/lib.rs) whose drop force-deletes the test's
//! containers and fails the test if any state entry, cgroup, process or mount of them remains.

mod attacks;
mod beancounters;
mod cgroups;
mod checkpoint;
mod commands;
mod crash;
mod disk;
mod events;
mod exec;
mod exhaustion;
mod hooks;
mod malformed;
mod migrate;
mod mounts;
mod namespaces;
mod net;
mod parity;
mod process;
mod seccomp;
mod terminal;
