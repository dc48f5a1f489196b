#!/usr/bin/env node
// The demo page's "Large file" method (upload sessions, issue 17) in Chromium against
// `ossvend local`: a 25 MiB file in 5 MiB parts through the native API with plain fetch/XHR,
// then the same method on a grant without `multipart = true` (refused, shown on the page).
// Run by tests/upload_sessions.rs, which compares the stored bytes.
//
// usage: node large.js --ossvend URL
// Prints `LARGE <json>`: [{grant, status, key, code}], then the page's log; exits 0 when the
// page ran (the test judges), 1 when it could not.
'use strict';

const { chromium } = require('playwright-core');

// byte i = (i * 31 + seed * 7 + (i >> 8)) % 256, as the Rust side recomputes it.
function pattern(seed, size) {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) % 256;
  return b;
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
      out.push({ grant, status: r.status, key: r.key || null, code: r.code || null, steps: steps.length });
      log.push(...steps.map((s) => `[step ${grant}] ${s}`));
    }
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
