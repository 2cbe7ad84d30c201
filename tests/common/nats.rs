//! Real `nats-server` processes for tests: the public test kit's (`aether_testkit::nats`).
#[allow(unused_imports)] // each test binary uses a part
pub use aether_testkit::nats::*;
