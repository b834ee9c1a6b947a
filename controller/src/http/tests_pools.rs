//! Hosts' warm pools: from the agent's status through the heartbeat to `GET /v1/hosts`,
//! the `/metrics` gauges and the OpenAPI document.

use axum::http::StatusCode;
use fluid_proto::model::PoolStatus;
use serde_json::json;

use super::tests::app;
use super::tests_observability::scrape;

fn pool(image: &str, cpus: u32, memory_mb: u64, ready: u32, hits: u64) -> PoolStatus {
    PoolStatus {
        image: image.into(),
        cpus,
        memory_mb,
        size: 2,
        ready,
        filling: 2 - ready,
        hits,
        misses: 1,
    }
}

#[tokio::test]
async fn a_host_without_a_pool_lists_none() {
    let app = app().await;
    let (s, v) = app.get("/v1/hosts").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["hosts"][0]["pools"], json!([]), "{v}");
}

#[tokio::test]
async fn the_heartbeat_carries_the_pool_to_the_host_list() {
    let app = app().await;
    if let Ok(mut p) = app.agents.pools.lock() {
        *p = vec![
            pool("debian-12", 1, 512, 2, 5),
            pool("debian-12", 2, 2048, 1, 0),
        ];
    }
    app.state.hosts.beat_all().await.expect("beat");
    let (s, v) = app.get("/v1/hosts").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["hosts"][0]["pools"],
        json!([
            {"image": "debian-12", "cpus": 1, "memory_mb": 512, "size": 2, "ready": 2,
             "filling": 0, "hits": 5, "misses": 1},
            {"image": "debian-12", "cpus": 2, "memory_mb": 2048, "size": 2, "ready": 1,
             "filling": 1, "hits": 0, "misses": 1},
        ]),
        "{v}"
    );
    // The fields the host had are as they were.
    assert_eq!(v["hosts"][0]["memory_mb_free"], 8192, "{v}");

    let m = scrape(&app).await;
    let shape = |cpus: &'static str, mem: &'static str| {
        [
            ("host", "kvm-1"),
            ("image", "debian-12"),
            ("cpus", cpus),
            ("memory_mb", mem),
        ]
    };
    assert_eq!(m.sum("fluid_pool_size", &shape("1", "512")), 2.0);
    assert_eq!(m.sum("fluid_pool_ready", &shape("1", "512")), 2.0);
    assert_eq!(m.sum("fluid_pool_filling", &shape("2", "2048")), 1.0);
    assert_eq!(m.sum("fluid_pool_hits", &shape("1", "512")), 5.0);
    assert_eq!(m.sum("fluid_pool_misses", &[("host", "kvm-1")]), 2.0);
    assert_eq!(
        m.family("fluid_pool_ready").map(|f| f.kind.as_str()),
        Some("gauge")
    );

    // A pool the agent no longer reports leaves the list and the gauges.
    if let Ok(mut p) = app.agents.pools.lock() {
        p.clear();
    }
    app.state.hosts.beat_all().await.expect("beat");
    let (_, v) = app.get("/v1/hosts").await;
    assert_eq!(v["hosts"][0]["pools"], json!([]), "{v}");
    let m = scrape(&app).await;
    assert_eq!(m.samples("fluid_pool_size").count(), 0);
}

#[tokio::test]
async fn the_openapi_document_describes_the_pool() {
    let app = app().await;
    let (s, doc) = app.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    let schemas = &doc["components"]["schemas"];
    let field = &schemas["Host"]["properties"]["pools"];
    assert!(
        field.to_string().contains("#/components/schemas/HostPool"),
        "{field}"
    );
    let props = schemas["HostPool"]["properties"]
        .as_object()
        .expect("HostPool properties");
    let mut names: Vec<&str> = props.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "cpus",
            "filling",
            "hits",
            "image",
            "memory_mb",
            "misses",
            "ready",
            "size"
        ]
    );
}
