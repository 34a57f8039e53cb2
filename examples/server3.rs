//! Code walk, chapter 3: a sharded service.
//!
//! `shard(3, key, f)` deploys a shard router in front of three distinct shards; every request
//! with the same key reaches the same shard. The key here is the seeds' `user.length % 3`.
//!
//! ```console
//! $ cargo run --example server3
//! $ metaparticle call sharded-service '{"user":"alice"}'
//! {"request":{"user":"alice"},"server":"sharded-service.shard-2","shard":2}
//! $ cargo run --example server3 -- delete
//! ```
use metaparticle as mp;
use serde::Deserialize;
use serde_json::{json, Value};

const SHARDS: usize = 3;

/// What the router reads to pick a shard; everything else in the request passes through.
#[derive(Deserialize)]
struct UserRequest {
    user: String,
}

fn services() -> Vec<mp::Service> {
    let service = mp::service(
        "sharded-service",
        mp::shard(
            SHARDS,
            // The shard key: the integer is taken modulo the number of shards. The seeds' key is
            // JavaScript's `user.length`; characters, not UTF-8 bytes, are what a reader means by
            // it (JavaScript counts UTF-16 units, which differ only for characters outside the
            // Basic Multilingual Plane, such as emoji).
            |request: &UserRequest| request.user.chars().count(),
            // A handler may take the request's context first: it says which shard serves.
            |ctx: mp::Context, request: Value| json!({ "request": request, "server": mp::hostname(), "shard": ctx.replica() }),
        ),
    );
    vec![service.expose()]
}

fn main() -> mp::Result<()> {
    mp::serve(services())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_same_user_always_lands_on_the_same_shard() {
        let app = mp::testing::launch(services()).await.unwrap();
        for user in ["al", "bob", "carol", "dave", "eve"] {
            let expected = user.chars().count() % SHARDS;
            for _ in 0..5 {
                let answer: Value = app.call("sharded-service", json!({ "user": user })).await.unwrap();
                assert_eq!(answer["shard"], json!(expected), "user {user}: {answer}");
                assert_eq!(answer["server"], json!(format!("sharded-service.shard-{expected}")));
            }
        }
    }

    #[tokio::test]
    async fn a_user_name_is_measured_in_characters_not_bytes() {
        let app = mp::testing::launch(services()).await.unwrap();
        // Each name's length in characters and in UTF-8 bytes pick different shards ("zoë": 3
        // characters, 4 bytes).
        for (user, shard) in [("zoë", 0), ("jörg", 1), ("renée", 2), ("日本", 2)] {
            let answer: Value = app.call("sharded-service", json!({ "user": user })).await.unwrap();
            assert_eq!(answer["shard"], json!(shard), "user {user}: {answer}");
        }
    }

    #[tokio::test]
    async fn a_request_without_the_key_field_is_invalid_params() {
        let app = mp::testing::launch(services()).await.unwrap();
        let err = app.call_value("sharded-service", &json!({"foo": "bar"})).await.unwrap_err();
        assert!(err.to_string().contains("missing field `user`"), "{err}");
    }
}
