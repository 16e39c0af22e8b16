//! The OpenAPI document (`/openapi.json`): what every admin call takes and
//! answers, stated so exactly that a client following it is never refused
//! for the shape of a request (issue 15, section 5; checked in CI by
//! schemathesis, crates/keygate-server/tests/it/openapi.rs).
//!
//! Most of it is derived from the handlers and crates/keygate-server/src/http/dto.rs;
//! the field grammars are in crates/keygate-server/src/http/grammar.rs. The
//! modifiers here add what applies to every call, and [`for_deployment`] what
//! only the running server knows: its plans, key environments and roles.

use std::collections::BTreeSet;

use keygate_core::grammar::NO_NUL;
use serde_json::Value;
use utoipa::openapi::path::{Operation, ParameterIn, Paths};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::schema::{ArrayItems, Schema, SchemaType, Type};
use utoipa::openapi::{Components, RefOr, Required};
use utoipa::OpenApi;

use super::{audit, keys, leaks, nodes, ops, portal, usage, webhooks, workspaces};
use crate::http::dto::ErrorEnvelope;

/// The document for this deployment: its plans, environments and roles
/// listed where they are taken, and no path this node does not serve.
pub fn for_deployment<'a>(
    plans: impl IntoIterator<Item = &'a str>,
    environments: impl IntoIterator<Item = &'a str>,
    roles: impl IntoIterator<Item = &'a str>,
    github_leaks: bool,
) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    if !github_leaks {
        document.paths.paths.remove("/v1/leaks/github");
    }
    let (plans, environments) = (or_null(plans), or_null(environments));
    if let Some(components) = document.components.as_mut() {
        for schema in ["CreateWorkspace", "UpdateWorkspace"] {
            list_values(components, schema, "plan", plans.clone());
        }
        list_values(components, "CreateKey", "environment", environments);
        let roles: Vec<Value> = roles.into_iter().map(Value::from).collect();
        for schema in ["CreateKey", "UpdateKey"] {
            list_item_values(components, schema, "roles", roles.clone());
        }
    }
    document
}

/// Every operation of the document, whatever its method.
fn operations_mut(paths: &mut Paths) -> impl Iterator<Item = &mut Operation> {
    paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
    })
}

fn or_null<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<Value> {
    names.into_iter().map(Value::from).chain([Value::Null]).collect()
}

/// Sets the values a component's property takes (`enum`).
fn list_values(components: &mut Components, schema: &str, property: &str, values: Vec<Value>) {
    if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) {
        if let Some(RefOr::T(Schema::Object(field))) = object.properties.get_mut(property) {
            field.enum_values = Some(values);
        }
    }
}

/// Sets the values the items of a component's list property take; with
/// none, the list must be empty (an empty `enum` is not valid JSON Schema).
fn list_item_values(components: &mut Components, schema: &str, property: &str, values: Vec<Value>) {
    let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) else {
        return;
    };
    let Some(RefOr::T(Schema::Array(list))) = object.properties.get_mut(property) else {
        return;
    };
    if values.is_empty() {
        list.max_items = Some(0);
    } else if let ArrayItems::RefOrSchema(items) = &mut list.items {
        if let RefOr::T(Schema::Object(item)) = items.as_mut() {
            item.enum_values = Some(values);
        }
    }
}

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // Declared once for the whole API: either scheme, one per call (a
        // call with both is refused as AMBIGUOUS_API_KEY). The ops endpoints
        // that need no key say so on their own path (`security(())`).
        openapi.security = Some(vec![
            SecurityRequirement::new("api_key", Vec::<String>::new()),
            SecurityRequirement::new("bearer", Vec::<String>::new()),
        ]);
    }
}

/// The errors any call of the admin API can get, whatever it does: declared
/// once here for every operation that needs a key, so the document lists
/// every status the server answers with (issue 15, section 5). An operation
/// that declares one itself keeps its own description.
struct CommonErrors;

impl CommonErrors {
    const STATUSES: [(&'static str, &'static str); 6] = [
        (
            "400",
            "MALFORMED_REQUEST, INVALID_JSON, or AMBIGUOUS_API_KEY (both X-API-Key and Authorization sent)",
        ),
        (
            "401",
            "MISSING_API_KEY, INVALID_API_KEY, or a revoked, expired or disabled key",
        ),
        ("403", "FORBIDDEN: the key may not use the admin API, or not for this"),
        (
            "422",
            "VALIDATION_ERROR: a parameter or field is out of range; `data.field` names it",
        ),
        (
            "429",
            "TOO_MANY_FAILED_ATTEMPTS: too many invalid keys from this address",
        ),
        (
            "503",
            "SERVICE_UNAVAILABLE: the store does not answer; nothing was changed",
        ),
    ];
}

impl utoipa::Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        for operation in operations_mut(&mut openapi.paths) {
            // `security(())`: an endpoint that needs no key.
            let open = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            if open {
                continue;
            }
            for (status, description) in Self::STATUSES {
                if operation.responses.responses.contains_key(status) {
                    continue;
                }
                let content = ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                    .build();
                let response = ResponseBuilder::new()
                    .description(description)
                    .content("application/json", content)
                    .build();
                operation.responses.responses.insert(status.to_owned(), response.into());
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "keygate admin API", description = "Workspaces, API keys, verification, audit events, events and webhooks."),
    paths(
        ops::healthz, ops::readyz, ops::metrics, workspaces::create_workspace, workspaces::list_workspaces, workspaces::get_workspace, workspaces::update_workspace, workspaces::delete_workspace,
        keys::create_key, keys::import_keys, keys::list_keys, keys::get_key, keys::update_key, keys::delete_key, keys::revoke_key, keys::rotate_key, usage::key_usage, usage::workspace_usage, usage::top_keys, keys::verify_key, keys::key_changes, keys::lookup_keys,
        audit::audit_events, portal::create_portal_session, webhooks::list_events, webhooks::create_webhook, webhooks::list_webhooks, webhooks::get_webhook, webhooks::delete_webhook,
        webhooks::webhook_deliveries, ops::reload_config, leaks::github_report, nodes::list_nodes
    ),
    components(schemas(ErrorEnvelope)),
    modifiers(&SecuritySchemes, &CommonErrors, &OptionalBodies, &TextWithoutNul, &FlatGenerics)
)]
pub struct ApiDoc;

/// `Propagated<T>` (crates/keygate-server/src/http/dto.rs) flattens `T`;
/// utoipa writes `T`'s schema inline into each instance, an `allOf` inside
/// an `allOf` that client generators (openapi-python-client among them)
/// cannot merge, so they lose every field of `T`. Each instance refers to
/// `T`'s own component instead: the same schema, one level deep.
struct FlatGenerics;

impl utoipa::Modify for FlatGenerics {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let names: Vec<String> = components.schemas.keys().cloned().collect();
        for name in names {
            let Some(inner) = name.strip_prefix("Propagated_") else {
                continue;
            };
            if !components.schemas.contains_key(inner) {
                continue;
            }
            if let Some(RefOr::T(Schema::AllOf(all_of))) = components.schemas.get_mut(&name) {
                if let Some(first) = all_of.items.first_mut() {
                    *first = RefOr::Ref(utoipa::openapi::Ref::from_schema_name(inner));
                }
            }
        }
    }
}

/// A body whose fields are all optional may be left out: the server reads an
/// empty body as `{}` (crates/keygate-server/src/http/extract.rs), so `PATCH`
/// with no body changes nothing and `revoke` needs no reason. Declared so.
struct OptionalBodies;

impl OptionalBodies {
    fn all_optional(components: &Components, body: &RequestBody) -> bool {
        body.content.values().all(|content| match &content.schema {
            Some(RefOr::Ref(reference)) => {
                let name = reference.ref_location.rsplit('/').next().unwrap_or_default();
                matches!(components.schemas.get(name), Some(RefOr::T(Schema::Object(object))) if object.required.is_empty())
            }
            _ => false,
        })
    }
}

impl utoipa::Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_ref() else {
            return;
        };
        for operation in operations_mut(&mut openapi.paths) {
            if let Some(body) = operation.request_body.as_mut() {
                if Self::all_optional(components, body) {
                    body.required = Some(Required::False);
                }
            }
        }
    }
}

/// Every string a request carries that has no grammar of its own is stated
/// free of NUL, as the server checks (crates/keygate-server/src/http/extract.rs):
/// query parameters, and the fields of request bodies and of the schemas
/// they refer to.
struct TextWithoutNul;

impl TextWithoutNul {
    fn state(schema: &mut RefOr<Schema>) {
        match schema {
            RefOr::T(Schema::Object(object)) => {
                let text = match &object.schema_type {
                    SchemaType::Type(kind) => *kind == Type::String,
                    SchemaType::Array(kinds) => kinds.contains(&Type::String),
                    SchemaType::AnyValue => false,
                };
                if text && object.pattern.is_none() && object.format.is_none() && object.enum_values.is_none() {
                    object.pattern = Some(NO_NUL.to_owned());
                }
            }
            RefOr::T(Schema::Array(array)) => {
                if let ArrayItems::RefOrSchema(items) = &mut array.items {
                    Self::state(items);
                }
            }
            _ => {}
        }
    }

    fn name_of(schema: &RefOr<Schema>) -> Option<String> {
        let reference = match schema {
            RefOr::Ref(reference) => reference,
            RefOr::T(Schema::Array(array)) => match &array.items {
                ArrayItems::RefOrSchema(items) => match items.as_ref() {
                    RefOr::Ref(reference) => reference,
                    _ => return None,
                },
                ArrayItems::False => return None,
            },
            _ => return None,
        };
        reference.ref_location.rsplit('/').next().map(str::to_owned)
    }

    /// The request bodies' schemas, and those their fields refer to.
    fn request_schemas(openapi: &utoipa::openapi::OpenApi, components: &Components) -> BTreeSet<String> {
        let bodies: BTreeSet<String> = openapi
            .paths
            .paths
            .values()
            .flat_map(|item| [&item.post, &item.put, &item.patch])
            .flatten()
            .filter_map(|operation| operation.request_body.as_ref())
            .flat_map(|body| body.content.values())
            .filter_map(|content| content.schema.as_ref().and_then(Self::name_of))
            .collect();
        let referred = bodies
            .iter()
            .filter_map(|name| match components.schemas.get(name) {
                Some(RefOr::T(Schema::Object(object))) => Some(object.properties.values().filter_map(Self::name_of)),
                _ => None,
            })
            .flatten()
            .collect::<Vec<_>>();
        bodies.into_iter().chain(referred).collect()
    }
}

impl utoipa::Modify for TextWithoutNul {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_ref() {
            let names = Self::request_schemas(openapi, components);
            if let Some(components) = openapi.components.as_mut() {
                for name in names {
                    match components.schemas.get_mut(&name) {
                        Some(RefOr::T(Schema::Object(object))) if !object.properties.is_empty() => {
                            object.properties.values_mut().for_each(Self::state);
                        }
                        Some(schema) => Self::state(schema),
                        None => {}
                    }
                }
            }
        }
        for operation in operations_mut(&mut openapi.paths) {
            let parameters = operation.parameters.iter_mut().flatten();
            for parameter in parameters.filter(|p| p.parameter_in == ParameterIn::Query) {
                if let Some(schema) = parameter.schema.as_mut() {
                    Self::state(schema);
                }
            }
        }
    }
}
