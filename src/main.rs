//! The runvz command line: parse runc's flags, call the library, turn errors into one-line
//! messages and exit codes.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;

use cli::{Cli, Cmd};
use runvz::container::{self, CreateOptions, RunOptions};
use runvz::state::Store;

fn print_version() {
    println!("runvz version {}", env!("CARGO_PKG_VERSION"));
    println!(
        "commit: {}",
        option_env!("RUNVZ_COMMIT").unwrap_or("unknown")
    );
    println!("spec: {}", runvz::SPEC_VERSION);
}

fn create_opts(a: &cli::CreateArgs) -> Result<CreateOptions<'_>> {
    if a.preserve_fds < 0 {
        bail!("--preserve-fds must not be negative");
    }
    Ok(CreateOptions {
        bundle: &a.bundle,
        pid_file: a.pid_file.as_deref(),
        no_pivot: a.no_pivot,
        preserve_fds: a.preserve_fds,
        console_socket: a.console_socket.as_deref(),
    })
}

/// `ps` output (as runc: ps(1) run on the host) reduced to the container's processes.
fn ps_table(pids: &[i32], args: &[String]) -> Result<()> {
    let args: Vec<String> = if args.is_empty() {
        vec!["-ef".into()]
    } else {
        args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .context("running ps")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .context("ps output has no PID column")?;
    println!("{header}");
    for l in lines {
        if l.split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok())
            .is_some_and(|p| pids.contains(&p))
        {
            println!("{l}");
        }
    }
    Ok(())
}

/// The OCI features document, true to what runvz implements.
fn features() -> serde_json::Value {
    let mut caps: Vec<String> = caps::all().into_iter().map(|c| c.to_string()).collect();
    caps.sort();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": runvz::SPEC_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "lazytime",
            "mand", "noatime", "nodev", "nodiratime", "noexec", "nolazytime", "nomand", "norelatime",
            "nostrictatime", "nosuid", "private", "rbind", "relatime", "remount", "ro", "rprivate", "rshared",
            "rslave", "runbindable", "rw", "shared", "slave", "strictatime", "suid", "sync", "tmpcopyup",
            "unbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86_64"],
                // known = recognized (TSYNC and WAIT_KILLABLE_RECV are refused with an error)
                "knownFlags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                    "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
                "supportedFlags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}}
        },
        "annotations": {
            "io.runvz.ub.*": "OpenVZ user beancounters (docs/beancounters.md)",
            "io.runvz.diskspace": "disk quota soft[:hard] in 1 KiB blocks (docs/disk.md)",
            "io.runvz.diskinodes": "inode quota soft[:hard] (docs/disk.md)",
            "io.runvz.disk.*": "backend=auto|btrfs|image, image=PATH, ephemeral=true (docs/disk.md)",
            "org.opencontainers.runc.checkpoint.enabled": "true"
        }
    })
}

fn criu_flags(a: &cli::CriuFlagArgs) -> container::CriuFlags {
    container::CriuFlags {
        tcp_established: a.tcp_established,
        ext_unix_sk: a.ext_unix_sk,
        shell_job: a.shell_job,
        file_locks: a.file_locks,
        empty_net: a.empty_ns.is_some(),
        manage_cgroups_mode: a.manage_cgroups_mode.as_deref().map(|m| match m {
            "none" => 1,
            "props" => 2,
            "soft" => 3,
            "full" => 4,
            _ => 5,
        }),
        lazy_pages: a.lazy_pages,
    }
}

fn run(cli: Cli) -> Result<i32> {
    if cli.version {
        print_version();
        return Ok(0);
    }
    let store = Store::new(&cli.root);
    let Some(cmd) = cli.cmd else {
        bail!("no command given (see runvz --help)");
    };
    match cmd {
        Cmd::Create(a) => {
            runvz::process::exe::ensure_sealed()?;
            container::create(&store, &a.id, &create_opts(&a)?)?;
        }
        Cmd::Run { create, detach, .. } => {
            runvz::process::exe::ensure_sealed()?;
            let opts = RunOptions {
                create: create_opts(&create)?,
                detach,
            };
            return Ok(container::run(&store, &create.id, &opts)?);
        }
        Cmd::Exec(a) => {
            runvz::process::exe::ensure_sealed()?;
            let process = match &a.process {
                Some(p) => {
                    let data =
                        std::fs::read(p).with_context(|| format!("--process {}", p.display()))?;
                    Some(
                        serde_json::from_slice(&data)
                            .with_context(|| format!("--process {}", p.display()))?,
                    )
                }
                None => None,
            };
            if a.preserve_fds < 0 {
                bail!("--preserve-fds must not be negative");
            }
            let opts = container::ExecOptions {
                process,
                args: a.args.clone(),
                tty: a.tty,
                console_socket: a.console_socket.as_deref(),
                detach: a.detach,
                pid_file: a.pid_file.as_deref(),
                cwd: a.cwd.clone(),
                env: a.env.clone(),
                user: a.user.clone(),
                additional_gids: a.additional_gids.clone(),
                caps: a.cap.clone(),
                no_new_privs: a.no_new_privs,
                preserve_fds: a.preserve_fds,
                cgroups: a.cgroup.clone(),
            };
            return Ok(container::exec(&store, &a.id, &opts)?);
        }
        Cmd::Checkpoint(a) => {
            let criu = cli.criu.clone().unwrap_or_else(|| "criu".into());
            let page_server = match &a.page_server {
                Some(s) => {
                    let (addr, port) = s
                        .rsplit_once(':')
                        .and_then(|(h, p)| Some((h.to_string(), p.parse::<i32>().ok()?)))
                        .with_context(|| format!("--page-server {s}: expected ADDRESS:PORT"))?;
                    Some((addr, port))
                }
                None => None,
            };
            let opts = container::CheckpointOptions {
                criu: &criu,
                image_path: &a.criu.image_path,
                work_path: a.criu.work_path.as_deref(),
                parent_path: a.parent_path.as_deref(),
                leave_running: a.leave_running,
                tcp_skip_in_flight: a.tcp_skip_in_flight,
                link_remap: a.link_remap,
                pre_dump: a.pre_dump,
                page_server,
                status_fd: a.status_fd,
                criu_pid: None,
                flags: criu_flags(&a.criu.flags),
            };
            container::checkpoint(&store, &a.id, &opts)?;
        }
        Cmd::Restore(a) => {
            let criu = cli.criu.clone().unwrap_or_else(|| "criu".into());
            let opts = container::RestoreOptions {
                criu: &criu,
                bundle: &a.bundle,
                image_path: &a.criu.image_path,
                work_path: a.criu.work_path.as_deref(),
                detach: a.detach,
                pid_file: a.pid_file.as_deref(),
                console_socket: a.console_socket.as_deref(),
                flags: criu_flags(&a.criu.flags),
            };
            return Ok(container::restore(&store, &a.id, &opts)?);
        }
        Cmd::Migrate(a) => {
            let criu = cli.criu.clone().unwrap_or_else(|| "criu".into());
            let opts = container::MigrateOptions {
                criu: &criu,
                dest: &a.dest,
                token: &a.token_file,
                page_server_port: a.page_server_port,
                shared_rootfs: a.shared_rootfs,
                work_path: a.work_path.as_deref(),
                flags: criu_flags(&a.flags),
            };
            let r = container::migrate(&store, &a.id, &opts)?;
            if a.format == "json" {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "migrated {} to {} ({}): rootfs pre-copy {} entries, {} KiB in {} ms; frozen {} ms = dump {} ms + copy {} ms ({} changed entries, images {} KiB) + restore {} ms{}",
                    r.id, r.dest, r.mode, r.precopy_entries, r.precopy_bytes / 1024, r.precopy_ms,
                    r.frozen_ms, r.dump_ms, r.copy_ms, r.changed_entries, r.image_bytes / 1024,
                    r.restore_ms,
                    if r.pages_ms > 0 { format!("; all pages pulled {} ms after the freeze", r.pages_ms) } else { String::new() }
                );
            }
        }
        Cmd::MigrateReceive(a) => {
            let criu = cli.criu.clone().unwrap_or_else(|| "criu".into());
            let runvz = std::env::current_exe().context("finding our own binary")?;
            let opts = container::ReceiveOptions {
                listen: &a.listen,
                token: &a.token_file,
                bundles: &a.bundles,
                cgroup_prefix: a.cgroup_prefix.as_deref(),
                once: a.once,
                runvz: &runvz,
                criu: &criu,
            };
            use std::io::Write;
            container::receive(
                &store,
                &opts,
                &mut |addr| {
                    println!("listening on {addr}");
                    let _ = std::io::stdout().flush();
                },
                &mut |id, pid, peer| {
                    println!("received {id} from {peer}: running as pid {pid}");
                    let _ = std::io::stdout().flush();
                },
            )?;
        }
        Cmd::Start { id } => container::start(&store, &id)?,
        Cmd::Pause { id } => container::pause(&store, &id, true)?,
        Cmd::Resume { id } => container::pause(&store, &id, false)?,
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => {
            let pids = container::pids(&store, &id)?;
            if format == "json" {
                println!("{}", serde_json::to_string(&pids)?);
            } else {
                ps_table(&pids, &ps_args)?;
            }
        }
        Cmd::Events {
            stats,
            interval,
            id,
        } => {
            if stats {
                let s = container::Event::Stats(Box::new(container::stats(&store, &id)?));
                println!("{}", s.to_json(&id));
            } else {
                container::events(&store, &id, interval, |e| {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{}", e.to_json(&id))?;
                    out.flush()
                })?;
            }
        }
        Cmd::Features => println!("{}", serde_json::to_string_pretty(&features())?),
        Cmd::State { id } => {
            let st = container::state(&store, &id)?;
            println!("{}", serde_json::to_string_pretty(&st)?);
        }
        Cmd::Kill { all, id, signal } => {
            let sig = runvz::signal::parse(&signal)?;
            container::kill(&store, &id, sig, all)?;
        }
        Cmd::Delete { force, id } => container::delete(&store, &id, force)?,
        Cmd::List { format, quiet } => {
            let all = container::list(&store)?;
            let mut out = std::io::stdout().lock();
            if quiet {
                for s in &all {
                    writeln!(out, "{}", s["id"].as_str().unwrap_or(""))?;
                }
            } else if format == "json" {
                writeln!(out, "{}", serde_json::to_string(&all)?)?;
            } else {
                writeln!(
                    out,
                    "{:<12} {:<8} {:<10} {:<40} {:<30} OWNER",
                    "ID", "PID", "STATUS", "BUNDLE", "CREATED"
                )?;
                for s in &all {
                    writeln!(
                        out,
                        "{:<12} {:<8} {:<10} {:<40} {:<30} {}",
                        s["id"].as_str().unwrap_or(""),
                        s["pid"],
                        s["status"].as_str().unwrap_or(""),
                        s["bundle"].as_str().unwrap_or(""),
                        s["created"].as_str().unwrap_or(""),
                        s["owner"].as_str().unwrap_or("")
                    )?;
                }
            }
        }
        Cmd::Beancounters { ids, format } => {
            let rows = container::beancounters(&store, &ids)?;
            if format == "json" {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&runvz::ub::table::json(&rows))?
                );
            } else {
                print!("{}", runvz::ub::table::text(&rows));
            }
        }
        Cmd::Update(a) => {
            let patch = a.patch().map_err(anyhow::Error::msg)?;
            let changes = a.ub.changes();
            if changes.is_empty() && patch.as_object().is_some_and(|o| o.is_empty()) {
                bail!("update: nothing to change (e.g. --memory 256m, --pids-limit 100, -r resources.json)");
            }
            if patch.as_object().is_some_and(|o| !o.is_empty()) {
                container::update(&store, &a.id, &patch)?;
            }
            if !changes.is_empty() {
                for w in container::set(&store, &a.id, &changes)? {
                    tracing::warn!("{w}");
                }
            }
        }
        Cmd::Set(a) => {
            let changes = a.ub.changes();
            if changes.is_empty() {
                bail!(
                    "set: nothing to change (e.g. --numproc 100:120, --ram 512M, --cpuunits 1000)"
                );
            }
            for w in container::set(&store, &a.id, &changes)? {
                tracing::warn!("{w}");
            }
        }
        Cmd::Spec { bundle, .. } => {
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("{} already exists; remove it first", path.display());
            }
            let spec = oci_spec::runtime::Spec::default();
            let data = serde_json::to_string_pretty(&spec)?;
            std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(0)
}

fn main() -> ExitCode {
    let args = cli::normalize_args(std::env::args().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let json = cli.log_format == "json";
    let out: Box<dyn Write + Send> = match &cli.log {
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("runvz: --log {}: {e}", p.display());
                return ExitCode::from(1);
            }
        },
        None => Box::new(std::io::stderr()),
    };
    let to_file = cli.log.is_some();
    let logger = std::sync::Arc::new(cli::log::Logger::new(out, json, cli.debug, !to_file));
    let _ = tracing::subscriber::set_global_default(LoggerRef(logger.clone()));
    match run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let msg = format!("{e:#}");
            logger.line(&tracing::Level::ERROR, &msg);
            if to_file {
                eprintln!("runvz: {msg}");
            }
            ExitCode::from(1)
        }
    }
}

/// Lets main keep a handle on the global logger for the final error line.
struct LoggerRef(std::sync::Arc<cli::log::Logger>);
impl tracing::Subscriber for LoggerRef {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        self.0.enabled(m)
    }
    fn new_span(&self, a: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        self.0.new_span(a)
    }
    fn record(&self, i: &tracing::span::Id, r: &tracing::span::Record<'_>) {
        self.0.record(i, r)
    }
    fn record_follows_from(&self, a: &tracing::span::Id, b: &tracing::span::Id) {
        self.0.record_follows_from(a, b)
    }
    fn event(&self, e: &tracing::Event<'_>) {
        self.0.event(e)
    }
    fn enter(&self, i: &tracing::span::Id) {
        self.0.enter(i)
    }
    fn exit(&self, i: &tracing::span::Id) {
        self.0.exit(i)
    }
}
