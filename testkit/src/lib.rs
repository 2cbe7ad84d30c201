//! Test your Aether actors against the real thing: real `nats-server` processes, real cluster
//! nodes, real crashes. Add it as a dev-dependency:
//!
//! ```toml
//! [dev-dependencies]
//! aether-testkit = { path = "../aether/testkit" }
//! ```
//!
//! | module | what it gives you |
//! |---|---|
//! | [`nats`] | one JetStream server ([`nats::NatsServer`]) or a 3-server cluster ([`nats::NatsCluster`]) on free loopback ports, with kill, pause (SIGSTOP), resume and restart |
//! | [`cluster`] | N runtimes in the test process joined into one cluster ([`cluster::TestCluster`]), and waiting until it has settled |
//! | [`process`] | your own node binary as processes ([`process::NodeProcess`]): kill (a crash), pause, resume, restart, a line protocol to drive them |
//! | [`poll()`] | a function: wait for a condition with a deadline instead of sleeping and hoping |
//!
//! The servers need a `nats-server` binary (2.11 or newer): set `AETHER_NATS_SERVER`, or put it
//! in `target/tools/nats-server-<version>/bin/` (Aether's `scripts/install-nats-server.sh`
//! does), or on `PATH`. Every process the kit starts dies with the test process (Linux
//! `PR_SET_PDEATHSIG`: when the thread that started it ends, so start them from the test's
//! own thread), and a failed test leaves nothing running. Linux only.
//!
//! Aether's own tests use this kit; `examples/testkit-demo` is a crate of its own that runs a
//! 3-node cluster and kills a node, the way your project would.

#![warn(missing_docs)]

pub mod cluster;
pub mod nats;
pub mod process;

pub use process::poll;
