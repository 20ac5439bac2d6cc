// The JSON API of the control plane, as the console calls it: the bearer token the person
// entered (kept in sessionStorage: this tab only, gone when it closes; never a cookie), JSON in
// and out, and every refusal turned into an ApiError that says what the CP said.

const TOKEN_KEY = 'autonomy.token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A refused or failed call: the HTTP status (0: no answer), the API's error code and message. */
export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }

  /** One line for a person: "HTTP 403 forbidden: operator 'vera' has role viewer; …". */
  describe() {
    if (this.status === 0) return `The control plane could not be reached: ${this.message}`;
    return `HTTP ${this.status} ${this.code}: ${this.message}`;
  }
}

/** `?k=v&…` of the non-empty values of `params` (an object). */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** A fresh Idempotency-Key: a retried click cannot act twice. */
function idempotencyKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return 'ui-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** One call: resolves to the parsed JSON answer of a 2xx, else rejects with an ApiError. */
export async function call(method, path, body) {
  const headers = { Accept: 'application/json' };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const init = { method, headers, credentials: 'omit', cache: 'no-store', redirect: 'error' };
  if (method !== 'GET') {
    headers['Content-Type'] = 'application/json';
    headers['Idempotency-Key'] = idempotencyKey();
    init.body = JSON.stringify(body || {});
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'unreachable', String(e && e.message ? e.message : e));
  }
  const text = await resp.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!resp.ok) {
    const err = json && json.error ? json.error : {};
    throw new ApiError(
      resp.status,
      err.code || `http_${resp.status}`,
      err.message || text.slice(0, 300) || resp.statusText,
      json,
    );
  }
  return json;
}

export const get = (path, params) => call('GET', path + query(params));
export const post = (path, body) => call('POST', path, body);

/** The path of a plan's route: `/v1/rollouts/<id>` plus `suffix`. */
export const planPath = (id, suffix = '') => `/v1/rollouts/${encodeURIComponent(id)}${suffix}`;
