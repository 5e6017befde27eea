// The __NAME__ service: a Switchyard guest in JavaScript, built with ComponentizeJS.
//
// `switchyard build` turns this module into a component of the `switchyard:runtime/service`
// world. Imports are the world's interfaces; the two exports are the world's `handler` and
// `subscriber`. A WIT `result` error arrives as a thrown value whose `payload` says why.
import * as config from "switchyard:runtime/config@0.1.9";
import { log } from "switchyard:runtime/log@0.1.9";
import * as messaging from "switchyard:runtime/messaging@0.1.9";
import * as rpc from "switchyard:runtime/rpc@0.1.9";
import * as state from "switchyard:runtime/state@0.1.9";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function text(status, body) {
  return {
    status,
    headers: [["content-type", "text/plain; charset=utf-8"]],
    body: encoder.encode(body),
  };
}

function reason(error) {
  const payload = error?.payload;
  if (payload === undefined) return String(error);
  return payload.val === undefined ? payload.tag ?? String(payload) : `${payload.tag}: ${payload.val}`;
}

// Answers the routes the manifest gives this service (HTTP and rpc alike).
export const handler = {
  handle(request) {
    const params = Object.fromEntries(request.params);
    const action = request.path.split("/").filter((part) => part)[1];

    // GET /__NAME__/hello/{who}
    if (action === "hello") {
      const greeting = config.get("greeting") ?? "Hello";
      return text(200, `${greeting}, ${params.who}!\n`);
    }

    // GET /__NAME__/ask/{service}/{who}: an rpc call to another service's hello route.
    if (action === "ask") {
      const { service, who } = params;
      try {
        const reply = rpc.call(service, `GET /${service}/hello/${who}`, new Uint8Array(), {
          timeoutMs: undefined,
          headers: [],
        });
        return text(reply.status, `${service} says: ${decoder.decode(reply.body)}`);
      } catch (error) {
        return text(502, `${service} did not answer: ${reason(error)}\n`);
      }
    }

    // POST /__NAME__/notes: the body goes to the queue this service consumes.
    if (action === "notes" && request.method === "POST") {
      try {
        const id = messaging.send("__NAME__-notes", {
          kind: "event",
          key: undefined,
          headers: [],
          replyTo: undefined,
          body: request.body,
        });
        return text(202, `queued ${id}\n`);
      } catch (error) {
        return text(503, `not queued: ${reason(error)}\n`);
      }
    }

    // GET /__NAME__/notes: the last note the consumer stored.
    if (action === "notes") {
      const entry = state.get("last-note");
      if (entry === undefined) return text(404, "no note yet\n");
      return text(200, `${decoder.decode(entry.value)}\n`);
    }

    return text(404, `no handler for ${request.method} ${request.path}\n`);
  },
};

// Consumes the `__NAME__-notes` queue: throwing asks for a redelivery.
export const subscriber = {
  onMessage(message) {
    try {
      state.put("last-note", message.body);
    } catch (error) {
      throw `cannot store note ${message.id}: ${reason(error)}`;
    }
    log("info", `note ${message.id} stored (${message.body.length} bytes)`);
  },
};
