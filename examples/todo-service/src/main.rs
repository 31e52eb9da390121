//! A todo service on the outbox, in one program:
//!
//! - a `TodoList` actor commits its state and its events to SQLite in one
//!   commit (`todo.db`);
//! - the forwarder posts each event with the HTTP sink to a receiver this
//!   program starts on another port, which applies it once
//!   (`once_per_event`, its own `receiver.db`);
//! - Prometheus metrics at `GET /metrics` (`metrics-exporter-prometheus`);
//! - Ctrl-C shuts down gracefully: the batch in flight finishes, the
//!   forwarder releases leadership, then the servers stop.
//!
//! ```text
//! cargo run -p outbox-example-todo-service                    # runs until Ctrl-C
//! cargo run -p outbox-example-todo-service -- --exit-after 3  # stops once 3 events are applied
//! ```
//!
//! Flags: `--data DIR` (default: the platform's data directory),
//! `--port P` (the service, default 8080), `--receiver-port P` (default 0:
//! any free port), `--exit-after N`, `--timeout SECS` (with `--exit-after`,
//! default 30).

mod receiver;
mod service;

#[tokio::main]
async fn main() {
    if let Err(e) = service::run(std::env::args().skip(1).collect()).await {
        eprintln!("todo-service: {e}");
        std::process::exit(1);
    }
}
