//! `[[policy]]`, `[[queue]]` and `[[bind]]`: what they name must exist.

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
        if !in_mesh && !services.iter().any(|s| s.name == subscriber) {
            let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
            return Err(check.invalid(
                queue.subscriber.span(),
                format!(
                    "queue `{name}`: its subscriber `{subscriber}` is not a service of this node"
                ),
                format!(
                    "without `node.quic` a queue is consumed on the node that declares it; name \
                     one of this manifest's services ({}), or set `quic` to let a service of \
                     another node consume it",
                    names_or_none(&known)
                ),
            ));
        }
        let at_least_one = |value: &Option<Spanned<u32>>, key: &str, default: u32| match value {
            Some(value) if *value.get_ref() == 0 => Err(check.invalid(
                value.span(),
                format!("queue `{name}`: `{key}` must be at least 1"),
                format!("leave it out for the default ({default})"),
            )),
            Some(value) => Ok(*value.get_ref()),
            None => Ok(default),
        };
        let concurrency = at_least_one(
            &queue.concurrency,
            "concurrency",
            defaults::QUEUE_CONCURRENCY,
        )?;
        let max_attempts = at_least_one(
            &queue.max_attempts,
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
        let max_dead_bytes = super::services::mebibytes(super::services::bounded(
            check,
            queue.max_dead_mb,
            defaults::QUEUE_MAX_DEAD_MB,
            1..=1_048_576,
            "max_dead_mb",
        )?);
        let max_causation_depth = super::services::bounded(
            check,
            queue.max_causation_depth,
            defaults::QUEUE_MAX_CAUSATION_DEPTH,
            1..=1024,
            "max_causation_depth",
        )? as u32;
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
        if let (Some(reserve), Some(_)) = (&bind.reserve_ms, &bind.queue) {
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
        let scope = match (bind.calls_to, bind.outgoing_from, bind.queue) {
            (Some(to), None, None) => BindScope::CallsTo(to.into_inner()),
            (None, Some(from), None) => {
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
            (None, None, Some(queue)) => {
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
                    "a [[bind]] needs exactly one of `calls_to`, `outgoing_from` or `queue`",
                    "e.g. calls_to = \"inventory\" (every call to it), outgoing_from = \
                     \"orders\" (every call it makes) or queue = \"jobs\" (its failed deliveries)",
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
