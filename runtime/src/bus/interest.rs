//! Who listens: a NATS bus sends a namespace's events over the network only while some bus
//! subscribes to them there.
//!
//! Every stored event is published on the live bus, but most namespaces, most of the time,
//! have no live subscriber on another node (read models follow the event *store*, through
//! durable subscriptions). Sending each event anyway costs the publishing node an encode, a
//! NATS message and a task wake-up per event, and the server a message it throws away: on a
//! persisted cross-node ask, about a third of the node's work. So a bus first asks whether
//! anyone listens.
//!
//! # The protocol
//!
//! - **Listeners answer.** Each live subscription of a NATS bus also subscribes to the
//!   *interest subject* of its namespace, `aether.<ns>.bus.interest` (`aether.*.bus.interest`
//!   for a pattern that spans namespaces), and answers every request there with an empty
//!   message.
//! - **Publishers probe.** Before it stops sending events of namespace `ns`, a publishing bus
//!   sends a request on `aether.<ns>.bus.interest`, noting the time `t` just before. The
//!   server answers "no responders" (status 503) only when no subscription matched as it
//!   handled the probe, which was after `t`; the publisher then keeps quiet for events
//!   published before `t +` [`LEASE`]. Any other outcome (an answer, a timeout, an error)
//!   means send. While a namespace keeps publishing, the probe is renewed when half the lease
//!   is left (about 20 probes a second); an answered probe is repeated after a second; an
//!   idle namespace lets its lease lapse.
//! - **A new listener waits out the lease.** A new subscription publishes a check message on
//!   the interest subject after subscribing, on the same connection. When it comes back
//!   through its own interest subscription (time `s`), the server holds both subscriptions:
//!   it handles one connection's operations in order (a flush would prove nothing, it only
//!   hands them to the socket). It then waits [`LEASE`] and a margin before it counts as made.
//!   A publisher keeping quiet for an event published after that relies on a probe sent after
//!   `s`, which the server handled after the subscription: it was answered, and the publisher
//!   sends. So "every event published after `subscribe` returns is delivered" still holds,
//!   with no assumption on how long a message takes, only that clocks tick at the same rate
//!   over a tenth of a second. A check that does not come back (the user may not subscribe
//!   or publish there) fails the subscription with an error instead of a silent nothing.
//!
//! The price is [`LEASE`] and a round trip added to every live subscription on a NATS bus,
//! and the probes of each publishing namespace. What it does not change: live delivery
//! still has no promise across a disconnection (a listener whose connection is back misses
//! up to one lease more), and a cluster of NATS servers propagates subscriptions between
//! servers asynchronously, as before. A plain NATS client that follows the live subjects must
//! answer the probe too (see `docs/wire.md`), or the bus be made with
//! [`BusConfig::forward_unheard`](super::BusConfig::forward_unheard).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::names::Namespace;

/// How long a probe that found no listener keeps a publisher quiet, counted from just before
/// the probe was sent. A new subscription waits this long (and [`MARGIN`]) before it returns.
pub const LEASE: Duration = Duration::from_millis(100);

/// What a new subscription waits beyond [`LEASE`]: clock-rate differences and timer slack.
pub const MARGIN: Duration = Duration::from_millis(5);

/// How long a probe waits for an answer; no answer in time counts as someone listening.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the prober looks at the namespaces published since it last looked.
const ROUND: Duration = Duration::from_millis(25);

/// How long a probe that was answered keeps its namespace open before the next probe: sending
/// is always safe, so there is no hurry to learn that the listener left.
const OPEN_HOLD: Duration = Duration::from_secs(1);

/// The namespace token a cross-namespace subscription publishes its check message under
/// (`aether._check.bus.interest`): an exact subscription uses its own namespace.
pub const CHECK_NAMESPACE: &str = "_check";

/// The interest subject of a namespace token (`*` for every namespace).
pub fn interest_subject(namespace: &str) -> String {
    format!("aether.{namespace}.bus.interest")
}

/// Whether `subject` is an interest subject (`aether.<token>.bus.interest`).
pub fn is_interest_subject(subject: &str) -> bool {
    subject
        .strip_prefix("aether.")
        .and_then(|s| s.strip_suffix(".bus.interest"))
        .is_some_and(|ns| !ns.is_empty() && !ns.contains('.'))
}

/// What the last probe of one namespace found.
#[derive(Default)]
struct Gate {
    /// Nanoseconds after [`Gates::epoch`] until which no bus listens; 0: unknown (send).
    quiet_until: AtomicU64,
    /// Published (or tried to) since the prober last looked.
    used: AtomicBool,
    /// A probe is on its way.
    probing: AtomicBool,
    /// Nanoseconds after [`Gates::epoch`] before which no probe is needed: the last one was
    /// answered (someone listens, so events are sent).
    recheck_at: AtomicU64,
}

/// The gates of one bus, one per namespace it published in.
pub(crate) struct Gates {
    epoch: Instant,
    table: RwLock<HashMap<Namespace, Arc<Gate>>>,
    /// Wakes the prober when a namespace is published in after a quiet round.
    wake: Notify,
    /// The bus is gone: the prober ends.
    closed: AtomicBool,
    /// Never keep quiet (`BusConfig::forward_unheard`).
    always: bool,
}

impl Gates {
    /// Gates for a bus; with `always`, every event is sent and nothing is probed.
    pub fn new(always: bool) -> Arc<Gates> {
        Arc::new(Gates {
            epoch: Instant::now(),
            table: RwLock::new(HashMap::new()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            always,
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether an event of `namespace` published now must be sent to NATS: false only while a
    /// probe's lease says no bus listens. Marks the namespace as in use, so its probe is kept
    /// fresh.
    pub fn open(&self, namespace: &Namespace) -> bool {
        if self.always {
            return true;
        }
        if let Some(gate) = self.table.read().get(namespace) {
            let quiet = self.now() < gate.quiet_until.load(Ordering::Acquire);
            if !gate.used.load(Ordering::Relaxed) {
                gate.used.store(true, Ordering::Relaxed);
                self.wake.notify_one();
            }
            return !quiet;
        }
        self.table
            .write()
            .entry(namespace.clone())
            .or_default()
            .used
            .store(true, Ordering::Relaxed);
        self.wake.notify_one();
        true
    }

    /// Stops the prober.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// The namespaces used since the last round whose lease needs a new probe (none in
    /// flight, less than half a lease left), and whether any namespace was used at all.
    fn due(&self) -> (Vec<(Namespace, Arc<Gate>)>, bool) {
        let now = self.now();
        let renew = now.saturating_add(nanos(LEASE) / 2);
        let mut used = false;
        let mut due = Vec::new();
        for (namespace, gate) in self.table.read().iter() {
            if !gate.used.swap(false, Ordering::Relaxed) {
                continue;
            }
            used = true;
            if now >= gate.recheck_at.load(Ordering::Acquire)
                && gate.quiet_until.load(Ordering::Acquire) <= renew
                && !gate.probing.swap(true, Ordering::AcqRel)
            {
                due.push((namespace.clone(), Arc::clone(gate)));
            }
        }
        (due, used)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Probes the namespaces a bus publishes in, keeping their leases fresh, until the bus is
/// gone. Sleeps while nothing is published.
pub(crate) async fn prober(gates: Weak<Gates>, client: async_nats::Client) {
    loop {
        let Some(strong) = gates.upgrade() else {
            return;
        };
        if strong.always || strong.closed.load(Ordering::Relaxed) {
            return;
        }
        let (due, used) = strong.due();
        for (namespace, gate) in due {
            let sent = strong.now();
            tokio::spawn(probe(client.clone(), namespace, gate, sent));
        }
        if used {
            drop(strong);
            tokio::time::sleep(ROUND).await;
        } else {
            // Nothing published for a round: wait for the next publish (or the bus's end).
            strong.wake.notified().await;
        }
    }
}

/// One probe: the lease starts at `sent`, taken before the request leaves.
async fn probe(client: async_nats::Client, namespace: Namespace, gate: Arc<Gate>, sent: u64) {
    let request = async_nats::Request::new().timeout(Some(PROBE_TIMEOUT));
    let answer = client
        .send_request(interest_subject(namespace.as_str()), request)
        .await;
    let (quiet_until, recheck_at) = match answer {
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            (sent.saturating_add(nanos(LEASE)), 0)
        }
        Ok(_) => (0, sent.saturating_add(nanos(OPEN_HOLD))),
        // A timeout or an error: send, and ask again next round.
        Err(_) => (0, 0),
    };
    gate.recheck_at.store(recheck_at, Ordering::Release);
    gate.quiet_until.store(quiet_until, Ordering::Release);
    gate.probing.store(false, Ordering::Release);
    tracing::trace!(target: "aether::bus", namespace = %namespace, quiet = quiet_until > 0, "interest probed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interest_subjects_are_recognised_and_never_collide_with_topics() {
        assert_eq!(interest_subject("bank"), "aether.bank.bus.interest");
        assert!(is_interest_subject("aether.bank.bus.interest"));
        assert!(is_interest_subject(&interest_subject("*")));
        for not in [
            "aether.bank.bus.events.interest.x",
            "aether.bank.bus.system.interest",
            "aether.bus.interest",
            "aether.a.b.bus.interest",
            "aether.bank.bus.interest.more",
        ] {
            assert!(!is_interest_subject(not), "{not}");
        }
    }

    #[test]
    fn a_gate_is_open_until_a_probe_finds_no_listener_and_opens_again_when_its_lease_ends() {
        let gates = Gates::new(false);
        let ns = Namespace::new("bank").expect("a namespace");
        assert!(gates.open(&ns), "unknown: send");
        let (due, used) = gates.due();
        assert!(used);
        assert_eq!(due.len(), 1, "a used namespace without a lease is probed");
        let (_, gate) = &due[0];
        assert!(gates.due().0.is_empty(), "one probe at a time");
        // The probe found nobody: quiet for a lease from when it was sent.
        gate.quiet_until
            .store(gates.now() + nanos(LEASE), Ordering::Release);
        gate.probing.store(false, Ordering::Release);
        assert!(!gates.open(&ns), "quiet while the lease holds");
        assert!(
            gates.due().0.is_empty(),
            "a fresh lease is not probed again"
        );
        gate.quiet_until.store(gates.now(), Ordering::Release);
        assert!(gates.open(&ns), "a lapsed lease sends again");
        assert_eq!(gates.due().0.len(), 1, "and is probed again");
        let always = Gates::new(true);
        assert!(always.open(&ns));
        assert!(always.due().0.is_empty(), "forward_unheard never probes");
    }
}
