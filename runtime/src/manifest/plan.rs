//! What an edit of a running node's manifest asks for, decided without touching the node.
//!
//! [`plan`] compares two checked manifests. It takes every field of [`Manifest`] and
//! [`NodeSpec`] apart by name, so a new manifest key does not compile until it is classified
//! here: applied by the running node (and by which step of the reload), or reported as needing
//! a restart. Nothing an operator edits is silently ignored.

use super::{Manifest, NodeSpec, PolicySpec, ServiceSpec};

/// The parts of a manifest edit, as the reload applies them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `[[service]]` entries differ (added, removed, routes, components, limits, config,
    /// env, version): the services step compares them one by one.
    pub services: bool,
    /// `[[queue]]` or `[[topic]]` entries differ: the broker applies them.
    pub queues: bool,
    /// `[[policy]]` or `[[bind]]` entries differ: policies are swapped, reconfigured, rebound.
    pub policies: bool,
    /// `[balance.*]` differs: calls from then on pick instances by the new strategies.
    pub balance: bool,
    /// Edits a running node cannot apply, each naming its key: logged as needing a restart.
    pub needs_restart: Vec<String>,
}

/// Classifies every difference between `old` and `new` (see the module docs).
pub fn plan(old: &Manifest, new: &Manifest) -> Plan {
    let Manifest {
        // Where it was read from: the same file, or the watcher would not be reloading it.
        path: _,
        node,
        services,
        balance,
        policies,
        bindings,
        queues,
        topics,
        messaging,
        telemetry,
    } = new;
    let mut needs_restart = node_restarts(&old.node, node);
    if old.telemetry != *telemetry {
        needs_restart.push(
            "`telemetry` changed (metrics and request logs are set up at start): restart the \
             node to apply it"
                .to_owned(),
        );
    }
    if old.messaging != *messaging {
        needs_restart.push(
            "`messaging` changed (the messaging backend is chosen at start): restart the node to \
             apply it"
                .to_owned(),
        );
    }
    Plan {
        services: old.services.len() != services.len()
            || old
                .services
                .iter()
                .zip(services)
                .any(|(a, b)| service_changed(a, b)),
        queues: old.queues != *queues || old.topics != *topics,
        policies: old.bindings != *bindings
            || old.policies.len() != policies.len()
            || old
                .policies
                .iter()
                .zip(policies)
                .any(|(a, b)| policy_changed(a, b)),
        balance: old.balance != *balance,
        needs_restart,
    }
}

/// Whether a `[[service]]` entry differs in anything but where it is written.
fn service_changed(old: &ServiceSpec, new: &ServiceSpec) -> bool {
    let ServiceSpec {
        name,
        version,
        component,
        // Where the entry is written: moving it in the file changes nothing.
        component_at: _,
        routes,
        max_instances,
        requests_per_instance,
        timeout,
        memory_limit_bytes,
        max_pending_calls,
        max_open_streams,
        state_max_bytes,
        may_call,
        accepts_from,
        outbound,
        config,
        env,
    } = new;
    old.name != *name
        || old.version != *version
        || old.component != *component
        || old
            .routes
            .iter()
            .map(|r| (&r.method, &r.pattern))
            .ne(routes.iter().map(|r| (&r.method, &r.pattern)))
        || old.max_instances != *max_instances
        || old.requests_per_instance != *requests_per_instance
        || old.timeout != *timeout
        || old.memory_limit_bytes != *memory_limit_bytes
        || old.max_pending_calls != *max_pending_calls
        || old.max_open_streams != *max_open_streams
        || old.state_max_bytes != *state_max_bytes
        || old.may_call != *may_call
        || old.accepts_from != *accepts_from
        || old.outbound != *outbound
        || old.config != *config
        || old.env != *env
}

/// Whether a `[[policy]]` entry differs in anything but where it is written.
fn policy_changed(old: &PolicySpec, new: &PolicySpec) -> bool {
    let PolicySpec {
        name,
        component,
        component_at: _,
        config,
    } = new;
    old.name != *name || old.component != *component || old.config != *config
}

/// The `[node]` keys that changed; none of them can change under a running node.
fn node_restarts(old: &NodeSpec, new: &NodeSpec) -> Vec<String> {
    let NodeSpec {
        name,
        http,
        admin,
        admin_token_file,
        ingress,
        http_tls,
        pool,
        data_dir,
        quic,
        advertise,
        seeds,
        tls,
        discovery,
    } = new;
    let changes = [
        (
            "node.name",
            old.name != *name,
            "peers and logs know the node by it",
        ),
        (
            "node.http",
            old.http != *http,
            "the ingress listener is bound at start",
        ),
        (
            "node.admin",
            old.admin != *admin,
            "the admin listener is bound at start",
        ),
        (
            "node.admin_token_file",
            old.admin_token_file != *admin_token_file,
            "the admin API reads its token from the file named at start",
        ),
        (
            "node.max_connections, idle_timeout_ms, body_budget_mb or an HTTP/2 limit",
            old.ingress != *ingress,
            "the ingress is built with them at start",
        ),
        (
            "node.http_tls",
            old.http_tls != *http_tls,
            "the ingress's TLS is set up at start (changed contents of its files are reloaded \
             while it runs)",
        ),
        (
            "node.max_instances or max_memory_mb",
            old.pool != *pool,
            "the engine's instance pool is sized for them at start",
        ),
        (
            "node.data_dir",
            old.data_dir != *data_dir,
            "queues and the component cache hold files open there",
        ),
        (
            "node.quic",
            old.quic != *quic,
            "the QUIC endpoint is bound at start",
        ),
        (
            "node.advertise",
            old.advertise != *advertise,
            "peers were told the old address",
        ),
        (
            "node.seeds",
            old.seeds != *seeds,
            "gossip starts from them once",
        ),
        (
            "node.tls",
            old.tls != *tls,
            "the QUIC endpoint's certificates are loaded at start",
        ),
        (
            "node.discovery",
            old.discovery != *discovery,
            "the discovery backend is chosen at start",
        ),
    ];
    changes
        .into_iter()
        .filter(|(_, changed, _)| *changed)
        .map(|(key, _, why)| format!("`{key}` changed ({why}): restart the node to apply it"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A manifest with `node_extra` in `[node]` and `rest` after its one service.
    fn manifest(node_extra: &str, rest: &str) -> Manifest {
        // One directory for all: paths (data_dir, components) resolve the same in each.
        let dir: PathBuf =
            std::env::temp_dir().join(format!("switchyard-plan-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        for file in ["svc.wasm", "ca.pem", "n.pem", "n.key"] {
            std::fs::write(dir.join(file), b"").ok();
        }
        let text = format!(
            r#"
[node]
http = "127.0.0.1:8080"
admin = "127.0.0.1:9090"
quic = "127.0.0.1:7000"
{node_extra}

[[service]]
name = "hello"
version = "1.0.0"
component = "svc.wasm"
routes = ["GET /hello/{{name}}"]
{rest}
"#
        );
        Manifest::parse(&text, &dir.join("switchyard.toml"))
            .unwrap_or_else(|err| panic!("{err}\n{text}"))
    }

    #[test]
    fn an_unchanged_manifest_plans_nothing() {
        let base = manifest("", "");
        assert_eq!(plan(&base, &manifest("", "")), Plan::default());
    }

    #[test]
    fn every_node_key_that_cannot_change_live_asks_for_a_restart_by_name() {
        let base = manifest("", "");
        for (edit, key) in [
            (r#"name = "edge-2""#, "node.name"),
            (r#"data_dir = "elsewhere""#, "node.data_dir"),
            (r#"seeds = ["127.0.0.1:7001"]"#, "node.seeds"),
            (r#"advertise = "127.0.0.2:0""#, "node.advertise"),
            (
                r#"tls = { ca = "ca.pem", cert = "n.pem", key = "n.key" }"#,
                "node.tls",
            ),
            (
                r#"discovery = { backend = "etcd", endpoints = ["http://127.0.0.1:2379"] }"#,
                "node.discovery",
            ),
        ] {
            let planned = plan(&base, &manifest(edit, ""));
            assert_eq!(planned.needs_restart.len(), 1, "{edit}: {planned:?}");
            assert!(
                planned.needs_restart[0].starts_with(&format!("`{key}` changed")),
                "{edit}: {planned:?}"
            );
            assert!(!planned.services && !planned.balance, "{edit}: {planned:?}");
        }
        let moved = manifest("", "").clone();
        let mut other = moved.clone();
        other.node.http = "127.0.0.1:8081".parse().unwrap_or(other.node.http);
        other.node.admin = "127.0.0.1:9091".parse().unwrap_or(other.node.admin);
        other.node.quic = "127.0.0.1:7002".parse().ok();
        let keys: Vec<_> = plan(&moved, &other)
            .needs_restart
            .iter()
            .map(|line| line.split('`').nth(1).unwrap_or_default().to_owned())
            .collect();
        assert_eq!(keys, ["node.http", "node.admin", "node.quic"]);
    }

    #[test]
    fn balance_queues_policies_and_services_are_applied_not_restarted() {
        let base = manifest("", "");
        let balanced = plan(
            &base,
            &manifest("", "[balance.hello]\nstrategy = \"peak-ewma\"\n"),
        );
        assert!(
            balanced.balance && balanced.needs_restart.is_empty(),
            "{balanced:?}"
        );
        let configured = plan(&base, &manifest("", "config = { greeting = \"Hi\" }\n"));
        assert!(configured.services && !configured.balance, "{configured:?}");
        let queued = plan(
            &base,
            &manifest("", "\n[[queue]]\nname = \"q\"\nsubscriber = \"hello\"\n"),
        );
        assert!(queued.queues && !queued.services, "{queued:?}");
        let reserved = "\n[[bind]]\ncalls_to = \"inventory\"\nreserve_ms = ";
        let before = manifest("", &format!("{reserved}50\n"));
        let after = plan(&before, &manifest("", &format!("{reserved}80\n")));
        assert!(
            after.policies && after.needs_restart.is_empty(),
            "{after:?}"
        );
    }
}
