"""grpcio (gRPC's C core) as a server of shop.Orders/Place and Track, for a guest to call.

Usage: orders_server.py <stubs dir> [<cert PEM> <key PEM> for TLS]
Listens on a free loopback port, prints `port <n>` when ready, serves until killed.
"""

import sys
from concurrent import futures

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
import orders_pb2 as shop  # noqa: E402
import orders_pb2_grpc  # noqa: E402


class Orders(orders_pb2_grpc.OrdersServicer):
    def Place(self, order, context):
        if not order.items:
            context.set_trailing_metadata([("x-order-problem", "no-items")])
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "python wants items")
        metadata = dict(context.invocation_metadata())
        return shop.Placed(
            id=f"py-{order.customer}",
            total_items=sum(item.quantity for item in order.items),
            # What the deadline the caller sent left (a gRPC server sees it as time_remaining).
            note=f"deadline {'set' if context.time_remaining() is not None else 'none'}"
            f" trace {'set' if 'traceparent' in metadata else 'none'}",
        )

    def Track(self, tracking, context):
        for step in range(1, tracking.steps + 1):
            yield shop.Progress(id=tracking.id, step=step, state=f"py step {step}")


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
orders_pb2_grpc.add_OrdersServicer_to_server(Orders(), server)
if len(sys.argv) > 3:
    with open(sys.argv[2], "rb") as cert, open(sys.argv[3], "rb") as key:
        credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
    port = server.add_secure_port("localhost:0", credentials)
else:
    port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(f"port {port}", flush=True)
server.wait_for_termination()
