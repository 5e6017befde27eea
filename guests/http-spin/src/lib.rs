//! Spin SDK 5's hello component, as its README writes it, plus the request's path in the
//! answer so a test can tell the node passed it through.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

/// A simple Spin HTTP component.
#[http_component]
fn handle_hello_world(req: Request) -> anyhow::Result<impl IntoResponse> {
    println!("Handling request to {:?}", req.header("spin-full-url"));
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(format!("Hello, Fermyon: {} {}", req.method(), req.path()))
        .build())
}
