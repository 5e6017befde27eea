//! The `shop.Orders` gRPC service of examples/grpc: a unary method and a server-streaming one,
//! typed on the messages generated from orders.proto.

use std::time::Duration;

use switchyard_sdk::grpc::{self, Sender, Status};
use switchyard_sdk::{Error, Request, Response, Service};

/// The types generated from orders.proto at build time.
mod shop {
    include!(concat!(env!("OUT_DIR"), "/shop.rs"));
}

struct Orders;

impl Service for Orders {
    fn handle(req: Request) -> Result<Response, Error> {
        match req.path() {
            "/shop.Orders/Place" => grpc::unary(&req, place),
            "/shop.Orders/Track" => grpc::server_streaming(&req, track),
            "/shop.Orders/PlaceUpstream" => grpc::unary(&req, place_upstream),
            "/shop.Orders/TrackUpstream" => grpc::server_streaming(&req, track_upstream),
            _ => grpc::unimplemented(&req),
        }
    }
}

fn place(order: shop::Order, req: &Request) -> Result<shop::Placed, Status> {
    if order.items.is_empty() {
        return Err(Status::invalid_argument("an order needs at least one item")
            .with_metadata("x-order-problem", "no-items"));
    }
    match order.customer.as_str() {
        // Test hooks: a customer whose order takes longer than any sane deadline, one whose
        // order makes the handler fail, and one whose orders are refused for now.
        "slowpoke" => std::thread::sleep(Duration::from_secs(5)),
        "gremlin" => panic!("the gremlin broke the order handler"),
        "paused" => return Err(Status::unavailable("orders are paused")),
        _ => {}
    }
    Ok(shop::Placed {
        id: format!("{}-{}", order.customer, order.items.len()),
        total_items: order.items.iter().map(|item| item.quantity).sum(),
        note: req.header("x-order-note").unwrap_or_default().to_owned(),
    })
}

/// Places the order with the `upstream` service's `Place` (another service of the mesh): its
/// status, deadline and policies carry over.
fn place_upstream(order: shop::Order, _req: &Request) -> Result<shop::Placed, Status> {
    let upstream = upstream()?;
    let mut placed: shop::Placed = grpc::call(&upstream, "/shop.Orders/Place", &order)?;
    placed.note = match placed.note.as_str() {
        "" => format!("via {upstream}"),
        note => format!("{note} via {upstream}"),
    };
    Ok(placed)
}

/// Follows the order with the `upstream` service's `Track`: its messages, collected when its
/// stream ended, are sent on one by one.
fn track_upstream(
    tracking: shop::Tracking,
    out: &mut Sender,
    _req: &Request,
) -> Result<(), Status> {
    let upstream = upstream()?;
    let steps: Vec<shop::Progress> =
        grpc::call_streaming(&upstream, "/shop.Orders/Track", &tracking)?;
    for step in &steps {
        out.send(step)?;
    }
    Ok(())
}

/// The service the `...Upstream` methods call (config `upstream`).
fn upstream() -> Result<String, Status> {
    switchyard_sdk::config::get("upstream")
        .ok_or_else(|| Status::failed_precondition("set config `upstream` to a service"))
}

fn track(tracking: shop::Tracking, out: &mut Sender, _req: &Request) -> Result<(), Status> {
    if tracking.steps > 1000 {
        return Err(Status::new(
            grpc::Code::OutOfRange,
            "an order is tracked for at most 1000 steps",
        ));
    }
    for step in 1..=tracking.steps {
        if step > 1 {
            std::thread::sleep(Duration::from_millis(u64::from(tracking.interval_ms)));
        }
        // Test hook: an order lost after its first step, a stream that fails midway.
        if step == 2 && tracking.id == "lost" {
            return Err(Status::new(
                grpc::Code::DataLoss,
                "the order was lost in transit",
            ));
        }
        let state = if step == tracking.steps {
            "delivered"
        } else {
            "on its way"
        };
        out.send(&shop::Progress {
            id: tracking.id.clone(),
            step,
            state: state.to_owned(),
        })?;
    }
    Ok(())
}

switchyard_sdk::export!(Orders);
