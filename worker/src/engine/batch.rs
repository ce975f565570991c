//! Checking a batch of URLs of one host (a lease, or one host's share of a list) so that waiting costs
//! a queue entry, not a slot: at most the host's concurrency of attempts are under way at once, a URL
//! waiting for its retry back-off sits in a timer queue, and URLs not started yet are just data. The
//! politeness gate then spaces the attempts and bounds the requests in flight across all batches.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use urlfleet_shared::{CheckOutcome, HostPolicy, OutcomeKind};

use super::{Engine, InProgress, Step};

/// Checks every URL of `urls` under `policy`, calling `done` with each URL's key and outcome as it
/// finishes, in the order they finish. URLs start in the order given, and are taken from `urls` only
/// as they start: a URL not started yet is whatever the caller's iterator holds. Cancelling `cancel`
/// ends the batch: checks under way end with what they have, and the others are reported as
/// cancelled.
///
/// With `valid_until`, no attempt starts at or after the instant it holds (a lease whose renewal is
/// not confirmed): the batch waits until the instant moves on, or it is cancelled. A check that
/// panics ends as an error of its own; the batch goes on.
pub async fn check_batch<K: Send, U: AsRef<str>>(
    engine: &Engine,
    urls: impl IntoIterator<Item = (K, U), IntoIter: ExactSizeIterator>,
    policy: HostPolicy,
    cancel: &CancellationToken,
    mut valid_until: Option<watch::Receiver<Instant>>,
    mut done: impl FnMut(K, CheckOutcome),
) {
    let limit = policy.concurrency.max(1) as usize;
    // Of a polite host, an attempt that starts with fewer attempts left to start than are then under
    // way is one whose connection no later attempt needs: it is closed with the answer, so a host
    // whose batch is done holds no idle connection. (A host whose limits are lifted is usually
    // checked by lease after lease, which reuse its connections.)
    let polite = !policy.interval.is_zero();
    let surplus = |left: usize, running: usize| polite && left < running;
    let mut fresh = urls.into_iter();
    // Checks waiting for their next attempt, by due time (and arrival, to keep the order stable).
    let mut waiting: BTreeMap<(Instant, u64), (K, InProgress)> = BTreeMap::new();
    let mut arrivals = 0u64;
    let mut under_way = FuturesUnordered::new();
    let attempt = |key: K, mut check: InProgress| async move {
        let step = AssertUnwindSafe(engine.step(&mut check, policy, cancel)).catch_unwind().await;
        let step = step.unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let url = urlfleet_shared::url::redact(check.parsed.as_str());
            tracing::error!(panic = %why, url.full = %url, "a check panicked; it ends as an error");
            Step::Done(CheckOutcome::error(OutcomeKind::Other, format!("the check failed unexpectedly: {why}"), 0))
        });
        (key, check, step)
    };
    let open = |v: &Option<watch::Receiver<Instant>>| v.as_ref().is_none_or(|v| Instant::now() < *v.borrow());
    loop {
        // Checks due for a retry go first (they came first), then new ones, up to the limit.
        while under_way.len() < limit && !cancel.is_cancelled() && open(&valid_until) {
            let now = Instant::now();
            if let Some(entry) = waiting.first_entry().filter(|e| e.key().0 <= now) {
                let (key, mut check) = entry.remove();
                check.last_of_host = surplus(fresh.len() + waiting.len(), under_way.len() + 1);
                under_way.push(attempt(key, check));
                continue;
            }
            let Some((key, url)) = fresh.next() else { break };
            match engine.begin(url.as_ref()) {
                Ok(mut check) => {
                    check.last_of_host = surplus(fresh.len() + waiting.len(), under_way.len() + 1);
                    under_way.push(attempt(key, check));
                }
                Err(outcome) => done(key, *outcome),
            }
        }
        if cancel.is_cancelled() && under_way.is_empty() {
            for (_, (key, mut check)) in std::mem::take(&mut waiting) {
                done(key, engine.give_up(&mut check));
            }
            for (key, _) in fresh.by_ref() {
                done(key, CheckOutcome::error(OutcomeKind::Other, "check cancelled", 0));
            }
            return;
        }
        if under_way.is_empty() && waiting.is_empty() && fresh.len() == 0 {
            return;
        }
        // A check due for its retry matters only when there is room to start it; otherwise the next
        // check to finish makes room (and a due timer would spin).
        let gate_open = open(&valid_until);
        let next_due = waiting
            .first_key_value()
            .map(|(k, _)| k.0)
            .filter(|_| under_way.len() < limit && !cancel.is_cancelled() && gate_open);
        let reopened = async {
            match valid_until.as_mut() {
                Some(v) if !gate_open => {
                    if v.changed().await.is_err() {
                        // The lease's owner is gone: nothing will renew it.
                        std::future::pending::<()>().await;
                    }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = reopened => {}
            Some((key, check, step)) = under_way.next(), if !under_way.is_empty() => match step {
                Step::Done(outcome) => done(key, outcome),
                Step::RetryAfter(delay) => {
                    arrivals += 1;
                    waiting.insert((Instant::now() + delay, arrivals), (key, check));
                }
            },
            () = sleep_until_due(next_due), if next_due.is_some() => {}
            () = cancel.cancelled(), if !cancel.is_cancelled() => {}
        }
    }
}

async fn sleep_until_due(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}
