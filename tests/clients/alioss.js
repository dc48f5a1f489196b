// The real ali-oss (6.23.0, pinned in package-lock.json) fed by ossvend's
// `/v1/grants/<g>/credentials` through `refreshSTSToken`, uploading with V4
// signatures to the verifying OSS sink (ossvend local's, in-process). Run by tests/clients.rs.
//
// usage: node alioss.js --creds-url URL [--interval MS]
//
// 1. `put` then `multipartUpload` (3 parts, one at a time) with the wrapper that
//    docs/clients.md shows; `progress` sleeps past `refreshSTSTokenInterval` after
//    each step, so refreshes happen in the middle of the multipart upload.
// 2. A probe: the same client with `refreshSTSToken` returning ossvend's body as is.
//    ali-oss merges every key it returns into its options; the probe reports what
//    that did to the next request.
// Every request goes through a guard that refuses anything but 127.0.0.1/localhost.
// Exit 0 when step 1 worked (the probe's outcome is reported, not judged here).
'use strict';

const OSS = require('ali-oss');
const urllib = require('urllib');

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const CREDS_URL = arg('creds-url');
const INTERVAL = Number(arg('interval', '500'));
if (!CREDS_URL) {
  console.error('usage: node alioss.js --creds-url URL [--interval MS]');
  process.exit(2);
}
const VERSION = require('ali-oss/package.json').version;
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

// --- the snippet of docs/clients.md ("Browser or Node: ali-oss") -----------------
async function fetchCredentials() {
  const r = await fetch(CREDS_URL);
  if (!r.ok) throw new Error(`ossvend answered HTTP ${r.status}: ${await r.text()}`);
  return r.json();
}
// ali-oss merges every key refreshSTSToken returns into its options. ossvend's body
// is safe to return as is (it says `OssEndpoint`, not `endpoint`), but passing only
// the three credential fields keeps the client's options exactly as you set them.
const pick = c => ({ accessKeyId: c.AccessKeyId, accessKeySecret: c.AccessKeySecret, stsToken: c.SecurityToken });
// ---------------------------------------------------------------------------------

/** urllib, refusing any URL that is not on loopback (and recording what was asked). */
function guardedUrllib(log) {
  return {
    request(url, params) {
      log.push(url);
      let host = '';
      try {
        host = new URL(url).hostname;
      } catch (_) {
        /* relative or broken URL: refused below */
      }
      if (host !== '127.0.0.1' && host !== 'localhost') {
        const err = new Error(`refused a request to a non-loopback URL: ${url}`);
        err.name = 'NonLoopbackURL';
        return Promise.reject(err);
      }
      return urllib.request(url, params);
    },
  };
}

function clientOptions(first, refreshSTSToken, urls) {
  return {
    endpoint: first.OssEndpoint, // the grant's endpoint (here the OSS sink on 127.0.0.1)
    sldEnable: true, // an IP endpoint: path-style /<bucket>/<key> (peers.md §4)
    region: first.Region, // "oss-cn-hangzhou", the form ali-oss takes
    bucket: first.Bucket,
    authorizationV4: true,
    ...pick(first),
    refreshSTSToken,
    refreshSTSTokenInterval: INTERVAL,
    urllib: guardedUrllib(urls),
  };
}

async function main() {
  const first = await fetchCredentials();
  const prefix = first.Prefix;
  const seen = [first.AccessKeyId];
  let refreshes = 0;
  const urls = [];
  const client = new OSS(
    clientOptions(
      first,
      async () => {
        refreshes++;
        const c = await fetchCredentials();
        if (seen[seen.length - 1] !== c.AccessKeyId) seen.push(c.AccessKeyId);
        return pick(c);
      },
      urls,
    ),
  );

  const putKey = `${prefix}alioss/v4-put.txt`;
  const r = await client.put(putKey, Buffer.from('hello from ali-oss'));
  console.log(`ali-oss ${VERSION} V4 put ${putKey} -> ${r.res.status} (ak ${client.options.accessKeyId})`);

  await sleep(INTERVAL + 300);
  const mpKey = `${prefix}alioss/multipart.bin`;
  const body = Buffer.alloc(250 * 1024);
  for (let i = 0; i < body.length; i++) body[i] = i % 251;
  const m = await client.multipartUpload(mpKey, body, {
    partSize: 100 * 1024,
    parallel: 1,
    // Awaited by ali-oss after the initiate call and after each part.
    progress: async () => sleep(INTERVAL + 300),
  });
  console.log(
    `ali-oss ${VERSION} V4 multipartUpload ${mpKey} (${body.length} B, 3 parts) -> ${m.res.status}; ` +
      `refreshSTSToken calls: ${refreshes}; access keys in use: ${seen.join(' -> ')}`,
  );

  // --- the probe: ossvend's body returned unchanged from refreshSTSToken ---
  const probeUrls = [];
  const raw = new OSS(clientOptions(first, fetchCredentials, probeUrls));
  const before = typeof raw.options.endpoint;
  await raw.put(`${prefix}raw/before-refresh.txt`, Buffer.from('x'));
  await sleep(INTERVAL + 300);
  let outcome;
  try {
    const r2 = await raw.put(`${prefix}raw/after-refresh.txt`, Buffer.from('y'));
    outcome = `put after refresh -> ${r2.res.status}`;
  } catch (e) {
    const url = probeUrls[probeUrls.length - 1];
    const hostless = url && !/^https?:\/\/[^/]/.test(url);
    outcome = `put after refresh -> ERROR ${e.name}; request URL ${JSON.stringify(url)}${hostless ? ' (no host)' : ''}`;
  }
  const merged = Object.keys(first).map(k => k.replace(/^./, ch => ch.toLowerCase()));
  const o = raw.options;
  console.log(
    `ali-oss ${VERSION} refreshSTSToken returning ossvend's body unchanged: merged [${merged.join(', ')}] ` +
      `into the options; options.endpoint ${before} -> ${typeof o.endpoint}; ` +
      `bucket ${o.bucket}, region ${o.region}; ${outcome}`,
  );
}

main().catch(e => {
  console.error(`ali-oss FAILED: ${e.name} ${e.status || ''} ${e.code || ''} ${e.message}`);
  process.exit(1);
});
