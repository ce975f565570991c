//! The coordinator as stock gRPC tools and restarting processes see it.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use urlfleet_shared::proto::v1 as pb;
use urlfleet_tests::cluster::{impolite, submit, wait_done};
use urlfleet_tests::{Backend, Coordinator, Fixture, TestDb, Worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_stock_clients() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;

    let channel = tonic::transport::Endpoint::from_shared(coordinator.addr.clone()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "urlfleet.v1.JobService", "urlfleet.v1.WorkerService"] {
        let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else { panic!("{answer:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["urlfleet.v1.JobService", "urlfleet.v1.WorkerService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_reconnects_when_its_coordinator_restarts_and_the_job_finishes() {
    let db = TestDb::fresh(Backend::Postgres).await;
    let site = Fixture::local().await;
    let first = Coordinator::spawn(&db.url, |_| {}).await;
    let addr = first.addr.clone();
    let worker = Worker::spawn(&addr, |_| {});
    let urls: Vec<String> = (0..400).map(|i| site.url(&format!("/delay/10?n={i}"))).collect();
    let mut client = first.client().await;
    let mut options = impolite();
    options.politeness = Some(pb::HostPolicy { concurrency: Some(4), interval_ms: Some(0) });
    let id = submit(&mut client, &urls, options).await.unwrap().job.unwrap().id;
    urlfleet_tests::eventually(Duration::from_secs(20), "work started", || {
        let mut client = client.clone();
        async move { (client.get_job(pb::GetJobRequest { id }).await.ok()?.into_inner().counts?.checked > 20).then_some(()) }
    })
    .await;
    first.stop().await;

    // A new coordinator on the same address and database; the worker finds it by itself.
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let second = loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => {
                drop(l);
                break Coordinator::spawn_on(&db.url, port, |_| {}).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut client = second.client().await;
    let job = wait_done(&mut client, id, Duration::from_secs(60)).await;
    let c = job.counts.unwrap();
    assert_eq!(job.state, pb::JobState::Completed as i32);
    assert_eq!((c.checked, c.ok, c.failed), (400, 400, 0));
    worker.stop().await;
    second.stop().await;
}
