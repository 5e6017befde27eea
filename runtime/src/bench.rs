//! Entry points for `benches/`: the pieces a benchmark times alone. Not a stable API.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::policy::{Binding, Code};
use crate::wasm::{Engine, EngineConfig};

/// One policy instance, as a `[[bind]]` would hold it.
pub struct PolicyProbe {
    binding: Binding,
    call: crate::policy::CallInfo,
}

impl PolicyProbe {
    /// Loads the policy component at `path` and configures it with `config`.
    pub async fn load(path: &Path, config: &[(&str, &str)]) -> Result<Self, String> {
        let engine = Arc::new(
            Engine::new(&EngineConfig {
                cache_dir: None,
                max_instances: 16,
                max_memory_bytes: 64 * 1024 * 1024,
            })
            .map_err(|err| err.to_string())?,
        );
        let loaded = engine.load_policy(path).map_err(|err| err.to_string())?;
        let config: BTreeMap<String, String> = config
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let code = Code::new(loaded, &config);
        let binding = Binding::start(engine, code, "bench".into(), "bench".into())
            .await
            .map_err(|err| err.to_string())?;
        Ok(Self {
            binding,
            call: crate::policy::CallInfo {
                caller: "bench".into(),
                service: "callee".into(),
                method: "GET /x".into(),
                attempt: 1,
                deadline_ms: 1000,
            },
        })
    }

    /// What the node does around one call: `before-call`, then `after-call` with a reply of
    /// `status`. Returns whether the policy let the call through.
    pub async fn around_call(&self, status: u16) -> bool {
        let through = matches!(
            self.binding.before(&self.call).await,
            crate::policy::BeforeDecision::Proceed
        );
        if through {
            self.binding
                .after(
                    &self.call,
                    &crate::policy::Outcome::Replied(status),
                    Duration::from_micros(50),
                )
                .await;
        }
        through
    }
}
