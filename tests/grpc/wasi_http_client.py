"""grpcio (gRPC's C core) as a client of the grpc-wstd guest, a plain wasi:http component
serving shop.Orders, through a Switchyard node.

Usage: wasi_http_client.py <stubs dir> <host:port>
Prints one JSON object with what each call saw; the Rust test asserts on it.
"""

import json
import sys
import time

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
import orders_pb2 as shop  # noqa: E402
import orders_pb2_grpc  # noqa: E402

orders = orders_pb2_grpc.OrdersStub(grpc.insecure_channel(sys.argv[2]))
seen = {}

items = [shop.Item(sku="tea", quantity=2), shop.Item(sku="cup", quantity=3)]
placed, call = orders.Place.with_call(
    shop.Order(customer="ada", items=items), metadata=[("x-order-note", "by wasi:http")], timeout=30
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
    seen["no_items"] = {"code": error.code().name, "details": error.details()}

started = time.monotonic()
seen["track"] = [
    {"step": p.step, "state": p.state, "at": time.monotonic() - started}
    for p in orders.Track(shop.Tracking(id="w-1", steps=3, interval_ms=400), timeout=30)
]

print(json.dumps(seen))
