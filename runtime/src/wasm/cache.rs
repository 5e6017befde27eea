//! Compiled components on disk, so a second start does not recompile.
//!
//! Files are named by the SHA-256 of the component bytes plus a hash of everything that makes
//! wasmtime's output incompatible (version, compiler settings, target), so a new wasmtime or
//! another configuration simply misses. Writes go to a temporary file renamed into place, so a
//! crash never leaves a half-written artifact under a valid name.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;

pub(super) struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
}

impl ComponentCache {
    pub(super) fn open(dir: &Path, engine: &wasmtime::Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn path_for(&self, content_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{content_hash}-{}.cwasm", self.engine_key))
    }

    /// The cached compilation of the component whose bytes hash to `content_hash`, if any.
    pub(super) fn get(&self, engine: &wasmtime::Engine, content_hash: &str) -> Option<Component> {
        let path = self.path_for(content_hash);
        // Read into memory rather than `deserialize_file`, which maps the file: a mapping
        // dies with SIGBUS if someone truncates the file while the node runs.
        let bytes = std::fs::read(&path).ok()?;
        // SAFETY: wasmtime requires bytes produced by `Component::serialize` of a compatible
        // engine. The node writes these files itself (rename-on-complete) into its own
        // data_dir, keyed by the engine's compatibility hash, and wasmtime still checks the
        // header, version and configuration. Anyone who can write the data_dir can already
        // replace the node's components, so this trusts nothing new.
        #[allow(unsafe_code, reason = "see SAFETY above")]
        let loaded = unsafe { Component::deserialize(engine, &bytes) };
        match loaded {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "ignoring unusable compiled component; recompiling");
                None
            }
        }
    }

    /// Stores `component` for next time. A failure is logged, never fatal: the cache only
    /// saves time.
    pub(super) fn put(&self, content_hash: &str, component: &Component) {
        let path = self.path_for(content_hash);
        let result = component
            .serialize()
            .map_err(|err| err.to_string())
            .and_then(|bytes| {
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, bytes)
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .map_err(|err| err.to_string())
            });
        if let Err(error) = result {
            tracing::warn!(path = %path.display(), %error, "could not cache the compiled component");
        }
    }
}
