//! The MNIST files of the repository's `data/mnist`, which the published package leaves out.
//!
//! A test that needs them starts with
//! `let Some(dir) = common::mnist_or_skip("test name") else { return };`: in the repository
//! it runs, in the package it passes without running and prints why. Where the files must be
//! there, so that a skip cannot hide a lost test, absence fails instead: with
//! `FDFA_REQUIRE_DATA=1`, and in CI (`CI` set and not `false`) unless `FDFA_REQUIRE_DATA=0`.

use std::io::Write;
use std::path::PathBuf;

use fdfa::data::DatasetName;

/// The environment variable that makes absent data a failure (`1`) or a skip (`0`).
pub const REQUIRE_DATA_ENV: &str = "FDFA_REQUIRE_DATA";

/// Whether absent data fails the test rather than skipping it.
pub fn data_required() -> bool {
    match std::env::var(REQUIRE_DATA_ENV).as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false"),
    }
}

/// The repository's `data/mnist` when it holds the MNIST files; otherwise `None` after
/// printing that `test` is skipped, or a panic when [`data_required`].
pub fn mnist_or_skip(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    if DatasetName::Mnist.is_in(&dir) {
        return Some(dir);
    }
    assert!(
        !data_required(),
        "{test}: the MNIST files are not in {} and {REQUIRE_DATA_ENV}=1 or CI is set; the \
         repository ships them (the published package does not)",
        dir.display()
    );
    // Straight to the process's stderr: libtest captures only the `eprint!` family, and a
    // skip that says nothing looks like a pass.
    let line = format!(
        "SKIPPED {test}: needs the MNIST files of the repository's data/mnist, which the \
         published package leaves out\n"
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
    None
}
