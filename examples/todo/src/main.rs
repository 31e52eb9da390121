//! The native program: the same [`TodoList`] on SQLite.

#[cfg(not(target_arch = "wasm32"))]
#[tokio::main]
async fn main() {
    if let Err(e) = native::run().await {
        eprintln!("todo: {e}");
        std::process::exit(1);
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use outbox::{ActorId, Bus, OutboxConfig, Sink, StoreChoice, Topic, configure_outbox};
    use outbox_example_todo::{TodoList, TodoMsg};

    pub(crate) async fn run() -> Result<(), Box<dyn std::error::Error>> {
        let mut args = std::env::args().skip(1);
        let (mut db, mut url): (Option<PathBuf>, Option<String>) = (None, None);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--db" => db = args.next().map(PathBuf::from),
                "--url" => url = args.next(),
                other => return Err(format!("unknown argument {other:?} (use --db PATH, --url URL)").into()),
            }
        }
        let bus = Bus::new();
        let mut events = bus.subscribe(Topic::All);
        let sink: Arc<dyn Sink> = match &url {
            Some(u) => Arc::new(outbox_sink_http::HttpSink::new(u.clone())?),
            None => Arc::new(bus.sink()),
        };
        let mut config = OutboxConfig::default().app_name("outbox-example-todo");
        if let Some(path) = db {
            config = config.store(StoreChoice::Sqlite(path));
        }
        let outbox = configure_outbox(config, sink).await?;
        let list = outbox.spawn_actor(ActorId::new("groceries")?, TodoList).await?;
        let first = list.state().next_id;
        list.send(TodoMsg::Add("milk".into())).await?;
        list.send(TodoMsg::Add("bread".into())).await?;
        list.send(TodoMsg::Complete(first)).await?;
        for item in &list.state().items {
            println!("[{}] {} {}", if item.done { "x" } else { " " }, item.id, item.title);
        }
        if url.is_none() {
            for _ in 0..3 {
                match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                    Ok(Some(e)) => println!("delivered {} {}", e.event_type, e.id),
                    _ => return Err("an event was not delivered within 10 s".into()),
                }
            }
        }
        outbox.shutdown().await;
        Ok(())
    }
}
