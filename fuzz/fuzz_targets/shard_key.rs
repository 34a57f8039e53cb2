//! Any request a shard router can receive: the key extraction must pick a shard in range or
//! refuse with invalid params, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metaparticle as mp;
use serde_json::Value;

#[derive(serde::Deserialize)]
struct User {
    user: String,
}

fuzz_target!(|input: (&[u8], u8)| {
    let (body, shards) = input;
    let shards = usize::from(shards % 16) + 1;
    let Ok(request) = serde_json::from_slice::<Value>(body) else { return };
    for topology in [
        mp::shard(shards, |u: &User| u.user.clone(), |r: Value| r),
        mp::shard(shards, |u: &User| u.user.len(), |r: Value| r),
    ] {
        match mp::fuzzing::shard_of(&topology, &request, shards).expect("a shard topology") {
            Ok(shard) => assert!(shard < shards),
            Err(e) => assert_eq!(e.code, mp::RpcError::INVALID_PARAMS),
        }
    }
});
