//! The stream routes in `/openapi.json`: one catch-all route serves them
//! (`routes.rs`), so their operations are written here, with every header
//! and query parameter the protocol reads and every answer it gives.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, Required, Type};
use utoipa::Modify;

/// Adds `/v1/stream/{path}` and `/v1/stream/jobs/{job_id}` to a document.
pub struct StreamPaths;

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn header(name: &str, description: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(string()))
        .build()
}

fn query(name: &str, description: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(string()))
        .build()
}

fn path_param(name: &str, description: &str, uuid: bool) -> utoipa::openapi::path::Parameter {
    let schema = if uuid {
        string().format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Uuid,
        )))
    } else {
        string().pattern(Some("^[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$"))
    };
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// A success with the stream's headers and any body (or none).
fn ok(description: &str, body: bool) -> utoipa::openapi::Response {
    let mut r = ResponseBuilder::new().description(description);
    for name in [
        "Stream-Next-Offset",
        "Stream-Up-To-Date",
        "Stream-Closed",
        "Stream-Cursor",
        "ETag",
        "Location",
        "Producer-Epoch",
        "Producer-Seq",
    ] {
        r = r.header(name, HeaderBuilder::new().schema(string()).build());
    }
    if body {
        r = r.content("*/*", ContentBuilder::new().build());
    }
    r.build()
}

fn error(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

fn operation(
    summary: &str,
    params: Vec<utoipa::openapi::path::Parameter>,
    answers: &[(&str, utoipa::openapi::Response)],
    body: bool,
) -> utoipa::openapi::path::Operation {
    let mut responses = ResponsesBuilder::new();
    for (status, response) in answers {
        responses = responses.response(*status, response.clone());
    }
    let mut op = OperationBuilder::new()
        .summary(Some(summary))
        .tag("streams")
        .parameters(Some(params))
        .responses(responses.build())
        .security(SecurityRequirement::new("bearer", Vec::<String>::new()));
    if body {
        op = op.request_body(Some(
            utoipa::openapi::request_body::RequestBodyBuilder::new()
                .content("*/*", ContentBuilder::new().build())
                .build(),
        ));
    }
    op.build()
}

impl Modify for StreamPaths {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let stream = || path_param("path", "The stream's path under /v1/stream/", false);
        let refused = [
            ("400", error("A malformed header, parameter or body")),
            ("401", error("No valid token")),
            ("403", error("A token without the stream or service role, or a stale producer epoch")),
            ("404", error("No such stream (or fork source)")),
            ("409", error("A conflict: another configuration, a content type, a closed stream, a sequence, an id a job has")),
            ("410", error("Deleted while forks read it")),
            ("413", error("The body is over --stream-max-body-bytes")),
            ("503", error("The log is unavailable, or at the connection limit")),
        ];
        let with = |extra: Vec<(&'static str, utoipa::openapi::Response)>| {
            let mut all: Vec<(&str, utoipa::openapi::Response)> = extra;
            all.extend(refused.iter().cloned());
            all
        };
        let create_params = vec![
            stream(),
            header(
                "Content-Type",
                "The stream's media type (default application/octet-stream)",
            ),
            header(
                "Stream-TTL",
                "Seconds the stream lives after its last write or read (1 to 315360000)",
            ),
            header(
                "Stream-Expires-At",
                "When the stream ends: RFC 3339, in the future, at most ten years ahead",
            ),
            header("Stream-Closed", "`true`: created closed"),
            header(
                "Stream-Forked-From",
                "The source stream's path: create a fork",
            ),
            header(
                "Stream-Fork-Offset",
                "Where the fork branches (default the source's tail)",
            ),
            header(
                "Stream-Fork-Sub-Offset",
                "The first N of the source's next append, the fork's own first data",
            ),
        ];
        let append_params = vec![
            stream(),
            header("Content-Type", "The data's media type: the stream's"),
            header("Stream-Seq", "A writer's sequence: must increase"),
            header(
                "Stream-Closed",
                "`true`: close the stream (with this data, if any)",
            ),
            header("Producer-Id", "An idempotent producer's id"),
            header("Producer-Epoch", "Its epoch"),
            header("Producer-Seq", "Its sequence number in the epoch"),
        ];
        let read_params = |job: bool| {
            vec![
                if job {
                    path_param("job_id", "The job", true)
                } else {
                    stream()
                },
                query(
                    "offset",
                    "-1 (the start), now, or an offset this server gave (for a job, also a seq)",
                ),
                query("live", "long-poll or sse"),
                query("cursor", "The cursor of the last answer"),
                header("If-None-Match", "The ETag of an earlier answer"),
            ]
        };
        let paths = &mut openapi.paths;
        paths.add_path_operation(
            "/v1/stream/{path}",
            vec![HttpMethod::Put],
            operation(
                "Create a stream (or find it, configured the same)",
                create_params,
                &with(vec![
                    ("201", ok("Created", false)),
                    ("200", ok("Already there, configured the same", false)),
                ]),
                true,
            ),
        );
        paths.add_path_operation(
            "/v1/stream/{path}",
            vec![HttpMethod::Post],
            operation(
                "Append data, close the stream, or both",
                append_params,
                &with(vec![
                    ("200", ok("Appended by an idempotent producer", false)),
                    (
                        "204",
                        ok("Appended (or a producer's retry: nothing appended)", false),
                    ),
                ]),
                true,
            ),
        );
        paths.add_path_operation(
            "/v1/stream/{path}",
            vec![HttpMethod::Get],
            operation(
                "Read from an offset: catch-up, long-poll or SSE",
                read_params(false),
                &with(vec![
                    ("200", ok("The data after the offset (a JSON stream's as an array), or an SSE stream", true)),
                    ("204", ok("A long-poll that timed out: nothing new", false)),
                    ("304", ok("Not modified (If-None-Match)", false)),
                ]),
                false,
            ),
        );
        paths.add_path_operation(
            "/v1/stream/{path}",
            vec![HttpMethod::Head],
            operation(
                "The stream's metadata",
                vec![stream()],
                &with(vec![("200", ok("The stream's headers", false))]),
                false,
            ),
        );
        paths.add_path_operation(
            "/v1/stream/{path}",
            vec![HttpMethod::Delete],
            operation(
                "Delete the stream",
                vec![stream()],
                &with(vec![("204", ok("Deleted", false))]),
                false,
            ),
        );
        paths.add_path_operation(
            "/v1/stream/jobs/{job_id}",
            vec![HttpMethod::Get],
            operation(
                "A job's events as a read-only JSON stream",
                read_params(true),
                &with(vec![
                    (
                        "200",
                        ok(
                            "The job events after the offset, as an array, or an SSE stream",
                            true,
                        ),
                    ),
                    (
                        "204",
                        ok(
                            "A long-poll that timed out, or the end of a finished job",
                            false,
                        ),
                    ),
                    ("304", ok("Not modified (If-None-Match)", false)),
                ]),
                false,
            ),
        );
        paths.add_path_operation(
            "/v1/stream/jobs/{job_id}",
            vec![HttpMethod::Head],
            operation(
                "A job stream's metadata",
                vec![path_param("job_id", "The job", true)],
                &with(vec![("200", ok("The stream's headers", false))]),
                false,
            ),
        );
    }
}
