//! `GET /openapi.json`: the OpenAPI 3 document of the HTTP API, derived from the
//! routes `routes::api` declares (their `#[utoipa::path]` annotations and the
//! response types' `ToSchema` derives), built once and cached. `docs/openapi.json` is its
//! committed snapshot (kept honest by `tests/it/openapi.rs`).

use std::borrow::Cow;
use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr, Required};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

use crate::formats::{AlibabaBody, AwsContainerBody, CamelBody, CredentialProcessBody};

use super::authorized::Authorized;
use super::responses::ErrorResponses;
use super::upload::{LegacyPostFields, PostBody};

const DESCRIPTION: &str = "\
Vends short-lived, least-privilege upload rights for Alibaba Cloud OSS: STS credentials \
(`/v1/grants/{grant}/credentials`), signed PostObject forms (`/post-policy`) and presigned PUT URLs \
(`/presign`), each for one configured grant, plus the legacy single-grant paths of the seeds \
(`/get_*_for_oss_upload`, which use `server.default_grant`).

Each grant lists the authentication methods it accepts (`auth = [...]`): an API key \
(`X-Api-Key`, or `Authorization: ApiKey <key>`), a JWT (`Authorization: Bearer <JWT>`), a ticket \
(`?ticket=`, minted by `POST /v1/tickets`) or nothing (anonymous). Which of the listed security \
requirements a grant route actually needs depends on the grant's configuration. A request that \
carries two credentials of a kind (two `Authorization` or `X-Api-Key` headers, two `ticket` \
parameters, or an `X-Api-Key` and an `Authorization` key that differ) is answered 400 \
`ambiguous_credentials`.

Every response carries an `X-Request-Id` header (a caller's own `X-Request-Id` is kept when it is a \
plain token). Every error is the JSON `Error` body with a stable `code`; besides the statuses listed \
per operation, any path answers 404 `not_found` for an unknown route, 405 `method_not_allowed` for a \
method it does not serve, 413 `payload_too_large` for a body over `server.body_limit_bytes` and \
504 `timeout` after `server.request_timeout`.

Not described here: the routes of local mode (`ossvend local`: `/_local/sts`, `/_local/objects`, \
`/_local/status` and the OSS sink on its own port), the demo page served at `/` when \
`server.static_dir` is set, and the admin listener (`admin.listen`: `/metrics` and \
`POST /admin/reload`). Without an admin listener `GET /metrics` is served on the main listener, as \
described below.";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ossvend",
        description = DESCRIPTION,
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(crate::error::Body)),
    modifiers(&SecuritySchemes, &ErrorResponses),
    tags(
        (name = "credentials", description = "Temporary STS credentials for a grant"),
        (name = "uploads", description = "Locally signed single uploads: PostObject forms and presigned PUT URLs"),
        (name = "upload sessions", description = "Large files: multipart uploads the server opens, signs part by part, checks and completes"),
        (name = "auth", description = "Tickets and the per-caller dry run"),
        (name = "callbacks", description = "OSS upload callbacks, verified and delivered to the application as signed webhooks"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    ),
)]
pub(crate) struct ApiDoc;

/// The security schemes the grant routes and `POST /v1/tickets` name.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "An API key from `[[auth.api_keys]]` (method `api_key`). `Authorization: ApiKey <key>` \
                 and a bare key in `Authorization` (the AWS SDKs' `AWS_CONTAINER_AUTHORIZATION_TOKEN`) \
                 are accepted too.",
            ))),
        );
        components.add_security_scheme(
            "jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT verified against `[auth.jwt]`'s JWKS, issuer and audience (method `jwt`).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "ticket",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "ticket",
                "A short-lived ticket minted by `POST /v1/tickets`, bound to a subject and a grant \
                 (method `ticket`).",
            ))),
        );
    }
}

/// The request headers of the routes that authenticate a caller (what
/// `Presented::from_request` and the request-id middleware read).
pub(crate) enum AuthHeaders {}

impl IntoParams for AuthHeaders {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let header = |name: &str, description: &str, pattern: Option<&str>| {
            let schema = ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                .pattern(pattern);
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Header)
                .description(Some(description))
                .required(Required::False)
                .schema(Some(schema))
                .build()
        };
        vec![
            header("X-Api-Key", "An API key, for grants that accept `api_key`.", None),
            header(
                "Authorization",
                "`Bearer <JWT>` (grants that accept `jwt`), `ApiKey <key>`, or a bare API key (the AWS SDKs'\n\
                 `AWS_CONTAINER_AUTHORIZATION_TOKEN`). Also described by the `jwt` security scheme.",
                None,
            ),
            header(
                "X-Request-Id",
                "The caller's request id; kept (and echoed) when it is 1–128 characters of `A-Za-z0-9-_.:`,\n\
                 else a new one is made.",
                Some("^[A-Za-z0-9._:-]{1,128}$"),
            ),
        ]
    }
}

/// What the `Authorized` extractor reads: `?ticket=` and the [`AuthHeaders`].
impl IntoParams for Authorized {
    fn into_params(in_provider: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let ticket = ParameterBuilder::new()
            .name("ticket")
            .parameter_in(ParameterIn::Query)
            .description(Some(
                "A ticket from `POST /v1/tickets` (grants that accept `ticket`)",
            ))
            .required(Required::False)
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .build();
        std::iter::once(ticket)
            .chain(AuthHeaders::into_params(in_provider))
            .collect()
    }
}

/// A credential body: one of the spellings `format` selects (`formats::to_json`
/// writes them).
pub(crate) enum CredentialsBody {}

impl PartialSchema for CredentialsBody {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Ref::from_schema_name(AlibabaBody::name()))
            .item(Ref::from_schema_name(AwsContainerBody::name()))
            .item(Ref::from_schema_name(CamelBody::name()))
            .item(Ref::from_schema_name(CredentialProcessBody::name()))
            .description(Some("A credential body: one of the spellings `format` selects."))
            .into()
    }
}

impl ToSchema for CredentialsBody {
    fn name() -> Cow<'static, str> {
        "Credentials".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        fn add<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
            schemas.push((T::name().into(), T::schema()));
            T::schemas(schemas);
        }
        add::<AlibabaBody>(schemas);
        add::<AwsContainerBody>(schemas);
        add::<CamelBody>(schemas);
        add::<CredentialProcessBody>(schemas);
    }
}

/// `/get_post_signature_for_oss_upload`: the PostObject form plus the flat fields
/// of the seeds' web sample (`PostBody` flattens its `legacy` fields).
pub(crate) enum LegacyPostBody {}

impl PartialSchema for LegacyPostBody {
    fn schema() -> RefOr<Schema> {
        AllOfBuilder::new()
            .item(Ref::from_schema_name(PostBody::name()))
            .item(Ref::from_schema_name(LegacyPostFields::name()))
            .description(Some(
                "`/get_post_signature_for_oss_upload`: the PostObject form plus the flat fields\n\
                 of the seeds' web sample.",
            ))
            .into()
    }
}

impl ToSchema for LegacyPostBody {
    fn name() -> Cow<'static, str> {
        "LegacyPostPolicy".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((PostBody::name().into(), PostBody::schema()));
        PostBody::schemas(schemas);
        schemas.push((LegacyPostFields::name().into(), LegacyPostFields::schema()));
        LegacyPostFields::schemas(schemas);
    }
}

/// This OpenAPI document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    params(("X-Request-Id" = Option<String>, Header, description = "The caller's request id")),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", body = Object,
            content_type = "application/json"),
    ),
)]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        document(),
    )
        .into_response()
}

/// The document as pretty-printed JSON, built on first use.
pub fn document() -> &'static str {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        let (_, mut doc) = super::api(true).split_for_parts();
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        doc.to_pretty_json().expect("the OpenAPI document serialises")
    });
    &DOCUMENT
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_is_json_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::document()).unwrap();
        assert_eq!(doc["info"]["title"], "ossvend");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.contains_key("/v1/grants/{grant}/credentials"));
        assert!(paths.contains_key("/openapi.json"));
    }
}
