//! Micro-benchmarks of the hot path's pure parts: `cargo bench --bench micro`.
//! Signature checks, request parsing and reply building, each on a realistic input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{KeyInit, Mac};
use portal_bot::adapters::discord::{render as discord_render, verify::DiscordVerifier};
use portal_bot::adapters::slack::{
    parse_command as slack_parse, render as slack_render, verify::SlackVerifier,
};
use portal_bot::core::command::parse_command;
use portal_bot::core::planhat::answer::parse_signed_url;
use portal_bot::core::portal::{id_of, PortalLink, Reply};
use portal_bot::core::secret::Secret;
use std::hint::black_box;

fn slack_body() -> String {
    "token=x&team_id=T0001&team_domain=acme&channel_id=C2147483705&channel_name=cs&user_id=U2147483697&user_name=csm&command=%2Fportal&text=5f2a9c0e1b2c3d4e5f6a7b8c&api_app_id=A123456&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2F1234%2F5678&trigger_id=13345224609.738474920.8088930838d88f008e0".to_string()
}

fn link() -> Reply {
    Reply::Link(PortalLink {
        url: Secret::new("https://share.planhat.com/redirect/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI1ZjJhOWMwZSJ9.c2lnbmF0dXJl"),
        end_user: id_of("5f2a9c0e1b2c3d4e5f6a7b8c").unwrap(),
        who: None,
        expires_at: SystemTime::now() + Duration::from_secs(30),
        at_click: false,
        grant: None,
    })
}

fn benches(c: &mut Criterion) {
    let secret = "8f742231b10e8888abcd99yyyzzz85a5";
    let body = slack_body();
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-slack-signature",
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
            .parse()
            .unwrap(),
    );
    headers.insert("x-slack-request-timestamp", ts.parse().unwrap());
    let slack = SlackVerifier::new(secret);
    c.bench_function("slack signature verify", |b| {
        b.iter(|| {
            slack
                .verify(black_box(&headers), black_box(body.as_bytes()))
                .unwrap()
        })
    });
    c.bench_function("slack command parse", |b| {
        b.iter(|| slack_parse(black_box(body.as_bytes())).unwrap())
    });

    let key = SigningKey::from_bytes(&[5u8; 32]);
    let interaction = serde_json::json!({
        "id": "1100000000000000001", "application_id": "1200000000000000002", "type": 2, "token": "aW50ZXJhY3Rpb246MTEwMDAwMDAwMDAwMDAwMDAwMTpzZWNyZXQ",
        "version": 1, "guild_id": "1300000000000000003", "channel_id": "1400000000000000004", "locale": "en-US",
        "entitlements": [], "attachment_size_limit": 8388608,
        "member": {"user": {"id": "1500000000000000005", "username": "csm", "global_name": "C S M", "avatar": null},
                   "roles": ["1600000000000000006"], "deaf": false, "mute": false, "flags": 0, "joined_at": "2024-01-01T00:00:00+00:00"},
        "data": {"id": "1700000000000000007", "name": "portal", "type": 1,
                 "options": [{"name": "enduser", "type": 3, "value": "5f2a9c0e1b2c3d4e5f6a7b8c"}]}
    })
    .to_string();
    let signature = hex::encode(
        key.sign(&[ts.as_bytes(), interaction.as_bytes()].concat())
            .to_bytes(),
    );
    let mut dheaders = HeaderMap::new();
    dheaders.insert("x-signature-ed25519", signature.parse().unwrap());
    dheaders.insert("x-signature-timestamp", ts.parse().unwrap());
    let discord = DiscordVerifier::new(key.verifying_key().to_bytes()).unwrap();
    c.bench_function("discord signature verify", |b| {
        b.iter(|| {
            discord
                .verify(black_box(&dheaders), black_box(interaction.as_bytes()))
                .unwrap()
        })
    });
    c.bench_function("discord interaction parse", |b| {
        b.iter(|| {
            serde_json::from_slice::<serenity::all::Interaction>(black_box(interaction.as_bytes()))
                .unwrap()
        })
    });

    c.bench_function("command text parse", |b| {
        b.iter(|| parse_command(black_box("5f2a9c0e1b2c3d4e5f6a7b8c")).unwrap())
    });
    let answer = br#"{"token":"abc","url":"https://share.planhat.com/redirect/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI1ZjJhOWMwZSJ9.c2lnbmF0dXJl"}"#;
    c.bench_function("planhat signed-url parse", |b| {
        b.iter(|| {
            parse_signed_url(black_box(answer), "https://share.planhat.com/redirect/").unwrap()
        })
    });

    let reply = link();
    c.bench_function("slack link reply build + JSON", |b| {
        b.iter(|| slack_render::command_json(black_box(&reply), "U2147483697"))
    });
    c.bench_function("discord link reply build + JSON", |b| {
        b.iter(|| {
            serde_json::to_vec(&discord_render::response(discord_render::message(
                black_box(&reply),
                "1500000000000000005",
            )))
            .unwrap()
        })
    });
}

criterion_group! {
    name = micro;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(micro);
