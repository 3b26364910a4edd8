//! Loading: every malformed-row class with its exact message, skip counting, dataset_info.json
//! (custom columns and tags, errors), JSON arrays against JSON Lines, format detection.

use std::path::{Path, PathBuf};

use super::*;
use crate::chat::Message;
use crate::data::rows::read_rows;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/data")
        .join(rel)
}

fn info_dir() -> PathBuf {
    fixture("info")
}

/// Each row of a direct file converted on its own: its line and its message (`Ok` rows: "ok").
fn row_outcomes(file: &str) -> Vec<(usize, String)> {
    let path = fixture(file);
    let source = Source {
        path: path.clone(),
        format: None,
        ranking: false,
    };
    let rows = read_rows(&path).unwrap();
    let format = detect_format(&source.path, &rows).unwrap();
    rows.into_iter()
        .map(|row| {
            let line = row.line;
            let outcome = match convert(row, &format, &path, Answer::Required) {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.to_string(),
            };
            (line, outcome)
        })
        .collect()
}

fn expect_rows(file: &str, expected: &[(usize, &str)]) {
    let prefix = format!("{}:", fixture(file).display());
    let got: Vec<(usize, String)> = row_outcomes(file)
        .into_iter()
        .map(|(line, msg)| {
            let msg = msg
                .strip_prefix(&format!("{prefix}{line}: "))
                .map_or(msg.clone(), str::to_owned);
            (line, msg)
        })
        .collect();
    let expected: Vec<(usize, String)> = expected.iter().map(|&(l, m)| (l, m.to_owned())).collect();
    assert_eq!(got, expected);
}

fn m(role: &str, content: &str) -> Message {
    Message::new(role, content)
}

#[test]
fn alpaca_row_errors_name_line_field_and_problem() {
    expect_rows(
        "bad_alpaca.jsonl",
        &[
            (1, "ok"),
            (2, "output: missing"),
            (3, "output: expected a string, found a number"),
            (4, "output: empty"),
            (5, "instruction: empty (and input is empty too)"),
            (
                6,
                "history[0]: expected a [query, response] pair of strings, found [\"only one\"]",
            ),
            (
                7,
                "not valid JSON at column 39: EOF while parsing an object",
            ),
            (9, "ok"),
            (10, "expected a JSON object, found a list"),
            (11, "history[0][1]: empty"),
            (12, "instruction: expected a string, found a number"),
            (
                13,
                "history: expected a list of [query, response] pairs, found a string",
            ),
        ],
    );
}

#[test]
fn sharegpt_row_errors_name_line_field_and_problem() {
    let ends =
        "the conversation ends here; it must end with a gpt or function_call turn (the response)";
    expect_rows(
        "bad_sharegpt.jsonl",
        &[
            (1, "ok"),
            (2, &format!("conversations[0].from: {ends}")),
            (
                3,
                "conversations[0].from: \"gpt\" is out of order: expected a human or observation turn here (turns alternate)",
            ),
            (
                4,
                "conversations[1].from: unknown role \"bot\" (expected human, gpt, observation, function_call or system)",
            ),
            (5, "conversations[1].value: empty"),
            (6, "conversations[0].value: missing"),
            (7, "conversations: expected a list of turns, found a string"),
            (8, "conversations: missing"),
            (
                9,
                "conversations[2].from: \"system\" is out of order: a system turn may only come first",
            ),
            (10, "conversations: has no human or gpt turns"),
            (11, "ok"),
            (12, "ok"),
            (13, "conversations[1]: expected an object, found a string"),
            (
                14,
                "conversations[2].from: \"gpt\" is out of order: expected a human or observation turn here (turns alternate)",
            ),
            (
                15,
                &format!("conversations[1].value: {CALL_SHAPE} (expected value at line 1 column 1)"),
            ),
            (16, &format!("conversations[1].value: {CALL_SHAPE}")),
            (17, "tools: not valid JSON: expected ident at line 1 column 2"),
            (18, "tools: expected a list of function schemas, found an object"),
            (19, "tools[0].name: missing"),
            (20, "ok"),
        ],
    );
}

const CALL_SHAPE: &str =
    "a function call is JSON: {\"name\": …, \"arguments\": {…}} or a list of them";

#[test]
fn strict_loading_stops_at_the_first_bad_row() {
    let path = fixture("bad_alpaca.jsonl");
    let err = load_dataset(path.to_str().unwrap(), &info_dir(), false).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        format!("{}:2: output: missing", path.display())
    );
    let row_error = err.downcast_ref::<RowError>().unwrap();
    assert_eq!(row_error.reason, SkipReason::MissingField);
    assert_eq!(row_error.field.as_deref(), Some("output"));
}

#[test]
fn skipping_counts_rows_by_reason() {
    let alpaca = fixture("bad_alpaca.jsonl");
    let sharegpt = fixture("bad_sharegpt.jsonl");
    let dataset = format!("{}, {}", alpaca.display(), sharegpt.display());
    let loaded = load_dataset(&dataset, &info_dir(), true).unwrap();
    assert_eq!(loaded.conversations.len(), 6);
    let s = &loaded.skipped;
    let counts = [
        (SkipReason::InvalidJson, 1),
        (SkipReason::NotAnObject, 1),
        (SkipReason::MissingField, 5),
        (SkipReason::WrongType, 9),
        (SkipReason::EmptyMessage, 5),
        (SkipReason::UnknownRole, 1),
        (SkipReason::RoleOrder, 4),
    ];
    for (reason, n) in counts {
        assert_eq!(s.count(reason), n, "{reason}");
    }
    assert_eq!(s.total(), 26);
    let text = s.to_string();
    assert!(
        text.starts_with(&format!(
            "26 rows skipped: 1 not valid JSON (first: {}:7: not valid JSON at column 39: ",
            alpaca.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "; 5 missing field (first: {}:2: output: missing); ",
            alpaca.display()
        )),
        "{text}"
    );
    assert_eq!(SkipSummary::default().to_string(), "no rows skipped");
}

#[test]
fn sharegpt_rows_map_roles_and_system() {
    let path = fixture("bad_sharegpt.jsonl");
    let loaded = load_dataset(path.to_str().unwrap(), &info_dir(), true).unwrap();
    let by_line = |line: usize| {
        loaded
            .conversations
            .iter()
            .find(|c| c.origin.line == line)
            .unwrap()
            .messages
            .clone()
    };
    assert_eq!(by_line(1), vec![m("user", "Hi"), m("assistant", "Hello")]);
    assert_eq!(
        by_line(11),
        vec![
            m("system", "Be nice."),
            m("user", "Hi"),
            m("assistant", "Hello")
        ]
    );
    // A function call becomes the assistant's tool call; the tools column's schemas are wrapped
    // in OpenAI's shape unless they already have it.
    let call = |name: &str, arguments: serde_json::Value| serde_json::json!({"type": "function", "function": {"name": name, "arguments": arguments}});
    let weather = serde_json::json!({"city": "Oslo", "days": 1});
    assert_eq!(
        by_line(12),
        vec![
            m("system", "Tools on."),
            m("user", "Weather?"),
            Message::tool_calls(vec![call("weather", weather)]),
            m("tool", "{\"sky\": \"clear\"}"),
            m("assistant", "Sunny."),
        ]
    );
    let parallel = loaded
        .conversations
        .iter()
        .find(|c| c.origin.line == 20)
        .unwrap();
    let calls = vec![
        call("a", serde_json::json!({})),
        call("b", serde_json::json!({"x": 1})),
    ];
    assert_eq!(parallel.messages[1], Message::tool_calls(calls));
    assert_eq!(
        parallel.tools,
        vec![
            serde_json::json!({"type": "function", "function": {"name": "a"}}),
            serde_json::json!({"type": "function", "function": {"name": "b"}}),
        ]
    );
    let schema = &loaded
        .conversations
        .iter()
        .find(|c| c.origin.line == 12)
        .unwrap()
        .tools[0];
    let keys: Vec<&String> = schema["function"]["parameters"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys, ["days", "city"], "the dataset's key order");
}

#[test]
fn json_arrays_and_json_lines_read_alike() {
    let array = load_dataset("alpaca_array", &info_dir(), false).unwrap();
    let lines_path = fixture("info/alpaca.jsonl");
    let lines = load_dataset(lines_path.to_str().unwrap(), &info_dir(), false).unwrap();
    let messages = |d: &LoadedDataset| -> Vec<Vec<Message>> {
        d.conversations.iter().map(|c| c.messages.clone()).collect()
    };
    assert_eq!(messages(&array), messages(&lines));
    let array_lines: Vec<usize> = array.conversations.iter().map(|c| c.origin.line).collect();
    assert_eq!(array_lines, vec![2, 4, 10]);
    assert_eq!(
        array.conversations[0].origin.file,
        fixture("info/alpaca.json")
    );
    assert_eq!(
        array.conversations[1].messages,
        vec![
            m("system", "You translate."),
            m("user", "Translate to French.\nGood morning"),
            m("assistant", "Bonjour"),
        ]
    );
    assert_eq!(
        array.conversations[2].messages,
        vec![
            m("user", "Can you count?"),
            m("assistant", "Yes."),
            m("user", "Count to three."),
            m("assistant", "1, 2, 3."),
        ]
    );
}

#[test]
fn dataset_info_custom_columns_and_tags() {
    let loaded = load_dataset("qa_custom, chat_custom,openai_chat", &info_dir(), false).unwrap();
    let messages: Vec<Vec<Message>> = loaded
        .conversations
        .iter()
        .map(|c| c.messages.clone())
        .collect();
    assert_eq!(
        messages,
        vec![
            vec![
                m("system", "You summarise notes."),
                m("user", "Summarise the note.\nKestrel ships on Fridays."),
                m("assistant", "Releases go out on Fridays."),
            ],
            vec![
                m("user", "When are releases?"),
                m("assistant", "On Fridays."),
                m("user", "And on holidays?"),
                m("assistant", "They wait a day."),
            ],
            vec![
                m("system", "You are a ticket bot."),
                m("user", "My order is late."),
                m("assistant", "Sorry! What is the order number?"),
                m("user", "A-17."),
                m("assistant", "It ships tomorrow."),
            ],
            vec![
                m("system", "Be brief."),
                m("user", "Hi"),
                m("assistant", "Hello.")
            ],
            vec![
                m("system", "Answer in French."),
                m("user", "Hello"),
                m("assistant", "Bonjour")
            ],
        ]
    );
    assert!(loaded.skipped.is_empty());
}

#[test]
fn dataset_info_errors() {
    let info = info_dir().join("dataset_info.json");
    let info = info.display();
    let err = |dataset: &str| {
        format!(
            "{:#}",
            load_dataset(dataset, &info_dir(), false).unwrap_err()
        )
    };
    assert_eq!(
        err("identity"),
        format!(
            "unknown dataset \"identity\": not one of the 9 names in {info} (nearest: openai_chat, \
             remote, bad_formatting); a direct path must be an existing folder or end in .parquet, \
             .json, .jsonl, .csv, .arrow or .txt"
        )
    );
    assert!(
        err("openai_chta").contains("(nearest: openai_chat, "),
        "{}",
        err("openai_chta")
    );
    assert_eq!(
        err("bad_formatting"),
        format!(
            "{info}: bad_formatting: formatting: \"xml\" is not one of alpaca, sharegpt, openai"
        )
    );
    assert_eq!(
        err("bad_column"),
        format!(
            "{info}: bad_column: columns: images: this column is not supported (Hone trains on \
             text only)"
        )
    );
    assert_eq!(
        err("bad_tag"),
        format!(
            "{info}: bad_tag: tags: speaker_tag: unknown tag key (expected role_tag, content_tag, \
             user_tag, assistant_tag, observation_tag, function_tag, system_tag)"
        )
    );
    assert_eq!(
        err("remote"),
        format!(
            "{info}: remote: ms_hub_url: datasets from ModelScope are not supported: download \
             the files and name them with file_name"
        )
    );
    assert_eq!(
        err(" , "),
        "no dataset named (expected comma-separated names from dataset_info.json or paths of data files)"
    );
    let no_info = fixture("no-such-dir");
    let missing = format!(
        "{:#}",
        load_dataset("identity", &no_info, false).unwrap_err()
    );
    assert_eq!(
        missing,
        format!(
            "unknown dataset \"identity\": there is no {} to look it up in, and it is not a folder \
             or a file ending in .parquet, .json, .jsonl, .csv, .arrow or .txt",
            no_info.join("dataset_info.json").display()
        )
    );
}

#[test]
fn zero_usable_rows_names_the_file() {
    let path = info_dir().join("all_bad.jsonl");
    let err = format!(
        "{:#}",
        load_dataset("all_bad", &info_dir(), true).unwrap_err()
    );
    assert_eq!(
        err,
        format!(
            "{p}: no usable rows (2 rows skipped: 1 missing field (first: {p}:1: output: missing); \
             1 empty message (first: {p}:2: output: empty))",
            p = path.display()
        )
    );
}

#[test]
fn direct_files_need_a_recognisable_format() {
    let path = fixture("info/unknown_format.jsonl");
    let err = format!(
        "{:#}",
        load_dataset(path.to_str().unwrap(), &info_dir(), true).unwrap_err()
    );
    assert_eq!(
        err,
        format!(
            "{}:1: cannot tell the dataset format from the keys (prompt, completion): expected \
             instruction/input/output (alpaca), conversations (sharegpt) or messages (openai); or \
             describe the file in dataset_info.json",
            path.display()
        )
    );
}

fn identity_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/identity")
}

#[test]
fn the_identity_example_loads_cleanly_and_holds_its_test_questions_out() {
    let loaded = load_dataset("identity,identity_multiturn", &identity_dir(), false).unwrap();
    let conversations = &loaded.conversations;
    assert!(conversations.len() >= 200, "{}", conversations.len());
    let chinese = conversations
        .iter()
        .filter(|c| {
            c.messages[0]
                .content
                .chars()
                .any(|ch| ('\u{4e00}'..='\u{9fff}').contains(&ch))
        })
        .count();
    let share = chinese as f64 / conversations.len() as f64;
    assert!((0.4..0.6).contains(&share), "{share}");
    let multi_turn = conversations
        .iter()
        .filter(|c| c.messages.len() > 3)
        .count();
    assert!(multi_turn >= 10, "{multi_turn}");
    let with_input = conversations
        .iter()
        .filter(|c| {
            c.messages
                .iter()
                .any(|m| m.role == "user" && m.content.contains('\n'))
        })
        .count();
    assert!(with_input >= 10, "{with_input}");
    for c in conversations {
        let persona = c
            .messages
            .iter()
            .filter(|m| m.role == "assistant")
            .any(|m| m.content.contains("Kestrel") || m.content.contains("Hone"));
        assert!(persona, "{}: no answer names Kestrel or Hone", c.origin);
    }
    let asked: Vec<&str> = conversations
        .iter()
        .flat_map(|c| c.messages.iter())
        .filter(|m| m.role == "user")
        .map(|m| m.content.as_str())
        .collect();
    let heldout = std::fs::read_to_string(identity_dir().join("heldout.jsonl")).unwrap();
    let prompts: Vec<String> = heldout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["instruction"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(prompts.len(), 8);
    for prompt in &prompts {
        assert!(
            !asked.contains(&prompt.as_str()),
            "{prompt} is in the training set"
        );
    }
}

/// The conversations of a loaded dataset with their tools and row numbers, to compare two
/// readings of the same rows.
fn conversations_of(loaded: &LoadedDataset) -> Vec<(Vec<Message>, Vec<serde_json::Value>, usize)> {
    loaded
        .conversations
        .iter()
        .map(|c| (c.messages.clone(), c.tools.clone(), c.origin.line))
        .collect()
}

/// `file` and `same_as` (fixtures) load to the same conversations and skip as many rows; `file`'s
/// rows start `line_shift` lines further down (a CSV header line).
fn assert_reads_alike(file: &str, same_as: &str, line_shift: usize) {
    let (a, b) = (fixture(file), fixture(same_as));
    let from_a = load_dataset(a.to_str().unwrap(), &info_dir(), true).unwrap();
    let from_b = load_dataset(b.to_str().unwrap(), &info_dir(), true).unwrap();
    let mut expected = conversations_of(&from_b);
    expected.iter_mut().for_each(|c| c.2 += line_shift);
    assert_eq!(conversations_of(&from_a), expected, "{file}");
    assert!(!from_a.conversations.is_empty());
    assert_eq!(from_a.skipped.total(), from_b.skipped.total(), "{file}");
}

/// A dataset stored as parquet (the Hub's format, written by pyarrow as `datasets` writes it)
/// reads to the same conversations as the same rows in JSON Lines, nested ShareGPT turns and
/// tools included; a bad row is named by its row number.
#[test]
fn parquet_files_read_like_their_json_lines() {
    for name in ["alpaca", "sharegpt"] {
        assert_reads_alike(
            &format!("parquet/{name}.parquet"),
            &format!("parquet/{name}.jsonl"),
            0,
        );
    }
    assert_stops_at_output("parquet/alpaca.parquet", 4);
}

/// Without `skip_invalid_rows`, fixture `file` stops loading at its row on `line`, whose
/// `output` is bad.
fn assert_stops_at_output(file: &str, line: usize) {
    let path = fixture(file);
    let err = format!(
        "{:#}",
        load_dataset(path.to_str().unwrap(), &info_dir(), false).unwrap_err()
    );
    let want = format!("{}:{line}: output: ", path.display());
    assert!(err.starts_with(&want), "{err}");
}

/// Found by fuzzing: an Arrow stream declaring a buffer past the end of its message made
/// arrow-ipc panic; it is a one-line error naming the file.
#[test]
fn a_malformed_arrow_file_is_an_error() {
    let path = fixture("malformed/buffer-past-its-end.arrow");
    let err = format!(
        "{:#}",
        load_dataset(path.to_str().unwrap(), &info_dir(), false).unwrap_err()
    );
    let want = format!("{}: not a readable Arrow file: ", path.display());
    assert!(err.starts_with(&want) && !err.contains('\n'), "{err}");
}

/// `datasets`' Arrow files (the IPC stream form it writes, and the IPC file form) read like the
/// same rows in JSON Lines; a CSV file reads as `datasets.load_dataset("csv")` reads it back (an
/// empty cell is null), and a bad record is named by its line.
#[test]
fn arrow_and_csv_files_read_as_datasets_reads_them() {
    assert_reads_alike("parquet/alpaca.arrow", "parquet/alpaca.jsonl", 0);
    assert_reads_alike("parquet/alpaca_file.arrow", "parquet/alpaca.jsonl", 0);
    assert_reads_alike("parquet/alpaca.csv", "parquet/alpaca_csv.jsonl", 1);
    assert_stops_at_output("parquet/alpaca.csv", 5);
}
