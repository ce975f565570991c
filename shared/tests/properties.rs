//! Properties of what hostile input reaches, over generated inputs: the URL normalizer, the planner
//! that reads a submission's entries, the proto → domain conversions, redaction and terminal escaping.
//! None may panic; each keeps its promise for every input. (The `fuzz/` targets explore the same
//! functions coverage-guided, without bounds on time.)

use proptest::prelude::*;
use urlfleet_shared::convert::{MAX_RESULT_ERROR_BYTES, reported_result};
use urlfleet_shared::job::JobOptions;
use urlfleet_shared::plan::Planner;
use urlfleet_shared::proto::v1 as pb;
use urlfleet_shared::url::{NormalizedUrl, printable, redact};

/// Strings that look like URLs often enough to reach deep into the parser.
fn url_like() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![Just("http://"), Just("https://"), Just("HTTP://"), Just("ftp://"), Just(""), Just("//")];
    let userinfo = prop_oneof![Just(""), Just("u:p@"), Just("user@"), Just(":@"), Just("a:b:c@")];
    let host = prop_oneof![
        "[a-zA-Z0-9.-]{0,20}",
        Just("[::1]".to_string()),
        Just("127.0.0.1".to_string()),
        Just("xn--bcher-kva.example".to_string()),
        Just("bücher.example".to_string()),
        Just("0x7f.1".to_string()),
        "\\PC{0,8}",
    ];
    let port = prop_oneof![Just(String::new()), (0u32..70_000).prop_map(|p| format!(":{p}"))];
    let path = "(/[a-zA-Z0-9%._~!$&'()*+,;=:@ -]{0,12}){0,4}";
    let query = prop_oneof![Just(String::new()), "\\?[a-zA-Z0-9%=&_.+-]{0,24}"];
    let fragment = prop_oneof![Just(String::new()), "#\\PC{0,8}"];
    (scheme, userinfo, host, port, path, query, fragment)
        .prop_map(|(s, u, h, p, pa, q, f)| format!("{s}{u}{h}{p}{pa}{q}{f}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn normalization_never_panics_and_is_idempotent(input in prop_oneof![url_like(), "\\PC{0,64}", ".{0,64}"]) {
        if let Ok(u) = NormalizedUrl::parse(&input) {
            let again = NormalizedUrl::parse(u.as_str()).expect("a normalized URL parses");
            prop_assert_eq!(again.as_str(), u.as_str());
            prop_assert!(!u.host().is_empty());
            let stripped = NormalizedUrl::parse_with(u.as_str(), true).expect("and without tracking parameters");
            let twice = NormalizedUrl::parse_with(stripped.as_str(), true).expect("parses again");
            prop_assert_eq!(twice.as_str(), stripped.as_str());
        }
    }

    #[test]
    fn the_planner_takes_every_entry_once(entries in prop::collection::vec(prop_oneof![url_like(), "\\PC{0,40}"], 0..60)) {
        let options = JobOptions::default();
        let mut planner = Planner::new(&options, 3).with_invalid_entry_bytes(32);
        for e in &entries {
            planner.push(e);
        }
        let mut taken = 0;
        for lane in 0..3 {
            taken += planner.take(lane, usize::MAX).len() as u64;
        }
        let plan = planner.finish(&options);
        let non_blank = entries.iter().filter(|e| !e.trim().is_empty()).count() as u64;
        prop_assert_eq!(plan.received, non_blank);
        prop_assert_eq!(plan.total, taken + plan.invalid.len() as u64);
        prop_assert_eq!(plan.received, plan.total + plan.duplicates);
        prop_assert!(plan.invalid.iter().all(|i| i.input.len() <= 32), "invalid entries are kept bounded");
    }

    #[test]
    fn a_workers_result_converts_or_is_refused_and_is_always_bounded(
        kind in -2i32..20,
        status in prop_oneof![Just(0u32), 100u32..600, any::<u32>()],
        checked_at in any::<i64>(),
        error in prop_oneof![".{0,40}", Just("é".repeat(3_000)), Just("a\0b".to_string())],
        final_url in prop_oneof![url_like(), Just("h".repeat(9_000))],
        hops in 0usize..40,
        paused in any::<i64>(),
    ) {
        let wire = pb::CheckResult {
            kind,
            status,
            checked_at_ms: checked_at,
            error,
            final_url,
            redirects: vec![pb::RedirectHop { url: "http://a.example/".into(), status: 301 }; hops],
            host_paused_until_ms: paused,
            ..Default::default()
        };
        if let Ok(r) = reported_result(wire, "w".into()) {
            prop_assert!(r.outcome.error.as_deref().is_none_or(|e| e.len() <= MAX_RESULT_ERROR_BYTES && !e.contains('\0')));
            prop_assert!(r.outcome.redirects.len() <= 32);
            prop_assert!(r.outcome.final_url.as_deref().is_none_or(|u| u.len() <= 8_192));
            prop_assert!(r.outcome.checked_at_ms > 0);
            prop_assert!(r.outcome.status.is_none_or(|s| s > 0));
        }
    }

    #[test]
    fn job_options_convert_or_are_refused(
        priority in -1i32..6,
        key in prop_oneof![".{0,10}", Just("k".repeat(400))],
        concurrency in prop::option::of(any::<u32>()),
        interval in prop::option::of(any::<u64>()),
        recheck in any::<u64>(),
        labels in prop::collection::btree_map(".{0,8}", ".{0,8}", 0..4),
    ) {
        let wire = pb::JobOptions {
            priority,
            idempotency_key: key,
            politeness: Some(pb::HostPolicy { concurrency, interval_ms: interval }),
            recheck_after_ms: recheck,
            labels: labels.into_iter().collect(),
            ..Default::default()
        };
        if let Ok(o) = JobOptions::try_from(&wire) {
            // What converts comes back as it went.
            prop_assert_eq!(JobOptions::try_from(&pb::JobOptions::from(&o)).unwrap(), o);
        }
    }

    #[test]
    fn redaction_leaves_no_credentials(
        user in "[a-z]{1,8}",
        secret in "[A-Za-z0-9]{6,12}",
        before in "[ a-z(]{0,10}",
        rest in "(/[a-z]{0,6}){0,3}",
        noise in ".{0,30}",
    ) {
        let text = format!("{before}https://{user}:{secret}@h.example{rest} {noise}");
        let r = redact(&text);
        let leaked = format!("{user}:{secret}@");
        prop_assert!(!r.contains(&leaked), "{}", r);
        prop_assert!(r.contains("https://***@h.example"), "{}", r);
        let _ = redact(&noise);
    }

    #[test]
    fn printable_text_holds_no_control_character(text in "\\PC{0,20}|.{0,40}|[\\x00-\\x1f\\x7f-\\x9f\\u{202a}-\\u{202e}a]{0,20}") {
        let p = printable(&text);
        prop_assert!(!p.chars().any(|c| c.is_control()), "{:?}", p);
        if !text.chars().any(char::is_control) && p.len() == text.len() {
            prop_assert_eq!(p.as_ref(), text.as_str());
        }
    }
}
