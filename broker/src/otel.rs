//! W3C trace context in the broker, and OpenTelemetry export of its spans.
//!
//! A record may carry a `traceparent` header (W3C Trace Context,
//! `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`). It is an ordinary header to
//! storage and delivery, so every delivery of the record carries it unchanged. With
//! `otlp_endpoint` set, the broker also exports spans over OTLP/gRPC:
//!
//! - `publish`, one per appended batch whose first record carries a `traceparent`: its
//!   child, from the request's arrival to its commit, with the topic, partition, first and
//!   last offset and record count;
//! - `deliver`, one per delivery to a group member of a record that carries a
//!   `traceparent`: its child, with the group, topic, partition, offset and attempt.
//!
//! Sampling is the publisher's: a span is recorded only under a parent whose `sampled`
//! flag is set, and records without a trace context make no spans (a root span per
//! untraced record would cost a span per message and flood the collector with one-span
//! traces; measured in the README).
//!
//! Spans go through the SDK's batch span processor: a bounded queue
//! ([`MAX_QUEUED_SPANS`]) drained by its own thread. Ending a span never waits: when the
//! queue is full (a collector that is down or slow) the span is dropped, so a dead
//! collector costs neither latency nor memory. Without an endpoint none of this exists;
//! the publish and delivery paths test one `Option`.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
    TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};

use crate::error::{BrokerError, Result};

/// The header that carries a record's trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Spans waiting for export at most; past it new spans are dropped.
pub const MAX_QUEUED_SPANS: usize = 4096;
/// Spans sent per export request.
const EXPORT_BATCH: usize = 512;
/// How often queued spans are exported when fewer than a batch are waiting.
const EXPORT_EVERY: Duration = Duration::from_millis(500);
/// How long one export may take before it is given up (the spans in it are lost).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The span context a `traceparent` value names, as a remote parent; `None` unless the
/// value is a well-formed version-00 traceparent with non-zero ids (the W3C rules: a
/// malformed header is ignored, never an error).
pub fn parse_traceparent(value: &[u8]) -> Option<SpanContext> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    // Version 00 has exactly four fields; a later version may append more.
    if !lower_hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !lower_hex(trace, 32) || !lower_hex(span, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// The `traceparent` value of a span context (what a client puts on a record).
pub fn format_traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// The first `traceparent` among `headers` that parses.
pub fn traceparent_of<'a>(
    mut headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Option<SpanContext> {
    headers.find_map(|(name, value)| {
        if name == TRACEPARENT {
            parse_traceparent(value)
        } else {
            None
        }
    })
}

/// The trace context of a batch's first record, if it carries one.
pub fn first_traceparent(batch: &[u8]) -> Option<SpanContext> {
    let view = herald_format::batch::BatchView::new(batch).ok()?;
    let first = view.records().next()?.ok()?;
    traceparent_of(first.headers())
}

/// What a publish span records.
pub struct PublishSpan<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub base_offset: u64,
    pub last_offset: u64,
    pub records: u32,
    pub started: SystemTime,
}

/// What a deliver span records.
pub struct DeliverSpan<'a> {
    pub topic: &'a str,
    pub group: &'a str,
    pub partition: u32,
    pub offset: u64,
    pub attempt: u32,
    pub started: SystemTime,
}

/// The broker's span exporter: a tracer whose spans go to an OTLP collector.
pub struct Otel {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Otel {
    /// Starts exporting to `endpoint` (`http://host:4317`). Call it on the runtime: the
    /// exporter's gRPC channel lives there. Nothing is sent until a span ends, and a
    /// collector that cannot be reached only loses spans (logged by the SDK).
    pub fn start(endpoint: &str) -> Result<Otel> {
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| {
                BrokerError::InvalidSettings(format!("otlp_endpoint {endpoint:?}: {e}"))
            })?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(MAX_QUEUED_SPANS)
                    .with_max_export_batch_size(EXPORT_BATCH)
                    .with_scheduled_delay(EXPORT_EVERY)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(Resource::builder().with_service_name("herald").build())
            .build();
        let tracer = provider.tracer("herald");
        tracing::info!(endpoint, "exporting publish and deliver spans over OTLP");
        Ok(Otel { provider, tracer })
    }

    /// Ends a `publish` span for one appended batch, if `parent` is a sampled trace.
    pub fn publish(&self, parent: Option<SpanContext>, span: PublishSpan<'_>) {
        let Some(parent) = parent.filter(SpanContext::is_sampled) else {
            return;
        };
        let attributes = vec![
            KeyValue::new("messaging.system", "herald"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", span.topic.to_owned()),
            KeyValue::new(
                "messaging.destination.partition.id",
                span.partition.to_string(),
            ),
            KeyValue::new("messaging.batch.message_count", i64::from(span.records)),
            KeyValue::new("herald.base_offset", offset(span.base_offset)),
            KeyValue::new("herald.last_offset", offset(span.last_offset)),
        ];
        self.end_span(
            "publish",
            SpanKind::Server,
            parent,
            span.started,
            attributes,
        );
    }

    /// Ends a `deliver` span for one delivery of a record to a group member, if `parent`
    /// is a sampled trace.
    pub fn deliver(&self, parent: Option<SpanContext>, span: DeliverSpan<'_>) {
        let Some(parent) = parent.filter(SpanContext::is_sampled) else {
            return;
        };
        let attributes = vec![
            KeyValue::new("messaging.system", "herald"),
            KeyValue::new("messaging.operation.type", "deliver"),
            KeyValue::new("messaging.destination.name", span.topic.to_owned()),
            KeyValue::new(
                "messaging.destination.partition.id",
                span.partition.to_string(),
            ),
            KeyValue::new("messaging.consumer.group.name", span.group.to_owned()),
            KeyValue::new("herald.offset", offset(span.offset)),
            KeyValue::new("herald.delivery_attempt", i64::from(span.attempt)),
        ];
        self.end_span(
            "deliver",
            SpanKind::Producer,
            parent,
            span.started,
            attributes,
        );
    }

    fn end_span(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: SpanContext,
        started: SystemTime,
        attributes: Vec<KeyValue>,
    ) {
        // Built from an empty context, not the thread's current one: the parent is the
        // record's.
        let context = Context::new().with_remote_span_context(parent);
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(started)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &context);
        span.end();
    }

    /// Exports what is queued (waiting at most the export timeout) and stops the
    /// exporter. Blocking.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "stopping the OTLP span exporter");
        }
    }
}

/// Offsets as OTLP integers (which are signed): one past `i64::MAX` is not reachable by
/// a real log, so the cap never shows.
fn offset(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_as_the_w3c_spec_says() {
        let ok =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            ok.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(ok.span_id(), SpanId::from_hex("00f067aa0ba902b7").unwrap());
        assert!(ok.is_sampled() && ok.is_remote());
        assert_eq!(
            format_traceparent(&ok),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        // A later version may carry more fields.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            b"\xff\xfe",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }
}
