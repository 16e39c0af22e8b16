//! Sends webhooks over HTTP(S) with reqwest: connection pooling, TLS with the
//! Mozilla root store (webpki-roots), and a timeout per attempt.

use std::time::Duration;

use async_trait::async_trait;
use keygate_engine::webhooks::{WebhookRequest, WebhookSender};

pub struct HttpWebhookSender {
    client: reqwest::Client,
}

impl HttpWebhookSender {
    /// Redirects are not followed: a receiver that moved answers 3xx, which
    /// counts as a failure its owner sees in the delivery attempts.
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("keygate-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client })
    }
}

#[async_trait]
impl WebhookSender for HttpWebhookSender {
    async fn send(&self, request: WebhookRequest, timeout: Duration) -> Result<u16, String> {
        let mut call = self.client.post(&request.url).timeout(timeout).body(request.body);
        for (name, value) in request.headers {
            call = call.header(name, value);
        }
        match call.send().await {
            Ok(response) => Ok(response.status().as_u16()),
            Err(err) if err.is_timeout() => Err(format!("no answer within {timeout:?}")),
            Err(err) if err.is_connect() => Err("could not connect to the receiver".to_owned()),
            Err(err) => Err(format!("the request failed: {}", err.without_url())),
        }
    }
}
