//! A JSON webhook sent from a background task: the alert rule's sender.
//! The rule itself (in `backstop-strategies`) decides when to alert and what
//! to say; this is the HTTP, so strategies need no HTTP client.

use std::time::Duration;

/// POSTs JSON bodies to one URL, each from a background task, with a
/// timeout per POST. The request path never waits for it.
#[derive(Debug)]
pub struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl Webhook {
    /// A webhook to `url` (http or https). The error says what is wrong
    /// with the URL or the client.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("must be http or https (got {})", url.scheme()));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build a client: {e}"))?;
        Ok(Self { client, url })
    }

    /// Sends `body` from a background task; without a tokio runtime it is
    /// skipped with a warning.
    pub fn send(&self, body: serde_json::Value) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(url = %self.url, "no tokio runtime here; alert webhook not sent");
            return;
        };
        let request = self.client.post(self.url.clone()).json(&body);
        let url = self.url.clone();
        runtime.spawn(async move {
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    tracing::debug!(%url, status = response.status().as_u16(), "alert webhook delivered");
                }
                Ok(response) => {
                    tracing::warn!(%url, status = response.status().as_u16(), "alert webhook refused");
                }
                Err(error) => tracing::warn!(%url, %error, "alert webhook failed"),
            }
        });
    }
}
