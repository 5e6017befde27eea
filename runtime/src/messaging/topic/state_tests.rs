//! A topic's state without its shell: where subscriptions start, what a restart recovers from
//! the records, and what a checkpoint writes. No clock, no disk, no subscriber.

#![allow(clippy::expect_used, reason = "tests fail loudly on purpose")]

use super::*;
use crate::messaging::log::Cursor;
use crate::wire::MessageKind;

fn message(seq: u64, key: Option<&str>, at_ms: u64) -> StoredMessage {
    StoredMessage {
        seq,
        id: format!("events-{seq}"),
        kind: MessageKind::Event,
        key: key.map(str::to_owned),
        headers: Vec::new(),
        reply_to: None,
        trace_context: None,
        body: format!("event {seq}").into_bytes(),
        sender: "orders".into(),
        sent_at_ms: at_ms,
    }
}

fn subscription(service: &str, start: StartAt) -> SubscriptionSpec {
    SubscriptionSpec {
        service: service.to_owned(),
        start,
        concurrency: 1,
        ordered_by_key: false,
        max_attempts: 3,
        redeliver_after: Duration::from_millis(100),
    }
}

fn spec(subscriptions: Vec<SubscriptionSpec>) -> LogSpec {
    LogSpec {
        name: "events".into(),
        kind: Kind::Topic(Retention {
            max_age: None,
            max_bytes: usize::MAX,
            compact: false,
        }),
        max_causation_depth: 32,
        max_dead_bytes: usize::MAX,
        subscriptions,
    }
}

/// A log that kept messages 0..5 (sent at 0, 100, ... ms) and `cursors`.
fn recovered(cursors: &[(&str, Cursor)]) -> Recovered {
    Recovered {
        messages: (0..5)
            .map(|seq| (seq, Arc::new(message(seq, None, seq * 100))))
            .collect(),
        next_seq: 5,
        cursors: cursors
            .iter()
            .map(|(name, cursor)| (Some((*name).to_owned()), cursor.clone()))
            .collect(),
        ..Recovered::default()
    }
}

/// Reads messages as the log would: those of [`recovered`].
fn load(seqs: &[u64]) -> Vec<Arc<StoredMessage>> {
    seqs.iter()
        .filter(|seq| **seq < 5)
        .map(|seq| Arc::new(message(*seq, None, seq * 100)))
        .collect()
}

fn owed(state: &State, service: &str) -> Vec<u64> {
    let sub = state
        .subscriptions
        .iter()
        .find(|sub| sub.spec.service == service)
        .expect("the subscription");
    sub.ledger.owed_messages().map(|(m, _)| m.seq).collect()
}

#[test]
fn a_new_subscription_starts_where_its_spec_says_and_one_with_a_cursor_keeps_it() {
    let subs = vec![
        subscription("latest", StartAt::Latest),
        subscription("beginning", StartAt::Beginning),
        subscription("offset", StartAt::Offset(3)),
        subscription("time", StartAt::Time(150)),
        subscription("known", StartAt::Beginning),
    ];
    let known = Cursor {
        start: 1,
        done: [2].into(),
        attempts: [(4, 2)].into(),
        ..Cursor::default()
    };
    let (state, placed) = State::recover(&spec(subs), recovered(&[("known", known)]), 1000, &load);
    assert_eq!(owed(&state, "latest"), Vec::<u64>::new());
    assert_eq!(owed(&state, "beginning"), [0, 1, 2, 3, 4]);
    assert_eq!(owed(&state, "offset"), [3, 4]);
    assert_eq!(
        owed(&state, "time"),
        [2, 3, 4],
        "the first sent at or after 150 ms"
    );
    assert_eq!(owed(&state, "known"), [1, 3, 4], "its cursor, not its spec");
    let attempts: Vec<u32> = state.subscriptions[4]
        .ledger
        .owed_messages()
        .map(|(_, attempts)| attempts)
        .collect();
    assert_eq!(attempts, [0, 0, 2]);
    // Each new one is placed by a record, so a restart finds it where it started.
    let places: Vec<(String, u64)> = placed
        .into_iter()
        .map(|record| match record {
            Record::StartAt { subscription, seq } => (subscription, seq),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        places,
        [
            ("latest".to_owned(), 5),
            ("beginning".to_owned(), 0),
            ("offset".to_owned(), 3),
            ("time".to_owned(), 2)
        ]
    );
}

#[test]
fn a_checkpoint_says_where_each_subscription_is_and_a_restart_from_it_owes_the_same() {
    let subs = vec![
        subscription("billing", StartAt::Beginning),
        subscription("shipping", StartAt::Beginning),
    ];
    let (mut state, _) = State::recover(&spec(subs), recovered(&[]), 1000, &load);
    let billing = &mut state.subscriptions[0].ledger;
    billing.stored(0..5);
    let now = Instant::now();
    // billing: 0 and 1 done, 2 failed once; 3 done out of order; 4 owed.
    for _ in 0..4 {
        let delivery = billing.next(now, 4, false).expect("ready");
        match delivery.seq {
            2 => drop(billing.failed(2, 1, Duration::from_secs(1), now)),
            seq => drop(billing.acked(seq)),
        }
    }
    assert!(state.rotation().is_none(), "not a segment's worth yet");
    state.rotate_after = 1;
    state.written = 100;
    let rotation = state.rotation().expect("due");
    assert!(state.rotation().is_none(), "rotated once");
    assert_eq!(
        rotation.live,
        log::ranges((0..5).collect()),
        "every kept message is live"
    );
    let checkpoint = rotation.checkpoint.expect("a checkpoint");
    let (records, _) = log::decode_all::<Record>(&checkpoint);
    let written: Vec<String> = records
        .iter()
        .map(|record| match record {
            Record::Checkpoint {
                next_seq,
                kept_from,
            } => format!("next {next_seq}, kept from {kept_from}"),
            Record::Owes {
                subscription: Some(name),
                start,
            } => format!("{name} from {start}"),
            Record::DoneRanges {
                subscription: Some(name),
                ranges,
            } => format!("{name} done {ranges:?}"),
            Record::Attempts {
                subscription: Some(name),
                attempts,
            } => format!("{name} attempts {attempts:?}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        written,
        [
            "next 5, kept from 0",
            "billing from 2",
            "billing done [(3, 4)]",
            "billing attempts [(2, 1)]",
            "shipping from 0",
            "CheckpointEnd",
        ]
    );

    // What a restart makes of the segments' messages and the checkpoint is what the state was.
    let mut again = Recovered::default();
    for seq in 0..5 {
        again.apply(Record::Sent(message(seq, None, seq * 100)));
    }
    for record in records {
        again.apply(record);
    }
    let subs = vec![
        subscription("billing", StartAt::Latest),
        subscription("shipping", StartAt::Latest),
    ];
    let (restarted, placed) = State::recover(&spec(subs), again, 1000, &load);
    assert!(placed.is_empty());
    assert_eq!(owed(&restarted, "billing"), [2, 4]);
    assert_eq!(owed(&restarted, "shipping"), [0, 1, 2, 3, 4]);
    let attempts: Vec<u32> = restarted.subscriptions[0]
        .ledger
        .owed_messages()
        .map(|(_, attempts)| attempts)
        .collect();
    assert_eq!(attempts, [1, 0]);
}

#[test]
fn a_rewind_owes_the_kept_messages_from_there_again_and_drops_what_came_before() {
    let subs = vec![subscription("billing", StartAt::Beginning)];
    let (mut state, _) = State::recover(&spec(subs), recovered(&[]), 1000, &load);
    // What the log holds: the topic keeps no bodies once they are on disk.
    assert!(state.retained.from(0).all(|kept| kept.message.is_none()));
    let kept: Vec<Arc<StoredMessage>> = (0..5)
        .map(|seq| Arc::new(message(seq, None, seq * 100)))
        .collect();
    let billing = &mut state.subscriptions[0].ledger;
    billing.stored(0..5);
    let now = Instant::now();
    while let Some(delivery) = billing.next(now, 1, false) {
        drop(billing.acked(delivery.seq));
    }
    assert_eq!(billing.owed(), 0);
    billing.rewind(3, kept[3..].to_vec());
    let order: Vec<u64> = std::iter::from_fn(|| {
        let delivery = billing.next(now, 1, false)?;
        drop(billing.acked(delivery.seq));
        Some(delivery.seq)
    })
    .collect();
    assert_eq!(order, [3, 4]);
    // Forward past what it owes: the earlier ones are dropped.
    billing.rewind(1, kept[1..].to_vec());
    billing.rewind(4, kept[4..].to_vec());
    assert_eq!(billing.cursor(), 4);
    assert_eq!(billing.owed(), 1);
}

#[test]
fn start_positions_read_as_an_operator_writes_them() {
    assert_eq!(StartAt::parse("latest"), Some(StartAt::Latest));
    assert_eq!(StartAt::parse(" beginning "), Some(StartAt::Beginning));
    assert_eq!(StartAt::parse("42"), Some(StartAt::Offset(42)));
    assert_eq!(
        StartAt::parse("2026-11-26T08:00:00Z"),
        Some(StartAt::Time(1_795_680_000_000))
    );
    assert_eq!(
        StartAt::parse("2026-11-26T09:00:00+01:00"),
        Some(StartAt::Time(1_795_680_000_000))
    );
    for bad in ["", "yesterday", "-1", "2026-11-26"] {
        assert_eq!(StartAt::parse(bad), None, "{bad}");
    }
}
