//! Shop example: stock levels come from the manifest's `config` (`stock.<sku>`).
use switchyard_sdk::{Error, Request, Response, Service, config};

struct Inventory;

impl Service for Inventory {
    fn handle(req: Request) -> Result<Response, Error> {
        let sku = req.param("sku").unwrap_or_default();
        let qty: u32 = req.param("qty").and_then(|q| q.parse().ok()).unwrap_or(1);
        let stock: u32 = config::get(&format!("stock.{sku}"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::not_found(format!("unknown sku {sku}")))?;
        if qty > stock {
            return Err(Error::new(409, format!("only {stock} of {sku} in stock")));
        }
        Ok(Response::text(format!("reserved {qty} x {sku}")))
    }
}

switchyard_sdk::export!(Inventory);
