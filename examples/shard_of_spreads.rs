//! Nesting: shards of replicas. `shard(3, key, spread(2, f))` puts a router in front of three
//! shards, each a balancer over two replicas: a user's requests always reach the same shard, and
//! within it whichever replica is free.
//!
//! ```console
//! $ cargo run --example shard_of_spreads
//! $ metaparticle call user-profiles '{"user":"alice"}'
//! {"request":{"user":"alice"},"server":"user-profiles.shard-1.replica-0"}
//! $ cargo run --example shard_of_spreads -- plan
//! user-profiles                            router    x1   exposed -> user-profiles.shard-0, user-profiles.shard-1, user-profiles.shard-2
//! ...
//! $ cargo run --example shard_of_spreads -- delete
//! ```
use metaparticle as mp;
use serde::Deserialize;
use serde_json::{json, Value};

const SHARDS: usize = 3;
const REPLICAS: usize = 2;

/// What the router reads to pick a shard; everything else in the request passes through.
#[derive(Deserialize)]
struct UserRequest {
    user: String,
}

fn services() -> Vec<mp::Service> {
    let service = mp::service(
        "user-profiles",
        mp::shard(
            SHARDS,
            // A string key is hashed, so users spread evenly over the shards.
            |request: &UserRequest| request.user.clone(),
            mp::spread(REPLICAS, |request: Value| json!({ "request": request, "server": mp::hostname() })),
        ),
    )
    // Answering has no side effects: a request cut off by a dying replica may run again.
    .idempotent();
    vec![service.expose()]
}

fn main() -> mp::Result<()> {
    mp::serve(services())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// `user-profiles.shard-1.replica-0` → `user-profiles.shard-1`: the shard a replica serves.
    fn shard_of(server: &str) -> &str {
        server.rsplit_once(".replica-").map(|(shard, _)| shard).unwrap_or(server)
    }

    #[tokio::test]
    async fn each_user_stays_on_one_shard_served_by_both_its_replicas() {
        let app = mp::testing::launch(services()).await.unwrap();
        let mut servers_of_shard: HashMap<String, HashSet<String>> = HashMap::new();
        for user in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
            let mut shards = HashSet::new();
            for _ in 0..8 {
                let answer: Value = app.call("user-profiles", json!({ "user": user })).await.unwrap();
                let server = answer["server"].as_str().unwrap().to_string();
                shards.insert(shard_of(&server).to_string());
                servers_of_shard.entry(shard_of(&server).to_string()).or_default().insert(server);
            }
            assert_eq!(shards.len(), 1, "{user} reached several shards: {shards:?}");
        }
        assert!(servers_of_shard.len() >= 2, "eight users all on one shard: {servers_of_shard:?}");
        for (shard, servers) in &servers_of_shard {
            assert_eq!(servers.len(), REPLICAS, "{shard} is served by both its replicas: {servers:?}");
        }
    }
}
