//! Code walk, chapter 7: users. HTTP Basic authentication in front of a service that keeps one
//! scope per user.
//!
//! The exposed node checks the password (in constant time) before anything runs: a wrong or
//! missing password gets HTTP 401 and touches no state. The users come from the environment
//! variable `SIMPLE_USER_STORAGE_USERS` (`alice:password,bob:password`), or from the file it names
//! with `SIMPLE_USER_STORAGE_USERS_FILE` (one `user:password` per line).
//!
//! ```console
//! $ export SIMPLE_USER_STORAGE_USERS='alice:wonderland,bob:builder'
//! $ cargo run --example server7
//! $ metaparticle call simple-user-storage --user alice:wonderland
//! {"requests":1,"user":"alice"}
//! $ metaparticle call simple-user-storage --user bob:builder
//! {"requests":1,"user":"bob"}
//! $ curl -s -u alice:wrong -X POST -d '{"jsonrpc":"2.0","params":[{}],"method":"simple-user-storage","id":1}' localhost:3000/
//! {"jsonrpc":"2.0","id":null,"error":{"code":-32005,"message":"authentication required: ..."}}
//! $ cargo run --example server7 -- delete          # tearing down needs no passwords
//! ```
use metaparticle as mp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const USERS_VAR: &str = "SIMPLE_USER_STORAGE_USERS";

/// One of these per user.
#[derive(Serialize, Deserialize, Default)]
struct Visits {
    requests: u64,
}

/// The users allowed in: from a file if one is named, else from the environment.
fn users() -> Result<mp::BasicAuth, mp::AuthError> {
    match std::env::var_os(format!("{USERS_VAR}_FILE")) {
        Some(path) => mp::BasicAuth::from_file(path),
        None => mp::BasicAuth::from_env(USERS_VAR),
    }
}

fn services(users: mp::BasicAuth) -> Vec<mp::Service> {
    let service = mp::service(
        "simple-user-storage",
        mp::spread(
            2,
            mp::stateful_user(|_request: Value, user: &mut mp::User<Visits>| {
                user.requests += 1;
                json!({ "requests": user.requests, "user": user.name() })
            }),
        ),
    );
    vec![service.expose().with_basic_auth(users)]
}

fn main() -> mp::Result<()> {
    let users = match users() {
        Ok(users) => users,
        // Tearing down or inspecting the app serves no request, so it needs no passwords.
        Err(_) if serves_nothing() => mp::BasicAuth::from_pairs(Vec::<(String, String)>::new()),
        Err(e) => return Err(e.into()),
    };
    mp::serve(services(users))
}

/// Whether this run only acts on a deployed app (`delete`, `status`, `logs`, `plan`, `manifests`,
/// or help), rather than deploying it or serving as one of its nodes.
fn serves_nothing() -> bool {
    let is_node = std::env::var_os("MP_NODE").is_some() || std::env::var_os("MP_SUPERVISE").is_some();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let help = args.iter().any(|a| matches!(a.as_str(), "--help" | "-h" | "--version" | "-V" | "help"));
    !is_node && (help || matches!(command(&args), Some("delete" | "status" | "logs" | "plan" | "manifests")))
}

/// The command in `args`: the first argument that is neither a flag nor a flag's value.
fn command(args: &[String]) -> Option<&str> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if !arg.starts_with('-') {
            return Some(arg);
        }
        // Every flag of the command line takes a value, but these (and `--flag=value`).
        let alone = arg.contains('=') || matches!(arg.as_str(), "--attach" | "--purge" | "--follow" | "-f");
        if !alone {
            args.next();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp::client::CallError;

    fn test_users() -> mp::BasicAuth {
        mp::BasicAuth::from_pairs([("alice", "wonderland"), ("bob", "builder")])
    }

    #[tokio::test]
    async fn each_user_has_their_own_count() {
        let app = mp::testing::launch(services(test_users())).await.unwrap();
        let address = app.address("simple-user-storage").to_string();
        let alice = app.client_as("alice", "wonderland");
        let bob = app.client_as("bob", "builder");
        for n in 1..=3 {
            let answer = alice.call(&address, "simple-user-storage", &json!({})).await.unwrap();
            assert_eq!(answer, json!({ "requests": n, "user": "alice" }));
        }
        let answer = bob.call(&address, "simple-user-storage", &json!({})).await.unwrap();
        assert_eq!(answer, json!({ "requests": 1, "user": "bob" }));
    }

    #[tokio::test]
    async fn a_wrong_or_missing_password_is_refused_with_401_and_touches_no_state() {
        let app = mp::testing::launch(services(test_users())).await.unwrap();
        let address = app.address("simple-user-storage").to_string();
        let body = r#"{"jsonrpc":"2.0","params":[{}],"method":"simple-user-storage","id":1}"#;
        let clients = [
            mp::client::RpcClient::new(),
            mp::client::RpcClient::new().with_basic_auth("alice", "wrong"),
            mp::client::RpcClient::new().with_basic_auth("mallory", "wonderland"),
        ];
        for client in clients {
            let (status, answer) = client.post(&address, body.into()).await.unwrap();
            assert_eq!(status.as_u16(), 401);
            let answer: Value = serde_json::from_slice(&answer).unwrap();
            assert_eq!(answer["error"]["code"], json!(mp::RpcError::UNAUTHORIZED), "{answer}");
            let err = client.call(&address, "simple-user-storage", &json!({})).await.unwrap_err();
            assert!(matches!(err, CallError::Rpc(ref e) if e.code == mp::RpcError::UNAUTHORIZED), "{err}");
        }
        // Alice's first successful call still counts 1: the refused calls ran nothing.
        let alice = app.client_as("alice", "wonderland");
        let answer = alice.call(&address, "simple-user-storage", &json!({})).await.unwrap();
        assert_eq!(answer["requests"], json!(1));
    }

    #[tokio::test]
    async fn a_user_header_from_outside_is_ignored() {
        // Only internal hops, which prove the app's secret, may name the user; the exposed node
        // decides who is calling from the password alone.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let app = mp::testing::launch(services(test_users())).await.unwrap();
        let body = r#"{"jsonrpc":"2.0","params":[{}],"method":"simple-user-storage","id":1}"#;
        let request = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {}\r\n\
             x-metaparticle-user: bob\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            mp::client::basic_auth_header("alice", "wonderland"),
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(app.address("simple-user-storage")).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.contains(r#""user":"alice""#), "{response}");
    }

    #[test]
    fn the_command_is_found_past_flags_and_their_values() {
        let args = |line: &str| line.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(command(&args("--app delete --port 3100 status")), Some("status"));
        assert_eq!(command(&args("delete --purge")), Some("delete"));
        assert_eq!(command(&args("--runner=local logs -f")), Some("logs"));
        assert_eq!(command(&args("--attach up")), Some("up"));
        assert_eq!(command(&args("--app shop")), None, "no command: up, which needs the passwords");
    }

    #[test]
    fn users_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "# who may call\nalice:wonderland\n").unwrap();
        let auth = mp::BasicAuth::from_file(&path).unwrap();
        assert_eq!(auth.users().collect::<Vec<_>>(), ["alice"]);
    }
}
