//! `GET /metrics` scraped by a real Prometheus (Debian's `prometheus`, which the README's test
//! command installs), and asked through Prometheus's own query API.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{TestManifest, admin_get, free_port, guest, send, send_with, service};

/// `faulty` calls `flaky` through a breaker that opens after 3 failures in a row.
fn manifest(telemetry: &str) -> TestManifest {
    TestManifest::new(&format!(
        "{}{}[[policy]]\nname = \"breaker\"\ncomponent = {:?}\n\
         config = {{ consecutive_failures = \"3\", open_ms = \"60000\" }}\n\
         [[bind]]\npolicies = [\"breaker\"]\ncalls_to = \"flaky\"\n{telemetry}",
        service("faulty", "faulty", &["POST /f/{fault}"], ""),
        service(
            "flaky",
            "faulty",
            &["GET /flaky/{fault}", "GET /flaky/{fault}/{arg}"],
            ""
        ),
        guest("policy_breaker").display().to_string(),
    ))
}

/// A Prometheus server scraping one target every 200 ms, stopped on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn scraping(target: SocketAddr, token_file: &std::path::Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\n\
                 scrape_configs:\n  - job_name: switchyard\n    \
                 authorization:\n      type: Bearer\n      credentials_file: {}\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n",
                token_file.display()
            ),
        )
        .unwrap();
        let addr = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (the README's test command installs Debian's prometheus)");
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The first sample's value of an instant query, once Prometheus has one.
    async fn value(&self, query: &str) -> Option<f64> {
        // Until Prometheus listens, there is no answer yet.
        tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let path = format!("/api/v1/query?query={}", percent_encoded(query));
        let reply = send(self.addr, "GET", &path, "").await;
        if reply.status != 200 {
            return None;
        }
        let answer: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
        answer["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    }

    /// Waits up to 30 s for `query` to answer a value that `holds`.
    async fn wait_for(&self, query: &str, holds: impl Fn(f64) -> bool) -> f64 {
        let until = Instant::now() + Duration::from_secs(30);
        let mut last = None;
        while Instant::now() < until {
            last = self.value(query).await;
            if let Some(value) = last
                && holds(value)
            {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("Prometheus never answered `{query}` as expected; last answer: {last:?}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

async fn call(node: &switchyard::Node, method: &str) -> u16 {
    send(
        node.http_addr(),
        "POST",
        "/f/call",
        &format!("flaky\n{method}"),
    )
    .await
    .status
}

#[tokio::test]
async fn prometheus_scrapes_requests_latency_calls_and_a_breaker_opening() {
    let manifest = manifest("");
    let node = manifest.start().await;
    let prometheus = Prometheus::scraping(node.admin_addr(), node.admin_token_file());
    for _ in 0..4 {
        assert_eq!(call(&node, "GET /flaky/echo").await, 200);
    }
    // Three failures in a row open the breaker; the next call is rejected by it.
    for _ in 0..3 {
        assert_eq!(call(&node, "GET /flaky/status/503").await, 503);
    }
    assert_eq!(call(&node, "GET /flaky/echo").await, 503);

    let requests = prometheus
        .wait_for(
            "sum(switchyard_requests_total{service=\"faulty\",method=\"POST\",route=\"/f/{fault}\"})",
            |n| n >= 8.0,
        )
        .await;
    assert_eq!(requests, 8.0);
    let median = prometheus
        .wait_for(
            "histogram_quantile(0.5, sum by (le) (switchyard_request_duration_seconds_bucket{service=\"faulty\"}))",
            f64::is_finite,
        )
        .await;
    assert!(
        median > 0.0 && median < 5.0,
        "median request latency {median} s"
    );
    prometheus
        .wait_for(
            "switchyard_calls_total{caller=\"faulty\",callee=\"flaky\",outcome=\"rejected\"}",
            |n| n == 1.0,
        )
        .await;
    prometheus
        .wait_for(
            "switchyard_policy_transitions_total{policy=\"breaker\",state=\"open\"}",
            |n| n == 1.0,
        )
        .await;
    prometheus
        .wait_for(
            "switchyard_policy_state{policy=\"breaker\",state=\"open\"}",
            |n| n == 1.0,
        )
        .await;
    prometheus
        .wait_for(
            "switchyard_policy_decisions_total{policy=\"breaker\",decision=\"reject\"}",
            |n| n == 1.0,
        )
        .await;
    // The admin API shows the same state.
    let policies = admin_get(&node, "/policies").await.body;
    assert!(policies.contains("\"state\": \"open\""), "{policies}");
}

#[tokio::test]
async fn metrics_need_the_token_on_the_admin_api_and_not_on_their_own_listener() {
    let manifest = manifest("[telemetry]\nmetrics_addr = \"127.0.0.1:0\"\n");
    let node = manifest.start().await;
    assert_eq!(call(&node, "GET /flaky/echo").await, 200);
    let without_token = send(node.admin_addr(), "GET", "/metrics", "").await;
    assert_eq!(without_token.status, 401, "{}", without_token.body);
    let with_token = admin_get(&node, "/metrics").await;
    assert_eq!(with_token.status, 200);
    let open = node.metrics_addr().expect("metrics_addr was set");
    let scraped = send(open, "GET", "/metrics", "").await;
    assert_eq!(scraped.status, 200);
    for text in [&with_token.body, &scraped.body] {
        assert!(
            text.contains(
                "switchyard_calls_total{caller=\"faulty\",callee=\"flaky\",outcome=\"ok\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("switchyard_instances_max{service=\"flaky\"} 64"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE switchyard_request_duration_seconds histogram"),
            "{text}"
        );
    }
    let elsewhere = send_with(open, "GET", "/services", "", &[]).await;
    assert_eq!(elsewhere.status, 404);
    assert!(
        elsewhere.body.contains("only GET /metrics"),
        "{}",
        elsewhere.body
    );

    let off = TestManifest::new(&format!(
        "{}[telemetry]\nmetrics = false\n",
        service("hello", "hello", &["GET /hello/{name}"], "")
    ));
    let off = off.start().await;
    let refused = admin_get(&off, "/metrics").await;
    assert_eq!(refused.status, 404);
    assert!(refused.body.contains("metrics = false"), "{}", refused.body);
}
