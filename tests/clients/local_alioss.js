// The real ali-oss (6.23.0, pinned in package-lock.json) against `ossvend local`
// (issue 7). Run by tests/local.rs.
//
// usage: node local_alioss.js --creds-url URL
//
// Fetches one credential from ossvend (`GET /v1/grants/<g>/credentials`, the default
// body) and uploads to the endpoint it names (the embedded sink on 127.0.0.1,
// path-style through `sldEnable`, as tests/clients/alioss.js does), under its Prefix:
// `put` with V1 signatures (ali-oss's default), `put` with `authorizationV4: true`,
// and `multipartUpload` (3 parts of 100 KiB, 100 KiB, 50 KiB) with each.
//
// The bodies are a deterministic pattern the test recomputes on its side:
//     byte i of a body with seed s = (i * 31 + s * 7 + (i >> 8)) % 256
// One line per step: `RESULT <label> <key> <status> <Code|OK>`. The script reports and
// never judges: exit 0 when every step ran, 2 on a usage error or a failed fetch.
// Every request goes through a guard that refuses anything but 127.0.0.1/localhost.
'use strict';

const crypto = require('crypto');
const OSS = require('ali-oss');
const urllib = require('urllib');

const args = process.argv.slice(2);
const i = args.indexOf('--creds-url');
const CREDS_URL = i >= 0 ? args[i + 1] : undefined;
if (!CREDS_URL) {
  console.error('usage: node local_alioss.js --creds-url URL');
  process.exit(2);
}
const VERSION = require('ali-oss/package.json').version;
const PART = 100 * 1024;

function pattern(seed, size) {
  const b = Buffer.alloc(size);
  for (let n = 0; n < size; n++) b[n] = (n * 31 + seed * 7 + (n >> 8)) % 256;
  return b;
}

/** urllib, refusing any URL that is not on loopback. */
const guardedUrllib = {
  request(url, params) {
    let host = '';
    try {
      host = new URL(url).hostname;
    } catch (_) {
      /* refused below */
    }
    if (host !== '127.0.0.1' && host !== 'localhost') {
      return Promise.reject(new Error(`refused a request to a non-loopback URL: ${url}`));
    }
    return urllib.request(url, params);
  },
};

async function outcome(fn) {
  try {
    const r = await fn();
    return `${r.res.status} OK`;
  } catch (e) {
    if (e.status && e.code) return `${e.status} ${e.code}`;
    return `client-error ${e.name}: ${String(e.message).replace(/\s+/g, ' ').slice(0, 300)}`;
  }
}

async function report(label, key, body, fn) {
  const md5 = crypto.createHash('md5').update(body).digest('hex');
  console.log(`RESULT ${label} ${key} ${await outcome(fn)} md5=${md5} size=${body.length}`);
}

async function main() {
  let c;
  try {
    const r = await fetch(CREDS_URL);
    if (!r.ok) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
    c = await r.json();
  } catch (e) {
    console.log(`cannot fetch credentials from ${CREDS_URL}: ${e.message}`);
    process.exit(2);
  }
  console.log(`ali-oss ${VERSION}, ak ${c.AccessKeyId}, endpoint ${c.OssEndpoint}, bucket ${c.Bucket}, prefix ${c.Prefix}`);
  const seeds = { v1: 7, v4: 9 };
  for (const version of ['v1', 'v4']) {
    const client = new OSS({
      endpoint: c.OssEndpoint,
      sldEnable: true, // an IP endpoint: path-style /<bucket>/<key>
      region: c.Region, // "oss-cn-hangzhou", the form ali-oss takes
      bucket: c.Bucket,
      accessKeyId: c.AccessKeyId,
      accessKeySecret: c.AccessKeySecret,
      stsToken: c.SecurityToken,
      authorizationV4: version === 'v4',
      urllib: guardedUrllib,
    });
    const putKey = `${c.Prefix}alioss/${version}-put.bin`;
    const putBody = pattern(seeds[version], 3000 + 11);
    await report(`alioss-${version}-put`, putKey, putBody, () => client.put(putKey, putBody));
    const mpKey = `${c.Prefix}alioss/${version}-multipart.bin`;
    const mpBody = pattern(seeds[version] + 1, 2 * PART + 50 * 1024);
    await report(`alioss-${version}-multipart`, mpKey, mpBody, () =>
      client.multipartUpload(mpKey, mpBody, { partSize: PART, parallel: 1 }),
    );
  }
}

main().catch(e => {
  console.log(`local_alioss.js crashed: ${e.stack || e}`);
  process.exit(1);
});
