//! The real binary, killed with SIGKILL under load, round after round: every send it
//! acknowledged is delivered, after however many restarts.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{free_port, guest, send, start_binary as start};

/// `tasks` senders that POST bodies `<tag><task>-n<n>` to `path` on `http` as fast as it
/// answers `202`, noting each acknowledged body, until one is not acknowledged within 3 s.
fn senders(
    http: SocketAddr,
    path: &str,
    tag: &str,
    tasks: usize,
    acknowledged: &Arc<Mutex<BTreeSet<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..tasks)
        .map(|task| {
            let (acknowledged, path) = (acknowledged.clone(), path.to_owned());
            let tag = format!("{tag}{task}");
            tokio::spawn(async move {
                for n in 0.. {
                    let body = format!("{tag}-n{n}");
                    let reply = tokio::time::timeout(
                        Duration::from_secs(3),
                        send(http, "POST", &path, &body),
                    )
                    .await;
                    match reply {
                        Ok(reply) if reply.status == 202 => {
                            acknowledged.lock().unwrap().insert(body);
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect()
}

/// The bodies the mailroom guests logged as delivered in the node log `log` (to `service`
/// only, if given).
fn delivered(log: &std::path::Path, service: Option<&str>) -> BTreeSet<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["target"] == "guest")
        .filter(|line| service.is_none_or(|service| line["fields"]["service"] == service))
        .filter_map(|line| {
            let message = line["fields"]["message"].as_str()?.to_owned();
            Some(message.rsplit_once(": ")?.1.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn every_acknowledged_send_is_delivered_across_kill_9_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (http, admin) = (free_port(), free_port());
    let manifest = dir.path().join("switchyard.toml");
    std::fs::write(
        &manifest,
        format!(
            "[node]\nname = \"crashy\"\nhttp = \"{http}\"\nadmin = \"{admin}\"\ndata_dir = \"data\"\n\n\
             [[service]]\nname = \"mailroom\"\nversion = \"1.0.0\"\ncomponent = {:?}\n\
             routes = [\"POST /send/{{queue}}\"]\n\n\
             [[queue]]\nname = \"jobs\"\nsubscriber = \"mailroom\"\nconcurrency = 4\n",
            guest("mailroom").display().to_string()
        ),
    )
    .unwrap();
    let log = dir.path().join("node.log");
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));

    for round in 0..4 {
        let mut node = start(&manifest, &log, http).await;
        // Eight senders, as fast as the node takes them, for a while; then SIGKILL.
        let senders = senders(http, "/send/jobs", &format!("r{round}-s"), 8, &acknowledged);
        tokio::time::sleep(Duration::from_millis(700 + 200 * round)).await;
        node.start_kill().unwrap();
        node.wait().await.unwrap();
        for sender in senders {
            // A sender whose connection the kill cut panics in the helper: that send was not
            // acknowledged, which is all that matters here.
            let _ = sender.await;
        }
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 100,
        "only {} sends were acknowledged",
        acknowledged.len()
    );

    // The last start delivers whatever is still owed.
    let mut node = start(&manifest, &log, http).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let delivered = delivered(&log, None);
        let missing: Vec<&String> = acknowledged.difference(&delivered).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.into_iter().cloned().collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    node.start_kill().unwrap();
    let _ = node.wait().await;
    eprintln!(
        "{} sends acknowledged over 4 rounds ended by SIGKILL; {} never delivered",
        acknowledged.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged sends were never delivered, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
}

/// A topic's owner, the real binary, killed with SIGKILL round after round while guests on
/// another node publish to it: after the last restart every publish that was acknowledged
/// reaches both subscribing services.
#[tokio::test]
async fn every_acknowledged_publish_from_another_node_reaches_every_subscriber_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (http, admin) = (free_port(), free_port());
    let quic = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mailroom = guest("mailroom").display().to_string();
    let subscriber = |name: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nversion = \"1.0.0\"\ncomponent = {mailroom:?}\n\
             config = {{ name = \"{name}\" }}\n\n"
        )
    };
    let manifest = dir.path().join("owner.toml");
    std::fs::write(
        &manifest,
        format!(
            "[node]\nname = \"owner\"\nhttp = \"{http}\"\nadmin = \"{admin}\"\nquic = \"{quic}\"\n\
             data_dir = \"data\"\n\n{}{}\
             [[topic]]\nname = \"events\"\n\n\
             [[topic.subscription]]\nservice = \"billing\"\nstart = \"beginning\"\nconcurrency = 4\n\n\
             [[topic.subscription]]\nservice = \"shipping\"\nstart = \"beginning\"\n",
            subscriber("billing"),
            subscriber("shipping")
        ),
    )
    .unwrap();
    let log = dir.path().join("owner.log");
    // The publishers' node: its `front` guest publishes to the owner's topic over the mesh.
    let edge_manifest = crate::support::TestManifest::with_node(
        &format!("name = \"edge\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{quic}\"]"),
        &crate::support::service("front", "mailroom", &["POST /publish/{queue}"], ""),
    );
    let edge = edge_manifest.start().await;
    let edge_http = edge.http_addr();
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));

    for round in 0..3 {
        let mut owner = start(&manifest, &log, http).await;
        // The edge learns of the owner's new incarnation (and its topic) by gossip.
        let deadline = Instant::now() + Duration::from_secs(10);
        while send(
            edge_http,
            "POST",
            "/publish/events",
            &format!("probe {round}"),
        )
        .await
        .status
            != 202
        {
            assert!(
                Instant::now() < deadline,
                "the edge never reached the owner"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        acknowledged
            .lock()
            .unwrap()
            .insert(format!("probe {round}"));
        let publishers = senders(
            edge_http,
            "/publish/events",
            &format!("r{round}-p"),
            6,
            &acknowledged,
        );
        tokio::time::sleep(Duration::from_millis(800 + 200 * round)).await;
        owner.start_kill().unwrap();
        owner.wait().await.unwrap();
        for publisher in publishers {
            let _ = publisher.await;
        }
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 50,
        "only {} publishes were acknowledged",
        acknowledged.len()
    );

    // The last start delivers what each subscription still owes.
    let mut owner = start(&manifest, &log, http).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let mut missing = Vec::new();
        for service in ["billing", "shipping"] {
            let delivered = delivered(&log, Some(service));
            missing.extend(
                acknowledged
                    .difference(&delivered)
                    .map(|body| format!("{service}: {body}")),
            );
        }
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    owner.start_kill().unwrap();
    let _ = owner.wait().await;
    edge.shutdown().await;
    eprintln!(
        "{} publishes from another node acknowledged over 3 rounds ended by SIGKILL; {} \
         deliveries missing",
        acknowledged.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged publishes never reached a subscriber, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
}
