"""grpcio (gRPC's C core) as a client of the grpc-orders guest through a Switchyard node.

Usage: orders_client.py <stubs dir> <host:port> [<CA PEM> for TLS]
Prints one JSON object with what each call saw; the Rust test asserts on it.
"""

import json
import sys
import time

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
import orders_pb2 as shop  # noqa: E402
import orders_pb2_grpc  # noqa: E402

target = sys.argv[2]
if len(sys.argv) > 3:
    with open(sys.argv[3], "rb") as ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
    channel = grpc.secure_channel(target.replace("127.0.0.1", "localhost"), credentials)
else:
    channel = grpc.insecure_channel(target)
orders = orders_pb2_grpc.OrdersStub(channel)
seen = {}


def failure(error):
    return {
        "code": error.code().name,
        "details": error.details(),
        "trailing": {key: value for key, value in (error.trailing_metadata() or ())},
    }


items = [shop.Item(sku="tea", quantity=2), shop.Item(sku="cup", quantity=1)]
placed, call = orders.Place.with_call(
    shop.Order(customer="ada", items=items), metadata=[("x-order-note", "gift wrap")], timeout=30
)
seen["place"] = {
    "id": placed.id,
    "total_items": placed.total_items,
    "note": placed.note,
    "code": call.code().name,
}

try:
    orders.Place(shop.Order(customer="ada"), timeout=30)
except grpc.RpcError as error:
    seen["no_items"] = failure(error)

started = time.monotonic()
try:
    orders.Place(shop.Order(customer="slowpoke", items=items), timeout=0.5)
except grpc.RpcError as error:
    seen["slow"] = failure(error) | {"seconds": time.monotonic() - started}

try:
    orders.Place(shop.Order(customer="gremlin", items=items), timeout=30)
except grpc.RpcError as error:
    seen["gremlin"] = failure(error)

try:
    channel.unary_unary("/shop.Orders/Cancel")(b"", timeout=30)
except grpc.RpcError as error:
    seen["unknown_method"] = failure(error)

started = time.monotonic()
seen["track"] = [
    {"step": p.step, "state": p.state, "at": time.monotonic() - started}
    for p in orders.Track(shop.Tracking(id="o-1", steps=3, interval_ms=400), timeout=30)
]

lost = []
try:
    for p in orders.Track(shop.Tracking(id="lost", steps=3, interval_ms=300), timeout=30):
        lost.append(p.step)
except grpc.RpcError as error:
    seen["lost"] = dict(failure(error), steps=lost)

try:
    list(orders.Track(shop.Tracking(id="o-2", steps=5000), timeout=30))
except grpc.RpcError as error:
    seen["too_many_steps"] = failure(error)

# Through the mesh: the `front` service calls `orders` with the SDK's grpc::call.
placed = orders.PlaceUpstream(shop.Order(customer="bob", items=items), timeout=30)
seen["upstream"] = {"id": placed.id, "note": placed.note}
try:
    orders.PlaceUpstream(shop.Order(customer="bob"), timeout=30)
except grpc.RpcError as error:
    seen["upstream_no_items"] = failure(error)
started = time.monotonic()
try:
    orders.PlaceUpstream(shop.Order(customer="slowpoke", items=items), timeout=0.5)
except grpc.RpcError as error:
    seen["upstream_slow"] = failure(error) | {"seconds": time.monotonic() - started}

# A server-streaming method called through the mesh with grpc::call_streaming.
seen["track_upstream"] = [
    p.step for p in orders.TrackUpstream(shop.Tracking(id="o-3", steps=3), timeout=30)
]
try:
    list(orders.TrackUpstream(shop.Tracking(id="lost", steps=3), timeout=30))
except grpc.RpcError as error:
    seen["track_upstream_lost"] = failure(error)

print(json.dumps(seen))
