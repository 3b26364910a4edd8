//! The board's routes that change something: starting and stopping runs, and the arena
//! (adapters loaded for it, ratings recorded). The guard in `routes.rs` lets them through only
//! as JSON from the board's own page.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::routes::{blocking, error, json_answer, RunQuery};
use super::{arena, launch, runs, Board};

pub(super) async fn list_launches(State(board): State<Arc<Board>>) -> Response {
    match blocking(move || board.launches.list()).await {
        Ok(list) => Json(json!({ "launches": list })).into_response(),
        Err(response) => response,
    }
}

/// A run to start: its folder name and its config.
#[derive(Deserialize)]
pub(super) struct LaunchRequest {
    name: String,
    yaml: String,
}

/// The config checked, with its memory plan and data preview; 400 naming the problem.
pub(super) async fn check_launch(
    State(board): State<Arc<Board>>,
    Json(request): Json<LaunchRequest>,
) -> Response {
    let work = move || {
        let checked = launch::check(&board.roots[0], &request.name, &request.yaml)?;
        launch::review(&checked)
    };
    json_answer(StatusCode::BAD_REQUEST, work).await
}

/// Starts `hone train` on the config; answers the run's id.
pub(super) async fn start_launch(
    State(board): State<Arc<Board>>,
    Json(request): Json<LaunchRequest>,
) -> Response {
    let work = move || {
        let checked = launch::check(&board.roots[0], &request.name, &request.yaml)?;
        let run_id = board.launched_id(&checked.output_dir);
        board.launches.start(&checked, run_id.clone())?;
        anyhow::Ok(json!({ "run": run_id }))
    };
    json_answer(StatusCode::BAD_REQUEST, work).await
}

/// Stops a run this board started, as Ctrl-C stops it (409 for any other run).
pub(super) async fn stop_run(
    State(board): State<Arc<Board>>,
    Query(q): Query<RunQuery>,
) -> Response {
    match board.launches.stop(&q.id) {
        Ok(()) => Json(json!({ "stopping": q.id })).into_response(),
        Err(e) => error(StatusCode::CONFLICT, format!("{e:#}")),
    }
}

/// Whether the arena can run (a model, with a chat template), the base model's name, and every
/// model it can ask.
pub(super) async fn arena_info(State(board): State<Arc<Board>>) -> Response {
    let Some(server) = board.server.clone() else {
        let why = "start the board with --model MODEL to answer prompts";
        return Json(json!({"available": false, "why": why})).into_response();
    };
    if let Some(why) = server.chat_template_error() {
        let why = format!("the model has no chat template: {why}");
        return Json(json!({"available": false, "why": why})).into_response();
    }
    let work = move || {
        let runs = runs::discover(&board.roots);
        arena::candidates(server.base_name(), &runs)
    };
    match blocking(work).await {
        Ok(candidates) => Json(json!({
            "available": true,
            "criteria": arena::CRITERIA,
            "candidates": candidates,
        }))
        .into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
pub(super) struct LoadRequest {
    models: Vec<String>,
}

/// Makes each named adapter or checkpoint servable under its name (the base needs nothing).
pub(super) async fn arena_load(
    State(board): State<Arc<Board>>,
    Json(request): Json<LoadRequest>,
) -> Response {
    let Some(server) = board.server.clone() else {
        return error(
            StatusCode::CONFLICT,
            "the board was started without --model",
        );
    };
    let work = move || {
        for name in request.models.iter().filter(|n| *n != server.base_name()) {
            let dir = arena::adapter_dir(&board.roots, name)?;
            server.ensure_adapter(name, &dir)?;
        }
        anyhow::Ok(json!({ "models": request.models }))
    };
    json_answer(StatusCode::BAD_REQUEST, work).await
}

/// Records a rating (and its preference pairs) in the first folder's `arena/`.
pub(super) async fn arena_rate(
    State(board): State<Arc<Board>>,
    Json(rating): Json<arena::Rating>,
) -> Response {
    let work = move || {
        let _one_writer = board.arena_files.lock().unwrap_or_else(|e| e.into_inner());
        let pairs = arena::record(&board.roots[0], &rating)?;
        let dir = board.roots[0].join(arena::ARENA_DIR);
        anyhow::Ok(json!({"pairs": pairs, "dataset": arena::PAIRS_DATASET, "dataset_dir": dir}))
    };
    json_answer(StatusCode::BAD_REQUEST, work).await
}
