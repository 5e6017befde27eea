//! The next version of `hello`, for hot-swap tests: same routes, a different answer.
use switchyard_sdk::{Error, Request, Response, Service};

struct HelloV2;

impl Service for HelloV2 {
    fn handle(req: Request) -> Result<Response, Error> {
        let name = req.param("name").unwrap_or("world");
        Ok(Response::text(format!("Hello v2, {name}!\n")))
    }
}

switchyard_sdk::export!(HelloV2);
