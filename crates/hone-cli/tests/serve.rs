//! `hone serve` over real HTTP on an ephemeral loopback port: OpenAI's error envelope and
//! statuses, the exact SSE format, streaming equal to the plain answer and to `hone generate`,
//! adapters side by side and loaded at run time, a client that leaves freeing its slot, and a full
//! queue answering 429.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Barrier};

use common::{
    arg, char_text, fixture, hone, json_ids as ids, read_json, real_model, tiny_hf_dir, write,
    CHATML,
};
use serde_json::{json, Value};

/// A running `hone serve`, stopped when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = common::hone_command(&["serve", "--model", arg(model), "--port", "0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start hone serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("hone serve exited before listening")
                .unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, base }
    }

    /// `path` under the server, e.g. `/chat/completions` → `http://127.0.0.1:PORT/v1/chat/completions`.
    fn url(&self, path: &str) -> String {
        match path.strip_prefix('/') {
            Some(p) if p.starts_with("health") || p.starts_with("metrics") => {
                format!("{}/{p}", self.base.trim_end_matches("/v1"))
            }
            _ => format!("{}{path}", self.base),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status, `Retry-After` and body of one request; a fresh connection each time.
struct Answer {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts OpenAI's error envelope with `status`; returns the inner error object.
    fn error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        let body = self.json();
        let error = body["error"].clone();
        for field in ["message", "type", "param", "code"] {
            assert!(error.get(field).is_some(), "no `{field}` in {body}");
        }
        error
    }
}

fn request(method: &str, url: &str, body: Option<&str>, key: Option<&str>) -> Answer {
    let agent = ureq::AgentBuilder::new().build();
    let mut req = agent.request(method, url);
    if let Some(key) = key {
        req = req.set("Authorization", &format!("Bearer {key}"));
    }
    let result = match body {
        Some(body) => req
            .set("Content-Type", "application/json")
            .send_string(body),
        None => req.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    Answer {
        status: response.status(),
        content_type: response.content_type().to_string(),
        retry_after: response.header("Retry-After").map(str::to_owned),
        body: response.into_string().unwrap(),
    }
}

fn post(server: &Server, path: &str, body: &Value) -> Answer {
    request("POST", &server.url(path), Some(&body.to_string()), None)
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "an SSE body ends with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|event| !event.is_empty() && !event.starts_with(':'))
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                .to_string()
        })
        .collect()
}

/// The tiny model served as `tiny` with a ChatML template, plus `extra` arguments.
fn tiny_server(dir: &Path, extra: &[&str]) -> (Server, PathBuf, PathBuf) {
    let model = tiny_hf_dir(dir);
    let template = write(dir, "chatml.jinja", CHATML);
    let mut args = vec!["--served-name", "tiny", "--chat-template", arg(&template)];
    args.extend_from_slice(extra);
    (Server::start(&model, &args), model, template)
}

/// The greedy fixture's prompt as text, and how many tokens it generates.
fn greedy_prompt() -> String {
    let golden = read_json(&fixture("adapters/llama-tied-qv.greedy.json"));
    char_text(&ids(&golden["prompt_ids"]))
}

/// The text of a completions answer's first choice.
fn completion_text(answer: &Answer) -> String {
    answer.json()["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The text of a streamed completions answer, its chunks joined.
fn streamed_completion_text(body: &str) -> String {
    sse_data(body)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            let chunk: Value = serde_json::from_str(d).unwrap();
            chunk["choices"][0]["text"].as_str().unwrap().to_string()
        })
        .collect()
}

/// `hone generate` of a raw prompt, `max` new tokens, with the adapter when given.
fn generate(model: &Path, prompt: &str, max: &str, adapter: Option<&Path>) -> String {
    let mut args = vec!["generate", "--model", arg(model), "--prompt", prompt];
    args.extend_from_slice(&["--max-new-tokens", max]);
    if let Some(a) = adapter {
        args.extend_from_slice(&["--adapter", arg(a)]);
    }
    hone(&args).ok().trim_end_matches('\n').to_string()
}

#[test]
fn errors_come_in_openais_envelope_with_the_right_status() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _, _) = tiny_server(
        tmp.path(),
        &["--api-key", "sekret", "--max-body-bytes", "2000"],
    );
    let chat = server.url("/chat/completions");
    let hello =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let send = |body: &str, key: Option<&str>| request("POST", &chat, Some(body), key);
    let health = request("GET", &server.url("/health"), None, None);
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": "ok"}))
    );
    assert_eq!(
        send(&hello.to_string(), None).error(401)["code"],
        "invalid_api_key"
    );
    send(&hello.to_string(), Some("wrong")).error(401);
    assert_eq!(send(&hello.to_string(), Some("sekret")).status, 200);
    let key = Some("sekret");
    let bad = send("{\"model\": \"tiny\", \"messages\": [", key).error(400);
    assert_eq!(bad["type"], "invalid_request_error");
    let unknown = send(
        &json!({"model": "nope", "messages": hello["messages"]}).to_string(),
        key,
    )
    .error(404);
    assert_eq!(
        (&unknown["code"], &unknown["param"]),
        (&json!("model_not_found"), &json!("model"))
    );
    // Over the 256-token context (one token per character), streaming: the error comes as JSON
    // before any event is sent.
    let long = json!({"model": "tiny", "stream": true,
        "messages": [{"role": "user", "content": "a".repeat(300)}]});
    let too_long = send(&long.to_string(), key);
    assert!(
        too_long.content_type.starts_with("application/json"),
        "{}",
        too_long.content_type
    );
    assert_eq!(too_long.error(400)["code"], "context_length_exceeded");
    let huge =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "a".repeat(3000)}]});
    send(&huge.to_string(), key).error(413);
    let range = send(
        &json!({"model": "tiny", "messages": hello["messages"], "temperature": 5}).to_string(),
        key,
    );
    assert_eq!(range.error(400)["param"], "temperature");
    request("GET", &server.url("/nowhere"), None, key).error(404);
    let adapters = request("POST", &server.url("/adapters"), Some("{}"), key);
    adapters.error(403);
}

#[test]
fn max_context_caps_prompt_and_completion() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _, _) = tiny_server(tmp.path(), &["--max-context", "40"]);
    let body = |prompt: &str| {
        json!({"model": "tiny", "prompt": prompt, "max_tokens": 100, "ignore_eos": true,
               "temperature": 0})
    };
    let capped = post(&server, "/completions", &body(&"b".repeat(30))).json();
    // One token per character: 30 prompt tokens leave 10 of the 40.
    assert_eq!(capped["usage"]["prompt_tokens"], 30);
    assert_eq!(capped["usage"]["completion_tokens"], 10);
    assert_eq!(capped["choices"][0]["finish_reason"], "length");
    let refused = post(&server, "/completions", &body(&"b".repeat(45)));
    assert_eq!(refused.error(400)["code"], "context_length_exceeded");
}

#[test]
fn a_server_beyond_loopback_needs_a_key() {
    let run = hone(&["serve", "--model", "no/such-model", "--host", "0.0.0.0"]);
    let line = run.error();
    assert!(line.contains("--api-key"), "{line}");
}

#[test]
fn streaming_follows_openais_format_and_equals_the_plain_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, model, template) = tiny_server(tmp.path(), &[]);
    let prompt = greedy_prompt();
    let messages = json!([{"role": "user", "content": prompt}]);
    let plain = post(
        &server,
        "/chat/completions",
        &json!({"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 12}),
    );
    assert_eq!(plain.status, 200, "{}", plain.body);
    let plain = plain.json();
    assert_eq!(plain["object"], "chat.completion");
    let text = plain["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let usage = &plain["usage"];
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    let generated = hone(&[
        "generate",
        "--model",
        arg(&model),
        "--chat",
        "--chat-template",
        arg(&template),
        "--prompt",
        &prompt,
        "--max-new-tokens",
        "12",
    ]);
    assert_eq!(generated.ok(), format!("{text}\n"));

    let streamed = post(
        &server,
        "/chat/completions",
        &json!({"model": "tiny", "messages": messages,
        "temperature": 0, "max_tokens": 12, "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(streamed.status, 200);
    assert!(
        streamed.content_type.starts_with("text/event-stream"),
        "{}",
        streamed.content_type
    );
    let data = sse_data(&streamed.body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let id = &chunks[0]["id"];
    for c in &chunks {
        assert_eq!(
            (&c["id"], &c["object"]),
            (id, &json!("chat.completion.chunk"))
        );
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(&usage_chunk["usage"], usage);
    let (finish, content) = rest.split_last().unwrap();
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(
        finish["choices"][0]["finish_reason"],
        plain["choices"][0]["finish_reason"]
    );
    let joined: String = content
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, text);
    assert!(rest.iter().all(|c| c["usage"].is_null()));

    // The completions API: a raw prompt, as `hone generate` without --chat.
    let raw = post(
        &server,
        "/completions",
        &json!({"model": "tiny", "prompt": prompt, "temperature": 0, "max_tokens": 8}),
    );
    let raw_text = completion_text(&raw);
    assert_eq!(raw_text, generate(&model, &prompt, "8", None));
    let raw_stream = post(
        &server,
        "/completions",
        &json!({"model": "tiny", "prompt": prompt, "temperature": 0,
        "max_tokens": 8, "stream": true}),
    );
    assert_eq!(streamed_completion_text(&raw_stream.body), raw_text);
}

#[test]
fn n_choices_and_log_probabilities() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _, _) = tiny_server(tmp.path(), &[]);
    let messages = json!([{"role": "user", "content": greedy_prompt()}]);
    let two = post(
        &server,
        "/chat/completions",
        &json!({"model": "tiny", "messages": messages, "n": 2,
        "temperature": 1.0, "seed": 5, "max_tokens": 6}),
    )
    .json();
    let choices = two["choices"].as_array().unwrap();
    assert_eq!(
        choices
            .iter()
            .map(|c| c["index"].clone())
            .collect::<Vec<_>>(),
        vec![json!(0), json!(1)]
    );
    let again = post(
        &server,
        "/chat/completions",
        &json!({"model": "tiny", "messages": messages, "n": 2,
        "temperature": 1.0, "seed": 5, "max_tokens": 6}),
    )
    .json();
    assert_eq!(
        two["choices"], again["choices"],
        "the same seed samples the same"
    );

    let greedy = post(
        &server,
        "/chat/completions",
        &json!({"model": "tiny", "messages": messages,
        "temperature": 0, "max_tokens": 6, "logprobs": true, "top_logprobs": 3}),
    )
    .json();
    let content = greedy["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(
        content.len() as u64,
        greedy["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(
            (&top[0]["token"], &top[0]["logprob"]),
            (&entry["token"], &entry["logprob"])
        );
        let lp = entry["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0 && lp >= top[2]["logprob"].as_f64().unwrap());
    }
}

/// `fixtures/adapters/llama-tied-qv` copied to `dir` with `lora_alpha` set: another adapter for
/// the same base.
fn adapter_copy(dir: &Path, alpha: f64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let source = fixture("adapters/llama-tied-qv");
    std::fs::copy(
        source.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut config = read_json(&source.join("adapter_config.json"));
    config["lora_alpha"] = json!(alpha);
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    dir.to_path_buf()
}

#[test]
fn adapters_share_the_server_and_answer_as_generate_does() {
    let tmp = tempfile::tempdir().unwrap();
    let one = fixture("adapters/llama-tied-qv");
    let two = adapter_copy(&tmp.path().join("two"), 32.0);
    let (one_arg, two_arg) = (
        format!("one={}", one.display()),
        format!("two={}", two.display()),
    );
    let (server, model, _) =
        tiny_server(tmp.path(), &["--adapter", &one_arg, "--adapter", &two_arg]);
    let models = request("GET", &server.url("/models"), None, None).json();
    let listed: Vec<(Value, Value)> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].clone(), m["parent"].clone()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (json!("tiny"), json!(null)),
            (json!("one"), json!("tiny")),
            (json!("two"), json!("tiny"))
        ]
    );

    let prompt = Arc::new(greedy_prompt());
    let server = Arc::new(server);
    let barrier = Arc::new(Barrier::new(3));
    let threads: Vec<_> = ["tiny", "one", "two"]
        .iter()
        .map(|name| {
            let (server, barrier, prompt) = (server.clone(), barrier.clone(), prompt.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let body =
                    json!({"model": name, "prompt": *prompt, "temperature": 0, "max_tokens": 8});
                completion_text(&post(&server, "/completions", &body))
            })
        })
        .collect();
    let texts: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let generate = |adapter: Option<&Path>| generate(&model, &prompt, "8", adapter);
    assert_eq!(
        texts,
        vec![generate(None), generate(Some(&one)), generate(Some(&two))]
    );
    assert_ne!(
        texts[0], texts[1],
        "the fixture must tell the adapter apart"
    );
}

#[test]
fn a_training_run_is_served_with_its_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let run = adapter_copy(&tmp.path().join("run"), 8.0);
    adapter_copy(&run.join("checkpoint-20"), 16.0);
    adapter_copy(&run.join("checkpoint-10"), 4.0);
    std::fs::create_dir_all(run.join("checkpoint-30")).unwrap();
    let spec = format!("sft={}", run.display());
    let (server, _, _) = tiny_server(tmp.path(), &["--adapter", &spec]);
    let models = request("GET", &server.url("/models"), None, None).json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["tiny", "sft", "sft/checkpoint-10", "sft/checkpoint-20"]
    );
    let body = json!({"model": "sft/checkpoint-10", "prompt": greedy_prompt(), "max_tokens": 2});
    assert_eq!(post(&server, "/completions", &body).status, 200);
}

#[test]
fn adapters_load_and_unload_at_run_time() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("adapters");
    let qv = adapter_copy(&root.join("qv"), 8.0);
    std::fs::create_dir_all(tmp.path().join("elsewhere")).unwrap();
    let (server, model, _) = tiny_server(tmp.path(), &["--adapter-dir", arg(&root)]);
    let load = |body: Value| {
        request(
            "POST",
            &server.url("/adapters"),
            Some(&body.to_string()),
            None,
        )
    };
    let loaded = load(json!({"name": "late", "path": "qv"}));
    assert_eq!(loaded.status, 200, "{}", loaded.body);
    assert_eq!(loaded.json()["parent"], "tiny");
    assert_eq!(
        load(json!({"name": "late", "path": "qv"})).error(409)["type"],
        "invalid_request_error"
    );
    assert_eq!(
        load(json!({"name": "x", "path": "../elsewhere"})).error(400)["param"],
        "path"
    );

    let prompt = greedy_prompt();
    let body = json!({"model": "late", "prompt": prompt, "temperature": 0, "max_tokens": 8});
    let adapted = completion_text(&post(&server, "/completions", &body));
    assert_eq!(adapted, generate(&model, &prompt, "8", Some(&qv)));

    // A request that started with the adapter finishes with it, although it is unloaded meanwhile.
    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    let stream = OpenStream::start(&server, "/completions", &streaming);
    let deleted = request("DELETE", &server.url("/adapters/late"), None, None);
    assert_eq!(
        deleted.json(),
        json!({"id": "late", "object": "model", "deleted": true})
    );
    assert_eq!(streamed_completion_text(&stream.finish()), adapted);
    post(&server, "/completions", &body).error(404);
    request("DELETE", &server.url("/adapters/late"), None, None).error(404);
}

/// A streaming request under way: its first line read (the request is running), the rest unread.
struct OpenStream {
    first: String,
    reader: BufReader<Box<dyn Read + Send + Sync>>,
}

impl OpenStream {
    fn start(server: &Server, path: &str, body: &Value) -> OpenStream {
        let agent = ureq::AgentBuilder::new().build();
        let response = agent
            .post(&server.url(path))
            .send_string(&body.to_string())
            .unwrap();
        let mut reader = BufReader::new(response.into_reader());
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        assert!(first.starts_with("data: "), "{first}");
        OpenStream { first, reader }
    }

    /// The whole body, once the server ends it.
    fn finish(mut self) -> String {
        let mut rest = String::new();
        self.reader.read_to_string(&mut rest).unwrap();
        self.first + &rest
    }
}

/// The total of `hone_generation_tokens_total` over every model.
fn generated_tokens(server: &Server) -> u64 {
    let text = request("GET", &server.url("/metrics"), None, None).body;
    text.lines()
        .filter(|l| l.starts_with("hone_generation_tokens_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn a_client_that_leaves_frees_its_slot_and_a_full_queue_answers_429() {
    let Some(model) = real_model() else { return };
    let server = Server::start(
        &model,
        &[
            "--served-name",
            "smol",
            "--max-concurrency",
            "1",
            "--max-queue",
            "0",
        ],
    );
    let long = json!({"model": "smol", "prompt": "Once upon a time", "temperature": 0, "max_tokens": 400,
        "ignore_eos": true, "stream": true});
    let stream = OpenStream::start(&server, "/completions", &long);
    // The one slot is taken and nothing may wait.
    let short = json!({"model": "smol", "prompt": "Hello", "temperature": 0, "max_tokens": 4});
    let busy = post(&server, "/completions", &short);
    assert_eq!(busy.error(429)["type"], "rate_limit_error");
    assert_eq!(busy.retry_after.as_deref(), Some("1"));
    drop(stream);
    // The engine notices the closed stream before its next step; until then the slot is busy.
    let mut answered = None;
    for _ in 0..500 {
        let a = post(&server, "/completions", &short);
        if a.status != 429 {
            answered = Some(a);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let answered = answered.expect("the slot was never freed");
    assert_eq!(answered.status, 200, "{}", answered.body);
    // Had the abandoned request run on, it would have made all 400 tokens before this one began.
    let total = generated_tokens(&server);
    assert!(
        total < 400,
        "{total} tokens generated: the abandoned request kept its slot"
    );
}

/// A ChatML template that lists the tools and asks for Hermes `<tool_call>` blocks, as Qwen2.5's
/// does at length.
const HERMES: &str =
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t.function.name }} \
    {% endfor %}</tools> Call: <tool_call>{\"name\": …}</tool_call><|im_end|>\n{% endif %}\
    {% for m in messages %}<|im_start|>{{ m.role }}\n{% for c in m.tool_calls or [] %}<tool_call>\
    {{ c.function | tojson }}</tool_call>{% endfor %}{{ m.content }}<|im_end|>\n{% endfor %}\
    {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Function calling: the tools reach a template that offers them in the Hermes format (Qwen2.5's),
/// a conversation with earlier calls (arguments as OpenAI's JSON strings) and tool results
/// renders; a template that cannot offer tools, `tool_choice: required` and arguments that are
/// not JSON are refused naming the parameter. (Reading calls back is `serve::tools`' unit tests:
/// the tiny model writes no `<tool_call>` blocks.)
#[test]
fn tools_reach_a_template_that_offers_them() {
    let dir = tempfile::tempdir().unwrap();
    let (chatml, model, _) = tiny_server(dir.path(), &[]);
    let tools = json!([{"type": "function", "function": {"name": "wx",
        "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let question = json!({"role": "user", "content": "Oslo?"});
    let ask = |messages: Value, extra: Value| {
        let mut body = json!({"model": "tiny", "messages": messages, "max_tokens": 2});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let with_tools = ask(json!([question]), json!({"tools": tools}));
    let refused = post(&chatml, "/chat/completions", &with_tools).error(400);
    assert_eq!(refused["param"], "tools", "{refused}");

    // Qwen2.5's way of offering tools, short enough for the tiny model's 256-token context.
    let hermes = write(dir.path(), "hermes.jinja", HERMES);
    let qwen = Server::start(
        &model,
        &["--served-name", "tiny", "--chat-template", arg(&hermes)],
    );
    let prompt_tokens = |answer: Answer| {
        let body = answer.json();
        body["usage"]["prompt_tokens"]
            .as_u64()
            .unwrap_or_else(|| panic!("{body}"))
    };
    let plain = prompt_tokens(post(
        &qwen,
        "/chat/completions",
        &ask(json!([question]), json!({})),
    ));
    let offered = prompt_tokens(post(&qwen, "/chat/completions", &with_tools));
    assert!(offered > plain + 20, "{plain} → {offered}");
    let none = ask(
        json!([question]),
        json!({"tools": tools, "tool_choice": "none"}),
    );
    assert_eq!(
        prompt_tokens(post(&qwen, "/chat/completions", &none)),
        plain
    );

    let call = |arguments: &str| {
        json!([question,
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "wx", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"t\": 12}"}])
    };
    let history = ask(call("{\"city\": \"Oslo\"}"), json!({}));
    let answered = post(&qwen, "/chat/completions", &history);
    assert_eq!(answered.status, 200, "{}", answered.body);
    let broken = ask(call("{city"), json!({}));
    let error = post(&qwen, "/chat/completions", &broken).error(400);
    assert_eq!(
        error["param"],
        "messages[1].tool_calls[0].function.arguments"
    );
    let required = ask(
        json!([question]),
        json!({"tools": tools, "tool_choice": "required"}),
    );
    let error = post(&qwen, "/chat/completions", &required).error(400);
    assert_eq!(error["param"], "tool_choice");
}

/// A reward model trained by `hone train` (`stage: rm`, LoRA) is served for LLaMA-Factory's
/// `/v1/score/evaluation`: each text's score equals the run's own `do_predict` score of the same
/// text (which it rounds to two decimals), a text scores alike alone or among others, and a model
/// without a value head is refused naming `model`.
#[test]
fn a_reward_model_scores_texts_as_its_training_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(dir.path());
    let pair = |prompt: &str, chosen: &str, rejected: &str| json!({"instruction": prompt, "chosen": chosen, "rejected": rejected});
    let train = json!([
        pair("Say yes", "Yes.", "No way"),
        pair("Greet me", "Hello there", "Go away"),
        pair("Count to two", "One, two", "Three"),
        pair("Be kind", "Thank you", "Whatever"),
    ]);
    let eval = json!([
        pair("Say hi", "Hi!", "Bye"),
        pair("Add 1+1", "It is 2", "It is 5")
    ]);
    write(dir.path(), "train.json", &train.to_string());
    write(dir.path(), "eval.json", &eval.to_string());
    let entry = |file: &str| json!({"file_name": file, "ranking": true});
    let info = json!({"train": entry("train.json"), "eval": entry("eval.json")});
    write(dir.path(), "dataset_info.json", &info.to_string());
    // Contents joined by spaces: the rendered text is known exactly.
    let template = write(
        dir.path(),
        "plain.jinja",
        "{% for m in messages %}{{ m.content }} {% endfor %}",
    );
    let out = dir.path().join("out");
    let config = format!(
        "model_name_or_path: {}\nstage: rm\nfinetuning_type: lora\nlora_target: all\n\
         dataset: train\neval_dataset: eval\ndataset_dir: {}\ntemplate: {}\ncutoff_len: 64\n\
         output_dir: {}\nmax_steps: 3\nlearning_rate: 1.0e-2\nper_device_train_batch_size: 2\n\
         do_predict: true\n",
        model.display(),
        dir.path().display(),
        template.display(),
        out.display()
    );
    let config = write(dir.path(), "rm.yaml", &config);
    hone(&["train", arg(&config)]).ok();
    let predicted: Vec<Value> = std::fs::read_to_string(out.join("generated_predictions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let adapter = format!("rm={}", out.display());
    let server = Server::start(
        &model,
        &[
            "--served-name",
            "tiny",
            "--chat-template",
            arg(&template),
            "--adapter",
            &adapter,
        ],
    );
    let texts: Vec<String> = eval
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let prompt = p["instruction"].as_str().unwrap();
            ["chosen", "rejected"].map(|k| format!("{prompt} {} ", p[k].as_str().unwrap()))
        })
        .collect();
    let score = |texts: &[String]| {
        let answer = post(
            &server,
            "/score/evaluation",
            &json!({"model": "rm", "messages": texts}),
        );
        let body = answer.json();
        assert_eq!(body["object"], "score.evaluation", "{body}");
        assert!(body["id"].as_str().unwrap().starts_with("scoreval-"));
        body["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_f64().unwrap())
            .collect::<Vec<f64>>()
    };
    let scores = score(&texts);
    assert_eq!((predicted.len(), scores.len()), (2, 4));
    assert!(
        scores.iter().all(|s| s.is_finite()) && scores[0] != scores[1],
        "{scores:?}"
    );
    for (k, p) in predicted.iter().enumerate() {
        for (j, key) in ["chosen", "rejected"].iter().enumerate() {
            let want = p[key].as_f64().unwrap();
            let got = scores[2 * k + j];
            assert!(
                (got - want).abs() <= 0.005 + 1e-9,
                "pair {k} {key}: {got} vs {want}"
            );
        }
    }
    assert_eq!(score(&texts[1..2]), [scores[1]]);
    let base = post(
        &server,
        "/score/evaluation",
        &json!({"model": "tiny", "messages": ["a"]}),
    );
    assert_eq!(base.error(400)["param"], "model");
}
