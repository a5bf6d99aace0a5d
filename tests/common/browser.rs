//! A real headless Chromium for every page a person opens in a browser, driven over WebDriver
//! (fantoccini, with Debian's `chromedriver`). Each test gets its own browser with a fresh
//! profile (no cookies carried between tests), on loopback only, and never skips: a machine
//! without Chromium fails the test with what to install (`scripts/test` installs it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// Where Debian puts them (`apt-get install chromium chromium-driver`).
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One headless Chromium and the chromedriver that drives it.
pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a Chromium session under it.
    pub async fn start() -> Browser {
        for (path, what) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: this test drives a real Chromium. Run scripts/test (it installs \
                 what the tests need), or: apt-get install {what}"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let profile = std::env::temp_dir().join(format!(
            "pb-chromium-{}-{port}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut browser_args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            // Loopback only: no proxy from the environment, nothing else resolvable.
            "--no-proxy-server".into(),
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".into(),
        ];
        browser_args.push(format!("--user-data-dir={}", profile.display()));
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": browser_args }),
        );
        let webdriver = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&webdriver)
                .await
            {
                Ok(client) => break client,
                Err(e) if started.elapsed() < Duration::from_secs(20) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("Chromium did not start under chromedriver: {e}"),
            }
        };
        Browser {
            client,
            driver,
            profile,
        }
    }

    /// Opens `url` and waits for the page to load (redirects followed).
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("the page loads");
    }

    /// Clicks the page's one button and waits until the browser has left `from`.
    pub async fn press_button(&self) {
        let from = self.client.current_url().await.unwrap();
        self.client
            .find(Locator::Css("button"))
            .await
            .expect("the page has a button")
            .click()
            .await
            .expect("the button can be clicked");
        self.wait_until_not_at(from.as_str()).await;
    }

    /// Waits (up to 10 s) until the current URL is no longer `url`.
    pub async fn wait_until_not_at(&self, url: &str) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.client.current_url().await.unwrap().as_str() != url {
                // Let the new page finish loading.
                let _ = self
                    .client
                    .wait()
                    .at_most(Duration::from_secs(5))
                    .for_element(Locator::Css("body"))
                    .await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where the browser is now.
    pub async fn url(&self) -> String {
        self.client.current_url().await.unwrap().to_string()
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        self.client
            .find(Locator::Css("body"))
            .await
            .expect("the page has a body")
            .text()
            .await
            .unwrap_or_default()
    }

    /// Ends the session and the browser.
    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // A Chromium left behind by a failed test (its driver killed first) goes too.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.profile.display().to_string())
            .status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}
