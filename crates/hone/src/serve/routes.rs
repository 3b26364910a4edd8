//! The HTTP routes of `hone serve`: OpenAI's chat and completions APIs (JSON or server-sent
//! events), the model list, run-time adapter loading, health and metrics; plus the API-key and
//! CORS layers in front of them.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use super::adapters::{self, Registry, ServedAdapter};
use super::api::{self, Bounds, ChatRequest, CompletionRequest, Settings};
use super::engine::{Event, Job, TokenLogprob};
use super::error::ApiError;
use super::metrics::Metrics;
use super::score;
use super::tools::{self, StreamSplitter, Tools};
use super::unix_now;
use crate::chat::ChatTemplate;
use crate::generate::FinishReason;
use crate::model::value_head::ValueHead;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;

/// Limits and switches fixed at start.
#[derive(Debug, Clone)]
pub struct Limits {
    pub api_key: Option<String>,
    pub cors_origin: Option<String>,
    pub max_body_bytes: usize,
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Requests that may wait for a slot beyond the running ones.
    pub max_queue: usize,
    pub request_timeout: Duration,
    /// Where `POST /v1/adapters` may load from (None: run-time loading is off).
    pub adapter_root: Option<PathBuf>,
    /// Tokens a sequence may hold, prompt and completion (None: the model's context). With
    /// `max_batch` it bounds the key/value cache.
    pub max_context: Option<usize>,
}

/// Defaults for [`Limits`].
impl Default for Limits {
    fn default() -> Self {
        Limits {
            api_key: None,
            cors_origin: None,
            max_body_bytes: 4 << 20,
            max_batch: 8,
            max_queue: 64,
            request_timeout: Duration::from_secs(600),
            adapter_root: None,
            max_context: None,
        }
    }
}

impl Limits {
    /// The tokens one sequence may hold on a model of `model_context`.
    pub fn context(&self, model_context: usize) -> usize {
        self.max_context
            .map_or(model_context, |n| n.min(model_context))
    }
}

/// What every handler reads.
pub struct AppState {
    pub base_name: String,
    pub model: Arc<Llama>,
    pub tokenizer: Arc<Tokenizer>,
    /// The chat template, or why there is none (chat requests are refused with it).
    pub template: Result<ChatTemplate, String>,
    pub adapters: Registry,
    /// The base model's value head, when it is a reward model (`/v1/score/evaluation`).
    pub value_head: Option<ValueHead>,
    pub metrics: Arc<Metrics>,
    pub jobs: UnboundedSender<Job>,
    pub limits: Limits,
    pub created: u64,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/score/evaluation", post(score::score_evaluation))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/adapters", post(load_adapter))
        .route("/v1/adapters/{*name}", delete(unload_adapter))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("No such route") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), api_key))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors))
        .with_state(state)
}

/// Every route but `/health` needs `Authorization: Bearer KEY` when the server has a key.
async fn api_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(key) = &state.limits.api_key else {
        return next.run(req).await;
    };
    if req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), key.as_bytes()) => next.run(req).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was right.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// CORS for the one origin given with `--cors-origin` (none by default: browsers on other origins
/// cannot read the API). Written here rather than with tower-http: one origin, three headers.
async fn cors(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(allowed) = &state.limits.cors_origin else {
        return next.run(req).await;
    };
    let origin_ok = req
        .headers()
        .get(header::ORIGIN)
        .is_some_and(|o| allowed == "*" || o.as_bytes() == allowed.as_bytes());
    let preflight = req.method() == Method::OPTIONS;
    let mut response = if preflight && origin_ok {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    if origin_ok {
        let h = response.headers_mut();
        if let Ok(origin) = HeaderValue::from_str(allowed) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
    }
    response
}

/// The body, at most the server's limit (413 beyond it).
pub(super) async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let limit = state.limits.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}

/// The adapter `model` names (None: the base), or 404.
pub(super) fn resolve_model(
    state: &AppState,
    model: Option<&str>,
) -> Result<(String, Option<Arc<ServedAdapter>>), ApiError> {
    let Some(name) = model else {
        return Err(ApiError::invalid(
            Some("model"),
            "`model` is missing: name the base model or an adapter (GET /v1/models lists them)",
        ));
    };
    if name == state.base_name {
        return Ok((name.to_string(), None));
    }
    match state.adapters.get(name) {
        Some(adapter) => Ok((name.to_string(), Some(adapter))),
        None => {
            let mut known = vec![state.base_name.clone()];
            known.extend(state.adapters.all().iter().map(|a| a.name.clone()));
            Err(ApiError::unknown_model(name, &known))
        }
    }
}

/// Which of OpenAI's two APIs a request came through: they differ only in their JSON shapes.
#[derive(Clone, Copy, PartialEq)]
enum Api {
    Chat,
    Completion,
}

/// A request checked and ready for the engine.
struct Prepared {
    api: Api,
    label: String,
    adapter: Option<Arc<ServedAdapter>>,
    prompt_ids: Vec<u32>,
    settings: Settings,
    /// The answer is read for tool calls (chat with `tools`).
    tools: bool,
}

async fn chat_completions(state: State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    answer::<ChatRequest>(state, headers, body).await
}

async fn completions(state: State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    answer::<CompletionRequest>(state, headers, body).await
}

/// What the two APIs' requests give the shared path.
trait OpenAiRequest: serde::de::DeserializeOwned {
    const API: Api;
    fn model(&self) -> Option<&str>;
    fn settings(&self, bounds: Bounds) -> Result<Settings, ApiError>;
    /// The functions the model is offered (none for completions).
    fn tools(&self) -> Result<Tools, ApiError> {
        Ok(Tools::default())
    }
    /// The prompt's token ids: the rendered conversation (with `tools`), or the raw prompt with
    /// BOS.
    fn prompt_ids(&self, state: &AppState, tools: &Tools) -> Result<Vec<u32>, ApiError>;
}

impl OpenAiRequest for ChatRequest {
    const API: Api = Api::Chat;

    fn model(&self) -> Option<&str> {
        self.common.model.as_deref()
    }

    fn settings(&self, bounds: Bounds) -> Result<Settings, ApiError> {
        ChatRequest::settings(self, bounds)
    }

    fn tools(&self) -> Result<Tools, ApiError> {
        Tools::from_request(self.tools.as_deref(), self.tool_choice.as_ref())
    }

    fn prompt_ids(&self, state: &AppState, tools: &Tools) -> Result<Vec<u32>, ApiError> {
        let template = state
            .template
            .as_ref()
            .map_err(|why| ApiError::invalid(None, why.clone()))?;
        let mut vars = self.chat_template_kwargs.clone();
        vars.extend(tools.template_vars());
        let text = template
            .render_with(&self.conversation()?, true, &vars)
            .map_err(|e| ApiError::invalid(Some("messages"), format!("{e:#}")))?;
        if tools.active() {
            tools.check_prompt(&text)?;
        }
        encode(state, &text, false)
    }
}

impl OpenAiRequest for CompletionRequest {
    const API: Api = Api::Completion;

    fn model(&self) -> Option<&str> {
        self.common.model.as_deref()
    }

    fn settings(&self, bounds: Bounds) -> Result<Settings, ApiError> {
        CompletionRequest::settings(self, bounds)
    }

    fn prompt_ids(&self, state: &AppState, _: &Tools) -> Result<Vec<u32>, ApiError> {
        encode(state, self.prompt_text()?, true)
    }
}

/// Checks a request of either API and answers it.
async fn answer<R: OpenAiRequest>(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let prepared = async {
        let body = read_body(&state, &headers, body).await?;
        let request: R = api::parse(&body)?;
        let (label, adapter) = resolve_model(&state, request.model())?;
        let settings = request.settings(bounds(&state))?;
        let tools = request.tools()?;
        Ok(Prepared {
            api: R::API,
            label,
            adapter,
            prompt_ids: request.prompt_ids(&state, &tools)?,
            settings,
            tools: tools.active(),
        })
    };
    respond(&state, prepared.await).await
}

fn bounds(state: &AppState) -> Bounds {
    Bounds {
        max_batch: state.limits.max_batch,
        vocab_size: state.model.config().vocab_size,
    }
}

fn encode(state: &AppState, text: &str, special: bool) -> Result<Vec<u32>, ApiError> {
    let ids = state
        .tokenizer
        .encode(text, special)
        .map_err(|e| ApiError::invalid(None, format!("cannot tokenize the prompt: {e:#}")))?;
    if ids.is_empty() {
        return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
    }
    Ok(ids)
}

/// Submits a prepared request and answers: JSON once it is done, or a stream of events.
async fn respond(state: &AppState, prepared: Result<Prepared, ApiError>) -> Response {
    let mut prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            state.metrics.request("-", e.status.as_u16());
            return e.into_response();
        }
    };
    let label = prepared.label.clone();
    let events = match submit(state, &mut prepared) {
        Ok(events) => events,
        Err(e) => {
            state.metrics.request(&label, e.status.as_u16());
            return e.into_response();
        }
    };
    let reply = Reply::new(&prepared);
    if prepared.settings.stream {
        state.metrics.request(&label, 200);
        return stream(reply, events).into_response();
    }
    let result = collect(reply, events).await;
    let status = result.as_ref().map_or_else(|e| e.status.as_u16(), |_| 200);
    state.metrics.request(&label, status);
    match result {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Caps the completion by the context and hands the request to the engine (429 when full).
fn submit(state: &AppState, p: &mut Prepared) -> Result<UnboundedReceiver<Event>, ApiError> {
    let context = state
        .limits
        .context(state.model.config().max_position_embeddings);
    let prompt = p.prompt_ids.len();
    if prompt >= context {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                Some(if p.api == Api::Chat {
                    "messages"
                } else {
                    "prompt"
                }),
                format!(
                    "This model's maximum context length is {context} tokens, and the prompt \
                     has {prompt}: no room to generate"
                ),
            )
        });
    }
    let generate = &mut p.settings.generate;
    generate.max_new_tokens = generate.max_new_tokens.min(context - prompt);
    let limit = state.limits.max_batch + state.limits.max_queue;
    state
        .metrics
        .in_system
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < limit).then_some(n + 1)
        })
        .map_err(|_| ApiError::queue_full(state.limits.max_queue))?;
    let (events, receiver) = mpsc::unbounded_channel();
    let received = Instant::now();
    let job = Job {
        prompt_ids: p.prompt_ids.clone(),
        adapter: p.adapter.clone(),
        generate: p.settings.generate.clone(),
        n: p.settings.n,
        top_logprobs: p.settings.top_logprobs,
        deadline: received + state.limits.request_timeout,
        label: p.label.clone(),
        received,
        events,
    };
    if state.jobs.send(job).is_err() {
        state.metrics.in_system.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::internal("the decoding engine has stopped"));
    }
    Ok(receiver)
}

/// Builds the JSON of one request's answer in its API's shapes.
struct Reply {
    api: Api,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    n: usize,
    logprobs: bool,
    include_usage: bool,
    /// Answers are read for tool calls.
    tools: bool,
}

impl Reply {
    fn new(p: &Prepared) -> Reply {
        let prefix = if p.api == Api::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        };
        Reply {
            api: p.api,
            id: format!("{prefix}-{:032x}", rand::random::<u128>()),
            created: unix_now(),
            model: p.label.clone(),
            prompt_tokens: p.prompt_ids.len(),
            n: p.settings.n,
            logprobs: p.settings.top_logprobs.is_some(),
            include_usage: p.settings.include_usage,
            tools: p.tools,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.api, chunk) {
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
            (Api::Completion, _) => "text_completion",
        }
    }

    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    /// The envelope around `choices`.
    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Value {
        let mut body = json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": super::FINGERPRINT,
            "choices": choices,
        });
        if chunk && self.include_usage {
            body["usage"] = Value::Null;
        }
        body
    }

    /// One choice of a stream chunk: `text` added, its tokens' log-probabilities, and the finish
    /// reason on the last.
    fn chunk_choice(
        &self,
        index: usize,
        text: Option<&str>,
        logprobs: &[TokenLogprob],
        finish: Option<FinishReason>,
    ) -> Value {
        let logprobs =
            (self.logprobs && !logprobs.is_empty()).then(|| self.logprobs_json(logprobs, 0));
        match self.api {
            Api::Chat => json!({
                "index": index,
                "delta": text.map_or(json!({}), |t| json!({"content": t})),
                "logprobs": logprobs,
                "finish_reason": finish.map(finish_reason),
            }),
            Api::Completion => json!({
                "index": index,
                "text": text.unwrap_or(""),
                "logprobs": logprobs,
                "finish_reason": finish.map(finish_reason),
            }),
        }
    }

    /// A choice of the whole answer.
    fn final_choice(&self, index: usize, c: &Choice) -> Value {
        let logprobs = self.logprobs.then(|| self.logprobs_json(&c.logprobs, 0));
        match self.api {
            Api::Chat => {
                let mut message = json!({"role": "assistant", "content": c.text, "refusal": null});
                let mut finish = c.finish.map(finish_reason);
                // With tools, an answer made of calls gives them and its text before them.
                let (content, calls) = match self.tools {
                    true => tools::parse(&c.text),
                    false => (None, Vec::new()),
                };
                if !calls.is_empty() {
                    message["content"] = json!(content);
                    message["tool_calls"] = Value::from(calls);
                    finish = Some("tool_calls");
                }
                json!({
                    "index": index,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                })
            }
            Api::Completion => json!({
                "index": index,
                "text": c.text,
                "logprobs": logprobs,
                "finish_reason": c.finish.map(finish_reason),
            }),
        }
    }

    /// Log-probabilities as each API gives them: chat's `{"content": [...]}`, or completions'
    /// legacy parallel lists (`text_offset` counted from `offset`).
    fn logprobs_json(&self, tokens: &[TokenLogprob], offset: usize) -> Value {
        match self.api {
            Api::Chat => {
                let entry = |token: &str, logprob: f32| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let mut e = entry(&t.token, t.logprob);
                        e["top_logprobs"] = t.top.iter().map(|(s, l)| entry(s, *l)).collect();
                        e
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Api::Completion => {
                let mut text_offset = Vec::with_capacity(tokens.len());
                let mut at = offset;
                for t in tokens {
                    text_offset.push(at);
                    at += t.token.len();
                }
                json!({
                    "tokens": tokens.iter().map(|t| &t.token).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                    "top_logprobs": tokens.iter().map(|t| {
                        t.top.iter().map(|(s, l)| (s.clone(), json!(l))).collect::<serde_json::Map<_, _>>()
                    }).collect::<Vec<_>>(),
                    "text_offset": text_offset,
                })
            }
        }
    }
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos | FinishReason::StopString => "stop",
        FinishReason::Length => "length",
    }
}

/// One choice as it accumulates.
#[derive(Default)]
struct Choice {
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: Option<FinishReason>,
    completion_tokens: usize,
}

/// Waits for every choice and builds the answer.
async fn collect(reply: Reply, mut events: UnboundedReceiver<Event>) -> Result<Value, ApiError> {
    let mut choices: Vec<Choice> = (0..reply.n).map(|_| Choice::default()).collect();
    let mut left = reply.n;
    while left > 0 {
        match events.recv().await {
            Some(Event::Token {
                choice,
                text,
                logprob,
            }) => {
                choices[choice].text.push_str(&text);
                choices[choice].logprobs.extend(logprob);
            }
            Some(Event::Finished {
                choice,
                text,
                reason,
                completion_tokens,
            }) => {
                let c = &mut choices[choice];
                c.text.push_str(&text);
                (c.finish, c.completion_tokens) = (Some(reason), completion_tokens);
                left -= 1;
            }
            Some(Event::Failed(e)) => return Err(e),
            None => {
                return Err(ApiError::internal(
                    "the decoding engine dropped the request",
                ))
            }
        }
    }
    let body = choices
        .iter()
        .enumerate()
        .map(|(i, c)| reply.final_choice(i, c))
        .collect();
    let mut body = reply.envelope(false, body);
    body["usage"] = reply.usage(choices.iter().map(|c| c.completion_tokens).sum());
    Ok(body)
}

/// Answers as server-sent events, in OpenAI's order: (chat) a role chunk per choice, content
/// chunks, a finish chunk per choice, the usage chunk when asked for, then `[DONE]`.
fn stream(reply: Reply, mut events: UnboundedReceiver<Event>) -> Response {
    let (out, chunks) = mpsc::unbounded_channel::<SseEvent>();
    // When the client goes away the response stream is dropped, `out.send` fails, this task
    // ends and drops `events`: the engine sees the request abandoned before its next step.
    tokio::spawn(async move {
        let send = |value: Value| {
            out.send(SseEvent::default().data(value.to_string()))
                .is_ok()
        };
        if reply.api == Api::Chat {
            for i in 0..reply.n {
                let delta = json!({"index": i, "delta": {"role": "assistant", "content": ""},
                    "logprobs": null, "finish_reason": null});
                if !send(reply.envelope(true, vec![delta])) {
                    return;
                }
            }
        }
        let (mut left, mut completion_tokens) = (reply.n, 0);
        // With tools, each choice's text passes a splitter that holds back its calls.
        let mut splitters: Vec<Option<StreamSplitter>> = (0..reply.n)
            .map(|_| reply.tools.then(StreamSplitter::default))
            .collect();
        while left > 0 {
            let chunk = match events.recv().await {
                Some(Event::Token {
                    choice,
                    text,
                    logprob,
                }) => {
                    let text = match &mut splitters[choice] {
                        Some(splitter) => splitter.push(&text),
                        None => text,
                    };
                    let logprobs: Vec<TokenLogprob> = logprob.into_iter().collect();
                    if text.is_empty() && (logprobs.is_empty() || !reply.logprobs) {
                        continue;
                    }
                    reply.chunk_choice(choice, Some(&text), &logprobs, None)
                }
                Some(Event::Finished {
                    choice,
                    text,
                    reason,
                    completion_tokens: n,
                }) => {
                    left -= 1;
                    completion_tokens += n;
                    let (text, calls) = match splitters[choice].take() {
                        Some(mut splitter) => {
                            let sent = splitter.push(&text);
                            let (rest, calls) = splitter.finish();
                            (sent + &rest, calls)
                        }
                        None => (text, Vec::new()),
                    };
                    if !text.is_empty() {
                        let rest = reply.chunk_choice(choice, Some(&text), &[], None);
                        if !send(reply.envelope(true, vec![rest])) {
                            return;
                        }
                    }
                    if calls.is_empty() {
                        reply.chunk_choice(choice, None, &[], Some(reason))
                    } else {
                        for (k, call) in calls.into_iter().enumerate() {
                            let mut delta = call;
                            delta["index"] = json!(k);
                            let chunk = json!({"index": choice, "delta": {"tool_calls": [delta]},
                                "logprobs": null, "finish_reason": null});
                            if !send(reply.envelope(true, vec![chunk])) {
                                return;
                            }
                        }
                        json!({"index": choice, "delta": {}, "logprobs": null,
                            "finish_reason": "tool_calls"})
                    }
                }
                Some(Event::Failed(e)) => {
                    send(e.body());
                    break;
                }
                None => {
                    send(ApiError::internal("the decoding engine dropped the request").body());
                    break;
                }
            };
            if !send(reply.envelope(true, vec![chunk])) {
                return;
            }
        }
        if left == 0 && reply.include_usage {
            let mut usage = reply.envelope(true, vec![]);
            usage["usage"] = reply.usage(completion_tokens);
            send(usage);
        }
        let _ = out.send(SseEvent::default().data("[DONE]"));
    });
    let stream = UnboundedReceiverStream::new(chunks).map(Ok::<_, std::convert::Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn model_json(id: &str, created: u64, parent: Option<&str>) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "hone", "parent": parent})
}

async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut data = vec![model_json(&state.base_name, state.created, None)];
    for a in state.adapters.all() {
        data.push(model_json(&a.name, a.created, Some(&state.base_name)));
    }
    Json(json!({"object": "list", "data": data}))
}

async fn get_model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let (_, adapter) = match resolve_model(&state, Some(&id)) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    Json(match adapter {
        Some(a) => model_json(&a.name, a.created, Some(&state.base_name)),
        None => model_json(&state.base_name, state.created, None),
    })
    .into_response()
}

#[derive(Deserialize)]
struct LoadAdapter {
    name: String,
    path: String,
}

/// `POST /v1/adapters {"name", "path"}`: loads an adapter from inside the adapter directory;
/// it becomes visible only once it is whole and checked against the model.
async fn load_adapter(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let loaded = async {
        let root = state.limits.adapter_root.clone().ok_or_else(|| {
            ApiError::forbidden("loading adapters at run time is off: start with --adapter-dir DIR")
        })?;
        let body = read_body(&state, &headers, body).await?;
        let request: LoadAdapter = api::parse(&body)?;
        let name = request.name.trim().to_string();
        if name.is_empty() || name == state.base_name || state.adapters.get(&name).is_some() {
            return Err(ApiError::conflict(format!(
                "the name `{name}` is empty or already served"
            )));
        }
        let dir = adapters::confine(&root, &request.path)
            .map_err(|e| ApiError::invalid(Some("path"), format!("{e:#}")))?;
        let model = state.model.clone();
        let adapter = tokio::task::spawn_blocking(move || adapters::load(&model, &name, &dir))
            .await
            .map_err(|_| ApiError::internal("loading the adapter failed (a panic)"))?
            .map_err(|e| ApiError::invalid(Some("path"), format!("{e:#}")))?;
        let body = model_json(&adapter.name, adapter.created, Some(&state.base_name));
        if !state.adapters.insert(adapter) {
            return Err(ApiError::conflict(
                "the name was taken while the adapter loaded",
            ));
        }
        Ok(body)
    };
    match loaded.await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /v1/adapters/{name}`: requests already running keep the adapter until they finish.
async fn unload_adapter(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    if state.limits.adapter_root.is_none() {
        return ApiError::forbidden(
            "unloading adapters at run time is off: start with --adapter-dir DIR",
        )
        .into_response();
    }
    match state.adapters.remove(&name) {
        Some(_) => Json(json!({"id": name, "object": "model", "deleted": true})).into_response(),
        None => ApiError::not_found(format!("no adapter named `{name}` is loaded")).into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
