//! The error responses the operations share, each described once: every one is
//! a component of the OpenAPI document (`#/components/responses/<name>`), named
//! by the operations with `(status = …, response = Name)` or through a group
//! (an `IntoResponses` type) for the sets of errors many routes answer alike.

use std::collections::BTreeMap;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{Components, ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, Modify, ToResponse};

/// A response header: `(name, is a number of seconds, description)`.
type Header = (&'static str, bool, &'static str);

const RETRY_AFTER: Header = ("Retry-After", true, "Seconds to wait");
const WWW_AUTHENTICATE: Header = (
    "WWW-Authenticate",
    false,
    "One challenge per method the grant accepts",
);

/// An error response: the JSON `Error` body, the description naming its codes.
fn error(description: &str, headers: &[Header]) -> Response {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Error")))
            .build(),
    );
    for &(name, seconds, description) in headers {
        let schema = if seconds {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(0))
        } else {
            ObjectBuilder::new().schema_type(Type::String)
        };
        response = response.header(
            name,
            HeaderBuilder::new()
                .schema(schema)
                .description(Some(description))
                .build(),
        );
    }
    response.build()
}

/// Declares the shared error responses: a type per response (for
/// `response = Name`) and [`ErrorResponses`], which adds them all to the document.
macro_rules! error_responses {
    ($($name:ident = ($description:expr $(, $header:expr)*);)*) => {
        $(
            pub(crate) enum $name {}

            impl<'s> ToResponse<'s> for $name {
                fn response() -> (&'s str, RefOr<Response>) {
                    (stringify!($name), error($description, &[$($header),*]).into())
                }
            }
        )*

        /// Adds every shared error response to the document's components.
        pub(crate) struct ErrorResponses;

        impl Modify for ErrorResponses {
            fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
                let components = openapi.components.get_or_insert_with(Components::default);
                $(
                    let (name, response) = <$name as ToResponse>::response();
                    components.responses.insert(name.to_owned(), response);
                )*
            }
        }
    };
}

error_responses! {
    UnknownFormat = ("`unknown_format`: `format` is not `default`, `aws`, `camel` or `credential-process`");
    BadUploadQuery = ("`content_type_required`, `content_type_not_allowed` or `invalid_content_type` (the grant's Content-Type allowlist), or `bad_request` (an unparsable query)");
    BadUploadBody = ("`content_type_required`, `content_type_not_allowed` or `invalid_content_type` (the grant's Content-Type allowlist), or `bad_request` (unparsable JSON or query, or a body without the expected fields)");
    BadTicketRequest = ("`bad_request`: no JSON body, unparsable JSON, or a body without the expected fields");
    Unauthenticated = ("`unauthenticated` (no credentials) or `invalid_credentials` (bad, expired or not yet valid)", WWW_AUTHENTICATE);
    Forbidden = ("`auth_method_not_allowed` (the grant does not accept this method), `grant_not_allowed` (the API key may not use this grant), `wrong_grant` (a ticket for another grant) or `invalid_principal` (a caller value the grant's templates refuse)");
    TicketForbidden = ("`auth_method_not_allowed` (the grant does not accept tickets, or the caller's method), `grant_not_allowed` (the API key may not use this grant) or `invalid_principal` (a caller value the grant's templates refuse)");
    UnknownGrant = ("`unknown_grant`: no grant has this name");
    NoDefaultGrant = ("`no_default_grant`: `server.default_grant` is not set");
    PayloadTooLarge = ("`payload_too_large`: the body is over `server.body_limit_bytes`");
    ExtensionMismatch = ("`extension_mismatch`: the file name's extension does not fit the declared content type (or, with none declared, any of the grant's allowed types)");
    DeclaredExtensionMismatch = ("`extension_mismatch`: the file name's extension does not fit the declared content type");
    RateLimited = ("`rate_limited`: over the grant's `per_subject_per_minute` or `per_ip_per_minute`", RETRY_AFTER);
    SigningFailed = ("`internal_error`: signing failed");
    StsRefused = ("`sts_denied`, `sts_rejected_request` or `sts_short_lived`: STS refused or returned a credential too short-lived (`sts_code` says what STS answered)");
    Unavailable = ("`sts_throttled`, `sts_unavailable` or `identity_unavailable` (no valid signing credential), or `auth_unavailable` (the JWT issuer's keys could not be fetched)", ("Retry-After", true, "With `sts_throttled` and `sts_unavailable`: seconds until ossvend calls STS again for this grant"));
    AuthUnavailable = ("`auth_unavailable`: the JWT issuer's keys could not be fetched");
    Timeout = ("`timeout`: the request took longer than `server.request_timeout`");
    SessionBadRequest = ("`invalid_upload_request` (size, part size, part numbers), `invalid_md5` (not base64 of 16 bytes), `content_type_required`, `content_type_not_allowed`, `invalid_content_type`, or `bad_request` (unparsable JSON or query)");
    SessionForbidden = ("`multipart_not_enabled` (the grant has no `multipart = true`), `upload_not_yours` (another caller's session), or as on every grant route `auth_method_not_allowed`, `grant_not_allowed`, `wrong_grant`, `invalid_principal`");
    SessionNotFound = ("`unknown_upload` (a session handle this server did not seal, expired, another grant's, or one OSS no longer knows) or `unknown_grant`");
    SessionConflict = ("`object_exists`: the key already holds an object (`x-oss-forbid-overwrite`); it is left intact");
    SessionTooLarge = ("`upload_too_large`: the declared size, or the uploaded parts' total, is over `max_size_bytes` (at completion the upload is aborted); or `payload_too_large` (the request body)");
    SessionUnprocessable = ("`upload_parts_invalid`: the uploaded parts do not make the declared file (a part missing, one of another size than `part_size`); the upload is aborted. Or `extension_mismatch` when opening");
    SessionBadGateway = ("`oss_denied` (OSS refused the server's call: `oss_code` says why), `oss_rejected_request`, or `sts_denied`, `sts_rejected_request`, `sts_short_lived` (no credential to call OSS with)");
    SessionUnavailable = ("`oss_unavailable` (OSS 5xx, timeout or unreachable after bounded retries), or `sts_throttled`, `sts_unavailable`, `identity_unavailable`, `auth_unavailable`", RETRY_AFTER);
}

/// `(status, shared response)` rows as references into the components.
fn refs(rows: &[(u16, &str)]) -> BTreeMap<String, RefOr<Response>> {
    rows.iter()
        .map(|&(status, name)| (status.to_string(), Ref::from_response_name(name).into()))
        .collect()
}

fn name<'s, R: ToResponse<'s>>() -> &'s str {
    R::response().0
}

/// What the `Authorized` extractor answers on `/v1/grants/{grant}/…`.
pub(crate) enum GrantAuthErrors {}

impl IntoResponses for GrantAuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        refs(&[
            (401, name::<Unauthenticated>()),
            (403, name::<Forbidden>()),
            (404, name::<UnknownGrant>()),
            (429, name::<RateLimited>()),
            (504, name::<Timeout>()),
        ])
    }
}

/// What the `Authorized` extractor answers on the legacy paths (`server.default_grant`).
pub(crate) enum DefaultGrantAuthErrors {}

impl IntoResponses for DefaultGrantAuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        refs(&[
            (401, name::<Unauthenticated>()),
            (403, name::<Forbidden>()),
            (404, name::<NoDefaultGrant>()),
            (429, name::<RateLimited>()),
            (504, name::<Timeout>()),
        ])
    }
}

/// What a route that needs STS (or the identity) answers when it fails.
pub(crate) enum StsErrors {}

impl IntoResponses for StsErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        refs(&[(502, name::<StsRefused>()), (503, name::<Unavailable>())])
    }
}

/// What a signed upload (PostObject form, presigned URL) adds from a query.
pub(crate) enum UploadQueryErrors {}

impl IntoResponses for UploadQueryErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        refs(&[
            (400, name::<BadUploadQuery>()),
            (422, name::<ExtensionMismatch>()),
            (500, name::<SigningFailed>()),
        ])
    }
}

/// What the upload-session routes answer when they fail.
pub(crate) enum SessionErrors {}

impl IntoResponses for SessionErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        refs(&[
            (400, name::<SessionBadRequest>()),
            (401, name::<Unauthenticated>()),
            (403, name::<SessionForbidden>()),
            (404, name::<SessionNotFound>()),
            (409, name::<SessionConflict>()),
            (413, name::<SessionTooLarge>()),
            (422, name::<SessionUnprocessable>()),
            (429, name::<RateLimited>()),
            (500, name::<SigningFailed>()),
            (502, name::<SessionBadGateway>()),
            (503, name::<SessionUnavailable>()),
            (504, name::<Timeout>()),
        ])
    }
}
