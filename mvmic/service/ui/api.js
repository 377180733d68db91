// The page's calls to the service's public API, with the bearer token the user typed (as any client sends it), and
// the service's refusals turned into messages that say who refused what and why.

export class ApiError extends Error {}

let token = "";
export function setToken(value) { token = value.trim(); }

// ``fetch`` of a route of this origin; ApiError with the service's reason (its {"detail"}) when it refuses.
export async function call(what, path, { method = "GET", body, type, accept } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (type) headers["Content-Type"] = type;
  if (accept) headers.Accept = accept;
  let response;
  try {
    response = await fetch(path, { method, body, headers });
  } catch (error) {
    throw new ApiError(`${what}: the service cannot be reached (${error.message})`);
  }
  if (!response.ok) throw new ApiError(`${what}: ${response.status} ${await reason(response)}`);
  return response;
}

async function reason(response) {
  const text = await response.text();
  try {
    const { detail } = JSON.parse(text);
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) return detail.map((item) => `${(item.loc || []).slice(-1)[0]}: ${item.msg}`).join("; ");
  } catch { /* not JSON: the status line says enough */ }
  return response.statusText || "refused";
}

// The durations of a response's Server-Timing header (W3C Server Timing), in ms by name.
export function serverTiming(response) {
  const timing = {};
  for (const entry of (response.headers.get("Server-Timing") || "").split(",")) {
    const [name, ...parameters] = entry.trim().split(";");
    const duration = parameters.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    if (name && duration) timing[name] = Number(duration.slice(4));
  }
  return timing;
}

// The first part of a multipart/related body (PS3.18 8.6.1.2, RFC 2387), as an ArrayBuffer.
export async function firstPart(response) {
  const type = response.headers.get("Content-Type") || "";
  const match = /boundary="?([^";]+)"?/i.exec(type);
  if (!match) throw new ApiError("the retrieve answer is not multipart/related");
  const body = new Uint8Array(await response.arrayBuffer());
  const delimiter = new TextEncoder().encode(`--${match[1]}`);
  const start = find(body, delimiter, 0);
  if (start < 0) throw new ApiError("the retrieve answer holds no part");
  const headersEnd = find(body, new TextEncoder().encode("\r\n\r\n"), start);
  const end = find(body, new TextEncoder().encode(`\r\n--${match[1]}`), headersEnd + 4);
  if (headersEnd < 0 || end < 0) throw new ApiError("the retrieve answer's first part is cut short");
  return body.slice(headersEnd + 4, end).buffer;
}

function find(haystack, needle, from) {
  outer: for (let i = from; i <= haystack.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
