//! `GET /hello/{name}`: the smallest useful Switchyard service.
use switchyard_sdk::{Error, Request, Response, Service, config, log};

struct Hello;

impl Service for Hello {
    fn handle(req: Request) -> Result<Response, Error> {
        let greeting = config::get("greeting").unwrap_or_else(|| "Hello".into());
        let name = req.param("name").unwrap_or("world");
        log::debug!("greeting {name}");
        Ok(Response::text(format!("{greeting}, {name}!\n")))
    }
}

switchyard_sdk::export!(Hello);
