//! Telemetry every binary sets up the same way: `RUST_LOG`-style filtered logs on standard error
//! (text or JSON), and OpenTelemetry traces exported over OTLP/gRPC when an endpoint is configured
//! by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER`, …). Without an endpoint nothing is exported and the tracing layer is not
//! installed at all, so it costs next to nothing.
//!
//! Sampling: root spans follow `OTEL_TRACES_SAMPLER` (default: parent-based, always on), so a job's
//! submission, planning and leases are traced. Per-URL `check` spans are sampled within a sampled
//! trace at `URLFLEET_CHECK_SAMPLE_RATIO` (default 1 %), so a million-URL job does not emit a million
//! spans unless asked; a failed check always yields a `check` span carrying `error.type`.
//!
//! Context travels as W3C `traceparent`: in gRPC metadata from client to coordinator, in the job row
//! from submission to its leases, and inside each lease from coordinator to worker.

use std::collections::{BTreeMap, HashMap};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample};
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets, filter_fn};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Compact human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the current span's fields (`trace_id` among them).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (expected text or json)")),
        }
    }
}

/// Default share of `check` spans kept within a sampled trace.
pub const DEFAULT_CHECK_SAMPLE_RATIO: f64 = 0.01;

/// What to set up.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Log filter when `RUST_LOG` is unset.
    pub default_filter: String,
    /// Log format.
    pub format: LogFormat,
    /// Service name when `OTEL_SERVICE_NAME` is unset.
    pub service: &'static str,
    /// OTLP endpoint; `None` reads `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` (and exports nothing when unset).
    pub otlp_endpoint: Option<String>,
    /// Share of `check` spans kept; `None` reads `URLFLEET_CHECK_SAMPLE_RATIO`.
    pub check_sample_ratio: Option<f64>,
}

impl TelemetryConfig {
    /// Logs with `default_filter` in `format`; traces as the environment says.
    pub fn new(service: &'static str, default_filter: &str, format: LogFormat) -> Self {
        Self { default_filter: default_filter.into(), format, service, otlp_endpoint: None, check_sample_ratio: None }
    }
}

/// Installed telemetry; call [`Telemetry::shutdown`] before exiting to flush spans.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every finished span now.
    pub async fn flush(&self) {
        if let Some(p) = self.provider.clone() {
            let _ = tokio::task::spawn_blocking(move || p.force_flush()).await;
        }
    }

    /// Flushes and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        }
    }
}

/// The spans the check engine opens for each URL and each request: `check` and `http`.
fn is_per_check_span(m: &tracing::Metadata<'_>) -> bool {
    m.is_span() && matches!(m.name(), "check" | "http") && m.target().starts_with("urlfleet_worker")
}

/// Installs logs only (no trace export): for tests and tools.
pub fn init(default_filter: &str, format: LogFormat) {
    let _ = install(
        TelemetryConfig { otlp_endpoint: None, ..TelemetryConfig::new("urlfleet", default_filter, format) },
        false,
    );
}

/// Installs logs and, when an OTLP endpoint is configured, trace export. Must run inside a Tokio
/// runtime (the exporter's channel is created there). A second call does nothing.
pub fn init_with(config: TelemetryConfig) -> Telemetry {
    install(config, true)
}

fn env_endpoint() -> Option<String> {
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .ok()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.is_empty())
}

fn install(config: TelemetryConfig, traces: bool) -> Telemetry {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.default_filter));
    let logs = match config.format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).with_target(false).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    // A check's own spans (one or two per URL) are for traces: log lines do without them, and the
    // engine does not format their fields for every URL only for the rare event inside one. Without
    // trace export no layer wants them, and they are never built.
    let logs = logs.with_filter(filter).with_filter(filter_fn(|m| !is_per_check_span(m)));
    let endpoint = if traces { config.otlp_endpoint.clone().or_else(env_endpoint) } else { None };
    let Some(endpoint) = endpoint else {
        let _ = tracing_subscriber::registry().with(logs).try_init();
        return Telemetry::default();
    };
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(e) = &config.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        builder = builder.with_endpoint(e.clone());
    }
    let exporter = match builder.build() {
        Ok(e) => e,
        Err(e) => {
            let _ = tracing_subscriber::registry().with(logs).try_init();
            tracing::warn!(error = %e, endpoint = %endpoint, "cannot build the OTLP exporter; traces are not exported");
            return Telemetry::default();
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(config.service);
    }
    let ratio = config
        .check_sample_ratio
        .or_else(|| std::env::var("URLFLEET_CHECK_SAMPLE_RATIO").ok().and_then(|r| r.parse().ok()))
        .unwrap_or(DEFAULT_CHECK_SAMPLE_RATIO)
        .clamp(0.0, 1.0);
    let sampler = FleetSampler { roots: opentelemetry_sdk::trace::Config::default().sampler, check_ratio: ratio };
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_sampler(sampler)
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("urlfleet");
    global::set_tracer_provider(provider.clone());
    // The exporter's own transport must not trace itself.
    let quiet = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("tonic", LevelFilter::OFF)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF)
        .with_target("sqlx", LevelFilter::OFF);
    let otel = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(quiet).with_filter(LevelFilter::INFO);
    let _ = tracing_subscriber::registry().with(logs).with(otel).try_init();
    Telemetry { provider: Some(provider) }
}

/// Roots follow the configured sampler; `check` spans are sampled at a ratio within sampled traces,
/// and always when they carry `error.type`.
#[derive(Debug, Clone)]
struct FleetSampler {
    roots: Box<dyn ShouldSample>,
    check_ratio: f64,
}

impl ShouldSample for FleetSampler {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if name != "check" {
            return self.roots.should_sample(parent, trace_id, name, kind, attributes, links);
        }
        let parent_sampled = parent.is_some_and(|c| c.span().span_context().is_sampled());
        let failed = attributes.iter().any(|kv| kv.key.as_str() == "error.type");
        let keep = failed || (parent_sampled && rand::random::<f64>() < self.check_ratio);
        SamplingResult {
            decision: if keep { SamplingDecision::RecordAndSample } else { SamplingDecision::Drop },
            attributes: Vec::new(),
            trace_state: parent.map(|c| c.span().span_context().trace_state().clone()).unwrap_or_default(),
        }
    }
}

/// Whether a span is sampled (exported).
pub fn is_sampled(span: &tracing::Span) -> bool {
    span.context().span().span_context().is_sampled()
}

/// The current span's trace id as hex, when it has one.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

struct MetaInjector<'a>(&'a mut MetadataMap);

impl Injector for MetaInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value)) {
            self.0.insert(k, v);
        }
    }
}

struct MetaExtractor<'a>(&'a MetadataMap);

impl Extractor for MetaExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(|k| match k {
                KeyRef::Ascii(k) => k.as_str(),
                KeyRef::Binary(k) => k.as_str(),
            })
            .collect()
    }
}

/// Puts the current span's context into outgoing gRPC metadata.
pub fn inject_metadata(metadata: &mut MetadataMap) {
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetaInjector(metadata)));
}

/// The context incoming gRPC metadata carries.
pub fn extract_metadata(metadata: &MetadataMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&MetaExtractor(metadata)))
}

/// The current span's context as W3C headers (`traceparent`, `tracestate`), e.g. for a lease.
pub fn current_context_map() -> BTreeMap<String, String> {
    let cx = tracing::Span::current().context();
    let mut map: HashMap<String, String> = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut map));
    map.into_iter().collect()
}

/// The context W3C headers carry (empty when they carry none).
pub fn context_from_map<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>) -> Context {
    let map: HashMap<String, String> = map.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
    global::get_text_map_propagator(|p| p.extract(&map))
}

/// Makes `span` a child of `parent` (a remote context); spans keep their local parent otherwise.
/// Must be called before the span is entered.
pub fn set_parent(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}
