//! The queue's task shell on tokio's paused clock: a real log in a temporary directory, a
//! scripted subscriber that notes the attempt number and the moment of each delivery.

#![allow(clippy::expect_used, reason = "tests fail loudly on purpose")]

use std::sync::Mutex;

use tokio::sync::mpsc;

use super::ledger::tests::spec;
use super::*;
use crate::messaging::log::sim::{Op, SimDisk};

fn disk() -> Arc<dyn log::Storage> {
    Arc::new(log::Disk)
}
use crate::util::BoxFuture;
use crate::wire::MessageKind;

/// Answers deliveries from a script, in order, and reports `(attempt, when)` for each.
struct Scripted {
    script: Mutex<std::vec::IntoIter<Delivered>>,
    seen: mpsc::UnboundedSender<(u32, Instant)>,
}

impl Subscribers for Scripted {
    fn deliver<'a>(
        &'a self,
        _service: &'a str,
        _queue: &'a str,
        _message: &'a StoredMessage,
        attempt: u32,
    ) -> BoxFuture<'a, Delivered> {
        let _ = self.seen.send((attempt, Instant::now()));
        let next = self.script.lock().map(|mut script| script.next());
        let outcome = match next {
            Ok(Some(outcome)) => outcome,
            _ => Delivered::Failed("the script is over".into()),
        };
        Box::pin(async move { outcome })
    }
}

fn order() -> StoredMessage {
    message("order 1")
}

/// A message from `shop` with this body.
pub(super) fn message(body: &str) -> StoredMessage {
    StoredMessage {
        seq: 0,
        id: String::new(),
        kind: MessageKind::Command,
        key: None,
        headers: Vec::new(),
        reply_to: None,
        trace_context: None,
        body: body.as_bytes().to_vec(),
        sender: "shop".into(),
        sent_at_ms: 0,
    }
}

/// Runs a queue of `spec` whose subscriber answers with `script`; sends one message and
/// returns the queue and the milliseconds between consecutive deliveries with their attempt
/// numbers, once `deliveries` were made.
async fn run(
    dir: &std::path::Path,
    spec: crate::manifest::QueueSpec,
    script: Vec<Delivered>,
    deliveries: usize,
) -> (Arc<Topic>, Vec<(u32, u128)>) {
    let (seen, mut deliveries_seen) = mpsc::unbounded_channel();
    let subscriber = Scripted {
        script: Mutex::new(script.into_iter()),
        seen,
    };
    let queue = Arc::new(Topic::open(&disk(), dir, spec.into()).expect("open the queue's log"));
    queue.start(Arc::new(subscriber), Arc::new(Policies::default()));
    let stored = queue.send(order()).await.expect("send");
    assert_eq!((stored.id.as_str(), stored.offset), ("orders-0", 0));
    let mut made = Vec::new();
    let mut last: Option<Instant> = None;
    for _ in 0..deliveries {
        let (attempt, at) = deliveries_seen.recv().await.expect("a delivery");
        let gap = last.map_or(0, |last| (at - last).as_millis());
        made.push((attempt, gap));
        last = Some(at);
    }
    (queue, made)
}

fn view(queue: &Topic) -> QueueView {
    queue.queue_view().expect("a queue")
}

fn owed(queue: &Topic) -> usize {
    view(queue).depth
}

/// Waits until `done` holds for the queue's view. The clock is paused, but the log writer's
/// fsyncs take real time: the bound is on real time.
async fn until(queue: &Topic, done: impl Fn(&QueueView) -> bool) -> QueueView {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(20) {
        let view = view(queue);
        if done(&view) {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    panic!("the queue never got there: {:?}", view(queue));
}

#[tokio::test(start_paused = true)]
async fn a_busy_subscriber_is_not_charged_an_attempt_and_is_offered_the_message_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = vec![
        Delivered::NotNow("all instances busy".into()),
        Delivered::NotNow("all instances busy".into()),
        Delivered::NotNow("all instances busy".into()),
        Delivered::Failed("boom".into()),
        Delivered::Acked,
    ];
    let (queue, made) = run(dir.path(), spec(5), script, 5).await;
    // Busy three times (50 ms apart, still attempt 1), then failed once: attempt 2 comes
    // after the queue's first pause.
    assert_eq!(made, [(1, 0), (1, 50), (1, 50), (1, 50), (2, 100)]);
    let view = until(&queue, |view| view.depth == 0).await;
    assert_eq!((view.delivered, view.redelivered), (1, 1));
    assert_eq!(view.in_flight, 0);
    queue.stop().await;
}

#[tokio::test(start_paused = true)]
async fn redelivery_backs_off_and_a_message_is_dead_lettered_at_max_attempts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let failures = (0..3)
        .map(|n| Delivered::Failed(format!("boom {n}")))
        .collect();
    let (queue, made) = run(dir.path(), spec(3), failures, 3).await;
    assert_eq!(made, [(1, 0), (2, 100), (3, 200)]);
    let view = until(&queue, |view| view.dead_lettered == 1).await;
    assert_eq!((view.depth, view.in_flight, view.redelivered), (0, 0, 2));
    let dead = &view.recent_dead_letters[0];
    assert_eq!((dead.id.as_str(), dead.attempts), ("orders-0", 3));
    assert_eq!(dead.last_error, "boom 2");
    assert!(dead.reason.contains("max_attempts"), "{}", dead.reason);
    queue.stop().await;
}

#[tokio::test]
async fn a_queue_that_cannot_write_answers_unavailable_says_so_and_recovers_by_itself() {
    let sim = SimDisk::new(3);
    let storage: Arc<dyn log::Storage> = Arc::new(sim.clone());
    let queue = Topic::open(&storage, std::path::Path::new("/sim"), spec(3).into()).expect("open");
    queue.send(order()).await.expect("the first send");
    assert!(queue.problems().is_empty());
    sim.fail_next(Op::Write, std::io::ErrorKind::StorageFull);
    let refused = queue.send(order()).await;
    assert!(
        matches!(refused, Err(SendError::Unavailable(_))),
        "{refused:?}"
    );
    let problem = queue.problems().join("\n");
    assert!(
        problem.contains("queue `orders` cannot write its log"),
        "{problem}"
    );
    // The refused message is not owed; the next send is written and owed.
    assert_eq!(owed(&queue), 1);
    queue
        .send(order())
        .await
        .expect("a send after the disk has room again");
    assert!(queue.problems().is_empty());
    assert_eq!(owed(&queue), 2);
}

#[tokio::test(start_paused = true)]
async fn past_max_dead_mb_a_failed_message_stays_owed_and_says_so_until_there_is_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let failures = (0..4)
        .map(|n| Delivered::Failed(format!("boom {n}")))
        .collect();
    // No letter fits in one byte.
    let full = crate::manifest::QueueSpec {
        max_dead_bytes: 1,
        ..spec(3)
    };
    let (queue, made) = run(dir.path(), full, failures, 3).await;
    assert_eq!(made, [(1, 0), (2, 100), (3, 200)]);
    let view = until(&queue, |_| !queue.problems().is_empty()).await;
    assert_eq!((view.depth, view.dead_lettered), (1, 0), "not dropped");
    let problem = queue.problems().join("\n");
    assert!(
        problem.contains("dead-letter file") && problem.contains("max_dead_mb"),
        "{problem}"
    );
    // Room again: the message is offered once more and, failing, is dead-lettered.
    queue.reconfigure(spec(3).into());
    tokio::time::advance(MAX_BACKOFF).await;
    let view = until(&queue, |view| view.dead_lettered == 1).await;
    assert_eq!(view.depth, 0);
    assert!(queue.problems().is_empty(), "{:?}", queue.problems());
    queue.stop().await;
}

/// A queue cannot take over a topic's files (it would owe everything the topic kept); a topic
/// can take over a queue's (its subscriptions start where their specs say).
#[tokio::test]
async fn a_queue_refuses_a_topics_files_and_a_topic_takes_a_queues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = LogSpec {
        kind: Kind::Topic(crate::manifest::Retention {
            max_age: None,
            max_bytes: usize::MAX,
            compact: false,
        }),
        ..LogSpec::from(spec(3))
    };
    let opened = Topic::open(&disk(), dir.path(), topic.clone()).expect("open the topic");
    opened.send(order()).await.expect("publish");
    opened.stop().await;
    let refused = Topic::open(&disk(), dir.path(), spec(3).into())
        .err()
        .expect("a queue on a topic's files");
    let refused = refused.to_string();
    assert!(
        refused.contains("orders holds a topic") && refused.contains("another name"),
        "{refused}"
    );

    let other = tempfile::tempdir().expect("tempdir");
    let queue = Topic::open(&disk(), other.path(), spec(3).into()).expect("open the queue");
    queue.send(order()).await.expect("send");
    queue.stop().await;
    let taken = Topic::open(&disk(), other.path(), topic).expect("a topic on a queue's files");
    let view = taken.topic_view().expect("a topic");
    assert_eq!((view.next_offset, view.messages), (1, 1));
    taken.stop().await;
}
