//! `hone serve`'s HTTP bodies: one request through the server's router (no socket) for the tiny
//! model with its chat template, to any route, read to the end (streams included). A 500 — the
//! server's own fault — is a finding, as is a panic.
//!
//! The first byte chooses the route: chat completions, completions, reward scoring (the model is
//! served with a value head), loading an
//! adapter (from a folder holding one, named `qv`; a loaded one is unloaded again, so state does
//! not grow over millions of inputs), or a GET of the rest taken as the path.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use candle_core::Device;
use hone::chat::ChatTemplate;
use hone::model::load::{load, Precision};
use hone::model::value_head::ValueHead;
use hone::serve::{Limits, ServeOptions, Served, Server};
use tower::ServiceExt;

use crate::{choice, scratch};

/// The routes a body goes to, after the first byte's choice.
const POSTS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/score/evaluation",
    "/v1/adapters",
];
/// Most bytes of an answer read back (a stream of the whole context is far less).
const MAX_ANSWER_BYTES: usize = 64 << 20;

pub fn serve(data: &[u8]) {
    let (runtime, router) = server();
    let (route, body) = choice(data, POSTS.len() + 1);
    let request = match POSTS.get(route) {
        Some(path) => post(path, body.to_vec()),
        None => match get(body) {
            Some(request) => request,
            None => return,
        },
    };
    runtime.block_on(async {
        let (status, answer) = send(router, request).await;
        if POSTS.get(route) == Some(&"/v1/adapters") && status == StatusCode::OK {
            unload(router, &answer).await;
        }
    });
}

fn post(path: &str, body: Vec<u8>) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("a valid request")
}

/// A GET of `path`, when it is a valid request path.
fn get(path: &[u8]) -> Option<Request<Body>> {
    let path = std::str::from_utf8(path).ok()?;
    Request::builder()
        .method(Method::GET)
        .uri(path)
        .body(Body::empty())
        .ok()
}

/// Sends `request` and reads the whole answer; a 500 is a finding.
async fn send(router: &Router, request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let answer = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
        .await
        .expect("the answer reads to its end");
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the server failed: {}",
        String::from_utf8_lossy(&answer)
    );
    (status, answer.to_vec())
}

/// Unloads the adapter a successful load answered with.
async fn unload(router: &Router, answer: &[u8]) {
    let answer: serde_json::Value = serde_json::from_slice(answer).expect("a JSON answer");
    let id = answer["id"].as_str().expect("the loaded adapter's id");
    let request = Request::builder()
        .method(Method::DELETE)
        .uri(format!("/v1/adapters/{}", percent_encoded(id)))
        .body(Body::empty())
        .expect("a valid request");
    let (status, _) = send(router, request).await;
    assert_eq!(status, StatusCode::OK, "unloading {id:?}");
}

/// `text` with every byte but unreserved ASCII percent-encoded, for a path segment.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The runtime and router of one server for the process's life.
fn server() -> (&'static tokio::runtime::Runtime, &'static Router) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    let (runtime, router) = SERVER.get_or_init(|| {
        let model_dir = scratch::tiny_model("serve-model", &[]);
        let loaded = load(
            model_dir.to_str().expect("a UTF-8 path"),
            Precision::Stored,
            &Device::Cpu,
        )
        .expect("the tiny model loads");
        let hidden = loaded.model.config().hidden_size;
        let template = ChatTemplate::for_tokenizer(&loaded.tokenizer).map_err(|e| e.to_string());
        let adapters = scratch::fresh_dir("serve-adapters");
        let fixture = scratch::repository("fixtures/adapters/llama-tied-qv");
        std::fs::create_dir_all(adapters.join("qv")).expect("an adapter folder");
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(fixture.join(file), adapters.join("qv").join(file))
                .expect("copying the adapter");
        }
        let options = ServeOptions {
            host: "127.0.0.1".into(),
            port: 0,
            served_name: "tiny".into(),
            limits: Limits {
                request_timeout: Duration::from_secs(30),
                // Short sequences: an answer that runs to the context costs 40 steps, not 256.
                max_context: Some(40),
                adapter_root: Some(adapters),
                ..Limits::default()
            },
        };
        let served = Served {
            model: loaded.model,
            tokenizer: loaded.tokenizer,
            template,
            adapters: Vec::new(),
            value_head: Some(ValueHead {
                weight: vec![0.01; hidden],
                bias: 0.5,
            }),
        };
        let server = Server::start(&options, served).expect("the server starts");
        let router = server.router();
        // The decoding thread runs for the process's life: the server is never joined.
        std::mem::forget(server);
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        (runtime, router)
    });
    (runtime, router)
}
