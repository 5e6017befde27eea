//! The chain under paused time: every pause, deadline and race is exact, and runs in
//! microseconds.

use std::sync::Mutex;

use super::*;
use crate::call::{Deadline, Target};

/// A shared record of what happened, at which (paused) millisecond.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, started: Instant, what: String) {
        let ms = started.elapsed().as_millis();
        if let Ok(mut lines) = self.0.lock() {
            lines.push(format!("{ms}: {what}"));
        }
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().map(|lines| lines.clone()).unwrap_or_default()
    }
}

type Before = Box<dyn Fn(&CallInfo) -> BeforeDecision + Send + Sync>;
type After = Box<dyn Fn(&CallInfo, &Outcome) -> AfterDecision + Send + Sync>;
/// Attempt number and request id → milliseconds to take and the answer.
type Script = Box<dyn Fn(u32, &str) -> (u64, Result<Reply, CallError>) + Send + Sync>;

/// A policy that answers by script and writes down what it was asked.
struct Scripted {
    name: &'static str,
    before: Before,
    after: After,
    log: Log,
    started: Instant,
}

impl Decide for Scripted {
    async fn before(&self, call: &CallInfo) -> BeforeDecision {
        self.log.push(
            self.started,
            format!(
                "{} before #{} ({} ms left)",
                self.name, call.attempt, call.deadline_ms
            ),
        );
        (self.before)(call)
    }

    async fn after(&self, call: &CallInfo, outcome: &Outcome, _elapsed: Duration) -> AfterDecision {
        self.log
            .push(self.started, format!("{} after {outcome:?}", self.name));
        (self.after)(call, outcome)
    }

    async fn pick(&self, _call: &CallInfo, _candidates: &[WitCandidate]) -> Option<u32> {
        None
    }

    fn label(&self) -> String {
        self.name.to_owned()
    }

    fn names(&self) -> (&str, &str) {
        (self.name, "test")
    }
}

/// The end of the call path: attempt `n` (from 1) takes `script(n).0` and answers `.1`.
struct Callee {
    script: Script,
    calls: AtomicU32,
    /// Which `Spread` each call carried (its address), if any.
    spreads: Mutex<Vec<Option<usize>>>,
    log: Log,
    started: Instant,
}

impl CallService for Callee {
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Reply, CallError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
            if let Ok(mut spreads) = self.spreads.lock() {
                spreads.push(call.spread.as_ref().map(|s| Arc::as_ptr(s) as usize));
            }
            self.log.push(
                self.started,
                format!(
                    "callee {} ({} ms left)",
                    call.request_id,
                    call.deadline.remaining_ms()
                ),
            );
            let (ms, outcome) = (self.script)(n, &call.request_id);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            outcome
        })
    }
}

fn ok(status: u16) -> Result<Reply, CallError> {
    Ok(Reply {
        status,
        headers: vec![],
        body: vec![],
    })
}

fn failed() -> Result<Reply, CallError> {
    Err(CallError::Remote("boom".into()))
}

fn call(budget_ms: u64) -> Call {
    Call {
        target: Target::any("callee"),
        method: "GET /x".into(),
        body: vec![],
        headers: vec![],
        deadline: Deadline::after(Duration::from_millis(budget_ms)),
        caller: "caller".into(),
        request_id: "r".into(),
        spread: None,
        causation: Default::default(),
    }
}

struct Rig {
    log: Log,
    started: Instant,
}

impl Rig {
    fn new() -> Self {
        Self {
            log: Log::default(),
            started: Instant::now(),
        }
    }

    fn policy(&self, name: &'static str, before: Before, after: After) -> Arc<Scripted> {
        Arc::new(Scripted {
            name,
            before,
            after,
            log: self.log.clone(),
            started: self.started,
        })
    }

    fn proceed(&self, name: &'static str) -> Arc<Scripted> {
        self.policy(
            name,
            Box::new(|_| BeforeDecision::Proceed),
            Box::new(|_, _| AfterDecision::Done),
        )
    }

    /// Retries a failure after `pause_ms`, up to `attempts` attempts in all.
    fn retry(&self, pause_ms: u32, attempts: u32) -> Arc<Scripted> {
        self.policy(
            "retry",
            Box::new(|_| BeforeDecision::Proceed),
            Box::new(move |call, outcome| match outcome {
                Outcome::Replied(_) => AfterDecision::Done,
                _ if call.attempt >= attempts => AfterDecision::Done,
                _ => AfterDecision::RetryAfter(pause_ms),
            }),
        )
    }

    fn fallback(&self) -> Arc<Scripted> {
        self.policy(
            "fallback",
            Box::new(|_| BeforeDecision::Proceed),
            Box::new(|_, outcome| match outcome {
                Outcome::Replied(_) => AfterDecision::Done,
                _ => AfterDecision::Respond(CannedResponse {
                    status: 299,
                    headers: vec![],
                    body: b"fallback".to_vec(),
                }),
            }),
        )
    }

    fn callee(
        &self,
        script: impl Fn(u32, &str) -> (u64, Result<Reply, CallError>) + Send + Sync + 'static,
    ) -> Callee {
        Callee {
            script: Box::new(script),
            calls: AtomicU32::new(0),
            spreads: Mutex::default(),
            log: self.log.clone(),
            started: self.started,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_inside_the_deadline_and_stop_when_the_next_pause_would_pass_it() {
    let rig = Rig::new();
    let chain = Chain::new(vec![rig.retry(100, 10)]);
    let callee = rig.callee(|_, _| (10, failed()));
    let outcome = chain.around(call(350), &callee).await;
    assert_eq!(outcome, failed());
    // Attempts at 0, 110 and 220 ms; after the one at 330 ms (20 ms left) a 100 ms pause
    // would pass the deadline, so its failure is the answer.
    assert_eq!(callee.calls.load(Ordering::Relaxed), 4);
    let callee_lines: Vec<_> = rig
        .log
        .lines()
        .into_iter()
        .filter(|line| line.contains("callee"))
        .collect();
    assert_eq!(
        callee_lines,
        [
            "0: callee r (350 ms left)",
            "110: callee r~2 (240 ms left)",
            "220: callee r~3 (130 ms left)",
            "330: callee r~4 (20 ms left)",
        ]
    );
    assert_eq!(rig.started.elapsed(), Duration::from_millis(340));
}

#[tokio::test(start_paused = true)]
async fn a_fallback_outside_a_retry_sees_only_the_last_failure() {
    let rig = Rig::new();
    let chain = Chain::new(vec![
        rig.fallback(),
        rig.retry(5, 3),
        rig.proceed("breaker"),
    ]);
    let callee = rig.callee(|_, _| (1, failed()));
    let outcome = chain.around(call(1000), &callee).await;
    assert_eq!(outcome.map(|reply| reply.status), Ok(299));
    assert_eq!(
        callee.calls.load(Ordering::Relaxed),
        3,
        "retried, not cut short"
    );
    let lines = rig.log.lines();
    let fallback_asked = lines
        .iter()
        .filter(|l| l.contains("fallback after"))
        .count();
    let breaker_asked = lines
        .iter()
        .filter(|l| l.contains("breaker before"))
        .count();
    assert_eq!(fallback_asked, 1, "{lines:#?}");
    assert_eq!(
        breaker_asked, 3,
        "every attempt passes the inner before-call: {lines:#?}"
    );
}

/// A callee that never answers: the call path stops it at the call's deadline, as a slot or
/// a peer does.
struct Hung;

impl CallService for Hung {
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Reply, CallError>> {
        Box::pin(async move {
            tokio::time::sleep(call.deadline.remaining()).await;
            Err(CallError::Timeout)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_fallback_answers_for_a_hung_callee_within_the_reserve_its_caller_kept() {
    let rig = Rig::new();
    let chain = Chain::new(vec![rig.fallback(), rig.retry(5, 3)]);
    // The caller (say an HTTP request) has 1 s; its call keeps the default reserve, or 250 ms.
    for (reserve, answered_at) in [(None, 900), (Some(250), 750)] {
        let caller = Deadline::after(Duration::from_millis(1000));
        let started = Instant::now();
        let mut call = call(0);
        call.deadline =
            crate::call::call_deadline(caller, None, reserve.map(Duration::from_millis));
        let outcome = chain.around(call, &Hung).await;
        assert_eq!(outcome.map(|reply| reply.status), Ok(299));
        assert_eq!(started.elapsed().as_millis(), answered_at);
        assert!(
            caller.remaining() > Duration::ZERO,
            "the caller can still answer"
        );
    }
    // Keeping nothing: the callee runs to the caller's own deadline, the fallback answers
    // when the caller has no time left to send it.
    let caller = Deadline::after(Duration::from_millis(1000));
    let mut call = call(0);
    call.deadline = crate::call::call_deadline(caller, None, Some(Duration::ZERO));
    let _ = chain.around(call, &Hung).await;
    assert_eq!(caller.remaining(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_fallback_inside_a_retry_answers_each_attempt_so_nothing_is_retried() {
    let rig = Rig::new();
    let chain = Chain::new(vec![rig.retry(5, 3), rig.fallback()]);
    let callee = rig.callee(|_, _| (1, failed()));
    let outcome = chain.around(call(1000), &callee).await;
    assert_eq!(outcome.map(|reply| reply.status), Ok(299));
    assert_eq!(callee.calls.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reject_ends_the_call_without_reaching_the_callee_or_asking_its_own_after_call() {
    let rig = Rig::new();
    let breaker = rig.policy(
        "breaker",
        Box::new(|_| BeforeDecision::Reject("open".into())),
        Box::new(|_, _| AfterDecision::Done),
    );
    let chain = Chain::new(vec![rig.proceed("outer"), breaker]);
    let callee = rig.callee(|_, _| (1, ok(200)));
    let outcome = chain.around(call(1000), &callee).await;
    assert_eq!(outcome, Err(CallError::Rejected("breaker: open".into())));
    assert_eq!(callee.calls.load(Ordering::Relaxed), 0);
    let lines = rig.log.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("outer after Outcome::Rejected")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("breaker after")),
        "{lines:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hedge_starts_a_second_copy_after_its_delay_and_the_first_answer_wins() {
    let rig = Rig::new();
    let hedger = rig.policy(
        "hedge",
        Box::new(|_| BeforeDecision::Hedge(50)),
        Box::new(|_, _| AfterDecision::Done),
    );
    let chain = Chain::new(vec![hedger]);
    // The first copy is slow (200 ms), the hedge quick (10 ms): it answers at 60 ms.
    let callee = rig.callee(|n, _| {
        if n == 1 {
            (200, ok(201))
        } else {
            (10, ok(202))
        }
    });
    let outcome = chain.around(call(1000), &callee).await;
    assert_eq!(outcome.map(|reply| reply.status), Ok(202));
    assert_eq!(rig.started.elapsed(), Duration::from_millis(60));
    let lines = rig.log.lines();
    assert!(
        lines.contains(&"50: callee r~hedge (950 ms left)".to_owned()),
        "{lines:#?}"
    );
    // Both copies share one record of where they went, so the route sends the hedge to an
    // instance the first did not take.
    let spreads = callee.spreads.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(spreads.len(), 2);
    assert!(
        spreads[0].is_some() && spreads[0] == spreads[1],
        "{spreads:?}"
    );
    // A first copy that answers before the delay means no hedge at all.
    let rig = Rig::new();
    let chain = Chain::new(vec![rig.policy(
        "hedge",
        Box::new(|_| BeforeDecision::Hedge(50)),
        Box::new(|_, _| AfterDecision::Done),
    )]);
    let callee = rig.callee(|_, _| (20, ok(200)));
    assert_eq!(chain.around(call(1000), &callee).await, ok(200));
    assert_eq!(callee.calls.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_races_a_retry_inside_it_and_the_deadline_still_holds() {
    let rig = Rig::new();
    let hedger = rig.policy(
        "hedge",
        Box::new(|_| BeforeDecision::Hedge(30)),
        Box::new(|_, _| AfterDecision::Done),
    );
    let chain = Chain::new(vec![hedger, rig.retry(20, 5)]);
    // The first copy fails at 10 ms and is retried at 30 ms, when the hedge starts too; the
    // hedge answers first, at 35 ms, and the retry still running is dropped.
    let callee = rig.callee(|_, id| match id {
        "r" => (10, failed()),
        "r~hedge" => (5, ok(202)),
        _ => (100, ok(203)),
    });
    let outcome = chain.around(call(1000), &callee).await;
    assert_eq!(outcome.map(|reply| reply.status), Ok(202));
    assert_eq!(rig.started.elapsed(), Duration::from_millis(35));
    assert_eq!(callee.calls.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn each_layer_sees_the_deadline_shrink_by_the_time_spent_outside_it() {
    let rig = Rig::new();
    let chain = Chain::new(vec![rig.retry(40, 2), rig.proceed("inner")]);
    let callee = rig.callee(|n, _| if n == 1 { (60, failed()) } else { (1, ok(200)) });
    assert_eq!(chain.around(call(500), &callee).await, ok(200));
    let lines = rig.log.lines();
    assert!(
        lines.contains(&"0: inner before #1 (500 ms left)".to_owned()),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"100: inner before #2 (400 ms left)".to_owned()),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"100: callee r~2 (400 ms left)".to_owned()),
        "{lines:#?}"
    );
}

#[test]
fn a_retry_of_a_retry_numbers_the_call_once() {
    assert_eq!(retry_id("abc.1", 2), "abc.1~2");
    assert_eq!(retry_id("abc.1~2", 3), "abc.1~3");
    assert_eq!(retry_id("abc.1~hedge", 2), "abc.1~hedge~2");
}
