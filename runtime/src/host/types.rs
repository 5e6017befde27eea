//! `switchyard:runtime/types` has no functions; the generated trait still needs an impl.

use super::bindings::imports::types;
use super::{HostState, PolicyState};

impl types::Host for HostState {}

impl types::Host for PolicyState {}
