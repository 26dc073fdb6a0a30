//! The `--log` / `--log-format` / `--debug` logger, as a minimal `tracing` subscriber.
//! Lines are runc's: text `time="..." level=warning msg="..."` or JSON
//! `{"level":"warning","msg":"...","time":"..."}`. containerd shows the last error line.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

pub struct Logger {
    max: Level,
    json: bool,
    /// Plain `runvz: msg` lines (text format on a terminal or stderr).
    human: bool,
    out: Mutex<Box<dyn Write + Send>>,
}

struct Msg(String);
impl Visit for Msg {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

fn level_name(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

impl Logger {
    pub fn new(out: Box<dyn Write + Send>, json: bool, debug: bool, human: bool) -> Logger {
        Logger {
            max: if debug { Level::DEBUG } else { Level::WARN },
            json,
            human,
            out: Mutex::new(out),
        }
    }

    pub fn line(&self, level: &Level, msg: &str) {
        let time = runvz::state::now_rfc3339();
        let line = if self.human && !self.json {
            match *level {
                Level::ERROR => format!("runvz: {msg}"),
                _ => format!("runvz: {}: {msg}", level_name(level)),
            }
        } else if self.json {
            serde_json::json!({"level": level_name(level), "msg": msg, "time": time}).to_string()
        } else {
            format!("time={time:?} level={} msg={msg:?}", level_name(level))
        };
        if let Ok(mut o) = self.out.lock() {
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
    }
}

impl Subscriber for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        // libcgroups warns about every controller this host lacks, on every call.
        if m.target().starts_with("libcgroups") && self.max < Level::DEBUG {
            return m.level() <= &Level::ERROR;
        }
        m.level() <= &self.max
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut m = Msg(String::new());
        e.record(&mut m);
        self.line(e.metadata().level(), &m.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}
