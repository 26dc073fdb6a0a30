//! The runvz fuzz targets and their driver: AFL++ persistent mode with the `afl` feature,
//! a plain replay of files without it.

pub mod targets;

use std::io::Read;

#[cfg(feature = "afl")]
mod afl {
    // AFL++ looks for these markers in the binary to switch on persistent mode and the
    // deferred fork server (what its __AFL_LOOP / __AFL_INIT macros embed in C).
    #[used]
    static PERSISTENT: [u8; 23] = *b"##SIG_AFL_PERSISTENT##\0";
    #[used]
    static DEFERRED: [u8; 26] = *b"##SIG_AFL_DEFER_FORKSRV##\0";

    extern "C" {
        // From /usr/lib/afl/afl-compiler-rt.o.
        pub fn __afl_persistent_loop(max_cnt: u32) -> i32;
        pub fn __afl_manual_init();
    }
}

/// A panic anywhere must end the process with SIGABRT, which AFL counts as a crash.
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}

/// Run `target` on AFL's inputs (feature `afl`), else on each file named in the arguments,
/// else once on stdin.
pub fn main(target: fn(&[u8])) {
    abort_on_panic();
    let mut buf = Vec::new();
    #[cfg(feature = "afl")]
    {
        // SAFETY: AFL++'s documented entry points; called from the main thread only.
        unsafe { afl::__afl_manual_init() };
        // SAFETY: as above; the loop re-reads stdin, which afl-fuzz rewinds each round.
        while unsafe { afl::__afl_persistent_loop(10_000) } != 0 {
            buf.clear();
            if std::io::stdin().read_to_end(&mut buf).is_ok() {
                target(&buf);
            }
        }
        return;
    }
    #[allow(unreachable_code)]
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        std::io::stdin()
            .read_to_end(&mut buf)
            .expect("reading stdin");
        target(&buf);
    }
    for f in files {
        let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
        target(&data);
    }
}
