//! `GET /go/{id}`: the one-time link in the chat button, minted when the person clicks.
//!
//! A browser gets a 302 to the freshly signed URL (`Cache-Control: no-store`,
//! `Referrer-Policy: no-referrer`), so all 30 seconds are theirs. `HEAD` requests and the
//! link-preview fetchers of chat apps (Slackbot, Discordbot, …) get a neutral page and leave the
//! id unused. Used, unknown or expired ids get a small page saying what happened and how to ask
//! again. The id is never logged.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::core::onetime::GoError;
use crate::core::portal::{Refusal, Reply};
use crate::App;

/// The route (mounted only when `server.public_url` is set).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/go/{id}", get(go).head(head))
        .with_state(app)
}

/// User agents of link-preview fetchers: they must not use a one-time id up.
const PREVIEWERS: &[&str] = &[
    "slackbot",
    "slack-imgproxy",
    "discordbot",
    "facebookexternalhit",
    "twitterbot",
    "linkedinbot",
    "whatsapp",
    "telegrambot",
    "skypeuripreview",
    "microsoftpreview",
    "googlebot",
    "bingbot",
];

fn is_preview(headers: &HeaderMap) -> bool {
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    PREVIEWERS.iter().any(|p| agent.contains(p))
}

fn private(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=\"utf-8\"><meta name=\"robots\" content=\"noindex\"><title>{title}</title>\
         <body style=\"font-family:sans-serif;max-width:36em;margin:4em auto;line-height:1.5\">\
         <h1>{title}</h1><p>{text}</p><p>In Slack or Discord: <code>/portal &lt;end user&gt;</code>, or press <b>New link</b> on the bot's message.</p></body>"
    );
    private(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
    )
}

fn go_error(e: GoError) -> Response {
    let status = match e {
        GoError::Unknown => StatusCode::NOT_FOUND,
        GoError::Used | GoError::Expired => StatusCode::GONE,
        // The shared state can't answer: the id stays usable; a reload in a moment works.
        GoError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    page(status, "This portal link can't be used", &e.to_string())
}

async fn go(State(app): State<Arc<App>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if is_preview(&headers) {
        return page(
            StatusCode::OK,
            "Customer portal link",
            "Open this link in your browser to sign in.",
        );
    }
    match app.portal.go(&id).await {
        Err(e) => go_error(e),
        Ok(Reply::Link(link)) => match HeaderValue::from_str(link.url.expose()) {
            Ok(location) => {
                let mut response = StatusCode::FOUND.into_response();
                response.headers_mut().insert(header::LOCATION, location);
                private(response)
            }
            Err(_) => page(
                StatusCode::BAD_GATEWAY,
                "Planhat answered something unusable",
                &Refusal::Unusable.to_string(),
            ),
        },
        Ok(Reply::Refused(r)) => {
            let status = match r {
                Refusal::NotAllowed(_) | Refusal::NoAccess => StatusCode::FORBIDDEN,
                Refusal::RateLimited(_) | Refusal::UpstreamRateLimited(_) => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                Refusal::NotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_GATEWAY,
            };
            page(status, "No portal link this time", &r.to_string())
        }
        Ok(_) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "Ask the bot for a new link.",
        ),
    }
}

async fn head(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match app.portal.peek_go(&id).await {
        Ok(()) => private(StatusCode::OK.into_response()),
        Err(e) => go_error(e),
    }
}
