//! Sends to queues over HTTP and consumes them; how a delivery goes is written in the message,
//! so tests (and the README's walk-through) can drive redelivery and dead-lettering.
//!
//! - `POST /send/{queue}`: sends the request body (header `x-key` becomes the message key,
//!   `x-reply-to` its reply-to) and answers `202` with the message id, or the send error's
//!   status and reason.
//! - `POST /request/{queue}`: sends the body as a request and answers `200` with the first
//!   reply's body, waiting at most `x-timeout-ms` (default 2000): `504` when none came.
//! - `POST /publish/{topic}`: publishes the body (`x-key` its key) and answers `202` with the
//!   offset.
//! - `GET /read/{topic}?from=N&max=M`: answers the stored messages from offset N, one line
//!   each, `<offset> <key or -> <body>`.
//! - `POST /request-all/{topic}`: publishes the body as a request and answers `200` with the
//!   body of every reply that came within `x-window-ms` (default 1000), one per line, sorted.
//! - Every delivery is logged as `<id> attempt <n> on <topic>: <body>`.
//! - A delivered message whose body starts with `reply` is answered at its reply-to with
//!   `re: <body>` (`re: <body> from <name>` with `config.name` set); `reply-after:N` waits
//!   N ms first; `reply-from:S` is answered by the service whose `config.name` is S only (the
//!   other subscribers of a topic just acknowledge it); a reply nobody waits for any more is
//!   logged (`the reply came too late`) and the message acknowledged. Header
//!   `x-hold-ms` keeps the instance busy that long first (to make deliveries meet a busy
//!   subscriber).
//! - A delivered message whose body starts with `hold:N` keeps its instance N ms, then is
//!   acknowledged.
//! - A delivered message whose body starts with `fail-until:N` fails its attempts before the
//!   N-th; `always-fail` fails every time; `panic` traps; `forward:Q` is sent on to queue
//!   `Q` (a loop, when `Q` is the queue it came from); `call-forward:Q` is handed to service
//!   `relay` (a mailroom too, routed `POST /relay/{queue}`) with `POST /relay/Q`, which sends
//!   it on (a loop through a call);
//!   anything else is acknowledged.
//!   With `config.mode = "refuse"` every message fails (a consumer that is down).
use switchyard_sdk::{Error, Message, Request, Response, Service, config, log, messaging};

struct Mailroom;

impl Service for Mailroom {
    fn handle(req: Request) -> Result<Response, Error> {
        let queue = req
            .param("queue")
            .ok_or_else(|| Error::not_found("POST /send/{queue}"))?;
        if req.path().starts_with("/read/") {
            let from = req
                .query_param("from")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let max = req
                .query_param("max")
                .and_then(|n| n.parse().ok())
                .unwrap_or(100);
            let lines: Vec<String> = messaging::read(queue, from, max)?
                .iter()
                .map(|m| {
                    format!(
                        "{} {} {}",
                        m.offset().map_or_else(|| "?".to_owned(), |o| o.to_string()),
                        m.key().unwrap_or("-"),
                        String::from_utf8_lossy(m.body())
                    )
                })
                .collect();
            return Ok(Response::text(lines.join("\n")));
        }
        if req.path().starts_with("/request-all/") {
            let window = req
                .header("x-window-ms")
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(1000);
            let replies = messaging::Message::new(req.body().to_vec())
                .request_all(queue, std::time::Duration::from_millis(window))?;
            let mut bodies: Vec<String> = replies
                .iter()
                .map(|reply| String::from_utf8_lossy(reply.body()).into_owned())
                .collect();
            bodies.sort();
            return Ok(Response::text(bodies.join("\n")));
        }
        if req.path().starts_with("/request/") {
            let timeout = req
                .header("x-timeout-ms")
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(2000);
            let reply = messaging::Message::new(req.body().to_vec())
                .request(queue, std::time::Duration::from_millis(timeout))?;
            return Ok(Response::text(
                String::from_utf8_lossy(reply.body()).into_owned(),
            ));
        }
        if let Some(hold) = req.header("x-hold-ms").and_then(|ms| ms.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(hold));
        }
        let mut message = messaging::Message::new(req.body().to_vec());
        if let Some(key) = req.header("x-key") {
            message = message.key(key);
        }
        if let Some(to) = req.header("x-reply-to") {
            message = message.reply_to(to);
        }
        if req.path().starts_with("/publish/") {
            let offset = message.publish(queue)?;
            return Ok(Response::text(offset.to_string()).with_status(202));
        }
        let id = message.send(queue)?;
        Ok(Response::text(id).with_status(202))
    }

    fn on_message(msg: Message) -> Result<(), String> {
        let attempt: u32 = msg
            .header("x-switchyard-attempt")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let body = String::from_utf8_lossy(msg.body()).into_owned();
        log::info!("{} attempt {attempt} on {}: {body}", msg.id(), msg.topic());
        if let Some(ms) = body
            .strip_prefix("hold:")
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if config::get("mode").as_deref() == Some("refuse") {
            return Err(format!("refusing {} (mode = refuse)", msg.id()));
        }
        if body.starts_with("panic") {
            panic!("asked to panic on {}", msg.id());
        }
        if let Some(rest) = body.strip_prefix("reply-from:") {
            // Only the service named answers; the other subscribers just take it.
            let asked = rest.split([' ', ':']).next().unwrap_or_default();
            if config::get("name").as_deref() != Some(asked) {
                return Ok(());
            }
        }
        if body.starts_with("reply") {
            let wait = body
                .strip_prefix("reply-after:")
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
            if let Some(ms) = wait {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            let service = config::get("name").unwrap_or_else(|| "mailroom".to_owned());
            let answer = match config::get("name") {
                Some(_) => format!("re: {body} from {service}"),
                None => format!("re: {body}"),
            };
            match msg.reply(messaging::Message::new(answer)) {
                Ok(()) => {}
                // The requester stopped waiting (or a replaying subscriber meets an old
                // request): nothing to redo, so the message is still handled.
                Err(messaging::SendError::Unavailable(why)) => {
                    log::warn!("{}: the reply came too late: {why}", msg.id());
                }
                Err(err) => return Err(format!("could not reply to {}: {err}", msg.id())),
            }
            return Ok(());
        }
        if let Some(queue) = body.strip_prefix("call-forward:") {
            let reply =
                switchyard_sdk::rpc::Call::new("relay", &format!("POST /relay/{}", queue.trim()))
                    .body(msg.body().to_vec())
                    .send()
                    .map_err(|err| format!("relay failed: {err}"))?;
            if reply.status() != 202 {
                return Err(format!("relay answered {}", reply.status()));
            }
            return Ok(());
        }
        if let Some(queue) = body.strip_prefix("forward:") {
            messaging::Message::new(msg.body().to_vec())
                .send(queue.trim())
                .map_err(|err| format!("could not forward to {queue}: {err}"))?;
            return Ok(());
        }
        if body.starts_with("always-fail") {
            return Err(format!("{} always fails (attempt {attempt})", msg.id()));
        }
        if let Some(rest) = body.strip_prefix("fail-until:") {
            let until: u32 = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            if attempt < until {
                return Err(format!(
                    "attempt {attempt} fails; attempt {until} will pass"
                ));
            }
        }
        Ok(())
    }
}

switchyard_sdk::export!(Mailroom);
