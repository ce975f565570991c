//! `/metrics` of a coordinator and a worker agree with the job they ran.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use urlfleet_shared::proto::v1 as pb;
use urlfleet_tests::cluster::{submit, wait_done};
use urlfleet_tests::{Backend, Coordinator, Fixture, TestDb, Worker, eventually};

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// `name{labels} value` lines of one metric, as (labels, value).
fn samples(text: &str, name: &str) -> Vec<(HashMap<String, String>, f64)> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .map(|l| {
            let (head, value) = l.rsplit_once(' ').unwrap();
            let mut labels = HashMap::new();
            if let Some(inner) = head.split_once('{').map(|(_, r)| r.trim_end_matches('}')) {
                for pair in inner.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap();
                    labels.insert(k.to_string(), v.trim_matches('"').to_string());
                }
            }
            (labels, value.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scraped_counters_agree_with_the_job_results() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let site = Fixture::local().await;
    let (coordinator_metrics, worker_metrics) = (free_addr(), free_addr());
    let coordinator = Coordinator::spawn(&db.url, |c| c.metrics_listen = Some(coordinator_metrics)).await;
    let worker = Worker::spawn(&coordinator.addr, |w| w.metrics_listen = Some(worker_metrics));
    let mut urls: Vec<String> = (0..12).map(|i| site.url(&format!("/status/200?n={i}"))).collect();
    urls.extend((0..5).map(|i| site.url(&format!("/status/404?n={i}"))));
    urls.extend((0..3).map(|i| site.url(&format!("/redirect/1?n={i}"))));
    let mut client = coordinator.client().await;
    let options = pb::JobOptions {
        politeness: Some(pb::HostPolicy { concurrency: Some(8), interval_ms: Some(0) }),
        ..Default::default()
    };
    let id = submit(&mut client, &urls, options).await.unwrap().job.unwrap().id;
    let job = wait_done(&mut client, id, Duration::from_secs(30)).await;
    let c = job.counts.unwrap();
    assert_eq!((c.ok, c.redirected, c.broken), (12, 3, 5));

    let text = scrape(worker_metrics).await;
    let checks = samples(&text, "urlfleet_checks_total");
    let by_class = |class: &str| checks.iter().filter(|(l, _)| l["class"] == class).map(|(_, v)| v).sum::<f64>();
    assert_eq!((by_class("ok"), by_class("redirected"), by_class("broken")), (12.0, 3.0, 5.0), "{text}");
    let not_found: f64 = checks.iter().filter(|(l, _)| l["status"] == "404").map(|(_, v)| v).sum();
    assert_eq!(not_found, 5.0);
    assert_eq!(samples(&text, "urlfleet_check_duration_seconds_count")[0].1, 20.0);
    assert_eq!(samples(&text, "urlfleet_checks_in_flight")[0].1, 0.0);

    let text = eventually(Duration::from_secs(10), "the coordinator's gauges settle", || async move {
        let text = scrape(coordinator_metrics).await;
        let settled = samples(&text, "urlfleet_frontier_pending").first().is_some_and(|s| s.1 == 0.0)
            && samples(&text, "urlfleet_leases_active").first().is_some_and(|s| s.1 == 0.0);
        settled.then_some(text)
    })
    .await;
    assert_eq!(samples(&text, "urlfleet_ingest_rows_total")[0].1, 20.0, "{text}");
    assert!(samples(&text, "urlfleet_leases_granted_total")[0].1 >= 1.0);
    assert_eq!(samples(&text, "urlfleet_leases_expired_total")[0].1, 0.0);
    assert!(samples(&text, "urlfleet_ingest_chunk_duration_seconds_count")[0].1 >= 1.0);
    worker.stop().await;
    coordinator.stop().await;
}
