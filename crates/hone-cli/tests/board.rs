//! `hone board` over real HTTP on an ephemeral loopback port: the runs list and a run's detail,
//! paths confined to `--runs`, the log as server-sent events replayed from `Last-Event-ID` and
//! followed as it grows, the compare view's config diff and linked report, the host-name and
//! token guards, a real `hone train` run seen going and finished, runs started and stopped
//! from the board, and the arena: adapters and checkpoints answering through the board's OpenAI
//! route, a rating written as preference pairs that `stage: dpo` trains on.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{arg, fixture, hone, train_config, CHATML};
use serde_json::Value;

/// A running `hone board`, stopped when dropped.
struct Board {
    child: Child,
    addr: String,
}

impl Board {
    fn start(runs: &Path, extra: &[&str]) -> Board {
        let mut child = common::hone_command(&["board", "--runs", arg(runs), "--port", "0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start hone board");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("hone board exited before listening")
                .unwrap();
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split('/').next().unwrap().to_string();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Board { child, addr }
    }

    /// A GET with `headers` (Host is the board's address unless given).
    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.request("GET", path, headers, "")
    }

    /// A POST of `body` as JSON.
    fn post(&self, path: &str, body: &Value) -> Answer {
        let json = [("Content-Type", "application/json")];
        self.request("POST", path, &json, &body.to_string())
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut stream = self.send_request(method, path, headers, body);
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_string(),
        }
    }

    fn json(&self, path: &str) -> Value {
        let answer = self.get(path, &[]);
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        serde_json::from_str(&answer.body).unwrap()
    }

    fn send(&self, path: &str, headers: &[(&str, &str)]) -> TcpStream {
        self.send_request("GET", path, headers, "")
    }

    fn send_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> TcpStream {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            request += &format!("Host: {}\r\n", self.addr);
        }
        for (k, v) in headers {
            request += &format!("{k}: {v}\r\n");
        }
        stream
            .write_all((request + "\r\n" + body).as_bytes())
            .unwrap();
        stream
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Writes `dir/name`, creating `dir`.
fn put(dir: &Path, name: &str, contents: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), contents).unwrap();
}

/// A finished run under `root/name` with a config, a log and results.
fn fake_run(root: &Path, name: &str, rank: u32, log: &str) {
    let dir = root.join(name);
    let args = format!(
        "### model\nmodel_name_or_path: models/m.gguf\n### method\nstage: sft\n\
         finetuning_type: lora\nlora_rank: {rank}\n### dataset\ndataset: identity\n"
    );
    put(&dir, "training_args.yaml", &args);
    put(&dir, "trainer_log.jsonl", log);
    put(
        &dir,
        "all_results.json",
        "{\"train_loss\": 1.5, \"epoch\": 1.0}",
    );
}

fn log_line(step: u64, key: &str, value: &str) -> String {
    format!(
        "{{\"current_steps\": {step}, \"total_steps\": 4, \"{key}\": {value}, \
         \"elapsed_time\": \"0:00:0{step}\"}}\n"
    )
}

#[test]
fn runs_and_a_run_are_listed_and_paths_stay_inside_the_folder() {
    let root = tempfile::tempdir().unwrap();
    let log: String = (1..=3).map(|s| log_line(s, "loss", "2.0")).collect();
    fake_run(root.path(), "a", 8, &log);
    fake_run(root.path(), "group/b", 16, "");
    put(&root.path().join("not-a-run"), "notes.txt", "hi");
    let board = Board::start(root.path(), &[]);

    let runs = board.json("/api/runs");
    let ids: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "group/b"]);
    let a = &runs["runs"][0];
    assert_eq!(a["status"], "finished");
    assert_eq!(a["method"], "sft/lora");
    assert_eq!(a["dataset"], "identity");
    assert_eq!(
        (a["step"].as_u64(), a["total_steps"].as_u64()),
        (Some(3), Some(4))
    );
    assert_eq!(a["wall_seconds"], 3.0);

    let detail = board.json("/api/run?id=a");
    assert_eq!(detail["config"]["lora_rank"], "8");
    assert_eq!(detail["results"]["train_loss"], 1.5);
    for bad in ["../a", "not-a-run", "%2Fetc", "a/../../x"] {
        let answer = board.get(&format!("/api/run?id={bad}"), &[]);
        assert_eq!(answer.status, 404, "{bad}: {}", answer.body);
    }
    let page = board.get("/", &[]);
    assert_eq!(page.status, 200);
    assert!(page
        .body
        .contains("<script type=\"module\" src=\"/board.js\">"));
    let module = board.get("/charts.js", &[]);
    assert_eq!(module.status, 200);
    assert!(module
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(board.get("/nothing.js", &[]).status, 404);
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .starts_with("default-src 'self'"));
}

/// Reads server-sent events from `stream` until `want` `log` events came; returns their ids and
/// the steps in their data.
fn read_log_events(stream: &mut BufReader<TcpStream>, want: usize) -> Vec<(String, u64)> {
    let mut events = Vec::new();
    let (mut id, mut kind) = (String::new(), String::new());
    while events.len() < want {
        let mut line = String::new();
        assert!(stream.read_line(&mut line).unwrap() > 0, "the stream ended");
        let line = line.trim_end();
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.to_string();
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = v.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            if kind == "log" {
                let data: Value = serde_json::from_str(data).unwrap();
                events.push((id.clone(), data["step"].as_u64().unwrap()));
            }
        }
    }
    events
}

#[test]
fn the_log_streams_from_last_event_id_and_follows_new_lines() {
    let root = tempfile::tempdir().unwrap();
    let log = [
        log_line(1, "loss", "2.0"),
        log_line(2, "loss", "1.9"),
        log_line(2, "eval_loss", "2.1"),
        log_line(3, "loss", "1.8"),
    ]
    .concat();
    fake_run(root.path(), "a", 8, &log);
    let board = Board::start(root.path(), &[]);

    let mut all = BufReader::new(board.send("/api/log?id=a", &[]));
    let ids: Vec<String> = read_log_events(&mut all, 4)
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(ids, ["1", "2", "2.1", "3"]);

    // A client that reconnects after id 2 gets the evaluation line of step 2 and what followed.
    let mut resumed = BufReader::new(board.send("/api/log?id=a", &[("Last-Event-ID", "2")]));
    let ids: Vec<String> = read_log_events(&mut resumed, 2)
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(ids, ["2.1", "3"]);

    // A line appended while both watch reaches both, the NaN as an alert.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(root.path().join("a/trainer_log.jsonl"))
        .unwrap();
    file.write_all(log_line(4, "loss", "NaN").as_bytes())
        .unwrap();
    let started = Instant::now();
    assert_eq!(read_log_events(&mut all, 1), [("4".to_string(), 4)]);
    assert_eq!(read_log_events(&mut resumed, 1), [("4".to_string(), 4)]);
    assert!(started.elapsed() < Duration::from_secs(10));
    let detail = board.json("/api/run?id=a");
    assert_eq!(detail["alerts"][0]["kind"], "non_finite");
    assert_eq!(detail["alerts"][0]["message"], "loss is NaN at step 4");
}

#[test]
fn compare_shows_the_keys_that_differ_and_the_reports_that_cover_the_runs() {
    let root = tempfile::tempdir().unwrap();
    fake_run(root.path(), "r8", 8, &log_line(1, "eval_loss", "1.25"));
    fake_run(root.path(), "r16", 16, &log_line(1, "eval_loss", "1.5"));
    let report = "### r8 (adapter ../r8)\n";
    put(&root.path().join("reports"), "cmp.md", report);
    put(&root.path().join("reports"), "cmp.html", "<h1>report</h1>");
    let board = Board::start(root.path(), &[]);

    let cmp = board.json("/api/compare?id=r16&id=r8");
    assert_eq!(cmp["diff"].as_array().unwrap().len(), 1, "{cmp}");
    assert_eq!(cmp["diff"][0]["key"], "lora_rank");
    assert_eq!(cmp["diff"][0]["values"], serde_json::json!(["16", "8"]));
    assert_eq!(cmp["same"], 4);
    assert_eq!(cmp["runs"][1]["best_eval_loss"], 1.25);
    assert_eq!(cmp["results"]["train_loss"], serde_json::json!([1.5, 1.5]));
    assert_eq!(cmp["reports"][0]["id"], "reports/cmp.html");
    assert_eq!(cmp["reports"][0]["runs"], serde_json::json!([1]));
    let html = board.get("/api/report?id=reports/cmp.html", &[]);
    assert_eq!((html.status, html.body.as_str()), (200, "<h1>report</h1>"));
    assert_eq!(
        board.get("/api/report?id=r8/all_results.json", &[]).status,
        404
    );
    assert_eq!(board.get("/api/compare?id=r8", &[]).status, 400);
}

#[test]
fn other_host_names_and_requests_without_the_token_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let open = Board::start(root.path(), &[]);
    let rebound = open.get("/api/runs", &[("Host", "attacker.example:7860")]);
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    drop(open);

    let board = Board::start(root.path(), &["--token", "s3cret"]);
    assert_eq!(board.get("/api/runs", &[]).status, 401);
    assert_eq!(board.get("/?token=wrong", &[]).status, 401);
    let login = board.get("/?token=s3cret", &[]);
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), Some("/"));
    let cookie = login.header("set-cookie").unwrap();
    assert!(cookie.starts_with("hone_board_token=s3cret;") && cookie.contains("HttpOnly"));
    let with_cookie = board.get("/api/runs", &[("Cookie", "hone_board_token=s3cret")]);
    assert_eq!(with_cookie.status, 200);
    let with_bearer = board.get("/api/runs", &[("Authorization", "Bearer s3cret")]);
    assert_eq!(with_bearer.status, 200);

    let wide = hone(&["board", "--runs", arg(root.path()), "--host", "0.0.0.0"]);
    assert!(wide.error().contains("needs a token"), "{}", wide.stderr);
}

#[test]
fn a_training_run_is_seen_finished_with_its_steps() {
    let root = tempfile::tempdir().unwrap();
    let config = train_config(root.path());
    let out = format!("output_dir={}", root.path().join("runs/tiny").display());
    hone(&[
        "train",
        arg(&config),
        &out,
        "max_steps=3",
        "logging_steps=1",
    ])
    .ok();
    let board = Board::start(&root.path().join("runs"), &[]);
    let runs = board.json("/api/runs");
    let run = &runs["runs"][0];
    assert_eq!(run["id"], "tiny");
    assert_eq!(run["status"], "finished");
    assert_eq!(
        (run["step"].as_u64(), run["total_steps"].as_u64()),
        (Some(3), Some(3))
    );
    assert!(run["last_loss"].as_f64().unwrap().is_finite());
    let detail = board.json("/api/run?id=tiny");
    assert_eq!(detail["config"]["max_steps"], "3");
}

/// Polls `/api/runs` until `run` satisfies `done`; returns that summary.
fn wait_for_run(board: &Board, run: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let runs = board.json("/api/runs");
        let found = runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == run)
            .cloned();
        if let Some(summary) = found.filter(|s| done(s)) {
            return summary;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{run}: {runs}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_run_is_checked_started_and_stopped_from_the_board() {
    let root = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(train_config(root.path())).unwrap();
    let yaml = config
        .replace("max_steps: 12", "max_steps: 100000")
        .replace("save_steps: 1000", "save_steps: 1000000");
    std::fs::create_dir(root.path().join("runs")).unwrap();
    let board = Board::start(&root.path().join("runs"), &[]);

    let request = serde_json::json!({"name": "live", "yaml": yaml});
    let review = board.post("/api/launch/check", &request);
    assert_eq!(review.status, 200, "{}", review.body);
    let review: Value = serde_json::from_str(&review.body).unwrap();
    assert!(review["plan"]["table"].as_str().unwrap().contains("peak"));
    assert_eq!(review["plan"]["fits"], true);
    let sample = &review["data"]["samples"][0]["pieces"];
    assert!(sample
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["trained"] == true));
    let bad = serde_json::json!({"name": "live", "yaml": "learning_rate: fast\n"});
    let refused = board.post("/api/launch/check", &bad);
    assert_eq!(refused.status, 400);
    assert!(
        refused.body.contains("live.yaml:1: learning_rate"),
        "{}",
        refused.body
    );

    // A form on another site cannot start anything.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    assert_eq!(
        board.request("POST", "/api/launch", &form, "name=x").status,
        403
    );

    let started = board.post("/api/launch", &request);
    assert_eq!(started.status, 200, "{}", started.body);
    assert!(
        started.body.contains("\"run\":\"live\""),
        "{}",
        started.body
    );
    wait_for_run(&board, "live", |r| {
        r["status"] == "running" && r["step"].as_u64() > Some(2)
    });
    assert_eq!(board.json("/api/run?id=live")["stoppable"], true);
    assert_eq!(
        board.post("/api/launch", &request).status,
        400,
        "the name is taken"
    );

    let stop = board.post("/api/stop?id=live", &Value::Null);
    assert_eq!(stop.status, 200, "{}", stop.body);
    let stopped = wait_for_run(&board, "live", |r| r["status"] != "running");
    assert_eq!(stopped["status"], "interrupted");
    assert_eq!(
        stopped["checkpoints"].as_array().unwrap().len(),
        1,
        "{stopped}"
    );
    let launches = board.json("/api/launches");
    assert_eq!(launches["launches"][0]["exit_code"], 0, "{launches}");
    assert_eq!(board.post("/api/stop?id=live", &Value::Null).status, 409);
}

#[test]
fn the_arena_serves_runs_adapters_and_its_ratings_train_dpo() {
    let root = tempfile::tempdir().unwrap();
    let config = train_config(root.path());
    let runs = root.path().join("runs");
    let out = format!("output_dir={}", runs.join("lora").display());
    hone(&["train", arg(&config), &out, "max_steps=4", "save_steps=2"]).ok();
    std::fs::write(root.path().join("chatml.jinja"), CHATML).unwrap();
    let model = fixture("tokenizer/tiny-spm.gguf");
    let template = root.path().join("chatml.jinja");
    let extra = ["--model", arg(&model), "--chat-template", arg(&template)];
    let board = Board::start(&runs, &extra);

    let info = board.json("/api/arena");
    assert_eq!(info["available"], true, "{info}");
    let names: Vec<&str> = info["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let base = model.display().to_string();
    assert_eq!(
        names,
        [
            base.as_str(),
            "lora",
            "lora/checkpoint-2",
            "lora/checkpoint-4"
        ]
    );
    let models = serde_json::json!({"models": ["lora", "lora/checkpoint-2", base]});
    assert_eq!(board.post("/api/arena/load", &models).status, 200);
    let outside = serde_json::json!({"models": ["../lora"]});
    assert_eq!(board.post("/api/arena/load", &outside).status, 400);

    let mut answers = Vec::new();
    for name in ["lora", "lora/checkpoint-2"] {
        let request = serde_json::json!({"model": name, "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": "Who are you?"}]});
        let answer = board.post("/v1/chat/completions", &request);
        assert_eq!(answer.status, 200, "{}", answer.body);
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["model"], name);
        answers.push(
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Distinct texts, so that the rating makes a pair whatever the tiny model says.
    let rating = serde_json::json!({
        "prompt": "Who are you?",
        "answers": [
            {"model": "lora", "text": format!("A: {}", answers[0]), "scores": {"relevance": 5}},
            {"model": "lora/checkpoint-2", "text": format!("B: {}", answers[1]),
             "scores": {"relevance": 2, "creativity": 3}},
        ],
        "preferred": 0,
    });
    let saved = board.post("/api/arena/rate", &rating);
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert!(saved.body.contains("\"pairs\":1"), "{}", saved.body);
    let bad = serde_json::json!({"prompt": "q", "answers": [], "preferred": null});
    assert_eq!(board.post("/api/arena/rate", &bad).status, 400);

    let arena = runs.join("arena");
    let dpo_out = format!("output_dir={}", root.path().join("dpo").display());
    let dataset_dir = format!("dataset_dir={}", arena.display());
    let dpo = hone(&[
        "train",
        arg(&config),
        &dpo_out,
        "stage=dpo",
        "dataset=arena_dpo",
        &dataset_dir,
        "max_steps=1",
        "per_device_train_batch_size=1",
        "gradient_accumulation_steps=1",
    ]);
    dpo.ok();
    assert!(dpo.stderr.contains("step 1/1"), "{}", dpo.stderr);
}
