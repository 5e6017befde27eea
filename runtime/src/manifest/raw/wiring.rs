//! `[[policy]]`, `[[queue]]`, `[[topic]]` and `[[bind]]`: what they name must exist.

use std::time::Duration;

use toml::Spanned;

use super::*;

pub(super) fn check_queues(
    check: &Checker<'_>,
    raw: Vec<RawQueue>,
    services: &[ServiceSpec],
    in_mesh: bool,
) -> Result<Vec<QueueSpec>, ManifestError> {
    let mut queues: Vec<QueueSpec> = Vec::with_capacity(raw.len());
    for queue in raw {
        check_name(check, &queue.name, "queue")?;
        let name = queue.name.get_ref().clone();
        if queues.iter().any(|q| q.name == name) {
            return Err(check.invalid(
                queue.name.span(),
                format!("queue `{name}` is declared twice"),
                "give each [[queue]] its own name",
            ));
        }
        let subscriber = queue.subscriber.get_ref().clone();
        // In a mesh the subscriber may run on any node; its name must still be a name.
        check_name(check, &queue.subscriber, "subscriber")?;
        if !in_mesh {
            let reads = ("queue", "consumed", "consume it");
            subscriber_runs_here(check, &queue.subscriber, &name, services, reads)?;
        }
        let what = format!("queue `{name}`");
        let concurrency = at_least_one(
            check,
            &queue.concurrency,
            &what,
            "concurrency",
            defaults::QUEUE_CONCURRENCY,
        )?;
        let max_attempts = at_least_one(
            check,
            &queue.max_attempts,
            &what,
            "max_attempts",
            defaults::QUEUE_MAX_ATTEMPTS,
        )?;
        let max_depth = match queue.max_depth {
            Some(depth) if *depth.get_ref() == 0 => {
                return Err(check.invalid(
                    depth.span(),
                    format!("queue `{name}`: `max_depth` must be at least 1"),
                    format!(
                        "leave it out for the default ({})",
                        defaults::QUEUE_MAX_DEPTH
                    ),
                ));
            }
            Some(depth) => depth.into_inner(),
            None => defaults::QUEUE_MAX_DEPTH,
        };
        let max_bytes = super::services::mebibytes(super::services::bounded(
            check,
            queue.max_bytes_mb,
            defaults::QUEUE_MAX_BYTES_MB,
            1..=1_048_576,
            "max_bytes_mb",
        )?);
        let (max_dead_bytes, max_causation_depth) =
            dead_and_loop_limits(check, queue.max_dead_mb, queue.max_causation_depth)?;
        queues.push(QueueSpec {
            name,
            subscriber,
            concurrency,
            ordered_by_key: queue.ordered_by_key,
            max_causation_depth,
            max_attempts,
            redeliver_after: Duration::from_millis(
                queue.redeliver_ms.unwrap_or(defaults::QUEUE_REDELIVER_MS),
            ),
            max_depth,
            max_bytes,
            max_dead_bytes,
        });
    }
    Ok(queues)
}

/// `value` of `key` (of `what`, e.g. "queue `jobs`"), which must be at least 1; `default`
/// when it is left out.
fn at_least_one(
    check: &Checker<'_>,
    value: &Option<Spanned<u32>>,
    what: &str,
    key: &str,
    default: u32,
) -> Result<u32, ManifestError> {
    match value {
        Some(value) if *value.get_ref() == 0 => Err(check.invalid(
            value.span(),
            format!("{what}: `{key}` must be at least 1"),
            format!("leave it out for the default ({default})"),
        )),
        Some(value) => Ok(*value.get_ref()),
        None => Ok(default),
    }
}

/// Without `node.quic` a queue's or topic's subscriber must be a service of this node.
/// `(kind, how, verb)` word the hint: ("queue", "consumed", "consume it").
fn subscriber_runs_here(
    check: &Checker<'_>,
    subscriber: &Spanned<String>,
    log: &str,
    services: &[ServiceSpec],
    (kind, how, verb): (&str, &str, &str),
) -> Result<(), ManifestError> {
    let name = subscriber.get_ref();
    if services.iter().any(|s| &s.name == name) {
        return Ok(());
    }
    let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    Err(check.invalid(
        subscriber.span(),
        format!("{kind} `{log}`: its subscriber `{name}` is not a service of this node"),
        format!(
            "without `node.quic` (or [messaging] on NATS) a {kind} is {how} on the node that \
             declares it; name one of this manifest's services ({}), or set `quic` to let a \
             service of another node {verb}",
            names_or_none(&known)
        ),
    ))
}

/// `max_dead_mb` (as bytes) and `max_causation_depth`, which queues and topics share.
fn dead_and_loop_limits(
    check: &Checker<'_>,
    max_dead_mb: Option<Spanned<u64>>,
    max_causation_depth: Option<Spanned<u64>>,
) -> Result<(usize, u32), ManifestError> {
    let max_dead_bytes = super::services::mebibytes(super::services::bounded(
        check,
        max_dead_mb,
        defaults::QUEUE_MAX_DEAD_MB,
        1..=1_048_576,
        "max_dead_mb",
    )?);
    let max_causation_depth = super::services::bounded(
        check,
        max_causation_depth,
        defaults::QUEUE_MAX_CAUSATION_DEPTH,
        1..=1024,
        "max_causation_depth",
    )? as u32;
    Ok((max_dead_bytes, max_causation_depth))
}

pub(super) fn check_topics(
    check: &Checker<'_>,
    raw: Vec<RawTopic>,
    services: &[ServiceSpec],
    queues: &[QueueSpec],
    in_mesh: bool,
) -> Result<Vec<TopicSpec>, ManifestError> {
    let mut topics: Vec<TopicSpec> = Vec::with_capacity(raw.len());
    for topic in raw {
        check_name(check, &topic.name, "topic")?;
        let name = topic.name.get_ref().clone();
        if topics.iter().any(|t| t.name == name) {
            return Err(check.invalid(
                topic.name.span(),
                format!("topic `{name}` is declared twice"),
                "give each [[topic]] its own name",
            ));
        }
        if queues.iter().any(|q| q.name == name) {
            return Err(check.invalid(
                topic.name.span(),
                format!("`{name}` is declared as a [[queue]] and as a [[topic]]"),
                "queues and topics share one namespace (a queue is a topic with one \
                 subscription); rename one of them",
            ));
        }
        let max_age = match topic.retain_ms {
            Some(ms) if *ms.get_ref() == 0 => {
                return Err(check.invalid(
                    ms.span(),
                    format!("topic `{name}`: `retain_ms` must be at least 1"),
                    "leave it out to keep messages for as long as `retain_mb` allows",
                ));
            }
            Some(ms) => Some(Duration::from_millis(ms.into_inner())),
            None => None,
        };
        let max_bytes = super::services::mebibytes(super::services::bounded(
            check,
            topic.retain_mb,
            defaults::TOPIC_RETAIN_MB,
            1..=65_536,
            "retain_mb",
        )?);
        let (max_dead_bytes, max_causation_depth) =
            dead_and_loop_limits(check, topic.max_dead_mb, topic.max_causation_depth)?;
        let mut subscriptions: Vec<SubscriptionSpec> = Vec::new();
        for subscription in topic.subscription {
            check_name(check, &subscription.service, "subscriber")?;
            let service = subscription.service.get_ref().clone();
            if subscriptions.iter().any(|s| s.service == service) {
                return Err(check.invalid(
                    subscription.service.span(),
                    format!("topic `{name}`: service `{service}` subscribes twice"),
                    "a service subscribes once; its instances share the messages",
                ));
            }
            if !in_mesh {
                let reads = ("topic", "read", "subscribe");
                subscriber_runs_here(check, &subscription.service, &name, services, reads)?;
            }
            let start = match &subscription.start {
                None => StartAt::Latest,
                Some(value) => {
                    let parsed = match value.get_ref() {
                        toml::Value::Integer(offset) => {
                            u64::try_from(*offset).ok().map(StartAt::Offset)
                        }
                        toml::Value::String(text) => StartAt::parse(text),
                        toml::Value::Datetime(at) => StartAt::parse(&at.to_string()),
                        _ => None,
                    };
                    parsed.ok_or_else(|| {
                        check.invalid(
                            value.span(),
                            format!(
                                "topic `{name}`: subscription `{service}` has `start` = {}, \
                                 which is not a place in a topic",
                                value.get_ref()
                            ),
                            "use \"latest\" (the default), \"beginning\", an offset (e.g. 42) \
                             or an RFC 3339 time (e.g. \"2026-11-26T08:00:00Z\")",
                        )
                    })?
                }
            };
            let what = format!("topic `{name}`, subscription `{service}`");
            subscriptions.push(SubscriptionSpec {
                concurrency: at_least_one(
                    check,
                    &subscription.concurrency,
                    &what,
                    "concurrency",
                    defaults::QUEUE_CONCURRENCY,
                )?,
                max_attempts: at_least_one(
                    check,
                    &subscription.max_attempts,
                    &what,
                    "max_attempts",
                    defaults::QUEUE_MAX_ATTEMPTS,
                )?,
                service,
                start,
                ordered_by_key: subscription.ordered_by_key,
                redeliver_after: Duration::from_millis(
                    subscription
                        .redeliver_ms
                        .unwrap_or(defaults::QUEUE_REDELIVER_MS),
                ),
            });
        }
        topics.push(TopicSpec {
            name,
            retention: Retention {
                max_age,
                max_bytes,
                compact: topic.compact,
            },
            max_causation_depth,
            max_dead_bytes,
            subscriptions,
        });
    }
    Ok(topics)
}

pub(super) fn check_policies(
    check: &Checker<'_>,
    raw: Vec<RawPolicy>,
) -> Result<Vec<PolicySpec>, ManifestError> {
    let mut policies: Vec<PolicySpec> = Vec::with_capacity(raw.len());
    for policy in raw {
        check_name(check, &policy.name, "policy")?;
        let name = policy.name.get_ref().clone();
        if policies.iter().any(|p| p.name == name) {
            return Err(check.invalid(
                policy.name.span(),
                format!("policy `{name}` is declared twice"),
                "give each [[policy]] its own name",
            ));
        }
        let component = check.component(&policy.component, &format!("policy `{name}`"))?;
        policies.push(PolicySpec {
            name,
            component_at: check.at(policy.component.span()),
            component,
            config: policy.config,
        });
    }
    Ok(policies)
}

pub(super) fn check_bindings(
    check: &Checker<'_>,
    raw: Vec<Spanned<RawBind>>,
    policies: &[PolicySpec],
    services: &[ServiceSpec],
    queues: &[QueueSpec],
    topics: &[TopicSpec],
) -> Result<Vec<BindSpec>, ManifestError> {
    let mut bindings = Vec::with_capacity(raw.len());
    for bind in raw {
        let span = bind.span();
        let bind = bind.into_inner();
        if bind.policies.is_empty() && bind.reserve_ms.is_none() {
            return Err(check.invalid(
                span,
                "[[bind]] lists no policies",
                "write e.g. policies = [\"retry\", \"breaker\"] (applied in that order), or \
                 set only reserve_ms",
            ));
        }
        if let (Some(reserve), Some(_)) = (
            &bind.reserve_ms,
            bind.queue.as_ref().or(bind.topic.as_ref()),
        ) {
            return Err(check.invalid(
                reserve.span(),
                "`reserve_ms` is the time a caller keeps for itself; a queue's deliveries have no \
                 caller",
                "remove it, or put it in a [[bind]] with calls_to or outgoing_from",
            ));
        }
        for name in &bind.policies {
            if !policies.iter().any(|p| &p.name == name.get_ref()) {
                let known: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
                return Err(check.invalid(
                    name.span(),
                    format!("no [[policy]] is named `{}`", name.get_ref()),
                    format!("declared policies: {}", names_or_none(&known)),
                ));
            }
        }
        let scope = match (bind.calls_to, bind.outgoing_from, bind.queue, bind.topic) {
            (Some(to), None, None, None) => BindScope::CallsTo(to.into_inner()),
            (None, Some(from), None, None) => {
                if !services.iter().any(|s| &s.name == from.get_ref()) {
                    return Err(check.invalid(
                        from.span(),
                        format!(
                            "`outgoing_from` names `{}`, which this node does not run",
                            from.get_ref()
                        ),
                        "name a [[service]] of this manifest",
                    ));
                }
                BindScope::OutgoingFrom(from.into_inner())
            }
            (None, None, None, Some(topic)) => {
                if !topics.iter().any(|t| &t.name == topic.get_ref()) {
                    let known: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
                    return Err(check.invalid(
                        topic.span(),
                        format!(
                            "`topic` names `{}`, which this node does not declare",
                            topic.get_ref()
                        ),
                        format!(
                            "declare it with [[topic]] (declared: {})",
                            names_or_none(&known)
                        ),
                    ));
                }
                BindScope::Topic(topic.into_inner())
            }
            (None, None, Some(queue), None) => {
                if !queues.iter().any(|q| &q.name == queue.get_ref()) {
                    let known: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
                    return Err(check.invalid(
                        queue.span(),
                        format!(
                            "`queue` names `{}`, which this node does not declare",
                            queue.get_ref()
                        ),
                        format!(
                            "declare it with [[queue]] (declared: {})",
                            names_or_none(&known)
                        ),
                    ));
                }
                BindScope::Queue(queue.into_inner())
            }
            _ => {
                return Err(check.invalid(
                    span,
                    "a [[bind]] needs exactly one of `calls_to`, `outgoing_from`, `queue` or `topic`",
                    "e.g. calls_to = \"inventory\" (every call to it), outgoing_from = \
                     \"orders\" (every call it makes), queue = \"jobs\" or topic = \"events\" \
                     (its failed deliveries)",
                ));
            }
        };
        bindings.push(BindSpec {
            policies: bind.policies.into_iter().map(Spanned::into_inner).collect(),
            scope,
            reserve: bind
                .reserve_ms
                .map(|ms| Duration::from_millis(ms.into_inner())),
        });
    }
    Ok(bindings)
}
