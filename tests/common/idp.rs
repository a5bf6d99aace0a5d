//! Fake identity providers on loopback, behaving as the real ones do for a browser: an OpenID
//! Connect provider (discovery, JWKS, an authorize endpoint that signs in whoever the test
//! chose, a token endpoint that checks the client, the code, the redirect URL and PKCE, and
//! issues RS256 id_tokens) and Discord's OAuth2 (authorize, token, `/users/@me`). Each can be
//! told to misbehave the ways a forged or broken answer would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use openidconnect::core::{CoreJwsSigningAlgorithm, CoreRsaPrivateSigningKey};
use openidconnect::{JsonWebKeyId, PrivateSigningKey};
use serde_json::{json, Value};
use sha2::Digest;

pub const OIDC_CLIENT_ID: &str = "test-oidc-client";
pub const OIDC_CLIENT_SECRET: &str = "test-oidc-client-secret-3c1d";
pub const DISCORD_CLIENT_ID: &str = "1200000000000000002";
pub const DISCORD_CLIENT_SECRET: &str = "test-discord-client-secret-8e2a";

const KEY: &str = include_str!("../fixtures/oidc-test-key.pem");
const OTHER_KEY: &str = include_str!("../fixtures/oidc-other-key.pem");

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A form body's fields.
fn form(body: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

fn sha256_b64(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Ways the OpenID Connect provider can answer wrongly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehave {
    /// Sends the browser back with another `state`.
    WrongState,
    /// Puts another `nonce` in the id_token.
    WrongNonce,
    /// Issues the id_token for another client.
    WrongAudience,
    /// Names another issuer in the id_token.
    WrongIssuer,
    /// Signs the id_token with a key that is not in its JWKS.
    WrongSignature,
    /// An id_token that expired an hour ago.
    Expired,
}

#[derive(Default)]
struct OidcState {
    issuer: String,
    /// The claims of whoever is signed in at the provider now.
    user: Option<Value>,
    /// When that person authenticated at the provider (unix s); `None`: at each sign-in.
    auth_time: Option<i64>,
    misbehave: Option<Misbehave>,
    /// code → (redirect_uri, nonce, challenge, claims)
    codes: HashMap<String, (String, String, String, Value)>,
    /// The query of every authorize request.
    authorizations: Vec<HashMap<String, String>>,
    /// Client authentication the token endpoint takes: in the body only (Slack), or Basic.
    body_auth_only: bool,
}

/// An OpenID Connect provider.
#[derive(Clone)]
pub struct FakeOidc {
    pub issuer: String,
    state: Arc<Mutex<OidcState>>,
}

impl FakeOidc {
    /// Starts one; `body_auth_only`: like Slack, the token endpoint takes the client's
    /// credentials in the form body only.
    pub async fn start(body_auth_only: bool) -> FakeOidc {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(OidcState {
            issuer: issuer.clone(),
            body_auth_only,
            ..OidcState::default()
        }));
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeOidc { issuer, state }
    }

    /// Whoever signs in from now on: these claims (`sub` at least) go into the id_token.
    pub fn sign_in_as(&self, claims: Value) {
        self.state.lock().unwrap().user = Some(claims);
    }

    /// Nobody signs in: the person declines at the provider.
    pub fn decline(&self) {
        self.state.lock().unwrap().user = None;
    }

    /// The person authenticated at the provider at `at` (unix s), whatever `max_age` asks.
    pub fn authenticated_at(&self, at: Option<i64>) {
        self.state.lock().unwrap().auth_time = at;
    }

    pub fn misbehave(&self, how: Option<Misbehave>) {
        self.state.lock().unwrap().misbehave = how;
    }

    /// The query of every authorize request so far.
    pub fn authorizations(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().authorizations.clone()
    }
}

/// Claims of a Slack user as Sign in with Slack gives them.
pub fn slack_user(user: &str, team: &str) -> Value {
    json!({
        "sub": user,
        "https://slack.com/user_id": user,
        "https://slack.com/team_id": team,
        "email": format!("{}@acme.example", user.to_lowercase()),
        "email_verified": true,
        "name": format!("User {user}"),
    })
}

type Shared = State<Arc<Mutex<OidcState>>>;

async fn discovery(State(s): Shared) -> Json<Value> {
    let s = s.lock().unwrap();
    let i = &s.issuer;
    let auth_methods = if s.body_auth_only {
        json!(["client_secret_post"])
    } else {
        json!(["client_secret_basic", "client_secret_post"])
    };
    Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "claims_supported": ["sub", "email", "email_verified", "name", "auth_time"],
    }))
}

fn signing_key(pem: &str) -> CoreRsaPrivateSigningKey {
    CoreRsaPrivateSigningKey::from_pem(pem, Some(JsonWebKeyId::new("k1".into()))).unwrap()
}

async fn jwks() -> Json<Value> {
    let key = signing_key(KEY).as_verification_key();
    Json(json!({ "keys": [key] }))
}

async fn authorize(State(s): Shared, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut s = s.lock().unwrap();
    s.authorizations.push(q.clone());
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    let state = q.get("state").cloned().unwrap_or_default();
    let ok = q.get("response_type").map(String::as_str) == Some("code")
        && q.get("client_id").map(String::as_str) == Some(OIDC_CLIENT_ID)
        && q.get("code_challenge_method").map(String::as_str) == Some("S256")
        && q.get("scope")
            .is_some_and(|sc| sc.split(' ').any(|x| x == "openid"));
    if !ok {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let Some(user) = s.user.clone() else {
        return Redirect::to(&format!("{redirect}?error=access_denied&state={state}"))
            .into_response();
    };
    let code = format!("code-{}", s.codes.len() + 1);
    s.codes.insert(
        code.clone(),
        (
            redirect.clone(),
            q.get("nonce").cloned().unwrap_or_default(),
            q.get("code_challenge").cloned().unwrap_or_default(),
            user,
        ),
    );
    let state = if s.misbehave == Some(Misbehave::WrongState) {
        "not-the-state-it-was-given".to_string()
    } else {
        state
    };
    Redirect::to(&format!("{redirect}?code={code}&state={state}")).into_response()
}

/// The client's credentials: from the form body, or (unless body-only) a Basic header.
fn client_of(
    s: &OidcState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<(String, String)> {
    if let (Some(id), Some(secret)) = (form.get("client_id"), form.get("client_secret")) {
        return Some((id.clone(), secret.clone()));
    }
    if s.body_auth_only {
        return None;
    }
    let basic = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(basic).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |t: &str| {
        url::form_urlencoded::parse(format!("x={t}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

async fn token(State(s): Shared, headers: HeaderMap, body: String) -> Response {
    let form = form(&body);
    let mut s = s.lock().unwrap();
    let bad = |what: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": what})),
        )
            .into_response()
    };
    if client_of(&s, &headers, &form)
        != Some((OIDC_CLIENT_ID.to_string(), OIDC_CLIENT_SECRET.to_string()))
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let Some((redirect, nonce, challenge, user)) = form.get("code").and_then(|c| s.codes.remove(c))
    else {
        return bad("unknown or used code");
    };
    if form.get("redirect_uri") != Some(&redirect) {
        return bad("redirect_uri differs");
    }
    if form.get("code_verifier").map(|v| sha256_b64(v)) != Some(challenge) {
        return bad("PKCE verifier does not match");
    }
    let now = unix_now();
    let mut claims = user.as_object().cloned().unwrap_or_default();
    let misbehave = s.misbehave;
    let issuer = if misbehave == Some(Misbehave::WrongIssuer) {
        "http://127.0.0.1:9/another-issuer".to_string()
    } else {
        s.issuer.clone()
    };
    let audience = if misbehave == Some(Misbehave::WrongAudience) {
        "another-client"
    } else {
        OIDC_CLIENT_ID
    };
    let nonce = if misbehave == Some(Misbehave::WrongNonce) {
        "a-nonce-from-another-sign-in".to_string()
    } else {
        nonce
    };
    let (iat, exp) = if misbehave == Some(Misbehave::Expired) {
        (now - 7200, now - 3600)
    } else {
        (now, now + 600)
    };
    claims.insert("iss".into(), json!(issuer));
    claims.insert("aud".into(), json!(audience));
    claims.insert("iat".into(), json!(iat));
    claims.insert("exp".into(), json!(exp));
    claims.insert("nonce".into(), json!(nonce));
    claims.insert("auth_time".into(), json!(s.auth_time.unwrap_or(now)));
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "k1"});
    let signing = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string())
    );
    let key = if misbehave == Some(Misbehave::WrongSignature) {
        signing_key(OTHER_KEY)
    } else {
        signing_key(KEY)
    };
    let signature = key
        .sign(
            &CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            signing.as_bytes(),
        )
        .unwrap();
    let id_token = format!("{signing}.{}", URL_SAFE_NO_PAD.encode(signature));
    Json(json!({
        "access_token": "test-access-token",
        "token_type": "Bearer",
        "expires_in": 3600,
        "id_token": id_token,
    }))
    .into_response()
}

#[derive(Default)]
struct DiscordState {
    user: Option<Value>,
    /// code → (redirect_uri, challenge, user)
    codes: HashMap<String, (String, String, Value)>,
    tokens: HashMap<String, Value>,
    authorizations: usize,
}

/// Discord's OAuth2 (`{base}/oauth2/authorize`, `{base}/api/oauth2/token`, `{base}/api/users/@me`).
#[derive(Clone)]
pub struct FakeDiscordOAuth {
    pub base: String,
    state: Arc<Mutex<DiscordState>>,
}

impl FakeDiscordOAuth {
    pub async fn start() -> FakeDiscordOAuth {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(DiscordState::default()));
        let app = Router::new()
            .route("/oauth2/authorize", get(discord_authorize))
            .route("/api/oauth2/token", post(discord_token))
            .route("/api/users/@me", get(discord_me))
            .with_state(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeDiscordOAuth { base, state }
    }

    /// Who signs in from now on (a Discord user id).
    pub fn sign_in_as(&self, id: &str) {
        self.state.lock().unwrap().user =
            Some(json!({"id": id, "username": "csm", "global_name": "Casey"}));
    }

    pub fn authorizations(&self) -> usize {
        self.state.lock().unwrap().authorizations
    }
}

type DShared = State<Arc<Mutex<DiscordState>>>;

async fn discord_authorize(
    State(s): DShared,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = s.lock().unwrap();
    s.authorizations += 1;
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    let state = q.get("state").cloned().unwrap_or_default();
    if q.get("client_id").map(String::as_str) != Some(DISCORD_CLIENT_ID)
        || q.get("scope").map(String::as_str) != Some("identify")
        || q.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let Some(user) = s.user.clone() else {
        return Redirect::to(&format!("{redirect}?error=access_denied&state={state}"))
            .into_response();
    };
    let code = format!("dcode-{}", s.codes.len() + s.tokens.len() + 1);
    s.codes.insert(
        code.clone(),
        (
            redirect.clone(),
            q.get("code_challenge").cloned().unwrap_or_default(),
            user,
        ),
    );
    Redirect::to(&format!("{redirect}?code={code}&state={state}")).into_response()
}

async fn discord_token(State(s): DShared, headers: HeaderMap, body: String) -> Response {
    let form = form(&body);
    let mut s = s.lock().unwrap();
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let from_form = form
        .get("client_id")
        .zip(form.get("client_secret"))
        .map(|(i, s)| format!("{i}:{s}"));
    if basic.or(from_form) != Some(format!("{DISCORD_CLIENT_ID}:{DISCORD_CLIENT_SECRET}")) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let Some((redirect, challenge, user)) = form.get("code").and_then(|c| s.codes.remove(c)) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    };
    if form.get("redirect_uri") != Some(&redirect)
        || form.get("code_verifier").map(|v| sha256_b64(v)) != Some(challenge)
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    }
    let token = format!("dtoken-{}", s.tokens.len() + 1);
    s.tokens.insert(token.clone(), user);
    Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 604800, "scope": "identify"}))
        .into_response()
}

async fn discord_me(State(s): DShared, headers: HeaderMap) -> Response {
    let s = s.lock().unwrap();
    let user = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| s.tokens.get(t).cloned());
    match user {
        Some(u) => Json(u).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "401: Unauthorized", "code": 0})),
        )
            .into_response(),
    }
}
