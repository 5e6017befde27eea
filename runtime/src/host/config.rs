//! `switchyard:runtime/config`: the manifest's `config` table, read-only.

use super::HostState;
use super::bindings::imports::config;

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.guest.config.get(&key).cloned()
    }

    fn get_all(&mut self) -> Vec<(String, String)> {
        self.guest
            .config
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }
}
