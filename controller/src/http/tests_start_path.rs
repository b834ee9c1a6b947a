//! `start_path`: how a sandbox first started, from the agent's report to the sandbox
//! JSON (absent while unknown) and the OpenAPI document.

use axum::http::StatusCode;
use serde_json::json;

use super::tests::app;

#[tokio::test]
async fn the_create_and_later_reads_carry_the_agents_start_path() {
    let app = app().await;
    let created = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-1"}))
        .await;
    assert_eq!(created["sandbox"]["start_path"], "boot", "{created}");
    let id = created["sandbox"]["id"].as_str().expect("id").to_owned();
    let (s, got) = app.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["sandbox"]["start_path"], "boot");
    let (_, list) = app.get("/v1/sandboxes").await;
    assert_eq!(list["sandboxes"][0]["start_path"], "boot");
    let stored = app.store.get_sandbox(&id).await.expect("store");
    assert_eq!(
        stored.and_then(|r| r.start_path),
        Some(fluid_client::types::StartPath::Boot)
    );
}

#[tokio::test]
async fn an_unstarted_sandbox_has_none_until_its_first_start() {
    let app = app().await;
    let created = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-1", "auto_start": false}))
        .await;
    let sb = &created["sandbox"];
    assert_eq!(sb["state"], "CREATED", "{created}");
    let obj = sb.as_object().expect("object");
    assert!(!obj.contains_key("start_path"), "absent, not null: {sb}");
    let id = sb["id"].as_str().expect("id").to_owned();

    let (s, v) = app.post_empty(&format!("/v1/sandboxes/{id}/start")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, got) = app.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(got["sandbox"]["start_path"], "boot", "{got}");
    // A stop and another start keep what the first start was.
    app.post_empty(&format!("/v1/sandboxes/{id}/stop")).await;
    let (_, got) = app.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(
        (
            got["sandbox"]["state"].clone(),
            got["sandbox"]["start_path"].clone()
        ),
        (json!("STOPPED"), json!("boot"))
    );
}

#[tokio::test]
async fn the_openapi_document_names_the_values() {
    let app = app().await;
    let (s, doc) = app.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    let schemas = &doc["components"]["schemas"];
    let field = &schemas["Sandbox"]["properties"]["start_path"];
    assert!(field.is_object(), "{}", schemas["Sandbox"]);
    let required = schemas["Sandbox"]["required"].as_array().expect("required");
    assert!(!required.contains(&json!("start_path")), "optional");
    assert_eq!(
        schemas["StartPath"]["enum"],
        json!(["boot", "restore", "fork", "pool"]),
        "{}",
        schemas["StartPath"]
    );
    assert!(
        field.to_string().contains("#/components/schemas/StartPath"),
        "{field}"
    );
    let described = field.to_string() + &schemas["StartPath"].to_string();
    assert!(described.contains("cold boot"), "{described}");
}
