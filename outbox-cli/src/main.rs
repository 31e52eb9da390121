#![doc = include_str!("../README.md")]

mod commands;
mod demo;
mod open;
mod ui;
mod view;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use outbox_core::{ErrorKind, EventId, EventStatus};

use crate::view::parse_duration;

const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  the store cannot be used as asked: a missing path, a file or directory
     that is not an outbox, a newer (or, read-only, older) schema, no
     permission, a write refused by a read-only open, damaged data
  2  usage: unknown command, bad or missing arguments
  3  the store is unavailable for now (server unreachable or not answering,
     database locked by another process): trying again may work
  4  an event, actor or cursor named was not found, or not in the state the
     command needs (e.g. `discard` of an event that is not dead); nothing
     was changed

STORE is a SQLite file, a sled database directory, or a PostgreSQL URL
(postgres://… or host=… dbname=…); `-`, or nothing where STORE is the only
argument, reads $OUTBOX_DATABASE_URL. Every command but requeue, discard,
skip, prune (without --dry-run) and the web view's buttons opens the store
read-only and never creates, migrates or changes it.";

#[derive(Parser, Debug)]
#[command(
    name = "outbox",
    version,
    about = "Inspect and repair a transactional outbox: pending, dead and delivered events, actor state, inbox marks",
    after_help = EXIT_CODES
)]
struct Cli {
    /// One JSON object per line on stdout, for scripts.
    #[arg(long, global = true)]
    json: bool,
    /// The PostgreSQL schema holding the outbox tables.
    #[arg(long, global = true, env = "OUTBOX_PG_SCHEMA", default_value = "public")]
    schema: String,
    #[command(subcommand)]
    command: Cmd,
}

/// Which events a listing shows.
#[derive(Args, Debug, Clone)]
struct FilterArgs {
    /// Only events of this type.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// Only events of this ordering key.
    #[arg(long)]
    key: Option<String>,
    /// Only events emitted by this actor.
    #[arg(long)]
    origin: Option<String>,
    /// Only events committed within this long (90s, 15m, 2h, 7d).
    #[arg(long, value_parser = parse_duration, value_name = "AGE")]
    since: Option<std::time::Duration>,
}

/// What a writing command does before changing anything.
#[derive(Args, Debug, Clone, Copy)]
struct WriteArgs {
    /// Show what would change and change nothing (the store is opened
    /// read-only).
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Counts by status, the oldest pending event's age, the parked keys.
    #[command(after_help = "Example:\n  outbox stats app.db\n  outbox stats postgres://app@db/app --json")]
    Stats {
        /// The store (see `outbox --help`).
        store: Option<String>,
    },
    /// Events of one status, filtered, a page at a time, in commit order.
    #[command(after_help = "Examples:\n  outbox list app.db --status dead\n  \
                            outbox list app.db --type ORDER_PLACED --since 1h --limit 50 --json\n  \
                            outbox list app.db --after 0190c1c2-…  (the cursor the previous page printed)")]
    List {
        /// The store (see `outbox --help`).
        store: Option<String>,
        /// pending, dead, delivered or discarded.
        #[arg(long, default_value = "pending", value_parser = parse_status)]
        status: EventStatus,
        #[command(flatten)]
        filter: FilterArgs,
        /// Most events shown.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Start after this event id (the cursor a previous page printed).
        #[arg(long, value_name = "CURSOR")]
        after: Option<EventId>,
        /// Keep watching for changes after the list, like `outbox watch`.
        #[arg(long)]
        follow: bool,
    },
    /// One event: payload, headers, attempts, next attempt, last error, and
    /// what its key waits for.
    #[command(after_help = "Example:\n  outbox show app.db 0190c1c2-8d2e-7a31-9b4c-3f5e6a7b8c9d")]
    Show {
        /// The store (see `outbox --help`).
        store: String,
        /// The event id.
        id: EventId,
    },
    /// An actor's committed state snapshot and version.
    #[command(after_help = "Example:\n  outbox state app.db form-42")]
    State {
        /// The store (see `outbox --help`).
        store: String,
        /// The actor id.
        actor: String,
    },
    /// The events of this store a consumer has marked processed in it.
    #[command(after_help = "Example:\n  outbox inbox app.db mailer")]
    Inbox {
        /// The store (see `outbox --help`).
        store: String,
        /// The consumer id.
        consumer: String,
        /// Most events shown.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Follow the outbox like `tail -f`: a line per event that appears or
    /// changes status (the current ones first).
    #[command(
        after_help = "Examples:\n  outbox watch app.db\n  outbox watch app.db --status dead --json\n  \
                            outbox watch app.db --max-events 10 --interval 200ms"
    )]
    Watch {
        /// The store (see `outbox --help`).
        store: Option<String>,
        /// Only this status (default: every status).
        #[arg(long, value_parser = parse_status)]
        status: Option<EventStatus>,
        #[command(flatten)]
        filter: FilterArgs,
        /// How often the store is read.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: std::time::Duration,
        /// Stop after printing this many lines.
        #[arg(long, value_name = "N")]
        max_events: Option<usize>,
    },
    /// Move dead events back to pending, due now, each before its key's
    /// later events.
    #[command(after_help = "Examples:\n  outbox requeue app.db 0190c1c2-8d2e-7a31-9b4c-3f5e6a7b8c9d\n  \
                            outbox requeue app.db --all --dry-run")]
    Requeue {
        /// The store (see `outbox --help`).
        store: String,
        /// The dead events to requeue.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<EventId>,
        /// Requeue every dead event.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Give up on dead events: kept as `discarded` until pruned, never
    /// delivered; their keys flow on.
    #[command(after_help = "Example:\n  outbox discard app.db 0190c1c2-8d2e-7a31-9b4c-3f5e6a7b8c9d")]
    Discard {
        /// The store (see `outbox --help`).
        store: String,
        /// The dead events to discard.
        #[arg(required = true)]
        ids: Vec<EventId>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Let the keys parked behind dead events flow past them (the events
    /// stay dead and can still be requeued).
    #[command(after_help = "Example:\n  outbox skip app.db 0190c1c2-8d2e-7a31-9b4c-3f5e6a7b8c9d")]
    Skip {
        /// The store (see `outbox --help`).
        store: String,
        /// The dead events to skip.
        #[arg(required = true)]
        ids: Vec<EventId>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Delete delivered and discarded events (and, with --inbox, inbox
    /// marks) settled more than a while ago.
    #[command(after_help = "Example:\n  outbox prune app.db --older-than 7d --inbox --dry-run")]
    Prune {
        /// The store (see `outbox --help`).
        store: Option<String>,
        /// Keep what was settled within this long.
        #[arg(long, default_value = "7d", value_parser = parse_duration, value_name = "AGE")]
        older_than: std::time::Duration,
        /// Prune inbox marks older than that too.
        #[arg(long)]
        inbox: bool,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Serve a web view of the store on 127.0.0.1: lists with filters, event
    /// detail, requeue / discard / skip buttons, live counts and a chart.
    #[command(
        after_help = "Example:\n  outbox ui app.db            (prints the URL to open, with its token)\n  \
                            outbox ui postgres://app@db/app --port 8099 --read-only"
    )]
    Ui {
        /// The store (see `outbox --help`).
        store: Option<String>,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// The port (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// No buttons: the view never writes.
        #[arg(long)]
        read_only: bool,
    },
    /// `stats` and the first pending and dead events.
    #[command(after_help = "Example:\n  outbox inspect app.db")]
    Inspect {
        /// The store (see `outbox --help`).
        store: Option<String>,
    },
    /// Save a form while the sink is offline, crash, restart, deliver once.
    #[command(after_help = "Example:\n  outbox demo")]
    Demo {
        /// The SQLite file to use (default: a new temporary one).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Internal: the phase run in the child process.
        #[arg(long, hide = true)]
        phase: Option<String>,
    },
}

fn parse_status(s: &str) -> Result<EventStatus, String> {
    s.parse::<EventStatus>().map_err(|e| e.to_string())
}

/// A command's failure, and the exit code it maps to.
#[derive(Debug)]
enum Failure {
    /// The store failed or refused.
    Store(outbox_core::Error),
    /// Something named is not there, or not as the command needs.
    NotFound(String),
}

impl From<outbox_core::Error> for Failure {
    fn from(e: outbox_core::Error) -> Self {
        Failure::Store(e)
    }
}

impl Failure {
    fn exit_code(&self) -> i32 {
        match self {
            Failure::Store(e) if e.kind() == ErrorKind::Unavailable || e.is_retryable() => 3,
            Failure::Store(_) => 1,
            Failure::NotFound(_) => 4,
        }
    }

    fn message(&self) -> String {
        match self {
            Failure::Store(e) => format!("{e} ({:?})", e.kind()),
            Failure::NotFound(m) => m.clone(),
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start the runtime: {e}"), 1),
    };
    let out = commands::Out { json: cli.json };
    let schema = cli.schema;
    let filter = |f: FilterArgs| view::Filter {
        event_type: f.event_type,
        key: f.key,
        origin: f.origin,
        since: f.since.map(|d| commands::now().saturating_sub(d)),
    };
    let result: Result<(), Failure> = match cli.command {
        Cmd::Demo { file, phase: Some(p) } if p == "offline" => {
            let file = file.unwrap_or_else(|| fail("--file is required", 2));
            rt.block_on(demo::offline_phase(&file)).map_err(Failure::from)
        }
        Cmd::Demo { file, .. } => demo::demo(&rt, file).map_err(Failure::from),
        Cmd::Stats { store } => rt.block_on(commands::stats(&out, target(store.as_deref(), &schema))),
        Cmd::Inspect { store } => rt.block_on(commands::inspect(&out, target(store.as_deref(), &schema))),
        Cmd::List { store, status, filter: f, limit, after, follow } => {
            let t = target(store.as_deref(), &schema);
            let f = filter(f);
            rt.block_on(async {
                commands::list(&out, &t, status, &f, after, limit).await?;
                if follow {
                    let w = commands::Watch {
                        statuses: vec![status],
                        filter: f,
                        interval: std::time::Duration::from_secs(1),
                        max_events: None,
                        skip_current: true,
                    };
                    commands::watch(&out, &t, w).await?;
                }
                Ok(())
            })
        }
        Cmd::Show { store, id } => rt.block_on(commands::show(&out, target(Some(&store), &schema), id)),
        Cmd::State { store, actor } => {
            rt.block_on(commands::state(&out, target(Some(&store), &schema), &actor))
        }
        Cmd::Inbox { store, consumer, limit } => {
            rt.block_on(commands::inbox(&out, target(Some(&store), &schema), &consumer, limit))
        }
        Cmd::Watch { store, status, filter: f, interval, max_events } => {
            let w = commands::Watch {
                statuses: status.map_or_else(|| EventStatus::ALL.to_vec(), |s| vec![s]),
                filter: filter(f),
                interval,
                max_events,
                skip_current: false,
            };
            rt.block_on(commands::watch(&out, &target(store.as_deref(), &schema), w))
        }
        Cmd::Requeue { store, ids, all, write } => {
            let which = if all { commands::Which::AllDead } else { commands::Which::Ids(ids) };
            rt.block_on(commands::dead_letters(
                &out,
                target(Some(&store), &schema),
                which,
                commands::Action::Requeue,
                write.dry_run,
            ))
        }
        Cmd::Discard { store, ids, write } => rt.block_on(commands::dead_letters(
            &out,
            target(Some(&store), &schema),
            commands::Which::Ids(ids),
            commands::Action::Discard,
            write.dry_run,
        )),
        Cmd::Skip { store, ids, write } => rt.block_on(commands::dead_letters(
            &out,
            target(Some(&store), &schema),
            commands::Which::Ids(ids),
            commands::Action::Skip,
            write.dry_run,
        )),
        Cmd::Prune { store, older_than, inbox, write } => rt.block_on(commands::prune(
            &out,
            target(store.as_deref(), &schema),
            older_than,
            inbox,
            write.dry_run,
        )),
        Cmd::Ui { store, host, port, read_only } => {
            let t = target(store.as_deref(), &schema);
            rt.block_on(ui::serve(t, std::net::SocketAddr::new(host, port), read_only, out.json))
        }
    };
    if let Err(e) = result {
        fail(&e.message(), e.exit_code());
    }
}

/// The store argument resolved, or exit 2 (usage).
fn target(arg: Option<&str>, schema: &str) -> open::Target {
    match open::resolve(arg, schema) {
        Ok(t) => t,
        Err(e) => fail(&e.to_string(), 2),
    }
}

fn fail(msg: &str, code: i32) -> ! {
    eprintln!("outbox: {msg}");
    std::process::exit(code)
}
