//! The sharding tutorial, in Rust: any HTTP server, sharded by a regular expression on its URL.
//!
//! ```console
//! $ cargo run --example sharded_http
//! $ curl localhost:3000/users/alice
//! Hello World: hostname: sharded-http.shard-1
//! $ cargo run --example sharded_http -- delete
//! ```
//!
//! Compared with the tutorial, the server does not choose its port: it is handed the listener
//! its runner bound for it, so three local shards never clash over one.
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use metaparticle as mp;

async fn hello(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    println!("{}", request.uri());
    Ok(Response::new(Full::new(Bytes::from(format!("Hello World: hostname: {}\n", mp::hostname())))))
}

/// The server: plain hyper, one task per connection.
async fn server(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    println!("server up on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(hello);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() -> mp::Result<()> {
    mp::containerize(
        // The tutorial's shard spec, pattern and all: 3 shards keyed by the path after /users/.
        mp::ContainerOptions::new("sharded-http").shards(3, r"\/users\/(.*)[^\/]").public(true),
        server,
    )
}
