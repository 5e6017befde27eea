//! `switchyard:runtime/types` has no functions; the generated trait still needs an impl.

use super::HostState;
use crate::wasm::imports::types;

impl types::Host for HostState {}
