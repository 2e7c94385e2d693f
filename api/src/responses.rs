//! The answers and headers many operations share, for the document: the refusals every keyed
//! operation can give, those of a create, the 404 of a job or pipeline that is not the caller's,
//! the success of a create (202, or 201 once it ended under `Prefer: wait`), of a read that may
//! wait and of an event stream, and the `Prefer` and `Last-Event-ID` headers. Each is a type the
//! route annotations list (`responses(KeyRefusals, …)`, `params(WaitPreference)`), so a status's
//! or a header's description is written once, here, whatever number of operations use it.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, Required, Type};
use utoipa::{IntoParams, IntoResponses, ToSchema};

type Responses = BTreeMap<String, RefOr<Response>>;

fn header(description: &str, kind: Type) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(kind))
        .description(Some(description))
        .build()
}

/// A problem answer; one that a retry later may cure (429, 503) says when, in `Retry-After`.
fn problem(status: u16, description: &str) -> RefOr<Response> {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/problem+json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build(),
    );
    if matches!(status, 429 | 503) {
        response = response.header(
            "Retry-After",
            header("Seconds until a retry may succeed", Type::Integer),
        );
    }
    response.build().into()
}

/// A JSON answer with `T`, and the headers named.
fn answer<T: ToSchema>(description: &str, headers: &[(&str, &str, Type)]) -> RefOr<Response> {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(T::name())))
            .build(),
    );
    for (name, text, kind) in headers {
        response = response.header(*name, header(text, kind.clone()));
    }
    response.build().into()
}

/// Declares a set of problem answers as one type the route annotations can list.
macro_rules! problems {
    ($($(#[$doc:meta])* $name:ident { $($status:literal => $description:literal),+ $(,)? })+) => {
        $(
            $(#[$doc])*
            pub struct $name;

            impl IntoResponses for $name {
                fn responses() -> Responses {
                    BTreeMap::from([$(($status.to_string(), problem($status, $description))),+])
                }
            }
        )+
    };
}

problems! {
    /// What any operation that takes an API key may answer.
    KeyRefusals {
        401 => "No valid API key",
        429 => "Past the key's request rate (Retry-After)",
    }
    /// What a create may answer before it writes anything (its 422 is its own).
    CreateRefusals {
        400 => "The body is not JSON, or a malformed Idempotency-Key",
        401 => "No valid API key",
        403 => "Above the key's highest priority",
        409 => "The Idempotency-Key's first request is still being answered",
        413 => "The body is too large",
        429 => "Past the key's request rate, active-job limit or daily spend cap (Retry-After)",
    }
    /// A job id that is not one of the caller's.
    NoSuchJob {
        404 => "No such job (or another tenant's)",
    }
    /// A pipeline id that is not one of the caller's.
    NoSuchPipeline {
        404 => "No such pipeline (or another tenant's)",
    }
    /// A list's filters refused.
    BadFilter {
        400 => "A bad filter (named in `field`)",
    }
}

/// A create's success: 202 while what it created runs, 201 once it ended within the client's
/// `Prefer: wait`.
pub struct Created<T>(PhantomData<T>);

impl<T: ToSchema> IntoResponses for Created<T> {
    fn responses() -> Responses {
        let headers = [
            ("Location", "The created resource", Type::String),
            ("Retry-After", "A poll hint while unfinished", Type::Integer),
            (
                "Preference-Applied",
                "`wait=N` when `Prefer: wait` was honoured",
                Type::String,
            ),
            (
                "Idempotent-Replayed",
                "`true` on a replayed answer",
                Type::String,
            ),
        ];
        BTreeMap::from([
            (
                "202".to_owned(),
                answer::<T>("Committed; not finished yet", &headers),
            ),
            (
                "201".to_owned(),
                answer::<T>("Created and finished (under `Prefer: wait`)", &headers),
            ),
        ])
    }
}

/// A read that may wait for its resource to end (`Prefer: wait=N`).
pub struct Polled<T>(PhantomData<T>);

impl<T: ToSchema> IntoResponses for Polled<T> {
    fn responses() -> Responses {
        let headers = [
            ("Retry-After", "A poll hint while unfinished", Type::Integer),
            (
                "Preference-Applied",
                "`wait=N` when `Prefer: wait` was honoured",
                Type::String,
            ),
        ];
        BTreeMap::from([(
            "200".to_owned(),
            answer::<T>(
                "As it is now (with `Retry-After` while unfinished)",
                &headers,
            ),
        )])
    }
}

/// A read that streams its resource as server-sent events.
pub struct EventStream<T>(PhantomData<T>);

impl<T: ToSchema> IntoResponses for EventStream<T> {
    fn responses() -> Responses {
        // The events' shape (`event`, `id`, `data` as the resource's JSON) is written into the
        // document by `crate::openapi::add_event_streams`.
        let response = ResponseBuilder::new()
            .description(format!(
                "Server-sent events: the {} at each change, ending after the terminal one",
                T::name().to_lowercase()
            ))
            .content(
                "text/event-stream",
                ContentBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .build(),
            )
            .build();
        BTreeMap::from([("200".to_owned(), response.into())])
    }
}

/// An optional header of text.
fn header_param(name: &str, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

/// `Prefer: wait=N`, on a create or a read that may wait.
pub struct WaitPreference;

impl IntoParams for WaitPreference {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![header_param(
            "Prefer",
            "`wait=N` (N ≤ 60): answer once it has ended, or after N seconds; a bare `wait` waits up to 55 s",
        )]
    }
}

/// `Idempotency-Key`, on every create that replays a retry's first answer
/// (`crate::idempotency`).
pub struct IdempotencyKey;

impl IntoParams for IdempotencyKey {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let mut param = header_param(
            "Idempotency-Key",
            "Makes a retry safe: the same key and body replay the first answer",
        );
        param.schema = Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(255))
                .into(),
        );
        vec![param]
    }
}

/// `Last-Event-ID`, on an event stream.
pub struct ResumeFrom;

impl IntoParams for ResumeFrom {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![header_param(
            "Last-Event-ID",
            "Resume: the id of the last event received; the resource is sent once it differs from that state",
        )]
    }
}
