// The seeds' reference design, for bench/run only: an Express server that calls
// STS AssumeRole with the official client (ali-oss's STS) on EVERY request and
// returns the credentials. No cache, one Node process — what the sample apps do.
//
// Environment: PORT (default 0 = ephemeral), STS_ENDPOINT (e.g. http://127.0.0.1:9000/),
// ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET (the bench uses the
// fake STS's obviously fake key), ROLE_ARN, BUCKET, PREFIX.
// Prints "reference listening on http://127.0.0.1:<port>" once ready.
'use strict';

const express = require('express');
const { STS } = require('ali-oss');

const env = process.env;
const sts = new STS({
  accessKeyId: env.ALIBABA_CLOUD_ACCESS_KEY_ID,
  accessKeySecret: env.ALIBABA_CLOUD_ACCESS_KEY_SECRET,
  endpoint: env.STS_ENDPOINT,
});
const roleArn = env.ROLE_ARN || 'acs:ram::1234567890123456:role/oss-upload';
const bucket = env.BUCKET || 'examplebucket';
const prefix = env.PREFIX || 'uploads/';
// The same session policy ossvend sends for the grant.
const policy = {
  Version: '1',
  Statement: [
    { Effect: 'Allow', Action: ['oss:PutObject'], Resource: [`acs:oss:*:*:${bucket}/${prefix}*`] },
  ],
};

const app = express();

async function credentials(req, res) {
  try {
    const r = await sts.assumeRole(roleArn, policy, 3600, 'reference');
    const c = r.credentials;
    res.set('Cache-Control', 'no-store');
    res.json({
      StatusCode: 200,
      AccessKeyId: c.AccessKeyId,
      AccessKeySecret: c.AccessKeySecret,
      SecurityToken: c.SecurityToken,
      Expiration: c.Expiration,
    });
  } catch (e) {
    res.status(500).json({ StatusCode: 500, ErrorCode: e.code || 'Error', ErrorMessage: e.message });
  }
}

app.get('/get_sts_token_for_oss_upload', credentials);
app.get('/v1/grants/:grant/credentials', credentials);

const server = app.listen(Number(env.PORT || 0), '127.0.0.1', () => {
  console.log(`reference listening on http://127.0.0.1:${server.address().port}`);
});
