//! The shop (`examples/shop.rs`) on the Docker runner: thirteen containers whose services call
//! each other by container name on the app's network, as a user deploys and calls them.
//!
//! Skips (saying so) without a Docker engine, unless `MP_REQUIRE_DOCKER=1`; removes everything
//! carrying the app's label when it ends, however it ends.

mod support;

use serde_json::{json, Value};
use support::docker::{binaries_or_skip, Deployed};

/// `metaparticle call frontend <request> --user <user>`: the printed JSON, or the error line.
fn shop(app: &Deployed, user: &str, request: Value) -> Result<Value, String> {
    let output = app.client(&["call", "frontend", &request.to_string(), "--user", user]);
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).expect("one JSON line"))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn the_shops_containers_call_each_other_with_the_shoppers_user() {
    let Some(bins) = binaries_or_skip() else { return };
    let app = Deployed::new(bins, "shop");
    app.up();
    assert_eq!(
        app.labelled("ps"),
        14,
        "frontend balancer and 2 replicas, cart router and 4 shards, catalog root and 4 leaves, the frontend's edge"
    );

    let page = shop(&app, "alice:wonderland", json!({ "search": "lamp" })).unwrap();
    let skus: Vec<&str> =
        page["results"].as_array().unwrap().iter().map(|p| p["sku"].as_str().unwrap()).collect();
    assert_eq!(skus, ["lamp-clip", "lamp-desk", "lamp-floor"]);
    assert_eq!(page["cart"], json!({ "items": 0, "total_cents": 0 }));

    let alice = shop(&app, "alice:wonderland", json!({ "add": { "sku": "teapot", "quantity": 2 } })).unwrap();
    assert_eq!(alice["total_cents"], 2 * 5600);
    let bob = shop(&app, "bob:builder", json!({ "add": { "sku": "candle", "quantity": 1 } })).unwrap();
    assert_eq!(bob["total_cents"], 1100);
    assert_eq!(shop(&app, "alice:wonderland", json!({ "cart": {} })).unwrap(), alice);
    let err = shop(&app, "bob:builder", json!({ "add": { "sku": "yacht", "quantity": 1 } })).unwrap_err();
    assert!(err.contains("(code -32044)"), "{err}");

    app.delete_and_check_nothing_remains();
}
