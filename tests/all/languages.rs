//! Python and JavaScript guests of the `switchyard:runtime/service` world: scaffolded by
//! `switchyard new --lang python|js`, built by `switchyard build` (componentize-py from PyPI,
//! ComponentizeJS from npm, pinned and installed into Switchyard's home on first use), served
//! by one node: HTTP routes, rpc calls from one language to the other, queue consumers that
//! keep what they consumed in the service's state, and an instance pool sized for them.

use std::path::Path;

use crate::support::{TestManifest, admin_post, get, send, service, switchyard_in_home};

/// The scaffold's `[[service]]` and `[[queue]]` sections, with the component's absolute path.
fn scaffolded_sections(project: &Path) -> String {
    let text = std::fs::read_to_string(project.join("switchyard.toml")).unwrap();
    let start = text
        .find("[[service]]")
        .expect("the scaffold declares its service");
    text[start..].replace(
        "component = \"build/",
        &format!("component = \"{}/build/", project.display()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_guests_serve_call_each_other_and_consume() {
    let projects = tempfile::tempdir().unwrap();
    let root = projects.path().to_path_buf();
    let components = tokio::task::spawn_blocking(move || {
        for (name, lang) in [("py-notes", "python"), ("js-notes", "js")] {
            switchyard_in_home(&[
                "new".as_ref(),
                name.as_ref(),
                "--lang".as_ref(),
                lang.as_ref(),
                "--dir".as_ref(),
                root.as_os_str(),
            ]);
        }
        // The two builds use both cores; each tool is pinned and installed on first use.
        let builds: Vec<_> = ["py-notes", "js-notes"]
            .map(|name| {
                let dir = root.join(name);
                std::thread::spawn(move || {
                    switchyard_in_home(&["build".as_ref(), dir.as_os_str()]);
                    dir.join(format!("build/{name}.wasm"))
                })
            })
            .into_iter()
            .collect();
        builds
            .into_iter()
            .map(|build| build.join().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(components.iter().all(|component| component.is_file()));

    let manifest = TestManifest::new(&format!(
        "{}\n{}",
        scaffolded_sections(&projects.path().join("py-notes")),
        scaffolded_sections(&projects.path().join("js-notes")),
    ));
    // Python's component needs more core instances than the pool's default slot (8): the
    // node sizes its slots from the components it serves, so these instantiate.
    let node = manifest.start().await;
    let addr = node.http_addr();

    for name in ["py-notes", "js-notes"] {
        let hello = get(addr, &format!("/{name}/hello/ada")).await;
        assert_eq!((hello.status, hello.body.as_str()), (200, "Hello, ada!\n"));
    }
    // rpc from Python to JavaScript and back.
    let asked = get(addr, "/py-notes/ask/js-notes/bo").await;
    assert_eq!(
        (asked.status, asked.body.as_str()),
        (200, "js-notes says: Hello, bo!\n")
    );
    let asked = get(addr, "/js-notes/ask/py-notes/cy").await;
    assert_eq!(
        (asked.status, asked.body.as_str()),
        (200, "py-notes says: Hello, cy!\n")
    );
    let nobody = get(addr, "/js-notes/ask/nobody/x").await;
    assert_eq!(nobody.status, 502, "{}", nobody.body);
    assert!(
        nobody.body.contains("nobody did not answer: unavailable"),
        "{}",
        nobody.body
    );

    // Each consumes its queue and keeps the last note in its own state.
    for name in ["py-notes", "js-notes"] {
        assert_eq!(get(addr, &format!("/{name}/notes")).await.status, 404);
        let note = format!("a note for {name}");
        let queued = send(addr, "POST", &format!("/{name}/notes"), &note).await;
        assert_eq!(queued.status, 202, "{}", queued.body);
        assert!(
            queued.body.starts_with(&format!("queued {name}-notes-")),
            "{}",
            queued.body
        );
        let stored = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            loop {
                let reply = get(addr, &format!("/{name}/notes")).await;
                if reply.status == 200 {
                    return reply.body;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name} never consumed its note"));
        assert_eq!(stored, format!("{note}\n"));
    }
    node.shutdown().await;

    // A node sized for Rust guests only refuses the Python component at load, with numbers.
    let rust_only = TestManifest::new(&service("hello", "hello", &["GET /hello/{name}"], ""));
    let node = rust_only.start().await;
    let python = std::fs::read(&components[0]).unwrap();
    let (status, reason) = admin_post(&node, "/services/hello", python).await;
    assert_eq!(status, 422, "{reason}");
    assert!(
        reason.contains("core instances") && reason.contains("sized at start for 8"),
        "{reason}"
    );
    assert_eq!(get(node.http_addr(), "/hello/still").await.status, 200);
    node.shutdown().await;
}
