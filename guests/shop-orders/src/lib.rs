//! Shop example: an order reserves stock and charges payment in parallel.
use switchyard_sdk::{Error, Request, Response, Service, rpc};

struct Orders;

#[derive(serde::Serialize)]
struct Order<'a> {
    sku: &'a str,
    qty: u32,
    reserved: String,
    charged: String,
}

impl Service for Orders {
    fn handle(req: Request) -> Result<Response, Error> {
        let sku = req.param("sku").unwrap_or_default();
        let qty: u32 = req
            .param("qty")
            .and_then(|q| q.parse().ok())
            .ok_or_else(|| Error::bad_request("qty must be a number"))?;
        let reserve = rpc::Call::new("inventory@^1", &format!("POST /reserve/{sku}/{qty}")).start();
        let charge = rpc::Call::new("payments@^1", &format!("POST /charge/{}", qty * 250)).start();
        let (reserved, charged) = (reserve.wait()?, charge.wait()?);
        if reserved.status() != 200 {
            return Ok(Response::new(reserved.status()).with_body(reserved.body().to_vec()));
        }
        Ok(Response::json(&Order {
            sku,
            qty,
            reserved: reserved.text()?.into(),
            charged: charged.text()?.into(),
        }))
    }
}

switchyard_sdk::export!(Orders);
