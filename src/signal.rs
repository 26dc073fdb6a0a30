//! Signal names and numbers as runc accepts them: `9`, `KILL`, `SIGKILL`, `sigkill`.

use nix::sys::signal::Signal;

#[derive(Debug, thiserror::Error)]
#[error("invalid signal {0:?}: expected a number or a name such as TERM, SIGKILL")]
pub struct SignalError(pub String);

pub fn parse(s: &str) -> Result<Signal, SignalError> {
    let err = || SignalError(s.to_string());
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| err());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn forms() {
        for s in ["9", "KILL", "SIGKILL", "kill", "sigkill"] {
            assert_eq!(parse(s).unwrap(), Signal::SIGKILL, "{s}");
        }
        assert_eq!(parse("TERM").unwrap(), Signal::SIGTERM);
        for s in ["", "0", "65", "-1", "SIGFOO", "KILLX", "９"] {
            assert!(parse(s).is_err(), "{s} accepted");
        }
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,16}") {
            let _ = parse(&s);
        }

        #[test]
        fn name_and_number_round_trip(i in 0usize..Signal::iterator().count()) {
            let sig = Signal::iterator().nth(i).unwrap();
            let name = sig.as_str();
            prop_assert_eq!(parse(name).unwrap(), sig);
            prop_assert_eq!(parse(&name[3..].to_ascii_lowercase()).unwrap(), sig);
            prop_assert_eq!(parse(&(sig as i32).to_string()).unwrap(), sig);
        }

        #[test]
        fn numbers_outside_the_table_are_refused(n in any::<i64>()) {
            let known = Signal::iterator().any(|s| s as i64 == n);
            prop_assert_eq!(parse(&n.to_string()).is_ok(), known);
        }
    }
}
