//! Scenarios 2 and 3: strict rate limiters; workers scaling out.

use super::*;

/// Scenario 2: 32 hosts × 50 URLs against servers that answer 429 to any request sooner than 100 ms
/// after the previous one.
pub async fn polite(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let hosts = ctx.size(32, 4);
    let per_host = ctx.size(50, 5);
    let minimum = Duration::from_millis(100) * per_host as u32;
    report.section(
        &format!("2. Politeness: {hosts} hosts × {per_host} URLs, 429 when < 100 ms after the previous request (minimum {:.1} s)", minimum.as_secs_f64()),
        &["tool", "wall", "× minimum", "429 answers", "closest spacing seen by a server"],
    );
    for tool in ["urlfleet", "lychee"] {
        if tool == "lychee" && ctx.lychee.is_none() {
            report.row(&["lychee".into(), "not installed".into(), "".into(), "".into(), "".into()]);
            continue;
        }
        let mut servers = Vec::new();
        for h in 0..hosts {
            servers.push(Fixture::start(IpAddr::from([127, 0, 2, 1 + h as u8])).await);
        }
        let list = ctx.file(&format!("polite-{tool}.txt"));
        write_list(
            &list,
            (0..per_host).flat_map(|i| servers.iter().map(move |s| s.url(&format!("/polite/100/u{i}")))),
        )?;
        let m = if tool == "urlfleet" {
            let db = format!("sqlite:{}", ctx.file("polite.db").display());
            let _ = std::fs::remove_file(ctx.file("polite.db"));
            proc::measure(&ctx.urlfleet, &urlfleet_check_args(&list, Some(&db), &[])).await?
        } else {
            let lychee = ctx.lychee.as_ref().expect("checked above");
            proc::measure(lychee, &lychee_args(&list, &["--host-concurrency", "1", "--host-request-interval", "100ms"]))
                .await?
        };
        let throttled: u64 = servers.iter().map(|s| s.throttled()).sum();
        let served: usize = servers.iter().map(|s| s.count("/polite/")).sum();
        if served < hosts * per_host {
            bail!(
                "{tool}: the servers saw {served} requests, fewer than the {} URLs:\n{}{}",
                hosts * per_host,
                m.stdout,
                m.stderr
            );
        }
        let closest = spacings(&servers).0;
        report.row(&[
            tool.into(),
            format!("{:.2} s", m.wall.as_secs_f64()),
            format!("{:.2}×", m.wall.as_secs_f64() / minimum.as_secs_f64()),
            throttled.to_string(),
            format!("{:.1} ms", closest.as_secs_f64() * 1000.0),
        ]);
    }
    Ok(())
}

/// Scenario 3: a 50 ms target; a coordinator with 1, 2 and 4 workers of fixed concurrency, every
/// other setting at its default. Besides the wall, where the CPU went: the coordinator's, the
/// workers', this process's (the target servers) and the machine's (PostgreSQL is most of the rest).
pub async fn scaling(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let per_worker = 32usize;
    let hosts = 32usize;
    let n = ctx.size(6_400, 200);
    // Each worker runs `per_worker` checks of 50 ms at once.
    let ideal = per_worker as f64 * 20.0;
    report.section(
        &format!(
            "3. Scaling: {n} URLs on {hosts} hosts answering after 50 ms; each worker {per_worker} concurrent checks, defaults otherwise"
        ),
        &["workers", "wall", "URLs/s", "of linear (ideal)", "of linear (1 worker)", "CPU: coordinator / workers / targets / machine busy"],
    );
    let mut servers = Vec::new();
    for h in 0..hosts {
        servers.push(Fixture::start(IpAddr::from([127, 0, 3, 1 + h as u8])).await);
    }
    let mut base = None;
    for workers in if ctx.smoke { vec![1, 2] } else { vec![1, 2, 4] } {
        let list = ctx.file(&format!("scaling-{workers}.txt"));
        write_list(&list, (0..n).map(|i| servers[i % servers.len()].url(&format!("/delay/50?w={workers}&n={i}"))))?;
        let db = ctx.fresh_db(&format!("scaling{workers}")).await?;
        let (coordinator, addr) = start_coordinator(ctx, &db, &[]).await?;
        let mut ws = Vec::new();
        for _ in 0..workers {
            ws.push(start_worker(ctx, &addr, &["--concurrency", &per_worker.to_string()])?);
        }
        let cpu_before =
            (coordinator.cpu(), ws.iter().map(Service::cpu).sum::<Duration>(), own_cpu(), proc::machine_cpu());
        let m = proc::measure(&ctx.urlfleet, &lifted_submit_args(&list, &addr, 8)).await?;
        if m.code != 0 {
            bail!("scaling run failed:\n{}{}", m.stdout, m.stderr);
        }
        let (busy, all) = proc::machine_cpu();
        let secs = |d: Duration| d.as_secs_f64();
        let cpu = format!(
            "{:.2} / {:.2} / {:.2} / {:.0} % of {:.2} s",
            secs(coordinator.cpu() - cpu_before.0),
            secs(ws.iter().map(Service::cpu).sum::<Duration>() - cpu_before.1),
            secs(own_cpu() - cpu_before.2),
            proc::busy_percent(cpu_before.3, (busy, all)),
            secs(all - cpu_before.3.1),
        );
        let r = rate(n, m.wall);
        let b = *base.get_or_insert(r);
        report.row(&[
            workers.to_string(),
            format!("{:.2} s", m.wall.as_secs_f64()),
            format!("{r:.0}"),
            format!("{:.0} %", 100.0 * r / (ideal * workers as f64)),
            format!("{:.0} %", 100.0 * r / (b * workers as f64)),
            cpu,
        ]);
        for w in ws {
            w.stop().await?;
        }
        coordinator.stop().await?;
    }
    report.note(&format!(
        "Ideal per worker: {per_worker} / 50 ms = {ideal:.0} URLs/s. Workers, coordinator, PostgreSQL and the target servers \
         (this process) share this machine's cores; CPU is the seconds each used during the run, and the machine's busy share \
         of its cores' time."
    ));
    Ok(())
}

/// CPU time of this process (where the target servers run).
fn own_cpu() -> Duration {
    proc::process_cpu("/proc/self/stat")
}
