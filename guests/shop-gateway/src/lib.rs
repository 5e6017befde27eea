//! Shop example, edge: `POST /checkout/{sku}/{qty}` places an order through `orders`.
use switchyard_sdk::{Error, Request, Response, Service, rpc};

struct Gateway;

impl Service for Gateway {
    fn handle(req: Request) -> Result<Response, Error> {
        let sku = req.param("sku").unwrap_or_default();
        let qty = req.param("qty").unwrap_or("1");
        // A failed call becomes 503 / 504 / 502 with the reason, never a hang.
        let order = rpc::Call::new("orders@^1", &format!("POST /orders/{sku}/{qty}")).send()?;
        Ok(Response::new(order.status())
            .with_header("content-type", "application/json")
            .with_body(order.body().to_vec()))
    }
}

switchyard_sdk::export!(Gateway);
