//! `events`: the container's resource usage once (`--stats`) or every interval, and its OOM
//! kills as they happen, until the container stops. The caller prints each event.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{alive, Container, ContainerError};
use crate::cgroups::stats::Stats;
use crate::state::Store;

/// What `events` reports, in runc's JSON shape (`{"type":..,"id":..,"data":..}`).
pub enum Event {
    Stats(Box<Stats>),
    Oom,
}

impl Event {
    /// One line of runc's output: the fields in runc's order, `data` left out of `oom`.
    pub fn to_json(&self, id: &str) -> String {
        #[derive(serde::Serialize)]
        struct Envelope<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            data: Option<&'a Stats>,
        }
        let (kind, data) = match self {
            Event::Stats(s) => ("stats", Some(&**s)),
            Event::Oom => ("oom", None),
        };
        serde_json::to_string(&Envelope { kind, id, data }).unwrap_or_default()
    }
}

/// The container, which must not be stopped (runc: "container with id X is not running").
fn live(store: &Store, id: &str) -> Result<Container, ContainerError> {
    let c = Container::load(store, id)?;
    c.require_live()?;
    Ok(c)
}

fn no_cgroup(id: &str) -> ContainerError {
    ContainerError::Config(format!("container {id}: it has no cgroup to report on"))
}

/// One stats sample (`events --stats`).
pub fn stats(store: &Store, id: &str) -> Result<Stats, ContainerError> {
    let c = live(store, id)?;
    let cg = c.cgroup().ok_or_else(|| no_cgroup(id))?;
    Ok(cg.stats()?)
}

/// Stats every `interval` and OOM events as they come, passed to `emit`, until the container's
/// init exits (then `Ok`). An error of `emit` (e.g. a closed stdout) ends the stream.
pub fn events(
    store: &Store,
    id: &str,
    interval: Duration,
    mut emit: impl FnMut(&Event) -> std::io::Result<()>,
) -> Result<(), ContainerError> {
    let c = live(store, id)?;
    let cg = c.cgroup().ok_or_else(|| no_cgroup(id))?;
    let io = |what: &str, e: std::io::Error| ContainerError::Io {
        id: id.into(),
        what: what.into(),
        source: e,
    };
    // SAFETY: pidfd_open with a pid and no flags; returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, c.rec.pid, 0) };
    if raw < 0 {
        return Err(io("pidfd_open", std::io::Error::last_os_error()));
    }
    // SAFETY: the fd was just returned by pidfd_open and is owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    if !alive(c.rec.pid, c.rec.pid_start) {
        return Ok(());
    }
    let mut oom = cg.oom_watch()?;
    // As runc: the first stats event comes after one interval.
    let mut next = Instant::now() + interval;
    loop {
        if Instant::now() >= next {
            match cg.stats() {
                Ok(s) => emit(&Event::Stats(Box::new(s))).map_err(|e| io("writing", e))?,
                // The cgroup went away with the container: the end, not an error.
                Err(_) if !alive(c.rec.pid, c.rec.pid_start) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            next += interval;
        }
        let wait = next.saturating_duration_since(Instant::now());
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [
            PollFd::new(oom.fd(), PollFlags::POLLIN),
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(io("poll", e.into())),
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let (oom_ready, exited) = (ready(&fds[0]), ready(&fds[1]));
        // An OOM kill of the init shows on both: report the OOM before ending.
        if oom_ready && oom.fired() {
            emit(&Event::Oom).map_err(|e| io("writing", e))?;
        }
        if exited {
            return Ok(());
        }
    }
}
