// ossvend upload demo: four ways to get a file from the browser into OSS.
// Plain browser JavaScript, no dependencies, no build step.
'use strict';

// ---------------------------------------------------------------- OSS V4 signing (spec: signing.md §9)

const enc = new TextEncoder();

// RFC 3986 strict percent-encoding. encodeURIComponent leaves ! ' ( ) * alone,
// which OSS's canonical form encodes.
function pct(s) {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
}

// Same, but "/" stays literal (canonical URI and URL paths).
function pctPath(s) {
  return s.split('/').map(pct).join('/');
}

function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function sha256Hex(text) {
  return hex(await crypto.subtle.digest('SHA-256', enc.encode(text)));
}

async function hmac(key, text) {
  const k = await crypto.subtle.importKey('raw', typeof key === 'string' ? enc.encode(key) : key,
    { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  return crypto.subtle.sign('HMAC', k, enc.encode(text));
}

// "2026-11-23T18:00:49.123Z" -> "20261123T180049Z" (ISO basic, UTC).
function isoBasic(date) {
  return date.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
}

/**
 * OSS V4 header signature for one request.
 * headers: the headers that will be sent; x-oss-*, content-type and content-md5 are signed.
 * Returns the Authorization value plus the intermediate strings (shown in the steps on errors).
 */
async function signOssV4({ method, bucket, key, headers, accessKeyId, accessKeySecret, region, xOssDate }) {
  const day = xOssDate.slice(0, 8);
  const scope = `${day}/${region}/oss/aliyun_v4_request`;
  const signed = Object.entries(headers)
    .map(([k, v]) => [k.toLowerCase(), String(v).trim()])
    .filter(([k]) => k.startsWith('x-oss-') || k === 'content-type' || k === 'content-md5')
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const canonicalRequest = [
    method,
    pctPath(`/${bucket}/${key}`), // always /bucket/key, even for virtual-hosted URLs
    '', // no query parameters on a simple PutObject
    signed.map(([k, v]) => `${k}:${v}\n`).join(''),
    '', // no AdditionalHeaders
    headers['x-oss-content-sha256'] || 'UNSIGNED-PAYLOAD',
  ].join('\n');
  const stringToSign = ['OSS4-HMAC-SHA256', xOssDate, scope, await sha256Hex(canonicalRequest)].join('\n');
  let k = await hmac('aliyun_v4' + accessKeySecret, day);
  for (const part of [region, 'oss', 'aliyun_v4_request']) k = await hmac(k, part);
  const signature = hex(await hmac(k, stringToSign));
  return {
    authorization: `OSS4-HMAC-SHA256 Credential=${accessKeyId}/${scope},Signature=${signature}`,
    canonicalRequest,
    stringToSign,
  };
}

// Path-style (<endpoint>/<bucket>/<key>) for IP and localhost endpoints, which
// have no per-bucket host names; virtual-hosted (<bucket>.<host>/<key>) otherwise.
function objectUrl(endpoint, bucket, key) {
  const u = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(endpoint) ? endpoint : `https://${endpoint}`);
  const h = u.hostname;
  const ipOrLocal = h === 'localhost' || /^\d{1,3}(\.\d{1,3}){3}$/.test(h) || h.startsWith('[');
  return ipOrLocal
    ? `${u.protocol}//${u.host}/${bucket}/${pctPath(key)}`
    : `${u.protocol}//${bucket}.${u.host}/${pctPath(key)}`;
}

// Lower-case alphanumeric extension of up to 10 characters, like the server's key names.
function extensionOf(name) {
  const m = /\.([A-Za-z0-9]{1,10})$/.exec(name || '');
  return m && m.index > 0 ? '.' + m[1].toLowerCase() : '';
}

function randomId() {
  return crypto.randomUUID().replace(/-/g, '');
}

// ---------------------------------------------------------------- HTTP helpers

/** An upload failure with a stable code from ossvend, OSS or the browser. */
class UploadError extends Error {
  constructor({ source, code, message, status = 0, requestId = '' }) {
    super(message);
    Object.assign(this, { source, code, status, requestId });
  }
}

// Calls an ossvend route; on failure turns its JSON error ({code, message, request_id}) into an UploadError.
async function ossvendGet(path, params = {}) {
  const qs = new URLSearchParams(Object.entries(params).filter(([, v]) => v)).toString();
  const url = qs ? `${path}?${qs}` : path;
  const line = step(`GET ${url}`);
  let resp;
  try {
    resp = await fetch(url, { cache: 'no-store', headers: { Accept: 'application/json' } });
  } catch (e) {
    done(line, 'no answer', true);
    throw new UploadError({ source: 'browser', code: 'network_error', message: `ossvend is unreachable: ${e.message}` });
  }
  const text = await resp.text();
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON: reported below */ }
  done(line, resp.status, !resp.ok);
  if (!resp.ok) {
    throw new UploadError({
      source: 'ossvend',
      status: resp.status,
      code: body?.code || `http_${resp.status}`,
      message: body?.message || text.slice(0, 200) || resp.statusText,
      requestId: body?.request_id || resp.headers.get('X-Request-Id') || '',
    });
  }
  if (!body) throw new UploadError({ source: 'ossvend', status: resp.status, code: 'bad_response', message: 'ossvend did not answer JSON' });
  return body;
}

// POST/DELETE to an ossvend route with an optional JSON body; errors as in ossvendGet.
async function ossvendSend(method, path, json) {
  const line = step(`${method} ${path.replace(/uploads\/[^/]+/, 'uploads/…')}`);
  let resp;
  try {
    resp = await fetch(path, {
      method,
      cache: 'no-store',
      headers: json ? { Accept: 'application/json', 'Content-Type': 'application/json' } : { Accept: 'application/json' },
      body: json ? JSON.stringify(json) : undefined,
    });
  } catch (e) {
    done(line, 'no answer', true);
    throw new UploadError({ source: 'browser', code: 'network_error', message: `ossvend is unreachable: ${e.message}` });
  }
  const text = await resp.text();
  let body = null;
  try { body = JSON.parse(text); } catch { /* 204: no body */ }
  done(line, resp.status, !resp.ok);
  if (!resp.ok) {
    throw new UploadError({
      source: 'ossvend',
      status: resp.status,
      code: body?.code || `http_${resp.status}`,
      message: body?.message || text.slice(0, 200) || resp.statusText,
      requestId: body?.request_id || resp.headers.get('X-Request-Id') || '',
    });
  }
  return body;
}

// XMLHttpRequest rather than fetch: fetch has no upload progress events.
function xhrSend({ method, url, headers = {}, body }) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) showProgress(e.loaded, e.total); };
    xhr.onload = () => resolve(xhr);
    // A cross-origin request refused by CORS looks exactly like a network failure (status 0).
    xhr.onerror = () => reject(new UploadError({
      source: 'browser', code: 'network_error',
      message: `no answer from ${new URL(url).origin} (unreachable, or the bucket's CORS rules do not allow this page)`,
    }));
    xhr.ontimeout = xhr.onerror;
    xhr.send(body);
  });
}

// OSS answers errors as XML: <Error><Code>…</Code><Message>…</Message><RequestId>…</RequestId></Error>.
function ossError(xhr) {
  const doc = new DOMParser().parseFromString(xhr.responseText || '', 'application/xml');
  const tag = (name) => doc.getElementsByTagName(name)[0]?.textContent || '';
  const err = new UploadError({
    source: 'OSS',
    status: xhr.status,
    code: tag('Code') || `HTTP_${xhr.status}`,
    message: tag('Message') || xhr.statusText || 'OSS refused the upload',
    requestId: tag('RequestId') || xhr.getResponseHeader('x-oss-request-id') || '',
  });
  err.stringToSign = tag('StringToSign'); // OSS includes its own on SignatureDoesNotMatch
  return err;
}

async function sendToOss(req) {
  // The query of a presigned URL holds the signature and token: not shown.
  const line = step(`${req.method} ${req.url.split('?')[0]}${req.url.includes('?') ? '?…' : ''}`);
  const xhr = await xhrSend(req).catch((e) => { done(line, 'no answer', true); throw e; });
  done(line, xhr.status, xhr.status < 200 || xhr.status >= 300);
  if (xhr.status < 200 || xhr.status >= 300) throw ossError(xhr);
  return xhr;
}

// ---------------------------------------------------------------- the three methods

const grantPath = (grant, route) => `/v1/grants/${encodeURIComponent(grant)}/${route}`;

// 1. STS credentials: the page holds a temporary key and signs the PUT itself.
async function uploadWithSts(grant, file) {
  if (!crypto.subtle) {
    throw new UploadError({ source: 'browser', code: 'insecure_context', message: 'WebCrypto needs https or localhost' });
  }
  const c = await ossvendGet(grantPath(grant, 'credentials'));
  const key = `${c.Prefix}${randomId()}${extensionOf(file.name)}`;
  const region = c.Region.replace(/^oss-/, ''); // "oss-cn-hangzhou" is the SDK option form; scopes use "cn-hangzhou"
  const xOssDate = isoBasic(new Date());
  const headers = {
    'Content-Type': file.type || 'application/octet-stream',
    'x-oss-date': xOssDate, // browsers may not set Date; V4 signs x-oss-date instead
    'x-oss-content-sha256': 'UNSIGNED-PAYLOAD',
  };
  if (c.SecurityToken) headers['x-oss-security-token'] = c.SecurityToken;
  const sig = await signOssV4({
    method: 'PUT', bucket: c.Bucket, key, headers, region, xOssDate,
    accessKeyId: c.AccessKeyId, accessKeySecret: c.AccessKeySecret,
  });
  headers.Authorization = sig.authorization;
  try {
    // STS credentials cannot be made to carry a callback: the holder signs what it likes.
    await sendToOss({ method: 'PUT', url: objectUrl(c.OssEndpoint, c.Bucket, key), headers, body: file });
  } catch (e) {
    // What we signed, to compare with OSS's own string-to-sign (never the secret).
    if (e.code === 'SignatureDoesNotMatch') {
      step(`our string to sign:\n${sig.stringToSign}`, true);
      if (e.stringToSign) step(`OSS's string to sign:\n${e.stringToSign}`, true);
    }
    throw e;
  }
  return { key, xhr: null };
}

// 2. PostObject: OSS checks the signed policy (key, size range, content type) itself.
async function uploadWithPost(grant, file) {
  const p = await ossvendGet(grantPath(grant, 'post-policy'), { filename: file.name, content_type: file.type });
  const form = new FormData();
  for (const [k, v] of Object.entries(p.fields)) form.append(k, v); // order as given by the server
  form.append('file', file, file.name); // OSS ignores every field after the file: it must be last
  const xhr = await sendToOss({ method: 'POST', url: p.host, body: form });
  return { key: p.key || p.fields.key.replace('${filename}', file.name), xhr };
}

// 3. Presigned PUT: the URL is bound to one key and the signed headers.
async function uploadWithPresign(grant, file) {
  const p = await ossvendGet(grantPath(grant, 'presign'), { filename: file.name, content_type: file.type });
  const signedType = Object.keys(p.headers).some((k) => k.toLowerCase() === 'content-type');
  // Send exactly the signed headers: an untyped Blob keeps XHR from adding its own Content-Type.
  const body = signedType ? file : file.slice(0, file.size, '');
  const xhr = await sendToOss({ method: p.method || 'PUT', url: p.url, headers: p.headers, body });
  return { key: p.key, xhr };
}

// 4. Upload session (large files): ossvend opens a multipart upload, signs each part's URL, checks
// the parts and completes. The page holds no credential and never reads an ETag.
async function uploadWithSession(grant, file) {
  const PART = 5 * 1024 * 1024;
  const s = await ossvendSend('POST', grantPath(grant, 'uploads'), {
    filename: file.name, content_type: file.type || 'application/octet-stream', size: file.size, part_size: PART,
  });
  const base = `${grantPath(grant, 'uploads')}/${encodeURIComponent(s.upload)}`;
  try {
    for (let first = 1; first <= s.part_count; first += 1000) {
      const last = Math.min(first + 999, s.part_count);
      const { parts } = await ossvendGet(`${base}/parts`, { numbers: `${first}-${last}` });
      for (const p of parts) {
        const body = file.slice((p.number - 1) * s.part_size, p.number * s.part_size, '');
        await sendToOss({ method: 'PUT', url: p.url, headers: p.headers, body });
        showProgress(Math.min(p.number * s.part_size, file.size), file.size);
      }
    }
    const result = await ossvendSend('POST', `${base}/complete`);
    return { key: result.key, xhr: null, callback: result.callback };
  } catch (e) {
    await ossvendSend('DELETE', base).catch(() => {});
    throw e;
  }
}

const METHODS = {
  sts: { label: 'STS credentials', run: uploadWithSts },
  post: { label: 'a PostObject form', run: uploadWithPost },
  presign: { label: 'a presigned PUT', run: uploadWithPresign },
  session: { label: 'an upload session (large file)', run: uploadWithSession },
};

// With an upload callback, OSS answers the upload with the callback's reply
// (200 JSON; in `ossvend local` with no application, the verified upload event),
// or 203 CallbackFailed when the callback did not succeed (the object is stored).
function callbackOutcome(xhr) {
  if (!xhr) return { kind: 'none', text: 'no callback' };
  if (xhr.status === 203) {
    const e = ossError(xhr);
    return { kind: 'failed', text: `${e.code}: ${e.message}` };
  }
  const type = xhr.getResponseHeader('Content-Type') || '';
  if (type.startsWith('application/json') && xhr.responseText) {
    try {
      return { kind: 'json', text: JSON.stringify(JSON.parse(xhr.responseText)) };
    } catch { /* not JSON after all: treated as no callback */ }
  }
  return { kind: 'none', text: 'no callback' };
}

// An upload session's completion: ossvend relays OSS's answer as `callback: {status, body}`.
function sessionCallbackOutcome(c) {
  if (!c) return { kind: 'none', text: 'no callback' };
  if (c.status === 203) return { kind: 'failed', text: `CallbackFailed: ${typeof c.body === 'string' ? c.body : JSON.stringify(c.body)}` };
  return { kind: 'json', text: JSON.stringify(c.body) };
}

// ---------------------------------------------------------------- UI

const $ = (id) => document.getElementById(id);

function formatSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function el(tag, props = {}, ...children) {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
}

// The "Steps" list: one line per request, completed with its status when it returns.
function step(text, bad = false) {
  const li = el('li', { className: bad ? 'bad' : '', textContent: text });
  $('steps').append(li);
  return li;
}

function done(li, status, bad) {
  li.textContent += ` → ${status}`;
  if (bad) li.className = 'bad';
}

function showProgress(loaded, total) {
  const pct = total ? Math.round((loaded / total) * 100) : 0;
  $('progress').value = pct;
  $('progress-text').textContent = `${pct} % · ${formatSize(loaded)} of ${formatSize(total)}`;
}

function setResult(status, ...content) {
  const r = $('result');
  r.dataset.status = status;
  // Failures interrupt a screen reader; progress and success do not.
  r.setAttribute('role', status === 'error' ? 'alert' : 'status');
  r.replaceChildren(...content);
}

function showFileInfo() {
  const f = $('file').files[0];
  $('file-info').textContent = f ? `${f.name} · ${f.type || 'unknown type'} · ${formatSize(f.size)}` : 'No file chosen.';
}

let busy = false;

async function upload(method) {
  if (busy) return;
  const r = $('result');
  r.dataset.attempt = String(Number(r.dataset.attempt || 0) + 1);
  r.dataset.method = method;
  delete r.dataset.key;
  delete r.dataset.code;
  delete r.dataset.callback;
  $('steps').replaceChildren();
  const grant = $('grant').value.trim();
  const file = $('file').files[0];
  const { label, run } = METHODS[method];

  busy = true;
  document.querySelectorAll('.methods button').forEach((b) => { b.disabled = true; });
  $('upload-form').setAttribute('aria-busy', 'true');
  $('progress').value = 0;
  $('progress').classList.remove('failed');
  $('progress-text').textContent = 'Starting…';
  setResult('busy', `Uploading with ${label}…`);
  try {
    if (!grant) throw new UploadError({ source: 'page', code: 'no_grant', message: 'Enter a grant name.' });
    if (!file) throw new UploadError({ source: 'page', code: 'no_file', message: 'Choose a file first.' });
    const { key, xhr, callback } = await run(grant, file);
    showProgress(file.size, file.size);
    r.dataset.key = key;
    const cb = method === 'session' ? sessionCallbackOutcome(callback) : callbackOutcome(xhr);
    r.dataset.callback = cb.kind;
    setResult('ok',
      el('p', { className: 'headline' }, `Uploaded ${file.name} (${formatSize(file.size)}) with ${label}.`),
      el('p', {}, 'Object key: ', el('code', { id: 'result-key', textContent: key })),
      el('p', { className: cb.kind === 'failed' ? 'callback bad' : 'callback' },
        'Callback: ', el('code', { id: 'result-callback', textContent: cb.text })));
  } catch (e) {
    const err = e instanceof UploadError
      ? e
      : new UploadError({ source: 'page', code: 'unexpected', message: String(e?.message || e) });
    r.dataset.code = err.code;
    $('progress').classList.add('failed');
    $('progress-text').textContent = 'Failed';
    const meta = [`from ${err.source}`, err.status ? `HTTP ${err.status}` : '', err.requestId ? `request id ${err.requestId}` : '']
      .filter(Boolean).join(' · ');
    setResult('error',
      el('p', { className: 'headline' }, 'Upload failed: ', el('code', { id: 'result-code', textContent: err.code })),
      el('p', { textContent: err.message }),
      el('p', { className: 'meta', textContent: meta }));
  } finally {
    busy = false;
    document.querySelectorAll('.methods button').forEach((b) => { b.disabled = false; });
    $('upload-form').removeAttribute('aria-busy');
  }
}

function init() {
  const fromUrl = new URLSearchParams(location.search).get('grant');
  if (fromUrl) $('grant').value = fromUrl;
  // Keep ?grant= in step with the field so the address can be shared or reloaded.
  $('grant').addEventListener('change', () => {
    const u = new URL(location.href);
    u.searchParams.set('grant', $('grant').value.trim());
    history.replaceState(null, '', u);
  });
  $('file').addEventListener('change', showFileInfo);
  $('upload-form').addEventListener('submit', (e) => e.preventDefault());
  document.querySelectorAll('.methods button').forEach((b) => {
    b.addEventListener('click', () => upload(b.dataset.method));
  });
  showFileInfo();
  showLocalBanner();
}

// `ossvend local` answers /_local/status; a real deployment answers 404 and no banner appears.
async function showLocalBanner() {
  try {
    const r = await fetch('/_local/status', { cache: 'no-store', headers: { Accept: 'application/json' } });
    if (!r.ok) return;
    const s = await r.json();
    if (s.mode !== 'local') return;
    $('local-data-dir').textContent = s.data_dir || '';
    $('local-banner').hidden = false;
  } catch (_) {
    // Not local mode (or offline): nothing to show.
  }
}

if (typeof document !== 'undefined') init();
