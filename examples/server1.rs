//! Code walk, chapter 1: a single service.
//!
//! ```console
//! $ cargo run --example server1
//! $ metaparticle call simple-service
//! {"A":{"foo":"bar"}}
//! $ cargo run --example server1 -- delete
//! ```
use metaparticle as mp;
use serde_json::{json, Value};

/// The whole app: one service that wraps whatever it is sent.
fn services() -> Vec<mp::Service> {
    vec![mp::service("simple-service", |request: Value| json!({ "A": request })).expose()]
}

fn main() -> mp::Result<()> {
    mp::serve(services())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn simple_service_wraps_the_request() {
        let app = mp::testing::launch(services()).await.unwrap();
        let answer: Value = app.call("simple-service", json!({"foo": "bar"})).await.unwrap();
        assert_eq!(answer, json!({"A": {"foo": "bar"}}));
    }
}
