//! `/go/{id}`: the one-time link in the chat button, minted when the person clicks.
//!
//! A `GET` has no side effect: link previews, URL scanners and prefetchers (whatever their
//! User-Agent) see a one-button page, and the id stays unused. The button POSTs, and that
//! deliberate act mints and answers 302 to the freshly signed URL (`Cache-Control: no-store`,
//! `Referrer-Policy: no-referrer`), so all 30 seconds are the browser's. A Slack id is armed by
//! its asker's own click in Slack (the `block_actions` event): then the `GET` itself redirects,
//! and until then neither `GET` nor `POST` mints, so a copied link opens for no one. Used,
//! unknown or expired ids get a small page saying what happened and how to ask again; an attempt
//! on an id that exists is audited (see `core::click` for what is only counted). The id is
//! never logged.
//!
//! With `[sign_in]`, a browser without a session is sent to its provider (303, with the sign-in
//! in progress in an HttpOnly cookie) and comes back to `GET /go/signed-in`, which sets the
//! session cookie and returns it to the link's page; one signed in as someone else is told so.
//! The use case is `core::click` and `core::signin`; this file is HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::forwarded::TrustedProxies;
use crate::core::click::{Cookies, GoClient, GoView};
use crate::core::onetime::{plausible, GoError};
use crate::core::portal::{Refusal, Reply};
use crate::core::signin::{LOGIN_COOKIE, LOGIN_LIFETIME};
use crate::App;

/// The route (mounted only when `server.public_url` is set).
pub fn router(app: Arc<App>) -> Router {
    let csp = policy(&app.config.planhat.portal_url);
    Router::new()
        .route("/go/signed-in", get(signed_in))
        .route("/go/{id}", get(go_get).post(go_post).head(head))
        .with_state(Arc::new(Go {
            proxies: TrustedProxies::new(&app.config.server.trusted_proxies),
            app,
            csp,
        }))
}

/// What the handlers share: the app, the pages' Content-Security-Policy (built once), and the
/// proxies whose `X-Forwarded-For` is believed.
struct Go {
    app: Arc<App>,
    csp: HeaderValue,
    proxies: TrustedProxies,
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
            GoError::Unknown | GoError::Forged => StatusCode::NOT_FOUND,
            GoError::Used | GoError::Expired => StatusCode::GONE,
            // The id stays usable: from Slack (NotArmed), for its asker's browser (Early), or
            // in a moment (Unavailable).
            GoError::NotArmed | GoError::Early => StatusCode::FORBIDDEN,
            GoError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        self.page(
            status,
            "This portal link can't be used here",
            &e.to_string(),
        )
    }

    /// A 303 to `location`, setting `cookies`.
    fn see_other(&self, location: &str, cookies: &[String]) -> Response {
        let mut response = StatusCode::SEE_OTHER.into_response();
        let h = response.headers_mut();
        if let Ok(location) = HeaderValue::from_str(location) {
            h.insert(header::LOCATION, location);
        }
        for c in cookies {
            if let Ok(c) = HeaderValue::from_str(c) {
                h.append(header::SET_COOKIE, c);
            }
        }
        private(response, &self.csp)
    }

    fn view(&self, id: &str, v: GoView) -> Response {
        let sign_in = self.app.clicks.sign_in();
        match v {
            GoView::SignIn { url, login, .. } => {
                let cookie = sign_in
                    .map(|s| s.set_cookie(LOGIN_COOKIE, &login, LOGIN_LIFETIME))
                    .unwrap_or_default();
                self.see_other(&url, &[cookie])
            }
            GoView::Again if plausible(id) => self.see_other(&format!("/go/{id}"), &[]),
            GoView::Again => self.go_error(GoError::Unknown),
            GoView::SignedIn { name, cookie, go } if plausible(&go) => {
                let Some(s) = sign_in else {
                    return self.go_error(GoError::Unknown);
                };
                let cookies = [
                    s.set_cookie(name, &cookie, s.lifetime()),
                    s.set_cookie(LOGIN_COOKIE, "", std::time::Duration::ZERO),
                ];
                self.see_other(&format!("/go/{go}"), &cookies)
            }
            GoView::SignedIn { .. } => self.go_error(GoError::Unknown),
            GoView::NotYours { who } => self.page(
                StatusCode::FORBIDDEN,
                "This link is someone else's",
                &format!(
                    "This browser is signed in as <b>{}</b>, and the link belongs to the person who asked for it: it opens only in their browser. It was not used, and still works for them. Ask the bot for a link of your own.",
                    escape(&who)
                ),
            ),
            GoView::NoEmail => self.page(
                StatusCode::FORBIDDEN,
                "The bot can't tell who you are",
                "Your company's sign-in is matched against your email in chat, and the bot does not know yours. Ask the bot's admins to add it. The link was not used.",
            ),
            GoView::SignInFailed(line) => {
                self.page(StatusCode::FORBIDDEN, "The sign-in did not complete", line)
            }
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

/// Who is asking, for the audit and the per-client audit budget: the TCP peer, or behind a
/// trusted proxy the client it vouches for (`adapters::forwarded`); and the User-Agent as the
/// client said it, shortened.
fn client(go: &Go, peer: SocketAddr, headers: &HeaderMap) -> GoClient {
    GoClient {
        address: Some(go.proxies.client(peer.ip(), headers)),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(200).collect::<String>()),
        began: std::time::SystemTime::now(),
        signed_in_as: None,
    }
}

/// The request's cookies that are the bot's (`portal_bot_*`), from every `Cookie` header.
struct Jar(Vec<(String, String)>);

impl Jar {
    fn of(headers: &HeaderMap) -> Jar {
        let mut found = Vec::new();
        for value in headers.get_all(header::COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            for pair in text.split(';') {
                if let Some((name, value)) = pair.trim().split_once('=') {
                    if name.starts_with("portal_bot_") && found.len() < 8 {
                        found.push((name.to_string(), value.to_string()));
                    }
                }
            }
        }
        Jar(found)
    }
}

impl Cookies for Jar {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Text for HTML (a name a provider gave).
fn escape(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c if c.is_control() => " ".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// What the provider sends back to `/go/signed-in`.
#[derive(serde::Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn signed_in(
    State(go): State<Arc<Go>>,
    Query(q): Query<Callback>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let view = go
        .app
        .clicks
        .signed_in(
            q.code.as_deref(),
            q.state.as_deref(),
            q.error.as_deref(),
            &client(&go, peer, &headers),
            &Jar::of(&headers),
        )
        .await;
    go.view("", view)
}

async fn go_get(
    State(go): State<Arc<Go>>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let view = go
        .app
        .clicks
        .get(&id, &client(&go, peer, &headers), &Jar::of(&headers))
        .await;
    go.view(&id, view)
}

async fn go_post(
    State(go): State<Arc<Go>>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let view = go
        .app
        .clicks
        .post(&id, &client(&go, peer, &headers), &Jar::of(&headers))
        .await;
    go.view(&id, view)
}

async fn head(
    State(go): State<Arc<Go>>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match go.app.clicks.head(&id, &client(&go, peer, &headers)).await {
        Ok(()) => private(StatusCode::OK.into_response(), &go.csp),
        Err(e) => go.go_error(e),
    }
}
