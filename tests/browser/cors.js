#!/usr/bin/env node
// A frontend on its own dev server calling `ossvend local` (issue 15): serves a
// page from http://localhost:<free port> (another loopback origin than ossvend's),
// opens it in Chromium and `fetch`es the credentials route from the page. The
// browser hands the page the response only if ossvend's CORS headers admit the
// origin. Prints one JSON line: {origin, status, allowOrigin, keyId} or {origin, error}.
//
// usage: node cors.js --ossvend URL --grant NAME   (CHROMIUM overrides /usr/bin/chromium)
'use strict';

const http = require('http');
const { chromium } = require('playwright-core');

function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || process.argv[i + 1] === undefined) {
    console.error('usage: node cors.js --ossvend URL --grant NAME');
    process.exit(2);
  }
  return process.argv[i + 1];
}

async function main() {
  const ossvend = arg('ossvend').replace(/\/$/, '');
  const grant = arg('grant');
  const page_server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>dev server</title><p>frontend on its own port</p>');
  });
  await new Promise((ok) => page_server.listen(0, '127.0.0.1', ok));
  const origin = `http://localhost:${page_server.address().port}`;
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking'],
  });
  try {
    const page = await browser.newPage();
    await page.goto(`${origin}/`);
    const url = `${ossvend}/v1/grants/${grant}/credentials`;
    const result = await page.evaluate(async (url) => {
      try {
        const r = await fetch(url, { headers: { 'content-type': 'application/json' } });
        const body = await r.json();
        return { status: r.status, keyId: body.AccessKeyId || null };
      } catch (e) {
        return { error: String(e) };
      }
    }, url);
    console.log(JSON.stringify({ origin, ...result }));
  } finally {
    await browser.close();
    page_server.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
