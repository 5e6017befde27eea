"""The __NAME__ service: a Switchyard guest in Python, built with componentize-py.

`switchyard build` turns this file into a component of the `switchyard:runtime/service`
world; `wit_world` is generated from that world at build time (run
`componentize-py -d <wit> -w switchyard:runtime/service bindings .` for your editor).
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, log, messaging, rpc, state, types


def text(status: int, body: str) -> types.Response:
    return types.Response(
        status=status,
        headers=[("content-type", "text/plain; charset=utf-8")],
        body=body.encode(),
    )


class Handler(exports.Handler):
    """Answers the routes the manifest gives this service (HTTP and rpc alike)."""

    def handle(self, request: types.Request) -> types.Response:
        params = dict(request.params)
        action = request.path.strip("/").split("/")[1:2]

        # GET /__NAME__/hello/{who}
        if action == ["hello"]:
            greeting = config.get("greeting") or "Hello"
            return text(200, f"{greeting}, {params['who']}!\n")

        # GET /__NAME__/ask/{service}/{who}: an rpc call to another service's hello route.
        if action == ["ask"]:
            service, who = params["service"], params["who"]
            options = rpc.CallOptions(timeout_ms=None, headers=[])
            try:
                reply = rpc.call(service, f"GET /{service}/hello/{who}", b"", options)
            except Err as err:
                return text(502, f"{service} did not answer: {err.value}\n")
            return text(reply.status, f"{service} says: {reply.body.decode()}")

        # POST /__NAME__/notes: the body goes to the queue this service consumes.
        if action == ["notes"] and request.method == "POST":
            note = messaging.OutgoingMessage(
                kind=types.MessageKind.EVENT, key=None, headers=[], reply_to=None, body=request.body
            )
            try:
                message_id = messaging.send("__NAME__-notes", note)
            except Err as err:
                return text(503, f"not queued: {err.value}\n")
            return text(202, f"queued {message_id}\n")

        # GET /__NAME__/notes: the last note the consumer stored.
        if action == ["notes"]:
            entry = state.get("last-note")
            if entry is None:
                return text(404, "no note yet\n")
            return text(200, entry.value.decode() + "\n")

        return text(404, f"no handler for {request.method} {request.path}\n")


class Subscriber(exports.Subscriber):
    """Consumes the `__NAME__-notes` queue: raising `Err` asks for a redelivery."""

    def on_message(self, message: types.Message) -> None:
        try:
            state.put("last-note", message.body)
        except Err as err:
            raise Err(f"cannot store note {message.id}: {err.value}")
        log.log(log.Level.INFO, f"note {message.id} stored ({len(message.body)} bytes)")
