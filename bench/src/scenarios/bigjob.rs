//! Scenario 5: a million-URL submission.

use super::*;

/// Scenario 5: a job of 1,000,000 URLs (10 % duplicates, 1,000 hosts) submitted through the client
/// stream until every URL is persisted and leasable.
pub async fn bigjob(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let n = ctx.size(1_000_000, 2_000);
    report.section(
        &format!("5. Big job: {n} URLs (10 % duplicates, 1,000 hosts) to a coordinator on PostgreSQL"),
        &["measure", "value"],
    );
    let db = ctx.fresh_db("bigjob").await?;
    let (coordinator, addr) = start_coordinator(ctx, &db, &[]).await?;
    let mut client = pb::job_service_client::JobServiceClient::connect(addr).await?.max_encoding_message_size(16 << 20);
    let distinct = n - n / 10;
    let stream = async_stream_of(n, distinct);
    let started = Instant::now();
    let resp = client.submit_job(stream).await.map_err(|s| anyhow::anyhow!("submit: {s}"))?.into_inner();
    let wall = started.elapsed();
    let job = resp.job.context("job")?;
    let counts = job.counts.unwrap_or_default();
    if counts.total != distinct as u64 || counts.duplicates != (n - distinct) as u64 {
        bail!("big job counted total {} duplicates {}", counts.total, counts.duplicates);
    }
    let peak = coordinator.peak_rss();
    coordinator.stop().await?;

    // The database's own floor on this machine: the same distinct rows into copies of the two tables
    // (same indexes), one INSERT … SELECT each, generated inside the server, no client at all.
    let mut c = sqlx::PgConnection::connect(&db).await?;
    sqlx::query("CREATE TABLE urls_raw (LIKE urls INCLUDING ALL)").execute(&mut c).await?;
    sqlx::query("CREATE TABLE job_urls_raw (LIKE job_urls INCLUDING ALL)").execute(&mut c).await?;
    let raw_started = Instant::now();
    sqlx::query(
        "INSERT INTO urls_raw (url) SELECT 'https://host' || (k % 1000) || '.example/page/' || k \
         FROM generate_series(0, $1 - 1) AS k",
    )
    .bind(distinct as i64)
    .execute(&mut c)
    .await?;
    sqlx::query(
        "INSERT INTO job_urls_raw (job_id, url_id, host, state, url_order, seq) \
         SELECT 1, id, 'host' || (id % 1000) || '.example', 'pending', 30, id FROM urls_raw",
    )
    .execute(&mut c)
    .await?;
    let raw = raw_started.elapsed();
    report.row(&[
        "submission to all persisted and leasable".into(),
        format!(
            "{:.2} s ({:.0} URLs/s; {:.2}× the database's own floor below)",
            wall.as_secs_f64(),
            rate(n, wall),
            wall.as_secs_f64() / raw.as_secs_f64()
        ),
    ]);
    report.row(&[
        "floor: the distinct URLs as two INSERT … SELECT statements inside PostgreSQL".into(),
        format!("{:.2} s", raw.as_secs_f64()),
    ]);
    report.row(&["coordinator peak memory".into(), mib(peak)]);
    report.row(&["distinct / duplicates".into(), format!("{} / {}", counts.total, counts.duplicates)]);
    Ok(())
}

fn async_stream_of(
    n: usize,
    distinct: usize,
) -> impl tokio_stream::Stream<Item = pb::SubmitJobRequest> + Send + 'static {
    let first = pb::SubmitJobRequest {
        item: Some(pb::submit_job_request::Item::Options(pb::JobOptions { name: "big".into(), ..Default::default() })),
    };
    let chunks = (0..n).step_by(10_000).map(move |start| {
        let urls = (start..(start + 10_000).min(n)).map(|i| {
            let k = i % distinct; // the last 10 % repeat earlier URLs
            format!("https://host{}.example/page/{k}", k % 1_000)
        });
        pb::SubmitJobRequest {
            item: Some(pb::submit_job_request::Item::Urls(pb::UrlChunk { urls: urls.collect(), ..Default::default() })),
        }
    });
    tokio_stream::iter(std::iter::once(first).chain(chunks))
}
