use super::timing::backoff_ceiling;
use super::*;

fn limits(min: usize, max: usize) -> Limits {
    Limits {
        min,
        max,
        depth: 1,
        max_commands: None,
        queue_max: 100,
        queue_max_bytes: 1 << 20,
        session_limit_hold: Duration::from_secs(300),
        logins_per_minute: Some(6000),
        commands_per_second: None,
        rotation_interval: Duration::from_secs(2),
    }
}

/// A login answered `code`, the only `<login>` of its session.
fn refused(code: u16) -> OpenFailure {
    OpenFailure::Refused {
        code,
        failed_logins: u32::from(code == 2200),
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn opens(actions: &[Action]) -> Vec<SessionId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Open { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

fn hands(actions: &[Action]) -> Vec<(WaiterId, SessionId)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Hand { waiter, session } => Some((*waiter, *session)),
            _ => None,
        })
        .collect()
}

fn retires(actions: &[Action]) -> Vec<SessionId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Retire(id) => Some(*id),
            _ => None,
        })
        .collect()
}

/// A core with `n` logged-in sessions (ids 1..=n).
fn with_live(lim: Limits, n: usize, t0: Instant) -> PoolCore {
    let mut core = PoolCore::new(lim, t0, 7);
    let ids = opens(&core.start(t0));
    assert!(ids.len() >= n, "start opened {ids:?}");
    for id in ids.into_iter().take(n) {
        core.ready(t0, id);
    }
    core
}

/// A one-session core whose logins were refused with 2200 three times in a row, a minute
/// apart: stopped. Returns it and the instant of the last refusal plus a minute.
fn stopped_after_three_2200s() -> (PoolCore, Instant) {
    let t0 = Instant::now();
    let mut core = PoolCore::new(limits(1, 1), t0, 1);
    let mut now = t0;
    let mut id = opens(&core.start(t0))[0];
    for _ in 0..3 {
        core.open_failed(now, id, refused(2200), Some("2200".into()));
        now += secs(60.0);
        id = opens(&core.tick(now)).first().copied().unwrap_or(0);
    }
    (core, now)
}

#[test]
fn start_opens_pool_min_at_once() {
    let t0 = Instant::now();
    let mut core = PoolCore::new(limits(3, 5), t0, 1);
    assert_eq!(opens(&core.start(t0)), vec![1, 2, 3]);
    assert_eq!(core.stats(t0).connecting, 3);
}

#[test]
fn demand_grows_the_pool_to_its_max_and_no_further() {
    let t0 = Instant::now();
    let mut core = with_live(limits(1, 3), 1, t0);
    assert_eq!(core.request(t0, 1, 100, false).0, Grant::Session(1));
    let (g, actions) = core.request(t0, 2, 100, false);
    assert_eq!(g, Grant::Queued);
    assert_eq!(opens(&actions), vec![2], "one more session for the waiter");
    let (_, actions) = core.request(t0, 3, 100, false);
    assert_eq!(opens(&actions), vec![3]);
    let (_, actions) = core.request(t0, 4, 100, false);
    assert!(opens(&actions).is_empty(), "at pool_max: {actions:?}");
    assert_eq!(
        hands(&core.ready(t0, 2)),
        vec![(2, 2)],
        "first come first served"
    );
    assert_eq!(hands(&core.ready(t0, 3)), vec![(3, 3)]);
    assert_eq!(hands(&core.answered(t0, 1)), vec![(4, 1)]);
}

#[test]
fn waiters_are_served_first_come_first_served_and_retries_go_first() {
    let t0 = Instant::now();
    let mut core = with_live(limits(1, 1), 1, t0);
    assert_eq!(core.request(t0, 1, 100, false).0, Grant::Session(1));
    core.request(t0, 2, 100, false);
    core.request(t0, 3, 100, false);
    let (g, _) = core.request(t0, 9, 100, true);
    assert_eq!(g, Grant::Queued);
    assert_eq!(
        hands(&core.answered(t0, 1)),
        vec![(9, 1)],
        "the retry first"
    );
    assert_eq!(hands(&core.answered(t0, 1)), vec![(2, 1)]);
    assert!(core.withdraw(3), "a waiter that gives up leaves the queue");
    assert!(hands(&core.answered(t0, 1)).is_empty());
    assert!(!core.withdraw(3));
}

#[test]
fn the_queue_is_bounded_but_retries_are_not_refused() {
    let t0 = Instant::now();
    let mut lim = limits(1, 1);
    lim.queue_max = 1;
    let mut core = with_live(lim, 1, t0);
    core.request(t0, 1, 100, false);
    assert_eq!(core.request(t0, 2, 100, false).0, Grant::Queued);
    assert_eq!(
        core.request(t0, 3, 100, false).0,
        Grant::Refused(Refusal::QueueFull {
            commands: 1,
            bytes: 100
        })
    );
    assert_eq!(core.request(t0, 4, 100, true).0, Grant::Queued);
    // And bounded in bytes.
    let mut lim = limits(1, 1);
    lim.queue_max_bytes = 1000;
    let mut core = with_live(lim, 1, t0);
    core.request(t0, 1, 10, false);
    assert_eq!(core.request(t0, 2, 600, false).0, Grant::Queued);
    assert!(matches!(
        core.request(t0, 3, 600, false).0,
        Grant::Refused(Refusal::QueueFull {
            commands: 1,
            bytes: 600
        })
    ));
    assert!(core.withdraw(2));
    assert_eq!(core.request(t0, 4, 600, false).0, Grant::Queued);
}

#[test]
fn an_idle_session_is_preferred_to_a_busy_sessions_free_slot() {
    // Defect 4: with depth 4, four commands at once went to one session while three idled.
    let t0 = Instant::now();
    let mut lim = limits(4, 4);
    lim.depth = 4;
    let mut core = with_live(lim, 4, t0);
    let mut got: Vec<SessionId> = (1..=4)
        .map(|w| match core.request(t0, w, 100, false).0 {
            Grant::Session(id) => id,
            other => panic!("{other:?}"),
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, vec![1, 2, 3, 4], "one command per session");
    assert!(
        matches!(core.request(t0, 5, 100, false).0, Grant::Session(_)),
        "then pipelining slots"
    );
}

#[test]
fn among_idle_sessions_the_longest_idle_goes_first() {
    let t0 = Instant::now();
    let mut core = with_live(limits(2, 2), 2, t0);
    assert_eq!(core.request(t0, 1, 100, false).0, Grant::Session(1));
    core.answered(t0 + secs(1.0), 1);
    assert_eq!(
        core.request(t0 + secs(2.0), 2, 100, false).0,
        Grant::Session(2)
    );
}

#[test]
fn max_commands_counts_commands_written_not_answered() {
    // Defect 5: with depth 4 and a limit of 2, four commands ran on one session.
    let t0 = Instant::now();
    let mut lim = limits(1, 1);
    lim.depth = 4;
    lim.max_commands = Some(2);
    let mut core = with_live(lim, 1, t0);
    assert_eq!(core.request(t0, 1, 100, false).0, Grant::Session(1));
    assert_eq!(core.request(t0, 2, 100, false).0, Grant::Session(1));
    assert_eq!(core.request(t0, 3, 100, false).0, Grant::Queued);
    assert!(
        retires(&core.answered(t0, 1)).is_empty(),
        "one still in flight"
    );
    let actions = core.answered(t0, 1);
    assert_eq!(
        retires(&actions),
        vec![1],
        "retired once nothing is in flight"
    );
    assert!(
        opens(&actions).is_empty(),
        "its replacement waits for the logout (pool_max 1)"
    );
    let t1 = t0 + secs(1.0);
    let actions = core.ended(t1, 1, Ended::Retired, None);
    assert_eq!(opens(&actions), vec![2]);
    assert_eq!(hands(&core.ready(t1, 2)), vec![(3, 2)]);
}

#[test]
fn a_retiring_session_takes_nothing_new() {
    // Defect 11: the free pipeline slots of a retiring session stayed in the idle queue.
    let t0 = Instant::now();
    let mut lim = limits(2, 2);
    lim.depth = 2;
    let mut core = with_live(lim, 2, t0);
    assert_eq!(core.request(t0, 1, 100, false).0, Grant::Session(1));
    assert_eq!(core.request(t0, 2, 100, false).0, Grant::Session(2));
    assert_eq!(core.request(t0, 3, 100, false).0, Grant::Session(1));
    core.retiring(t0, 2);
    assert_eq!(
        core.request(t0, 4, 100, false).0,
        Grant::Queued,
        "not session 2"
    );
    assert_eq!(retires(&core.answered(t0, 2)), vec![2]);
    assert_eq!(hands(&core.answered(t0, 1)), vec![(4, 1)]);
}

#[test]
fn shrinking_retires_the_least_busy_sessions_after_their_commands() {
    let t0 = Instant::now();
    let mut core = with_live(limits(3, 3), 3, t0);
    core.request(t0, 1, 100, false);
    let actions = core.resize(t0, 1, 1);
    let mut retired = retires(&actions);
    retired.sort_unstable();
    assert_eq!(retired, vec![2, 3], "the idle ones at once");
    let actions = core.resize(t0, 0, 0);
    assert!(retires(&actions).is_empty(), "session 1 is busy");
    assert_eq!(retires(&core.answered(t0, 1)), vec![1]);
}

#[test]
fn a_session_that_logs_in_after_a_shrink_is_retired_at_once() {
    // Defect 3: a reload to 1/1 while four sessions were connecting left four live.
    let t0 = Instant::now();
    let mut core = PoolCore::new(limits(4, 4), t0, 1);
    assert_eq!(opens(&core.start(t0)).len(), 4);
    core.resize(t0, 1, 1);
    assert!(retires(&core.ready(t0, 1)).is_empty());
    for id in 2..=4 {
        assert_eq!(retires(&core.ready(t0, id)), vec![id]);
    }
    for id in 2..=4 {
        core.ended(t0, id, Ended::Retired, None);
    }
    let stats = core.stats(t0);
    assert_eq!((stats.live, stats.connecting), (1, 0));
}

#[test]
fn failed_opens_back_off_with_jitter_and_probe_one_at_a_time() {
    let t0 = Instant::now();
    let mut core = PoolCore::new(limits(3, 3), t0, 1);
    let ids = opens(&core.start(t0));
    for id in &ids {
        let actions = core.open_failed(t0, *id, OpenFailure::Error, Some("refused".into()));
        assert!(
            opens(&actions).is_empty(),
            "nothing opens during the backoff"
        );
    }
    // Three failures: a backoff between 200 and 400 ms.
    let wake = core.next_wakeup().expect("a wake-up for the backoff");
    assert!(
        wake >= t0 + secs(0.2) && wake <= t0 + secs(0.4),
        "{:?}",
        wake - t0
    );
    assert!(opens(&core.tick(wake - secs(0.001))).is_empty());
    assert_eq!(opens(&core.tick(wake)).len(), 1, "one probe while failing");
    assert_eq!(core.stats(wake).consecutive_failures, 3);
}

#[test]
fn backoff_grows_is_jittered_and_capped() {
    let mut rng = fastrand::Rng::with_seed(3);
    assert_eq!(backoff(0, &mut rng), Duration::ZERO);
    assert_eq!(backoff_ceiling(1), Duration::from_millis(100));
    assert_eq!(backoff_ceiling(3), Duration::from_millis(400));
    assert_eq!(backoff_ceiling(40), Duration::from_secs(30));
    for failures in 1..20 {
        let b = backoff(failures, &mut rng);
        let ceiling = backoff_ceiling(failures);
        assert!(b >= ceiling / 2 && b <= ceiling, "{b:?} vs {ceiling:?}");
    }
}

#[test]
fn three_2200s_stop_the_account_and_refuse_its_waiters() {
    let t0 = Instant::now();
    let mut core = PoolCore::new(limits(1, 1), t0, 1);
    let mut id = opens(&core.start(t0))[0];
    core.request(t0, 1, 100, false);
    let mut now = t0;
    for round in 1..=3 {
        let actions = core.open_failed(now, id, refused(2200), Some("2200".into()));
        if round == 3 {
            assert_eq!(
                actions,
                vec![Action::Refuse {
                    waiter: 1,
                    why: Refusal::Unavailable(core.stats(now).unhealthy.unwrap())
                }]
            );
            break;
        }
        now += secs(60.0);
        id = opens(&core.tick(now))[0];
    }
    now += secs(3600.0);
    assert!(core.tick(now).is_empty(), "no more attempts");
    assert!(matches!(
        core.request(now, 2, 100, false).0,
        Grant::Refused(Refusal::Unavailable(_))
    ));
}

#[test]
fn the_stop_counts_every_login_answered_2200_the_other_password_s_included() {
    // With new_password set, a session tries the other password on the same connection after a
    // 2200: two failed logins at the registry. Three in all stop the account, not three sessions.
    let t0 = Instant::now();
    let mut core = PoolCore::new(limits(1, 1), t0, 1);
    let id = opens(&core.start(t0))[0];
    let now = t0 + secs(60.0);
    assert!(
        core.login_again(now, 2200),
        "first refusal: the other password may be tried"
    );
    let both = OpenFailure::Refused {
        code: 2200,
        failed_logins: 2,
    };
    core.open_failed(now, id, both, Some("2200".into()));
    assert!(core.stats(now).unhealthy.is_none(), "two failed logins");
    let later = now + secs(60.0);
    let id = opens(&core.tick(later))[0];
    assert!(
        !core.login_again(later, 2200),
        "a 2200 to the other password would be the fourth failed login"
    );
    core.open_failed(later, id, refused(2200), Some("2200".into()));
    assert!(core.stats(later).unhealthy.is_some(), "stopped at three");
    assert!(
        core.tick(later + secs(3600.0)).is_empty(),
        "no more attempts"
    );
}

#[test]
fn only_a_session_opening_alone_tries_the_other_password() {
    let t0 = Instant::now();
    let mut lim = limits(2, 2);
    lim.logins_per_minute = Some(600);
    let mut core = PoolCore::new(lim, t0, 1);
    let ids = opens(&core.start(t0));
    assert_eq!(ids.len(), 2);
    let now = t0 + secs(1.0);
    assert!(
        !core.login_again(now, 2200),
        "two opening: neither tries it"
    );
    core.open_failed(now, ids[0], refused(2200), Some("2200".into()));
    assert!(core.login_again(now, 2200), "the one left opening may");
}

#[test]
fn the_other_password_on_the_same_connection_takes_from_the_login_budget() {
    let t0 = Instant::now();
    let mut lim = limits(1, 1);
    lim.logins_per_minute = Some(6);
    let mut core = PoolCore::new(lim, t0, 1);
    opens(&core.start(t0));
    // The burst (pool_max = 1) went to the session's first login.
    assert!(!core.login_again(t0, 2200));
    assert_eq!(core.counters().login_budget_waits, 1);
    assert!(core.login_again(t0 + secs(10.0), 2200), "one every 10 s");
}

#[test]
fn a_2502_holds_the_account_at_its_live_count_until_the_hold_ends() {
    let t0 = Instant::now();
    let mut core = PoolCore::new(limits(2, 2), t0, 1);
    let ids = opens(&core.start(t0));
    core.ready(t0, ids[0]);
    core.open_failed(t0, ids[1], refused(2502), None);
    assert_eq!(core.stats(t0).effective_max, 1);
    assert!(opens(&core.tick(t0 + secs(299.0))).is_empty());
    assert_eq!(core.next_wakeup(), Some(t0 + secs(300.0)));
    assert_eq!(opens(&core.tick(t0 + secs(300.0))).len(), 1);
}

#[test]
fn a_2502_right_after_an_own_drop_is_retried_not_held() {
    // Defect 10: one response timeout halved the pool for five minutes.
    let t0 = Instant::now();
    let mut core = with_live(limits(2, 2), 2, t0);
    let mut now = t0 + secs(1.0);
    let actions = core.ended(now, 1, Ended::Lost, Some("no response".into()));
    let mut id = opens(&actions)[0];
    for _ in 0..TRANSIENT_2502_RETRIES {
        core.open_failed(now, id, refused(2502), None);
        assert_eq!(core.stats(now).effective_max, 2, "not held");
        now = core.next_wakeup().expect("a backoff");
        id = opens(&core.tick(now))[0];
    }
    // Still refused after that: the cap is real.
    core.open_failed(now, id, refused(2502), None);
    assert_eq!(core.stats(now).effective_max, 1);
}

#[test]
fn the_login_budget_bounds_logins_whatever_happens() {
    let t0 = Instant::now();
    let mut lim = limits(2, 2);
    lim.logins_per_minute = Some(4);
    let mut core = PoolCore::new(lim, t0, 1);
    let mut logins = 0;
    let mut now = t0;
    let mut pending = opens(&core.start(t0));
    // A registry that drops every session right after login, for ten simulated minutes.
    while now < t0 + secs(600.0) {
        for id in pending.drain(..) {
            logins += 1;
            core.ready(now, id);
            core.ended(now, id, Ended::Lost, None);
        }
        now = core.next_wakeup().unwrap_or(now + secs(1.0)).max(now);
        pending = opens(&core.tick(now));
    }
    // Burst of pool_max, then 4 a minute.
    assert!(logins <= 2 + 4 * 10, "{logins} logins");
    assert!(
        logins >= 4 * 10,
        "{logins} logins: the budget is used, not starved"
    );
    assert!(core.counters().login_budget_waits > 0);
    assert!(core.stats(now).login_budget_wait.is_some());
}

#[test]
fn a_login_outside_the_sessions_takes_from_the_same_budget() {
    let t0 = Instant::now();
    let mut lim = limits(1, 2);
    lim.logins_per_minute = Some(6);
    let mut core = PoolCore::new(lim, t0, 1);
    // A burst of pool_max: the first session takes one, a reload's trial the other.
    let first = opens(&core.start(t0))[0];
    core.ready(t0, first);
    assert_eq!(core.take_login(t0), Ok(()));
    let next = t0 + secs(10.0);
    assert_eq!(core.take_login(t0), Err(next), "then one every 10 s");
    // The session lost now waits for the budget the trial used.
    core.ended(t0, first, Ended::Lost, None);
    assert!(opens(&core.tick(t0)).is_empty());
    assert_eq!(core.next_wakeup(), Some(next));
    assert_eq!(opens(&core.tick(next)).len(), 1);
}

#[test]
fn the_command_rate_limit_queues_commands_instead_of_refusing_them() {
    let t0 = Instant::now();
    let mut lim = limits(2, 2);
    lim.commands_per_second = Some(2.0);
    let mut core = with_live(lim, 2, t0);
    assert!(matches!(
        core.request(t0, 1, 100, false).0,
        Grant::Session(_)
    ));
    assert!(matches!(
        core.request(t0, 2, 100, false).0,
        Grant::Session(_)
    ));
    core.answered(t0, 1);
    core.answered(t0, 2);
    let (g, actions) = core.request(t0, 3, 100, false);
    assert_eq!(
        g,
        Grant::Queued,
        "sessions are free but the second's tokens are spent"
    );
    assert!(
        opens(&actions).is_empty(),
        "throttled commands open no session"
    );
    assert_eq!(core.next_wakeup(), Some(t0 + secs(0.5)));
    assert_eq!(hands(&core.tick(t0 + secs(0.5))).len(), 1);
    assert_eq!(core.counters().commands_throttled, 1);
}

#[test]
fn a_slot_given_back_unused_is_handed_on() {
    let t0 = Instant::now();
    let mut core = with_live(limits(1, 1), 1, t0);
    core.request(t0, 1, 100, false);
    core.request(t0, 2, 100, false);
    assert_eq!(hands(&core.unused(t0, 1)), vec![(2, 1)]);
    assert_eq!(
        core.sessions(t0)[0].commands,
        1,
        "the unused slot is not counted"
    );
}

#[test]
fn nothing_opens_once_closing() {
    let t0 = Instant::now();
    let mut core = with_live(limits(2, 2), 2, t0);
    core.close();
    assert!(core.ended(t0, 1, Ended::Shutdown, None).is_empty());
    assert_eq!(core.next_wakeup(), None);
}

/// Live sessions (retiring ones included: they still serve what they hold).
fn live_count(core: &mut PoolCore, now: Instant) -> usize {
    core.stats(now).live
}

#[test]
fn new_credentials_replace_every_session_one_at_a_time_spare_first() {
    let t0 = Instant::now();
    let mut core = with_live(limits(2, 3), 2, t0);
    let mut now = t0;
    let mut actions = core.rotate(now);
    let mut replaced = Vec::new();
    for _ in 0..2 {
        let spare = opens(&actions);
        assert_eq!(spare.len(), 1, "one spare opens first: {actions:?}");
        assert!(
            retires(&actions).is_empty(),
            "nothing retires before the spare is in"
        );
        let retired = retires(&core.ready(now, spare[0]));
        assert_eq!(retired.len(), 1, "then one stale session retires");
        assert_eq!(live_count(&mut core, now), 3);
        core.ended(now, retired[0], Ended::Retired, None);
        assert_eq!(live_count(&mut core, now), 2, "never below the live count");
        replaced.extend(retired);
        assert!(
            opens(&core.tick(now)).is_empty(),
            "paced: rotation_interval apart"
        );
        now += limits(2, 3).rotation_interval;
        actions = core.tick(now);
    }
    replaced.sort_unstable();
    assert_eq!(replaced, vec![1, 2], "both old sessions replaced");
    assert!(actions.is_empty(), "done: {actions:?}");
    assert_eq!(core.stats(now).stale, 0);
}

#[test]
fn a_fresh_session_already_logging_in_stands_in_as_the_spare() {
    let t0 = Instant::now();
    let mut core = with_live(limits(2, 3), 2, t0);
    let spare = opens(&core.rotate(t0));
    let retired = retires(&core.ready(t0, spare[0]));
    core.ended(t0, retired[0], Ended::Retired, None);
    // Before the next step, demand busies both sessions and the pool opens one more for the
    // third command: a fresh session, logging in.
    let t1 = t0 + secs(0.5);
    core.request(t1, 1, 100, false);
    core.request(t1, 2, 100, false);
    let (_, actions) = core.request(t1, 3, 100, false);
    let grown = opens(&actions);
    assert_eq!(grown.len(), 1, "{actions:?}");
    let now = t0 + limits(2, 3).rotation_interval;
    let actions = core.tick(now);
    assert!(
        opens(&actions).is_empty(),
        "no room for another: {actions:?}"
    );
    assert!(
        !core.sessions(now).iter().any(|s| s.retiring),
        "no stale session retires while a fresh one is logging in"
    );
    let actions = [
        core.ready(now, grown[0]),
        core.answered(now, 1),
        core.answered(now, 2),
    ]
    .concat();
    assert_eq!(
        retires(&actions).len(),
        1,
        "once it is in, the last stale one goes: {actions:?}"
    );
}

#[test]
fn at_pool_max_a_stale_session_retires_first_but_not_while_opens_fail() {
    let t0 = Instant::now();
    let mut core = with_live(limits(1, 2), 1, t0);
    core.request(t0, 1, 100, false);
    let (_, actions) = core.request(t0, 2, 100, false);
    core.ready(t0, opens(&actions)[0]);
    core.answered(t0, 1);
    core.answered(t0, 2);
    let actions = core.rotate(t0);
    assert_eq!(
        retires(&actions).len(),
        1,
        "no room for a spare: {actions:?}"
    );
    assert!(opens(&actions).is_empty());

    let mut core = with_live(limits(1, 2), 1, t0);
    core.request(t0, 1, 100, false);
    let (_, actions) = core.request(t0, 2, 100, false);
    let failing = opens(&actions)[0];
    core.open_failed(t0, failing, OpenFailure::Error, Some("refused".into()));
    core.answered(t0, 1);
    let actions = core.rotate(t0);
    assert!(
        retires(&actions).is_empty(),
        "the only live session stays while the registry cannot be reached: {actions:?}"
    );
}

#[test]
fn new_credentials_end_the_stop_after_repeated_2200s() {
    let (mut core, now) = stopped_after_three_2200s();
    assert!(core.stats(now).unhealthy.is_some());
    let actions = core.rotate(now);
    assert_eq!(opens(&actions).len(), 1, "logging in again: {actions:?}");
    assert!(core.stats(now).unhealthy.is_none());
}

#[test]
fn at_pool_max_the_next_stale_session_waits_until_the_last_one_has_logged_out() {
    let t0 = Instant::now();
    let lim = limits(1, 2);
    let mut core = with_live(lim.clone(), 1, t0);
    core.request(t0, 1, 100, false);
    let (_, actions) = core.request(t0, 2, 100, false);
    core.ready(t0, opens(&actions)[0]);
    // Both sessions busy: the first to retire keeps serving its command for a while.
    core.rotate(t0);
    let retiring =
        |core: &mut PoolCore, now| core.sessions(now).iter().filter(|s| s.retiring).count();
    assert_eq!(retiring(&mut core, t0), 1);
    let later = t0 + lim.rotation_interval * 3;
    let actions = core.tick(later);
    assert_eq!(
        retiring(&mut core, later),
        1,
        "a second stale session would leave the account with none: {actions:?}"
    );
    let first = core
        .sessions(later)
        .iter()
        .find(|s| s.retiring)
        .map(|s| s.id)
        .unwrap();
    let actions = [
        core.answered(later, first),
        core.ended(later, first, Ended::Retired, None),
    ]
    .concat();
    assert_eq!(
        opens(&actions).len(),
        1,
        "its slot goes to a fresh session: {actions:?}"
    );
}

#[test]
fn a_reload_lets_an_account_stopped_after_repeated_2200s_try_again() {
    let (mut core, now) = stopped_after_three_2200s();
    assert!(core.tick(now + secs(3600.0)).is_empty(), "stopped");
    let actions = core.resume(now);
    assert_eq!(opens(&actions).len(), 1, "{actions:?}");
    assert!(core.stats(now).unhealthy.is_none());
}

#[test]
fn a_rotation_whose_credentials_keep_failing_stops_logging_in() {
    let t0 = Instant::now();
    let mut core = with_live(limits(1, 2), 1, t0);
    let mut now = t0;
    let mut spare = opens(&core.rotate(now));
    for _ in 0..3 {
        assert_eq!(spare.len(), 1, "one spare at a time");
        core.open_failed(now, spare[0], refused(2200), Some("2200".into()));
        now += secs(60.0);
        spare = opens(&core.tick(now));
    }
    assert!(core.stats(now).unhealthy.is_some());
    assert!(spare.is_empty(), "no login after the stop: {spare:?}");
    assert!(opens(&core.tick(now + secs(3600.0))).is_empty());
    assert_eq!(core.stats(now).live, 1, "the old session stays");
}
