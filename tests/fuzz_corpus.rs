//! The fuzz corpus as a regression suite: every kept input of every target (fuzz/corpus/*/)
//! runs through every fuzz target, without AFL. A panic here is a bug a fuzzer once found
//! (or could find) in what users hand runvz. `hack/fuzz replay` runs this test.

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::Path;

#[test]
fn every_corpus_input_through_every_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut inputs = vec![];
    for (name, _) in targets::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for e in entries {
            let path = e.expect("corpus entry").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            inputs.push((path, data));
        }
    }
    assert!(
        inputs.len() > 100,
        "the corpus has only {} inputs",
        inputs.len()
    );
    for (path, data) in &inputs {
        for (name, target) in targets::TARGETS {
            let r = std::panic::catch_unwind(|| target(data));
            assert!(r.is_ok(), "target {name} panicked on {}", path.display());
        }
    }
    println!(
        "{} inputs through {} targets: no panic",
        inputs.len(),
        targets::TARGETS.len()
    );
}
