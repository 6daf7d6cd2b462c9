//! Every input kept in `fuzz/corpus/<target>/` (seeds, and regressions the fuzzers found)
//! replayed through the fuzz targets' own checks, on the stable toolchain: a fixed bug stays
//! fixed without a nightly build.
#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus folder must exist") {
        let path = entry.expect("a corpus entry").path();
        let data = std::fs::read(&path).expect("a corpus file");
        eprintln!("{target}: {}", path.display());
        check(&data);
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[test]
fn admission_review_corpus() {
    replay("admission_review", checks::admission_review);
}

#[test]
fn table_file_corpus() {
    replay("table_file", checks::table_file);
}

#[test]
fn inject_documents_corpus() {
    replay("inject_documents", checks::inject_documents);
}
