//! The web console in a real browser: headless Chromium driven through WebDriver
//! (chromedriver, started here on 127.0.0.1 and killed by its pid), against a daemon
//! in this process. The flow of issue 13: an Owner signs in, adds two members, assigns
//! KSE to both in one go and sees them in Licensed Users, tries a third past the quota
//! and reads the refusal, transfers one, creates and revokes a key, sees a session
//! appear when an engine acquires and disappear when terminated from the page; a
//! Member's key does not open the admin pages. The Usage page draws the series of a
//! day and of a week as SVG charts, and a listing longer than a screen pages on.
//! Screenshots of each page are saved under `target/console-screenshots/`.
//!
//! Without Chromium and chromedriver the test says so and passes, unless `CI=true`,
//! where a missing browser is a failure (`.ci/run` installs them).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::harness::*;

/// How long a page may take to show what the test waits for.
const PAGE_DEADLINE: Duration = Duration::from_secs(30);
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "chromedriver";

/// chromedriver, killed by its pid when dropped.
struct Driver {
    child: Child,
    addr: SocketAddr,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the browser is here; under `CI=true` its absence fails the test.
fn browser_available() -> bool {
    let found = std::path::Path::new(CHROMIUM).exists()
        && Command::new(CHROMEDRIVER)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the console test needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver); .ci/run installs them"
        );
        eprintln!("skipping the console's browser test: chromium or chromedriver is not installed");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

async fn start_driver() -> Driver {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let driver = Driver {
        child,
        addr,
        _profile: tempfile::tempdir().expect("a profile directory"),
    };
    let deadline = Instant::now() + PAGE_DEADLINE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                format!("--user-data-dir={}", driver._profile.path().display()),
                "--window-size=1280,900",
            ],
        }),
    );
    ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://{}", driver.addr))
        .await
        .expect("a browser session")
}

/// The page as the test drives it.
struct Console {
    client: Client,
    url: String,
    screenshots: PathBuf,
}

impl Console {
    async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(PAGE_DEADLINE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no {css}: {error}"))
            .click()
            .await
            .unwrap_or_else(|error| panic!("click {css}: {error}"));
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self
            .client
            .wait()
            .at_most(PAGE_DEADLINE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no {css}: {error}"));
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until the element `css` shows `needle` (the page answers asynchronously).
    async fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + PAGE_DEADLINE;
        loop {
            let text = self.text(css).await;
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} shows {text:?}, not {needle:?}; the notice says {:?}",
                self.text("#notice").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until nothing matches `css`.
    async fn wait_gone(&self, css: &str) {
        let deadline = Instant::now() + PAGE_DEADLINE;
        while self.client.find(Locator::Css(css)).await.is_ok() {
            assert!(Instant::now() < deadline, "{css} is still shown");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(self.screenshots.join(format!("{name}.png")), png)
            .expect("save the screenshot");
    }

    /// The elements matching `css` now.
    async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |found| found.len())
    }

    /// Waits until `product`'s usage chart shows at least `at_least` points, and
    /// returns how many it shows (a bar each, and the count on the SVG).
    async fn chart_points(&self, product: &str, at_least: usize) -> usize {
        let css = format!("section[data-product='{product}'] svg rect.point");
        let deadline = Instant::now() + PAGE_DEADLINE;
        loop {
            let points = self.count(&css).await;
            if points >= at_least {
                let said = self
                    .client
                    .find(Locator::Css(&format!(
                        "section[data-product='{product}'] svg"
                    )))
                    .await
                    .expect("the chart")
                    .attr("data-points")
                    .await
                    .expect("data-points");
                assert_eq!(said, Some(points.to_string()));
                return points;
            }
            assert!(
                Instant::now() < deadline,
                "{css}: {points} points, not {at_least}; the notice says {:?}",
                self.text("#notice").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn sign_in(&self, key: &str, org: &str) {
        self.client.goto(&self.url).await.expect("open the console");
        self.fill("#sign-in-key", key).await;
        self.fill("#sign-in-org", org).await;
        self.click("#sign-in-submit").await;
    }

    async fn sign_out(&self) {
        self.click("#sign-out").await;
        self.wait_text("h1", "Sign in").await;
    }

    async fn open(&self, page: &str, heading: &str) {
        self.click(&format!("nav a[data-page='{page}']")).await;
        self.wait_text("h1", heading).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_manages_licenses_members_keys_and_sessions_in_the_browser() {
    if !browser_available() {
        return;
    }
    let server = start().await;
    let acme = server.organization("acme", 2, 2, &[]).await;
    let driver = start_driver().await;
    let screenshots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&screenshots).expect("the screenshots directory");
    let console = Console {
        client: browser(&driver).await,
        url: format!("http://{}/", server.addr),
        screenshots,
    };
    let result =
        tokio::time::timeout(Duration::from_secs(240), the_flow(&server, &acme, &console)).await;
    let _ = console.client.clone().close().await;
    drop(driver);
    result.expect("the browser flow within 4 minutes");
}

async fn the_flow(server: &TestServer, acme: &Org, console: &Console) {
    console
        .client
        .goto(&console.url)
        .await
        .expect("open the console");
    console.wait_text("h1", "Sign in").await;
    console.screenshot("01-sign-in").await;

    // Sign in as the Owner: License Management opens.
    console.sign_in(&acme.owner_key, "acme").await;
    console.wait_text("h1", "License Management").await;
    assert_eq!(console.text("#quota").await, "2");

    // Add two members.
    console.open("members", "Members").await;
    for email in ["ann@acme.test", "bob@acme.test"] {
        console.fill("#member-email", email).await;
        console.click("#add-member-submit").await;
        console
            .wait_text("#notice", &format!("Added {email}"))
            .await;
    }
    console.wait_text("#members", "bob@acme.test").await;
    console.screenshot("02-members").await;

    // Assign KSE to both in one go; both appear in Licensed Users.
    console.open("licenses", "License Management").await;
    console.click("#assign-open").await;
    console
        .fill("#assign-emails", "ann@acme.test,\nbob@acme.test")
        .await;
    console.click("#assign-submit").await;
    console
        .wait_text("#notice", "Assigned KSE to 2 users")
        .await;
    let licensed = console.wait_text("#licensed-users", "ann@acme.test").await;
    assert!(licensed.contains("bob@acme.test"), "{licensed}");
    console
        .wait_text("#assign-results", "bob@acme.test: KSE license assigned")
        .await;
    assert_eq!(console.text("#left").await, "0");
    console.screenshot("03-license-management").await;

    // A third past the quota: refused, with the seats left.
    console.click("#assign-open").await;
    console.fill("#assign-emails", &acme.owner).await;
    console.click("#assign-submit").await;
    let refusal = console.wait_text("#notice", "Nothing was assigned").await;
    assert!(
        refusal.contains("KSE quota is full") && refusal.contains("0 left"),
        "{refusal}"
    );
    console.screenshot("04-quota-refusal").await;
    let mut assigned = acme.assigned(server, KSE).await;
    assigned.sort();
    assert_eq!(assigned, ["ann@acme.test", "bob@acme.test"]);

    // Transfer ann's license to the owner.
    console.click("button[data-transfer='ann@acme.test']").await;
    console
        .wait_text("#notice", "Transferred the KSE license from ann@acme.test")
        .await;
    let mut assigned = acme.assigned(server, KSE).await;
    assigned.sort();
    assert_eq!(assigned, ["bob@acme.test", "owner@acme.test"]);

    // Create a key: shown once, with a copy button; then revoke it.
    console.open("keys", "API keys").await;
    console.fill("#key-email", "bob@acme.test").await;
    console.fill("#key-label", "bob's laptop").await;
    console.click("#create-key-submit").await;
    let secret = console.wait_text("#new-secret", "sbk_").await;
    assert!(
        console
            .client
            .find(Locator::Css("#copy-secret"))
            .await
            .is_ok()
    );
    console.screenshot("05-api-key-created").await;
    let owner = server.admin(&acme.owner_key).await;
    let key_id = api_keys(&owner, "acme")
        .await
        .into_iter()
        .find(|key| key.label == "bob's laptop")
        .expect("the key the page created")
        .key_id;
    assert!(secret.contains(&key_id), "the secret names its key id");
    console
        .click(&format!("button[data-revoke='{key_id}']"))
        .await;
    console
        .client
        .accept_alert()
        .await
        .expect("confirm the revocation");
    console
        .wait_text("#notice", &format!("Revoked key {key_id}"))
        .await;
    assert!(
        api_keys(&owner, "acme")
            .await
            .iter()
            .all(|key| key.key_id != key_id)
    );

    // A session appears when an engine acquires, and ends when terminated here.
    let bob_key = create_key(&mut server.operator().await, "acme", "bob@acme.test").await;
    let mut engine = server.session(&bob_key).await;
    let lease = acquire_lease(&mut engine, KSE, "engine-bob").await;
    console.open("sessions", "Sessions").await;
    console.wait_text("#sessions", "engine-bob").await;
    console.screenshot("06-sessions").await;
    console
        .click(&format!("button[data-terminate='{}']", lease.lease_id))
        .await;
    console
        .wait_text("#notice", "Terminated bob@acme.test's session")
        .await;
    console
        .wait_gone(&format!("tr[data-lease='{}']", lease.lease_id))
        .await;
    assert!(sessions(&owner, "acme", 0).await.is_empty());

    // Usage: a chart per product, a bar per point of the day's series (by ten
    // minutes), then the week's (by the hour).
    console.open("usage", "Usage").await;
    console.wait_text("main", "KSE: now").await;
    let day = console.chart_points("PRODUCT_KRE", 100).await;
    assert!(day <= 200, "{day} points in a day");
    console.screenshot("07-usage").await;
    console.click("#usage-tab-week").await;
    let week = console.chart_points("PRODUCT_KRE", 168).await;
    assert!(week <= 200, "{week} points in a week");
    assert_eq!(
        console
            .client
            .find(Locator::Css("#usage-tab-week"))
            .await
            .expect("the week tab")
            .attr("aria-selected")
            .await
            .expect("aria-selected")
            .as_deref(),
        Some("true")
    );
    console
        .wait_text("main", "in memory since it started")
        .await;
    console.screenshot("07-usage-week").await;
    console.open("audit", "Audit").await;
    console.wait_text("#audit", "licenses_assigned").await;
    console.screenshot("08-audit").await;

    // A listing longer than a screen (20 of the API's pages; one member a page
    // here) says so and pages on with the API's page tokens.
    let mut operator = server.operator().await;
    for i in 0..20 {
        add_member(&mut operator, "acme", &format!("m{i:02}@acme.test"))
            .await
            .expect("add a member");
    }
    console
        .client
        .execute(
            "sessionStorage.setItem('seatbroker.pageSize', '1'); return null;",
            vec![],
        )
        .await
        .expect("a page of one");
    console.open("members", "Members").await;
    console.wait_text("[data-pager]", "more follow").await;
    assert_eq!(console.count("#members tbody tr").await, 20);
    console.screenshot("12-members-paged").await;
    console.click("[data-pager] [data-page-next]").await;
    console.wait_text("[data-pager]", "the last").await;
    console.wait_text("#members", "m19@acme.test").await;
    console.click("[data-pager] [data-page-previous]").await;
    console.wait_text("[data-pager]", "more follow").await;
    console
        .client
        .execute(
            "sessionStorage.removeItem('seatbroker.pageSize'); return null;",
            vec![],
        )
        .await
        .expect("pages as the daemon sizes them");

    // A phone's width.
    console
        .client
        .set_window_size(390, 844)
        .await
        .expect("resize");
    console.open("licenses", "License Management").await;
    console.wait_text("#licensed-users", "bob@acme.test").await;
    console.screenshot("09-phone-license-management").await;
    console.open("usage", "Usage").await;
    console.chart_points("PRODUCT_KRE", 100).await;
    console.screenshot("09-phone-usage").await;
    console
        .client
        .set_window_size(1280, 900)
        .await
        .expect("resize");

    // A Member's key does not open the admin pages.
    console.sign_out().await;
    let ann_key = create_key(&mut server.operator().await, "acme", "ann@acme.test").await;
    console.sign_in(&ann_key, "acme").await;
    let refusal = console.wait_text("#notice", "Not signed in").await;
    assert!(refusal.contains("Owner or Admin"), "{refusal}");
    assert!(
        !console
            .client
            .find(Locator::Css("#nav"))
            .await
            .expect("nav")
            .is_displayed()
            .await
            .expect("displayed")
    );
    console.screenshot("10-member-refused").await;

    // The operator sees the organizations.
    console.sign_in(OPERATOR_KEY, "").await;
    console.wait_text("#orgs", "acme").await;
    console.screenshot("11-organizations").await;
    console.sign_out().await;
}
