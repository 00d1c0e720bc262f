//! docs/protocol.schema.json describes every WebSocket message. Every message
//! the tests read through the kit is validated against it (by the
//! `jsonschema` crate); here: it names exactly the server's message types,
//! error codes and statuses, agrees with the OpenAPI document, is served, and
//! refuses what the server must not send.

use crate::common;

use std::collections::BTreeSet;

use common::{check_server_message, next_json, send_text, spawn_app};
use rejoin::ws::protocol::{error_code, CLIENT_MESSAGES, SERVER_MESSAGES};
use serde_json::{json, Value};

fn schema() -> Value {
    serde_json::from_str(include_str!("../docs/protocol.schema.json")).unwrap()
}

/// The `const` of `type` in each message of a `oneOf` list of `$ref`s.
fn types(schema: &Value, list: &str) -> BTreeSet<String> {
    schema["$defs"][list]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let name = r["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
            schema["$defs"][name]["properties"]["type"]["const"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_schema_names_every_message_code_and_status_the_server_has() {
    let s = schema();
    let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(types(&s, "serverMessage"), set(SERVER_MESSAGES));
    assert_eq!(types(&s, "clientMessage"), set(CLIENT_MESSAGES));
    assert_eq!(
        strings(&s["$defs"]["error"]["properties"]["code"]["enum"]),
        set(error_code::ALL)
    );
    let statuses: Vec<&str> = rejoin::domain::JobStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(strings(&s["$defs"]["jobStatus"]["enum"]), set(&statuses));
}

#[tokio::test]
async fn the_schema_is_served_and_agrees_with_the_openapi_document() {
    let app = spawn_app().await;
    let res = app
        .http
        .get(app.url("/protocol.schema.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/schema+json"
    );
    let served: Value = res.json().await.unwrap();
    assert_eq!(served, schema());

    let openapi = app.get_json("/openapi.json", None).await;
    let components = &openapi["components"]["schemas"];
    assert_eq!(
        strings(&components["JobStatus"]["enum"]),
        strings(&served["$defs"]["jobStatus"]["enum"])
    );
    let failure = &served["$defs"]["failed"]["properties"]["error"];
    assert_eq!(
        strings(&components["FailureInfo"]["required"]),
        strings(&failure["required"])
    );
    assert!(openapi["info"]["description"]
        .as_str()
        .unwrap()
        .contains("/protocol.schema.json"));
}

#[tokio::test]
async fn what_a_real_socket_carries_validates_and_a_wrong_message_does_not() {
    let app = spawn_app().await;
    let job = app.create_job().await;
    let mut ws = app.ws_client(job).await;
    // next_json validates each of these.
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    send_text(&mut ws, r#"{"type":"subscribe"}"#).await;
    assert_eq!(next_json(&mut ws).await["code"], "unknown_type");
    app.progress(job, 10.0).await;
    let progress = next_json(&mut ws).await;

    // A field too many, a field missing, a wrong type, a bad time: refused.
    for broken in [
        {
            let mut m = progress.clone();
            m["extra"] = json!(1);
            m
        },
        {
            let mut m = progress.clone();
            m.as_object_mut().unwrap().remove("at");
            m
        },
        {
            let mut m = progress.clone();
            m["seq"] = json!("3");
            m
        },
        {
            let mut m = progress.clone();
            m["at"] = json!("yesterday");
            m
        },
        json!({"type": "teleported"}),
    ] {
        assert!(check_server_message(&broken).is_err(), "{broken}");
    }
    assert!(check_server_message(&progress).is_ok());
}
