//! The ledger's rules, driven with explicit instants: no clock, no disk, no subscriber.

#![allow(clippy::expect_used, reason = "tests fail loudly on purpose")]

use super::*;
use crate::wire::MessageKind;

/// A queue delivered one at a time, first pause 100 ms (the queue shell's tests use it too).
pub(in crate::messaging::topic) fn spec(max_attempts: u32) -> crate::manifest::QueueSpec {
    crate::manifest::QueueSpec {
        name: "orders".into(),
        subscriber: "fulfilment".into(),
        concurrency: 1,
        ordered_by_key: false,
        max_causation_depth: 32,
        max_attempts,
        redeliver_after: Duration::from_millis(100),
        max_depth: 10,
        max_bytes: 1024 * 1024,
        max_dead_bytes: 1024 * 1024,
    }
}

fn message(seq: u64) -> StoredMessage {
    StoredMessage {
        seq,
        id: format!("orders-{seq}"),
        kind: MessageKind::Command,
        key: None,
        headers: Vec::new(),
        reply_to: None,
        trace_context: None,
        body: format!("order {seq}").into_bytes(),
        sender: "shop".into(),
        sent_at_ms: 0,
    }
}

/// The subscription of [`spec`]'s queue.
fn subscription(max_attempts: u32) -> SubscriptionSpec {
    let log = super::super::LogSpec::from(spec(max_attempts));
    log.subscriptions[0].clone()
}

/// Owes `messages` (numbered in order); returns their sequence numbers.
fn owe(ledger: &mut Ledger, messages: Vec<StoredMessage>) -> Range<u64> {
    let first = ledger.next_seq();
    for message in messages {
        ledger.owe(Arc::new(message));
    }
    first..ledger.next_seq()
}

/// A ledger owing messages `0..count`, all on disk.
fn owing(count: u64) -> Ledger {
    let mut ledger = Ledger::default();
    let seqs = owe(&mut ledger, (0..count).map(message).collect());
    ledger.stored(seqs);
    ledger
}

#[test]
fn a_message_is_delivered_only_once_its_send_is_on_disk_and_in_the_order_sent() {
    let mut ledger = Ledger::default();
    let now = Instant::now();
    let first = owe(&mut ledger, vec![message(0), message(1)]);
    let second = owe(&mut ledger, vec![message(2)]);
    assert_eq!(ledger.owed(), 3, "owed (and counted for max_depth) at once");
    assert!(
        ledger.next(now, 3, false).is_none(),
        "delivered before it was on disk"
    );
    // The later sync reports first: it covers the earlier records too (the log syncs in order).
    ledger.stored(second);
    ledger.stored(first);
    let order: Vec<u64> =
        std::iter::from_fn(|| ledger.next(now, 3, false).map(|d| d.seq)).collect();
    assert_eq!(order, vec![0, 1, 2]);
    assert_eq!(ledger.owed_bytes(), 3 * "order 0".len());
    // A send whose record never reached the disk is forgotten, not delivered.
    let failed = owe(&mut ledger, vec![message(3)]);
    ledger.forget(failed);
    let after = owe(&mut ledger, vec![message(4)]);
    ledger.stored(after);
    assert_eq!(ledger.next(now, 4, false).map(|d| d.seq), Some(4));
    // Settled messages weigh nothing any more.
    for seq in [0, 1, 2, 4] {
        ledger.acked(seq);
    }
    assert_eq!((ledger.owed(), ledger.owed_bytes()), (0, 0));
}

#[test]
fn a_request_waited_for_is_ready_before_it_is_on_disk_and_delivered_once() {
    let mut ledger = Ledger::default();
    let now = Instant::now();
    let sent = owe(&mut ledger, vec![message(0)]);
    ledger.owe_now(Arc::new(message(1)));
    // The request goes out at once; the send before it waits for the disk.
    let delivery = ledger.next(now, 4, false).expect("the request");
    assert_eq!(delivery.seq, 1);
    assert!(ledger.next(now, 4, false).is_none());
    // Both records reach the disk: the earlier send is ready, the request not again.
    ledger.stored(sent.start..2);
    assert_eq!(ledger.next(now, 4, false).map(|d| d.seq), Some(0));
    assert!(ledger.next(now, 4, false).is_none(), "delivered twice");
    // A request whose record then fails stays owed: it may be in delivery already.
    ledger.owe_now(Arc::new(message(2)));
    ledger.forget(2..3);
    assert_eq!(ledger.next(now, 4, false).map(|d| d.seq), Some(2));
    for seq in [1, 0, 2] {
        ledger.acked(seq);
    }
    assert_eq!(ledger.owed(), 0);
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `(seq, attempts)` of the next delivery at `now`.
fn next(ledger: &mut Ledger, now: Instant) -> Option<(u64, u32)> {
    ledger
        .next(now, 1, false)
        .map(|delivery| (delivery.seq, delivery.attempts))
}

#[test]
fn at_most_concurrency_deliveries_run_at_once_in_the_order_of_sending() {
    let mut ledger = owing(3);
    let now = Instant::now();
    let first = ledger.next(now, 2, false).map(|d| d.seq);
    let second = ledger.next(now, 2, false).map(|d| d.seq);
    assert_eq!((first, second), (Some(0), Some(1)));
    assert!(ledger.next(now, 2, false).is_none(), "both slots are taken");
    assert_eq!(ledger.acked(0), Record::Done { seq: 0 });
    assert_eq!(ledger.next(now, 2, false).map(|d| d.seq), Some(2));
    assert_eq!((ledger.owed(), ledger.in_flight()), (2, 2));
}

#[test]
fn a_busy_subscriber_is_not_charged_and_the_message_keeps_its_slot_and_its_place() {
    let mut ledger = owing(2);
    let start = Instant::now();
    assert_eq!(next(&mut ledger, start), Some((0, 0)));
    ledger.not_now(0, start);
    assert_eq!(ledger.next_due(), Some(start + NOT_NOW_PAUSE));
    // The slot stays taken while it waits: message 1 does not overtake it.
    assert_eq!(next(&mut ledger, start + NOT_NOW_PAUSE - ms(1)), None);
    assert_eq!(ledger.in_flight(), 1);
    // Offered again first, still with no attempt counted, as often as the subscriber is busy.
    let mut now = start;
    for _ in 0..5 {
        now += NOT_NOW_PAUSE;
        assert_eq!(next(&mut ledger, now), Some((0, 0)));
        ledger.not_now(0, now);
    }
    now += NOT_NOW_PAUSE;
    assert_eq!(next(&mut ledger, now), Some((0, 0)));
    ledger.acked(0);
    assert_eq!(next(&mut ledger, now), Some((1, 0)));
}

#[test]
fn a_failed_delivery_frees_its_slot_waits_its_pause_and_goes_to_the_back_of_the_line() {
    let mut ledger = owing(2);
    let start = Instant::now();
    assert_eq!(next(&mut ledger, start), Some((0, 0)));
    let record = ledger.failed(0, 1, ms(100), start);
    assert!(matches!(
        record,
        Record::Failed {
            seq: 0,
            attempts: 1
        }
    ));
    // Message 1 goes while message 0 waits.
    assert_eq!(next(&mut ledger, start), Some((1, 0)));
    ledger.acked(1);
    assert_eq!(next(&mut ledger, start + ms(99)), None);
    assert_eq!(ledger.next_due(), Some(start + ms(100)));
    assert_eq!(next(&mut ledger, start + ms(100)), Some((0, 1)));
    assert_eq!(ledger.next_due(), None);
}

#[test]
fn redelivery_backs_off_doubling_then_dead_letters_at_max_attempts() {
    let spec = subscription(4);
    let mut ledger = owing(1);
    let mut now = Instant::now();
    let mut delivered_at = Vec::new();
    let start = now;
    loop {
        let Some(delivery) = ledger.next(now, 1, false) else {
            now = ledger
                .next_due()
                .expect("a failed message waits for its redelivery");
            continue;
        };
        delivered_at.push((now - start).as_millis());
        let attempts = delivery.attempts + 1;
        match after_failure("queue `orders`", &spec, None, attempts) {
            DeliveryVerdict::RedeliverAfter(pause) => {
                ledger.failed(delivery.seq, attempts, pause, now);
            }
            DeliveryVerdict::DeadLetter(reason) => {
                assert_eq!(reason, "queue `orders`: failed 4 times, its max_attempts");
                assert_eq!(ledger.dead_lettered(delivery.seq), Record::Done { seq: 0 });
                break;
            }
        }
    }
    assert_eq!(delivered_at, [0, 100, 300, 700]);
    assert_eq!((ledger.owed(), ledger.in_flight()), (0, 0));
}

#[test]
fn without_policies_redelivery_backs_off_doubling_up_to_its_cap_then_dead_letters() {
    let spec = subscription(12);
    let pauses: Vec<_> = (1..12)
        .map(
            |attempts| match after_failure("queue `orders`", &spec, None, attempts) {
                DeliveryVerdict::RedeliverAfter(pause) => pause.as_millis(),
                DeliveryVerdict::DeadLetter(reason) => panic!("dead at {attempts}: {reason}"),
            },
        )
        .collect();
    assert_eq!(
        pauses,
        [
            100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000
        ]
    );
    assert_eq!(
        after_failure("queue `orders`", &spec, None, 12),
        DeliveryVerdict::DeadLetter("queue `orders`: failed 12 times, its max_attempts".into())
    );
}

#[test]
fn a_policy_decides_within_max_attempts_and_its_dead_letter_reason_is_kept() {
    let spec = subscription(3);
    let redeliver = Some(DeliveryVerdict::RedeliverAfter(Duration::from_secs(7)));
    assert_eq!(
        after_failure("queue `orders`", &spec, redeliver.clone(), 2),
        DeliveryVerdict::RedeliverAfter(Duration::from_secs(7))
    );
    assert!(matches!(
        after_failure("queue `orders`", &spec, redeliver, 3),
        DeliveryVerdict::DeadLetter(reason) if reason.contains("max_attempts")
    ));
    let gave_up = Some(DeliveryVerdict::DeadLetter("policy `retry`: enough".into()));
    assert_eq!(
        after_failure("queue `orders`", &spec, gave_up.clone(), 1),
        DeliveryVerdict::DeadLetter("policy `retry`: enough".into())
    );
    assert_eq!(
        after_failure("queue `orders`", &spec, gave_up, 3),
        DeliveryVerdict::DeadLetter("policy `retry`: enough".into())
    );
}

#[test]
fn a_forgotten_message_is_skipped_even_when_it_is_waiting() {
    let mut ledger = owing(3);
    let now = Instant::now();
    assert_eq!(next(&mut ledger, now), Some((0, 0)));
    ledger.failed(0, 1, ms(10), now);
    ledger.forget(0..2);
    assert_eq!(next(&mut ledger, now + ms(10)), Some((2, 0)));
    ledger.acked(2);
    assert_eq!(next(&mut ledger, now + ms(10)), None);
    assert_eq!(ledger.owed(), 0);
}

/// A ledger owing messages with these keys (`None`: no key), all on disk.
fn owing_keyed(keys: &[Option<&str>]) -> Ledger {
    let mut ledger = Ledger::default();
    let messages = keys
        .iter()
        .zip(0..)
        .map(|(key, seq)| StoredMessage {
            key: key.map(str::to_owned),
            ..message(seq)
        })
        .collect();
    let seqs = owe(&mut ledger, messages);
    ledger.stored(seqs);
    ledger
}

#[test]
fn ordered_by_key_a_failing_message_holds_back_only_the_later_messages_of_its_key() {
    let (a, b) = (Some("a"), Some("b"));
    let mut ledger = owing_keyed(&[a, a, b, None, a]);
    let now = Instant::now();
    let next = |ledger: &mut Ledger, at: Instant| ledger.next(at, 4, true).map(|d| d.seq);
    // 0 (a), then 2 (b) and 3 (no key) in parallel; 1 and 4 wait for 0.
    assert_eq!(next(&mut ledger, now), Some(0));
    assert_eq!(next(&mut ledger, now), Some(2));
    assert_eq!(next(&mut ledger, now), Some(3));
    assert_eq!(next(&mut ledger, now), None);
    // 0 fails: 1 still waits, also while 0 waits for its redelivery with its slot freed.
    ledger.failed(0, 1, Duration::from_millis(100), now);
    assert_eq!(next(&mut ledger, now), None);
    let later = now + Duration::from_millis(100);
    assert_eq!(next(&mut ledger, later), Some(0));
    // 0 is turned away (busy subscriber): 1 still waits.
    ledger.not_now(0, later);
    assert_eq!(next(&mut ledger, later), None);
    let again = later + NOT_NOW_PAUSE;
    assert_eq!(next(&mut ledger, again), Some(0));
    ledger.acked(2);
    ledger.acked(3);
    assert_eq!(next(&mut ledger, again), None, "a later `a` overtook 0");
    // Acknowledged: the next of its key goes, then the one after that.
    ledger.acked(0);
    assert_eq!(next(&mut ledger, again), Some(1));
    assert_eq!(next(&mut ledger, again), None);
    // Dead-lettered counts as settled too.
    ledger.dead_lettered(1);
    assert_eq!(next(&mut ledger, again), Some(4));
    ledger.acked(4);
    assert_eq!((ledger.owed(), ledger.in_flight()), (0, 0));
}

#[test]
fn without_ordered_by_key_a_later_message_overtakes_a_failing_one_and_nothing_stays_parked() {
    let a = Some("a");
    let mut ledger = owing_keyed(&[a, a, a]);
    let now = Instant::now();
    assert_eq!(ledger.next(now, 1, true).map(|d| d.seq), Some(0));
    assert!(ledger.next(now, 2, true).is_none());
    ledger.failed(0, 1, Duration::from_millis(100), now);
    // The queue stops keeping keys in order: the messages that waited go, in order.
    let order: Vec<u64> =
        std::iter::from_fn(|| ledger.next(now, 3, false).map(|d| d.seq)).collect();
    assert_eq!(order, [1, 2]);
}
