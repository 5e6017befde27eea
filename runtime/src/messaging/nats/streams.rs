//! What JetStream streams a queue or topic is: a queue is a work-queue stream (a message goes
//! once acknowledged) bounded like the embedded queue (`discard new`: a send past `max_depth`
//! or `max_bytes_mb` is refused as `full`); a topic is a limits stream whose retention is the
//! topic's (`retain_ms` → max age, `retain_mb` → max bytes, `compact` → one message per
//! subject, i.e. per key). Each has a dead-letter stream beside it, bounded by `max_dead_mb`.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};

use super::codec;
use crate::messaging::topic::{Kind, LogSpec};

/// How long JetStream remembers a message id to store a message sent twice once.
pub(super) const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The stream of a queue or topic.
pub(super) fn log_stream(spec: &LogSpec, replicas: usize) -> Config {
    let mut config = Config {
        name: codec::stream(&spec.name),
        subjects: vec![codec::subjects(&spec.name)],
        storage: StorageType::File,
        num_replicas: replicas,
        duplicate_window: DUPLICATE_WINDOW,
        description: Some(format!("switchyard {}", spec.what())),
        max_messages_per_subject: -1,
        ..Config::default()
    };
    match &spec.kind {
        Kind::Queue {
            max_depth,
            max_bytes,
        } => {
            config.retention = RetentionPolicy::WorkQueue;
            config.discard = DiscardPolicy::New;
            config.max_messages = i64::try_from(*max_depth).unwrap_or(i64::MAX);
            config.max_bytes = i64::try_from(*max_bytes).unwrap_or(i64::MAX);
        }
        Kind::Topic(retention) => {
            config.retention = RetentionPolicy::Limits;
            config.discard = DiscardPolicy::Old;
            config.max_bytes = i64::try_from(retention.max_bytes).unwrap_or(i64::MAX);
            config.max_age = retention.max_age.unwrap_or_default();
            if !config.max_age.is_zero() {
                // JetStream refuses a duplicate window longer than what the stream keeps.
                config.duplicate_window = config.duplicate_window.min(config.max_age);
            }
            config.max_messages = -1;
            config.max_messages_per_subject = if retention.compact { 1 } else { -1 };
        }
    }
    config
}

/// The dead-letter stream of a queue or topic: kept until redriven; past `max_dead_bytes`
/// a message that fails for good stays owed instead.
pub(super) fn dead_stream(spec: &LogSpec, replicas: usize) -> Config {
    Config {
        name: codec::dead_stream(&spec.name),
        subjects: vec![codec::dead_subjects(&spec.name)],
        storage: StorageType::File,
        num_replicas: replicas,
        duplicate_window: DUPLICATE_WINDOW,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::New,
        max_messages: -1,
        max_bytes: i64::try_from(spec.max_dead_bytes).unwrap_or(i64::MAX),
        description: Some(format!("switchyard dead letters of {}", spec.what())),
        max_messages_per_subject: -1,
        ..Config::default()
    }
}

/// What makes stream `existing` unusable as `wanted` (what JetStream cannot change in place),
/// one phrase per difference; empty when an update can make it `wanted`.
pub(super) fn incompatible(existing: &Config, wanted: &Config) -> Vec<String> {
    let mut differences = Vec::new();
    if existing.retention != wanted.retention {
        differences.push(format!(
            "retention is {:?}, switchyard needs {:?} ({})",
            existing.retention,
            wanted.retention,
            match wanted.retention {
                RetentionPolicy::WorkQueue => "a queue: messages go once acknowledged",
                _ => "a topic: messages stay for every subscription and for replay",
            }
        ));
    }
    if existing.subjects != wanted.subjects {
        differences.push(format!(
            "subjects are {:?}, switchyard needs {:?}",
            existing.subjects, wanted.subjects
        ));
    }
    if existing.storage != wanted.storage {
        differences.push(format!(
            "storage is {:?}, switchyard needs {:?} (durable)",
            existing.storage, wanted.storage
        ));
    }
    differences
}

/// Whether `existing` differs from `wanted` in what an update may change (limits, replicas).
pub(super) fn outdated(existing: &Config, wanted: &Config) -> bool {
    existing.max_messages != wanted.max_messages
        || existing.max_bytes != wanted.max_bytes
        || existing.max_age != wanted.max_age
        || existing.max_messages_per_subject != wanted.max_messages_per_subject
        || existing.discard != wanted.discard
        || existing.num_replicas != wanted.num_replicas
        || existing.duplicate_window != wanted.duplicate_window
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{QueueSpec, Retention, TopicSpec};

    fn queue() -> LogSpec {
        LogSpec::from(QueueSpec {
            name: "orders".into(),
            subscriber: "billing".into(),
            concurrency: 1,
            ordered_by_key: false,
            max_causation_depth: 32,
            max_attempts: 3,
            redeliver_after: Duration::from_millis(100),
            max_depth: 10,
            max_bytes: 1 << 20,
            max_dead_bytes: 1 << 16,
        })
    }

    fn topic(compact: bool) -> LogSpec {
        LogSpec::from(TopicSpec {
            name: "events".into(),
            retention: Retention {
                max_age: Some(Duration::from_secs(60)),
                max_bytes: 1 << 20,
                compact,
            },
            max_causation_depth: 32,
            max_dead_bytes: 1 << 16,
            subscriptions: Vec::new(),
        })
    }

    #[test]
    fn a_queue_is_a_bounded_work_queue_and_a_topic_keeps_by_its_retention() {
        let queue_stream = log_stream(&queue(), 1);
        assert_eq!(
            (
                queue_stream.name.as_str(),
                queue_stream.retention,
                queue_stream.discard
            ),
            ("sy-orders", RetentionPolicy::WorkQueue, DiscardPolicy::New)
        );
        assert_eq!(
            (queue_stream.max_messages, queue_stream.max_bytes),
            (10, 1 << 20)
        );
        let topic_stream = log_stream(&topic(false), 3);
        assert_eq!(
            (
                topic_stream.retention,
                topic_stream.max_age,
                topic_stream.max_messages_per_subject,
                topic_stream.num_replicas
            ),
            (RetentionPolicy::Limits, Duration::from_secs(60), -1, 3)
        );
        assert_eq!(log_stream(&topic(true), 1).max_messages_per_subject, 1);
        // JetStream refuses a duplicate window past the stream's max age.
        assert_eq!(topic_stream.duplicate_window, Duration::from_secs(60));
        assert_eq!(queue_stream.duplicate_window, DUPLICATE_WINDOW);
        assert_eq!(dead_stream(&queue(), 1).max_bytes, 1 << 16);
    }

    #[test]
    fn a_stream_of_another_kind_is_named_and_limits_are_updated_in_place() {
        let (queue, topic_stream) = (log_stream(&queue(), 1), log_stream(&topic(false), 1));
        let mut existing = queue.clone();
        existing.name = topic_stream.name.clone();
        existing.subjects = topic_stream.subjects.clone();
        let differences = incompatible(&existing, &topic_stream);
        assert_eq!(differences.len(), 1, "{differences:?}");
        assert!(
            differences[0].contains("retention is WorkQueue"),
            "{differences:?}"
        );
        assert!(incompatible(&topic_stream, &log_stream(&topic(true), 1)).is_empty());
        assert!(outdated(&topic_stream, &log_stream(&topic(true), 1)));
        assert!(!outdated(&topic_stream, &log_stream(&topic(false), 1)));
    }
}
