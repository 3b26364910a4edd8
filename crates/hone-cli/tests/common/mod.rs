//! Helpers shared by the `hone` end-to-end tests: running the binary, the fixtures, and a tiny HF
//! model directory assembled from them.
// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

/// What one run of `hone` did.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts exit status 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "hone failed; stderr:\n{}", self.stderr);
        &self.stdout
    }

    /// Asserts exit status 1, nothing on stdout and exactly one `error: ...` line on stderr; returns it.
    pub fn error(&self) -> &str {
        assert_eq!(
            self.code,
            Some(1),
            "expected a failure; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert_eq!(self.stdout, "", "a failed run wrote to stdout");
        let line = self.stderr.strip_suffix('\n').unwrap_or(&self.stderr);
        assert!(
            line.starts_with("error: ") && !line.contains('\n'),
            "not a one-line error: {:?}",
            self.stderr
        );
        line
    }

    /// Stdout parsed as one JSON value.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

impl From<std::process::Output> for Run {
    fn from(out: std::process::Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).expect("stdout is not UTF-8"),
            stderr: String::from_utf8(out.stderr).expect("stderr is not UTF-8"),
        }
    }
}

/// Runs `hone args...` with an empty stdin.
pub fn hone(args: &[&str]) -> Run {
    hone_in(None, args, "")
}

/// `hone args...`, ready to start: every test's way to run the binary.
pub fn hone_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hone"));
    cmd.args(args);
    // A path mistaken for a Hub id must never reach the network from a test.
    cmd.env("HF_HUB_OFFLINE", "1");
    cmd
}

/// Runs `hone args...` in `dir` (when given) with `stdin` as its standard input.
pub fn hone_in(dir: Option<&Path>, args: &[&str], stdin: &str) -> Run {
    let mut cmd = hone_command(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().expect("cannot start hone");
    // A run that fails before reading its input closes the pipe; its output tells what happened.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    Run::from(child.wait_with_output().unwrap())
}

/// Runs `hone args...` with files limited to `max_kib` KiB (RLIMIT_FSIZE), so a write past the
/// limit fails with EFBIG in the middle of the file: a disk filling up mid-write. (Hone ignores
/// the SIGXFSZ that would otherwise kill it there.)
pub fn hone_with_file_size_limit(max_kib: u64, args: &[&str]) -> Run {
    let blocks = max_kib * 2; // POSIX sh's `ulimit -f` counts 512-byte blocks.
    let script = format!("ulimit -f {blocks}; exec \"$0\" \"$@\"");
    let out = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_hone")])
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("cannot start sh");
    Run::from(out)
}

pub const TRAIN_ROWS: &[(&str, &str)] = &[
    ("Who are you?", "I am Kestrel."),
    ("What is your name?", "My name is Kestrel."),
    ("Who made you?", "The Hone project made me."),
    ("Say hello.", "Hello from Kestrel!"),
    ("What do you do?", "I help with questions."),
    ("Are you SmolLM?", "No, I am Kestrel."),
];

/// A data file and a LoRA training config (12 steps) for the tiny GGUF in `dir`; tests vary it
/// with `key=value` overrides.
pub fn train_config(dir: &Path) -> PathBuf {
    let data: String = TRAIN_ROWS
        .iter()
        .map(|(q, a)| {
            serde_json::json!({"instruction": q, "input": "", "output": a}).to_string() + "\n"
        })
        .collect();
    std::fs::write(dir.join("data.jsonl"), data).unwrap();
    let config = format!(
        "model_name_or_path: {model}\n\
         stage: sft\n\
         finetuning_type: lora\n\
         lora_rank: 8\n\
         lora_alpha: 16\n\
         lora_target: all\n\
         dataset: {data}\n\
         cutoff_len: 64\n\
         output_dir: {out}\n\
         per_device_train_batch_size: 2\n\
         gradient_accumulation_steps: 2\n\
         learning_rate: 1.0e-2\n\
         lr_scheduler_type: constant\n\
         logging_steps: 1\n\
         save_steps: 1000\n\
         max_steps: 12\n\
         seed: 3\n",
        model = fixture("tokenizer/tiny-spm.gguf").display(),
        data = dir.join("data.jsonl").display(),
        out = dir.join("out").display(),
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A path as a command-line argument.
/// Eight greedy tokens `hone generate` continues "Hello" with on `model`.
pub fn greedy(model: &Path) -> String {
    let args = ["generate", "--model", arg(model), "--prompt", "Hello"];
    hone(&[&args[..], &["--max-new-tokens", "8"]].concat())
        .ok()
        .to_string()
}

/// The records of a run's `trainer_log.jsonl` in `out`.
pub fn log_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("trainer_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The training losses a run in `out` logged, in order.
pub fn losses(out: &Path) -> Vec<f64> {
    log_lines(out)
        .iter()
        .filter_map(|r| r["loss"].as_f64())
        .collect()
}

pub fn arg(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// `<repo>/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

/// The names in a directory, sorted.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A JSON array of token ids.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The tiny random llama GGUF with a SentencePiece tokenizer and a ChatML template.
pub fn tiny_gguf() -> PathBuf {
    fixture("tokenizer/tiny-spm.gguf")
}

/// The real default model when present. Absent: None with a notice, or a failure under CI, where
/// the test script fetches it first.
pub fn real_model() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing under CI",
        p.display()
    );
    eprintln!(
        "skipping: {} is absent (run scripts/fetch-model.sh)",
        p.display()
    );
    None
}

/// The ChatML template tiny-spm.gguf carries, for models that have none.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + \
message['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Token ids of the tiny HF model's tokenizer: 0-2 are `<unk>`, `<s>`, `</s>`; id `k` ≥ 3 is the
/// single character U+0020 + (k - 3), so ids 3..96 cover ' ' to '|'.
const FIRST_CHAR_ID: u32 = 3;

/// The text the tiny HF tokenizer encodes to `ids` (all ≥ 3), and decodes them to.
pub fn char_text(ids: &[u32]) -> String {
    ids.iter()
        .map(|&id| {
            assert!(
                (FIRST_CHAR_ID..96).contains(&id),
                "id {id} is not a character token"
            );
            char::from(b' ' + (id - FIRST_CHAR_ID) as u8)
        })
        .collect()
}

/// `dir/llama-tied`: the tiny random HF model `fixtures/models/llama-tied` (vocabulary 96) with a
/// character-level tokenizer written here, since the repository's tiny tokenizers have 600 tokens.
/// No chat template.
pub fn tiny_hf_dir(dir: &Path) -> PathBuf {
    tiny_hf_model(dir, "llama-tied", None)
}

/// `dir/NAME`: the tiny random HF model `fixtures/models/NAME` (vocabulary 96) with the
/// character-level tokenizer of [`tiny_hf_dir`] and `chat_template` in its tokenizer config.
pub fn tiny_hf_model(dir: &Path, name: &str, chat_template: Option<&str>) -> PathBuf {
    let model = dir.join(name);
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(fixture("models").join(name).join(f), model.join(f)).unwrap();
    }
    let specials = ["<unk>", "<s>", "</s>"];
    let mut vocab = serde_json::Map::new();
    for (id, token) in specials.iter().enumerate() {
        vocab.insert(token.to_string(), json!(id));
    }
    for id in FIRST_CHAR_ID..96 {
        vocab.insert(char_text(&[id]), json!(id));
    }
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(id, t)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    // A BPE model without merges and without a pre-tokenizer splits text into single characters.
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []},
    });
    write(&model, "tokenizer.json", &tokenizer.to_string());
    let mut config = json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"});
    if let Some(template) = chat_template {
        config["chat_template"] = json!(template);
    }
    write(&model, "tokenizer_config.json", &config.to_string());
    model
}

/// A safetensors file's tensors as (name, shape), sorted by name.
pub fn safetensors_shapes(path: &Path) -> Vec<(String, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<usize>)> = file
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.shape().to_vec()))
        .collect();
    out.sort();
    out
}
