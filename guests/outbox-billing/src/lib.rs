//! Bills each placed order once: consumes the order events the orders service publishes
//! through its outbox, and records the message id with the effect in one transaction, so a
//! message relayed twice is billed once.
//!
//! - On each message: if its id was handled, logs `duplicate <id>` and acknowledges it; else
//!   adds the order to `billed/count` and `billed/cents` and stores `billed/order/<order>`.
//! - `GET /billing`: `<orders billed> <cents billed>`.
//! - `POST /handle/{id}`: runs the same once-only check for a made-up message id (`first` or
//!   `duplicate`), so a test can show the check without a relay.
//! - `POST /forget?older_ms=N`: forgets the handled ids older than N ms; answers how many.
//!   Every hundredth billed order forgets those older than a day by itself.
use serde::Deserialize;
use switchyard_sdk::{Error, Message, Request, Response, Service, log, state};

#[derive(Deserialize)]
struct OrderPlaced {
    order: String,
    total_cents: u64,
}

struct Billing;

impl Service for Billing {
    fn handle(req: Request) -> Result<Response, Error> {
        if req.path() == "/forget" {
            let older_ms = req
                .query_param("older_ms")
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(86_400_000);
            let forgotten = state::forget_handled(std::time::Duration::from_millis(older_ms))?;
            return Ok(Response::text(forgotten.to_string()));
        }
        if let Some(id) = req.param("id") {
            let first = state::transact(|tx| Ok(tx.first_time(id)?))?;
            return Ok(Response::text(if first { "first" } else { "duplicate" }));
        }
        let count: u64 = state::get_json("billed/count")?.unwrap_or(0);
        let cents: u64 = state::get_json("billed/cents")?.unwrap_or(0);
        Ok(Response::text(format!("{count} {cents}")))
    }

    fn on_message(msg: Message) -> Result<(), String> {
        let placed: OrderPlaced = msg.json().map_err(|err| err.to_string())?;
        let mut billed_count = 0;
        let billed = state::transact(|tx| {
            if !tx.first_time(msg.id())? {
                return Ok(false);
            }
            let count: u64 = tx.get_json("billed/count")?.unwrap_or(0);
            billed_count = count + 1;
            let cents: u64 = tx.get_json("billed/cents")?.unwrap_or(0);
            tx.put_json("billed/count", &(count + 1))?;
            tx.put_json("billed/cents", &(cents + placed.total_cents))?;
            tx.put(&format!("billed/order/{}", placed.order), msg.id());
            Ok(true)
        })
        .map_err(|err| err.to_string())?;
        if billed_count % 100 == 0 {
            let day = std::time::Duration::from_secs(86_400);
            if let Err(err) = state::forget_handled(day) {
                log::warn!("could not forget old message ids: {err:?}");
            }
        }
        if billed {
            log::info!("billed order {} ({})", placed.order, msg.id());
        } else {
            log::info!("duplicate {}", msg.id());
        }
        Ok(())
    }
}

switchyard_sdk::export!(Billing);
