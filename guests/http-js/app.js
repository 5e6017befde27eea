// A plain wasi:http/proxy component, as ComponentizeJS builds a fetch-event handler: nothing
// Switchyard. `fetch("http://hello/...")` leaves through wasi:http's outgoing handler.
addEventListener("fetch", (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const url = new URL(request.url);
  const headers = { "content-type": "text/plain; charset=utf-8", "x-guest-language": "js" };
  const via = url.pathname.match(/^\/js-http\/via\/([^/]+)\/(.+)$/);
  if (via) {
    const [, service, rest] = via;
    // A version range travels as a header: a WHATWG URL cannot carry `http://hello@1/`.
    const range = request.headers.get("x-want-version");
    const init = range ? { headers: { "x-switchyard-version": range } } : {};
    const reply = await fetch(`http://${service}/${rest}`, init);
    return new Response(`${service} said (${reply.status}): ${await reply.text()}`, { headers });
  }
  return new Response(`Hello from JavaScript: ${request.method} ${url.pathname}\n`, { headers });
}
