#!/usr/bin/env node
// Real-browser end-to-end test of the demo page (static/index.html + app.js).
//
// Drives Debian's Chromium through playwright-core: opens the page served by
// ossvend, uploads with each of the three methods to the OSS sink (another
// origin, so CORS is real), then checks through the sink's listing that the
// stored bytes are the uploaded ones, and that refused uploads show their error
// code on the page and store nothing.
//
// usage: node e2e.js --ossvend URL --oss URL [--grant NAME] [--short-grant NAME]
//                    [--listing sink|local] [--callbacks none|expect] [--artifacts DIR]
//   (or OSSVEND_URL, FAKE_OSS_URL, GRANT, SHORT_GRANT, LISTING, CALLBACKS, ARTIFACTS_DIR;
//    CHROMIUM overrides /usr/bin/chromium)
// The grant must allow image/png only and cap PostObject uploads below 8 KiB; the
// short grant is the same with upload_expires = "1s". --listing says where stored
// objects are read back: /_local/objects on the OSS endpoint (the embedded sink run
// in-process by tests/browser.rs), or `ossvend local`'s /_local/objects on the
// ossvend origin. --callbacks expect: the grant has an upload callback answered
// with the verified event (`ossvend local` with no [webhooks] url), so the page must
// show, for the form and presigned PUT, the event with the real size, ETag (MD5 of the
// bytes) and type, and "no callback" for STS; none (default): "no callback" for all.
// Prints one line per case and "browser: N passed, M failed"; exits 1 on any failure.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

function args() {
  const out = {
    ossvend: process.env.OSSVEND_URL,
    oss: process.env.FAKE_OSS_URL,
    grant: process.env.GRANT || 'browser-upload',
    'short-grant': process.env.SHORT_GRANT || 'short-lived',
    listing: process.env.LISTING || 'sink',
    callbacks: process.env.CALLBACKS || 'none',
    artifacts: process.env.ARTIFACTS_DIR || 'test-artifacts',
  };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '');
    if (!(name in out) || argv[i + 1] === undefined) {
      console.error(`unknown or incomplete argument ${argv[i]}`);
      process.exit(2);
    }
    out[name] = argv[i + 1];
  }
  if (!out.ossvend || !out.oss) {
    console.error('usage: node e2e.js --ossvend URL --oss URL [--grant NAME] [--artifacts DIR]');
    process.exit(2);
  }
  out.ossvend = out.ossvend.replace(/\/$/, '');
  out.oss = out.oss.replace(/\/$/, '');
  return out;
}

// Bytes that start like a PNG (signature + IHDR) with a per-case tail, so each stored object is distinct.
function pngLike(label, size) {
  const head = Buffer.from('89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489', 'hex');
  const tail = Buffer.from(`ossvend browser e2e: ${label}\n`);
  const buf = Buffer.alloc(Math.max(size, head.length + tail.length), 0x2e);
  head.copy(buf, 0);
  tail.copy(buf, head.length);
  return buf;
}

// Where stored objects are read back from (set in main()).
let listing = null;

async function fakeObjects() {
  const r = await fetch(listing.objects);
  if (!r.ok) throw new Error(`GET ${listing.objects} -> ${r.status}`);
  return (await r.json()).objects;
}

async function storedBytes(bucket, key) {
  const url = `${listing.object}/${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
  const r = await fetch(url);
  if (!r.ok) throw new Error(`GET ${url} -> ${r.status}`);
  return Buffer.from(await r.arrayBuffer());
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const METHODS = ['sts', 'post', 'presign'];

// What the page must show as the callback result of an upload of `bytes` to `key`
// with `method`; returns an error text, or '' when it is right.
function checkCallback(expectEvents, method, shown, key, bytes) {
  const carries = expectEvents && method !== 'sts'; // STS uploads cannot be made to carry one
  if (!carries) return shown.kind === 'none' && shown.text === 'no callback' ? '' : `expected "no callback", page shows ${shown.kind}: ${shown.text}`;
  if (shown.kind !== 'json') return `expected the callback's JSON, page shows ${shown.kind}: ${shown.text}`;
  let ev;
  try { ev = JSON.parse(shown.text); } catch (e) { return `callback text is not JSON: ${shown.text}`; }
  const md5 = crypto.createHash('md5').update(bytes).digest('hex').toUpperCase();
  const want = { event: 'upload.completed', key, size: bytes.length, etag: md5, content_type: 'image/png' };
  const wrong = Object.entries(want).filter(([k, v]) => ev[k] !== v).map(([k, v]) => `${k}=${JSON.stringify(ev[k])} (want ${JSON.stringify(v)})`);
  return wrong.length ? `callback event differs: ${wrong.join(', ')}` : '';
}

async function main() {
  const opt = args();
  listing = opt.listing === 'local'
    ? { objects: `${opt.ossvend}/_local/objects?format=json`, object: `${opt.ossvend}/_local/objects` }
    : { objects: `${opt.oss}/_local/objects?format=json`, object: `${opt.oss}/_local/objects` };
  fs.mkdirSync(opt.artifacts, { recursive: true });
  const results = [];
  const record = (name, ok, detail = '') => {
    results.push(ok);
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${detail ? ` — ${detail}` : ''}`);
  };

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 900, height: 900 } });
    const pageLog = [];
    page.on('console', (m) => pageLog.push(`[console.${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => pageLog.push(`[pageerror] ${e.message}`));

    const pageUrl = `${opt.ossvend}/?grant=${encodeURIComponent(opt.grant)}`;
    const resp = await page.goto(pageUrl);
    const title = await page.title();
    record('page loads from ossvend', resp.ok() && /ossvend/.test(title) &&
      (await page.inputValue('#grant')) === opt.grant, `${resp.status()} "${title}"`);

    // Chooses a file, clicks a method, waits for the page to finish this attempt.
    async function uploadVia(method, file) {
      await page.setInputFiles('#file', file);
      const before = Number(await page.getAttribute('#result', 'data-attempt'));
      await page.click(`#upload-${method}`);
      const done = `#result[data-attempt="${before + 1}"]:not([data-status="busy"])`;
      await page.waitForSelector(done, { timeout: 30000 });
      const r = await page.$eval('#result', (e) => ({
        status: e.dataset.status, key: e.dataset.key || '', code: e.dataset.code || '', text: e.innerText,
      }));
      r.steps = await page.$eval('#steps', (e) => e.innerText);
      return r;
    }

    const stored = [];
    for (const method of METHODS) {
      const name = `upload via ${method}`;
      try {
        const bytes = pngLike(method, 1500);
        const r = await uploadVia(method, { name: `pixel-${method}.png`, mimeType: 'image/png', buffer: bytes });
        const shownKey = await page.$eval('#result', (e) => e.querySelector('#result-key')?.textContent || '');
        if (r.status !== 'ok' || !r.key || shownKey !== r.key) {
          record(name, false, `page says ${r.status}: ${r.text.replace(/\s+/g, ' ')}\n${r.steps}`);
          continue;
        }
        // The object is listed by the fake, under the key the page shows, with the exact bytes.
        const obj = (await fakeObjects()).find((o) => o.key === r.key);
        if (!obj) { record(name, false, `page shows ${r.key} but the OSS sink has no such object`); continue; }
        const got = await storedBytes(obj.bucket, r.key);
        const same = got.equals(bytes);
        record(name, same, same ? `${obj.bucket}/${r.key} (${got.length} bytes, identical)` :
          `stored ${got.length} bytes differ from the ${bytes.length} uploaded`);
        const shownCb = await page.$eval('#result', (e) => ({
          kind: e.dataset.callback || '', text: e.querySelector('#result-callback')?.textContent || '',
        }));
        const cbError = checkCallback(opt.callbacks === 'expect', method, shownCb, r.key, bytes);
        record(`callback shown after ${method}`, !cbError, cbError || `Callback: ${shownCb.text.slice(0, 160)}`);
        if (same) stored.push(r.key);
        if (method === METHODS[METHODS.length - 1] && same) {
          const shot = path.join(opt.artifacts, 'demo-upload.png');
          await page.screenshot({ path: shot, fullPage: true });
          console.log(`     screenshot: ${path.resolve(shot)}`);
        }
      } catch (e) {
        record(name, false, String(e && e.stack || e));
      }
    }

    // Refusals: the page shows the code (from OSS or ossvend) and nothing is stored.
    const refusals = [
      { name: 'too large via post → EntityTooLarge', method: 'post', code: 'EntityTooLarge',
        file: { name: 'big.png', mimeType: 'image/png', buffer: pngLike('too large', 8192) } },
      { name: 'disallowed type via post → content_type_not_allowed', method: 'post', code: 'content_type_not_allowed',
        file: { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('not an image\n') } },
      { name: 'disallowed type via presign → content_type_not_allowed', method: 'presign',
        code: 'content_type_not_allowed',
        file: { name: 'page.html', mimeType: 'text/html', buffer: Buffer.from('<p>not an image</p>\n') } },
      // The next three get past ossvend and are refused by OSS itself (fake or local sink).
      // Credentials narrowed to uploads/ used for another prefix: the session policy says no.
      { name: 'other prefix via sts → AccessDenied', method: 'sts', code: 'AccessDenied',
        file: { name: 'elsewhere.png', mimeType: 'image/png', buffer: pngLike('other prefix', 900) },
        route: ['**/v1/grants/*/credentials*', async (route) => {
          const resp = await route.fetch();
          const body = await resp.json();
          body.Prefix = 'elsewhere/';
          await route.fulfill({ response: resp, json: body });
        }] },
      // The form's Content-Type changed after signing: the policy's condition fails at OSS.
      { name: 'wrong type at OSS via post → AccessDenied', method: 'post', code: 'AccessDenied',
        file: { name: 'retyped.png', mimeType: 'image/png', buffer: pngLike('retyped', 900) },
        route: [(url) => opt.oss.startsWith(`${url.protocol}//${url.host}`), async (route) => {
          const req = route.request();
          if (req.method() !== 'POST') return route.continue();
          const body = req.postDataBuffer().toString('latin1')
            .replace(/(name="Content-Type"\r\n\r\n)image\/png/, '$1image/gif');
          await route.continue({ postData: Buffer.from(body, 'latin1') });
        }] },
      // A presigned URL valid for 1 s, used 2.5 s later.
      { name: 'expired presigned URL → AccessDenied', method: 'presign', code: 'AccessDenied',
        grant: opt['short-grant'],
        file: { name: 'late.png', mimeType: 'image/png', buffer: pngLike('expired', 900) },
        route: [(url) => opt.oss.startsWith(`${url.protocol}//${url.host}`), async (route) => {
          if (route.request().method() === 'PUT') await sleep(2500);
          await route.continue();
        }] },
    ];
    for (const c of refusals) {
      try {
        const before = (await fakeObjects()).length;
        if (c.route) await page.route(...c.route);
        if (c.grant) await page.fill('#grant', c.grant);
        let r;
        try {
          r = await uploadVia(c.method, c.file);
        } finally {
          if (c.route) await page.unroute(c.route[0]);
          if (c.grant) await page.fill('#grant', opt.grant);
        }
        const shownCode = await page.$eval('#result', (e) => e.querySelector('#result-code')?.textContent || '');
        const after = await fakeObjects();
        const leaked = after.filter((o) => !stored.includes(o.key));
        const ok = r.status === 'error' && r.code === c.code && shownCode === c.code && r.text.includes(c.code) &&
          after.length === before && leaked.length === 0;
        if (c.code === 'EntityTooLarge') {
          await page.screenshot({ path: path.join(opt.artifacts, 'demo-error.png'), fullPage: true });
        }
        record(c.name, ok, ok ? `page shows ${c.code}` :
          `page says ${r.status} code=${r.code}: ${r.text.replace(/\s+/g, ' ')}; objects ${before} -> ${after.length}` +
          (leaked.length ? `; unexpected: ${leaked.map((o) => o.key).join(', ')}` : ''));
      } catch (e) {
        record(c.name, false, String(e && e.stack || e));
      }
    }

    // A grant that does not exist: ossvend's JSON error code reaches the page.
    try {
      await page.fill('#grant', 'no-such-grant');
      const r = await uploadVia('sts', { name: 'x.png', mimeType: 'image/png', buffer: pngLike('unknown', 100) });
      record('unknown grant → unknown_grant', r.status === 'error' && r.code === 'unknown_grant',
        `page says ${r.status} code=${r.code}`);
      await page.fill('#grant', opt.grant);
    } catch (e) {
      record('unknown grant → unknown_grant', false, String(e && e.stack || e));
    }

    if (results.includes(false) && pageLog.length) console.log(`page log:\n  ${pageLog.join('\n  ')}`);
  } finally {
    await browser.close();
  }
  const passed = results.filter(Boolean).length;
  const failed = results.length - passed;
  console.log(`browser: ${passed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
}

main().catch((e) => {
  console.error('browser: aborted:', e && e.stack || e);
  console.log('browser: 0 passed, 1 failed');
  process.exit(1);
});
