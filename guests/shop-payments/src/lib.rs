//! Shop example: charges an amount; `delay_ms` in its config makes it slow on purpose.
use std::time::Duration;

use switchyard_sdk::{Error, Request, Response, Service, config};

struct Payments;

impl Service for Payments {
    fn handle(req: Request) -> Result<Response, Error> {
        let amount = req.param("amount").unwrap_or("0");
        let delay = config::get("delay_ms")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(delay));
        Ok(Response::text(format!("charged {amount} cents")))
    }
}

switchyard_sdk::export!(Payments);
