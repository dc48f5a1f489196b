// Uppy Companion (@uppy/companion, pinned by package-lock.json), for bench/run only:
// Companion's own Express app (`companion.app(options)`) with an S3 configuration whose
// keys are obviously fake, so that its S3 routes sign locally and never call AWS:
// `GET /s3/params` (createPresignedPost) and `GET /s3/multipart/{uploadId}/{partNumber}?key=`
// (getSignedUrl of UploadPart; any uploadId is signed without asking S3). Options are
// Companion's defaults otherwise (its metrics middleware on, as in a deployment).
//
// Environment: PORT (default 0 = ephemeral). Prints "companion listening on
// http://127.0.0.1:<port>" once ready.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import * as companion from '@uppy/companion';

const { app: companionApp } = companion.app({
  secret: 'fakeBenchCompanionSecretDoNotUse',
  filePath: mkdtempSync(join(tmpdir(), 'bench-companion-')),
  server: { host: '127.0.0.1', protocol: 'http' },
  corsOrigins: true,
  uploadUrls: ['http://127.0.0.1/'],
  s3: {
    key: 'AKIAFAKEBENCHKEY0001',
    secret: 'fakeBenchS3SecretDoNotUse0001',
    bucket: 'examplebucket',
    region: 'us-east-1',
  },
});

const server = companionApp.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  console.log(`companion listening on http://127.0.0.1:${server.address().port}`);
});
