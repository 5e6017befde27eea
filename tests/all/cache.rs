//! The compiled-component cache: a second start does not recompile.

use crate::support::{TestManifest, get, service};

#[tokio::test]
async fn a_second_load_comes_from_the_cache_and_still_serves() {
    let manifest = TestManifest::new(&service("hello", "hello", &["GET /hello/{name}"], ""));
    let loaded = manifest.load();
    let first = switchyard::node::check(&loaded).unwrap();
    assert!(
        !first[0].from_cache,
        "a fresh data_dir cannot have a cached compile"
    );
    let second = switchyard::node::check(&loaded).unwrap();
    assert!(second[0].from_cache, "the second load recompiled");
    assert_eq!(first[0].hash, second[0].hash);

    // A corrupt cache entry is ignored, not trusted.
    let compiled = manifest.dir.path().join("data/compiled");
    for entry in std::fs::read_dir(&compiled).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let third = switchyard::node::check(&loaded).unwrap();
    assert!(!third[0].from_cache);

    let node = manifest.start().await;
    assert_eq!(get(node.http_addr(), "/hello/cached").await.status, 200);
    node.shutdown().await;
}
