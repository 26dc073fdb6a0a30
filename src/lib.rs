//! runvz: an OCI runtime with OpenVZ resource semantics.
//!
//! Floors, each importing only from the ones below it:
//! 1. the CLI (`main.rs`, `cli/`),
//! 2. the container lifecycle (`container`),
//! 3. process setup (`process`),
//! 4. the subsystems (`rootfs`, `namespaces`, `cgroups`, `hooks`, `seccomp`, `ub`, `disk`,
//!    `net`, `checkpoint`, `migrate`),
//! 5. syscall wrappers, in-rootfs paths, the bundle, the state store (`sys`, `safe_path`,
//!    `bundle`, `state`, `signal`).

pub mod bundle;
pub mod cgroups;
pub mod checkpoint;
pub mod container;
pub mod disk;
pub mod hooks;
pub mod migrate;
pub mod namespaces;
pub mod net;
pub mod process;
pub mod rootfs;
pub mod safe_path;
pub mod seccomp;
pub mod signal;
pub mod state;
pub mod sys;
pub mod ub;

/// The OCI runtime-spec version runvz implements.
pub const SPEC_VERSION: &str = "1.2.0";
