//! The web dashboard in a real browser: a coordinator with tokens serving `--http-listen`, a worker,
//! two sites; `tests/browser/dashboard.mjs` drives Debian's headless Chromium through every page
//! (signing in, a progress bar reaching 100 % live, filtering failures, a CSV download, a cancel) and
//! saves screenshots at desktop and phone width into `docs/screenshots/`. The downloaded CSV is
//! compared with what `urlfleet results` prints for the job's failures.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use urlfleet_shared::proto::v1 as pb;
use urlfleet_shared::proto::v1::job_service_client::JobServiceClient;
use urlfleet_tests::{Backend, Coordinator, Fixture, TestDb, Worker};

const ADMIN: &str = "aaaaaaaaaaaaaaaaaaaaaaaa";
const TOKENS: &str = "admin ops aaaaaaaaaaaaaaaaaaaaaaaa;worker fleet wwwwwwwwwwwwwwwwwwwwwwww;\
                      submitter seo ssssssssssssssssssssssss";

#[derive(Clone)]
struct Bearer(AsciiMetadataValue);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

type Client = JobServiceClient<InterceptedService<Channel, Bearer>>;

async fn submit(c: &mut Client, urls: Vec<String>, options: pb::JobOptions) -> i64 {
    let msgs = vec![
        pb::SubmitJobRequest { item: Some(pb::submit_job_request::Item::Options(options)) },
        pb::SubmitJobRequest {
            item: Some(pb::submit_job_request::Item::Urls(pb::UrlChunk { urls, ..Default::default() })),
        },
    ];
    c.submit_job(tokio_stream::iter(msgs)).await.unwrap().into_inner().job.unwrap().id
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    // Filesystem times are coarser than the clock: a second of slack, far less than the run takes.
    let started = std::time::SystemTime::now() - Duration::from_secs(1);
    let db = TestDb::fresh(Backend::Postgres).await;
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let coordinator = Coordinator::spawn(&db.url, |c| {
        c.tokens_inline = Some(TOKENS.into());
        c.http_listen = Some(http);
    })
    .await;
    let site = Fixture::start(IpAddr::from([127, 0, 6, 1])).await;
    let slow = Fixture::start(IpAddr::from([127, 0, 6, 2])).await;
    let channel = tonic::transport::Endpoint::from_shared(coordinator.addr.clone()).unwrap().connect().await.unwrap();
    let mut client = JobServiceClient::with_interceptor(channel, Bearer(format!("Bearer {ADMIN}").parse().unwrap()));

    // A job that takes a few seconds: 30 answers after 400 ms, two at a time, and a few failures.
    let mut urls: Vec<String> = (0..30).map(|i| site.url(&format!("/delay/400?n={i}"))).collect();
    urls.extend((0..4).map(|i| site.url(&format!("/status/404?n={i}"))));
    urls.extend((0..2).map(|i| site.url(&format!("/status/410?n={i}"))));
    urls.push(site.url("/redirect/1"));
    urls.push("not a url".into());
    let polite = |name: &str, concurrency, interval_ms| pb::JobOptions {
        name: name.into(),
        politeness: Some(pb::HostPolicy { concurrency: Some(concurrency), interval_ms: Some(interval_ms) }),
        ..Default::default()
    };
    let watched = submit(&mut client, urls, polite("nightly", 2, 0)).await;
    // A job that runs for minutes: it is cancelled from the page.
    let endless = (0..200).map(|i| slow.url(&format!("/delay/1000?n={i}"))).collect();
    let cancelled = submit(&mut client, endless, polite("endless", 1, 0)).await;

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let csv_path = std::env::temp_dir().join(format!("urlfleet-dashboard-{}.csv", std::process::id()));
    let mut node = tokio::process::Command::new("node");
    node.arg(root.join("tests/browser/dashboard.mjs"))
        .env("BASE", format!("http://{http}"))
        .env("TOKEN", ADMIN)
        .env("JOB_WATCH", watched.to_string())
        .env("JOB_CANCEL", cancelled.to_string())
        .env("EXPECT_BROKEN", "6")
        .env("SHOTS", root.join("docs/screenshots"))
        .env("CSV", &csv_path)
        .env("NODE_PATH", root.join("tests/browser/node_modules"))
        .current_dir(root.join("tests/browser"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = node.spawn().expect("node runs (tests/browser needs `npm ci`; scripts/test installs it)");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    // The worker starts once the page watches the job: its progress bar must move while watched.
    let mut worker = None;
    let mut stdout = String::new();
    let reading = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "WATCHING" && worker.is_none() {
                worker = Some(Worker::spawn(&coordinator.addr, |w| {
                    w.auth.token = Some("wwwwwwwwwwwwwwwwwwwwwwww".into());
                    w.worker_id = Some("dashboard-worker".into());
                }));
            }
            stdout.push_str(&line);
            stdout.push('\n');
        }
        child.wait().await.unwrap()
    };
    let status =
        tokio::time::timeout(Duration::from_secs(240), reading).await.expect("the browser run ends within 4 minutes");
    let stderr = errors.await.unwrap();
    assert!(status.success(), "the browser run failed:\n{stdout}\n{stderr}");
    let worker = worker.expect("the page watched the job");
    let report: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(report["brokenRows"], 6);
    assert_eq!(report["cancelled"], cancelled);

    // The CSV the page downloaded is what `urlfleet results` lists as the job's failures.
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_urlfleet"))
        .args(["results", &watched.to_string(), "--only", "broken,error,invalid", "--format", "csv"])
        .args(["--coordinator", &coordinator.addr, "--token", ADMIN])
        .output()
        .await
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let verdicts = |rd: &mut csv::Reader<&[u8]>| -> BTreeSet<(String, String, String)> {
        rd.records()
            .map(|row| {
                let row = row.unwrap();
                (row[0].to_string(), row[1].to_string(), row[3].to_string())
            })
            .collect()
    };
    let listed = verdicts(&mut csv::Reader::from_reader(cli.stdout.as_slice()));
    let page_csv = std::fs::read(&csv_path).unwrap();
    let downloaded = verdicts(&mut csv::Reader::from_reader(page_csv.as_slice()));
    assert_eq!(downloaded, listed);
    assert_eq!(downloaded.len(), 7, "6 broken and 1 invalid");
    let job = client.get_job(pb::GetJobRequest { id: cancelled }).await.unwrap().into_inner();
    assert_eq!(job.state, pb::JobState::Cancelled as i32);
    for shot in ["jobs", "job", "hosts", "workers"] {
        for width in ["desktop", "phone"] {
            // The screenshots are tracked in git: only one written by this run counts.
            let path = root.join(format!("docs/screenshots/{shot}-{width}.png"));
            let written = std::fs::metadata(&path).and_then(|m| m.modified()).expect("a screenshot");
            assert!(written >= started, "{shot}-{width} was not written by this run");
        }
    }

    // A worker token, or a submitter's view of another owner's job, is refused.
    let http_get = |path: &str, token: &str| {
        let path = path.to_string();
        let token = token.to_string();
        async move {
            let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
            let req =
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
            tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes()).await.unwrap();
            let mut buf = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut s, &mut buf).await.unwrap();
            buf.split_whitespace().nth(1).unwrap().parse::<u16>().unwrap()
        }
    };
    assert_eq!(http_get("/api/jobs", "wwwwwwwwwwwwwwwwwwwwwwww").await, 403);
    assert_eq!(http_get(&format!("/api/jobs/{watched}"), "ssssssssssssssssssssssss").await, 404);
    assert_eq!(http_get("/api/hosts", "ssssssssssssssssssssssss").await, 403);
    assert_eq!(http_get(&format!("/api/jobs/{watched}"), ADMIN).await, 200);

    let _ = std::fs::remove_file(&csv_path);
    worker.stop().await;
    coordinator.stop().await;
}
