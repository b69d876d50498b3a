//! The agent's HTTP server (axum): `/` lists the processes of the latest
//! interval by CPU share above the host-wide flamegraph (inlined, so the
//! page needs nothing else), `/process/PID` shows one process's graph,
//! `/flamegraph.svg` and `/process/PID/flamegraph.svg` serve the SVGs,
//! `/metrics` the counters in Prometheus text format, `/healthz` whether
//! intervals keep finishing; `/view` (the page of any time range) and
//! `/profile` (that range merged, in every format) read the local store
//! through [`super::view`].
//!
//! Owns only reading [`AgentState`] and the store; it never touches the sampler.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::oneshot;

use super::report::{prometheus_text, AgentState, IntervalReport};
use super::store::StoreReader;
use super::view::escape;
use super::view::{ViewFormat, ViewQuery, ViewState};
use super::{AgentError, MemoryBudget};

/// A running server; dropping `shutdown` (or sending on it) stops it.
pub struct HttpServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Binds `addr` and serves in a task; `store` is the `--output-dir`
    /// that `/view` and `/profile` read; `budget` gives their merges and
    /// the renderings kept for reloads their shares.
    pub async fn start(
        addr: SocketAddr,
        state: Arc<AgentState>,
        store: Option<std::path::PathBuf>,
        budget: MemoryBudget,
    ) -> Result<HttpServer, AgentError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Io {
                action: format!("listening on http://{addr}"),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| AgentError::Io {
            action: "reading the HTTP address".into(),
            source,
        })?;
        let view =
            Arc::new(ViewState::new(store.as_deref().map(StoreReader::new)).with_budget(&budget));
        let metrics = {
            let view = Arc::clone(&view);
            move |State(state): State<Arc<AgentState>>| async move { metrics(&state, &view) }
        };
        let app = Router::new()
            .route("/", get(index))
            .route("/flamegraph.svg", get(host_svg))
            .route("/process/{pid}", get(process_page))
            .route("/process/{pid}/flamegraph.svg", get(process_svg))
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .with_state(state)
            .merge(
                Router::new()
                    .route("/profile", get(profile))
                    .route("/view", get(view_page))
                    .with_state(view),
            );
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stop.await;
            });
            if let Err(e) = serve.await {
                tracing::error!("HTTP server on {addr}: {e}");
            }
        });
        Ok(HttpServer {
            addr,
            shutdown: Some(shutdown),
            task,
        })
    }

    /// Stops accepting and waits (briefly) for open requests.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(std::time::Duration::from_millis(500), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// The SVG as an element to put in HTML: without its XML declaration and
/// doctype.
fn inline_svg(svg: &[u8]) -> String {
    let text = String::from_utf8_lossy(svg);
    match text.find("<svg") {
        Some(start) => text[start..].to_owned(),
        None => String::new(),
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #ddd}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.bar{background:#e8623c;height:.8em;display:inline-block}\
.graph{border:1px solid #ccc;margin-top:1em}.graph svg{display:block;width:100%;height:auto}.muted{color:#777}";

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n",
        escape(title)
    ))
}

fn interval_line(report: &IntervalReport) -> String {
    let secs = report.start_unix_nano / 1_000_000_000;
    format!(
        "<p class=\"muted\">Latest interval: {:.1} s at {} Hz per CPU from unix time {secs}, {} samples, {} processes. Reload for the next one; <a href=\"/metrics\">/metrics</a>.</p>",
        report.duration.as_secs_f64(),
        report.frequency_hz,
        report.samples,
        report.processes.len()
    )
}

const VIEW_LINKS: &str = "<p id=\"ranges\">Any time range, merged: <a href=\"/view?last=5m\">last 5 min</a> · <a href=\"/view?last=1h\">last 1 h</a> · <a href=\"/view?last=24h\">last 24 h</a> (top functions, flamegraph, icicle, search, diff, downloads).</p>";

async fn index(State(state): State<Arc<AgentState>>) -> Html<String> {
    let Some(report) = state.latest() else {
        return page(
            "smolder agent",
            &format!("<h1>smolder agent</h1>{VIEW_LINKS}<p>No interval has finished yet: reload in a few seconds.</p>"),
        );
    };
    let mut body = String::from("<h1>smolder agent</h1>\n");
    body.push_str(VIEW_LINKS);
    body.push_str(&interval_line(&report));
    body.push_str("<table id=\"processes\"><tr><th>PID</th><th>process</th><th>service</th><th>samples</th><th>CPU (% of one core)</th><th></th></tr>\n");
    let max = report.processes.first().map_or(1, |p| p.samples.max(1));
    for p in &report.processes {
        let _ = writeln!(
            body,
            "<tr><td class=\"n\">{pid}</td><td><a href=\"/process/{pid}\">{name}</a></td><td>{service}</td><td class=\"n\">{samples}</td><td class=\"n\">{cpu:.1}</td><td><span class=\"bar\" style=\"width:{width}px\"></span></td></tr>",
            pid = p.pid,
            name = escape(&p.name),
            service = escape(p.service_name.as_deref().unwrap_or("")),
            samples = p.samples,
            cpu = p.cpu_percent,
            width = (p.samples * 200 / max).max(1),
        );
    }
    body.push_str("</table>\n<h2>Every process</h2>\n");
    match report.host_svg() {
        Some(svg) => {
            body.push_str("<div class=\"graph\" id=\"host-flamegraph\">");
            body.push_str(&inline_svg(svg));
            body.push_str("</div>");
        }
        None => body.push_str("<p>No samples in this interval.</p>"),
    }
    page("smolder agent", &body)
}

async fn process_page(State(state): State<Arc<AgentState>>, Path(pid): Path<i64>) -> Response {
    let Some(report) = state.latest() else {
        return (StatusCode::NOT_FOUND, "no interval yet\n").into_response();
    };
    let Some(process) = report.processes.iter().find(|p| p.pid == pid) else {
        return (
            StatusCode::NOT_FOUND,
            format!("process {pid} is not in the latest interval\n"),
        )
            .into_response();
    };
    let Some(svg) = report.render(Some(pid)) else {
        return (StatusCode::NOT_FOUND, "no samples\n").into_response();
    };
    let title = format!("{} [{pid}]", process.name);
    let body = format!(
        "<h1>{}</h1><p><a href=\"/\">all processes</a></p>{}<p>{:.1}% of one core, {} samples.</p><div class=\"graph\" id=\"process-flamegraph\">{}</div>",
        escape(&title),
        interval_line(&report),
        process.cpu_percent,
        process.samples,
        inline_svg(&svg)
    );
    page(&title, &body).into_response()
}

fn svg_response(svg: Option<Vec<u8>>) -> Response {
    match svg {
        Some(svg) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        None => (StatusCode::NOT_FOUND, "no flamegraph yet\n").into_response(),
    }
}

async fn host_svg(State(state): State<Arc<AgentState>>) -> Response {
    svg_response(
        state
            .latest()
            .and_then(|r| r.host_svg().map(<[u8]>::to_vec)),
    )
}

async fn process_svg(State(state): State<Arc<AgentState>>, Path(pid): Path<i64>) -> Response {
    svg_response(state.latest().and_then(|r| r.render(Some(pid))))
}

fn metrics(state: &AgentState, view: &ViewState) -> Response {
    let mut text = prometheus_text(&state.counters());
    let stats = view.stats();
    for (name, help, value) in [
        (
            "smolder_view_merges_folded_total",
            "Merged ranges of /profile and /view that held more distinct stacks than their memory share and folded the lightest into \"[other stacks]\".",
            stats.folding_merges,
        ),
        (
            "smolder_view_stacks_folded_total",
            "Distinct stacks those merges folded into \"[other stacks]\".",
            stats.stacks_folded,
        ),
    ] {
        let _ = write!(
            text,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn healthz(State(state): State<Arc<AgentState>>) -> Response {
    if state.healthy() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no interval finished recently\n",
        )
            .into_response()
    }
}

fn view_error(e: super::view::ViewError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, format!("{}\n", e.message)).into_response()
}

/// Response header of `/profile` and `/view`: how many distinct stacks
/// the merge folded into "[other stacks]" to stay within its memory share.
pub const FOLDED_STACKS_HEADER: &str = "x-smolder-folded-stacks";

/// `/profile?last=1h&format=pprof`: every stored interval of the range,
/// merged, in one format (pprof by default, as Go's `/debug/pprof/profile`).
async fn profile(State(view): State<Arc<ViewState>>, RawQuery(query): RawQuery) -> Response {
    let query = match ViewQuery::parse(query.as_deref().unwrap_or(""), ViewFormat::Pprof) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let work = {
        let query = query.clone();
        tokio::task::spawn_blocking(move || view.profile(&query))
    };
    match work.await {
        Ok(Ok(rendered)) => {
            let file = format!(
                "attachment; filename=\"smolder-{}-{}.{}\"",
                query.range.from_ns / 1_000_000_000,
                query.range.to_ns / 1_000_000_000,
                query.format.extension()
            );
            let disposition = if query.format == ViewFormat::Svg {
                "inline".to_owned()
            } else {
                file
            };
            (
                [
                    (header::CONTENT_TYPE, query.format.content_type().to_owned()),
                    (header::CONTENT_DISPOSITION, disposition),
                    (
                        HeaderName::from_static(FOLDED_STACKS_HEADER),
                        rendered.folded.stacks.to_string(),
                    ),
                ],
                rendered.bytes.clone(),
            )
                .into_response()
        }
        Ok(Err(e)) => view_error(e),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// `/view?last=1h`: the page of a time range.
async fn view_page(State(view): State<Arc<ViewState>>, RawQuery(query): RawQuery) -> Response {
    let query = match ViewQuery::parse(query.as_deref().unwrap_or(""), ViewFormat::Svg) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    match tokio::task::spawn_blocking(move || view.page(&query)).await {
        Ok(Ok(html)) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
                (
                    HeaderName::from_static(FOLDED_STACKS_HEADER),
                    html.folded.stacks.to_string(),
                ),
            ],
            html.bytes.clone(),
        )
            .into_response(),
        Ok(Err(e)) => view_error(e),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
