//! The cluster under faults, on real processes: the built `urlfleet` binary as two coordinators and
//! three workers on one PostgreSQL database, checking a job spread over eight polite hosts, while a
//! test kills, freezes, stops or cuts off one of them.
//!
//! Every scenario asserts the same things at the end:
//! - the job completes, every URL checked, none failed, and every counter equals its rows;
//! - no URL was checked twice (as the hosts saw it) beyond the URLs whose lease really expired
//!   (the reaper counts those), and the scenarios that should cost nothing cost nothing;
//! - no host ever had more requests in flight than its policy allows (one).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use urlfleet_shared::proto::v1::{self as pb, job_service_client::JobServiceClient};
use urlfleet_tests::{Backend, Fixture, Proxy, TestDb};

/// Lease TTL of the coordinators: short, so that expiry happens within a test.
const TTL: Duration = Duration::from_secs(3);
/// Hosts of the job, each on its own loopback address.
const HOSTS: u8 = 8;
/// URLs per host.
const PER_HOST: usize = 200;
/// How long each request takes to answer.
const DELAY_MS: u64 = 40;
/// The job's politeness: one request at a time per host, this far apart.
const INTERVAL_MS: u64 = 20;

fn urlfleet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_urlfleet"));
    // Only what the test says: nothing from the environment it runs in.
    for (k, _) in std::env::vars() {
        if k.starts_with("URLFLEET_") || k == "DATABASE_URL" || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "info");
    c
}

/// A process of the cluster, killed when dropped. Its output goes to a log file, shown when a
/// scenario fails.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, dir: &Path, mut cmd: Command) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        cmd.stdout(Stdio::from(file.try_clone().unwrap())).stderr(Stdio::from(file));
        let child = cmd.spawn().expect("spawn urlfleet");
        Self { name: name.into(), child, log }
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success(), "kill -{signal} {}", self.name);
    }

    fn kill9(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself; its exit status.
    async fn exited(&mut self, patience: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + patience;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < until, "{} did not exit within {patience:?}", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!("--- {} ---\n{}", self.name, lines[from..].join("\n"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `url` with its `host:port` replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    let at = url.find('@').map_or_else(|| url.find("://").unwrap() + 3, |i| i + 1);
    let end = url[at..].find('/').map_or(url.len(), |i| at + i);
    format!("{}{addr}{}", &url[..at], &url[end..])
}

struct Cluster {
    db: TestDb,
    /// Between the coordinators and the database.
    db_proxy: Proxy,
    dir: PathBuf,
    coordinators: Vec<Proc>,
    addrs: Vec<String>,
    workers: Vec<Proc>,
    hosts: Vec<Fixture>,
    job: i64,
    total: u64,
}

impl Cluster {
    /// Two coordinators on a fresh PostgreSQL database (reached through a proxy), and a job of
    /// [`HOSTS`] × [`PER_HOST`] URLs. Workers are started by [`Cluster::worker`].
    async fn start(name: &str) -> Self {
        let db = TestDb::fresh(Backend::Postgres).await;
        let pg: SocketAddr = {
            let after = &db.url[db.url.find('@').map_or(db.url.find("://").unwrap() + 3, |i| i + 1)..];
            let host_port = &after[..after.find('/').unwrap_or(after.len())];
            tokio::net::lookup_host(host_port).await.unwrap().next().unwrap()
        };
        let db_proxy = Proxy::start(pg).await;
        let dir = std::env::temp_dir().join(format!("urlfleet-faults-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut hosts = Vec::new();
        for h in 0..HOSTS {
            hosts.push(Fixture::start(IpAddr::from([127, 0, 3, 10 + h])).await);
        }
        let mut cluster = Self {
            db,
            db_proxy,
            dir,
            coordinators: Vec::new(),
            addrs: Vec::new(),
            workers: Vec::new(),
            hosts,
            job: 0,
            total: 0,
        };
        for i in 0..2 {
            cluster.coordinator(i).await;
        }
        cluster
    }

    /// A cluster with three workers that know both coordinators, and its job submitted through
    /// coordinator `via` and checked to 30 %.
    async fn running(name: &str, via: usize) -> Self {
        let mut c = Self::start(name).await;
        let all = c.all_coordinators();
        for _ in 0..3 {
            c.worker(&all);
        }
        c.submit(via).await;
        c.progress(via, 0.3).await;
        c
    }

    /// Starts coordinator `i` (again, on its own port, after it stopped).
    async fn coordinator(&mut self, i: usize) {
        let port = match self.addrs.get(i) {
            Some(a) => a.rsplit(':').next().unwrap().parse().unwrap(),
            None => free_port(),
        };
        let mut cmd = urlfleet();
        cmd.arg("coordinator")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--db", &through(&self.db.url, self.db_proxy.addr())])
            .args(["--lease-ttl", &format!("{}ms", TTL.as_millis())])
            .args(["--reap-interval", "200ms"]);
        let proc = Proc::spawn(&format!("coordinator-{i}-{}", self.coordinators.len()), &self.dir, cmd);
        let addr = format!("http://127.0.0.1:{port}");
        let until = Instant::now() + Duration::from_secs(20);
        while JobServiceClient::connect(addr.clone()).await.is_err() {
            assert!(Instant::now() < until, "coordinator {i} did not come up:\n{}", proc.tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if i < self.addrs.len() {
            self.coordinators[i] = proc;
        } else {
            self.coordinators.push(proc);
            self.addrs.push(addr);
        }
    }

    /// Starts a worker that knows `coordinators` (a comma-separated list).
    fn worker(&mut self, coordinators: &str) {
        let n = self.workers.len();
        self.worker_named(coordinators, &format!("w{n}"));
    }

    /// Starts a worker with the id `id`.
    fn worker_named(&mut self, coordinators: &str, id: &str) {
        let n = self.workers.len();
        let mut cmd = urlfleet();
        cmd.arg("worker")
            .args(["--coordinator", coordinators])
            .args(["--worker-id", id])
            .args(["--allow", "127.0.0.0/8"])
            .args(["--concurrency", "16"]);
        self.workers.push(Proc::spawn(&format!("w{n}"), &self.dir, cmd));
    }

    /// The worker holding the most live leases now, by its index.
    async fn busiest_worker(&self) -> usize {
        use sqlx::Connection;
        let mut db = sqlx::PgConnection::connect(&self.db.url).await.unwrap();
        let holder: String = sqlx::query_scalar(
            "SELECT holder FROM leases WHERE active GROUP BY holder ORDER BY COUNT(*) DESC, holder LIMIT 1",
        )
        .fetch_one(&mut db)
        .await
        .expect("some worker holds a lease");
        holder.trim_start_matches('w').parse().unwrap()
    }

    /// URLs the live leases of the worker whose id is `holder` hold open.
    async fn urls_held_by(&self, holder: &str) -> i64 {
        self.db
            .scalar(&format!(
                "SELECT COUNT(DISTINCT lu.url_id) FROM lease_urls lu JOIN leases l ON l.id = lu.lease_id \
                 WHERE l.active AND l.holder = '{holder}'"
            ))
            .await
    }

    /// Live leases of the worker whose id is `holder`.
    async fn leases_of(&self, holder: &str) -> i64 {
        self.db.scalar(&format!("SELECT COUNT(*) FROM leases WHERE active AND holder = '{holder}'")).await
    }

    /// The coordinator worker `w` works for now (from its log).
    fn coordinator_of(&self, w: usize) -> usize {
        let log = std::fs::read_to_string(&self.workers[w].log).unwrap();
        let line = log.lines().rev().find(|l| l.contains("connected to coordinator")).expect("connected");
        // `coordinator.id=<host>-<pid>`, maybe with colour codes around the `=`.
        let id = line.rsplit("coordinator.id").next().unwrap();
        let pid: String = id.rsplit('-').next().unwrap().chars().take_while(char::is_ascii_digit).collect();
        self.coordinators
            .iter()
            .position(|c| c.child.id().to_string() == pid)
            .unwrap_or_else(|| panic!("no coordinator has the pid of {line}"))
    }

    fn all_coordinators(&self) -> String {
        self.addrs.join(",")
    }

    async fn client(&self, i: usize) -> JobServiceClient<tonic::transport::Channel> {
        JobServiceClient::connect(self.addrs[i].clone()).await.expect("connect")
    }

    /// Submits the job through coordinator `i`.
    async fn submit(&mut self, i: usize) {
        let mut urls = Vec::new();
        for n in 0..PER_HOST {
            for h in &self.hosts {
                urls.push(h.url(&format!("/delay/{DELAY_MS}?n={n}")));
            }
        }
        let options = pb::JobOptions {
            politeness: Some(pb::HostPolicy { concurrency: Some(1), interval_ms: Some(INTERVAL_MS) }),
            ..Default::default()
        };
        let job = urlfleet_tests::cluster::submit(&mut self.client(i).await, &urls, options).await.expect("submit");
        let job = job.job.unwrap();
        self.job = job.id;
        self.total = job.counts.unwrap().total;
        assert_eq!(self.total, urls.len() as u64);
    }

    /// URLs checked so far, as coordinator `i` reads them.
    async fn checked(&self, i: usize) -> u64 {
        match self.client(i).await.get_job(pb::GetJobRequest { id: self.job }).await {
            Ok(j) => j.into_inner().counts.unwrap().checked,
            Err(_) => 0,
        }
    }

    /// Waits until a `share` of the URLs are checked (read through coordinator `i`).
    async fn progress(&self, i: usize, share: f64) {
        let until = Instant::now() + Duration::from_secs(60);
        while (self.checked(i).await as f64) < self.total as f64 * share {
            assert!(Instant::now() < until, "no progress to {share}:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        self.coordinators.iter().chain(&self.workers).map(Proc::tail).collect::<Vec<_>>().join("\n")
    }

    /// Waits for the job to complete (read through coordinator `i`) and asserts what every scenario
    /// promises; at most `max_twice` URLs may have been checked twice, and never more than the URLs
    /// whose lease expired. Returns how many were checked twice.
    async fn assert_sound(&self, i: usize, max_twice: usize) -> (usize, usize) {
        let until = Instant::now() + Duration::from_secs(90);
        let job = loop {
            let job = self.client(i).await.get_job(pb::GetJobRequest { id: self.job }).await.unwrap().into_inner();
            if job.state == pb::JobState::Completed as i32 {
                break job;
            }
            assert!(Instant::now() < until, "the job did not complete: {:?}\n{}", job.counts, self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let counts = job.counts.unwrap();
        assert_eq!((counts.checked, counts.failed, counts.ok), (self.total, 0, self.total), "{counts:?}");
        let id = self.job;
        let rows = |state: &str| format!("SELECT COUNT(*) FROM job_urls WHERE job_id = {id} AND state = '{state}'");
        assert_eq!(self.db.scalar(&rows("done")).await as u64, counts.checked, "checked rows");
        assert_eq!(self.db.scalar(&rows("pending")).await + self.db.scalar(&rows("leased")).await, 0);
        let expired = self
            .db
            .scalar(&format!("SELECT COALESCE(SUM(attempts), 0)::bigint FROM job_urls WHERE job_id = {id}"))
            .await as usize;
        let mut per_path: HashMap<String, usize> = HashMap::new();
        for (h, host) in self.hosts.iter().enumerate() {
            for seen in host.seen() {
                *per_path.entry(format!("{h}{}", seen.path)).or_default() += 1;
            }
            assert!(host.most_in_flight() <= 1, "host {h} had {} requests in flight at once", host.most_in_flight());
        }
        assert_eq!(per_path.len() as u64, self.total, "every URL reached its host");
        let twice = per_path.values().filter(|n| **n > 1).count();
        eprintln!("checked twice: {twice}; URLs of expired leases: {expired}");
        assert!(twice <= expired, "{twice} URLs checked twice, but only {expired} URLs' leases expired");
        assert!(twice <= max_twice, "{twice} URLs checked twice (at most {max_twice} expected)\n{}", self.logs());
        self.db.assert_invariants().await;
        (twice, expired)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_only_what_it_held() {
    let mut c = Cluster::running("kill-worker", 0).await;
    let victim = c.busiest_worker().await;
    c.workers[victim].kill9();
    // What it held comes back after its confirmation window: at most what it had in flight and
    // not yet reported, a few per host of its leases.
    let (_, expired) = c.assert_sound(1, 4 * HOSTS as usize).await;
    assert!(expired > 0, "the killed worker's leases expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_of_a_killed_coordinator_fail_over_and_keep_their_leases() {
    let mut c = Cluster::running("kill-coordinator", 0).await;
    // The coordinator of the worker that holds the most.
    let busiest = c.busiest_worker().await;
    let victim = c.coordinator_of(busiest);
    let survivor = 1 - victim;
    assert!(c.leases_of(&format!("w{busiest}")).await > 0);
    c.coordinators[victim].kill9();
    c.progress(survivor, 0.6).await;
    // Its workers renew their leases through the other coordinator: nothing is checked again.
    let (_, expired) = c.assert_sound(survivor, 0).await;
    assert_eq!(expired, 0, "no lease expired");
    assert_eq!(c.coordinator_of(busiest), survivor, "the worker moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_stopping_hands_its_workers_over() {
    let mut c = Cluster::running("term-coordinator", 0).await;
    let busiest = c.busiest_worker().await;
    let victim = c.coordinator_of(busiest);
    let survivor = 1 - victim;
    c.coordinators[victim].signal("TERM");
    let status = c.coordinators[victim].exited(Duration::from_secs(20)).await;
    assert!(status.success(), "a drained coordinator exits cleanly: {status}");
    let (_, expired) = c.assert_sound(survivor, 0).await;
    assert_eq!(expired, 0, "no lease expired");
    assert_eq!(c.coordinator_of(busiest), survivor, "the worker moved");
    // And it comes back, and nothing is lost either.
    c.coordinator(victim).await;
    c.workers.iter().for_each(|w| w.signal("TERM"));
    for w in &mut c.workers {
        assert!(w.exited(Duration::from_secs(20)).await.success(), "a worker exits cleanly on SIGTERM");
    }
    let coordinator_log = std::fs::read_to_string(&c.coordinators[survivor].log).unwrap();
    assert!(!coordinator_log.contains("protocol error"), "clean worker exits log no protocol error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_gets_nothing_and_takes_nothing_back_when_it_wakes() {
    let c = Cluster::running("freeze-worker", 0).await;
    let victim = c.busiest_worker().await;
    c.workers[victim].signal("STOP");
    let frozen_at = urlfleet_shared::time::now_ms();
    tokio::time::sleep(TTL * 3).await;
    let woken_at = urlfleet_shared::time::now_ms();
    c.workers[victim].signal("CONT");
    // Leases granted while it was frozen (after the grace a silent session gets).
    let window = urlfleet_shared::policy::confirmation_window(TTL).as_millis() as i64;
    let granted =
        c.db.scalar(&format!(
            "SELECT COUNT(*) FROM leases WHERE holder = 'w{victim}' AND created_at > {} AND created_at < {woken_at}",
            frozen_at + window
        ))
        .await;
    assert_eq!(granted, 0, "a frozen worker is given no leases");
    // Its leases expired and went to others; when it wakes it starts none of their checks (the
    // hosts never see two requests at once). At most what it had in flight is checked twice.
    let (_, expired) = c.assert_sound(0, 4 * HOSTS as usize).await;
    assert!(expired > 0, "the frozen worker's leases expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_longer_than_the_ttl_expires_nothing() {
    let c = Cluster::running("db-outage", 0).await;
    c.db_proxy.cut();
    tokio::time::sleep(TTL * 2).await;
    c.db_proxy.restore();
    // The leases that expired in the outage get a TTL of their own; their workers renew them.
    let (_, expired) = c.assert_sound(0, 0).await;
    assert_eq!(expired, 0, "no lease expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_its_coordinator_moves_to_another() {
    let mut c = Cluster::start("partition").await;
    let all = c.all_coordinators();
    // Worker 0 reaches coordinator 0 through a link that goes silent (no reset, no answer): a
    // partition. It knows coordinator 1 too.
    let a: SocketAddr = c.addrs[0].trim_start_matches("http://").parse().unwrap();
    let link = Proxy::start(a).await;
    // An id that starts with the first address of its list.
    let id =
        (0..).map(|i| format!("cut{i}")).find(|id| urlfleet_shared::connect::spread(id).is_multiple_of(2)).unwrap();
    c.worker_named(&format!("http://{},{}", link.addr(), c.addrs[1]), &id);
    c.submit(1).await;
    c.progress(1, 0.1).await;
    c.worker(&all);
    c.worker(&all);
    c.progress(1, 0.3).await;
    link.freeze();
    // Cut off, it gets no more leases: what it holds now bounds what can be checked twice.
    let held = c.leases_of(&id).await;
    let held_urls = c.urls_held_by(&id).await as usize;
    assert!(held > 0, "the worker to cut off holds leases");
    // It stops starting checks of its leases when their confirmation runs out, coordinator 0 gives
    // them up a heartbeat later, and the worker moves to coordinator 1: the hosts never see two
    // requests at once, and the job completes. URLs it checked and could not report are checked
    // again (as many as their leases held, at most).
    let (twice, expired) = c.assert_sound(1, held_urls).await;
    eprintln!("partition: {held} leases held, {twice} URLs checked twice, {expired} URLs of expired leases");
    assert!(expired > 0, "the leases of the worker cut off expired");
    let log = std::fs::read_to_string(&c.workers[0].log).unwrap();
    assert!(log.contains("went silent"), "the worker noticed the silence:\n{}", c.workers[0].tail());
    assert!(log.matches("connected to coordinator").count() >= 2, "and moved on:\n{}", c.workers[0].tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_finishes_what_it_holds() {
    let mut c = Cluster::running("term-worker", 0).await;
    let victim = c.busiest_worker().await;
    c.workers[victim].signal("TERM");
    assert!(c.workers[victim].exited(Duration::from_secs(20)).await.success());
    let (_, expired) = c.assert_sound(0, 0).await;
    assert_eq!(expired, 0, "a draining worker lets nothing expire");
}
