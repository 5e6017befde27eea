//! Node-to-node transport: QUIC (quinn + rustls) with mutual TLS, one stream per call.
//!
//! The frames it carries are [`crate::wire`]'s, with no I/O (so they are tested and fuzzed
//! alone); `quic`
//! moves frames over pooled connections (one per core to each peer, taken in turn, so calls
//! do not queue on one connection's lock) and answers a stream in its connection's own task
//! when the answer does not wait (a task hop per call is most of a call's latency on a busy
//! node); `tls` makes and loads certificates. A peer is
//! accepted only with a certificate signed by the cluster CA (`switchyard cert ca`,
//! `switchyard cert node <name>`); on loopback, without configured certificates, a built-in
//! development CA is used and the node says so.

mod quic;
mod tls;

pub(crate) use quic::Transport;
pub(crate) use quic::{FrameHandler, Peer, RawStream, encode};
#[cfg(feature = "bench")]
pub use tls::Identity;
#[cfg(not(feature = "bench"))]
pub(crate) use tls::Identity;
pub(crate) use tls::NodeCert;
pub use tls::{
    CA_DAYS, CertPem, NODE_DAYS, SERVER_NAME, generate_ca, generate_ca_for, issue_node_cert,
    issue_node_cert_for,
};

use std::net::SocketAddr;

/// What went wrong between nodes. Each variant says where to look.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Certificates could not be made, read or used: check the `[node.tls]` files.
    #[error("TLS: {0}")]
    Tls(String),
    /// The QUIC address is taken or not allowed.
    #[error("cannot listen for QUIC on {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    /// The peer refused us, is down, or does not trust our certificate.
    #[error("peer {peer} is unreachable: {reason}")]
    Unreachable { peer: SocketAddr, reason: String },
    /// The peer did not answer in time.
    #[error("peer {peer} did not answer in time")]
    TimedOut { peer: SocketAddr },
    /// A stream broke mid-way.
    #[error("stream failed: {0}")]
    Io(String),
    /// The peer sent something that is not a frame of our protocol.
    #[error("bad frame: {0}")]
    Frame(String),
    /// The peer could not read our frame and reset the stream: a frame newer than the
    /// switchyard it runs (or a malformed one), which it did not act on.
    #[error("peer {peer} could not read the frame (it may run an older switchyard)")]
    Unreadable { peer: SocketAddr },
}
