//! Where the local OSS sink keeps objects, and the object listing served on the
//! main port.
//!
//! Layout under `LocalState::data_dir`:
//!
//! ```text
//! objects/<bucket>/<key>             the bytes; the key's `/` are directories
//! meta/<sha256(bucket NUL key)>.json metadata sidecar (content type, md5, etag, size, auth, time)
//! uploads/<UPLOADID>/upload.json     a multipart upload in progress, its parts as <n>.part + <n>.json
//! tmp/                               files being written, renamed into place when complete
//! ```
//!
//! Sidecars get their own flat directory because any name next to an object
//! could be another object's key. Keys are checked before they touch a path, so
//! nothing escapes `objects/<bucket>/`. Functions here block (std::fs): call
//! them from `spawn_blocking`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, SecondsFormat, Utc};
use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::LocalState;
use super::error::OssError;
use crate::error::ApiError;

/// Serialises the renames that must look atomic together (object + sidecar,
/// part + record) against readers and against completing or aborting uploads.
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// One stored object's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// Lower-case hex MD5 of the bytes.
    pub md5: String,
    /// As served: quoted upper-case hex, `"<hex>-<parts>"` after a multipart upload.
    pub etag: String,
    pub content_type: String,
    /// v1-header | v4-header | v1-query | v4-query | post-v1 | post-v4 | multipart
    pub auth: String,
    pub last_modified: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
struct Sidecar {
    meta: ObjectMeta,
    /// Write order, so the listing stays newest-first under a frozen clock.
    seq: u64,
}

#[derive(Serialize, Deserialize)]
struct UploadRecord {
    bucket: String,
    key: String,
    content_type: String,
    initiated: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
struct PartRecord {
    md5: String,
    size: u64,
    /// When the part was stored (ListParts' `LastModified`).
    #[serde(default)]
    stored: Option<DateTime<Utc>>,
}

/// OSS: every part of a completed upload but the last is at least 100 KiB.
pub const MIN_PART_SIZE: u64 = 100 * 1024;

/// One uploaded part, as ListParts shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub number: u32,
    /// Quoted upper-case hex MD5, as UploadPart answered it.
    pub etag: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

/// `"<MD5 in upper-case hex>"`, as OSS writes ETags.
pub fn etag_of(md5_hex: &str) -> String {
    format!("\"{}\"", md5_hex.to_ascii_uppercase())
}

/// OSS's object-name rules (no leading `/` or `\`, at most 1023 bytes) plus what
/// a file path needs: no NUL, no empty, `.` or `..` segment, each segment one
/// plain file name. Anything else is 400 InvalidObjectName.
pub fn check_key(key: &str) -> Result<(), OssError> {
    let segments = || key.split('/');
    let why = if key.starts_with('/') || key.starts_with('\\') {
        "it starts with a slash"
    } else if key.len() > 1023 {
        "it is longer than 1023 bytes"
    } else if key.contains('\0') {
        "it contains NUL"
    } else if segments().any(str::is_empty) {
        "it has an empty path segment"
    } else if segments().any(|s| s == "." || s == "..") {
        "it has a '.' or '..' segment"
    } else if !segments().all(is_plain_name) {
        "a path segment is not a plain file name"
    } else {
        return Ok(());
    };
    let shown: String = key.chars().take(80).collect();
    Err(OssError::msg(
        "InvalidObjectName",
        format!("The specified object name is not valid: {shown:?} ({why})."),
    ))
}

/// One normal path component that is exactly `segment` (no prefix, root or separator).
fn is_plain_name(segment: &str) -> bool {
    let mut parts = Path::new(segment).components();
    matches!((parts.next(), parts.next()), (Some(Component::Normal(n)), None) if n == segment)
}

fn check_location(bucket: &str, key: &str) -> Result<(), OssError> {
    if crate::sign::check_bucket(bucket).is_err() {
        return Err(OssError::new("InvalidBucketName"));
    }
    check_key(key)
}

fn object_path(data_dir: &Path, bucket: &str, key: &str) -> PathBuf {
    let mut path = data_dir.join("objects").join(bucket);
    path.extend(key.split('/'));
    path
}

fn meta_path(data_dir: &Path, bucket: &str, key: &str) -> PathBuf {
    let name = hex::encode(Sha256::digest(format!("{bucket}\0{key}").as_bytes()));
    data_dir.join("meta").join(format!("{name}.json"))
}

fn internal(e: io::Error) -> OssError {
    tracing::warn!(target: "ossvend::local::store", error = %e, "local store I/O error");
    OssError::msg("InternalError", format!("The local store failed: {}.", e.kind()))
}

/// Errors of putting a file at an object's path: a name clash with another
/// object (`a` vs `a/b`) or a segment the file system refuses is the key's fault.
fn placement_error(e: io::Error, key: &str) -> OssError {
    use io::ErrorKind::*;
    let shown: String = key.chars().take(80).collect();
    match e.kind() {
        NotADirectory | IsADirectory | AlreadyExists | DirectoryNotEmpty => OssError::msg(
            "InvalidObjectName",
            format!(
                "The object name {shown:?} clashes with another object's path in the local store \
                 (local mode keeps keys as file paths)."
            ),
        ),
        InvalidFilename => OssError::msg(
            "InvalidObjectName",
            format!("A path segment of {shown:?} is too long for the local file system."),
        ),
        _ => internal(e),
    }
}

/// Strictly increasing per process, roughly wall-clock nanoseconds.
fn next_seq() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let prev = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(wall.max(last + 1))
        })
        .unwrap_or(0);
    wall.max(prev + 1)
}

// ---------------------------------------------------------------------------
// Temporary files
// ---------------------------------------------------------------------------

/// A file under `tmp/`, removed on drop unless renamed into place.
struct TempFile {
    path: PathBuf,
    kept: bool,
}

impl TempFile {
    fn create(data_dir: &Path) -> io::Result<(TempFile, File)> {
        let dir = data_dir.join("tmp");
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
        let file = File::create_new(&path)?;
        Ok((TempFile { path, kept: false }, file))
    }

    fn with_json(data_dir: &Path, value: &impl Serialize) -> io::Result<TempFile> {
        let (temp, mut file) = TempFile::create(data_dir)?;
        file.write_all(&serde_json::to_vec_pretty(value).map_err(io::Error::other)?)?;
        Ok(temp)
    }

    fn persist(mut self, to: &Path) -> io::Result<()> {
        fs::rename(&self.path, to)?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A body being written to `tmp/`, hashed on the way.
pub struct Spool {
    temp: TempFile,
    file: BufWriter<File>,
    md5: Md5,
    sha256: Sha256,
    size: u64,
}

impl Spool {
    pub fn create(data_dir: &Path) -> io::Result<Spool> {
        let (temp, file) = TempFile::create(data_dir)?;
        Ok(Spool {
            temp,
            file: BufWriter::with_capacity(1 << 16, file),
            md5: Md5::new(),
            sha256: Sha256::new(),
            size: 0,
        })
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.md5.update(data);
        self.sha256.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    pub fn finish(self) -> io::Result<Spooled> {
        let Spool {
            temp,
            file,
            md5,
            sha256,
            size,
        } = self;
        drop(file.into_inner().map_err(|e| e.into_error())?);
        Ok(Spooled {
            temp,
            size,
            md5_hex: hex::encode(md5.finalize()),
            sha256_hex: hex::encode(sha256.finalize()),
        })
    }
}

/// A complete body in `tmp/`; dropped without being committed, it is deleted.
pub struct Spooled {
    temp: TempFile,
    pub size: u64,
    pub md5_hex: String,
    pub sha256_hex: String,
}

impl Spooled {
    pub fn from_bytes(data_dir: &Path, data: &[u8]) -> io::Result<Spooled> {
        let mut spool = Spool::create(data_dir)?;
        spool.write(data)?;
        spool.finish()
    }
}

// ---------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------

/// `x-oss-forbid-overwrite: true` on an existing object: 409 FileAlreadyExists.
fn refuse_existing(data_dir: &Path, bucket: &str, key: &str) -> Result<(), OssError> {
    let exists = read_sidecar(&meta_path(data_dir, bucket, key))?
        .is_some_and(|s| s.meta.bucket == bucket && s.meta.key == key);
    if exists {
        return Err(OssError::new("FileAlreadyExists"));
    }
    Ok(())
}

/// Whether an object exists (for `x-oss-forbid-overwrite` on InitiateMultipartUpload).
pub fn check_not_exists(data_dir: &Path, bucket: &str, key: &str) -> Result<(), OssError> {
    check_location(bucket, key)?;
    let _guard = lock();
    refuse_existing(data_dir, bucket, key)
}

/// Moves a spooled body to `objects/<bucket>/<key>` and writes its sidecar.
/// `etag` overrides the plain-MD5 ETag (multipart objects); `forbid_overwrite`
/// refuses an existing object (checked under the store lock, so two writers
/// cannot both win).
#[allow(clippy::too_many_arguments)]
pub fn commit(
    data_dir: &Path,
    bucket: &str,
    key: &str,
    body: Spooled,
    content_type: &str,
    auth: &str,
    etag: Option<String>,
    forbid_overwrite: bool,
    now: DateTime<Utc>,
) -> Result<ObjectMeta, OssError> {
    check_location(bucket, key)?;
    let meta = ObjectMeta {
        bucket: bucket.to_string(),
        key: key.to_string(),
        size: body.size,
        etag: etag.unwrap_or_else(|| etag_of(&body.md5_hex)),
        md5: body.md5_hex.clone(),
        content_type: content_type.to_string(),
        auth: auth.to_string(),
        last_modified: now,
    };
    let sidecar = TempFile::with_json(
        data_dir,
        &Sidecar {
            meta: meta.clone(),
            seq: next_seq(),
        },
    )
    .map_err(internal)?;
    let target = object_path(data_dir, bucket, key);
    fs::create_dir_all(data_dir.join("meta")).map_err(internal)?;
    let _guard = lock();
    if forbid_overwrite {
        refuse_existing(data_dir, bucket, key)?;
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| placement_error(e, key))?;
    }
    body.temp.persist(&target).map_err(|e| placement_error(e, key))?;
    sidecar
        .persist(&meta_path(data_dir, bucket, key))
        .map_err(internal)?;
    Ok(meta)
}

/// Stores `data` as an object (a body already in memory).
#[allow(clippy::too_many_arguments)]
pub fn put_bytes(
    data_dir: &Path,
    bucket: &str,
    key: &str,
    data: &[u8],
    content_type: &str,
    auth: &str,
    now: DateTime<Utc>,
) -> Result<ObjectMeta, OssError> {
    check_location(bucket, key)?;
    let body = Spooled::from_bytes(data_dir, data).map_err(internal)?;
    commit(data_dir, bucket, key, body, content_type, auth, None, false, now)
}

fn read_sidecar(path: &Path) -> Result<Option<Sidecar>, OssError> {
    match fs::read(path) {
        Ok(text) => Ok(serde_json::from_slice(&text).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(internal(e)),
    }
}

/// An object's metadata and bytes; `None` if there is no such object.
pub fn read_object(
    data_dir: &Path,
    bucket: &str,
    key: &str,
) -> Result<Option<(ObjectMeta, Vec<u8>)>, OssError> {
    if check_location(bucket, key).is_err() {
        return Ok(None);
    }
    let (meta, mut file) = {
        let _guard = lock();
        let Some(Sidecar { meta, .. }) = read_sidecar(&meta_path(data_dir, bucket, key))? else {
            return Ok(None);
        };
        if meta.bucket != bucket || meta.key != key {
            return Ok(None);
        }
        // Opened under the lock: a concurrent overwrite cannot pair new bytes with old metadata.
        match File::open(object_path(data_dir, bucket, key)) {
            Ok(file) => (meta, file),
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::IsADirectory) => {
                return Ok(None);
            }
            Err(e) => return Err(internal(e)),
        }
    };
    let mut data = Vec::with_capacity(usize::try_from(meta.size.min(1 << 26)).unwrap_or(0));
    file.read_to_end(&mut data).map_err(internal)?;
    Ok(Some((meta, data)))
}

/// Deletes an object if it exists, and directories it leaves empty.
pub fn delete_object(data_dir: &Path, bucket: &str, key: &str) -> Result<(), OssError> {
    if check_location(bucket, key).is_err() {
        return Ok(());
    }
    let target = object_path(data_dir, bucket, key);
    let _guard = lock();
    let gone = |r: io::Result<()>| match r {
        Err(e) if !matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::IsADirectory) => {
            Err(internal(e))
        }
        _ => Ok(()),
    };
    // A directory at the key's path is other objects' prefix, not this object.
    if !target.is_dir() {
        gone(fs::remove_file(&target))?;
    }
    gone(fs::remove_file(meta_path(data_dir, bucket, key)))?;
    let bucket_dir = data_dir.join("objects").join(bucket);
    let mut dir = target.parent();
    while let Some(d) = dir {
        if d == bucket_dir || !d.starts_with(&bucket_dir) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Every stored object, newest first.
pub fn list_objects(data_dir: &Path) -> Result<Vec<ObjectMeta>, OssError> {
    let entries = match fs::read_dir(data_dir.join("meta")) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(internal(e)),
    };
    let mut found: Vec<Sidecar> = Vec::new();
    for entry in entries {
        let path = entry.map_err(internal)?.path();
        if path.extension().is_some_and(|x| x == "json")
            && let Some(sidecar) = read_sidecar(&path)?
        {
            found.push(sidecar);
        }
    }
    found.sort_by(|a, b| {
        b.meta
            .last_modified
            .cmp(&a.meta.last_modified)
            .then(b.seq.cmp(&a.seq))
    });
    Ok(found.into_iter().map(|s| s.meta).collect())
}

// ---------------------------------------------------------------------------
// Multipart uploads
// ---------------------------------------------------------------------------

/// Upload ids are 32 upper-case hex digits; anything else names no upload (and no path).
fn upload_dir(data_dir: &Path, upload_id: &str) -> Option<PathBuf> {
    let ok = upload_id.len() == 32
        && upload_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    ok.then(|| data_dir.join("uploads").join(upload_id))
}

fn open_upload(
    data_dir: &Path,
    upload_id: &str,
    bucket: &str,
    key: &str,
) -> Result<(PathBuf, UploadRecord), OssError> {
    let none = || OssError::new("NoSuchUpload");
    let dir = upload_dir(data_dir, upload_id).ok_or_else(none)?;
    let text = match fs::read(dir.join("upload.json")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(none()),
        Err(e) => return Err(internal(e)),
    };
    let record: UploadRecord = serde_json::from_slice(&text).map_err(|_| none())?;
    if record.bucket != bucket || record.key != key {
        return Err(none());
    }
    Ok((dir, record))
}

/// Starts a multipart upload; returns its id.
pub fn create_upload(
    data_dir: &Path,
    bucket: &str,
    key: &str,
    content_type: &str,
    now: DateTime<Utc>,
) -> Result<String, OssError> {
    check_location(bucket, key)?;
    let upload_id = uuid::Uuid::new_v4().simple().to_string().to_ascii_uppercase();
    let record = UploadRecord {
        bucket: bucket.to_string(),
        key: key.to_string(),
        content_type: content_type.to_string(),
        initiated: now,
    };
    let temp = TempFile::with_json(data_dir, &record).map_err(internal)?;
    let dir = data_dir.join("uploads").join(&upload_id);
    fs::create_dir_all(&dir).map_err(internal)?;
    temp.persist(&dir.join("upload.json")).map_err(internal)?;
    Ok(upload_id)
}

/// Stores part `number` (1..=10000) of an upload; returns its ETag.
pub fn put_part(
    data_dir: &Path,
    upload_id: &str,
    bucket: &str,
    key: &str,
    number: u32,
    body: Spooled,
    now: DateTime<Utc>,
) -> Result<String, OssError> {
    let record = PartRecord {
        md5: body.md5_hex.clone(),
        size: body.size,
        stored: Some(now),
    };
    let temp = TempFile::with_json(data_dir, &record).map_err(internal)?;
    let _guard = lock();
    let (dir, _) = open_upload(data_dir, upload_id, bucket, key)?;
    body.temp
        .persist(&dir.join(format!("{number}.part")))
        .map_err(internal)?;
    temp.persist(&dir.join(format!("{number}.json")))
        .map_err(internal)?;
    Ok(etag_of(&record.md5))
}

fn read_parts(dir: &Path) -> Result<BTreeMap<u32, PartRecord>, OssError> {
    let mut parts = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(internal)? {
        let path = entry.map_err(internal)?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(number) = number
            && let Ok(text) = fs::read(&path)
            && let Ok(record) = serde_json::from_slice::<PartRecord>(&text)
        {
            parts.insert(number, record);
        }
    }
    Ok(parts)
}

/// Decimal digits without leading zeros, so numbers of any length compare right.
fn normalized(number: &str) -> &str {
    let trimmed = number.trim_start_matches('0');
    if trimmed.is_empty() { "0" } else { trimmed }
}

fn numeric_order(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (normalized(a), normalized(b));
    a.len().cmp(&b.len()).then(a.cmp(b))
}

/// ListParts: every stored part of an upload, by number.
pub fn list_parts(
    data_dir: &Path,
    upload_id: &str,
    bucket: &str,
    key: &str,
) -> Result<Vec<PartInfo>, OssError> {
    let _guard = lock();
    let (dir, record) = open_upload(data_dir, upload_id, bucket, key)?;
    let parts = read_parts(&dir)?;
    Ok(parts
        .into_iter()
        .map(|(number, p)| PartInfo {
            number,
            etag: etag_of(&p.md5),
            size: p.size,
            last_modified: p.stored.unwrap_or(record.initiated),
        })
        .collect())
}

/// CompleteMultipartUpload. `chosen` is the request's (part number as decimal
/// digits, ETag) list, or `None` for `x-oss-complete-all: yes`. The object's
/// ETag is `"<MD5 of the parts' MD5s>-<count>"`, as OSS computes it. A part but
/// the last under [`MIN_PART_SIZE`] is EntityTooSmall; `forbid_overwrite` refuses
/// an existing object (FileAlreadyExists); either way the upload stays.
#[allow(clippy::too_many_arguments)]
pub fn complete(
    data_dir: &Path,
    upload_id: &str,
    bucket: &str,
    key: &str,
    chosen: Option<Vec<(String, String)>>,
    forbid_overwrite: bool,
    now: DateTime<Utc>,
) -> Result<ObjectMeta, OssError> {
    let (dir, record, parts) = {
        let _guard = lock();
        let (dir, record) = open_upload(data_dir, upload_id, bucket, key)?;
        let parts = read_parts(&dir)?;
        (dir, record, parts)
    };
    let chosen = chosen.unwrap_or_else(|| {
        parts
            .iter()
            .map(|(n, p)| (n.to_string(), etag_of(&p.md5)))
            .collect()
    });
    if chosen.is_empty() {
        return Err(OssError::msg(
            "MalformedXML",
            "CompleteMultipartUpload lists no parts.",
        ));
    }
    if chosen
        .windows(2)
        .any(|w| numeric_order(&w[0].0, &w[1].0) != std::cmp::Ordering::Less)
    {
        return Err(OssError::new("InvalidPartOrder"));
    }
    let mut picked: Vec<(u32, &PartRecord)> = Vec::with_capacity(chosen.len());
    for (number, etag) in &chosen {
        let found = normalized(number)
            .parse::<u32>()
            .ok()
            .and_then(|n| parts.get(&n).map(|p| (n, p)));
        match found {
            Some((n, part)) if etag.trim_matches('"').to_uppercase() == part.md5.to_uppercase() => {
                picked.push((n, part));
            }
            _ => {
                return Err(OssError::msg(
                    "InvalidPart",
                    format!(
                        "Part {} is missing or its ETag does not match.",
                        normalized(number)
                    ),
                ));
            }
        }
    }

    let but_last = picked.split_last().map_or(&[][..], |(_, rest)| rest);
    if let Some((n, part)) = but_last.iter().find(|(_, p)| p.size < MIN_PART_SIZE) {
        return Err(OssError::msg(
            "EntityTooSmall",
            format!(
                "Part {n} is {} bytes; every part but the last must be at least {MIN_PART_SIZE} bytes.",
                part.size
            ),
        ));
    }
    if forbid_overwrite {
        check_not_exists(data_dir, bucket, key)?;
    }

    let mut spool = Spool::create(data_dir).map_err(internal)?;
    let mut digests = Vec::with_capacity(16 * picked.len());
    let mut buf = vec![0u8; 1 << 20];
    for (n, part) in &picked {
        digests.extend(hex::decode(&part.md5).map_err(|_| OssError::new("InvalidPart"))?);
        let mut file = File::open(dir.join(format!("{n}.part"))).map_err(internal)?;
        loop {
            let read = file.read(&mut buf).map_err(internal)?;
            if read == 0 {
                break;
            }
            spool.write(&buf[..read]).map_err(internal)?;
        }
    }
    let body = spool.finish().map_err(internal)?;
    let etag = format!(
        "\"{}-{}\"",
        hex::encode_upper(Md5::digest(&digests)),
        picked.len()
    );
    let meta = commit(
        data_dir,
        bucket,
        key,
        body,
        &record.content_type,
        "multipart",
        Some(etag),
        forbid_overwrite,
        now,
    )?;
    let _guard = lock();
    let _ = fs::remove_dir_all(&dir);
    Ok(meta)
}

/// AbortMultipartUpload: forgets the upload and its parts.
pub fn abort(data_dir: &Path, upload_id: &str, bucket: &str, key: &str) -> Result<(), OssError> {
    let _guard = lock();
    let (dir, _) = open_upload(data_dir, upload_id, bucket, key)?;
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(internal(e)),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// The object listing (main port)
// ---------------------------------------------------------------------------

/// `GET /_local/objects` (HTML, or JSON with `?format=json` / `Accept:
/// application/json`) and `GET /_local/objects/{bucket}/{*key}` (the bytes).
pub fn objects_router(state: Arc<LocalState>) -> Router {
    Router::new()
        .route("/_local/objects", get(list_handler))
        .route("/_local/objects/{bucket}/{*key}", get(object_handler))
        .with_state(state)
}

/// The listing's JSON entry.
#[derive(Serialize)]
struct Listed<'a> {
    bucket: &'a str,
    key: &'a str,
    size: u64,
    md5: &'a str,
    etag: &'a str,
    content_type: &'a str,
    auth: &'a str,
    last_modified: String,
}

fn listed(meta: &ObjectMeta) -> Listed<'_> {
    Listed {
        bucket: &meta.bucket,
        key: &meta.key,
        size: meta.size,
        md5: &meta.md5,
        etag: &meta.etag,
        content_type: &meta.content_type,
        auth: &meta.auth,
        last_modified: meta.last_modified.to_rfc3339_opts(SecondsFormat::Millis, true),
    }
}

fn wants_json(query: Option<&str>, headers: &HeaderMap) -> bool {
    let format = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "format")
            .map(|(_, v)| v.into_owned())
    });
    match format.as_deref() {
        Some("json") => true,
        Some("html") => false,
        _ => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.to_ascii_lowercase().contains("application/json")),
    }
}

async fn list_handler(
    State(state): State<Arc<LocalState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let dir = state.data_dir.clone();
    let objects = match tokio::task::spawn_blocking(move || list_objects(&dir)).await {
        Ok(Ok(objects)) => objects,
        _ => return ApiError::internal("the local object store could not be listed").into_response(),
    };
    let no_store = (header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if wants_json(query.as_deref(), &headers) {
        let body = serde_json::json!({ "objects": objects.iter().map(listed).collect::<Vec<_>>() });
        return ([no_store], axum::Json(body)).into_response();
    }
    let csp = (
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    let html = (
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    ([no_store, csp, html], render_html(&objects)).into_response()
}

/// Escapes text for HTML element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn render_html(objects: &[ObjectMeta]) -> String {
    let mut rows = String::new();
    for o in objects {
        let href = format!(
            "/_local/objects/{}/{}",
            crate::sign::encode::pct(&o.bucket),
            crate::sign::encode::pct_path(&o.key)
        );
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td><a href=\"{}\">{}</a></td><td class=\"n\">{}</td>\
             <td>{}</td><td>{}</td><td><code>{}</code></td></tr>\n",
            esc(&o.last_modified.to_rfc3339_opts(SecondsFormat::Secs, true)),
            esc(&o.bucket),
            esc(&href),
            esc(&o.key),
            o.size,
            esc(&o.content_type),
            esc(&o.auth),
            esc(&o.etag),
        ));
    }
    if objects.is_empty() {
        rows.push_str("<tr><td colspan=\"7\">No uploads yet.</td></tr>\n");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>ossvend local objects</title><style>\
         body{{font:14px system-ui,sans-serif;margin:1.5em}}\
         .banner{{background:#fff3cd;border:1px solid #e0c36a;padding:.5em 1em;font-weight:600}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}\
         .n{{text-align:right}}</style></head><body>\n\
         <p class=\"banner\">ossvend local mode \u{2014} development only</p>\n\
         <h1>Uploaded objects ({count})</h1>\n\
         <table><thead><tr><th>Last modified</th><th>Bucket</th><th>Key</th><th>Size</th>\
         <th>Content-Type</th><th>Upload</th><th>ETag</th></tr></thead><tbody>\n{rows}</tbody></table>\n\
         <p><a href=\"/_local/objects?format=json\">JSON</a></p>\n</body></html>\n",
        count = objects.len(),
    )
}

async fn object_handler(
    State(state): State<Arc<LocalState>>,
    UrlPath((bucket, key)): UrlPath<(String, String)>,
) -> Response {
    let dir = state.data_dir.clone();
    let (b, k) = (bucket.clone(), key.clone());
    let found = match tokio::task::spawn_blocking(move || read_object(&dir, &b, &k)).await {
        Ok(Ok(found)) => found,
        _ => return ApiError::internal("the local object store could not be read").into_response(),
    };
    let Some((meta, data)) = found else {
        return ApiError::not_found("not_found", format!("no object {bucket}/{key}")).into_response();
    };
    let mut headers = HeaderMap::new();
    let content_type = super::oss::latin1_header(&meta.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Some(etag) = super::oss::latin1_header(&meta.etag) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(date) = super::oss::latin1_header(&crate::sign::format_http_date(meta.last_modified)) {
        headers.insert(header::LAST_MODIFIED, date);
    }
    // Uploaded bytes are untrusted: never let them run as a page of this origin.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    (StatusCode::OK, headers, data).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn keys_that_cannot_be_paths_are_refused() {
        for ok in [
            "a",
            "a/b/c.txt",
            "dir/my file (1).png",
            "é/ü",
            "a..b/.c/..d",
            "a b/~c",
        ] {
            assert!(check_key(ok).is_ok(), "{ok:?}");
        }
        let long = "x".repeat(1024);
        for bad in [
            "/a",
            "\\a",
            "",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "a/..",
            "../x",
            "a\0b",
            long.as_str(),
        ] {
            let err = check_key(bad).unwrap_err();
            assert_eq!((err.code, err.status), ("InvalidObjectName", 400), "{bad:?}");
        }
        assert!(
            check_key(&"x".repeat(1023)).is_ok(),
            "a long segment is the file system's problem, not OSS's"
        );
    }

    #[test]
    fn objects_round_trip_and_list_newest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let m1 = put_bytes(dir, "b", "a/one.txt", b"hello", "text/plain", "v4-query", at(10)).unwrap();
        assert_eq!(m1.etag, "\"5D41402ABC4B2A76B9719D911017C592\"");
        assert_eq!(m1.md5, "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(fs::read(dir.join("objects/b/a/one.txt")).unwrap(), b"hello");
        put_bytes(dir, "b", "two", b"x", "text/plain", "post-v1", at(10)).unwrap();
        put_bytes(dir, "c", "three", b"y", "image/png", "v1-header", at(5)).unwrap();
        let keys: Vec<String> = list_objects(dir).unwrap().into_iter().map(|m| m.key).collect();
        assert_eq!(keys, ["two", "a/one.txt", "three"]);

        let (meta, data) = read_object(dir, "b", "a/one.txt").unwrap().unwrap();
        assert_eq!((meta.auth.as_str(), data.as_slice()), ("v4-query", &b"hello"[..]));
        assert!(read_object(dir, "b", "a").unwrap().is_none());
        assert!(read_object(dir, "b", "../b/two").unwrap().is_none());

        // Overwrite keeps one entry.
        put_bytes(dir, "b", "two", b"xyz", "text/plain", "v1-query", at(11)).unwrap();
        assert_eq!(list_objects(dir).unwrap().len(), 3);
        assert_eq!(read_object(dir, "b", "two").unwrap().unwrap().1, b"xyz");

        // `a` is a directory now: an object of that name cannot be stored.
        let err = put_bytes(dir, "b", "a", b"z", "text/plain", "v1-query", at(12)).unwrap_err();
        assert_eq!(err.code, "InvalidObjectName");
        let err = put_bytes(dir, "b", "two/x", b"z", "text/plain", "v1-query", at(12)).unwrap_err();
        assert_eq!(err.code, "InvalidObjectName");

        delete_object(dir, "b", "a/one.txt").unwrap();
        delete_object(dir, "b", "missing").unwrap();
        assert!(read_object(dir, "b", "a/one.txt").unwrap().is_none());
        assert!(!dir.join("objects/b/a").exists(), "empty directories are pruned");
        put_bytes(dir, "b", "a", b"z", "text/plain", "v1-query", at(12)).unwrap();
        assert_eq!(
            fs::read_dir(dir.join("tmp")).unwrap().count(),
            0,
            "no temp files left"
        );
    }

    #[test]
    fn multipart_assembles_in_order_with_oss_etag() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // Part 1 is exactly the 100 KiB minimum; the last part may be smaller.
        let mut first = b"hello ".to_vec();
        first.resize(MIN_PART_SIZE as usize, b'.');
        let id = create_upload(dir, "b", "big.bin", "application/x-test", at(1)).unwrap();
        let part = |n: u32, data: &[u8]| {
            put_part(
                dir,
                &id,
                "b",
                "big.bin",
                n,
                Spooled::from_bytes(dir, data).unwrap(),
                at(1),
            )
        };
        let e1 = part(1, &first).unwrap();
        let e2 = part(2, b"world").unwrap();
        let small = part(3, b"tiny").unwrap();
        assert_eq!(
            put_part(
                dir,
                &id,
                "b",
                "other",
                3,
                Spooled::from_bytes(dir, b"x").unwrap(),
                at(1)
            )
            .unwrap_err()
            .code,
            "NoSuchUpload"
        );
        let listed = list_parts(dir, &id, "b", "big.bin").unwrap();
        assert_eq!(
            listed.iter().map(|p| (p.number, p.size)).collect::<Vec<_>>(),
            [(1, MIN_PART_SIZE), (2, 5), (3, 4)]
        );
        assert_eq!(
            (listed[0].etag.as_str(), listed[0].last_modified),
            (e1.as_str(), at(1))
        );
        let err = |chosen: Vec<(&str, &str)>| {
            let chosen = chosen
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            complete(dir, &id, "b", "big.bin", Some(chosen), false, at(2))
                .unwrap_err()
                .code
        };
        assert_eq!(err(vec![]), "MalformedXML");
        assert_eq!(err(vec![("2", &e2), ("1", &e1)]), "InvalidPartOrder");
        assert_eq!(err(vec![("1", &e1), ("01", &e1)]), "InvalidPartOrder");
        assert_eq!(err(vec![("1", &e1), ("4", &e1)]), "InvalidPart");
        assert_eq!(err(vec![("1", &e2)]), "InvalidPart");
        assert_eq!(
            err(vec![("1", &e1), ("99999999999999999999999", &e1)]),
            "InvalidPart"
        );
        // Part 2 (5 bytes) is not last here.
        assert_eq!(err(vec![("1", &e1), ("2", &e2), ("3", &small)]), "EntityTooSmall");
        put_bytes(dir, "b", "big.bin", b"original", "text/plain", "v4-query", at(1)).unwrap();
        let chosen = vec![
            ("1".to_string(), e1.to_lowercase()),
            ("002".to_string(), e2.clone()),
        ];
        let refused = complete(dir, &id, "b", "big.bin", Some(chosen.clone()), true, at(2));
        assert_eq!(refused.unwrap_err().code, "FileAlreadyExists");
        assert_eq!(read_object(dir, "b", "big.bin").unwrap().unwrap().1, b"original");
        let meta = complete(dir, &id, "b", "big.bin", Some(chosen), false, at(2)).unwrap();
        let (_, data) = read_object(dir, "b", "big.bin").unwrap().unwrap();
        let mut whole = first.clone();
        whole.extend_from_slice(b"world");
        assert_eq!(data, whole);
        assert_eq!(
            (meta.auth.as_str(), meta.content_type.as_str()),
            ("multipart", "application/x-test")
        );
        let mut digests = hex::decode(e1.trim_matches('"')).unwrap();
        digests.extend(hex::decode(e2.trim_matches('"')).unwrap());
        assert_eq!(
            meta.etag,
            format!("\"{}-2\"", hex::encode_upper(Md5::digest(&digests)))
        );
        assert_eq!(meta.md5, hex::encode(Md5::digest(&whole)));
        // Completed uploads are gone.
        assert_eq!(abort(dir, &id, "b", "big.bin").unwrap_err().code, "NoSuchUpload");
        assert_eq!(
            list_parts(dir, &id, "b", "big.bin").unwrap_err().code,
            "NoSuchUpload"
        );
        assert_eq!(
            abort(dir, "../../x", "b", "big.bin").unwrap_err().code,
            "NoSuchUpload"
        );
        assert_eq!(
            check_not_exists(dir, "b", "big.bin").unwrap_err().code,
            "FileAlreadyExists"
        );
        check_not_exists(dir, "b", "new.bin").unwrap();

        let id = create_upload(dir, "b", "all.bin", "x/y", at(3)).unwrap();
        assert_eq!(
            complete(dir, &id, "b", "all.bin", None, false, at(3))
                .unwrap_err()
                .code,
            "MalformedXML"
        );
        let put = |n: u32, data: &[u8]| {
            put_part(
                dir,
                &id,
                "b",
                "all.bin",
                n,
                Spooled::from_bytes(dir, data).unwrap(),
                at(3),
            )
            .unwrap()
        };
        put(2, b"B");
        put(1, b"A");
        assert_eq!(
            complete(dir, &id, "b", "all.bin", None, false, at(3))
                .unwrap_err()
                .code,
            "EntityTooSmall"
        );
        let mut a = b"A".to_vec();
        a.resize(MIN_PART_SIZE as usize, b'a');
        put(1, &a);
        complete(dir, &id, "b", "all.bin", None, false, at(3)).unwrap();
        a.push(b'B');
        assert_eq!(read_object(dir, "b", "all.bin").unwrap().unwrap().1, a);

        let id = create_upload(dir, "b", "gone.bin", "x/y", at(3)).unwrap();
        abort(dir, &id, "b", "gone.bin").unwrap();
        assert!(!dir.join("uploads").join(&id).exists());
    }

    fn state(dir: &Path) -> Arc<LocalState> {
        Arc::new(LocalState::new(dir.to_path_buf()))
    }

    async fn get_page(app: Router, uri: &str, accept: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::builder().uri(uri);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (parts.status, parts.headers, bytes.to_vec())
    }

    #[tokio::test]
    async fn listing_page_json_and_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let st = state(tmp.path());
        put_bytes(
            tmp.path(),
            "b",
            "x/<script>.html",
            b"<b>hi</b>",
            "text/html",
            "post-v4",
            at(1),
        )
        .unwrap();
        put_bytes(
            tmp.path(),
            "b",
            "later.txt",
            b"2",
            "text/plain",
            "v1-query",
            at(2),
        )
        .unwrap();
        let app = objects_router(st);

        let (status, headers, body) = get_page(app.clone(), "/_local/objects", None).await;
        let html = String::from_utf8(body).unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(html.contains("ossvend local mode \u{2014} development only"));
        assert!(html.contains("x/&lt;script&gt;.html") && !html.contains("<script>"));
        assert!(html.contains("href=\"/_local/objects/b/x/%3Cscript%3E.html\""));

        for (uri, accept) in [
            ("/_local/objects?format=json", None),
            ("/_local/objects", Some("application/json")),
        ] {
            let (_, headers, body) = get_page(app.clone(), uri, accept).await;
            assert!(
                headers[header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json")
            );
            let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let objects = doc["objects"].as_array().unwrap();
            assert_eq!(objects[0]["key"], "later.txt");
            let first = objects[1].as_object().unwrap();
            let mut names: Vec<&str> = first.keys().map(String::as_str).collect();
            names.sort();
            assert_eq!(
                names,
                [
                    "auth",
                    "bucket",
                    "content_type",
                    "etag",
                    "key",
                    "last_modified",
                    "md5",
                    "size"
                ]
            );
            assert_eq!(first["auth"], "post-v4");
            assert_eq!(first["size"], 9);
            assert_eq!(first["last_modified"], "1970-01-01T00:00:01.000Z");
        }

        let (status, headers, body) =
            get_page(app.clone(), "/_local/objects/b/x/%3Cscript%3E.html", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"<b>hi</b>");
        assert_eq!(headers[header::CONTENT_TYPE], "text/html");
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], "sandbox");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");

        for missing in [
            "/_local/objects/b/nope",
            "/_local/objects/b/..%2Fb%2Flater.txt",
            "/_local/objects/B/later.txt",
        ] {
            let (status, _, body) = get_page(app.clone(), missing, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
            let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(doc["code"], "not_found");
        }
    }
}
