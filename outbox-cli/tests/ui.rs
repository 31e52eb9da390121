//! `outbox ui` over HTTP, without a browser (scripts/ui-e2e.sh drives the
//! page in Chromium): the token is required, the API lists and shows
//! events with the page's filters, a button's POST requeues a dead event,
//! `--read-only` refuses it.
#![allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use common::{BOUND, Backend, with_dead_letters};
use serde_json::Value;

/// A running `outbox ui`, killed on drop.
struct Ui {
    child: Child,
    addr: String,
    token: String,
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `outbox ui STORE EXTRA…` and reads the URL it prints.
fn start(store: &str, extra: &[&str]) -> Ui {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outbox"))
        .arg("ui")
        .arg(store)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(BOUND).expect("outbox ui prints its URL");
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_owned();
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, query) = rest.split_once("/?t=").unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "loopback by default: {url}");
    assert_eq!(query.len(), 32, "a 128-bit token");
    Ui { child, addr: addr.to_owned(), token: query.to_owned() }
}

/// One request; the status and the body.
fn request(ui: &Ui, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(&ui.addr).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    let auth = token.map(|t| format!("x-outbox-token: {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {}\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n",
        ui.addr
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn api(ui: &Ui, method: &str, path: &str) -> (u16, Value) {
    let (status, body) = request(ui, method, path, Some(&ui.token.clone()));
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_view_lists_shows_and_requeues() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::Sqlite(dir.path().join("app.db"));
    let f = {
        let store = b.open().await;
        with_dead_letters(store.as_ref()).await
    };
    let ui = start(&b.arg(), &[]);

    assert_eq!(request(&ui, "GET", "/", None).0, 403, "the page needs the token");
    assert_eq!(request(&ui, "GET", &format!("/?t={}", ui.token), None).0, 200);
    assert_eq!(request(&ui, "GET", "/api/stats", None).0, 403);
    assert_eq!(request(&ui, "GET", "/api/stats", Some("0123456789abcdef0123456789abcdef")).0, 403);
    let post = format!("/api/event/{}/requeue", f.a1);
    assert_eq!(request(&ui, "POST", &post, None).0, 403, "no button without the token");

    let (status, stats) = api(&ui, "GET", "/api/stats");
    assert_eq!((status, stats["dead"].as_u64()), (200, Some(3)));
    let (_, page) = api(&ui, "GET", "/api/events?status=dead&key=a");
    assert_eq!(page["events"][0]["id"], f.a1.to_string());
    assert_eq!(page["events"][0]["holds_back"], 2);
    let (_, page) = api(&ui, "GET", "/api/events?status=pending&limit=1");
    assert_eq!(
        (page["events"][0]["id"].as_str(), page["more"].as_u64()),
        (Some(&*f.a2.to_string()), Some(2))
    );
    let (status, detail) = api(&ui, "GET", &format!("/api/event/{}", f.c1));
    assert_eq!((status, detail["status"].as_str()), (200, Some("delivered")));
    assert_eq!(api(&ui, "GET", &format!("/api/event/{}", outbox_core::EventId::new())).0, 404);
    assert_eq!(api(&ui, "GET", "/api/events?status=lost").0, 400);

    let (status, done) = api(&ui, "POST", &post);
    assert_eq!((status, done["changed"].as_u64()), (200, Some(1)), "{done}");
    let (_, detail) = api(&ui, "GET", &format!("/api/event/{}", f.a1));
    assert_eq!(detail["status"], "pending", "the view shows the change at once");
    assert_eq!(api(&ui, "POST", &post).0, 404, "no longer dead");
    drop(ui);

    let ui = start(&b.arg(), &["--read-only"]);
    assert_eq!(api(&ui, "POST", &format!("/api/event/{}/discard", f.b1)).0, 403);
    assert_eq!(api(&ui, "GET", "/api/stats").1["dead"], 2, "nothing changed");
}
