//! Entry points for fuzzers (`fuzz/`, cargo-fuzz) and for the seeded mutation tests below,
//! which run the same checks on every `cargo test`. Each function panics only on a bug.

use std::path::Path;

use crate::manifest::{Manifest, ManifestError};
use crate::wire::frame;

/// Whatever the bytes, decoding a frame returns (never panics, never allocates from an
/// unchecked length), and a frame that decodes encodes back to one that decodes the same.
pub fn frame_decode(data: &[u8]) {
    if let Ok(decoded) = frame::decode(data)
        && let Ok(encoded) = frame::encode(&decoded)
    {
        assert_eq!(frame::decode(&encoded).ok(), Some(decoded));
    }
    if let Some(prefix) = data.first_chunk::<4>() {
        let _ = frame::declared_length(*prefix);
    }
}

/// Whatever the bytes of a queue's log file, replay returns, keeps every whole record and
/// accounts for every other byte as damage or a torn tail.
pub fn log_replay(data: &[u8]) {
    crate::messaging::check_replay(data);
}

/// Whatever the text, parsing a manifest returns, and an error points inside the file.
pub fn manifest_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/nonexistent/fuzz/switchyard.toml");
    if let Err(ManifestError::Syntax { at, .. } | ManifestError::Invalid { at, .. }) =
        Manifest::parse(text, path)
    {
        let lines = text.lines().count().max(1);
        assert!(
            at.line <= lines + 1,
            "error at line {} of {lines}: {text:?}",
            at.line
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few thousand seeded mutations (flip, insert, delete, splice) of each seed.
    fn mutate_and_check(seeds: &[Vec<u8>], check: fn(&[u8]), rounds: usize) {
        let mut rng = fastrand::Rng::with_seed(0x5317_c4a2);
        for seed in seeds {
            check(seed);
            for _ in 0..rounds {
                let mut input = seed.clone();
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(..=input.len());
                    match rng.u8(..4) {
                        0 if at < input.len() => input[at] ^= 1 << rng.u8(..8),
                        1 => input.insert(at, rng.u8(..)),
                        2 if at < input.len() => {
                            input.remove(at);
                        }
                        _ => {
                            let other = &seeds[rng.usize(..seeds.len())];
                            let from = rng.usize(..=other.len());
                            input.splice(at..at, other[from..].iter().copied().take(16));
                        }
                    }
                }
                check(&input);
            }
        }
    }

    fn frame_seeds() -> Vec<Vec<u8>> {
        use crate::wire::frame::{FailureKind, Frame, Member};
        [
            Frame::Call {
                service: "inventory".into(),
                range: Some("^1".into()),
                method: "GET /items/42".into(),
                headers: vec![("x-a".into(), "b".into())],
                body: b"hello".to_vec(),
                deadline_ms: 250,
                caller: "orders".into(),
                request_id: "abc.1".into(),
                trace_context: None,
                causation_depth: 0,
                causation_chain: Vec::new(),
            },
            Frame::Failed {
                kind: FailureKind::Remote,
                message: "x".into(),
            },
            Frame::Gossip {
                members: vec![Member {
                    node: "a".into(),
                    address: std::net::SocketAddr::from(([127, 0, 0, 1], 7000)),
                    incarnation: 9,
                    beat: 1,
                    services: vec![("hello".into(), "1.0.0".into())],
                    queues: Vec::new(),
                    ttl_ms: 2000,
                    proof: crate::wire::frame::Proof {
                        scheme: 0x0403,
                        signature: vec![7; 70],
                        chain: vec![vec![8; 300]],
                    },
                }],
            },
            Frame::Deliver {
                service: "billing".into(),
                queue: "orders".into(),
                message: crate::wire::StoredMessage {
                    seq: 3,
                    id: "orders-3".into(),
                    kind: crate::wire::MessageKind::Event,
                    key: Some("k".into()),
                    headers: vec![("x-a".into(), "b".into())],
                    reply_to: Some("inbox/a/1".into()),
                    trace_context: None,
                    body: b"paid".to_vec(),
                    sender: "shop".into(),
                    sent_at_ms: 1,
                },
                attempt: 2,
            },
            Frame::NotSent(crate::wire::SendError::Full("full".into())),
            Frame::OpenStream {
                service: "s".into(),
                range: None,
                caller: "c".into(),
                deadline_ms: 1,
            },
            Frame::Traffic {
                calls: vec![crate::telemetry::CallTraffic {
                    caller: "orders".into(),
                    callee: "billing".into(),
                    count: 12,
                    errors: 1,
                    buckets: vec![(500, 3), (1_000, 11), (u64::MAX, 12)],
                }],
            },
        ]
        .iter()
        .filter_map(|frame| frame::encode(frame).ok())
        .collect()
    }

    #[test]
    fn mutated_frames_never_panic_and_round_trip() {
        let seeds = frame_seeds();
        assert_eq!(seeds.len(), 7);
        mutate_and_check(&seeds, frame_decode, 5_000);
    }

    #[test]
    fn mutated_queue_logs_replay_every_whole_record_and_never_panic() {
        let log = crate::messaging::sample_log();
        let seeds = vec![log.clone(), log[..log.len() / 2].to_vec(), Vec::new()];
        mutate_and_check(&seeds, log_replay, 5_000);
    }

    #[test]
    fn mutated_manifests_never_panic_and_errors_point_inside() {
        let seeds: Vec<Vec<u8>> = [
            "[node]\nname = \"a\"\nhttp = \"127.0.0.1:0\"\nquic = \"127.0.0.1:7000\"\nseeds = [\"127.0.0.1:7001\"]\n",
            "[[service]]\nname = \"hello\"\nversion = \"1.0.0\"\ncomponent = \"x.wasm\"\nroutes = [\"GET /a/{b}\"]\ntimeout_ms = 5\n",
            "[balance.x]\nstrategy = \"peak-ewma\"\n[node]\ndiscovery = { backend = \"etcd\", endpoints = [\"http://a:1\"] }\n",
        ]
        .iter()
        .map(|text| text.as_bytes().to_vec())
        .collect();
        mutate_and_check(&seeds, manifest_parse, 2_000);
    }
}
