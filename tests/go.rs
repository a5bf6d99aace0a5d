//! Mint at click: with `server.public_url` set, the button points at `/go/{id}` and the signed
//! URL is minted only when a browser follows it.

mod common;

use common::*;
use portal_bot::core::asker::{Asker, Groups, Platform};
use portal_bot::core::portal::Reply;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn go_links_mint_once_at_click() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "minted-at-click").await;
    // public_url must name the port before start: pick a free one.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = config(&planhat.uri(), "[access]\nslack_users = [\"U1\"]\n");
    cfg.server.listen = addr;
    cfg.server.public_url = Some(url::Url::parse(&format!("http://{addr}")).unwrap());
    let running = spawn(cfg).await;

    let asker = Asker {
        platform: Platform::Slack,
        user_id: "U1".into(),
        team_id: Some("T1".into()),
        channel_id: Some("C1".into()),
        groups: Groups::Known(vec![]),
    };
    let reply = running.app.portal.handle(&asker, "e1").await;
    let Reply::Link(link) = reply else {
        panic!("{reply:?}")
    };
    assert!(link.at_click);
    let go = link.url.expose().to_string();
    assert!(go.starts_with(&format!("http://{addr}/go/")), "{go}");
    let id = go.rsplit('/').next().unwrap();
    assert!(id.len() >= 32, "128+ bits: {id}");
    assert_eq!(
        mint_calls(&planhat, "e1").await,
        0,
        "nothing minted before the click"
    );

    let no_redirect = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // HEAD and link previews leave the id unused.
    let head = no_redirect.head(&go).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let preview = no_redirect
        .get(&go)
        .header(
            "user-agent",
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preview.status(), 200);
    assert_eq!(mint_calls(&planhat, "e1").await, 0);

    let click = no_redirect
        .get(&go)
        .header("user-agent", "Mozilla/5.0")
        .send()
        .await
        .unwrap();
    assert_eq!(click.status(), 302);
    assert_eq!(
        click.headers()["location"],
        format!("{PORTAL}/redirect/minted-at-click").as_str()
    );
    assert_eq!(click.headers()["cache-control"], "no-store");
    assert_eq!(click.headers()["referrer-policy"], "no-referrer");
    assert_eq!(mint_calls(&planhat, "e1").await, 1, "minted at the click");

    let again = no_redirect.get(&go).send().await.unwrap();
    assert_eq!(again.status(), 410);
    let page = again.text().await.unwrap();
    assert!(
        page.contains("already used") && page.contains("/portal"),
        "{page}"
    );
    assert!(!page.contains("minted-at-click"));

    let unknown = no_redirect
        .get(format!("http://{addr}/go/0123456789abcdef0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown.text().await.unwrap().contains("not known"));
    assert_eq!(mint_calls(&planhat, "e1").await, 1);
    // A click that fails for a passing reason (Planhat 503) leaves the link usable.
    Mock::given(wiremock::matchers::path("/shareabletokens/e2"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&planhat)
        .await;
    planhat_link(&planhat, "e2", "second-try").await;
    let Reply::Link(link) = running.app.portal.handle(&asker, "e2").await else {
        panic!("no link")
    };
    let go2 = link.url.expose().to_string();
    let failed = no_redirect.get(&go2).send().await.unwrap();
    assert_eq!(failed.status(), 502);
    assert!(failed.text().await.unwrap().contains("try again"));
    let retried = no_redirect.get(&go2).send().await.unwrap();
    assert_eq!(
        retried.status(),
        302,
        "the same link works once Planhat is back"
    );
    assert_eq!(
        retried.headers()["location"],
        format!("{PORTAL}/redirect/second-try").as_str()
    );
    running.stop().await;
}
