//! Any bytes a client can send to a node: the decoder must answer with well-formed JSON-RPC (or
//! nothing, for notifications) and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let answer = runtime.block_on(metaparticle::fuzzing::dispatch_echo(body, "svc"));
    if let Some(bytes) = answer {
        let value: Value = serde_json::from_slice(&bytes).expect("answers are JSON");
        let responses = match value {
            Value::Array(items) => items,
            single => vec![single],
        };
        assert!(!responses.is_empty());
        for r in responses {
            assert_eq!(r["jsonrpc"], "2.0", "{r}");
            assert!(r.get("result").is_some() != r.get("error").is_some(), "exactly one of result/error: {r}");
            assert!(r.get("id").is_some(), "{r}");
        }
    }
});
