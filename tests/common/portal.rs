//! A Planhat with a portal: the signed URLs it mints open a page of its own that says who is
//! signed in, so a browser test sees where a press of the button lands.

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{mint_calls, API_TOKEN};

/// A Planhat whose signed URLs point at a portal page it serves itself (on another loopback
/// port than the bot's: another origin, as in production).
pub struct Portal {
    pub server: MockServer,
}

impl Portal {
    pub async fn start() -> Portal {
        Portal {
            server: MockServer::start().await,
        }
    }

    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// Access yes, and a signed URL `{portal}/redirect/{token}` whose page says who is signed in.
    pub async fn end_user(&self, id: &str, token: &str) {
        let portal = self.uri();
        Mock::given(method("GET"))
            .and(path(format!("/shareabletokens/access/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_string("true"))
            .mount(&self.server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/shareabletokens/{id}")))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(
                    serde_json::json!({"url": format!("{portal}/redirect/{token}")}),
                ),
            )
            .mount(&self.server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/redirect/{token}")))
            .respond_with(ResponseTemplate::new(200).set_body_raw(
                format!("<!doctype html><title>Portal</title><body><h1>Signed in to the portal as {id}</h1></body>"),
                "text/html",
            ))
            .mount(&self.server)
            .await;
    }

    /// A config whose Planhat and portal are this server.
    pub fn config(&self, extra: &str) -> portal_bot::Config {
        self.config_with(false, extra)
    }

    /// The same, with a placeholder `server.public_url` (for sections that need one at parse
    /// time; `spawn_with_public_url` sets the real one).
    pub fn config_with(&self, public_url: bool, extra: &str) -> portal_bot::Config {
        let public = if public_url {
            "public_url = \"http://127.0.0.1:1\"\n"
        } else {
            ""
        };
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nreply_budget = \"400ms\"\n{public}\
             [planhat]\napi_url = \"{0}\"\nportal_url = \"{0}\"\ntoken = \"{API_TOKEN}\"\ntimeout = \"2s\"\n{extra}",
            self.uri()
        );
        portal_bot::Config::parse(&text, &|_| None).expect("test config must be valid")
    }

    pub async fn mints(&self, id: &str) -> usize {
        mint_calls(&self.server, id).await
    }
}
