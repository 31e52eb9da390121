//! `todo-pwa-server`: the Todo PWA's sync server.
//!
//! ```text
//! todo-pwa-server --port 0 --db target/todo-pwa/server.db --static examples/todo-pwa/web/dist
//! ```
//!
//! Prints `listening on http://127.0.0.1:PORT` once it accepts requests,
//! then serves until interrupted (Ctrl-C, SIGTERM).

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::io::Write;
    use std::net::{IpAddr, SocketAddr};
    use std::path::PathBuf;

    use clap::Parser;

    /// The Todo PWA's sync server: applies each event once, serves the app.
    #[derive(Parser, Debug)]
    #[command(name = "todo-pwa-server")]
    struct Args {
        /// Port to listen on (0: any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Address to listen on (loopback only by default).
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        /// The server's SQLite file.
        #[arg(long, default_value = "target/todo-pwa/server.db")]
        db: PathBuf,
        /// The app's built files (examples/todo-pwa/build.sh makes them).
        #[arg(long = "static")]
        static_dir: Option<PathBuf>,
        /// No line on stderr per event.
        #[arg(long)]
        quiet: bool,
    }

    pub(crate) async fn run() -> Result<(), Box<dyn std::error::Error>> {
        let args = Args::parse();
        if let Some(dir) = &args.static_dir
            && !dir.join("index.html").is_file()
        {
            eprintln!(
                "todo-pwa-server: warning: {} has no index.html (build it with examples/todo-pwa/build.sh)",
                dir.display()
            );
        }
        let mut config = todo_pwa_server::Config::new(args.port, args.db).verbose(!args.quiet);
        config.addr = SocketAddr::new(args.host, args.port);
        if let Some(dir) = args.static_dir {
            config = config.static_dir(dir);
        }
        let server = todo_pwa_server::start(config).await?;
        let mut out = std::io::stdout();
        writeln!(out, "listening on {}", server.url)?;
        out.flush()?;
        shutdown_signal().await;
        server.stop().await;
        Ok(())
    }

    async fn shutdown_signal() {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
#[tokio::main]
async fn main() {
    if let Err(e) = native::run().await {
        eprintln!("todo-pwa-server: {e}");
        std::process::exit(1);
    }
}

/// Nothing to run in a browser: the server is a native program.
#[cfg(target_arch = "wasm32")]
fn main() {}
