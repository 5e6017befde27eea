//! Request logs: one structured line per request, call and delivery (target
//! `switchyard::requests`), sampled, with a per-service switch.

use std::time::Duration;

use crate::support::{TestManifest, capture_logs, count, logs, send_with, service, wait_for_entry};

/// The request-log lines of trace `trace_id`, as JSON.
fn lines_of(trace_id: &str) -> Vec<serde_json::Value> {
    logs()
        .lines()
        .filter(|line| line.contains("\"target\":\"switchyard::requests\""))
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["trace_id"] == trace_id)
        .collect()
}

#[tokio::test]
async fn a_request_its_call_and_the_delivery_it_caused_get_one_line_each() {
    capture_logs();
    let manifest = TestManifest::new(&format!(
        "{}{}{}[[queue]]\nname = \"logged\"\nsubscriber = \"mailroom\"\n\
         [telemetry]\nrequest_log = 1\nrequest_log_off = [\"hello\"]\n",
        service("faulty", "faulty", &["POST /f/{fault}"], ""),
        service("mailroom", "mailroom", &["POST /send/{queue}"], ""),
        service("hello", "hello", &["GET /hello/{name}"], ""),
    ));
    let node = manifest.start().await;
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4736";
    let reply = send_with(
        node.http_addr(),
        "POST",
        "/f/call",
        "mailroom\nPOST /send/logged\n2000\nok",
        &[("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01"))],
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let quiet_trace = "6bf92f3577b34da6a3ce929d0e0e4736";
    let quiet = send_with(
        node.http_addr(),
        "GET",
        "/hello/quiet",
        "",
        &[(
            "traceparent",
            &format!("00-{quiet_trace}-00f067aa0ba902b7-01"),
        )],
    )
    .await;
    assert_eq!(quiet.status, 200);
    wait_for_entry(
        &node,
        "/queues",
        "logged",
        Duration::from_secs(10),
        |queue| count(queue, "delivered") >= 1,
    )
    .await;
    node.shutdown().await;

    let lines = lines_of(trace_id);
    let of_kind = |kind: &str| {
        let found: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|line| line["fields"]["kind"] == kind)
            .collect();
        assert_eq!(found.len(), 1, "one {kind} line: {lines:#?}");
        found[0]["fields"].clone()
    };
    let request = of_kind("request");
    assert_eq!(request["service"], "faulty");
    assert_eq!(request["route"], "/f/{fault}");
    assert_eq!(request["status"], 202);
    assert!(request["duration_us"].as_u64().is_some(), "{request}");
    let call = of_kind("call");
    assert_eq!(
        (&call["caller"], &call["callee"]),
        (&"faulty".into(), &"mailroom".into())
    );
    assert_eq!(
        (&call["outcome"], &call["status"]),
        (&"ok".into(), &202.into())
    );
    let delivery = of_kind("delivery");
    assert_eq!(delivery["service"], "mailroom");
    assert_eq!(delivery["queue"], "logged");
    assert_eq!(delivery["outcome"], "acked");
    assert_eq!(delivery["id"], reply.body.trim());
    assert!(
        lines_of(quiet_trace).is_empty(),
        "hello is in request_log_off: {:#?}",
        lines_of(quiet_trace)
    );
}
