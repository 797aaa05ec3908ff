//! Unit tests of the parent module.
use super::*;
use crate::mtasts::policy::{StsRecord, parse_policy};

const RULES: Rules = Rules {
    grace: 60,
    negative_ttl: 300,
    retry_after: 300,
    refresh_after: 86_400,
};
const T0: u64 = 1_000_000;

fn policy(mode: &str, mx: &str, max_age: u64) -> Policy {
    let body = format!("version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: {max_age}\n");
    parse_policy(body.as_bytes()).unwrap()
}

#[test]
fn the_fleets_policy_settles_a_miss_and_only_a_newer_one_a_refresh() {
    let now = T0 + 50_000;
    let theirs = cached("enforce", "2", T0 + 40_000);
    let none = Entry::default();
    let settles =
        |own: &Entry, shared: &Entry, t| fleet_settles("a.example", own, shared, t, now, &RULES);
    assert!(settles(&none, &theirs, Trigger::Miss));
    assert!(!settles(&none, &none, Trigger::Miss), "nothing shared");
    let expired = cached("enforce", "0", T0 - 100_000);
    assert!(
        !settles(&none, &expired, Trigger::Miss),
        "an expired policy"
    );
    assert!(
        settles(&theirs, &theirs, Trigger::Miss),
        "as recent as ours"
    );
    let ours_newer = cached("enforce", "3", T0 + 45_000);
    assert!(
        !settles(&ours_newer, &theirs, Trigger::Miss),
        "older than ours"
    );
    let ours_old = cached("enforce", "1", T0);
    assert!(
        settles(&ours_old, &theirs, Trigger::Refresh),
        "newer, not due"
    );
    assert!(!settles(&theirs, &theirs, Trigger::Refresh), "not newer");
    let theirs_due = cached("enforce", "2", T0 + 1_000);
    assert!(is_due("a.example", &theirs_due, now, &RULES));
    assert!(
        !settles(&ours_old, &theirs_due, Trigger::Refresh),
        "itself due"
    );
    assert!(
        !settles(&none, &theirs, Trigger::Recheck),
        "re-checks are ours"
    );
}

fn cached(mode: &str, id: &str, fetched_at: u64) -> Entry {
    let p = policy(mode, "mx.example.com", 86_400);
    Entry {
        policy: Some(CachedPolicy {
            expires_at: fetched_at + p.max_age,
            fetched_at,
            id: id.into(),
            policy: p,
        }),
        last_check: fetched_at,
        ..Entry::default()
    }
}

fn found(id: &str) -> TxtLookup {
    TxtLookup::Found {
        record: StsRecord {
            id: id.into(),
            raw: format!("v=STSv1; id={id}"),
        },
    }
}

fn gone() -> TxtLookup {
    TxtLookup::NoPolicy {
        reason: "NXDOMAIN".into(),
    }
}

fn servfail() -> TxtLookup {
    TxtLookup::Failed {
        reason: "SERVFAIL".into(),
    }
}

fn tls_error() -> FetchError {
    FetchError::Tls("bad certificate".into())
}

fn decided(step: Step) -> Decision {
    match step {
        Step::Done(d) => d,
        Step::Fetch(p) => panic!("expected a decision, got a fetch of id {}", p.id),
    }
}

fn pending(step: Step) -> Pending {
    match step {
        Step::Fetch(p) => p,
        Step::Done(d) => panic!("expected a fetch, got {:?}", d.outcome),
    }
}

fn fetch_id(step: Step) -> String {
    pending(step).id
}

/// A whole discovery step that reaches a fetch with the given result.
fn fetched(
    old: &Entry,
    trigger: Trigger,
    txt: &TxtLookup,
    result: Result<Policy, FetchError>,
    now: u64,
) -> Decision {
    after_fetch(
        pending(after_txt(old, trigger, txt, now, &RULES)),
        result,
        now,
        &RULES,
    )
}

#[test]
fn lookups() {
    let e = cached("enforce", "1", T0);
    let table = [
        (None, T0, LookupRule::Miss),
        (Some(&e), T0 + 59, LookupRule::Hit { recheck: false }),
        (Some(&e), T0 + 60, LookupRule::Hit { recheck: true }),
        (Some(&e), T0 + 86_400, LookupRule::Miss),
    ];
    for (entry, now, want) in table {
        assert_eq!(on_lookup(entry, now, &RULES), want, "at {now}");
    }
    let negative = Entry {
        no_policy_until: Some(T0 + 300),
        ..Entry::default()
    };
    assert_eq!(
        on_lookup(Some(&negative), T0 + 299, &RULES),
        LookupRule::NegativeHit
    );
    assert_eq!(
        on_lookup(Some(&negative), T0 + 300, &RULES),
        LookupRule::Miss
    );
}

#[test]
fn same_id_never_extends_max_age() {
    let old = cached("enforce", "1", T0);
    for trigger in [Trigger::Miss, Trigger::Recheck] {
        let d = decided(after_txt(&old, trigger, &found("1"), T0 + 5000, &RULES));
        assert_eq!(d.outcome, Outcome::Unchanged);
        assert_eq!(d.entry.policy, old.policy, "fetched_at and expires_at kept");
        assert_eq!(d.entry.last_check, T0 + 5000);
    }
}

#[test]
fn changed_id_fetches_and_replaces() {
    let old = cached("enforce", "1", T0);
    let now = T0 + 100;
    assert_eq!(
        fetch_id(after_txt(&old, Trigger::Recheck, &found("2"), now, &RULES)),
        "2"
    );
    let new = policy("enforce", "mx2.example.com", 1000);
    let d = fetched(&old, Trigger::Recheck, &found("2"), Ok(new), now);
    assert_eq!(d.outcome, Outcome::Fetched);
    let p = d.entry.policy.unwrap();
    assert_eq!(
        (p.id.as_str(), p.fetched_at, p.expires_at),
        ("2", now, now + 1000)
    );
    assert_eq!(
        d.transition,
        Some(Transition::Replaced {
            from: Mode::Enforce,
            to: Mode::Enforce,
            mx_changed: true
        })
    );
}

#[test]
fn a_first_fetch_is_a_new_policy() {
    let old = Entry::default();
    assert_eq!(
        fetch_id(after_txt(&old, Trigger::Miss, &found("7"), T0, &RULES)),
        "7"
    );
    let d = fetched(
        &old,
        Trigger::Miss,
        &found("7"),
        Ok(policy("testing", "mx.a", 60)),
        T0,
    );
    assert_eq!(d.transition, Some(Transition::New));
    assert_eq!(
        on_lookup(Some(&d.entry), T0 + 59, &RULES),
        LookupRule::Hit { recheck: false }
    );
}

#[test]
fn txt_gone_keeps_a_valid_policy() {
    let old = cached("enforce", "1", T0);
    let d = decided(after_txt(&old, Trigger::Recheck, &gone(), T0 + 100, &RULES));
    assert_eq!(d.outcome, Outcome::Kept);
    assert_eq!(d.entry.policy, old.policy);
    assert_eq!(d.entry.no_policy_until, None);
}

#[test]
fn txt_gone_with_nothing_valid_is_a_negative_entry() {
    for old in [Entry::default(), cached("enforce", "1", T0 - 90_000)] {
        let d = decided(after_txt(&old, Trigger::Miss, &gone(), T0, &RULES));
        assert_eq!(d.outcome, Outcome::NoPolicy);
        assert_eq!(d.entry.policy, None);
        assert_eq!(d.entry.no_policy_until, Some(T0 + RULES.negative_ttl));
        assert_eq!(
            on_lookup(Some(&d.entry), T0 + 299, &RULES),
            LookupRule::NegativeHit
        );
        assert_eq!(
            on_lookup(Some(&d.entry), T0 + 300, &RULES),
            LookupRule::Miss
        );
    }
}

#[test]
fn failures_never_remove_a_valid_policy() {
    let old = cached("enforce", "1", T0);
    let now = T0 + 100;
    let d = decided(after_txt(&old, Trigger::Recheck, &servfail(), now, &RULES));
    assert_eq!(d.outcome, Outcome::TxtFailed);
    assert_eq!(d.entry.policy, old.policy);
    assert_eq!(d.kept_mode, Some(Mode::Enforce));

    let d = fetched(&old, Trigger::Recheck, &found("2"), Err(tls_error()), now);
    assert_eq!(d.outcome, Outcome::FetchFailed);
    assert_eq!(d.entry.policy, old.policy);
    assert_eq!(d.entry.no_policy_until, None);
    assert_eq!(d.kept_mode, Some(Mode::Enforce));
    assert_eq!(
        on_lookup(Some(&d.entry), now, &RULES),
        LookupRule::Hit { recheck: false }
    );
}

#[test]
fn txt_failure_with_nothing_cached_retries_within_a_minute() {
    let d = decided(after_txt(
        &Entry::default(),
        Trigger::Miss,
        &servfail(),
        T0,
        &RULES,
    ));
    assert_eq!(d.outcome, Outcome::TxtFailed);
    assert_eq!(d.entry.no_policy_until, Some(T0 + 60));
    assert_eq!(d.entry.txt_failure.unwrap().class, FailureClass::Txt);
    assert_eq!(d.entry.failure, None);
}

#[test]
fn fetch_failure_backs_off_per_id() {
    let old = Entry::default();
    let d = fetched(&old, Trigger::Miss, &found("1"), Err(tls_error()), T0);
    assert_eq!(
        d.entry.no_policy_until,
        Some(T0 + 300),
        "negative until the back-off ends"
    );
    let failed = d.entry;
    assert_eq!(failed.failure.as_ref().unwrap().class, FailureClass::Tls);

    // Same id within retry_after: no fetch.
    let d = decided(after_txt(
        &failed,
        Trigger::Miss,
        &found("1"),
        T0 + 299,
        &RULES,
    ));
    assert_eq!(d.outcome, Outcome::Backoff);
    assert_eq!(d.entry.no_policy_until, Some(T0 + 300));
    // After retry_after: fetch again.
    assert_eq!(
        fetch_id(after_txt(
            &failed,
            Trigger::Miss,
            &found("1"),
            T0 + 300,
            &RULES
        )),
        "1"
    );
    // A new id is fetched at once.
    assert_eq!(
        fetch_id(after_txt(
            &failed,
            Trigger::Miss,
            &found("2"),
            T0 + 10,
            &RULES
        )),
        "2"
    );
}

#[test]
fn policy_host_dns_failure_backs_off_like_any_fetch_failure() {
    let e = FetchError::Dns {
        host: "mta-sts.example.com".into(),
        reason: "NXDOMAIN".into(),
    };
    let d = fetched(&Entry::default(), Trigger::Miss, &found("1"), Err(e), T0);
    assert_eq!(d.entry.failure.as_ref().unwrap().class, FailureClass::Dns);
    let d = decided(after_txt(
        &d.entry,
        Trigger::Miss,
        &found("1"),
        T0 + 61,
        &RULES,
    ));
    assert_eq!(d.outcome, Outcome::Backoff);
}

#[test]
fn a_txt_failure_does_not_erase_a_fetch_back_off() {
    let failed = fetched(
        &Entry::default(),
        Trigger::Miss,
        &found("1"),
        Err(tls_error()),
        T0,
    )
    .entry;
    let after_servfail = decided(after_txt(
        &failed,
        Trigger::Miss,
        &servfail(),
        T0 + 60,
        &RULES,
    ))
    .entry;
    assert_eq!(after_servfail.failure, failed.failure, "fetch failure kept");
    let d = decided(after_txt(
        &after_servfail,
        Trigger::Miss,
        &found("1"),
        T0 + 200,
        &RULES,
    ));
    assert_eq!(d.outcome, Outcome::Backoff);
}

#[test]
fn refresh_fetches_whatever_the_txt_says() {
    let old = cached("enforce", "1", T0);
    let now = T0 + 50_000;
    for txt in [found("1"), gone(), servfail()] {
        assert_eq!(
            fetch_id(after_txt(&old, Trigger::Refresh, &txt, now, &RULES)),
            "1",
            "{txt:?}"
        );
    }
    assert_eq!(
        fetch_id(after_txt(&old, Trigger::Refresh, &found("2"), now, &RULES)),
        "2"
    );
    // A refresh that fails keeps the policy and backs off.
    let d = fetched(&old, Trigger::Refresh, &gone(), Err(tls_error()), now);
    assert_eq!(d.entry.policy, old.policy);
    assert_eq!(
        d.entry.failure.as_ref().unwrap().id,
        None,
        "no id from the TXT record"
    );
    assert!(!is_due("example.com", &d.entry, now + 299, &RULES));
    let d = decided(after_txt(
        &d.entry,
        Trigger::Refresh,
        &gone(),
        now + 10,
        &RULES,
    ));
    assert_eq!(d.outcome, Outcome::Backoff);
}

#[test]
fn none_and_testing_replace_enforce_at_once() {
    let old = cached("enforce", "1", T0);
    for (mode, to) in [("none", Mode::None), ("testing", Mode::Testing)] {
        let d = fetched(
            &old,
            Trigger::Recheck,
            &found("2"),
            Ok(policy(mode, "mx.example.com", 100)),
            T0 + 10,
        );
        let t = d.transition.unwrap();
        assert!(t.is_downgrade(), "{t:?}");
        assert_eq!(d.entry.policy.unwrap().policy.mode, to);
    }
    let up = Transition::Replaced {
        from: Mode::Testing,
        to: Mode::Enforce,
        mx_changed: false,
    };
    assert!(!up.is_downgrade());
}

#[test]
fn refresh_is_due_before_expiry_with_a_stable_spread() {
    let e = cached("enforce", "1", T0); // max_age 1 day: due at half, minus jitter
    let at = refresh_due_at("example.com", &e, T0, &RULES).unwrap();
    assert!((T0 + 43_200 - 4_320..=T0 + 43_200).contains(&at), "{at}");
    assert!(!is_due("example.com", &e, at - 1, &RULES));
    assert!(is_due("example.com", &e, at, &RULES));
    assert_eq!(
        refresh_due_at("example.com", &e, T0 + 86_400, &RULES),
        None,
        "expired"
    );
    let negative = Entry {
        no_policy_until: Some(T0 + 10),
        ..Entry::default()
    };
    assert_eq!(refresh_due_at("example.com", &negative, T0, &RULES), None);
}

#[test]
fn jitter_is_bounded_and_stable() {
    for d in ["a.example", "b.example", "example.com"] {
        assert!(jitter(d, 100) <= 100);
        assert_eq!(jitter(d, 100), jitter(d, 100));
    }
    assert_eq!(jitter("x", 0), 0);
}

#[test]
fn manual_refresh_trigger() {
    let e = cached("enforce", "1", T0);
    assert_eq!(manual_trigger(Some(&e), T0), Trigger::Refresh);
    assert_eq!(manual_trigger(Some(&e), T0 + 86_400), Trigger::Miss);
    assert_eq!(manual_trigger(None, T0), Trigger::Miss);
}

#[test]
fn imports_keep_the_newer_policy_and_drop_expired_ones() {
    let policy = crate::mtasts::policy::parse_policy(
        b"version: STSv1\nmode: enforce\nmx: mx.example\nmax_age: 1000\n",
    )
    .unwrap();
    assert_eq!(
        on_import(None, policy.clone(), "1", 100, 1100),
        Import::Expired
    );
    let Import::Replace(e) = on_import(None, policy.clone(), "1", 500, 1000) else {
        panic!("a live policy is taken")
    };
    let p = e.policy.clone().unwrap();
    assert_eq!(
        (p.fetched_at, p.expires_at, p.id.as_str()),
        (500, 1500, "1")
    );
    assert_eq!(e.last_check, 500);
    // Importing it again, or an older copy, changes nothing.
    assert_eq!(
        on_import(Some(&e), policy.clone(), "1", 500, 1000),
        Import::KeepNewer
    );
    assert_eq!(
        on_import(Some(&e), policy.clone(), "0", 400, 1000),
        Import::KeepNewer
    );
    // A newer one replaces it.
    assert!(matches!(
        on_import(Some(&e), policy, "2", 600, 1000),
        Import::Replace(_)
    ));
}
