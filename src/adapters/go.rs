//! `/go/{id}`: the one-time link in the chat button, minted when the person clicks.
//!
//! A `GET` has no side effect: link previews, URL scanners and prefetchers (whatever their
//! User-Agent) see a one-button page, and the id stays unused. The button POSTs, and that
//! deliberate act mints and answers 302 to the freshly signed URL (`Cache-Control: no-store`,
//! `Referrer-Policy: no-referrer`), so all 30 seconds are the browser's. A Slack id is armed by
//! its asker's own click in Slack (the `block_actions` event): then the `GET` itself redirects,
//! and until then neither `GET` nor `POST` mints, so a copied link opens for no one. Used,
//! unknown or expired ids get a small page saying what happened and how to ask again, and the
//! attempt is audited. The id is never logged.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::core::onetime::GoError;
use crate::core::portal::{GoClient, GoView, Refusal, Reply};
use crate::App;

/// The route (mounted only when `server.public_url` is set).
pub fn router(app: Arc<App>) -> Router {
    let csp = policy(&app.config.planhat.portal_url);
    Router::new()
        .route("/go/{id}", get(go_get).post(go_post).head(head))
        .with_state(Arc::new(Go { app, csp }))
}

/// What the handlers share: the app, and the pages' Content-Security-Policy, built once.
struct Go {
    app: Arc<App>,
    csp: HeaderValue,
}

/// The pages are static text: nothing may run, load or frame them. Their one form posts to
/// this same URL, whose answer is a 302 to the portal: browsers apply `form-action` to every
/// redirect that follows a form's submission (Chromium does; the CSP 3 spec says so), so the
/// portal's origin must be allowed beside `'self'`, or the button does nothing in Chrome, Edge
/// and Brave after the id was used and the link minted.
fn policy(portal_url: &url::Url) -> HeaderValue {
    let portal = portal_url.origin().ascii_serialization();
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' {portal}; frame-ancestors 'none'; base-uri 'none'"
    );
    // An origin serialised by `url` is ASCII without control characters.
    HeaderValue::from_str(&csp).unwrap_or_else(|_| {
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        )
    })
}

fn private(mut response: Response, csp: &HeaderValue) -> Response {
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
    h.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
    response
}

impl Go {
    fn html(&self, status: StatusCode, title: &str, inner: &str) -> Response {
        let body = format!(
            "<!doctype html><meta charset=\"utf-8\"><meta name=\"robots\" content=\"noindex\">\
             <meta name=\"referrer\" content=\"no-referrer\"><title>{title}</title>\
             <body style=\"font-family:sans-serif;max-width:36em;margin:4em auto;line-height:1.5\">\
             <h1>{title}</h1>{inner}</body>"
        );
        private(
            (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                body,
            )
                .into_response(),
            &self.csp,
        )
    }

    fn page(&self, status: StatusCode, title: &str, text: &str) -> Response {
        self.html(
            status,
            title,
            &format!(
                "<p>{text}</p><p>In Slack or Discord: <code>/portal &lt;end user&gt;</code>, or press <b>New link</b> on the bot's message.</p>"
            ),
        )
    }

    /// The one-button page: the POST (to this same URL) is what uses the id.
    fn confirm(&self) -> Response {
        self.html(
            StatusCode::OK,
            "Customer portal",
            "<p>This link signs you in to the customer's portal as their end user. It works once.</p>\
             <form method=\"post\"><button type=\"submit\" style=\"font-size:1.2em;padding:.5em 1.5em\">Open the portal</button></form>",
        )
    }

    fn go_error(&self, e: GoError) -> Response {
        let status = match e {
            GoError::Unknown => StatusCode::NOT_FOUND,
            GoError::Used | GoError::Expired => StatusCode::GONE,
            // The id stays usable: from Slack (NotArmed), or in a moment (Unavailable).
            GoError::NotArmed => StatusCode::FORBIDDEN,
            GoError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        self.page(
            status,
            "This portal link can't be used here",
            &e.to_string(),
        )
    }

    fn view(&self, v: GoView) -> Response {
        match v {
            GoView::Confirm => self.confirm(),
            GoView::Refused(e) => self.go_error(e),
            GoView::Done(Reply::Link(link)) => match HeaderValue::from_str(link.url.expose()) {
                Ok(location) => {
                    let mut response = StatusCode::FOUND.into_response();
                    response.headers_mut().insert(header::LOCATION, location);
                    private(response, &self.csp)
                }
                Err(_) => self.page(
                    StatusCode::BAD_GATEWAY,
                    "Planhat answered something unusable",
                    &Refusal::Unusable.to_string(),
                ),
            },
            GoView::Done(Reply::Refused(r)) => {
                let status = match r {
                    Refusal::NotAllowed(_) | Refusal::NoAccess => StatusCode::FORBIDDEN,
                    Refusal::RateLimited(_) | Refusal::UpstreamRateLimited(_) => {
                        StatusCode::TOO_MANY_REQUESTS
                    }
                    Refusal::NotFound => StatusCode::NOT_FOUND,
                    _ => StatusCode::BAD_GATEWAY,
                };
                self.page(status, "No portal link this time", &r.to_string())
            }
            GoView::Done(_) => self.page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Ask the bot for a new link.",
            ),
        }
    }
}

/// Who is asking, for the audit of failed attempts: the first `X-Forwarded-For` hop when a
/// proxy put one there, else the peer; and the User-Agent (both as the client said them,
/// shortened).
fn client(peer: SocketAddr, headers: &HeaderMap) -> GoClient {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(200).collect::<String>())
    };
    let forwarded = text("x-forwarded-for")
        .and_then(|v| v.split(',').next().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty());
    GoClient {
        address: Some(forwarded.unwrap_or_else(|| peer.ip().to_string())),
        user_agent: text("user-agent"),
    }
}

async fn go_get(
    State(go): State<Arc<Go>>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    go.view(go.app.portal.go_get(&id, &client(peer, &headers)).await)
}

async fn go_post(
    State(go): State<Arc<Go>>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    go.view(go.app.portal.go_post(&id, &client(peer, &headers)).await)
}

async fn head(State(go): State<Arc<Go>>, Path(id): Path<String>) -> Response {
    match go.app.portal.peek_go(&id).await {
        Ok(()) => private(StatusCode::OK.into_response(), &go.csp),
        Err(e) => go.go_error(e),
    }
}
