//! `shop.Orders` (examples/grpc/orders.proto) served as a plain `wasi:http` component: the
//! gRPC framing, the status in trailers and the stream of messages written by hand on wstd, as
//! a gRPC server for any wasi:http host would. `Place` answers one message or
//! `INVALID_ARGUMENT`; `Track` streams one `Progress` per step, `interval_ms` apart.

use std::time::Duration;

use futures_lite::stream;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;
use wstd::http::body::{Body, Bytes, Frame};
use wstd::http::{Error, HeaderMap, HeaderValue, Request, Response};

mod shop {
    include!(concat!(env!("OUT_DIR"), "/shop.rs"));
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let path = request.uri().path().to_owned();
    let note = request
        .headers()
        .get("x-order-note")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = request.into_body().into_boxed_body().collect().await?;
    let Some(message) = unframe(&body.to_bytes()) else {
        return Ok(answer(
            Vec::new(),
            3,
            "the request is not one framed gRPC message",
        ));
    };
    match path.as_str() {
        "/shop.Orders/Place" => Ok(place(message, note)),
        "/shop.Orders/Track" => Ok(track(message)),
        _ => Ok(answer(Vec::new(), 12, "no such method in shop.Orders")),
    }
}

fn place(message: Bytes, note: String) -> Response<Body> {
    let Ok(order) = shop::Order::decode(message) else {
        return answer(Vec::new(), 3, "the request is not a shop.Order");
    };
    if order.items.is_empty() {
        return answer(Vec::new(), 3, "an order needs items");
    }
    let placed = shop::Placed {
        id: format!("wasi-http-{}", order.customer),
        total_items: order.items.iter().map(|item| item.quantity).sum(),
        note,
    };
    answer(vec![frame(&placed)], 0, "")
}

fn track(message: Bytes) -> Response<Body> {
    let Ok(tracking) = shop::Tracking::decode(message) else {
        return answer(Vec::new(), 3, "the request is not a shop.Tracking");
    };
    // Each message is written when its step happens; the status follows the last.
    let interval = Duration::from_millis(u64::from(tracking.interval_ms));
    let steps = stream::unfold(1, move |step| {
        let id = tracking.id.clone();
        async move {
            if step > tracking.steps {
                return None;
            }
            if step > 1 {
                wstd::task::sleep(interval.into()).await;
            }
            let progress = shop::Progress {
                id,
                step,
                state: format!("step {step} of {}", tracking.steps),
            };
            Some((anyhow::Ok(Frame::data(frame(&progress))), step + 1))
        }
    });
    let end = stream::once(anyhow::Ok(Frame::trailers(status(0, ""))));
    grpc_response(Body::from_http_body(StreamBody::new(
        futures_lite::StreamExt::chain(steps, end),
    )))
}

/// `messages`, then the status as trailers.
fn answer(messages: Vec<Bytes>, code: u32, message: &str) -> Response<Body> {
    let frames = messages
        .into_iter()
        .map(|data| anyhow::Ok(Frame::data(data)))
        .chain([anyhow::Ok(Frame::trailers(status(code, message)))]);
    grpc_response(Body::from_http_body(StreamBody::new(stream::iter(frames))))
}

fn grpc_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/grpc+proto"),
    );
    response
}

fn status(code: u32, message: &str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code));
    // Percent-encoding is only needed past printable ASCII, which these messages never are.
    if let Ok(message) = HeaderValue::from_str(message)
        && !message.is_empty()
    {
        trailers.insert("grpc-message", message);
    }
    trailers
}

/// gRPC's length-prefixed message: not compressed, 4-byte big-endian length, the bytes.
fn frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + encoded.len());
    framed.push(0);
    framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    framed.extend_from_slice(&encoded);
    framed.into()
}

/// The one uncompressed message of a unary or server-streaming request.
fn unframe(body: &Bytes) -> Option<Bytes> {
    let (&[0, a, b, c, d], rest) = body.split_first_chunk::<5>()? else {
        return None;
    };
    let length = u32::from_be_bytes([a, b, c, d]) as usize;
    (rest.len() == length).then(|| body.slice(5..))
}
