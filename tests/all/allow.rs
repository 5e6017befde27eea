//! `may_call` and `accepts_from`: which services a service may call, and whose calls (and
//! HTTP clients, `@ingress`) it takes.

use crate::support::{TestManifest, get, send, service};

const ROUTES: &[&str] = &["* /f/{fault}"];

#[tokio::test]
async fn allow_lists_refuse_calls_and_clients_they_do_not_name() {
    let manifest = TestManifest::new(&format!(
        "{}{}{}{}",
        service("caller", "faulty", ROUTES, "may_call = [\"hello\"]"),
        service("stranger", "faulty", &["* /s/{fault}"], ""),
        service(
            "hello",
            "hello",
            &["GET /hello/{name}"],
            "accepts_from = [\"caller\"]"
        ),
        service(
            "open",
            "hello",
            &["GET /open/{name}"],
            "accepts_from = [\"caller\", \"@ingress\"]"
        ),
    ));
    let node = manifest.start().await;
    let addr = node.http_addr();

    let reply = send(addr, "POST", "/f/call", "hello\nGET /hello/x").await;
    assert_eq!(reply.status, 200, "a listed call: {}", reply.body);

    // Not in the caller's may_call: refused before it is made.
    let reply = send(addr, "POST", "/f/call", "open\nGET /open/x").await;
    assert_ne!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.contains("may not call `open`") && reply.body.contains("may_call lists hello"),
        "{}",
        reply.body
    );

    // Not in the callee's accepts_from.
    let reply = send(addr, "POST", "/s/call", "hello\nGET /hello/x").await;
    assert_ne!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.contains("does not take calls from `stranger`")
            && reply.body.contains("accepts_from lists: caller"),
        "{}",
        reply.body
    );

    // HTTP clients only where `@ingress` is listed.
    let reply = get(addr, "/hello/x").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.contains("@ingress"), "{}", reply.body);
    assert_eq!(get(addr, "/open/x").await.status, 200);
    node.shutdown().await;
}
