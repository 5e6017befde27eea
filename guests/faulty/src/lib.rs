//! A service that misbehaves on request, so the node's tests can check how each fault is
//! contained: a trap, a busy loop past the deadline, memory past the limit, a slow answer.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchyard_sdk::{Error, Request, Response, Service, config, log, quic, rpc};

struct Faulty;

static REQUESTS_SEEN: AtomicU64 = AtomicU64::new(0);

#[derive(serde::Serialize)]
struct Echo<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    params: Vec<(&'a str, &'a str)>,
    headers: &'a [(String, String)],
    body: &'a str,
    request_id: &'a str,
    deadline_ms: u128,
    config: Vec<(String, String)>,
    env: Vec<(String, String)>,
    files_visible: bool,
}

impl Service for Faulty {
    fn handle(req: Request) -> Result<Response, Error> {
        match req.param("fault").unwrap_or("echo") {
            "echo" => {
                let params = ["fault", "arg"]
                    .into_iter()
                    .filter_map(|key| req.param(key).map(|value| (key, value)))
                    .collect();
                Ok(Response::json(&Echo {
                    method: req.method(),
                    path: req.path(),
                    query: req.query(),
                    params,
                    headers: req.headers(),
                    body: req.text()?,
                    request_id: req.request_id(),
                    deadline_ms: req.deadline().as_millis(),
                    config: config::all(),
                    env: std::env::vars().collect(),
                    files_visible: std::fs::read_dir("/").is_ok() || std::fs::read_dir(".").is_ok(),
                }))
            }
            "socket" => {
                // Query: an IP:PORT. Tries what a guest could do with WASI sockets and says
                // how each attempt ended; a locked-down host refuses all of them.
                let target = req.query().unwrap_or("127.0.0.1:9");
                let tcp = std::net::TcpStream::connect(target).map(|_| ());
                let udp = std::net::UdpSocket::bind("0.0.0.0:0")
                    .and_then(|socket| socket.send_to(b"hello", target).map(|_| ()));
                let listen = std::net::TcpListener::bind("0.0.0.0:0").map(|_| ());
                let lookup = std::net::ToSocketAddrs::to_socket_addrs("localhost:80").map(|_| ());
                let outcome = |result: std::io::Result<()>| match result {
                    Ok(()) => "allowed".to_owned(),
                    Err(err) => format!("refused: {err}"),
                };
                Ok(Response::json(&[
                    ("tcp_connect", outcome(tcp)),
                    ("udp_send", outcome(udp)),
                    ("tcp_listen", outcome(listen)),
                    ("name_lookup", outcome(lookup)),
                ]))
            }
            "trap" => {
                log::error!("trapping on purpose");
                panic!("faulty guest: trap requested");
            }
            "spin" => {
                let mut counter: u64 = 0;
                loop {
                    counter = std::hint::black_box(counter.wrapping_add(1));
                }
            }
            "oom" => {
                let mb: usize = req
                    .param("arg")
                    .and_then(|arg| arg.parse().ok())
                    .unwrap_or(256);
                let mut hog: Vec<u8> = Vec::new();
                hog.resize(mb * 1024 * 1024, 1);
                Ok(Response::text(format!(
                    "allocated {} bytes\n",
                    std::hint::black_box(hog).len()
                )))
            }
            "sleep" => {
                let ms: u64 = req
                    .param("arg")
                    .and_then(|arg| arg.parse().ok())
                    .unwrap_or(100);
                std::thread::sleep(Duration::from_millis(ms));
                Ok(Response::text(format!("slept {ms} ms\n")))
            }
            "call" => {
                // Body: target, method, and optionally a timeout in ms (or `reserve <ms>`),
                // one per line; any lines after those are the call's own body (so calls can
                // nest).
                let (target, method, timeout) = call_spec(&req)?;
                let forwarded: Vec<&str> = req.text()?.lines().skip(3).collect();
                // A guest that tries to claim another caller: the node drops the header.
                let mut call = rpc::Call::new(target, method)
                    .header("x-probe", "1")
                    .header("x-switchyard-caller", "forged")
                    .body(forwarded.join("\n"));
                if let Some(ms) = timeout {
                    call = call.timeout(Duration::from_millis(ms));
                }
                let reserve = req.text()?.lines().nth(2).and_then(|line| {
                    line.strip_prefix("reserve ")
                        .and_then(|ms| ms.trim().parse().ok())
                });
                if let Some(ms) = reserve {
                    call = call.reserve(Duration::from_millis(ms));
                }
                let reply = call.send()?;
                Ok(Response::new(reply.status()).with_body(reply.body().to_vec()))
            }
            "calls" => {
                // Body: target and method; `arg` sequential calls; answers each call's µs.
                let n: usize = req
                    .param("arg")
                    .and_then(|arg| arg.parse().ok())
                    .unwrap_or(100);
                let (target, method, _) = call_spec(&req)?;
                let mut micros = Vec::with_capacity(n);
                for _ in 0..n {
                    let started = std::time::Instant::now();
                    let reply = rpc::Call::new(target, method).send()?;
                    if reply.status() != 200 {
                        return Err(Error::new(502, format!("call answered {}", reply.status())));
                    }
                    micros.push(started.elapsed().as_micros() as u64);
                }
                Ok(Response::json(&micros))
            }
            "fanout" => {
                let n: usize = req
                    .param("arg")
                    .and_then(|arg| arg.parse().ok())
                    .unwrap_or(3);
                let started = std::time::Instant::now();
                let calls = (0..n)
                    .map(|_| rpc::Call::new("faulty", "GET /f/sleep/100").start())
                    .collect();
                let ok = rpc::wait_all(calls)
                    .into_iter()
                    .filter(|reply| reply.as_ref().is_ok_and(|r| r.status() == 200))
                    .count();
                Ok(Response::json(&(ok, started.elapsed().as_millis() as u64)))
            }
            "resolve" => {
                let target = req.query().unwrap_or_default();
                let instances =
                    switchyard_sdk::discovery::resolve(target).map_err(Error::bad_request)?;
                let view: Vec<_> = instances
                    .iter()
                    .map(|i| {
                        (
                            i.node.as_str(),
                            i.local,
                            i.address.as_deref(),
                            i.version.as_str(),
                        )
                    })
                    .collect();
                Ok(Response::json(&view))
            }
            "nap" => {
                let ms = config::get("sleep_ms")
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms));
                Ok(Response::text(format!("napped {ms} ms\n")))
            }
            "load" => {
                // Body: target and method. Keeps 4 calls in flight until `arg` have finished.
                let total: usize = req
                    .param("arg")
                    .and_then(|arg| arg.parse().ok())
                    .unwrap_or(40);
                let (target, method, _) = call_spec(&req)?;
                let start = || rpc::Call::new(target, method).start();
                let mut in_flight: Vec<rpc::Pending> = (0..4.min(total)).map(|_| start()).collect();
                let (mut started, mut ok) = (in_flight.len(), 0);
                while !in_flight.is_empty() {
                    let done = in_flight.swap_remove(rpc::wait_any(&in_flight));
                    ok += usize::from(done.wait().is_ok_and(|reply| reply.status() == 200));
                    if started < total {
                        in_flight.push(start());
                        started += 1;
                    }
                }
                Ok(Response::json(&ok))
            }
            "big" => {
                // A body of `arg` KiB.
                let kib: usize = req.param("arg").and_then(|a| a.parse().ok()).unwrap_or(1);
                Ok(Response::new(200).with_body(vec![b'x'; kib * 1024]))
            }
            "hold" => {
                // Body: target and method. Starts `arg` calls, lets them all finish unread
                // (their replies wait in the host), then reads them one at a time: how many
                // were 200, and the errors of the others.
                let n: usize = req.param("arg").and_then(|a| a.parse().ok()).unwrap_or(4);
                let (target, method, _) = call_spec(&req)?;
                let calls: Vec<_> = (0..n)
                    .map(|_| rpc::Call::new(target, method).start())
                    .collect();
                std::thread::sleep(Duration::from_millis(300));
                let mut ok = 0;
                let mut errors = Vec::new();
                for call in calls {
                    match call.wait() {
                        Ok(reply) if reply.status() == 200 => ok += 1,
                        Ok(reply) => errors.push(format!("status {}", reply.status())),
                        Err(err) => errors.push(format!("{err:?}")),
                    }
                }
                Ok(Response::json(&(ok, errors)))
            }
            "streams" => {
                // Body: target. Opens `arg` streams to it and holds them: how many opened, and
                // the error of the first that did not.
                let n: usize = req.param("arg").and_then(|a| a.parse().ok()).unwrap_or(4);
                let connection = quic::connect(req.text()?.trim())?;
                let mut open = Vec::new();
                let mut error = None;
                for _ in 0..n {
                    match connection.open_stream() {
                        Ok(stream) => open.push(stream),
                        Err(err) => {
                            error = Some(format!("{err:?}"));
                            break;
                        }
                    }
                }
                Ok(Response::json(&(open.len(), error)))
            }
            "stream" => {
                // Body: target on the first line, then the payload to send on a raw stream.
                let text = req.text()?;
                let (target, payload) = text.split_once('\n').unwrap_or((text, ""));
                let connection = quic::connect(target)?;
                let stream = connection.open_stream()?;
                for chunk in payload.as_bytes().chunks(7) {
                    stream.write_all(chunk)?;
                }
                stream.finish()?;
                let answer = stream.read_to_end()?;
                Ok(Response::text(format!(
                    "{}\n{}",
                    connection.node(),
                    String::from_utf8_lossy(&answer)
                )))
            }
            "slowfirst" => {
                // Sleeps `arg` ms, except for a retried or hedged attempt (its request id
                // carries `~`): for hedging tests.
                let ms: u64 = req.param("arg").and_then(|a| a.parse().ok()).unwrap_or(500);
                let again = req.request_id().contains('~');
                if !again {
                    std::thread::sleep(Duration::from_millis(ms));
                }
                Ok(Response::text(if again {
                    "second attempt"
                } else {
                    "first attempt"
                }))
            }
            "count" => {
                // Globals live as long as the instance: 1 on every request unless reused.
                let count = REQUESTS_SEEN.fetch_add(1, Ordering::Relaxed) + 1;
                Ok(Response::text(format!("{count}\n")))
            }
            "framing" => {
                // Headers and statuses a handler must not set: the node drops or refuses them.
                let code = req
                    .param("arg")
                    .and_then(|arg| arg.parse().ok())
                    .unwrap_or(200);
                Ok(Response::new(code)
                    .with_header("content-length", "999999")
                    .with_header("transfer-encoding", "chunked")
                    .with_header("connection", "close")
                    .with_header("upgrade", "websocket")
                    .with_header("x-kept", "yes")
                    .with_body(b"short".to_vec()))
            }
            "chatty" => {
                // Logs `arg` lines of 1 KiB each: the node keeps a per-request budget.
                let lines: usize = req
                    .param("arg")
                    .and_then(|arg| arg.parse().ok())
                    .unwrap_or(1000);
                let line = "x".repeat(1024);
                for n in 0..lines {
                    log::info!("{n:06} {line}");
                }
                Ok(Response::text(format!("logged {lines}\n")))
            }
            "status" => {
                let code = req
                    .param("arg")
                    .and_then(|arg| arg.parse().ok())
                    .unwrap_or(418);
                Err(Error::new(code, "status requested"))
            }
            other => Err(Error::not_found(format!("unknown fault `{other}`"))),
        }
    }

    /// Answers a raw stream: everything it read, upper-cased, after `<caller>:`; a payload of
    /// `stall` reads nothing more and never answers (for deadline tests).
    fn stream(stream: quic::Stream, caller: &str) {
        let Ok(all) = stream.read_to_end() else {
            return;
        };
        if all == b"stall" {
            loop {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let answer = format!("{caller}:{}", String::from_utf8_lossy(&all).to_uppercase());
        let _ = stream.write_all(answer.as_bytes());
        let _ = stream.finish();
    }
}

/// A call described in the request body: target, method, optional timeout in ms (one a line).
fn call_spec(req: &Request) -> Result<(&str, &str, Option<u64>), Error> {
    let mut lines = req.text()?.lines();
    let target = lines.next().unwrap_or_default();
    let method = lines.next().unwrap_or_default();
    Ok((target, method, lines.next().and_then(|ms| ms.parse().ok())))
}

switchyard_sdk::export!(Faulty);
