//! Protobuf bytes as a coordinator receives them, decoded and converted to domain values: never
//! panics, and what converts is bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use urlfleet_shared::convert::{MAX_RESULT_ERROR_BYTES, reported_result};
use urlfleet_shared::job::JobOptions;
use urlfleet_shared::proto::v1 as pb;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = pb::ResultBatch::decode(data) {
        for r in batch.results {
            if let Ok(r) = reported_result(r, "w".into()) {
                assert!(r.outcome.error.as_deref().is_none_or(|e| e.len() <= MAX_RESULT_ERROR_BYTES));
            }
        }
    }
    if let Ok(o) = pb::JobOptions::decode(data)
        && let Ok(domain) = JobOptions::try_from(&o)
    {
        assert_eq!(JobOptions::try_from(&pb::JobOptions::from(&domain)).unwrap(), domain);
    }
    if let Ok(m) = pb::SubmitJobRequest::decode(data) {
        let _ = m.item;
    }
});
