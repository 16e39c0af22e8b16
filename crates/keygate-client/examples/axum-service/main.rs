//! A small service protected by keygate's tower layer (issue 21), for a
//! team whose own services do not sit behind the gateway:
//!
//! ```sh
//! KEYGATE_URL=http://127.0.0.1:8081 KEYGATE_ADMIN_KEY=kg_admin_... \
//!   cargo run -p keygate-client --example axum-service
//! curl -s http://127.0.0.1:3000/invoices -H "X-API-Key: $KEY"
//! ```

mod service;

use keygate_client::tower::KeygateLayer;
use keygate_client::Client;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let url = std::env::var("KEYGATE_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into());
    let Ok(key) = std::env::var("KEYGATE_ADMIN_KEY") else {
        eprintln!("set KEYGATE_ADMIN_KEY: a key that may use the verify API");
        std::process::exit(2);
    };
    let layer = KeygateLayer::remote(Client::new(url, key));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://127.0.0.1:3000/invoices");
    axum::serve(listener, service::router(layer)).await
}
