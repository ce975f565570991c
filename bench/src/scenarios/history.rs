//! Scenario 14: one job repeated, as a daily schedule does — the same list checked again and again
//! with `--force`, on the embedded store and on the cluster — to show whether a URL's later checks
//! cost what its early ones did, in wall time and in CPU per URL (the tier's: coordinator and
//! PostgreSQL processes; the embedded check's: the whole process).

use super::*;

/// Runs averaged at each end of the series: one run alone is at the mercy of the machine.
const ENDS: usize = 3;

/// One run's cost.
#[derive(Clone, Copy)]
struct Run {
    wall: Duration,
    /// CPU of the store's tier (the embedded check: the whole process).
    tier_cpu: Duration,
    /// CPU of the worker (cluster only).
    worker_cpu: Duration,
}

/// Scenario 14.
pub async fn repeated(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let n = ctx.size(20_000, 200);
    let runs = ctx.size(25, 2 * ENDS);
    report.section(
        &format!("14. One job repeated: {n} URLs checked {runs} times with --force, politeness off, nginx on loopback"),
        &["path", "runs", "wall", "tier CPU per URL", "worker CPU per URL", "last vs early"],
    );
    let Some((nginx, port)) = start_nginx(ctx).await? else {
        report.note("nginx is not installed: scenario skipped (apt-get install nginx-light).");
        return Ok(());
    };
    let list = ctx.file("repeated.txt");
    write_list(&list, (0..n).map(|i| format!("http://127.0.0.1:{port}/r/{i}")))?;

    let path = ctx.file("repeated.db");
    let _ = std::fs::remove_file(&path);
    let db = format!("sqlite:{}", path.display());
    let mut embedded = Vec::with_capacity(runs);
    for _ in 0..runs {
        let m = proc::measure(
            &ctx.urlfleet,
            &urlfleet_check_args(&list, Some(&db), &["--no-politeness", "--retries", "0", "--force"]),
        )
        .await?;
        expect_all_ok(&m, n, "urlfleet check --force")?;
        embedded.push(Run { wall: m.wall, tier_cpu: m.cpu, worker_cpu: Duration::ZERO });
    }
    rows(report, "check (SQLite), whole process", n, &embedded, false);

    let db = ctx.fresh_db("repeated").await?;
    let (coordinator, addr) = start_coordinator(ctx, &db, &["--lease-size", "500"]).await?;
    let worker = start_worker(ctx, &addr, &["--retries", "0"])?;
    let mut args = fast_submit_args(&list, &addr);
    args.push("--force".into());
    let mut cluster = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (c0, w0, p0) = (coordinator.cpu(), worker.cpu(), proc::postgres_cpu());
        let submit = proc::measure(&ctx.urlfleet, &args).await?;
        if submit.code != 0 || !submit.stderr.contains(&format!("{n} ok")) {
            bail!("repeated cluster run failed (exit {}):\n{}\n{}", submit.code, submit.stdout, submit.stderr);
        }
        let tier = (coordinator.cpu() - c0) + proc::postgres_cpu().saturating_sub(p0);
        cluster.push(Run { wall: submit.wall, tier_cpu: tier, worker_cpu: worker.cpu() - w0 });
    }
    rows(report, "coordinator + PostgreSQL, 1 worker", n, &cluster, true);
    worker.stop().await?;
    coordinator.stop().await?;
    nginx.stop().await?;
    report.note(&format!(
        "Early: runs 2–{}; last: runs {}–{runs} (run 1 also creates every URL). Tier CPU is user + system \
         time from /proc: the coordinator's and every PostgreSQL process's; of `check`, the whole process.",
        1 + ENDS,
        runs + 1 - ENDS
    ));
    Ok(())
}

/// The early and the last runs of a series, and their ratio.
fn rows(report: &mut Report, what: &str, n: usize, runs: &[Run], worker: bool) {
    let mean = |rs: &[Run]| {
        let k = rs.len().max(1) as u32;
        Run {
            wall: rs.iter().map(|r| r.wall).sum::<Duration>() / k,
            tier_cpu: rs.iter().map(|r| r.tier_cpu).sum::<Duration>() / k,
            worker_cpu: rs.iter().map(|r| r.worker_cpu).sum::<Duration>() / k,
        }
    };
    let early = mean(&runs[1.min(runs.len())..(1 + ENDS).min(runs.len())]);
    let last = mean(&runs[runs.len().saturating_sub(ENDS)..]);
    let per_url = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6 / n as f64);
    let worker_cell = |r: &Run| if worker { per_url(r.worker_cpu) } else { String::new() };
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    report.row(&[
        what.into(),
        "early".into(),
        format!("{:.2} s", early.wall.as_secs_f64()),
        per_url(early.tier_cpu),
        worker_cell(&early),
        String::new(),
    ]);
    report.row(&[
        what.into(),
        "last".into(),
        format!("{:.2} s", last.wall.as_secs_f64()),
        per_url(last.tier_cpu),
        worker_cell(&last),
        format!("wall {:.2}×, tier CPU {:.2}×", ratio(last.wall, early.wall), ratio(last.tier_cpu, early.tier_cpu)),
    ]);
}
