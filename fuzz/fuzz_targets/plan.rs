//! A submission's entries, as the input reader splits a list into lines, through the planner: never
//! panics, and every entry is counted once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use urlfleet_shared::job::JobOptions;
use urlfleet_shared::plan::Planner;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let options = JobOptions { strip_tracking_params: data.first().is_some_and(|b| b & 1 == 1), ..Default::default() };
    let mut planner = Planner::new(&options, 3).with_invalid_entry_bytes(64);
    for line in text.lines() {
        planner.push(line);
    }
    let taken: usize = (0..3).map(|lane| planner.take(lane, usize::MAX).len()).sum();
    let plan = planner.finish(&options);
    assert_eq!(plan.total, taken as u64 + plan.invalid.len() as u64);
    assert_eq!(plan.received, plan.total + plan.duplicates);
});
