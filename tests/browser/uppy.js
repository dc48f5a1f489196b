#!/usr/bin/env node
// The real Uppy (@uppy/core + @uppy/aws-s3, pinned in package.json) in Chromium against
// ossvend's Companion-compatible S3 API (issue 17). Run by tests/it/upload_sessions.rs.
//
// Bundles Uppy with esbuild, serves it from a page on its own loopback server
// (http://localhost:<port>: another origin than ossvend and the sink, so CORS is real), and uploads
// two generated files with `companionEndpoint = <ossvend>/v1/grants/<grant>/companion`:
// a small one (GET /s3/params, a PostObject form) and a 12 MiB one in multipart
// (shouldUseMultipart above 5 MiB, Uppy's 5 MiB parts). Bytes: byte i of seed s is
// (i * 31 + s * 7 + (i >> 8)) % 256; the Rust test compares them at the sink.
//
// usage: node uppy.js --ossvend URL --grant NAME
// Prints `UPPY <json>` with Uppy's result ({successful:[{name,key,size}], failed:[…]}) and the
// page's log; exits 0 when the page ran (the test judges), 1 when it could not.
'use strict';

const http = require('http');
const { chromium } = require('playwright-core');
const esbuild = require('esbuild');

function args() {
  const out = { ossvend: '', grant: 'uppy' };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  if (!out.ossvend) {
    console.error('usage: node uppy.js --ossvend URL --grant NAME');
    process.exit(2);
  }
  return out;
}

function bundle() {
  const r = esbuild.buildSync({
    stdin: {
      contents: 'import Uppy from "@uppy/core"; import AwsS3 from "@uppy/aws-s3"; window.Uppy = Uppy; window.AwsS3 = AwsS3;',
      resolveDir: __dirname,
    },
    bundle: true,
    format: 'iife',
    platform: 'browser',
    write: false,
    logLevel: 'error',
  });
  return r.outputFiles[0].text;
}

// Runs in the page.
async function runUppy({ endpoint }) {
  const bytes = (seed, size) => {
    const a = new Uint8Array(size);
    for (let i = 0; i < size; i++) a[i] = (i * 31 + seed * 7 + (i >> 8)) % 256;
    return a;
  };
  const uppy = new window.Uppy({ autoProceed: false }).use(window.AwsS3, {
    companionEndpoint: endpoint,
    shouldUseMultipart: (file) => file.size > 5 * 1024 * 1024,
  });
  uppy.addFile({ name: 'small.txt', type: 'text/plain', data: new Blob([bytes(1, 1000)], { type: 'text/plain' }) });
  uppy.addFile({
    name: 'big.bin',
    type: 'application/octet-stream',
    data: new Blob([bytes(2, 12 * 1024 * 1024)], { type: 'application/octet-stream' }),
  });
  const result = await uppy.upload();
  const describe = (f) => ({
    name: f.name,
    size: f.size,
    key: (f.response && f.response.body && f.response.body.key) || null,
    uploadURL: f.uploadURL || (f.response && f.response.uploadURL) || null,
    error: f.error ? String(f.error) : null,
  });
  return {
    successful: (result.successful || []).map(describe),
    failed: (result.failed || []).map(describe),
  };
}

async function main() {
  const opt = args();
  const endpoint = `${opt.ossvend.replace(/\/$/, '')}/v1/grants/${opt.grant}/companion`;
  const code = bundle();
  // The page's own dev server: another loopback origin than ossvend and the sink.
  const pageServer = http.createServer((req, res) => {
    if (req.url === '/uppy.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      return res.end(code);
    }
    res.writeHead(200, { 'content-type': 'text/html' });
    return res.end('<!doctype html><meta charset="utf-8"><title>uppy</title><script src="/uppy.js"></script>');
  });
  await new Promise((ok) => pageServer.listen(0, '127.0.0.1', ok));
  const origin = `http://localhost:${pageServer.address().port}`;
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking'],
  });
  try {
    const page = await browser.newPage();
    const log = [];
    page.on('console', (m) => log.push(`[console.${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => log.push(`[pageerror] ${e.message}`));
    page.on('requestfailed', (r) => log.push(`[requestfailed] ${r.method()} ${r.url().split('?')[0]} ${r.failure() && r.failure().errorText}`));
    await page.goto(`${origin}/`);
    const result = await page.evaluate(runUppy, { endpoint });
    console.log(`UPPY ${JSON.stringify(result)}`);
    for (const line of log) console.log(line);
  } finally {
    await browser.close();
    pageServer.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
