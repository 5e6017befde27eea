//! An order service that keeps its orders in its own state and announces each with an event
//! in the same transaction (the transactional outbox); also the routes the state tests drive.
//!
//! - `POST /orders/{id}` with `{"total_cents": n}`: stores the order and publishes
//!   `{"order": id, "total_cents": n}` (key: the id) to the topic `config.events` (default
//!   `order-events`), in one commit. `201` with the event's id; `409` if the order exists.
//! - `GET /orders/{id}`: the stored order as JSON, `404` if none.
//! - `GET /orders`: every order id, one per line, in key order (a paged scan).
//! - `PUT /kv/{key}`: stores the body (`200` with the version); `GET /kv/{key}`: the body,
//!   header `x-version`; `DELETE /kv/{key}`: `removed` or `absent`.
//! - `POST /conflict/{key}`: reads the key in a transaction, writes it outside that
//!   transaction, then commits the transaction: answers the typed error it gets.
//! - `POST /count/{key}`: adds one to a JSON counter with `state::transact` (which retries on
//!   conflicts); answers the new count.
use serde::{Deserialize, Serialize};
use switchyard_sdk::{Error, Request, Response, Service, config, messaging, state};

#[derive(Serialize, Deserialize)]
struct Order {
    id: String,
    total_cents: u64,
}

#[derive(Deserialize)]
struct Placed {
    total_cents: u64,
}

#[derive(Serialize)]
struct OrderPlaced<'a> {
    order: &'a str,
    total_cents: u64,
}

struct Orders;

fn param<'a>(req: &'a Request, name: &str) -> Result<&'a str, Error> {
    req.param(name)
        .ok_or_else(|| Error::bad_request(format!("the route has no `{name}`")))
}

impl Service for Orders {
    fn handle(req: Request) -> Result<Response, Error> {
        let path = req.path().to_owned();
        match (req.method(), path.split('/').nth(1).unwrap_or("")) {
            ("POST", "orders") => place(&req),
            ("GET", "orders") if req.param("id").is_some() => {
                let id = param(&req, "id")?;
                match state::get_json::<Order>(&format!("order/{id}"))? {
                    Some(order) => Ok(Response::json(&order)),
                    None => Err(Error::not_found(format!("no order {id}"))),
                }
            }
            ("GET", "orders") => {
                let mut ids = String::new();
                for entry in state::scan("order/") {
                    let (key, _) = entry?;
                    ids.push_str(key.trim_start_matches("order/"));
                    ids.push('\n');
                }
                Ok(Response::text(ids))
            }
            ("PUT", "kv") => {
                let version = state::put(param(&req, "key")?, req.body())?;
                Ok(Response::text(version.to_string()))
            }
            ("GET", "kv") => {
                let key = param(&req, "key")?;
                let mut tx = state::Transaction::new();
                match tx.get(key)? {
                    Some(value) => Ok(Response::new(200).with_body(value)),
                    None => Err(Error::not_found(format!("no key {key}"))),
                }
            }
            ("DELETE", "kv") => Ok(Response::text(if state::delete(param(&req, "key")?)? {
                "removed"
            } else {
                "absent"
            })),
            ("POST", "conflict") => {
                let key = param(&req, "key")?;
                let mut tx = state::Transaction::new();
                tx.get(key)?;
                state::put(key, "interloper")?;
                tx.put(key, "mine");
                match tx.commit() {
                    Ok(_) => Ok(Response::text("committed")),
                    Err(state::StateError::Conflict(why)) => {
                        Ok(Response::text(format!("conflict: {why}")).with_status(409))
                    }
                    Err(other) => Err(other.into()),
                }
            }
            ("POST", "count") => {
                let key = param(&req, "key")?;
                let count = state::transact(|tx| {
                    let count = tx.get_json::<u64>(key)?.unwrap_or(0) + 1;
                    tx.put_json(key, &count)?;
                    Ok(count)
                })?;
                Ok(Response::text(count.to_string()))
            }
            _ => Err(Error::not_found("no such route")),
        }
    }
}

fn place(req: &Request) -> Result<Response, Error> {
    let id = param(req, "id")?;
    let placed: Placed = req.json()?;
    let events = config::get("events").unwrap_or_else(|| "order-events".into());
    let key = format!("order/{id}");
    let ids = state::transact(|tx| {
        if tx.get(&key)?.is_some() {
            return Err(Error::new(409, format!("order {id} exists")));
        }
        tx.put_json(
            &key,
            &Order {
                id: id.to_owned(),
                total_cents: placed.total_cents,
            },
        )?;
        let event = OrderPlaced {
            order: id,
            total_cents: placed.total_cents,
        };
        tx.publish(&events, messaging::Message::json(&event)?.key(id));
        Ok(())
    });
    ids?;
    Ok(Response::text(format!("order {id} placed\n")).with_status(201))
}

switchyard_sdk::export!(Orders);
