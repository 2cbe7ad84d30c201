//! A read model for projection tests: totals per counter, the offset stored in the same write,
//! a count of how often each (actor, version) was applied, and a switch to crash on purpose.

use std::collections::HashMap;
use std::sync::Arc;

use aether::bus::{Offset, ReadModel, ReadModelError, StoredEvent};
use parking_lot::Mutex;

/// The "database" of the read model: survives a crash of the projection (it is shared).
#[derive(Debug, Default)]
pub struct LedgerDb {
    pub offset: Option<Offset>,
    pub totals: HashMap<String, u64>,
    /// How many times each (actor id, version) was applied: must end at exactly 1 each.
    pub applied: HashMap<(String, u64), u32>,
    /// Every apply call, in order (actor id, version).
    pub order: Vec<(String, u64)>,
}

/// When the ledger crashes on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    Never,
    /// Fail the n-th apply call (1-based) before writing anything.
    BeforeWrite(u64),
    /// Fail the n-th apply call after its write is done (so the event is applied but the
    /// projection never acknowledges it).
    AfterWrite(u64),
}

#[derive(Clone)]
pub struct Ledger {
    pub db: Arc<Mutex<LedgerDb>>,
    pub crash: Crash,
    pub calls: u64,
}

impl Ledger {
    pub fn new(db: Arc<Mutex<LedgerDb>>, crash: Crash) -> Self {
        Ledger {
            db,
            crash,
            calls: 0,
        }
    }
}

#[derive(Debug)]
pub struct Crashed(pub u64);

impl std::fmt::Display for Crashed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "crashed on purpose at call {}", self.0)
    }
}

impl std::error::Error for Crashed {}

impl ReadModel for Ledger {
    async fn offset(&mut self) -> Result<Option<Offset>, ReadModelError> {
        Ok(self.db.lock().offset)
    }

    async fn apply(&mut self, event: &StoredEvent) -> Result<(), ReadModelError> {
        self.calls += 1;
        if self.crash == Crash::BeforeWrite(self.calls) {
            return Err(Box::new(Crashed(self.calls)));
        }
        let value: u64 = match event.envelope.event_type.as_str() {
            "Added" => {
                #[derive(serde::Deserialize)]
                enum Ev {
                    Added(u64),
                }
                let Ev::Added(v) = rmp_serde::from_slice(&event.envelope.payload)?;
                v
            }
            _ => 0,
        };
        {
            // One "transaction": the effect and the offset together.
            let mut db = self.db.lock();
            let id = event.envelope.actor.id.to_string();
            *db.totals.entry(id.clone()).or_default() += value;
            *db.applied
                .entry((id.clone(), event.envelope.version))
                .or_default() += 1;
            db.order.push((id, event.envelope.version));
            db.offset = Some(event.offset);
        }
        if self.crash == Crash::AfterWrite(self.calls) {
            return Err(Box::new(Crashed(self.calls)));
        }
        Ok(())
    }

    async fn clear(&mut self) -> Result<(), ReadModelError> {
        *self.db.lock() = LedgerDb::default();
        Ok(())
    }
}

/// Asserts every (actor, version) in `expected` was applied exactly once and nothing else was.
pub fn assert_exactly_once(db: &LedgerDb, expected: &HashMap<String, u64>) {
    for ((id, version), times) in &db.applied {
        assert_eq!(*times, 1, "{id} v{version} applied {times} times");
    }
    for (id, last) in expected {
        for v in 1..=*last {
            assert!(
                db.applied.contains_key(&(id.clone(), v)),
                "{id} v{v} was never applied"
            );
        }
    }
    let total: u64 = expected.values().sum();
    assert_eq!(db.applied.len() as u64, total, "no extra events");
}
