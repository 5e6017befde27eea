//! The `switchyard` command's subcommands that are more than a call into the library: the
//! admin API client and what uses it (`status`, `top`, `swap`, `redrive`, `state`), certificates, and guest
//! projects (`new`, `build`, `dev`). Part of the binary only.

mod admin;
mod cert;
mod dev;
mod guest;
mod state;
mod status;
mod swap;
mod top;

pub(crate) use admin::AdminArgs;
pub(crate) use cert::cert;
pub(crate) use dev::dev;
pub(crate) use guest::{Lang, build, new_guest};
pub(crate) use state::{export as export_state, import as import_state};
pub(crate) use status::status;
pub(crate) use swap::{redrive, replay, swap};
pub(crate) use top::top;

use super::{CertCommand, SwapKind};
