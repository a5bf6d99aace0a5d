//! Finding the end user by name (`[search]`), as Slack and Discord drive it: `/portal find
//! <words>` (and arguments that are no id) answered with matches as buttons, a pick that
//! proceeds as `/portal <id>`, Discord's autocomplete, suggestions limited to the asker's own
//! companies under `scope = "owned"`, and an index that never blocks a command while Planhat
//! is hanging, failing or rate limiting. Planhat is a fake serving its lists in pages.

mod common;

use std::time::{Duration, Instant};

use common::*;
use portal_bot::Running;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const FIRST_NAMES: [&str; 8] = ["Jane", "John", "Ana", "Jöns", "Pat", "Sam", "Lee", "Kim"];
const LAST_NAMES: [&str; 6] = ["Doe", "Smith", "Ångström", "Roe", "Lee", "Park"];

/// End user `i` of the fake: shared first names and companies, like a real tenant.
fn end_user(i: usize) -> Value {
    let first = FIRST_NAMES[i % FIRST_NAMES.len()];
    let last = LAST_NAMES[(i / FIRST_NAMES.len()) % LAST_NAMES.len()];
    json!({
        "_id": format!("eu{i:06}"),
        "name": format!("{first} {last}"),
        "email": format!("{}.{}{i}@co{}.example", first.to_lowercase(), last.to_lowercase(), i % 40),
        "companyId": format!("co{}", i % 40),
        "companyName": format!("Company {}", i % 40),
    })
}

/// Serves `n` end users in pages of 5,000 (the offsets the bot asks for), one named Jane Doe
/// at Acme (`acme1`), and an access check and mint for every end user.
async fn planhat(n: usize) -> MockServer {
    let server = MockServer::start().await;
    let mut all: Vec<Value> = (0..n).map(end_user).collect();
    all.push(
        json!({"_id": "acme1", "name": "Jane Doe", "email": "jane@acme.example",
                    "companyId": "acme", "companyName": "Acme"}),
    );
    all.push(json!({"_id": "gone1", "name": "Jane Gone", "archived": true}));
    for (page, chunk) in all.chunks(5_000).enumerate() {
        Mock::given(method("GET"))
            .and(path("/endusers"))
            .and(query_param("offset", (page * 5_000).to_string()))
            .respond_with(ResponseTemplate::new(200).set_body_json(chunk))
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/endusers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    planhat_link(&server, "acme1", "found-by-name").await;
    server
}

fn slack_toml(extra_access: &str) -> String {
    format!(
        "[slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\n\
         api_url = \"http://127.0.0.1:9/api\"\n[access]\nslack_users = [\"U1\"]\ndiscord_users = [\"1500000000000000005\"]\n{extra_access}\n\
         [discord]\nmode = \"http\"\ntoken = \"{DISCORD_TOKEN}\"\napplication_id = \"{APP_ID}\"\n\
         public_key = \"{}\"\nguild_ids = [\"{GUILD}\"]\napi_url = \"http://127.0.0.1:9/api/v10\"\n\
         [search]\n",
        discord_public_key_hex()
    )
}

/// Waits until the app's index has been read.
async fn warm(app: &Running) {
    let search = app.app.portal.search().expect("search is on").clone();
    let until = Instant::now() + Duration::from_secs(15);
    while !search.warm() {
        assert!(Instant::now() < until, "the index was not read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn slack(app: &Running, text: &str, trigger: &str) -> Value {
    let body = slash_body("U1", "C1", text, "http://127.0.0.1:9/hook", trigger);
    post_slack(
        &format!("http://{}", app.addr),
        "/slack/commands",
        SIGNING_SECRET,
        body,
    )
    .await
    .json()
    .await
    .unwrap()
}

/// The buttons of a Slack answer: (action id, label, value).
fn buttons(answer: &Value) -> Vec<(String, String, String)> {
    answer["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|b| b["elements"].as_array().into_iter().flatten())
        .map(|e| {
            (
                e["action_id"].as_str().unwrap_or("").to_string(),
                e["text"]["text"].as_str().unwrap_or("").to_string(),
                e["value"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// From a name to a link in one exchange on Slack: `/portal find jane doe acme` (and the ways
/// people type it) offers Jane Doe at Acme; pressing her button gives the link.
#[tokio::test(flavor = "multi_thread")]
async fn slack_finds_an_end_user_by_name_and_a_pick_gives_the_link() {
    let planhat = planhat(12_000).await;
    let app = spawn(config(&planhat.uri(), &slack_toml(""))).await;
    warm(&app).await;
    let search = app.app.portal.search().unwrap().clone();
    let (_, refreshed) = search.last_refresh().unwrap();
    assert_eq!(
        refreshed.end_users, 12_001,
        "every page read, the archived one left out"
    );
    assert_eq!(refreshed.calls, 3);

    for (i, text) in [
        "find jane doe acme",
        "jane doe acme",
        "Doe, Jane acme",
        "find jnae doe acme",
    ]
    .iter()
    .enumerate()
    {
        let answer = slack(&app, text, &format!("trig-find-{i}")).await;
        let picks = buttons(&answer);
        assert!(!picks.is_empty(), "{text}: {answer}");
        assert_eq!(picks[0].2, "U1:acme1", "{text}: {picks:?}");
        assert!(picks[0].1.contains("Jane Doe"), "{picks:?}");
        assert!(picks.len() <= 5);
    }
    // One word that is no id the index knows: matches, not a call to Planhat with it.
    let answer = slack(&app, "ångström", "trig-find-word").await;
    assert!(!buttons(&answer).is_empty(), "{answer}");
    assert_eq!(planhat_calls(&planhat, "/shareabletokens").await, 0);
    // Nothing matches: a clear line.
    let answer = slack(&app, "find zzyzx", "trig-find-none").await;
    assert!(answer.to_string().contains("No end user"), "{answer}");

    // The pick proceeds as /portal acme1.
    let click = block_actions("U1", "pick_0", "U1:acme1", "http://127.0.0.1:9/pick");
    let hooks = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&hooks)
        .await;
    let click = click.replace(
        &url::form_urlencoded::byte_serialize(b"http://127.0.0.1:9/pick").collect::<String>(),
        &url::form_urlencoded::byte_serialize(format!("{}/pick", hooks.uri()).as_bytes())
            .collect::<String>(),
    );
    let r = post_slack(
        &format!("http://{}", app.addr),
        "/slack/interactions",
        SIGNING_SECRET,
        click,
    )
    .await;
    assert_eq!(r.status(), 200);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let got = hooks.received_requests().await.unwrap_or_default();
        if let Some(r) = got.first() {
            let body = String::from_utf8_lossy(&r.body);
            assert!(body.contains("/redirect/found-by-name"), "{body}");
            break;
        }
        assert!(Instant::now() < until, "the pick's link was not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

/// A Discord autocomplete interaction as Discord sends it while the asker types.
fn autocomplete(id: u64, typed: &str) -> Value {
    let mut v = discord_command(id, 1500000000000000005, &[], typed);
    v["type"] = json!(4);
    v["data"]["options"][0]["focused"] = json!(true);
    v
}

/// Discord: the `enduser` option autocompletes, well inside Discord's 3 s, with up to 25
/// choices ("Jane Doe · jane@acme.example · Acme", the value the id), after `check` too.
#[tokio::test(flavor = "multi_thread")]
async fn discord_autocompletes_the_end_user() {
    let planhat = planhat(12_000).await;
    let app = spawn(config(&planhat.uri(), &slack_toml(""))).await;
    warm(&app).await;
    let base = format!("http://{}", app.addr);
    let started = Instant::now();
    let r = post_discord(
        &base,
        autocomplete(1100000000000009001, "jane doe ac").to_string(),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["type"], 8, "{answer}");
    let choices = answer["data"]["choices"].as_array().unwrap();
    assert!(!choices.is_empty() && choices.len() <= 25, "{answer}");
    assert_eq!(choices[0]["value"], "acme1", "{answer}");
    assert_eq!(choices[0]["name"], "Jane Doe · jane@acme.example · Acme");

    let r = post_discord(
        &base,
        autocomplete(1100000000000009002, "check jane doe acme").to_string(),
    )
    .await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["data"]["choices"][0]["value"], "check acme1",
        "{answer}"
    );

    let r = post_discord(&base, autocomplete(1100000000000009003, "jane").to_string()).await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["data"]["choices"].as_array().unwrap().len(),
        25,
        "{answer}"
    );
    app.stop().await;
}

/// With `scope = "owned"`, suggestions and finds show only the asker's own companies: no names
/// of other customers leak through search.
#[tokio::test(flavor = "multi_thread")]
async fn scoped_askers_see_only_their_own_companies() {
    let planhat = planhat(2_000).await;
    // Companies and their owners: the asker (Planhat user p1, casey@acme.example) owns co3.
    let companies: Vec<Value> = (0..40)
        .map(|c| json!({"_id": format!("co{c}"), "name": format!("Company {c}"), "owner": if c == 3 { "p1" } else { "p2" }}))
        .chain(std::iter::once(json!({"_id": "acme", "name": "Acme", "owner": "p2"})))
        .collect();
    Mock::given(method("GET"))
        .and(path("/companies"))
        .respond_with(ResponseTemplate::new(200).set_body_json(companies))
        .mount(&planhat)
        .await;
    Mock::given(method("GET"))
        .and(path("/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"_id": "p1", "email": "casey@acme.example"},
            {"_id": "p2", "email": "other@acme.example"}
        ])))
        .mount(&planhat)
        .await;
    let app = spawn(config(
        &planhat.uri(),
        &slack_toml(
            "scope = \"owned\"\ndiscord_emails = { \"1500000000000000005\" = \"casey@acme.example\" }",
        ),
    ))
    .await;
    warm(&app).await;
    let base = format!("http://{}", app.addr);
    // Everyone called Jöns works at Company 3, the asker's; Jane Doe at Acme is not theirs.
    let r = post_discord(&base, autocomplete(1100000000000009101, "jons").to_string()).await;
    let answer: Value = r.json().await.unwrap();
    let choices = answer["data"]["choices"].as_array().unwrap();
    assert!(!choices.is_empty(), "{answer}");
    let r = post_discord(
        &base,
        autocomplete(1100000000000009102, "jane doe").to_string(),
    )
    .await;
    let theirs: Value = r.json().await.unwrap();
    for c in theirs["data"]["choices"].as_array().unwrap() {
        assert!(
            c["name"].as_str().unwrap().ends_with("Company 3"),
            "{theirs}"
        );
    }
    assert!(!theirs.to_string().contains("Acme"), "{theirs}");
    for c in choices {
        let name = c["name"].as_str().unwrap();
        assert!(
            name.ends_with("Company 3"),
            "only the asker's company: {name}"
        );
    }
    assert!(!answer.to_string().contains("Acme"), "{answer}");
    app.stop().await;
}

/// The index read while Planhat hangs, fails or rate limits: commands by id are answered as
/// always (inside 3 s), and a find says the index is not there yet.
#[tokio::test(flavor = "multi_thread")]
async fn a_cold_or_failing_index_never_blocks_a_command() {
    for (name, answer) in [
        (
            "hanging",
            ResponseTemplate::new(200).set_delay(Duration::from_secs(30)),
        ),
        ("failing", ResponseTemplate::new(500)),
        (
            "rate limiting",
            ResponseTemplate::new(429).insert_header("retry-after", "1"),
        ),
    ] {
        let planhat = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/endusers"))
            .respond_with(answer)
            .mount(&planhat)
            .await;
        planhat_link(&planhat, "acme1", "by-id").await;
        let app = spawn(config(&planhat.uri(), &slack_toml(""))).await;
        // Once the index read has been tried (it starts within 2 s), a command by id gets its
        // link. A 429 pauses every call to Planhat for its Retry-After (Planhat limits the
        // token, not the endpoint), so until then the asker hears so, clearly and at once.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let until = Instant::now() + Duration::from_secs(5);
        let mut n = 0;
        loop {
            n += 1;
            let started = Instant::now();
            let answer = slack(&app, "acme1", &format!("trig-cold-{name}-{n}")).await;
            assert!(started.elapsed() < Duration::from_secs(3), "{name}");
            if answer.to_string().contains("/redirect/by-id") {
                break;
            }
            assert!(
                answer.to_string().contains("rate limited"),
                "{name}: {answer}"
            );
            assert!(
                Instant::now() < until,
                "{name}: no link after the pause: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let answer = slack(&app, "find jane doe", &format!("trig-cold-find-{name}")).await;
        assert!(
            answer.to_string().contains("still reading"),
            "{name}: {answer}"
        );
        app.stop().await;
    }
}

/// A refresh finds end users added and removed since the last read, and swaps them in whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_finds_end_users_added_and_removed() {
    let planhat = MockServer::start().await;
    let page = |people: &[(&str, &str)]| {
        ResponseTemplate::new(200).set_body_json(
            people
                .iter()
                .map(|(id, name)| json!({"_id": id, "name": name}))
                .collect::<Vec<_>>(),
        )
    };
    Mock::given(method("GET"))
        .and(path("/endusers"))
        .and(query_param("offset", "0"))
        .respond_with(page(&[("a1", "Alice Old"), ("b1", "Bob Stays")]))
        .up_to_n_times(1)
        .mount(&planhat)
        .await;
    Mock::given(method("GET"))
        .and(path("/endusers"))
        .respond_with(page(&[("b1", "Bob Stays"), ("c1", "Carol New")]))
        .mount(&planhat)
        .await;
    let app = spawn(config(&planhat.uri(), &slack_toml(""))).await;
    warm(&app).await;
    let search = app.app.portal.search().unwrap().clone();
    assert!(search.index().knows("a1") && !search.index().knows("c1"));
    portal_bot::core::search::refresh::refresh(&search, app.app.portal.planhat(), false, vec![])
        .await
        .unwrap();
    assert!(!search.index().knows("a1"), "removed");
    assert!(
        search.index().knows("c1") && search.index().knows("b1"),
        "added, kept"
    );
    let answer = slack(&app, "find carol", "trig-refresh").await;
    assert_eq!(buttons(&answer)[0].2, "U1:c1", "{answer}");
    app.stop().await;
}
