//! Trace context: one trace per workflow, in the W3C `traceparent` format.
//!
//! Aether needs no trace ids of its own: every call already carries two 128-bit ids that say
//! where it belongs. The **correlation id** is shared by everything a request from outside
//! causes (the asks a handler makes, the durable effects its turns store, the effects'
//! compensations), so it is the **trace id**. The **command id** is unique to one call, so
//! its low 64 bits are the call's **span id**, and the caller's command id (the causation id)
//! gives the parent span.
//!
//! A traced remote call sends this context as a `traceparent` header on its NATS request
//! (`00-<32 hex trace id>-<16 hex span id>-01`; an untraced one says only `traced: false` in
//! its frame, as a header costs every request), and the spans the runtime emits carry the
//! same values as fields (`trace_id`, `span_id`, `parent_span_id`), so a collector, or `grep`
//! over two nodes' logs, joins a remote ask into one trace. To put Aether's calls inside an
//! existing trace (an HTTP request's), give the ask that trace's id as its correlation id
//! ([`TraceParent::parse`] reads the header, `AskOptions::correlation_id` takes the id).

use std::fmt;

use super::CommandId;

/// The NATS header name that carries the trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// One position in a trace: the trace and the span (a call) within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace: the correlation id of the workflow.
    pub trace_id: u128,
    /// The span: the call's command id, low 64 bits.
    pub span_id: u64,
    /// Whether the workflow is traced (the header's `sampled` flag): a node makes spans for
    /// a call only when it is.
    pub sampled: bool,
}

impl TraceParent {
    /// The context of the call `command_id` in the workflow `correlation_id`.
    pub fn of(correlation_id: CommandId, command_id: CommandId, sampled: bool) -> TraceParent {
        TraceParent {
            trace_id: correlation_id.as_u128(),
            span_id: span_id(command_id),
            sampled,
        }
    }

    /// The header value: `00-<trace id>-<span id>-<flags>` (version 0; flags `01` when
    /// sampled, `00` when not).
    pub fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    /// Reads a `traceparent` header value. `None` when it is not version 00 of the W3C
    /// format, or names the all-zero trace or span (which the format declares invalid).
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || version != "00"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
            || !flags.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !lower_hex(trace) || !lower_hex(span) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(TraceParent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

/// Whether the workflow `correlation_id` is traced when one in `one_in` is (1: all, 0:
/// none). A function of the id alone, so every node decides the same. The runtime decides
/// with [`Sampler`]; this is its definition, kept for the tests.
#[cfg(test)]
fn sampled(correlation_id: CommandId, one_in: u32) -> bool {
    match one_in {
        0 => false,
        1 => true,
        n => sample_hash(correlation_id).is_multiple_of(u64::from(n)),
    }
}

/// A 64-bit mix of both halves of the id: ids chosen by clients need not be random.
fn sample_hash(correlation_id: CommandId) -> u64 {
    let v = correlation_id.as_u128();
    let mut h = (v as u64) ^ ((v >> 64) as u64).rotate_left(31);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// [`sampled`] for one fixed `one_in`, without a division per call: a 64-bit division costs
/// about 40 cycles, and every ask asks. Divisibility by `n` is tested with one 128-bit
/// multiplication by `⌈2^128 / n⌉` (Lemire, Kaser and Kurz, "Faster remainder by direct
/// computation", 2019): `h` is a multiple of `n` exactly when the product, modulo 2^128, is
/// below that constant. Same answers as [`sampled`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sampler {
    one_in: u32,
    /// `⌈2^128 / one_in⌉` for `one_in` ≥ 2.
    magic: u128,
}

impl Sampler {
    /// Samples one workflow in `one_in` (1: all, 0: none).
    pub(crate) fn new(one_in: u32) -> Self {
        let magic = if one_in >= 2 {
            u128::MAX / u128::from(one_in) + 1
        } else {
            0
        };
        Sampler { one_in, magic }
    }

    /// Whether the workflow `correlation_id` is traced.
    pub(crate) fn sampled(&self, correlation_id: CommandId) -> bool {
        match self.one_in {
            0 => false,
            1 => true,
            _ => {
                self.magic
                    .wrapping_mul(u128::from(sample_hash(correlation_id)))
                    < self.magic
            }
        }
    }
}

/// The span id of a call: its command id's low 64 bits (never zero).
pub fn span_id(command_id: CommandId) -> u64 {
    (command_id.as_u128() as u64).max(1)
}

/// Shows a trace id as the 32 lowercase hex digits of the W3C format.
#[derive(Clone, Copy)]
pub struct TraceId(pub u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Shows a span id as the 16 lowercase hex digits of the W3C format.
#[derive(Clone, Copy)]
pub struct SpanId(pub u64);

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_round_trips_and_bad_values_are_refused() {
        for sampled in [true, false] {
            let ctx = TraceParent::of(CommandId::random(), CommandId::random(), sampled);
            let header = ctx.header();
            assert_eq!(header.len(), 55);
            assert!(header.ends_with(if sampled { "-01" } else { "-00" }));
            assert_eq!(TraceParent::parse(&header), Some(ctx));
        }
        // The example of the W3C recommendation.
        let w3c = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(w3c).unwrap();
        assert_eq!(parsed.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parsed.span_id, 0x00f067aa0ba902b7);
        assert!(parsed.sampled);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-+0f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn one_in_n_workflows_are_sampled_the_same_everywhere() {
        let ids: Vec<CommandId> = (0..20_000u128).map(CommandId::from_u128).collect();
        let picked = ids.iter().filter(|id| sampled(**id, 100)).count();
        assert!(
            (150..=250).contains(&picked),
            "{picked} of 20 000 at one in 100"
        );
        assert!(ids.iter().all(|id| sampled(*id, 1)));
        assert!(!ids.iter().any(|id| sampled(*id, 0)));
        let id = CommandId::random();
        assert_eq!(sampled(id, 7), sampled(id, 7));
    }

    #[test]
    fn the_sampler_without_division_decides_as_sampled() {
        for one_in in [0, 1, 2, 3, 7, 100, 1000, 65_537, u32::MAX] {
            let sampler = Sampler::new(one_in);
            for i in 0..20_000u128 {
                // Sequential ids, and spread ones.
                for id in [
                    CommandId::from_u128(i),
                    CommandId::from_u128(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)),
                ] {
                    assert_eq!(
                        sampler.sampled(id),
                        sampled(id, one_in),
                        "{id} at one in {one_in}"
                    );
                }
            }
        }
    }
}
