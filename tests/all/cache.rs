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

    // The cache is the node user's only.
    use std::os::unix::fs::PermissionsExt;
    let compiled = manifest.dir.path().join("data/compiled");
    let mode = std::fs::metadata(&compiled).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);

    // One flipped bit in the native code (wasmtime's own header checks would not see it) is
    // found by the checksum before anything is deserialized: recompiled, not trusted.
    for entry in std::fs::read_dir(&compiled).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
    }
    let third = switchyard::node::check(&loaded).unwrap();
    assert!(!third[0].from_cache, "a damaged compile was loaded");
    let fourth = switchyard::node::check(&loaded).unwrap();
    assert!(
        fourth[0].from_cache,
        "the recompiled component was not cached again"
    );
    // Garbage too.
    for entry in std::fs::read_dir(&compiled).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let fifth = switchyard::node::check(&loaded).unwrap();
    assert!(!fifth[0].from_cache);

    let node = manifest.start().await;
    assert_eq!(get(node.http_addr(), "/hello/cached").await.status, 200);
    node.shutdown().await;
}
