//! The local OSS sink's errors: OSS's codes, statuses and default messages, and
//! the `<Error>` XML they are answered with. Shared by the HTTP side
//! ([`super::oss`]), authentication ([`super::verify`]), session policies
//! ([`super::access`]) and storage ([`super::store`]).

/// How a request was (or tried to be) authenticated; `as_str` is the label in
/// logs and in the object listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthScheme {
    V1Header,
    V4Header,
    V1Query,
    V4Query,
    PostV1,
    PostV4,
}

impl AuthScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthScheme::V1Header => "v1-header",
            AuthScheme::V4Header => "v4-header",
            AuthScheme::V1Query => "v1-query",
            AuthScheme::V4Query => "v4-query",
            AuthScheme::PostV1 => "post-v1",
            AuthScheme::PostV4 => "post-v4",
        }
    }
}

/// `HostId` of error answers; the sink only ever listens on loopback.
pub(super) const HOST_ID: &str = "127.0.0.1";

/// Code, HTTP status and default message, as real OSS answers them.
const ERRORS: &[(&str, u16, &str)] = &[
    ("AccessDenied", 403, "You have no right to access this object."),
    (
        "InvalidAccessKeyId",
        403,
        "The OSS Access Key Id you provided does not exist in our records.",
    ),
    (
        "InvalidSecurityToken",
        403,
        "The security token you provided is invalid.",
    ),
    (
        "SecurityTokenExpired",
        403,
        "The security token you provided has expired.",
    ),
    (
        "SignatureDoesNotMatch",
        403,
        "The request signature we calculated does not match the signature you provided. \
         Check your key and signing method.",
    ),
    (
        "RequestTimeTooSkewed",
        403,
        "The difference between the request time and the current time is too large.",
    ),
    ("InvalidArgument", 400, "Invalid argument."),
    ("InvalidBucketName", 400, "The specified bucket is not valid."),
    (
        "InvalidObjectName",
        400,
        "The specified object name is not valid.",
    ),
    ("InvalidPolicyDocument", 400, "Invalid Policy."),
    (
        "MalformedPOSTRequest",
        400,
        "The body of your POST request is not well-formed multipart/form-data.",
    ),
    (
        "MalformedXML",
        400,
        "The XML you provided was not well-formed or did not validate against our published schema.",
    ),
    (
        "EntityTooLarge",
        400,
        "Your proposed upload exceeds the maximum allowed size.",
    ),
    (
        "EntityTooSmall",
        400,
        "Your proposed upload is smaller than the minimum allowed size.",
    ),
    ("InvalidDigest", 400, "The Content-MD5 you specified was invalid."),
    (
        "InvalidPart",
        400,
        "One or more of the specified parts could not be found or the specified entity tag might not \
         have matched the part's entity tag.",
    ),
    (
        "InvalidPartOrder",
        400,
        "The list of parts was not in ascending order.",
    ),
    ("NoSuchKey", 404, "The specified key does not exist."),
    (
        "NoSuchUpload",
        404,
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been \
         aborted or completed.",
    ),
    (
        "FileAlreadyExists",
        409,
        "The object you specified already exists and can not be overwritten.",
    ),
    (
        "MethodNotAllowed",
        405,
        "The specified method is not allowed against this resource.",
    ),
    (
        "InternalError",
        500,
        "We encountered an internal error. Please try again.",
    ),
    (
        "NotImplemented",
        501,
        "A header you provided implies functionality that is not implemented.",
    ),
];

/// An OSS error answer: `<Error><Code/><Message/><RequestId/><HostId/>…</Error>`.
#[derive(Debug, Clone)]
pub struct OssError {
    pub code: &'static str,
    pub status: u16,
    pub message: String,
    /// Further `<Error>` children, in order (`StringToSign`, `Expires`, …).
    pub extra: Vec<(&'static str, String)>,
    /// The scheme the failed request tried, for the log line.
    pub auth: Option<AuthScheme>,
    /// The AccessKeyId it claimed, for the log line.
    pub access_key_id: Option<String>,
}

impl OssError {
    /// `code` with OSS's default status and message.
    pub fn new(code: &'static str) -> Self {
        let (status, message) = ERRORS
            .iter()
            .find(|(c, _, _)| *c == code)
            .map_or((400, code), |(_, s, m)| (*s, *m));
        OssError {
            code,
            status,
            message: message.to_string(),
            extra: Vec::new(),
            auth: None,
            access_key_id: None,
        }
    }

    pub fn msg(code: &'static str, message: impl Into<String>) -> Self {
        OssError {
            message: message.into(),
            ..OssError::new(code)
        }
    }

    /// Adds an `<Error>` child; `OSSAccessKeyId` also names the key for the log.
    pub fn with_extra(mut self, name: &'static str, value: impl Into<String>) -> Self {
        let value = value.into();
        if name == "OSSAccessKeyId" && self.access_key_id.is_none() {
            self.access_key_id = Some(value.clone());
        }
        self.extra.push((name, value));
        self
    }

    /// Records how the failed request authenticated, unless already known.
    pub fn tag(mut self, auth: Option<AuthScheme>, access_key_id: Option<&str>) -> Self {
        self.auth = self.auth.or(auth);
        if self.access_key_id.as_deref().is_none_or(str::is_empty) {
            self.access_key_id = access_key_id.filter(|a| !a.is_empty()).map(str::to_string);
        }
        self
    }

    pub fn to_xml(&self, request_id: &str) -> String {
        let mut children: Vec<(&str, &str)> = vec![
            ("Code", self.code),
            ("Message", &self.message),
            ("RequestId", request_id),
            ("HostId", HOST_ID),
        ];
        children.extend(self.extra.iter().map(|(n, v)| (*n, v.as_str())));
        xml_doc("Error", &children)
    }
}

/// `<?xml …?>\n<root><name>value</name>…</root>` with `&`, `<`, `>` escaped.
pub(super) fn xml_doc(root: &str, children: &[(&str, &str)]) -> String {
    let inner: String = children
        .iter()
        .map(|(name, value)| format!("<{name}>{}</{name}>", quick_xml::escape::escape(*value)))
        .collect();
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{root}>{inner}</{root}>")
}
