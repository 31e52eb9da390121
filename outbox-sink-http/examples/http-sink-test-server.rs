//! The HTTP server the sink's browser tests post to (`tests/browser.rs`,
//! run by `scripts/test-browser.sh`): the routes of `tests/support/server.rs`
//! with CORS headers, on 127.0.0.1.
//!
//! Usage: `http-sink-test-server [PORT]` (0 or nothing: any free port).
//! Prints `listening on http://127.0.0.1:PORT` once it accepts requests,
//! then serves until killed.

#[cfg(not(target_arch = "wasm32"))]
#[path = "../tests/support/server.rs"]
mod server;

#[cfg(not(target_arch = "wasm32"))]
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    use std::io::Write;

    let port = match std::env::args().nth(1) {
        Some(arg) => arg.parse::<u16>().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("port {arg:?}: {e}"))
        })?,
        None => 0,
    };
    let server = server::start(port).await?;
    let mut out = std::io::stdout();
    writeln!(out, "listening on {}", server.url)?;
    out.flush()?;
    std::future::pending::<()>().await;
    Ok(())
}

/// Nothing to run in a browser: the server is a native program.
#[cfg(target_arch = "wasm32")]
fn main() {}
