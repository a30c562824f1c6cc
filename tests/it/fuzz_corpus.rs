//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`, seeds and past findings)
//! through the harnesses of `c2q::fuzz` on stable Rust: none may panic. The corpus holds the
//! reproducer of the pbtxt round-trip bug (an Argument field sent with the wrong wire type)
//! and a Datum with a truncated JPEG.

use std::path::Path;

#[test]
fn corpus_replays_without_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut files = 0;
    for target in c2q::fuzz::TARGETS {
        let run = c2q::fuzz::harness(target).unwrap();
        let dir = root.join(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for e in entries {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            run(&bytes);
            // Every prefix too: truncated inputs are the commonest damage.
            for cut in [
                0,
                1,
                2,
                bytes.len() / 3,
                bytes.len() / 2,
                bytes.len().saturating_sub(1),
            ] {
                run(&bytes[..cut.min(bytes.len())]);
            }
            files += 1;
        }
    }
    assert!(files >= 7, "only {files} corpus files");
}

/// The harnesses check real properties: the pbtxt round trip of the fuzz reproducer holds.
#[test]
fn reproducer_round_trips() {
    c2q::fuzz::net_binary(&[0x12, 0x04, 0x2a, 0x02, 0x38, 0x2a]);
    c2q::fuzz::net_text(b"op { arg { name: \"x\" 7: 42 } }\n");
}
