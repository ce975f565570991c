//! One trace from submission to every HTTP check, received by a real OTLP/gRPC receiver in this
//! process (the collector's trace service), with the context crossing gRPC metadata, the job row and
//! the lease on its way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tracing::Instrument;
use urlfleet_shared::proto::v1 as pb;
use urlfleet_shared::telemetry::{self, LogFormat, TelemetryConfig};
use urlfleet_tests::cluster::wait_done;
use urlfleet_tests::{Backend, Coordinator, Fixture, TestDb, Worker, eventually};

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()?.value.clone()).map(|v| match v {
        Value::StringValue(s) => s,
        Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_runs_from_submission_through_lease_and_check_to_each_http_attempt() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let telemetry = telemetry::init_with(TelemetryConfig {
        otlp_endpoint: Some(format!("http://{otlp}")),
        check_sample_ratio: Some(1.0),
        ..TelemetryConfig::new("urlfleet-tests", "warn", LogFormat::Text)
    });
    assert!(telemetry.exporting(), "this test binary must install the tracing subscriber first");

    let db = TestDb::fresh(Backend::Sqlite).await;
    let site = Fixture::local().await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let worker = Worker::spawn(&coordinator.addr, |_| {});
    let mut client = coordinator.client().await;
    let urls = [site.url("/status/200"), site.url("/redirect/1"), site.url("/status/404")];

    let root = tracing::info_span!("submit", otel.kind = "client");
    let submitted = async {
        let msgs = vec![
            pb::SubmitJobRequest { item: Some(pb::submit_job_request::Item::Options(pb::JobOptions::default())) },
            pb::SubmitJobRequest {
                item: Some(pb::submit_job_request::Item::Urls(pb::UrlChunk {
                    urls: urls.to_vec(),
                    ..Default::default()
                })),
            },
        ];
        let mut request = tonic::Request::new(tokio_stream::iter(msgs));
        telemetry::inject_metadata(request.metadata_mut());
        client.submit_job(request).await.unwrap().into_inner()
    }
    .instrument(root.clone())
    .await;
    let trace_id = root.in_scope(telemetry::current_trace_id).expect("the root span has a trace id");
    drop(root);
    let job = wait_done(&mut client, submitted.job.unwrap().id, Duration::from_secs(30)).await;
    assert_eq!(job.counts.unwrap().checked, 3);
    worker.stop().await;
    coordinator.stop().await;

    let spans = eventually(Duration::from_secs(20), "every span exported", || {
        let receiver = receiver.clone();
        let telemetry = &telemetry;
        let trace_id = trace_id.clone();
        async move {
            telemetry.flush().await;
            let spans: Vec<Span> =
                receiver.0.lock().unwrap().iter().filter(|s| hex(&s.trace_id) == trace_id).cloned().collect();
            let http = spans.iter().filter(|s| s.name == "http").count();
            (http >= 4).then_some(spans)
        }
    })
    .await;
    let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let chain = |s: &Span| {
        let mut names = vec![s.name.clone()];
        let mut cur = s;
        while let Some(parent) = by_id.get(&cur.parent_span_id) {
            names.push(parent.name.clone());
            cur = parent;
        }
        names
    };
    // submit (client) → submit_job (coordinator) → lease (coordinator) → lease (worker) → check → http
    let expected = ["http", "check", "lease", "lease", "submit_job", "submit"];
    let http: Vec<&Span> = spans.iter().filter(|s| s.name == "http").collect();
    for h in &http {
        assert_eq!(chain(h), expected, "the parent chain of an HTTP attempt");
        assert!(attr(h, "url.full").is_some_and(|u| u.starts_with(&site.url("/"))));
        assert!(attr(h, "http.request.method").is_some());
        assert!(attr(h, "server.address").is_some());
    }
    let checks: Vec<&Span> = spans.iter().filter(|s| s.name == "check").collect();
    assert_eq!(checks.len(), 3, "one check span per URL");
    // The redirect: one check, two HTTP attempts (the hop and its target), both children of it.
    let redirect = checks.iter().find(|c| attr(c, "url.full").is_some_and(|u| u.contains("/redirect/1"))).unwrap();
    assert_eq!(http.iter().filter(|h| h.parent_span_id == redirect.span_id).count(), 2);
    let statuses: Vec<String> = http.iter().filter_map(|h| attr(h, "http.response.status_code")).collect();
    assert!(statuses.contains(&"404".to_string()) && statuses.contains(&"301".to_string()), "{statuses:?}");
    assert!(spans.iter().any(|s| s.name == "plan"), "planning has its span");
    assert!(spans.iter().all(|s| hex(&s.trace_id) == trace_id));
    telemetry.shutdown().await;
}
