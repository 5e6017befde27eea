//! The store on a real file in a temporary directory, and the relay against a scripted broker.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail loudly on purpose"
)]

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::host::{OutboxMessage, Outgoing, Queues, Receipt, RequestError, SendError};
use crate::wire::{MessageKind, StoredMessage};

const LIMIT: u64 = 1 << 20;

fn open() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("state.redb")).expect("open");
    (dir, Arc::new(store))
}

fn put(key: &str, value: &[u8]) -> Transaction {
    Transaction {
        writes: vec![(key.into(), Some(value.to_vec()))],
        ..Transaction::default()
    }
}

fn message(destination: &str, body: &[u8]) -> OutboxMessage {
    OutboxMessage {
        destination: destination.into(),
        trace_context: None,
        message: Outgoing {
            id: None,
            kind: MessageKind::Event,
            key: None,
            headers: Vec::new(),
            reply_to: None,
            body: body.to_vec(),
        },
    }
}

#[test]
fn a_commit_checks_what_it_read_and_stores_all_or_nothing() {
    let (_dir, store) = open();
    let first = store.commit("orders", LIMIT, put("o/1", b"new")).unwrap();
    let read = store.get("orders", "o/1").unwrap().unwrap();
    assert_eq!(
        (read.value.as_slice(), read.version),
        (&b"new"[..], first.version)
    );

    // Two transactions read version `first`; the second to commit conflicts and stores nothing.
    let update = |value: &[u8]| Transaction {
        reads: vec![("o/1".into(), first.version)],
        writes: vec![
            ("o/1".into(), Some(value.to_vec())),
            ("o/2".into(), Some(b"x".to_vec())),
        ],
        messages: vec![message("billing", value)],
    };
    let won = store.commit("orders", LIMIT, update(b"paid")).unwrap();
    assert!(won.version > first.version);
    assert_eq!(won.message_ids.len(), 1);
    let lost = store.commit("orders", LIMIT, update(b"cancelled"));
    assert!(
        matches!(&lost, Err(StateError::Conflict(why)) if why.contains("o/1") && why.contains("retry")),
        "{lost:?}"
    );
    assert_eq!(store.get("orders", "o/1").unwrap().unwrap().value, b"paid");
    assert_eq!(
        store.pending(10, &Default::default()).unwrap().len(),
        1,
        "the lost commit sent nothing"
    );

    // Reading a key as absent (version 0) conflicts once it exists.
    let absent = Transaction {
        reads: vec![("o/1".into(), 0)],
        ..put("o/1", b"again")
    };
    assert!(matches!(
        store.commit("orders", LIMIT, absent),
        Err(StateError::Conflict(_))
    ));
}

#[test]
fn each_service_sees_only_its_keys_and_stays_within_its_limit() {
    let (_dir, store) = open();
    store
        .commit("orders", LIMIT, put("shared", b"orders'"))
        .unwrap();
    store
        .commit("billing", LIMIT, put("shared", b"billing's"))
        .unwrap();
    assert_eq!(
        store.get("orders", "shared").unwrap().unwrap().value,
        b"orders'"
    );
    assert_eq!(
        store.get("billing", "shared").unwrap().unwrap().value,
        b"billing's"
    );
    assert_eq!(store.get("shop", "shared").unwrap(), None);
    assert_eq!(
        store.scan("orders", "", None, 100).unwrap().entries.len(),
        1
    );

    let big = vec![7; 600];
    store.commit("small", 1000, put("a", &big)).unwrap();
    let over = store.commit("small", 1000, put("b", &big));
    assert!(
        matches!(&over, Err(StateError::TooLarge(why)) if why.contains("state_max_mb")),
        "{over:?}"
    );
    // Overwriting a key counts its new size, not both.
    store.commit("small", 1000, put("a", &big)).unwrap();
    let usage = store.usage().unwrap();
    let small = usage.iter().find(|u| u.service == "small").unwrap();
    assert_eq!((small.keys, small.bytes), (1, 601));

    let long_key = "k".repeat(super::store::MAX_KEY_BYTES + 1);
    assert!(matches!(
        store.commit("orders", LIMIT, put(&long_key, b"")),
        Err(StateError::TooLarge(_))
    ));
    assert!(matches!(
        store.commit("orders", LIMIT, put("", b"")),
        Err(StateError::Invalid(_))
    ));
}

#[test]
fn a_scan_pages_through_a_prefix_in_key_order() {
    let (_dir, store) = open();
    for n in 0..25 {
        store
            .commit("orders", LIMIT, put(&format!("o/{n:02}"), b"v"))
            .unwrap();
    }
    store.commit("orders", LIMIT, put("p/1", b"v")).unwrap();
    store.commit("orders", LIMIT, put("o", b"v")).unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.scan("orders", "o/", after.as_deref(), 10).unwrap();
        seen.extend(page.entries.into_iter().map(|e| e.key));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|n| format!("o/{n:02}")).collect();
    assert_eq!(seen, expected);
}

#[test]
fn a_commit_is_one_fsync_and_the_outbox_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let ids = {
        let store = Store::open(&path).unwrap();
        let before = store.fsyncs();
        let committed = store
            .commit(
                "orders",
                LIMIT,
                Transaction {
                    messages: vec![message("billing", b"1"), message("audit", b"2")],
                    ..put("o/1", b"placed")
                },
            )
            .unwrap();
        assert_eq!(store.fsyncs() - before, 1, "one commit, one fsync");
        committed.message_ids
    };
    let store = Store::open(&path).unwrap();
    let pending = store.pending(10, &Default::default()).unwrap();
    let pending_ids: Vec<_> = pending
        .iter()
        .map(|(_, entry)| entry.message.message.id.clone().unwrap())
        .collect();
    assert_eq!(pending_ids, ids);
    assert_eq!(pending[0].1.message.destination, "billing");
    store.note_relayed(&[pending[0].0]);
    assert_eq!(
        store.pending(10, &Default::default()).unwrap().len(),
        1,
        "a relayed message is not pending"
    );
    assert_eq!(store.outbox_depth().unwrap().0, 1);
    // The next commit removes it from the file, with its own fsync and no other.
    let before = store.fsyncs();
    store.commit("orders", LIMIT, put("o/2", b"x")).unwrap();
    assert_eq!(store.fsyncs() - before, 1);
    assert!(!store.has_relayed_unremoved());
    drop(store);
    let store = Store::open(&path).unwrap();
    let left: Vec<_> = store
        .pending(10, &Default::default())
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(left, vec![pending[1].0]);
}

#[test]
fn a_message_in_a_commit_writes_no_more_pages_than_the_commit_without_it() {
    let (_dir, store) = open();
    // Settle the file's first allocations.
    for n in 0..4 {
        store
            .commit("orders", LIMIT, put(&format!("o/{n}"), b"placed"))
            .unwrap();
    }
    let writes_of = |transaction: Transaction| {
        let before = store.writes();
        store.commit("orders", LIMIT, transaction).unwrap();
        store.writes() - before
    };
    let plain = writes_of(put("o/1", b"paid"));
    let with_message = Transaction {
        messages: vec![message("billing", b"paid")],
        ..put("o/2", b"paid")
    };
    assert_eq!(writes_of(with_message.clone()), plain);
    // The relay's removal rides on the next commit, on the same page.
    let pending = store.pending(10, &Default::default()).unwrap();
    store.note_relayed(&[pending[0].0]);
    assert_eq!(writes_of(with_message), plain);
    assert!(!store.has_relayed_unremoved());
    assert_eq!(store.outbox_depth().unwrap().0, 1);
}

#[test]
fn a_file_written_with_a_table_each_for_meta_usage_and_outbox_is_taken_in_whole() {
    use super::book::before_book::{META, OUTBOX, USAGE};
    use super::store::ENTRIES;
    use redb::{ReadableDatabase, TableHandle};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let waiting = |seq: u64| store::OutboxEntry {
        service: "orders".into(),
        committed_at_ms: 1,
        message: OutboxMessage {
            message: Outgoing {
                id: Some(format!("000000000000002a-{seq}")),
                ..message("billing", b"x").message
            },
            ..message("billing", b"x")
        },
    };
    {
        let db = redb::Database::create(&path).unwrap();
        let write = db.begin_write().unwrap();
        {
            let mut entries = write.open_table(ENTRIES).unwrap();
            entries
                .insert(("orders", "o/1"), (7, &b"paid"[..]))
                .unwrap();
            let mut usage = write.open_table(USAGE).unwrap();
            usage.insert("orders", (900, 1)).unwrap();
            let mut outbox = write.open_table(OUTBOX).unwrap();
            for seq in [1, 2] {
                let bytes = postcard::to_stdvec(&waiting(seq)).unwrap();
                outbox.insert(seq, bytes.as_slice()).unwrap();
            }
            let mut meta = write.open_table(META).unwrap();
            meta.insert("version", 7).unwrap();
            meta.insert("outbox-next", 3).unwrap();
            meta.insert("store-id", 42).unwrap();
        }
        write.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    let found = store.get("orders", "o/1").unwrap().unwrap();
    assert_eq!((found.version, found.value.as_slice()), (7, &b"paid"[..]));
    let pending = store.pending(10, &Default::default()).unwrap();
    assert_eq!(pending, vec![(1, waiting(1)), (2, waiting(2))]);
    assert_eq!(store.outbox_depth().unwrap().0, 2);
    let usage = store.usage().unwrap();
    assert_eq!(
        (usage[0].service.as_str(), usage[0].bytes, usage[0].keys),
        ("orders", 900, 1)
    );
    // Counters go on from where they were: the next version, the next id of the same store.
    let committed = store
        .commit(
            "orders",
            LIMIT,
            Transaction {
                messages: vec![message("billing", b"y")],
                ..put("o/2", b"placed")
            },
        )
        .unwrap();
    assert_eq!(committed.version, 8);
    assert_eq!(committed.message_ids, vec!["000000000000002a-3".to_owned()]);
    drop(store);
    let db = redb::Database::open(&path).unwrap();
    let read = db.begin_read().unwrap();
    let tables: Vec<String> = read
        .list_tables()
        .unwrap()
        .map(|table| table.name().to_owned())
        .collect();
    assert_eq!(tables, ["book", "entries", "meta"]);
    // A switchyard from before `book` opens `meta` with its old types: refused, not started
    // over beside the moved rows.
    let old = read.open_table(META);
    assert!(
        matches!(old, Err(redb::TableError::TableTypeMismatch { .. })),
        "{old:?}"
    );
    drop(read);
    drop(db);
    // Opening again moves nothing twice and keeps the counters.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.pending(10, &Default::default()).unwrap().len(), 3);
    let committed = store
        .commit("orders", LIMIT, put("o/3", b"placed"))
        .unwrap();
    assert_eq!(committed.version, 9);
}

#[test]
fn an_import_replaces_a_services_keys_and_no_one_elses() {
    let (_dir, store) = open();
    store.commit("orders", LIMIT, put("old", b"1")).unwrap();
    store.commit("orders", LIMIT, put("kept", b"2")).unwrap();
    store.commit("billing", LIMIT, put("old", b"3")).unwrap();
    let imported = store
        .import(
            "orders",
            LIMIT,
            vec![
                ("kept".into(), b"20".to_vec()),
                ("new".into(), b"30".to_vec()),
            ],
        )
        .unwrap();
    assert_eq!(imported, 2);
    let keys: Vec<_> = store
        .export("orders")
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("kept".into(), b"20".to_vec()),
            ("new".into(), b"30".to_vec())
        ]
    );
    assert_eq!(store.get("billing", "old").unwrap().unwrap().value, b"3");
}

/// A broker that refuses sends to destinations in `down` (counting them) and records the
/// others.
#[derive(Default)]
struct ScriptedBroker {
    down: Mutex<Vec<String>>,
    sent: Mutex<VecDeque<(String, String, String)>>,
    refused: std::sync::atomic::AtomicUsize,
}

impl Queues for ScriptedBroker {
    fn send<'a>(
        &'a self,
        queue: &'a str,
        sender: &'a str,
        _trace_context: Option<String>,
        message: Outgoing,
        _budget: Duration,
    ) -> crate::util::BoxFuture<'a, Result<Receipt, SendError>> {
        let refused = self.down.lock().unwrap().iter().any(|down| down == queue);
        let result = if refused {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(SendError::Unavailable(format!("`{queue}` is down")))
        } else {
            let id = message.id.unwrap_or_default();
            self.sent
                .lock()
                .unwrap()
                .push_back((queue.to_owned(), sender.to_owned(), id.clone()));
            Ok(Receipt { id, offset: 0 })
        };
        Box::pin(async move { result })
    }

    fn read<'a>(
        &'a self,
        _topic: &'a str,
        _from: u64,
        _max: usize,
        _budget: Duration,
    ) -> crate::util::BoxFuture<'a, Result<(Vec<StoredMessage>, u64), SendError>> {
        Box::pin(async { Err(SendError::Unavailable("not in this test".into())) })
    }

    fn request<'a>(
        &'a self,
        _destination: &'a str,
        _sender: &'a str,
        _trace_context: Option<String>,
        _message: Outgoing,
        _timeout: Duration,
    ) -> crate::util::BoxFuture<'a, Result<StoredMessage, RequestError>> {
        Box::pin(async { Err(RequestError::Timeout("not in this test".into())) })
    }

    fn request_all<'a>(
        &'a self,
        _destination: &'a str,
        _sender: &'a str,
        _trace_context: Option<String>,
        _message: Outgoing,
        _window: Duration,
    ) -> crate::util::BoxFuture<'a, Result<Vec<StoredMessage>, RequestError>> {
        Box::pin(async { Err(RequestError::Timeout("not in this test".into())) })
    }

    fn reply<'a>(
        &'a self,
        _to: &'a str,
        _sender: &'a str,
        _trace_context: Option<String>,
        _message: Outgoing,
        _budget: Duration,
    ) -> crate::util::BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async { Err(SendError::Unavailable("not in this test".into())) })
    }
}

/// The relay of `store` running against `broker`, until [`RunningRelay::stop`].
struct RunningRelay {
    stats: Arc<RelayStats>,
    stop: tokio::sync::watch::Sender<bool>,
    running: tokio::task::JoinHandle<()>,
}

impl RunningRelay {
    fn start(store: &Arc<Store>, broker: &Arc<ScriptedBroker>) -> Self {
        let stats = Arc::new(RelayStats::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(run_relay(
            store.clone(),
            broker.clone(),
            stats.clone(),
            stopped,
        ));
        Self {
            stats,
            stop,
            running,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.running.await.unwrap();
    }
}

async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_caller_went_away_still_wakes_the_relay() {
    let (_dir, store) = open();
    let broker = Arc::new(ScriptedBroker::default());
    let relay = RunningRelay::start(&store, &broker);
    // The relay's first round (whatever a crash left) is done before the commits start.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for n in 0..3 {
        let committing = commit_off_executor(
            store.clone(),
            "orders".into(),
            LIMIT,
            Transaction {
                messages: vec![message("billing", format!("{n}").as_bytes())],
                ..put(&format!("o/{n}"), b"placed")
            },
        );
        // Polled once (the commit starts on its thread), then dropped before its outcome.
        {
            let mut committing = std::pin::pin!(committing);
            let polled = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(committing.as_mut().poll(cx).is_pending())
            })
            .await;
            assert!(polled, "a commit does not end at its first poll");
        }
        eventually("the relay got the message of a dropped commit", || {
            broker.sent.lock().unwrap().len() == n + 1
        })
        .await;
    }
    // And one whose caller waits is relayed as well.
    let committed = commit_off_executor(
        store.clone(),
        "orders".into(),
        LIMIT,
        Transaction {
            messages: vec![message("billing", b"3")],
            ..put("o/3", b"placed")
        },
    )
    .await
    .unwrap();
    eventually("the relay got the message", || {
        broker.sent.lock().unwrap().back().map(|(_, _, id)| id) == committed.message_ids.first()
    })
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn the_relay_sends_in_order_keeps_ids_and_retries_a_refusing_destination() {
    let (_dir, store) = open();
    let broker = Arc::new(ScriptedBroker::default());
    broker.down.lock().unwrap().push("audit".into());
    // Left by an earlier run: relayed at start.
    let left = store
        .commit(
            "orders",
            LIMIT,
            Transaction {
                messages: vec![message("billing", b"1"), message("audit", b"a")],
                ..Transaction::default()
            },
        )
        .unwrap();
    let relay = RunningRelay::start(&store, &broker);
    let stats = relay.stats.clone();
    eventually("the first message is relayed", || {
        broker.sent.lock().unwrap().len() == 1
    })
    .await;

    // Woken by a commit; `audit` stays refused and does not hold `billing` back.
    let later = store
        .commit(
            "orders",
            LIMIT,
            Transaction {
                messages: vec![message("billing", b"2")],
                ..Transaction::default()
            },
        )
        .unwrap();
    eventually("the second message is relayed", || {
        broker.sent.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(
        store.pending(10, &Default::default()).unwrap().len(),
        1,
        "audit's message waits"
    );
    assert!(stats.last_error().is_some_and(|why| why.contains("audit")));

    broker.down.lock().unwrap().clear();
    eventually("audit's message goes once it is back", || {
        broker.sent.lock().unwrap().len() == 3
    })
    .await;
    let sent: Vec<_> = broker.sent.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        sent,
        vec![
            (
                "billing".into(),
                "orders".into(),
                left.message_ids[0].clone()
            ),
            (
                "billing".into(),
                "orders".into(),
                later.message_ids[0].clone()
            ),
            ("audit".into(), "orders".into(), left.message_ids[1].clone()),
        ]
    );
    eventually("the outbox is empty", || {
        store.pending(10, &Default::default()).unwrap().is_empty()
    })
    .await;
    assert_eq!(stats.relayed(), 3);
    relay.stop().await;
}

#[tokio::test]
async fn the_relay_sends_every_message_once_and_in_order_while_commits_race_it() {
    let (_dir, store) = open();
    let broker = Arc::new(ScriptedBroker::default());
    let relay = RunningRelay::start(&store, &broker);
    // Commits from two threads while the relay runs; `audit` is down for a while in the
    // middle, so the relay goes from memory to the file and back.
    let committer = |name: &'static str| {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            for n in 0..400 {
                let committed = store
                    .commit(
                        name,
                        LIMIT,
                        Transaction {
                            messages: vec![message("billing", b"b"), message("audit", b"a")],
                            ..put(&format!("k{n}"), b"v")
                        },
                    )
                    .expect("commit");
                ids.extend(committed.message_ids);
            }
            ids
        })
    };
    let (first, second) = (committer("orders"), committer("refunds"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    broker.down.lock().unwrap().push("audit".into());
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.down.lock().unwrap().clear();
    let mut ids = first.join().unwrap();
    ids.extend(second.join().unwrap());
    eventually("every message is relayed", || {
        broker.sent.lock().unwrap().len() >= ids.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sent: Vec<_> = broker.sent.lock().unwrap().iter().cloned().collect();
    assert_eq!(sent.len(), ids.len(), "no message is sent twice");
    let mut sent_ids: Vec<_> = sent.iter().map(|(_, _, id)| id.clone()).collect();
    sent_ids.sort();
    ids.sort();
    assert_eq!(sent_ids, ids);
    // Per destination, the outbox's order (ids end in the outbox number).
    for destination in ["billing", "audit"] {
        let numbers: Vec<u64> = sent
            .iter()
            .filter(|(to, _, _)| to == destination)
            .map(|(_, _, id)| id.rsplit('-').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{destination} out of order"
        );
    }
    relay.stop().await;
}

/// `threads` threads each running `work(thread)`, joined; their results.
fn on_threads<T: Send + 'static>(
    threads: usize,
    work: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let work = Arc::new(work);
    let running: Vec<_> = (0..threads)
        .map(|thread| {
            let work = work.clone();
            std::thread::spawn(move || work(thread))
        })
        .collect();
    running.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn increments_racing_in_one_batch_conflict_and_none_is_lost() {
    let (_dir, store) = open();
    store.commit("counter", LIMIT, put("n", b"0")).unwrap();
    let racing = store.clone();
    on_threads(8, move |_| {
        for _ in 0..25 {
            loop {
                let read = racing.get("counter", "n").unwrap().unwrap();
                let value: u64 = std::str::from_utf8(&read.value).unwrap().parse().unwrap();
                let increment = Transaction {
                    reads: vec![("n".into(), read.version)],
                    ..put("n", (value + 1).to_string().as_bytes())
                };
                match racing.commit("counter", LIMIT, increment) {
                    Ok(_) => break,
                    Err(StateError::Conflict(_)) => continue,
                    Err(other) => panic!("{other}"),
                }
            }
        }
    });
    assert_eq!(store.get("counter", "n").unwrap().unwrap().value, b"200");
}

#[test]
fn commits_at_once_share_fsyncs_and_one_that_fails_leaves_the_others_whole() {
    let (_dir, store) = open();
    let before = store.fsyncs();
    let committing = store.clone();
    let refused: usize = on_threads(16, move |thread| {
        let mut refused = 0;
        for n in 0..40 {
            committing
                .commit("orders", LIMIT, put(&format!("t{thread}/{n}"), b"v"))
                .unwrap();
            // Too large for its service: refused, in whatever batch it lands.
            let too_big = committing.commit("tiny", 10, put(&format!("t{thread}-{n}"), &[0; 64]));
            refused += usize::from(matches!(too_big, Err(StateError::TooLarge(_))));
        }
        refused
    })
    .into_iter()
    .sum();
    assert_eq!(refused, 16 * 40);
    assert_eq!(
        store
            .scan("orders", "t3/", None, 100)
            .unwrap()
            .entries
            .len(),
        40
    );
    assert_eq!(store.scan("tiny", "", None, 10).unwrap().entries.len(), 0);
    let fsyncs = store.fsyncs() - before;
    assert!(
        fsyncs < 640,
        "{fsyncs} fsyncs for 640 stored commits: no group commit"
    );
}

#[tokio::test]
async fn messages_waiting_in_the_outbox_count_against_the_services_limit() {
    let (_dir, store) = open();
    let broker = Arc::new(ScriptedBroker::default());
    broker.down.lock().unwrap().push("billing".into());
    let relay = RunningRelay::start(&store, &broker);
    let send = |body: usize| Transaction {
        messages: vec![message("billing", &vec![b'x'; body])],
        ..Transaction::default()
    };
    store.commit("orders", 2000, send(800)).unwrap();
    store.commit("orders", 2000, send(800)).unwrap();
    let full = store.commit("orders", 2000, send(800));
    assert!(
        matches!(&full, Err(StateError::TooLarge(why)) if why.contains("outbox")),
        "{full:?}"
    );
    let usage = store.usage().unwrap();
    assert!(usage[0].bytes > 1600, "{usage:?}");

    // The destination comes back: the relay sends them, their bytes are freed.
    broker.down.lock().unwrap().clear();
    eventually("the outbox drains", || {
        broker.sent.lock().unwrap().len() == 2
    })
    .await;
    eventually("their bytes are freed", || {
        store.usage().unwrap()[0].bytes == 0
    })
    .await;
    store.commit("orders", 2000, send(800)).unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn a_refusing_destination_cools_down_while_the_others_go_on() {
    let (_dir, store) = open();
    let broker = Arc::new(ScriptedBroker::default());
    broker.down.lock().unwrap().push("audit".into());
    let relay = RunningRelay::start(&store, &broker);
    // 20 commits, each with a message for audit (down) and one for billing.
    for _ in 0..20 {
        store
            .commit(
                "orders",
                LIMIT,
                Transaction {
                    messages: vec![message("audit", b"a"), message("billing", b"b")],
                    ..Transaction::default()
                },
            )
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eventually("billing has all 20", || {
        broker.sent.lock().unwrap().len() == 20
    })
    .await;
    let tried = broker.refused.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        tried < 10,
        "audit was tried {tried} times in about 40 ms: it should cool down (50 ms, doubling)"
    );
    broker.down.lock().unwrap().clear();
    eventually("audit gets its 20 once back", || {
        broker.sent.lock().unwrap().len() == 40
    })
    .await;
    relay.stop().await;
}
