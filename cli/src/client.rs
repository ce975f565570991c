//! A gRPC client of any coordinator: submit a URL list as a stream, watch a job, read results.

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use urlfleet_shared::connect::{AuthChannel, ClientAuth, Target};
use urlfleet_shared::plan::Entry;
use urlfleet_shared::proto::v1::{self as pb, job_service_client::JobServiceClient};

use crate::input::InputArgs;

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

/// The entries of a run's inputs, read by a task of their own as they are consumed.
pub struct Entries {
    rx: mpsc::Receiver<Vec<Entry>>,
    reader: tokio::task::JoinHandle<Result<()>>,
    first: Option<Vec<Entry>>,
    done: bool,
}

impl Entries {
    /// Starts reading `inputs` (see [`crate::input::read`]).
    pub fn start(inputs: Vec<String>, args: InputArgs) -> Self {
        let (tx, rx) = mpsc::channel(8);
        let reader = tokio::spawn(crate::input::read(inputs, args, tx));
        Self { rx, reader, first: None, done: false }
    }

    /// Whether the inputs hold no entry at all (reading as far as the first one). An input that
    /// cannot be read is an error here.
    pub async fn is_empty(&mut self) -> Result<bool> {
        if self.first.is_none() {
            match self.rx.recv().await {
                Some(batch) => self.first = Some(batch),
                None => {
                    self.done = true;
                    (&mut self.reader).await.context("reading the inputs")??;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The next batch; `None` at the end of every input. An input that fails makes the last item
    /// an error.
    pub async fn next(&mut self) -> Option<Result<Vec<Entry>>> {
        if let Some(b) = self.first.take() {
            return Some(Ok(b));
        }
        if self.done {
            return None;
        }
        if let Some(b) = self.rx.recv().await {
            return Some(Ok(b));
        }
        // The reader let go of its sender: it has ended.
        self.done = true;
        match (&mut self.reader).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Err(e)),
            Err(e) => Some(Err(anyhow::anyhow!("reading the inputs: {e}"))),
        }
    }
}

/// Submits the entries as a job, streamed in chunks as they are read. When an input fails midway
/// the call is abandoned, so the coordinator discards the partial job.
pub async fn submit(
    client: &mut Client,
    mut entries: Entries,
    options: pb::JobOptions,
) -> Result<pb::SubmitJobResponse> {
    let (tx, rx) = mpsc::channel::<pb::SubmitJobRequest>(4);
    tx.send(pb::SubmitJobRequest { item: Some(pb::submit_job_request::Item::Options(options)) }).await?;
    let forward = async move {
        let mut chunk = pb::UrlChunk::default();
        let flush = |chunk: &mut pb::UrlChunk| pb::SubmitJobRequest {
            item: Some(pb::submit_job_request::Item::Urls(std::mem::take(chunk))),
        };
        while let Some(batch) = entries.next().await {
            for e in batch? {
                match e {
                    Entry::Url(u) => chunk.urls.push(u),
                    Entry::Invalid(i) => chunk.invalid.push(pb::InvalidEntry { input: i.input, reason: i.reason }),
                }
                if chunk.urls.len() + chunk.invalid.len() >= CHUNK && tx.send(flush(&mut chunk)).await.is_err() {
                    return Ok(());
                }
            }
        }
        if !(chunk.urls.is_empty() && chunk.invalid.is_empty()) {
            let _ = tx.send(flush(&mut chunk)).await;
        }
        Ok::<(), anyhow::Error>(())
    };
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    // The coordinator's spans for this job join the caller's trace.
    urlfleet_shared::telemetry::inject_metadata(request.metadata_mut());
    let call = client.submit_job(request);
    tokio::pin!(call, forward);
    let mut forwarded = false;
    loop {
        tokio::select! {
            response = &mut call => return Ok(response.map_err(status_error)?.into_inner()),
            read = &mut forward, if !forwarded => {
                // An input that failed ends the run here: dropping the call abandons the upload.
                read?;
                forwarded = true;
            }
        }
    }
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
