//! HTTP on hyper 1: the ingress that routes requests to services, and the admin API.
//!
//! Every ingress request gets an id (the client's `x-request-id` when it sends a sane one),
//! one `request` span with service, route, status and duration, and an answer even when the
//! guest gives none: `404` no route, `405` wrong method, `413` body too large, `503` service
//! at `max_instances`, `504` past its deadline, `500` trap or memory limit (the body names the
//! request id; the log has the details under the same id).

mod admin;
mod grpc;
mod ingress;
mod server;
mod tls;

pub(crate) use admin::{
    Admin, AdminToken, ControlError, MetricsPage, Operator, PolicySwapped, TokenError, Upload,
};
pub(crate) use ingress::Ingress;
pub(crate) use server::{ConnectionLimits, ServerTls, WholeBody, serve};
pub(crate) use tls::{EdgeCert, EdgeTlsError, edge_tls};
