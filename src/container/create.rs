//! `create`: validate, record, then make — in that order, so that a crash at any point leaves
//! a record from which `delete --force` finds everything that may exist.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;

use super::{Container, ContainerError};
use crate::bundle::{self, Bundle};
use crate::cgroups::{self, Cgroup};
use crate::namespaces::Plan;
use crate::process::{self, Event, InitConfig};
use crate::state::{self, Locked, Record, Status, Store};
use crate::{hooks, sys};

pub struct CreateOptions<'a> {
    pub bundle: &'a Path,
    pub pid_file: Option<&'a Path>,
    pub no_pivot: bool,
    pub preserve_fds: i32,
    /// Where to send the pty master when process.terminal is true.
    pub console_socket: Option<&'a Path>,
}

/// Write the pid file atomically (callers poll for it).
pub(super) fn write_pid_file(path: &Path, pid: i32, id: &str) -> Result<(), ContainerError> {
    let io = |source| ContainerError::Io {
        id: id.to_string(),
        what: format!("pid file {}", path.display()),
        source,
    };
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|f| f.to_str()).unwrap_or("pid")
    ));
    std::fs::write(&tmp, pid.to_string()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Load a bundle and map its io.runvz.* annotations onto the spec (before anything is made).
pub(super) fn load_bundle(
    path: &Path,
) -> Result<(Bundle, crate::ub::Settings, crate::ub::apply::Plan), ContainerError> {
    let mut b = Bundle::load(path)?;
    let ub_settings =
        crate::ub::from_annotations(b.spec.annotations().as_ref().unwrap_or(&Default::default()))?;
    let layout = if crate::cgroups::host_is_v2() {
        crate::ub::apply::Layout::V2
    } else {
        crate::ub::apply::Layout::V1
    };
    let ub_plan = crate::ub::apply::apply(&ub_settings, &mut b.spec, layout, &b.rootfs)?;
    for w in ub_plan.overrides.iter().chain(&ub_plan.warnings) {
        tracing::warn!("{w}");
    }
    Ok((b, ub_settings, ub_plan))
}

/// The first record of a container about to be made (by `create` or `restore`): status
/// `creating`, the cgroup it will use, this process as its creator.
pub(super) fn creating_record(
    id: &str,
    b: &Bundle,
    cgroup_path: &Path,
    ub_settings: &crate::ub::Settings,
) -> Record {
    let me = nix::unistd::getpid().as_raw();
    Record {
        oci_version: b.spec.version().clone(),
        id: id.to_string(),
        status: Status::Creating,
        pid: 0,
        pid_start: 0,
        bundle: b.dir.clone(),
        rootfs: b.rootfs.clone(),
        created: state::now_rfc3339(),
        annotations: b.spec.annotations().clone().unwrap_or_default(),
        owner: String::new(),
        cgroup_path: Some(cgroup_path.to_path_buf()),
        host_mounts: false,
        creator_pid: me,
        creator_start: sys::proc_start_time(me).map(|s| s.0).unwrap_or(0),
        config: serde_json::to_value(&b.spec).ok(),
        ub: (!ub_settings.is_empty())
            .then(|| serde_json::to_value(ub_settings).ok())
            .flatten(),
        disk: None,
        net_links: vec![],
    }
}

/// Cgroup files libcgroups does not write (BFQ weight, v2 memory.high, cpu.weight).
pub(super) fn write_ub_files(
    cgroup: &Cgroup,
    ub_plan: &crate::ub::apply::Plan,
) -> Result<(), ContainerError> {
    for (ctrl, file, value) in &ub_plan.cgroup_files {
        cgroup.write_file(ctrl, file, value)?;
    }
    if let Some(w) = ub_plan.io_weight {
        if let Some(warning) = crate::ub::apply::write_io_weight(cgroup, w)? {
            tracing::warn!("{warning}");
        }
    }
    Ok(())
}

/// Undo a failed create: kill and remove the cgroup (with everything in it), then the record.
/// The last step of `create` and `restore`: the record says `status` and has no creator any
/// more, then the pid file is written; if either fails, everything is undone.
pub(super) fn commit(
    locked: Locked,
    cgroup: &Cgroup,
    pid: i32,
    rec: &mut Record,
    status: Status,
    pid_file: Option<&Path>,
) -> Result<Locked, ContainerError> {
    rec.status = status;
    rec.creator_pid = 0;
    rec.creator_start = 0;
    if let Err(e) = locked.write(rec) {
        abandon(locked, Some(cgroup), pid, rec);
        return Err(e.into());
    }
    if let Some(p) = pid_file {
        if let Err(e) = write_pid_file(p, pid, &rec.id) {
            abandon(locked, Some(cgroup), pid, rec);
            return Err(e);
        }
    }
    Ok(locked)
}

pub(super) fn abandon(locked: Locked, cgroup: Option<&Cgroup>, pid: i32, rec: &Record) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    if let Some(cg) = cgroup {
        if let Err(e) = cg.destroy() {
            tracing::warn!("cleaning up after failed create: {e}");
        }
    }
    if let Err(e) = crate::net::teardown(&rec.id, &rec.net_links) {
        tracing::warn!("cleaning up after failed create: {e}");
    }
    if rec.host_mounts {
        if let Err(e) = crate::rootfs::unmount_under(&rec.rootfs) {
            tracing::warn!("cleaning up after failed create: {e}");
        }
    }
    if let Some(d) = crate::disk::Made::from_record(rec.disk.as_ref()) {
        if let Err(e) = crate::disk::teardown(&d, true) {
            // The state stays, so that `delete --force` can finish the job.
            tracing::warn!("cleaning up after failed create: {e}");
            return;
        }
    }
    let _ = locked.remove();
}

pub fn create(store: &Store, id: &str, opts: &CreateOptions) -> Result<Container, ContainerError> {
    create_with_console(store, id, opts, false).map(|(c, _)| c)
}

/// Connect to the caller's console socket (as the host's root, before any namespace).
pub(super) fn connect_console(
    path: &Path,
    id: &str,
    min_fd: i32,
) -> Result<OwnedFd, ContainerError> {
    let io = |source| ContainerError::Io {
        id: id.into(),
        what: format!("--console-socket {}", path.display()),
        source,
    };
    let s = std::os::unix::net::UnixStream::connect(path).map_err(io)?;
    crate::process::channel::raise(OwnedFd::from(s), min_fd).map_err(|e| io(e.into()))
}

/// `create`; with `own_console` (foreground `run`), a terminal process without a console
/// socket gets a socketpair whose other end is returned, to receive the pty master on.
pub(super) fn create_with_console(
    store: &Store,
    id: &str,
    opts: &CreateOptions,
    own_console: bool,
) -> Result<(Container, Option<std::os::unix::net::UnixStream>), ContainerError> {
    bundle::validate_id(id).map_err(ContainerError::InvalidId)?;
    let (b, ub_settings, ub_plan) = load_bundle(opts.bundle)?;
    let disk_plan = crate::disk::Plan::new(&ub_settings.disk, &b.dir, &b.rootfs)?;
    // io.runvz.net.*: parsed here; the host is checked just before the record is made.
    let net = crate::net::Plan::from_spec(&b.spec)?;
    let linux = b.spec.linux().as_ref();
    let cgroup_path = cgroups::path_for(linux.and_then(|l| l.cgroups_path().as_deref()), id)?;
    let plan = Plan::from_spec(&b.spec);
    let terminal = b
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let io = |e: std::io::Error| ContainerError::Io {
        id: id.into(),
        what: "console socketpair".into(),
        source: e,
    };
    let mut ours = None;
    let console = match opts.console_socket {
        Some(p) if terminal => Some(connect_console(p, id, 3 + opts.preserve_fds)?),
        None if terminal && own_console => {
            let (a, b) = std::os::unix::net::UnixStream::pair().map_err(io)?;
            ours = Some(a);
            Some(
                crate::process::channel::raise(b.into(), 3 + opts.preserve_fds)
                    .map_err(|e| io(e.into()))?,
            )
        }
        None if terminal => {
            return Err(ContainerError::Config(
                "process.terminal is true: pass --console-socket (or use run without --detach)"
                    .into(),
            ))
        }
        _ => None,
    };
    let seccomp = match linux.and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Some(crate::seccomp::compile(s)?),
        None => None,
    };
    crate::rootfs::check_mount_options(&b.spec)
        .map_err(|e| ContainerError::Config(e.to_string()))?;
    if let Some(n) = &net {
        n.preflight(id)?;
    }
    // Everything the user can get wrong is checked above; from here on we make things.
    let mut rec = creating_record(id, &b, &cgroup_path, &ub_settings);
    rec.host_mounts = !plan.has(oci_spec::runtime::LinuxNamespaceType::Mount);
    rec.net_links = net.as_ref().map(|n| n.host_links(id)).unwrap_or_default();
    let mut disk_made = disk_plan
        .as_ref()
        .map(|p| p.intent(&store.root().join(id).join("disk")))
        .transpose()?;
    rec.disk = disk_made.as_ref().and_then(|m| m.to_record());
    let locked = store.claim(id, &rec)?;
    let fifo: PathBuf = locked.fifo_path();
    if let Err(e) = nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)) {
        let _ = locked.remove();
        return Err(ContainerError::Io {
            id: id.into(),
            what: "exec fifo".into(),
            source: e.into(),
        });
    }
    let cgroup = match Cgroup::open(&cgroup_path, None) {
        Ok(c) => c,
        Err(e) => {
            let _ = locked.remove();
            return Err(e.into());
        }
    };
    // With a disk quota the container's root is the runtime's overlay, not the bundle rootfs.
    let root = match (&disk_plan, disk_made.as_mut()) {
        (Some(plan), Some(made)) => {
            let r = crate::disk::setup(plan, made, &mut |m| {
                rec.disk = m.to_record();
                locked.write(&rec).map_err(|e| e.to_string())
            });
            rec.disk = made.to_record();
            match r {
                Ok(root) => root,
                Err(e) => {
                    abandon(locked, Some(&cgroup), 0, &rec);
                    return Err(e.into());
                }
            }
        }
        _ => b.rootfs.clone(),
    };
    let cfg = InitConfig {
        id,
        spec: &b.spec,
        bundle: &b.dir,
        rootfs: &root,
        fifo: &fifo,
        no_pivot: opts.no_pivot,
        preserve_fds: opts.preserve_fds,
        plan,
        seccomp: seccomp.as_ref(),
        console: console.as_ref().map(|c| c.as_raw_fd()),
    };
    let spec = &b.spec;
    let result = process::spawn(&cfg, &cgroup, &mut |ev| match ev {
        Event::InitPid(pid) => {
            rec.pid = pid;
            rec.pid_start = sys::proc_start_time(pid).map(|s| s.0).unwrap_or(0);
            locked.write(&rec).map_err(|e| e.to_string())?;
            // The init waits for our go-ahead: its network exists before any hook runs.
            match &net {
                Some(n) => n.setup(id, pid).map_err(|e| e.to_string()),
                None => Ok(()),
            }
        }
        Event::HooksRuntime(pid) => {
            let st = hooks::state_json(spec, id, "creating", pid, &b.dir);
            if let Some(h) = spec.hooks().as_ref() {
                // prestart keeps the status of its runtime-spec 1.0 definition ("after start is
                // called": created), as crun and the validation suite have it; the hooks that
                // spec 1.1+ defines inside create see "creating".
                let pre_st = hooks::state_json(spec, id, "created", pid, &b.dir);
                #[allow(deprecated)]
                let pre = h.prestart().clone().unwrap_or_default();
                hooks::run("prestart", &pre, &pre_st).map_err(|e| e.to_string())?;
                let cr = h.create_runtime().clone().unwrap_or_default();
                hooks::run("createRuntime", &cr, &st).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    });
    let pid = match result {
        Ok(pid) => pid,
        Err(e) => {
            abandon(locked, Some(&cgroup), rec.pid, &rec);
            return Err(e.into());
        }
    };
    if let Err(e) = write_ub_files(&cgroup, &ub_plan) {
        abandon(locked, Some(&cgroup), pid, &rec);
        return Err(e);
    }
    let locked = commit(
        locked,
        &cgroup,
        pid,
        &mut rec,
        Status::Created,
        opts.pid_file,
    )?;
    let dir = locked.dir.clone();
    drop(locked);
    Ok((Container { rec, dir }, ours))
}
