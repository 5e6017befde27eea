//! The vocabulary of one service-to-service call, shared by every layer it passes.
//!
//! A guest's `rpc.call("inventory@^1", "GET /items/42", ..)` becomes a [`Call`] once, at the
//! host boundary: its [`Target`] is parsed there (name and semver range) and never again, and
//! its budget becomes a [`Deadline`] that every layer below reads instead of keeping its own
//! timer. The layers are [`CallService`]s: the policy chain wraps the routed call, the route
//! picks an [`Endpoint`] (asking a [`Pick`], the chain's `pick`, when several fit), and the
//! endpoint is this node's slot or a peer over QUIC. Whatever goes wrong is a [`CallError`],
//! whose conversions to and from every other error type (the WIT's, a frame's, a slot's) are
//! each written once, as a `From` beside the type converted to.
//!
//! This module is a leaf: it knows no other module of the crate but `util`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::util::BoxFuture;

/// A service name and, optionally, the versions that may answer: `inventory` or
/// `inventory@^1.2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) service: String,
    pub(crate) range: Option<semver::VersionReq>,
}

impl Target {
    /// Parses `name` or `name@<semver range>`; the error says what to write instead.
    pub(crate) fn parse(text: &str) -> Result<Self, CallError> {
        let (name, range) = match text.split_once('@') {
            Some((name, range)) => {
                let range = semver::VersionReq::parse(range).map_err(|err| {
                    CallError::BadRequest(format!(
                        "`{text}`: `{range}` is not a semver range ({err}); write e.g. `{name}@^1`"
                    ))
                })?;
                (name, Some(range))
            }
            None => (text, None),
        };
        if name.is_empty() {
            return Err(CallError::BadRequest(format!(
                "`{text}` names no service; write e.g. `inventory` or `inventory@^1`"
            )));
        }
        Ok(Self {
            service: name.to_owned(),
            range,
        })
    }

    /// Any version of `service`.
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn any(service: &str) -> Self {
        Self {
            service: service.to_owned(),
            range: None,
        }
    }

    /// Whether `version` may answer.
    pub(crate) fn fits(&self, version: &semver::Version) -> bool {
        self.range
            .as_ref()
            .is_none_or(|range| range.matches(version))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.range {
            Some(range) => write!(f, "{}@{range}", self.service),
            None => f.write_str(&self.service),
        }
    }
}

/// `GET /items/42?x=1` → (`GET`, `/items/42`, `Some("x=1")`); the error says the form.
pub(crate) fn split_method(method: &str) -> Result<(&str, &str, Option<&str>), CallError> {
    let bad = || {
        CallError::BadRequest(format!(
            "method `{method}` is not `METHOD /path`, e.g. `GET /items/42`"
        ))
    };
    let (verb, target) = method.trim().split_once(' ').ok_or_else(bad)?;
    if verb.is_empty() || !verb.bytes().all(|b| b.is_ascii_uppercase()) || !target.starts_with('/')
    {
        return Err(bad());
    }
    Ok(match target.split_once('?') {
        Some((path, query)) => (verb, path, Some(query)),
        None => (verb, target, None),
    })
}

/// The prefix of the headers only the node sets (`x-switchyard-caller`, `-sender`,
/// `-attempt`, ...): one that arrives from a client, a peer or a guest is dropped, so nobody
/// can claim to be another caller or sender.
pub(crate) const NODE_HEADER_PREFIX: &str = "x-switchyard-";

/// Whether `name` is a header only the node may set.
pub(crate) fn is_node_header(name: &str) -> bool {
    name.len() >= NODE_HEADER_PREFIX.len()
        && name.as_bytes()[..NODE_HEADER_PREFIX.len()]
            .eq_ignore_ascii_case(NODE_HEADER_PREFIX.as_bytes())
}

/// Drops the headers only the node may set from `headers` that came from elsewhere.
pub(crate) fn drop_node_headers(headers: &mut Vec<(String, String)>) {
    headers.retain(|(name, _)| !is_node_header(name));
}

/// When a call's time is up, on tokio's clock (so tests can pause it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Deadline(Instant);

impl Deadline {
    /// `budget` from now.
    pub(crate) fn after(budget: Duration) -> Self {
        Self(Instant::now() + budget)
    }

    /// What is left of it (zero once past).
    pub(crate) fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// What is left, as the `deadline-ms` a callee sees.
    pub(crate) fn remaining_ms(self) -> u32 {
        budget_ms(self.remaining())
    }
}

/// The most of its remaining time a caller keeps by default.
const MAX_DEFAULT_RESERVE: Duration = Duration::from_secs(1);

/// What a caller with `remaining` time keeps for itself by default when it calls: a tenth of
/// it, at most [`MAX_DEFAULT_RESERVE`]. Enough for a fallback or an error answer, which take
/// microseconds in a guest, and little enough that a callee rarely notices.
pub(crate) fn default_reserve(remaining: Duration) -> Duration {
    (remaining / 10).min(MAX_DEFAULT_RESERVE)
}

/// The deadline of a call made by a caller whose own deadline is `caller`: `reserve` (else
/// [`default_reserve`]) before the caller's, so the caller still has time to handle a callee
/// that did not answer, and no later than `timeout` from now if the call sets one.
pub(crate) fn call_deadline(
    caller: Deadline,
    timeout: Option<Duration>,
    reserve: Option<Duration>,
) -> Deadline {
    // One reading of the clock for the whole rule: it runs on every call.
    let now = Instant::now();
    let remaining = caller.0.saturating_duration_since(now);
    let reserve = reserve.unwrap_or_else(|| default_reserve(remaining));
    let kept = caller
        .0
        .checked_sub(reserve)
        .map_or(now, |end| end.max(now));
    Deadline(match timeout {
        Some(timeout) => kept.min(now + timeout),
        None => kept,
    })
}

/// A budget as the `deadline-ms` a callee sees (saturating: budgets beyond `u32` ms are
/// "no deadline" in practice).
pub(crate) fn budget_ms(budget: Duration) -> u32 {
    u32::try_from(budget.as_millis()).unwrap_or(u32::MAX)
}

/// One call, as the guest asked for it.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) target: Target,
    /// `METHOD /path?query`, in the callee's own route syntax.
    pub(crate) method: String,
    pub(crate) body: Vec<u8>,
    pub(crate) headers: Vec<(String, String)>,
    /// When the caller stops waiting; already capped by the caller's own deadline.
    pub(crate) deadline: Deadline,
    /// For the callee's logs: the caller's service and a request id derived from the caller's.
    pub(crate) caller: String,
    pub(crate) request_id: String,
    /// Set on copies of one call that race each other (a hedge), so each goes to an instance
    /// the others did not take while there is one.
    pub(crate) spread: Option<Arc<Spread>>,
    /// The chain of messages that led to the caller's work: messages the callee sends
    /// continue it (the loop guard follows a loop through calls too).
    pub(crate) causation: Causation,
}

/// The instances the racing copies of one call went to.
#[derive(Debug, Default)]
pub(crate) struct Spread {
    taken: Mutex<Vec<Endpoint>>,
}

impl Spread {
    /// Records that a copy went to `endpoint`.
    pub(crate) fn take(&self, endpoint: Endpoint) {
        if let Ok(mut taken) = self.taken.lock() {
            taken.push(endpoint);
        }
    }

    /// Of `candidates`, the ones no copy took yet; all of them when every one was taken.
    pub(crate) fn spread_out<T: Copy + Into<Endpoint>>(&self, candidates: Vec<T>) -> Vec<T> {
        let Ok(taken) = self.taken.lock() else {
            return candidates;
        };
        let fresh: Vec<T> = candidates
            .iter()
            .copied()
            .filter(|candidate| !taken.contains(&(*candidate).into()))
            .collect();
        if fresh.is_empty() { candidates } else { fresh }
    }
}

/// What the callee's handler answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// A gRPC answer is HTTP 200 whatever its outcome, its code in `grpc-status`: as a
    /// reply, its status is the HTTP status that code means, so the policies around the call
    /// (a breaker counting 5xx, a retry on 503), metrics and logs judge a failed gRPC call
    /// as they judge any failed call. A reply that is not `200` keeps its status.
    pub(crate) fn judged_as_grpc(mut self) -> Self {
        let code = self
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("grpc-status"))
            .and_then(|(_, value)| value.trim().parse::<u32>().ok());
        if let (200, Some(code)) = (self.status, code) {
            self.status = grpc_code_http_status(code);
        }
        self
    }
}

/// The HTTP status a gRPC status code means: the table gRPC's HTTP gateways use (unknown
/// codes are `500`).
pub(crate) fn grpc_code_http_status(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// Why a call has no reply. Mirrors `call-error` in `wit/rpc.wit`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallError {
    #[error("the call did not finish within its deadline")]
    Timeout,
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("the callee failed: {0}")]
    Remote(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("rejected by a policy: {0}")]
    Rejected(String),
}

impl From<&Result<Reply, CallError>> for crate::telemetry::CallOutcome {
    /// How the calls counter labels a call's end.
    fn from(result: &Result<Reply, CallError>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(CallError::Timeout) => Self::Timeout,
            Err(CallError::Unavailable(_)) => Self::Unavailable,
            Err(CallError::Remote(_)) => Self::Remote,
            Err(CallError::BadRequest(_)) => Self::BadRequest,
            Err(CallError::Rejected(_)) => Self::Rejected,
        }
    }
}

/// Where a call or stream goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Endpoint {
    Local,
    Peer(SocketAddr),
}

impl Endpoint {
    /// `None` for this node, as the balancer and the registry count instances.
    pub(crate) fn peer(self) -> Option<SocketAddr> {
        match self {
            Self::Local => None,
            Self::Peer(addr) => Some(addr),
        }
    }
}

impl From<Option<SocketAddr>> for Endpoint {
    fn from(peer: Option<SocketAddr>) -> Self {
        peer.map_or(Self::Local, Self::Peer)
    }
}

/// An instance a call may go to, as a [`Pick`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) endpoint: Endpoint,
    /// The node's name (its address if the registry no longer knows it).
    pub(crate) node: String,
    /// Calls this node has in flight to it.
    pub(crate) in_flight: u32,
}

/// A healthy instance of a service, as `discovery.resolve` shows it.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub(crate) node: String,
    pub(crate) endpoint: Endpoint,
    pub(crate) version: String,
}

/// Something that answers calls: a layer of the call path, or the path's end.
pub(crate) trait CallService: Send + Sync {
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Reply, CallError>>;
}

/// Chooses among the instances that fit a call; `None` leaves it to the service's balancing
/// strategy.
pub(crate) trait Pick: Send + Sync {
    fn pick<'a>(
        &'a self,
        call: &'a Call,
        candidates: &'a [Candidate],
    ) -> BoxFuture<'a, Option<usize>>;
}

/// Both directions of a raw stream, wherever its other end is.
pub(crate) struct ByteStream {
    pub(crate) reader: Box<dyn AsyncRead + Send + Unpin>,
    pub(crate) writer: Box<dyn AsyncWrite + Send + Unpin>,
}

/// A guest's `quic.connection`: one service instance its streams go to.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) target: Target,
    pub(crate) endpoint: Endpoint,
    /// The node it runs on, for the guest to see.
    pub(crate) node: String,
}

/// Header: how many messages led to this one (1 for one sent while handling no message).
pub(crate) const CAUSATION_DEPTH_HEADER: &str = "x-switchyard-causation-depth";
/// Header: the services that sent each message of the chain, first first, comma-separated.
pub(crate) const CAUSATION_CHAIN_HEADER: &str = "x-switchyard-causation-chain";

/// Where a message comes from in a chain of messages, each sent while handling the one before:
/// the loop guard stops a chain that grows past a limit (a loop between services).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Causation {
    /// 0 for work that no message caused (an HTTP request).
    pub(crate) depth: u32,
    /// The services that sent each message of the chain.
    pub(crate) chain: Vec<String>,
}

impl Causation {
    /// The causation a message's node headers carry (none: depth 0).
    pub(crate) fn of(headers: &[(String, String)]) -> Self {
        let value = |name: &str| {
            headers
                .iter()
                .find(|(header, _)| header == name)
                .map(|(_, value)| value.as_str())
        };
        let depth = value(CAUSATION_DEPTH_HEADER)
            .and_then(|depth| depth.parse().ok())
            .unwrap_or(0);
        let chain = value(CAUSATION_CHAIN_HEADER)
            .map(|chain| chain.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        Self { depth, chain }
    }

    /// The causation of a message that `sender` sends while handling work of this one.
    pub(crate) fn then(&self, sender: &str) -> Self {
        let mut chain = self.chain.clone();
        chain.push(sender.to_owned());
        Self {
            depth: self.depth.saturating_add(1),
            chain,
        }
    }

    /// Sets this causation's headers on a message (after the sender's node headers were
    /// dropped).
    pub(crate) fn stamp(&self, headers: &mut Vec<(String, String)>) {
        headers.push((CAUSATION_DEPTH_HEADER.into(), self.depth.to_string()));
        headers.push((CAUSATION_CHAIN_HEADER.into(), self.chain.join(",")));
    }

    /// The chain as a log line and a dead letter name it: `a → b → a`.
    pub(crate) fn path(&self) -> String {
        self.chain.join(" → ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_answer_is_judged_by_its_code_and_other_replies_keep_their_status() {
        let reply = |status, grpc_status: Option<&str>| Reply {
            status,
            headers: grpc_status
                .map(|code| vec![("Grpc-Status".to_owned(), code.to_owned())])
                .unwrap_or_default(),
            body: Vec::new(),
        };
        let judged = |status, code| reply(status, code).judged_as_grpc().status;
        assert_eq!(judged(200, Some("0")), 200);
        assert_eq!(judged(200, Some("14")), 503);
        assert_eq!(judged(200, Some(" 4 ")), 504);
        assert_eq!(judged(200, Some("3")), 400);
        assert_eq!(judged(200, Some("99")), 500);
        // No code, an unreadable one, or a status that already says what went wrong.
        assert_eq!(judged(200, None), 200);
        assert_eq!(judged(200, Some("x")), 200);
        assert_eq!(judged(502, Some("0")), 502);
    }

    #[test]
    fn headers_only_the_node_sets_are_dropped_whatever_their_case() {
        let mut headers = vec![
            ("X-Switchyard-Caller".to_owned(), "admin".to_owned()),
            ("x-switchyard-sender".to_owned(), "billing".to_owned()),
            ("x-switchyar".to_owned(), "short".to_owned()),
            ("accept".to_owned(), "*/*".to_owned()),
        ];
        drop_node_headers(&mut headers);
        let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["x-switchyar", "accept"]);
        assert!(is_node_header("x-SWITCHYARD-attempt"));
        assert!(!is_node_header("x-switchyard"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_leaves_its_caller_a_reserve_and_honours_a_shorter_timeout() {
        let ms = Duration::from_millis;
        let caller = Deadline::after(ms(1000));
        // By default a tenth of what is left.
        assert_eq!(call_deadline(caller, None, None).remaining(), ms(900));
        assert_eq!(
            call_deadline(caller, Some(ms(200)), None).remaining(),
            ms(200)
        );
        assert_eq!(
            call_deadline(caller, Some(ms(950)), None).remaining(),
            ms(900)
        );
        // Set per call (or per binding): as asked, even none at all.
        assert_eq!(
            call_deadline(caller, None, Some(ms(300))).remaining(),
            ms(700)
        );
        assert_eq!(
            call_deadline(caller, None, Some(ms(0))).remaining(),
            ms(1000)
        );
        // A reserve larger than what is left leaves the callee nothing (it times out at once).
        assert_eq!(
            call_deadline(caller, None, Some(ms(5000))).remaining(),
            ms(0)
        );
        // At most a second by default, and it shrinks with the time the caller has spent.
        let patient = Deadline::after(Duration::from_secs(60));
        assert_eq!(call_deadline(patient, None, None).remaining(), ms(59_000));
        tokio::time::advance(ms(500)).await;
        assert_eq!(call_deadline(caller, None, None).remaining(), ms(450));
    }

    #[test]
    fn racing_copies_spread_over_instances_while_there_are_fresh_ones() {
        let spread = Spread::default();
        let (a, b) = (
            Some(SocketAddr::from(([127, 0, 0, 1], 1))),
            Some(SocketAddr::from(([127, 0, 0, 1], 2))),
        );
        assert_eq!(spread.spread_out(vec![None, a, b]), [None, a, b]);
        spread.take(Endpoint::Local);
        assert_eq!(spread.spread_out(vec![None, a, b]), [a, b]);
        spread.take(Endpoint::from(a));
        spread.take(Endpoint::from(b));
        assert_eq!(
            spread.spread_out(vec![None, a, b]),
            [None, a, b],
            "all taken: any"
        );
    }

    #[test]
    fn targets_and_methods_parse_or_say_what_is_wrong() {
        let plain = Target::parse("inventory").ok();
        assert_eq!(plain, Some(Target::any("inventory")));
        let ranged = Target::parse("inventory@^1").ok();
        assert!(ranged.as_ref().is_some_and(|t| t.service == "inventory"
            && t.fits(&semver::Version::new(1, 4, 0))
            && !t.fits(&semver::Version::new(2, 0, 0))));
        assert_eq!(
            ranged.map(|t| t.to_string()).as_deref(),
            Some("inventory@^1")
        );
        assert!(
            matches!(Target::parse("inventory@banana"), Err(CallError::BadRequest(m)) if m.contains("not a semver range"))
        );
        assert!(matches!(
            Target::parse("@^1"),
            Err(CallError::BadRequest(_))
        ));
        assert_eq!(
            split_method("GET /a/b?x=1"),
            Ok(("GET", "/a/b", Some("x=1")))
        );
        assert!(matches!(
            split_method("get /a"),
            Err(CallError::BadRequest(_))
        ));
        assert!(matches!(split_method("/a"), Err(CallError::BadRequest(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_shrinks_as_time_passes_and_stops_at_zero() {
        let deadline = Deadline::after(Duration::from_millis(250));
        assert_eq!(deadline.remaining_ms(), 250);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(deadline.remaining_ms(), 150);
        let timeout = |ms| {
            call_deadline(
                deadline,
                Some(Duration::from_millis(ms)),
                Some(Duration::ZERO),
            )
        };
        assert_eq!(timeout(50).remaining_ms(), 50);
        assert_eq!(timeout(5000).remaining_ms(), 150);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(deadline.remaining(), Duration::ZERO);
    }

    #[test]
    fn a_chain_grows_by_one_sender_per_message_and_reads_back_from_its_headers() {
        let first = Causation::default().then("orders");
        let second = first.then("billing");
        let mut headers = vec![("x-other".to_owned(), "1".to_owned())];
        second.stamp(&mut headers);
        let read = Causation::of(&headers);
        assert_eq!(read, second);
        assert_eq!(read.depth, 2);
        assert_eq!(read.path(), "orders → billing");
        assert_eq!(Causation::of(&[]), Causation::default());
    }
}
