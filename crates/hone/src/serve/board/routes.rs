//! The board's HTTP routes: the page and its two assets, the JSON API (runs, one run, compare, a
//! report file) and each run's log as server-sent events; behind a guard that checks the host
//! name and the token.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Query, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::compare::{config_diff, find_reports};
use super::runs::{self, display_value, RunDir};
use super::{actions, Board};
use crate::train::config::TRAINING_ARGS;

const PAGE: &str = include_str!("assets/index.html");
const STYLE: &str = include_str!("assets/board.css");
/// The page's script modules, by name.
const SCRIPTS: [(&str, &str); 6] = [
    ("board.js", include_str!("assets/board.js")),
    ("dom.js", include_str!("assets/dom.js")),
    ("charts.js", include_str!("assets/charts.js")),
    ("runs.js", include_str!("assets/runs.js")),
    ("launch.js", include_str!("assets/launch.js")),
    ("arena.js", include_str!("assets/arena.js")),
];

/// How often a watched log is looked at for new lines: the most a new point waits.
const POLL: Duration = Duration::from_millis(200);
/// The cookie that carries the token once `?token=` was given.
const TOKEN_COOKIE: &str = "hone_board_token";
/// A launch request is a config: a few KiB.
const MAX_BODY_BYTES: usize = 1 << 20;

/// The board's routes; with a model, `hone serve`'s OpenAI routes beside them (the arena's
/// answers), all behind the guard.
pub(super) fn router(board: Arc<Board>, openai: Option<Router>) -> Router {
    let routes = Router::new()
        .route(
            "/",
            get(|| async { page(PAGE, "text/html; charset=utf-8") }),
        )
        .route("/{script}", get(script))
        .route(
            "/board.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/api/runs", get(list_runs))
        .route("/api/run", get(run_detail))
        .route("/api/log", get(log_events))
        .route("/api/compare", get(compare_runs))
        .route("/api/report", get(report))
        .route("/api/launches", get(actions::list_launches))
        .route("/api/launch/check", post(actions::check_launch))
        .route("/api/launch", post(actions::start_launch))
        .route("/api/stop", post(actions::stop_run))
        .route("/api/arena", get(actions::arena_info))
        .route("/api/arena/load", post(actions::arena_load))
        .route("/api/arena/rate", post(actions::arena_rate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(board.clone());
    // The OpenAI routes answer unknown paths in OpenAI's error shape; two fallbacks cannot merge.
    let routes = match openai {
        Some(openai) => routes.merge(openai),
        None => routes.fallback(|| async { not_found("no such route") }),
    };
    routes.layer(axum::middleware::from_fn_with_state(board, guard))
}

/// One of the page's script modules.
async fn script(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match SCRIPTS.iter().find(|(n, _)| *n == name) {
        Some((_, body)) => page(body, "text/javascript; charset=utf-8"),
        None => not_found("no such route"),
    }
}

/// An embedded asset; the page may load only its own script and style.
fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn not_found(message: impl Into<String>) -> Response {
    error(StatusCode::NOT_FOUND, message)
}

/// On a loopback board, only loopback host names (a page from elsewhere that rebinds its name to
/// 127.0.0.1 is refused); with a token, only requests that carry it. `?token=` on a page load
/// sets the cookie and comes back without it in the address.
async fn guard(State(board): State<Arc<Board>>, req: Request, next: Next) -> Response {
    if board.loopback && !loopback_host(req.headers()) {
        return error(
            StatusCode::FORBIDDEN,
            "this board answers only to localhost",
        );
    }
    if req.method() != Method::GET && !same_origin_json(req.headers()) {
        return error(
            StatusCode::FORBIDDEN,
            "changes need a JSON request from the board's own page",
        );
    }
    let Some(token) = &board.token else {
        return next.run(req).await;
    };
    let query_token = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    if let Some(given) = query_token {
        if !same(&given, token) {
            return error(StatusCode::UNAUTHORIZED, "wrong token");
        }
        let cookie = format!("{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
        let mut response = Redirect::to(req.uri().path()).into_response();
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        return response;
    }
    match presented_token(req.headers()) {
        Some(given) if same(&given, token) => next.run(req).await,
        _ => error(
            StatusCode::UNAUTHORIZED,
            "this board needs its token: open it once as /?token=TOKEN",
        ),
    }
}

fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A request that changes something (starts or stops a run) must come from the board's own
/// page: JSON (which a form on another site cannot send without the browser asking first) and,
/// when the browser says where it comes from, from the board's own origin.
fn same_origin_json(headers: &HeaderMap) -> bool {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_ok = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => host.is_some_and(|host| {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }),
    };
    json && origin_ok
}

/// The bearer token, else the board's cookie.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(bearer) = bearer {
        return Some(bearer.to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The token compared in constant time, as `hone serve` compares its key.
fn same(a: &str, b: &str) -> bool {
    crate::serve::routes::constant_time_eq(a.as_bytes(), b.as_bytes())
}

/// A job run off the async workers, answered as JSON, or as its error with `status`.
pub(super) async fn json_answer(
    status: StatusCode,
    work: impl FnOnce() -> anyhow::Result<Value> + Send + 'static,
) -> Response {
    match blocking(work).await {
        Ok(Ok(body)) => Json(body).into_response(),
        Ok(Err(e)) => error(status, format!("{e:#}")),
        Err(response) => response,
    }
}

/// Directory scans and file reads run off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(work).await.map_err(|_| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the board's reader failed",
        )
    })
}

async fn list_runs(State(board): State<Arc<Board>>) -> Response {
    match blocking(move || board.runs()).await {
        Ok(runs) => Json(json!({ "runs": runs })).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
pub(super) struct RunQuery {
    pub id: String,
}

/// One run: its summary, config, every alert and its final numbers.
async fn run_detail(State(board): State<Arc<Board>>, Query(q): Query<RunQuery>) -> Response {
    let work = move || {
        let path = runs::resolve(&board.roots, &q.id)?;
        let run = RunDir { id: q.id, path };
        let summary = board.summary(&run);
        let config = runs::read_config(&run.path)?;
        let config_yaml = std::fs::read_to_string(run.path.join(TRAINING_ARGS)).ok();
        let config: BTreeMap<String, String> = config
            .iter()
            .map(|(k, v)| (k.clone(), display_value(v)))
            .collect();
        let follower = board.follower(&run.path);
        let log = follower.lock().unwrap_or_else(|e| e.into_inner());
        let alerts: Vec<_> = log.points().iter().flat_map(|p| &p.alerts).collect();
        anyhow::Ok(json!({
            "run": summary,
            "stoppable": board.launches.running(&run.id),
            "config": config,
            "config_yaml": config_yaml,
            "alerts": alerts,
            "results": runs::read_results(&run.path),
        }))
    };
    json_answer(StatusCode::NOT_FOUND, work).await
}

/// The run's log as server-sent events: every line after `Last-Event-ID` (or `?after=`), then
/// each new line as it is written; `event: log` with `id` = step (`step.k` for further lines at
/// one step), `event: reset` when the log started over, `event: status` when the run's status
/// changes.
async fn log_events(
    State(board): State<Arc<Board>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let params = parse_query(query.as_deref());
    let Some(id) = params
        .iter()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.clone())
    else {
        return error(StatusCode::BAD_REQUEST, "id: missing");
    };
    let path = match runs::resolve(&board.roots, &id) {
        Ok(path) => path,
        Err(e) => return not_found(e.to_string()),
    };
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            params
                .iter()
                .find(|(k, _)| k == "after")
                .map(|(_, v)| v.clone())
        });
    let follower = board.follower(&path);
    let (out, events) = mpsc::channel::<Result<SseEvent, Infallible>>(256);
    tokio::spawn(async move {
        let mut next: Option<usize> = None;
        let mut generation = None;
        let mut status = None;
        loop {
            let mut batch = Vec::new();
            {
                // Appended bytes only: a short read under the lock, fine on an async worker.
                let mut log = follower.lock().unwrap_or_else(|e| e.into_inner());
                let _ = log.refresh();
                if generation.is_some_and(|g| g != log.generation) {
                    batch.push(SseEvent::default().event("reset").data("{}"));
                    next = Some(0);
                }
                generation = Some(log.generation);
                let start = *next.get_or_insert_with(|| log.after(last.as_deref()));
                for point in &log.points()[start.min(log.points().len())..] {
                    batch.push(
                        SseEvent::default()
                            .id(point.id.clone())
                            .event("log")
                            .data(point.data.clone()),
                    );
                }
                next = Some(log.points().len());
            }
            let now = runs::run_state(&path);
            if status.as_ref() != Some(&now) {
                let data = json!({"status": now.0, "message": now.1}).to_string();
                batch.push(SseEvent::default().event("status").data(data));
                status = Some(now);
            }
            for event in batch {
                if out.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(POLL).await;
            if out.is_closed() {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(events))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `?id=A&id=B…`: the runs' summaries, their config keys that differ, their final numbers side
/// by side, and the `hone compare` reports that cover them.
async fn compare_runs(State(board): State<Arc<Board>>, RawQuery(query): RawQuery) -> Response {
    let ids: Vec<String> = parse_query(query.as_deref())
        .into_iter()
        .filter(|(k, _)| k == "id")
        .map(|(_, v)| v)
        .collect();
    if ids.len() < 2 {
        return error(StatusCode::BAD_REQUEST, "id: give two runs or more");
    }
    let work = move || {
        let mut runs_found = Vec::new();
        for id in ids {
            let path = runs::resolve(&board.roots, &id)?;
            runs_found.push(RunDir { id, path });
        }
        let summaries: Vec<_> = runs_found.iter().map(|r| board.summary(r)).collect();
        let configs: Vec<_> = runs_found
            .iter()
            .map(|r| runs::read_config(&r.path).unwrap_or_default())
            .collect();
        let (diff, same) = config_diff(&configs);
        let results: Vec<_> = runs_found
            .iter()
            .map(|r| runs::read_results(&r.path))
            .collect();
        let mut metrics: BTreeMap<&String, Vec<Value>> = BTreeMap::new();
        for (i, result) in results.iter().enumerate() {
            for (key, value) in result {
                metrics
                    .entry(key)
                    .or_insert_with(|| vec![Value::Null; results.len()])[i] = value.clone();
            }
        }
        let canonical: Vec<_> = runs_found
            .iter()
            .map(|r| r.path.canonicalize().unwrap_or_else(|_| r.path.clone()))
            .collect();
        let reports: Vec<Value> = find_reports(&board.roots, &canonical)
            .into_iter()
            .filter_map(|report| {
                let id = report_id(&board.roots, &report.html)?;
                Some(json!({"id": id, "runs": report.runs}))
            })
            .collect();
        anyhow::Ok(json!({
            "runs": summaries,
            "diff": diff,
            "same": same,
            "results": metrics,
            "reports": reports,
        }))
    };
    json_answer(StatusCode::NOT_FOUND, work).await
}

/// A report's id under the folders (as a run's id is), for `/api/report?id=`.
fn report_id(roots: &[std::path::PathBuf], html: &std::path::Path) -> Option<String> {
    roots.iter().enumerate().find_map(|(i, root)| {
        html.strip_prefix(root).ok()?;
        let prefix = (roots.len() > 1).then(|| i.to_string());
        Some(runs::id_under(root, prefix.as_deref(), html))
    })
}

/// A `hone compare` HTML report under the folders, shown as it is (its own inline style only).
async fn report(State(board): State<Arc<Board>>, Query(q): Query<RunQuery>) -> Response {
    let work = move || -> Result<String, String> {
        let path = runs::confined(&board.roots, &q.id).map_err(|e| e.to_string())?;
        if path.extension().is_none_or(|e| e != "html") {
            return Err(format!("{}: not a report", q.id));
        }
        std::fs::read_to_string(&path).map_err(|_| format!("{}: not found", q.id))
    };
    match blocking(work).await {
        Ok(Ok(html)) => (
            [(
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
            )],
            Html(html),
        )
            .into_response(),
        Ok(Err(message)) => not_found(message),
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        let served: Vec<&str> = SCRIPTS.iter().map(|(name, _)| *name).collect();
        assert!(PAGE.contains("src=\"/board.js\""));
        for (name, body) in SCRIPTS {
            for line in body.lines().filter(|l| l.starts_with("import ")) {
                let module = line
                    .split("from \"./")
                    .nth(1)
                    .unwrap()
                    .trim_end_matches("\";");
                assert!(served.contains(&module), "{name} imports {module}");
            }
        }
    }

    #[test]
    fn only_loopback_host_names_pass() {
        for host in [
            "localhost:7860",
            "127.0.0.1:7860",
            "[::1]:7860",
            "127.0.0.1",
        ] {
            assert!(loopback_host(&headers(&[("host", host)])), "{host}");
        }
        for host in ["evil.example:7860", "10.0.0.2", "localhost.evil.example"] {
            assert!(!loopback_host(&headers(&[("host", host)])), "{host}");
        }
        assert!(!loopback_host(&headers(&[])));
    }

    #[test]
    fn changes_need_json_from_the_boards_own_origin() {
        let json = ("content-type", "application/json");
        let host = ("host", "127.0.0.1:7860");
        assert!(same_origin_json(&headers(&[json, host])));
        let own = ("origin", "http://127.0.0.1:7860");
        assert!(same_origin_json(&headers(&[json, host, own])));
        let other = ("origin", "http://evil.example");
        assert!(!same_origin_json(&headers(&[json, host, other])));
        let form = ("content-type", "application/x-www-form-urlencoded");
        assert!(!same_origin_json(&headers(&[form, host])));
    }

    #[test]
    fn the_token_comes_as_a_bearer_or_the_cookie() {
        let bearer = headers(&[("authorization", "Bearer abc")]);
        assert_eq!(presented_token(&bearer).as_deref(), Some("abc"));
        let cookie = headers(&[("cookie", "theme=dark; hone_board_token=xyz")]);
        assert_eq!(presented_token(&cookie).as_deref(), Some("xyz"));
        assert_eq!(presented_token(&headers(&[("cookie", "a=b")])), None);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
