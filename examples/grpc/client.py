"""A grpcio client of the gRPC example: places an order, follows it, and does both again
through the `front` service, which calls `orders` over the mesh.

Usage: client.py <host:port>   (with grpcio and grpcio-tools installed, see the README)
The stubs are generated from orders.proto, next to this file, into a temporary directory.
"""

import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

here = os.path.dirname(os.path.abspath(__file__))
stubs = tempfile.mkdtemp(prefix="orders-stubs-")
if protoc.main(["protoc", f"-I{here}", f"--python_out={stubs}", f"--grpc_python_out={stubs}",
                os.path.join(here, "orders.proto")]) != 0:
    sys.exit(f"could not generate the stubs of {here}/orders.proto")
sys.path.insert(0, stubs)

import orders_pb2 as shop  # noqa: E402
import orders_pb2_grpc  # noqa: E402

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8080"
orders = orders_pb2_grpc.OrdersStub(grpc.insecure_channel(target))
order = shop.Order(customer="ada", items=[shop.Item(sku="tea", quantity=2)])

placed = orders.Place(order, metadata=[("x-order-note", "gift wrap")], timeout=10)
print(f"Place: id={placed.id} total_items={placed.total_items} note={placed.note!r}")
for progress in orders.Track(shop.Tracking(id=placed.id, steps=3, interval_ms=300), timeout=10):
    print(f"Track: step {progress.step} {progress.state}")
try:
    orders.Place(shop.Order(customer="ada"), timeout=10)
except grpc.RpcError as error:
    print(f"Place without items: {error.code().name} {error.details()!r}")

placed = orders.PlaceUpstream(order, timeout=10)
print(f"PlaceUpstream: id={placed.id} note={placed.note!r}")
steps = [p.step for p in orders.TrackUpstream(shop.Tracking(id=placed.id, steps=3), timeout=10)]
print(f"TrackUpstream: steps {steps}")
