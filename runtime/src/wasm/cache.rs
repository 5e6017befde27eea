//! Compiled components on disk, so a second start does not recompile.
//!
//! Files are named by the SHA-256 of the component bytes plus a hash of everything that makes
//! wasmtime's output incompatible (version, compiler settings, target), so a new wasmtime or
//! another configuration simply misses. Each file ends with the SHA-256 of what precedes it,
//! checked before anything is deserialized: a flipped bit or a truncated file is recompiled,
//! never loaded as native code. Writes go to a temporary file renamed into place (then the
//! directory is fsynced), so a crash never leaves a half-written artifact under a valid name.
//! The directory is the node user's only (mode 0700).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

/// Bytes of the SHA-256 trailer.
const CHECKSUM_BYTES: usize = 32;

pub(super) struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
}

impl ComponentCache {
    pub(super) fn open(dir: &Path, engine: &wasmtime::Engine) -> std::io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // An older node may have made it with the umask's mode.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn path_for(&self, content_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{content_hash}-{}.checked.cwasm", self.engine_key))
    }

    /// The cached compilation of the component whose bytes hash to `content_hash`, if any.
    pub(super) fn get(&self, engine: &wasmtime::Engine, content_hash: &str) -> Option<Component> {
        let path = self.path_for(content_hash);
        // Read into memory rather than `deserialize_file`, which maps the file: a mapping
        // dies with SIGBUS if someone truncates the file while the node runs.
        let bytes = std::fs::read(&path).ok()?;
        let Some(serialized) = verified(&bytes) else {
            tracing::warn!(path = %path.display(), "compiled component is damaged (its checksum does not match); recompiling");
            let _ = std::fs::remove_file(&path);
            return None;
        };
        // SAFETY: wasmtime requires bytes produced by `Component::serialize` of a compatible
        // engine. The node writes these files itself (rename-on-complete) into its own
        // data_dir (mode 0700), keyed by the engine's compatibility hash; the checksum above
        // proves they are the bytes it wrote, and wasmtime still checks the header, version
        // and configuration. The checksum is not a signature: anyone who can write the
        // data_dir can already replace the node's components, so this trusts nothing new.
        #[allow(unsafe_code, reason = "see SAFETY above")]
        let loaded = unsafe { Component::deserialize(engine, serialized) };
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
            .and_then(|mut bytes| {
                let checksum = Sha256::digest(&bytes);
                bytes.extend_from_slice(&checksum);
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, bytes)
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .and_then(|()| crate::util::sync_dir(&self.dir))
                    .map_err(|err| err.to_string())
            });
        if let Err(error) = result {
            tracing::warn!(path = %path.display(), %error, "could not cache the compiled component");
        }
    }
}

/// What precedes the SHA-256 trailer of `file`, if the trailer matches it.
fn verified(file: &[u8]) -> Option<&[u8]> {
    let split = file.len().checked_sub(CHECKSUM_BYTES)?;
    let (serialized, checksum) = file.split_at(split);
    (Sha256::digest(serialized).as_slice() == checksum).then_some(serialized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bytes_that_match_their_trailer_are_verified() {
        let mut file = b"compiled code".to_vec();
        file.extend_from_slice(&Sha256::digest(&file));
        assert_eq!(verified(&file), Some(&b"compiled code"[..]));
        for at in [0, 5, file.len() - 1] {
            let mut flipped = file.clone();
            flipped[at] ^= 1;
            assert_eq!(verified(&flipped), None, "byte {at}");
        }
        assert_eq!(verified(&file[..file.len() - 1]), None);
        assert_eq!(verified(&file[..10]), None);
    }
}
