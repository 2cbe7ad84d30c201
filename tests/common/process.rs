//! Cluster nodes as real processes (`examples/cluster_node.rs`), through the public test kit
//! (`aether_testkit::process`), plus where this workspace's binaries are.

use std::path::PathBuf;

#[allow(unused_imports)] // each test binary uses a part
pub use aether_testkit::process::*;

/// The example binary, built by `cargo test` next to the test binaries.
pub fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let bin = debug.join("examples/cluster_node");
    assert!(
        bin.is_file(),
        "{} is missing: cargo test builds examples; run `cargo build --examples`",
        bin.display()
    );
    bin
}

/// The `aether` admin tool, built next to the test binaries (`scripts/test.sh` builds it).
#[allow(dead_code)] // used by some test binaries only
pub fn aether_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("aether");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p aether-cli` (scripts/test.sh does)",
        bin.display()
    );
    bin
}
