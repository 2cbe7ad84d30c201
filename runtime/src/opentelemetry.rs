//! Joining OpenTelemetry traces (cargo feature `opentelemetry`).
//!
//! The runtime's spans are `tracing` spans; `tracing-opentelemetry` turns them into
//! OpenTelemetry spans for any exporter (OTLP to a collector, Jaeger, ...). On its own it
//! would give each node's spans a trace of their own. With this feature the runtime hands it
//! the W3C context every call already has (see [`wire::TraceParent`](crate::wire::TraceParent)):
//!
//! - the **trace id** is the call's correlation id, on every node, so the spans of a command
//!   and of everything it causes (asks from its handler, durable effects, on any node) are one
//!   trace;
//! - a call's spans (`ask` on the caller, `serve`, `handle` and `reply` on the owner) are
//!   children of the call's span id (its command id), given as a remote parent;
//! - an ask made inside a span that already belongs to an OpenTelemetry trace (an HTTP
//!   request's, say) and given no correlation id of its own takes that trace's id as its
//!   correlation id: Aether's spans join the caller's trace.
//!
//! Without the feature these functions do nothing and cost nothing.

#[cfg(feature = "opentelemetry")]
mod enabled {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// Makes `span` a child of span `parent` of trace `trace_id` (a remote parent).
    pub(crate) fn adopt(span: &tracing::Span, trace_id: u128, parent: u64) {
        if span.is_disabled() {
            return;
        }
        let context = SpanContext::new(
            TraceId::from(trace_id),
            SpanId::from(parent),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(context));
    }

    /// The trace id of the current span's OpenTelemetry context, if it belongs to one.
    pub(crate) fn current_trace_id() -> Option<u128> {
        let current = tracing::Span::current();
        if current.is_disabled() {
            return None;
        }
        let context = current.context();
        let span = context.span();
        let span_context = span.span_context();
        span_context
            .is_valid()
            .then(|| u128::from_be_bytes(span_context.trace_id().to_bytes()))
    }
}

#[cfg(feature = "opentelemetry")]
pub(crate) use enabled::{adopt, current_trace_id};

/// Without the feature: nothing to join.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn adopt(_span: &tracing::Span, _trace_id: u128, _parent: u64) {}

/// Without the feature: no OpenTelemetry context to read.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn current_trace_id() -> Option<u128> {
    None
}
