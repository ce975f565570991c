//! Scenario 4: ingest into PostgreSQL against `COPY`.

use super::*;

/// Scenario 4: result rows into PostgreSQL through the store's ingest path, against a raw COPY of the
/// same rows.
pub async fn ingest(ctx: &Ctx, report: &mut Report) -> Result<()> {
    use urlfleet_coordinator::store::{LeaseRequest, NewJob, PlannedUrl, RecheckPolicy, Seal};
    let n = ctx.size(100_000, 1_000);
    report.section(&format!("4. Ingest: {n} results into PostgreSQL"), &["path", "wall", "rows/s", "vs COPY"]);
    let db = ctx.fresh_db("ingest").await?;
    let store = urlfleet_coordinator::store::connect(&db).await?;
    let urls: Vec<PlannedUrl> = (0..n)
        .map(|i| PlannedUrl::new(format!("http://h{}.example/{i}", i % 100), format!("h{}.example", i % 100), i as u64))
        .collect();
    let (job, _) = store
        .create_job(NewJob {
            options: urlfleet_shared::JobOptions { name: "ingest".into(), ..Default::default() },
            priority: urlfleet_shared::Priority::Low,
            not_before_ms: 0,
            trace_parent: None,
            owner: String::new(),
        })
        .await?;
    for chunk in urls.chunks(10_000) {
        store
            .add_urls(
                job.id,
                chunk,
                RecheckPolicy { force: true, recheck_after: Duration::ZERO, recheck_broken_after: Duration::ZERO },
            )
            .await?;
    }
    store
        .seal_job(
            job.id,
            Seal {
                unique_key: "ingest".into(),
                unique_window: Duration::from_secs(600),
                received: n as u64,
                duplicates: 0,
                total: n as u64,
                priority: urlfleet_shared::Priority::Low,
                not_before_ms: 0,
            },
        )
        .await?;
    let mut leased = Vec::new();
    while let Some(l) = store
        .acquire_lease(&LeaseRequest {
            worker_id: "bench".into(),
            max_urls: 1_000,
            max_urls_lifted: 1_000,
            lifted_room: u64::MAX,
            ttl: Duration::from_secs(600),
            politeness: None,
        })
        .await?
    {
        for (id, _) in &l.urls {
            leased.push((l.id, l.epoch, *id));
        }
    }
    let now = urlfleet_shared::time::now_ms();
    let results: Vec<urlfleet_shared::ReportedResult> = leased
        .iter()
        .map(|(lease, epoch, id)| {
            let mut o = urlfleet_shared::CheckOutcome::error(urlfleet_shared::OutcomeKind::Ok, "", 1);
            o.error = None;
            o.status = Some(200);
            o.checked_at_ms = now;
            o.content_type = Some("text/html".into());
            urlfleet_shared::ReportedResult {
                reporter: "bench".into(),
                lease_id: *lease,
                epoch: *epoch,
                url_id: *id,
                outcome: o,
            }
        })
        .collect();
    // The coordinator's pipeline: batches of 500 as workers send them, many in flight (as from
    // several sessions), gathered into chunks and committed by concurrent writers.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = urlfleet_coordinator::ingest::IngestConfig::default();
    let ingestor = urlfleet_coordinator::ingest::Ingestor::start(store.clone(), config, shutdown.clone());
    let started = Instant::now();
    let mut inflight = futures::stream::FuturesUnordered::new();
    for batch in results.chunks(500) {
        let (ingestor, batch) = (ingestor.clone(), batch.to_vec());
        inflight.push(async move { ingestor.submit(batch).await });
    }
    use futures::StreamExt as _;
    while let Some(r) = inflight.next().await {
        r?;
    }
    let ingest_wall = started.elapsed();
    shutdown.cancel();
    let done = store.get_job(job.id).await?.context("job")?;
    if done.counts.checked != n as u64 {
        bail!("ingest counted {} of {n}", done.counts.checked);
    }

    // The same rows through COPY into a table shaped like `checks`.
    let mut c = sqlx::PgConnection::connect(&db).await?;
    sqlx::query("CREATE TABLE checks_copy (LIKE checks INCLUDING ALL)").execute(&mut c).await?;
    let mut text = String::with_capacity(n * 64);
    for r in &results {
        let _ = writeln!(
            text,
            "{}\t{}\t{}\tok\t200\t\\N\t\\N\t1\t0\ttext/html\t\\N\t\\N",
            r.url_id, r.outcome.checked_at_ms, r.lease_id
        );
    }
    let started = Instant::now();
    let mut copy = c.copy_in_raw("COPY checks_copy FROM STDIN").await?;
    copy.send(text.as_bytes()).await?;
    let copied = copy.finish().await?;
    let copy_wall = started.elapsed();
    if copied != n as u64 {
        bail!("COPY wrote {copied} of {n}");
    }

    // The ingest's writes in their most direct form: the same rows through the same two writes (a
    // finish of the `job_urls` row, a `checks` row into a copy of the table), one set-based statement
    // per table over every row at once, in one transaction, from a client that does nothing else. It
    // tells what the data model's writes cost against COPY.
    sqlx::query("CREATE TABLE checks_direct (LIKE checks INCLUDING ALL)").execute(&mut c).await?;
    let ids: Vec<i64> = results.iter().map(|r| r.url_id).collect();
    let leases: Vec<i64> = results.iter().map(|r| r.lease_id).collect();
    let later = now + 1;
    let started = Instant::now();
    let mut tx = c.begin().await?;
    let touched = [
        sqlx::query("UPDATE job_urls SET state = 'done', kind = 'ok' WHERE job_id = $1 AND url_id = ANY($2)")
            .bind(job.id)
            .bind(&ids)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        sqlx::query(
            "INSERT INTO checks_direct (url_id, checked_at, lease_id, kind, status, attempts, response_ms, content_type) \
             SELECT id, $3, lease, 'ok', 200, 1, 0, 'text/html' FROM UNNEST($1::bigint[], $2::bigint[]) AS t(id, lease)",
        )
        .bind(&ids)
        .bind(&leases)
        .bind(later)
        .execute(&mut *tx)
        .await?
        .rows_affected(),
    ];
    tx.commit().await?;
    let direct_wall = started.elapsed();
    if touched.iter().any(|t| *t != n as u64) {
        bail!("the direct statements touched {touched:?} rows of {n}");
    }
    let (ir, cr) = (rate(n, ingest_wall), rate(n, copy_wall));
    report.row(&[
        format!(
            "coordinator ingest pipeline (batches of 500, chunks of {}, {} writers)",
            config.chunk_rows, config.writers
        ),
        format!("{:.2} s", ingest_wall.as_secs_f64()),
        format!("{ir:.0}"),
        format!("{:.2}×", ir / cr),
    ]);
    report.row(&[
        "raw COPY into a copy of `checks`".into(),
        format!("{:.2} s", copy_wall.as_secs_f64()),
        format!("{cr:.0}"),
        "1.00×".into(),
    ]);
    let fr = rate(n, direct_wall);
    report.row(&[
        "the same two writes as one statement per table over all rows, one transaction".into(),
        format!("{:.2} s", direct_wall.as_secs_f64()),
        format!("{fr:.0}"),
        format!("{:.2}×", fr / cr),
    ]);
    report.note("The ingest path writes `checks` (whose newest row of a URL is its latest state), finishes `job_urls` and adds to job counters per result; COPY writes `checks` only.");
    Ok(())
}
