//! A bad release, for rollback tests: it starts fine and fails every request (a panic is a
//! trap, which the node answers with 500).
use switchyard_sdk::{Error, Request, Response, Service};

struct Broken;

impl Service for Broken {
    fn handle(_req: Request) -> Result<Response, Error> {
        panic!("this release is broken")
    }
}

switchyard_sdk::export!(Broken);
