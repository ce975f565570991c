//! The `urlfleet` binary as a user runs it.

use std::net::IpAddr;

use sqlx::Connection;
use urlfleet_tests::{Backend, Coordinator, Fixture, TestDb, Worker};

mod common;
use common::{Run, run, urlfleet};

/// Writes a list in `dir`: 60 healthy URLs on `a`, a broken, a redirected and a healthy one on `b`, a
/// duplicate, an invalid line, a comment and a blank line.
fn mixed_list(a: &Fixture, b: &Fixture, dir: &std::path::Path) -> std::path::PathBuf {
    let list = dir.join("urls.txt");
    let mut lines = vec!["# my site".to_string(), String::new()];
    for i in 0..60 {
        lines.push(a.url(&format!("/status/200?n={i}")));
    }
    lines.push(b.url("/status/404"));
    lines.push(b.url("/redirect/2"));
    lines.push(b.url("/status/200"));
    lines.push(a.url("/status/200?n=0")); // duplicate
    lines.push("ftp://files.example/x".into());
    std::fs::write(&list, lines.join("\n")).unwrap();
    list
}

/// What `check` reports on [`mixed_list`].
fn assert_mixed_verdict(r: &Run, a: &Fixture, b: &Fixture) {
    assert_eq!(r.code, 2, "broken URLs exit with 2\nstdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    // The summary on standard error, the listing alone on standard output.
    assert!(r.stderr.contains("64 URLs"), "{}", r.stderr);
    assert!(r.stderr.contains("61 ok, 1 redirected, 1 broken, 0 errors, 1 invalid"), "{}", r.stderr);
    assert!(r.stderr.contains("1 duplicates collapsed"), "{}", r.stderr);
    assert!(!r.stdout.contains("URLs in"), "{}", r.stdout);
    assert!(r.stdout.contains(&b.url("/status/404")), "broken URLs are listed: {}", r.stdout);
    assert!(r.stdout.contains("ftp://files.example/x"), "invalid lines are listed: {}", r.stdout);
    assert!(!r.stdout.contains(&a.url("/status/200?n=1")), "healthy URLs are not listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_a_summary_stores_the_results_and_exits_2_on_broken_urls() {
    let a = Fixture::start(IpAddr::from([127, 0, 0, 21])).await;
    let b = Fixture::start(IpAddr::from([127, 0, 0, 22])).await;
    let db = TestDb::fresh(Backend::Sqlite).await;
    let dir = std::env::temp_dir().join(format!("urlfleet-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = mixed_list(&a, &b, &dir);

    let mut cmd = urlfleet();
    cmd.args(["check", "--db", &db.url, "--allow", "127.0.0.0/8", "--no-politeness", "--retries", "0"]).arg(&list);
    let r = run(cmd).await;
    assert_mixed_verdict(&r, &a, &b);

    let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    let rows: Vec<(String, Option<i32>, Option<String>)> = sqlx::query_as(
        "SELECT u.url, l.status, l.kind FROM urls u LEFT JOIN latest_checks l ON l.url_id = u.id ORDER BY u.url",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(rows.len(), 63);
    let get = |u: &str| rows.iter().find(|r| r.0 == u).cloned().unwrap();
    assert_eq!(get(&b.url("/status/404")).1, Some(404));
    assert_eq!(get(&b.url("/redirect/2")), (b.url("/redirect/2"), Some(200), Some("redirected".into())));
    assert!(rows.iter().filter(|r| r.0.contains("/status/200")).all(|r| r.1 == Some(200)));

    // All healthy: exit 0.
    let ok_list = dir.join("ok.txt");
    std::fs::write(&ok_list, format!("{}\n{}\n", a.url("/status/204"), b.url("/status/200?x=1"))).unwrap();
    let mut cmd = urlfleet();
    cmd.args(["check", "--db", &db.url, "--allow", "127.0.0.0/8"]).arg(&ok_list);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("2 ok"), "{}", r.stderr);
    assert_eq!(r.stdout, "", "nothing failed, nothing listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_without_a_store_gives_the_same_verdict_keeps_nothing_and_stays_polite() {
    let a = Fixture::start(IpAddr::from([127, 0, 0, 23])).await;
    let b = Fixture::start(IpAddr::from([127, 0, 0, 24])).await;
    let dir = std::env::temp_dir().join(format!("urlfleet-nostore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = mixed_list(&a, &b, &dir);

    let mut cmd = urlfleet();
    cmd.current_dir(&dir).args(["check", "--no-store", "--allow", "127.0.0.0/8", "--retries", "0"]).arg(&list);
    let r = run(cmd).await;
    assert_mixed_verdict(&r, &a, &b);
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("urls.txt")], "nothing is written");

    // The default politeness holds: two at a time per host, request starts 100 ms apart.
    let hits = a.seen();
    assert_eq!(hits.len(), 60, "each distinct URL once");
    let mut starts: Vec<_> = hits.iter().map(|s| s.at).collect();
    starts.sort();
    let closest = starts.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    assert!(closest >= std::time::Duration::from_millis(95), "closest spacing {closest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_allow_list_loopback_targets_are_blocked() {
    let a = Fixture::local().await;
    let db = TestDb::fresh(Backend::Sqlite).await;
    let list = std::env::temp_dir().join(format!("urlfleet-blocked-{}.txt", std::process::id()));
    std::fs::write(&list, format!("{}\nhttp://localhost:{}/\n", a.url("/"), a.addr().port())).unwrap();
    let mut cmd = urlfleet();
    cmd.args(["check", "--db", &db.url]).arg(&list);
    let r = run(cmd).await;
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("2 errors"), "{}", r.stderr);
    assert_eq!(r.stdout.matches("blocked").count(), 2, "{}", r.stdout);
    assert_eq!(a.seen().len(), 0, "no connection is made to a blocked target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_a_one_line_error_with_the_password_masked() {
    let mut cmd = urlfleet();
    cmd.args(["coordinator", "--listen", "127.0.0.1:0", "--db", "postgres://fleet:hunter2@127.0.0.1:1/urlfleet"]);
    let r = run(cmd).await;
    assert_eq!(r.code, 1);
    assert!(!r.stderr.contains("hunter2"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let line = r.stderr.lines().rfind(|l| l.starts_with("urlfleet:")).expect("an error line");
    assert!(line.contains("postgres://fleet:***@127.0.0.1:1/urlfleet"), "{line}");

    let mut cmd = urlfleet();
    cmd.args(["coordinator", "--listen", "127.0.0.1:0", "--db", "mysql://x"]);
    let r = run(cmd).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("unsupported database URL"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_submit_watch_list_and_read_results() {
    let site = Fixture::local().await;
    let db = TestDb::fresh(Backend::Sqlite).await;
    let coordinator = Coordinator::spawn(&db.url, |_| {}).await;
    let worker = Worker::spawn(&coordinator.addr, |_| {});
    let list = std::env::temp_dir().join(format!("urlfleet-submit-{}.txt", std::process::id()));
    std::fs::write(&list, format!("{}\n{}\n", site.url("/status/200"), site.url("/status/500"))).unwrap();

    let mut cmd = urlfleet();
    cmd.args(["submit", "--watch", "--name", "nightly", "--coordinator", &coordinator.addr]).arg(&list);
    let r = run(cmd).await;
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let id: i64 = r.stdout.trim().parse().expect("the job id, alone on standard output");
    assert!(r.stderr.contains("completed"), "{}", r.stderr);

    let mut cmd = urlfleet();
    cmd.args(["jobs", "--coordinator", &coordinator.addr]);
    let r = run(cmd).await;
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("nightly") && r.stdout.contains("completed"), "{}", r.stdout);

    let mut cmd = urlfleet();
    cmd.args(["results", &id.to_string(), "--only", "broken", "--format", "csv", "--coordinator", &coordinator.addr]);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    assert!(lines[0].starts_with("url,class,kind,status"));
    assert!(lines[1].contains("/status/500") && lines[1].contains(",broken,broken,500,"), "{}", lines[1]);

    let mut cmd = urlfleet();
    cmd.args(["results", &id.to_string(), "--format", "ndjson", "--coordinator", &coordinator.addr]);
    let r = run(cmd).await;
    let rows: Vec<serde_json::Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);

    let mut cmd = urlfleet();
    cmd.args(["status", "999999", "--coordinator", &coordinator.addr]);
    let r = run(cmd).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not found"), "{}", r.stderr);

    worker.stop().await;
    coordinator.stop().await;
}

/// The inodes of the TCP sockets `pid` has open in the listening state.
fn listening_sockets(pid: u32) -> Vec<String> {
    let open: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut listening = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Columns: sl local remote st … inode (10th).
            if f.len() > 9 && f[3] == "0A" && open.contains(f[9]) {
                listening.push(format!("{} {}", f[1], f[9]));
            }
        }
    }
    listening
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_listens_on_no_socket() {
    let site = Fixture::local().await;
    let dir = std::env::temp_dir().join(format!("urlfleet-nosocket-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("urls.txt");
    let urls: Vec<String> = (0..6).map(|i| site.url(&format!("/delay/400?n={i}"))).collect();
    std::fs::write(&list, urls.join("\n")).unwrap();
    let mut cmd = urlfleet();
    cmd.arg("check")
        .arg(&list)
        .args(["--allow", "127.0.0.0/8", "--db"])
        .arg(format!("sqlite:{}", dir.join("db").display()));
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    // Sampled while the checks run (the site answers each after 400 ms, two at a time).
    let mut samples = 0;
    let mut seen_checks = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert_eq!(listening_sockets(pid), Vec::<String>::new(), "urlfleet check listens on a socket");
        samples += 1;
        seen_checks |= !site.seen().is_empty();
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(samples > 10 && seen_checks, "sampled {samples} times while checking");
    assert!(String::from_utf8_lossy(&out.stderr).contains("6 ok"));
    // The probe sees a listening socket when there is one (this process has the site's already).
    let before = listening_sockets(std::process::id()).len();
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert_eq!(listening_sockets(std::process::id()).len(), before + 1);
    drop(probe);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_leave_the_check_and_hostile_text_cannot_drive_the_terminal() {
    let site = Fixture::local().await;
    let dir = std::env::temp_dir().join(format!("urlfleet-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("urls.txt");
    let with_secret = site.url("/status/404").replace("http://", "http://alice:s3cr3t@");
    // A redirect to a URL with credentials, and an invalid line that tries to recolour the terminal.
    let to_secret = site.url(&format!("/to?u=http%3A%2F%2Fbob%3Ahunter2%40{}%2Fstatus%2F410", site.addr()));
    let hostile = "\u{1b}[2J\u{1b}[31mhttp://evil.example\u{7}/\u{1b}]0;pwned\u{7}";
    std::fs::write(&list, format!("{with_secret}\n{to_secret}\n{hostile}\n")).unwrap();
    for store in [vec!["--db".to_string(), format!("sqlite:{}", dir.join("db").display())], vec!["--no-store".into()]] {
        let mut cmd = urlfleet();
        cmd.arg("check").arg(&list).args(["--allow", "127.0.0.0/8", "--retries", "0"]).args(&store);
        cmd.env("RUST_LOG", "debug");
        let r = run(cmd).await;
        assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
        for secret in ["s3cr3t", "alice:", "bob:hunter2"] {
            assert!(!r.stdout.contains(secret), "{secret} printed:\n{}", r.stdout);
            assert!(!r.stderr.contains(secret), "{secret} logged:\n{}", r.stderr);
        }
        assert!(r.stdout.contains("http://***@127.0.0.1"), "{}", r.stdout);
        assert!(r.stdout.contains(&format!("→ http://***@{}/status/410", site.addr())), "{}", r.stdout);
        assert!(!r.stdout.contains('\u{1b}') && !r.stdout.contains('\u{7}'), "raw control characters:\n{}", r.stdout);
        assert!(r.stdout.contains("\\u{1b}[31m"), "escaped: {}", r.stdout);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
