//! Wiring: arguments, the two HTTP servers, the outbox, shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use outbox::consumer::HandlerError;
use outbox::{ActorId, ActorRef, OutboxConfig, SqliteStore, StoreChoice, configure_outbox};
use outbox_sink_http::HttpSink;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::receiver::{Receiver, WireEvent};
use outbox_example_todo::list::{TodoList, TodoMsg};

type Body = Full<Bytes>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

const MAX_BODY: usize = 1 << 20;

struct Args {
    data: PathBuf,
    port: u16,
    receiver_port: u16,
    exit_after: Option<u64>,
    timeout: Duration,
}

fn parse(args: Vec<String>) -> Result<Args, BoxError> {
    let default_data = outbox::default_sqlite_path(Some("outbox-todo-service"))
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("todo-service-data"));
    let mut a = Args {
        data: default_data,
        port: 8080,
        receiver_port: 0,
        exit_after: None,
        timeout: Duration::from_secs(30),
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--data" => a.data = PathBuf::from(value()?),
            "--port" => a.port = value()?.parse()?,
            "--receiver-port" => a.receiver_port = value()?.parse()?,
            "--exit-after" => a.exit_after = Some(value()?.parse()?),
            "--timeout" => a.timeout = Duration::from_secs(value()?.parse()?),
            other => {
                return Err(format!(
                    "unknown argument {other:?} (use --data DIR, --port P, --receiver-port P, --exit-after N, --timeout SECS)"
                )
                .into());
            }
        }
    }
    Ok(a)
}

pub(crate) async fn run(args: Vec<String>) -> Result<(), BoxError> {
    let args = parse(args)?;
    std::fs::create_dir_all(&args.data)?;

    // Metrics first: the forwarder describes its metrics when it starts.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });

    // The receiver: another service, here in the same process.
    let receiver = Arc::new(Receiver::new(Arc::new(SqliteStore::open(args.data.join("receiver.db"))?))?);
    let receiver_listener = TcpListener::bind(("127.0.0.1", args.receiver_port)).await?;
    let receiver_url = format!("http://{}/events", receiver_listener.local_addr()?);
    let (stop_tx, stop) = watch::channel(false);
    let r = receiver.clone();
    let receiver_server = tokio::spawn(serve(receiver_listener, stop.clone(), move |req| {
        let r = r.clone();
        async move { receive(&r, req).await }
    }));

    // The outbox: SQLite file, HTTP sink to the receiver.
    let sink = HttpSink::builder(receiver_url.clone()).timeout(Duration::from_secs(5)).build()?;
    let config = OutboxConfig::default()
        .store(StoreChoice::Sqlite(args.data.join("todo.db")))
        .on_error(|event, error| eprintln!("outbox: {error} (event {:?})", event.map(|e| e.id)));
    let outbox = configure_outbox(config, Arc::new(sink)).await?;
    let list = outbox.spawn_actor(ActorId::new("groceries")?, TodoList).await?;

    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    println!("todo-service on http://{}  (receiver {receiver_url})", listener.local_addr()?);
    println!("  data in {}", args.data.display());
    let (l, p) = (list.clone(), prometheus.clone());
    let service = tokio::spawn(serve(listener, stop.clone(), move |req| {
        let (l, p) = (l.clone(), p.clone());
        async move { route(&l, &p, req).await }
    }));

    // Two sample todos and one completion: three events, one commit each.
    let first = list.state().next_id;
    list.send(TodoMsg::Add("milk".into())).await?;
    list.send(TodoMsg::Add("bread".into())).await?;
    list.send(TodoMsg::Complete(first)).await?;
    println!("committed 3 events (state + events, one commit each)");

    let mut applied = receiver.applied();
    let outcome: Result<(), BoxError> = match args.exit_after {
        Some(n) => {
            let wait = applied.wait_for(|&a| a >= n);
            tokio::select! {
                r = tokio::time::timeout(args.timeout, wait) => match r {
                    Ok(Ok(_)) => {
                        println!("the receiver applied {n} events");
                        Ok(())
                    }
                    Ok(Err(_)) => Err("the receiver stopped".into()),
                    Err(_) => Err(format!("{n} events were not applied within {:?}", args.timeout).into()),
                },
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        None => {
            println!("try: curl -X POST --data 'eggs' http://127.0.0.1:{}/todos ; Ctrl-C to stop", args.port);
            tokio::signal::ctrl_c().await.map_err(Into::into)
        }
    };

    // Graceful shutdown: stop taking requests, let the forwarder finish the
    // batch in flight and release leadership, then stop the receiver.
    println!("shutting down");
    outbox.shutdown().await;
    let _ = stop_tx.send(true);
    let _ = service.await;
    let _ = receiver_server.await;
    let activity = receiver.activity().await?;
    println!("receiver: {} added, {} completed (all runs)", activity.added, activity.completed);
    for line in prometheus.render().lines().filter(|l| l.starts_with("outbox_delivered_total")) {
        println!("metrics: {line}");
    }
    outcome
}

/// Accepts connections until `stop` turns true.
async fn serve<F, Fut>(listener: TcpListener, mut stop: watch::Receiver<bool>, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let stream = tokio::select! {
            _ = stop.wait_for(|&s| s) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("todo-service: accept: {e}");
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(req).await) }
            });
            // A client that goes away mid-request is not an error here.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut body = body.into();
    body.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

async fn body_of(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(text(StatusCode::PAYLOAD_TOO_LARGE, format!("reading the body: {e}"))),
    }
}

/// The service: `GET /todos`, `POST /todos` (the title as the body),
/// `POST /todos/<id>/done`, `GET /metrics`.
async fn route(
    list: &ActorRef<TodoList>,
    prometheus: &PrometheusHandle,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["metrics"]) => text(StatusCode::OK, prometheus.render()),
        (Method::GET, ["todos"]) => match serde_json::to_string(&*list.state()) {
            Ok(json) => text(StatusCode::OK, json),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        (Method::POST, ["todos"]) => {
            let body = match body_of(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let title = String::from_utf8_lossy(&body).into_owned();
            let id = list.state().next_id;
            match list.send(TodoMsg::Add(title)).await {
                Ok(_) => text(StatusCode::CREATED, format!("added {id}")),
                Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
        (Method::POST, ["todos", id, "done"]) => match id.parse() {
            Ok(id) => match list.send(TodoMsg::Complete(id)).await {
                Ok(_) => text(StatusCode::OK, format!("completed {id}")),
                Err(e) => text(StatusCode::NOT_FOUND, e.to_string()),
            },
            Err(_) => text(StatusCode::BAD_REQUEST, "not an id"),
        },
        _ => text(StatusCode::NOT_FOUND, "no such route"),
    }
}

/// The receiver: `POST /events` (one event, the HTTP sink's default).
/// 200 when applied or dropped as a duplicate; 422 for an event it can
/// never apply (the sink dead-letters it); 503 for a retriable failure.
async fn receive(receiver: &Receiver, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST || req.uri().path() != "/events" {
        return text(StatusCode::NOT_FOUND, "no such route");
    }
    let body = match body_of(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let event = match serde_json::from_slice::<WireEvent>(&body)
        .map_err(|e| e.to_string())
        .and_then(|w| w.into_envelope().map_err(|e| e.to_string()))
    {
        Ok(e) => e,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("not an event: {e}")),
    };
    match receiver.deliver(&event).await {
        Ok(d) => text(StatusCode::OK, format!("{d:?}")),
        Err(HandlerError::NonRetriable(m)) => text(StatusCode::UNPROCESSABLE_ENTITY, m),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
