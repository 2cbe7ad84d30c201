//! `#[derive(EventSourcedActor)]` misuse is a compile error that points at the attribute.
//!
//! The expected messages live in `tests/ui/*.stderr`; regenerate them with
//! `TRYBUILD=overwrite cargo test --test derive_ui` after a deliberate change.

#[test]
fn derive_accepts_good_input_and_rejects_misuse() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
}
