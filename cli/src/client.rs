//! A gRPC client of any coordinator: submit a URL list as a stream, watch a job, read results.

use std::path::Path;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use urlfleet_shared::connect::{AuthChannel, ClientAuth, Target};
use urlfleet_shared::proto::v1::{self as pb, job_service_client::JobServiceClient};

/// URLs per SubmitJob message.
const CHUNK: usize = 1_000;
/// Largest gRPC message accepted.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// A connected client.
pub type Client = JobServiceClient<AuthChannel>;

/// Connects to a coordinator, presenting the configured token on every call.
pub async fn connect(target: &Target, auth: &ClientAuth) -> Result<Client> {
    let channel = auth.channel(target).await?;
    Ok(JobServiceClient::with_interceptor(channel, auth.bearer()?)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// The lines of a URL list: `input` is a file path, or `-` for standard input.
pub async fn input_lines(
    input: &Path,
) -> Result<tokio::io::Lines<BufReader<Box<dyn tokio::io::AsyncRead + Unpin + Send>>>> {
    let reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if input == Path::new("-") {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(tokio::fs::File::open(input).await.with_context(|| format!("cannot open {}", input.display()))?)
    };
    Ok(BufReader::new(reader).lines())
}

/// The entry a line of a URL list holds: `None` for a blank line or a `#` comment.
pub fn entry(line: &str) -> Option<&str> {
    let line = line.trim();
    (!line.is_empty() && !line.starts_with('#')).then_some(line)
}

/// Submits the URLs of `input` (a file path, or `-` for standard input): one URL per line, blank
/// lines and `#` comments ignored. Lines are streamed in chunks as they are read.
pub async fn submit(client: &mut Client, input: &Path, options: pb::JobOptions) -> Result<pb::SubmitJobResponse> {
    let (tx, rx) = mpsc::channel::<pb::SubmitJobRequest>(4);
    tx.send(pb::SubmitJobRequest { item: Some(pb::submit_job_request::Item::Options(options)) }).await?;
    let mut lines = input_lines(input).await?;
    let read = tokio::spawn(async move {
        let mut chunk = Vec::with_capacity(CHUNK);
        while let Some(line) = lines.next_line().await? {
            let Some(line) = entry(&line) else { continue };
            chunk.push(line.to_string());
            if chunk.len() == CHUNK {
                let urls = pb::UrlChunk { urls: std::mem::take(&mut chunk) };
                if tx.send(pb::SubmitJobRequest { item: Some(pb::submit_job_request::Item::Urls(urls)) }).await.is_err()
                {
                    return Ok(());
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx
                .send(pb::SubmitJobRequest {
                    item: Some(pb::submit_job_request::Item::Urls(pb::UrlChunk { urls: chunk })),
                })
                .await;
        }
        Ok::<(), std::io::Error>(())
    });
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    // The coordinator's spans for this job join the caller's trace.
    urlfleet_shared::telemetry::inject_metadata(request.metadata_mut());
    let response = client.submit_job(request).await;
    read.await.context("reading input")?.with_context(|| format!("reading {}", input.display()))?;
    let response = response.map_err(status_error)?;
    Ok(response.into_inner())
}

/// Follows a job until it ends, calling `progress` on every event; returns the final job.
pub async fn watch(client: &mut Client, id: i64, mut progress: impl FnMut(&pb::Job)) -> Result<pb::Job> {
    let mut stream = client.watch_job(pb::WatchJobRequest { id }).await.map_err(status_error)?.into_inner();
    let mut last = None;
    while let Some(event) = stream.next().await {
        let event = event.map_err(status_error)?;
        if let Some(job) = event.job {
            progress(&job);
            let done = event.r#final;
            last = Some(job);
            if done {
                break;
            }
        }
    }
    match last {
        Some(j) if is_final(&j) => Ok(j),
        _ => bail!("the watch stream of job {id} ended before the job did"),
    }
}

/// Whether a job has ended.
pub fn is_final(job: &pb::Job) -> bool {
    matches!(pb::JobState::try_from(job.state), Ok(pb::JobState::Completed | pb::JobState::Cancelled))
}

/// Streams a job's results, optionally filtered by class.
pub async fn results(
    client: &mut Client,
    job_id: i64,
    classes: &[pb::OutcomeClass],
    mut each: impl FnMut(pb::UrlResult) -> Result<()>,
) -> Result<()> {
    let req = pb::ListResultsRequest {
        job_id,
        classes: classes.iter().map(|c| *c as i32).collect(),
        after: String::new(),
        limit: 0,
    };
    let mut stream = client.list_results(req).await.map_err(status_error)?.into_inner();
    while let Some(r) = stream.next().await {
        each(r.map_err(status_error)?)?;
    }
    Ok(())
}

/// A gRPC status as a one-line error.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", code_name(s.code()), s.message())
}

fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::NotFound => "not found",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::ResourceExhausted => "resource exhausted",
        _ => "error",
    }
}

/// Parses `KEY=VALUE`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}
