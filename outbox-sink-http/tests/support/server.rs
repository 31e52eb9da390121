//! A small real HTTP/1.1 server the sink's tests post to: in the native
//! test process (`tests/http.rs`), and as the program the browser suite
//! runs (`examples/http-sink-test-server.rs`, with CORS headers so a page
//! may call it). One request per connection (`Connection: close`).
//!
//! Routes (any method; `OPTIONS` answers a CORS preflight):
//! - `/status/{code}`: that status, no body; `?retry-after=<value>` (percent-
//!   encoded) adds that `Retry-After`, `?retry-after-in=<secs>` adds the
//!   IMF-fixdate `secs` from now;
//! - `/retry-after/{secs}`: `429` with `Retry-After: {secs}`;
//! - `/status-from-type`: the status in the `Outbox-Event-Type` header
//!   (`status-503` answers 503);
//! - `/hang`: reads the request and never answers;
//! - `/big/{bytes}`: `200` with a body that long (written until the client
//!   goes away);
//! - `/gather/{tag}/{n}`: holds each request until `n` requests with that
//!   tag are held, then answers them all `200` (`504` after 30 s);
//! - `/echo` and `/echo/{tag}`: records the request under the tag, answers
//!   `200` with what it saw as JSON;
//! - `/seen/{tag}`: the requests recorded under the tag, as a JSON array;
//! - `/free-port`: a port nothing listens on (bound, then released);
//! - anything else: `404`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The longest a held request (`/hang`, `/gather`) keeps its connection.
const HOLD: Duration = Duration::from_secs(30);
/// The largest request body read.
const MAX_BODY: usize = 64 << 20;

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) path: String,
    /// Names lowercased, in arrival order.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Seen {
    /// The values of header `name`.
    pub(crate) fn header(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    /// As JSON: `{"method","path","headers":{name: value},"body": text}`
    /// (a repeated header's values joined with ", ").
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut headers = serde_json::Map::new();
        for (name, value) in &self.headers {
            let joined = match headers.get(name).and_then(|v| v.as_str()) {
                Some(prev) => format!("{prev}, {value}"),
                None => value.clone(),
            };
            headers.insert(name.clone(), serde_json::Value::String(joined));
        }
        serde_json::json!({
            "method": self.method,
            "path": self.path,
            "headers": headers,
            "body": String::from_utf8_lossy(&self.body),
        })
    }
}

#[derive(Default)]
struct State {
    seen: Mutex<HashMap<String, Vec<Seen>>>,
    gathered: Mutex<HashMap<String, usize>>,
    gather_changed: Notify,
}

/// A running server.
#[derive(Clone)]
pub(crate) struct Server {
    /// `http://127.0.0.1:{port}`.
    pub(crate) url: String,
    state: Arc<State>,
}

impl Server {
    /// The requests recorded under `tag` by `/echo/{tag}`.
    pub(crate) fn seen(&self, tag: &str) -> Vec<Seen> {
        lock(&self.state.seen).get(tag).cloned().unwrap_or_default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Binds 127.0.0.1:`port` (0: any free port) and serves on the current
/// tokio runtime until it stops.
pub(crate) async fn start(port: u16) -> io::Result<Server> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let state = Arc::new(State::default());
    let accepting = state.clone();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, accepting.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    Ok(Server { url, state })
}

/// A port nothing listens on right now.
pub(crate) fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn serve(stream: TcpStream, state: Arc<State>) {
    let mut conn = BufReader::new(stream);
    let request = match tokio::time::timeout(HOLD, read_request(&mut conn)).await {
        Ok(Ok(Some(r))) => r,
        _ => return,
    };
    let full_path = request.path.clone();
    let (path, query) = full_path.split_once('?').unwrap_or((&full_path, ""));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let cors_request_headers =
        request.header("access-control-request-headers").first().map(|s| s.to_string());
    let mut response = Response::new(200);
    if let Some(h) = cors_request_headers {
        response.allow_headers = h;
    }
    if request.method == "OPTIONS" {
        response.status = 204;
        return response.send(conn.get_mut()).await;
    }
    match segments.as_slice() {
        ["status", code] => {
            response.status = code.parse().unwrap_or(400);
            for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
                match k {
                    "retry-after" => response.headers.push(("Retry-After".into(), percent_decode(v))),
                    "retry-after-in" => {
                        let secs: u64 = v.parse().unwrap_or(0);
                        let at = SystemTime::now() + Duration::from_secs(secs);
                        response.headers.push(("Retry-After".into(), imf_fixdate(at)));
                    }
                    _ => {}
                }
            }
            if (300..400).contains(&response.status) {
                response.headers.push(("Location".into(), "/status/200".into()));
            }
        }
        ["retry-after", secs] => {
            response.status = 429;
            response.headers.push(("Retry-After".into(), (*secs).to_owned()));
        }
        ["status-from-type"] => {
            let t = request.header("outbox-event-type").first().copied().unwrap_or("");
            response.status = t.strip_prefix("status-").and_then(|c| c.parse().ok()).unwrap_or(400);
        }
        ["hang"] => {
            // Never answer; wait for the client to give up (or HOLD).
            let mut sink = [0_u8; 1024];
            let _ = tokio::time::timeout(HOLD, async {
                while let Ok(n) = conn.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            return;
        }
        ["big", bytes] => {
            let total: u64 = bytes.parse().unwrap_or(0);
            response.headers.push(("Content-Type".into(), "application/octet-stream".into()));
            return response.send_streamed(conn.get_mut(), total).await;
        }
        ["gather", tag, n] => {
            let want: usize = n.parse().unwrap_or(1);
            let key = (*tag).to_owned();
            *lock(&state.gathered).entry(key.clone()).or_default() += 1;
            state.gather_changed.notify_waiters();
            let all_here = async {
                loop {
                    let notified = state.gather_changed.notified();
                    if lock(&state.gathered).get(&key).copied().unwrap_or(0) >= want {
                        break;
                    }
                    notified.await;
                }
            };
            if tokio::time::timeout(HOLD, all_here).await.is_err() {
                response.status = 504;
            }
        }
        ["echo"] | ["echo", _] => {
            let tag = segments.get(1).copied().unwrap_or("").to_owned();
            response.body = serde_json::to_vec(&request.to_json()).unwrap_or_default();
            response.headers.push(("Content-Type".into(), "application/json".into()));
            lock(&state.seen).entry(tag).or_default().push(request);
        }
        ["seen", tag] => {
            let seen: Vec<serde_json::Value> = lock(&state.seen)
                .get(*tag)
                .map(|v| v.iter().map(Seen::to_json).collect())
                .unwrap_or_default();
            response.body = serde_json::to_vec(&seen).unwrap_or_default();
            response.headers.push(("Content-Type".into(), "application/json".into()));
        }
        ["free-port"] => {
            response.body = free_port().map(|p| p.to_string()).unwrap_or_default().into_bytes();
        }
        _ => response.status = 404,
    }
    response.send(conn.get_mut()).await;
}

/// Reads one request (`None` if the client closed first).
async fn read_request(conn: &mut BufReader<TcpStream>) -> io::Result<Option<Seen>> {
    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_ascii_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("/").to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let mut seen = Seen { method, path, headers, body: Vec::new() };
    let chunked = seen.header("transfer-encoding").iter().any(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line).await?;
            let size = line.trim().split(';').next().unwrap_or("");
            let size =
                usize::from_str_radix(size, 16).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    line.clear();
                    if conn.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            if seen.body.len() + size > MAX_BODY {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
            }
            let start = seen.body.len();
            seen.body.resize(start + size, 0);
            conn.read_exact(&mut seen.body[start..]).await?;
            let mut crlf = [0_u8; 2];
            conn.read_exact(&mut crlf).await?;
        }
    } else {
        let len: usize = seen.header("content-length").first().and_then(|v| v.parse().ok()).unwrap_or(0);
        if len > MAX_BODY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
        }
        seen.body.resize(len, 0);
        conn.read_exact(&mut seen.body).await?;
    }
    Ok(Some(seen))
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    allow_headers: String,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16) -> Self {
        Response { status, headers: Vec::new(), allow_headers: "*".into(), body: Vec::new() }
    }

    fn head(&self, content_length: u64) -> String {
        let mut head = format!("HTTP/1.1 {} X\r\n", self.status);
        head.push_str("Connection: close\r\n");
        head.push_str("Access-Control-Allow-Origin: *\r\n");
        head.push_str("Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n");
        head.push_str(&format!("Access-Control-Allow-Headers: {}\r\n", self.allow_headers));
        head.push_str("Access-Control-Expose-Headers: Retry-After\r\n");
        head.push_str("Access-Control-Max-Age: 0\r\n");
        for (n, v) in &self.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        // 1xx, 204 and 304 have no body and no Content-Length.
        if !(self.status < 200 || self.status == 204 || self.status == 304) {
            head.push_str(&format!("Content-Length: {content_length}\r\n"));
        }
        head.push_str("\r\n");
        head
    }

    async fn send(self, stream: &mut TcpStream) {
        let mut out = self.head(self.body.len() as u64).into_bytes();
        out.extend_from_slice(&self.body);
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    }

    /// `total` bytes of zeros, written until done or the client leaves.
    async fn send_streamed(self, stream: &mut TcpStream, total: u64) {
        if stream.write_all(self.head(total).as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![0_u8; 64 << 10];
        let mut left = total;
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
            match tokio::time::timeout(HOLD, stream.write_all(&chunk[..n])).await {
                Ok(Ok(())) => left -= n as u64,
                _ => return,
            }
        }
        let _ = stream.shutdown().await;
    }
}

/// `%XX` escapes (and `+` as a space) decoded.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() && hex(bytes[i + 1]).is_some() && hex(bytes[i + 2]).is_some() => {
                out.push(hex(bytes[i + 1]).unwrap_or(0) * 16 + hex(bytes[i + 2]).unwrap_or(0));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// `at` as an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT").
pub(crate) fn imf_fixdate(at: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}
