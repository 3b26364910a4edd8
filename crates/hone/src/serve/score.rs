//! LLaMA-Factory's reward-model API, `POST /v1/score/evaluation`: `{"model", "messages": [text,
//! …], "max_length"}` → `{"id", "object": "score.evaluation", "model", "scores": [float, …]}`.
//! `model` names a reward model: an adapter (or the base) served with its
//! `value_head.safetensors`, as `stage: rm` saves it. Each text is scored as LLaMA-Factory's
//! engine scores it: tokenized without special tokens (the text is already formatted), cut to
//! `max_length` tokens (default the model's context), the value head on the last token's final
//! hidden state. Texts are scored one at a time on a blocking thread beside the decoding engine.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::adapters::ServedAdapter;
use super::api;
use super::error::ApiError;
use super::routes::{read_body, resolve_model, AppState};
use crate::model::value_head::ValueHead;
use crate::model::Llama;

#[derive(Deserialize, Debug)]
struct ScoreRequest {
    model: Option<String>,
    messages: Vec<String>,
    max_length: Option<usize>,
}

pub(super) async fn score_evaluation(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let scoring = match request(&state, headers, body).await {
        Ok(scoring) => scoring,
        Err(e) => {
            state.metrics.request("-", e.status.as_u16());
            return e.into_response();
        }
    };
    let label = scoring.label.clone();
    let result = tokio::task::spawn_blocking(move || scoring.run())
        .await
        .map_err(|e| ApiError::internal(format!("scoring stopped: {e}")))
        .and_then(|scores| scores.map_err(|e| ApiError::internal(format!("{e:#}"))));
    match result {
        Ok(scores) => {
            state.metrics.request(&label, 200);
            let id = format!("scoreval-{:032x}", rand::random::<u128>());
            let body =
                json!({"id": id, "object": "score.evaluation", "model": label, "scores": scores});
            Json(body).into_response()
        }
        Err(e) => {
            state.metrics.request(&label, e.status.as_u16());
            e.into_response()
        }
    }
}

/// A checked request: the texts' token ids and the model that scores them.
struct Scoring {
    label: String,
    model: Arc<Llama>,
    adapter: Option<Arc<ServedAdapter>>,
    head: ValueHead,
    inputs: Vec<Vec<u32>>,
}

impl Scoring {
    /// Each text's value at its last token (blocking: the model runs on this thread).
    fn run(self) -> anyhow::Result<Vec<f64>> {
        let set = self.adapter.as_ref().map(|a| &a.set);
        self.inputs
            .iter()
            .map(|ids| Ok(self.head.value(&self.model.last_hidden(ids, set)?)))
            .collect()
    }
}

/// Checks the request and tokenizes its texts.
async fn request(
    state: &Arc<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Scoring, ApiError> {
    let body = read_body(state, &headers, body).await?;
    let request: ScoreRequest = api::parse(&body)?;
    let (label, adapter) = resolve_model(state, request.model.as_deref())?;
    let head = match &adapter {
        Some(a) => a.value_head.clone(),
        None => state.value_head.clone(),
    };
    let Some(head) = head else {
        return Err(ApiError::invalid(
            Some("model"),
            format!(
                "`{label}` has no value head: serve a reward model (a `stage: rm` output, with its \
                 value_head.safetensors)"
            ),
        ));
    };
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "`messages` is empty: send the texts to score",
        ));
    }
    let context = state.model.config().max_position_embeddings;
    let max_length = match request.max_length {
        Some(0) => {
            return Err(ApiError::invalid(
                Some("max_length"),
                "`max_length` must be at least 1",
            ))
        }
        Some(n) => n.min(context),
        None => context,
    };
    let mut inputs = Vec::with_capacity(request.messages.len());
    for (i, text) in request.messages.iter().enumerate() {
        let mut ids = state
            .tokenizer
            .encode(text, false)
            .map_err(|e| ApiError::invalid(Some("messages"), format!("{e:#}")))?;
        if ids.is_empty() {
            return Err(ApiError::invalid(
                Some(&format!("messages[{i}]")),
                "the text is empty",
            ));
        }
        ids.truncate(max_length);
        inputs.push(ids);
    }
    Ok(Scoring {
        label,
        model: state.model.clone(),
        adapter,
        head,
        inputs,
    })
}
