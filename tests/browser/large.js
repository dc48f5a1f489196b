#!/usr/bin/env node
// The demo page's "Large file" method (upload sessions, issue 17) in Chromium against
// `ossvend local`: a 25 MiB file in 5 MiB parts through the native API with plain fetch/XHR,
// then the same method on a grant without `multipart = true` (refused, shown on the page); then,
// with plain fetch from the page, part URLs used for another part number, upload id or key, a
// wrong bound md5, and wrong part sizes (completion refused, upload aborted).
// Run by tests/it/upload_sessions.rs, which compares the stored bytes.
//
// usage: node large.js --ossvend URL
// Prints `REFUSALS <json>` and `LARGE <json>`: [{grant, status, key, code}], then the page's log; exits 0 when the
// page ran (the test judges), 1 when it could not.
'use strict';

const { chromium } = require('playwright-core');

// byte i = (i * 31 + seed * 7 + (i >> 8)) % 256, as the Rust side recomputes it.
function pattern(seed, size) {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) % 256;
  return b;
}

// Runs in the page: a 3-part session (100 KiB parts), its part URLs misused, then wrong part sizes.
async function refusalsInPage({ grant }) {
  const PART = 100 * 1024;
  const base = `/v1/grants/${grant}/uploads`;
  const json = async (r) => ({ status: r.status, body: await r.json().catch(() => null) });
  const open = () => fetch(base, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ filename: 'r.bin', content_type: 'application/octet-stream', size: 3 * PART - 7, part_size: PART }),
  }).then((r) => r.json());
  const parts = (s, q) => fetch(`${base}/${encodeURIComponent(s.upload)}/parts?${q}`).then((r) => r.json());
  const put = async (url, headers, size) => {
    const r = await fetch(url, { method: 'PUT', headers, body: new Blob([new Uint8Array(size).fill(7)]) });
    const code = (/<Code>([^<]*)<\/Code>/.exec(await r.text()) || [])[1] || 'OK';
    return `${r.status} ${code}`;
  };
  const out = {};
  const s = await open();
  const [p1] = (await parts(s, 'numbers=1')).parts;
  out.otherNumber = await put(p1.url.replace('partNumber=1&', 'partNumber=2&'), p1.headers, PART);
  out.otherUpload = await put(p1.url.replace(s.upload_id, '0123456789ABCDEF0123456789ABCDEF'), p1.headers, PART);
  out.otherKey = await put(p1.url.replace(s.key, 'large/other.bin'), p1.headers, PART);
  const wrongMd5 = btoa(String.fromCharCode(...new Uint8Array(16)));
  const [m1] = (await parts(s, `numbers=1&md5=${encodeURIComponent(wrongMd5)}`)).parts;
  out.wrongMd5 = await put(m1.url, m1.headers, PART);
  // Part 1 one byte over part_size, the rest so that the total is right: refused and aborted.
  const all = (await parts(s, 'numbers=1-3')).parts;
  out.parts = [await put(all[0].url, all[0].headers, PART + 1), await put(all[1].url, all[1].headers, PART - 1),
    await put(all[2].url, all[2].headers, PART - 7)];
  const done = await json(await fetch(`${base}/${encodeURIComponent(s.upload)}/complete`, { method: 'POST' }));
  out.complete = `${done.status} ${done.body && done.body.code}`;
  const again = await json(await fetch(`${base}/${encodeURIComponent(s.upload)}`, { method: 'DELETE' }));
  out.abortAfter = `${again.status} ${again.body && again.body.oss_code}`;
  return out;
}

async function main() {
  const i = process.argv.indexOf('--ossvend');
  if (i < 0 || !process.argv[i + 1]) {
    console.error('usage: node large.js --ossvend URL');
    process.exit(2);
  }
  const ossvend = process.argv[i + 1].replace(/\/$/, '');
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking'],
  });
  const out = [];
  const log = [];
  try {
    const page = await browser.newPage();
    page.on('console', (m) => log.push(`[console.${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => log.push(`[pageerror] ${e.message}`));
    for (const grant of ['large-files', 'browser-upload']) {
      await page.goto(`${ossvend}/?grant=${grant}`);
      await page.fill('#grant', grant);
      await page.setInputFiles('#file', {
        name: 'movie.bin', mimeType: 'application/octet-stream', buffer: pattern(3, 25 * 1024 * 1024),
      });
      const attempt = Number(await page.getAttribute('#result', 'data-attempt'));
      await page.click('#upload-session');
      await page.waitForFunction(
        (n) => {
          const r = document.getElementById('result');
          return Number(r.dataset.attempt) === n + 1 && (r.dataset.status === 'ok' || r.dataset.status === 'error');
        },
        attempt,
        { timeout: 120000 },
      );
      const r = await page.$eval('#result', (e) => ({ ...e.dataset }));
      const steps = await page.$$eval('#steps li', (lis) => lis.map((l) => l.textContent));
      const callbackText = await page.$eval('#result-callback', (e) => e.textContent).catch(() => null);
      out.push({
        grant, status: r.status, key: r.key || null, code: r.code || null, steps: steps.length,
        callback: r.callback || null, callback_text: callbackText,
      });
      log.push(...steps.map((s) => `[step ${grant}] ${s}`));
    }
    // Refusals with plain fetch from the page (anonymous grant: the other-caller case is tested in Rust).
    await page.goto(`${ossvend}/?grant=large-files`);
    const refusals = await page.evaluate(refusalsInPage, { grant: 'large-files' });
    console.log(`REFUSALS ${JSON.stringify(refusals)}`);
    console.log(`LARGE ${JSON.stringify(out)}`);
    for (const line of log) console.log(line);
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
