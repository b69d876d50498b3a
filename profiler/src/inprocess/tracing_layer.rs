//! `TracingLayer` (feature `tracing`): `tracing` spans as the context of
//! the in-process profiler's samples. Entering a span makes its name
//! (`span.name`) and the fields the layer keeps labels of the thread, and
//! the OpenTelemetry span current at that moment (`tracing-opentelemetry`
//! activates it on entry, or the program attached one with the
//! `opentelemetry` crate) its trace link; leaving it restores the outer
//! context. Owns only the span-to-context step; logging is `labels`'.

use std::cell::RefCell;

use opentelemetry::trace::TraceContextExt;
use smolder_profiles_proto::TraceLink;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::labels;

/// Sample attribute that carries the name of the `tracing` span a sample
/// was taken in.
pub const SPAN_NAME_KEY: &str = "span.name";

/// A `tracing_subscriber::Layer` that labels samples with the `tracing`
/// span they were taken in, and links them to its OpenTelemetry span.
///
/// Add it after `tracing_opentelemetry`'s layer, so that the span's
/// OpenTelemetry context is active when this layer sees the span entered:
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
/// let subscriber = tracing_subscriber::registry()
///     .with(smolder::TracingLayer::default().keep_fields(["route"]));
/// tracing::subscriber::with_default(subscriber, || {
///     let _request = tracing::info_span!("request", route = "/api", user = 7).entered();
///     // samples taken here carry span.name=request, route=/api
/// });
/// ```
#[derive(Clone, Debug, Default)]
pub struct TracingLayer {
    keep: Vec<String>,
}

impl TracingLayer {
    /// Fields of a span (by name) that its samples also carry.
    pub fn keep_fields<S: Into<String>>(mut self, fields: impl IntoIterator<Item = S>) -> Self {
        self.keep.extend(fields.into_iter().map(Into::into));
        self
    }
}

/// A span's labels, kept in its extensions from its creation.
struct SpanLabels(Vec<(String, String)>);

struct KeptFields<'a> {
    keep: &'a [String],
    labels: &'a mut Vec<(String, String)>,
}

impl KeptFields<'_> {
    fn set(&mut self, field: &Field, value: String) {
        if !self.keep.iter().any(|k| k == field.name()) {
            return;
        }
        match self.labels.iter_mut().find(|(k, _)| k == field.name()) {
            Some(slot) => slot.1 = value,
            None => self.labels.push((field.name().to_owned(), value)),
        }
    }
}

impl Visit for KeptFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field, format!("{value:?}"));
    }
}

thread_local! {
    /// Spans this thread entered, innermost last, each with the context
    /// it replaced.
    static ENTERED: RefCell<Vec<(u64, labels::Context)>> = const { RefCell::new(Vec::new()) };
}

/// The OpenTelemetry span current on this thread, if it is a valid one.
fn current_link() -> Option<TraceLink> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| TraceLink {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
    })
}

impl<S> tracing_subscriber::Layer<S> for TracingLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut labels = vec![(SPAN_NAME_KEY.to_owned(), attrs.metadata().name().to_owned())];
        attrs.record(&mut KeptFields {
            keep: &self.keep,
            labels: &mut labels,
        });
        span.extensions_mut().insert(SpanLabels(labels));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(SpanLabels(labels)) = extensions.get_mut::<SpanLabels>() {
            values.record(&mut KeptFields {
                keep: &self.keep,
                labels,
            });
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let context = {
            let extensions = span.extensions();
            let labels = extensions
                .get::<SpanLabels>()
                .map(|l| l.0.as_slice())
                .unwrap_or_default();
            labels::nested_context(
                labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                current_link(),
            )
        };
        let replaced = labels::replace_context(context);
        ENTERED.with(|e| e.borrow_mut().push((id.into_u64(), replaced)));
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        // Spans leave in the order they entered; one that leaves out of
        // order takes the spans entered after it along.
        let restored = ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            let at = e.iter().rposition(|(i, _)| *i == id.into_u64())?;
            let restored = e[at].1.take();
            e.truncate(at);
            Some(restored)
        });
        if let Some(context) = restored {
            labels::replace_context(context);
        }
    }
}
