//! [`load_prompts`]: prompts for a model to answer, with reference answers where the file has
//! them — the input of generation-based comparisons, which, unlike training, can use a prompt
//! that has no answer.

use std::path::Path;

use anyhow::{bail, Result};

use super::convert::Answer;
use super::info;
use super::load::load_file;
use super::rows::text_lines;
use super::{Conversation, RowOrigin};
use crate::chat::Message;

/// Reads prompts from `path`: a `.txt` file holds one prompt per line (a user turn; blank lines are
/// skipped); any other file is a dataset as [`super::load_dataset`] reads it (Alpaca, ShareGPT,
/// OpenAI `messages`, JSON or JSON Lines, or a name in `dataset_dir/dataset_info.json`), except that
/// a row may lack its response (see [`Answer::Optional`]). Each conversation ends with the user's
/// turn, or with the assistant's reference answer when the row has one. A bad row is an error
/// `file:line: field: problem`; so is a file without prompts.
pub fn load_prompts(path: &Path, dataset_dir: &Path) -> Result<Vec<Conversation>> {
    let prompts = if path.extension().is_some_and(|e| e == "txt") {
        text_prompts(path)?
    } else {
        let mut prompts = Vec::new();
        for source in info::resolve(&path.to_string_lossy(), dataset_dir)? {
            prompts.extend(load_file(&source, false, Answer::Optional)?.0);
        }
        prompts
    };
    if prompts.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(prompts)
}

/// One single-turn conversation (the user's prompt) per non-blank line of a text file.
fn text_prompts(path: &Path) -> Result<Vec<Conversation>> {
    Ok(text_lines(path)?
        .into_iter()
        .map(|(line, text)| Conversation {
            messages: vec![Message::new("user", text)],
            tools: Vec::new(),
            origin: RowOrigin {
                file: path.to_owned(),
                line,
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn roles_and_contents(conversation: &Conversation) -> Vec<(&str, &str)> {
        conversation
            .messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect()
    }

    #[test]
    fn a_text_file_is_one_prompt_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "p.txt",
            "\u{feff}Who are you?\r\n\n  \n你好，世界\n",
        );
        let prompts = load_prompts(&path, dir.path()).unwrap();
        assert_eq!(prompts.len(), 2);
        assert_eq!(roles_and_contents(&prompts[0]), [("user", "Who are you?")]);
        assert_eq!(roles_and_contents(&prompts[1]), [("user", "你好，世界")]);
        assert_eq!(
            prompts[1].origin.to_string(),
            format!("{}:4", path.display())
        );
    }

    #[test]
    fn alpaca_rows_may_lack_the_output_and_keep_it_as_reference_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [
            r#"{"instruction": "a", "input": "b", "output": "ref"}"#,
            r#"{"instruction": "no output"}"#,
            r#"{"instruction": "empty output", "output": " "}"#,
            r#"{"instruction": "null output", "output": null, "system": "sys"}"#,
        ];
        let path = write(dir.path(), "p.jsonl", &rows.join("\n"));
        let prompts = load_prompts(&path, dir.path()).unwrap();
        let got: Vec<_> = prompts.iter().map(roles_and_contents).collect();
        assert_eq!(
            got,
            [
                vec![("user", "a\nb"), ("assistant", "ref")],
                vec![("user", "no output")],
                vec![("user", "empty output")],
                vec![("system", "sys"), ("user", "null output")],
            ]
        );
    }

    #[test]
    fn sharegpt_rows_may_end_with_the_user_turn_or_an_empty_answer() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [
            r#"{"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]}"#,
            r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}"#,
            r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ref"}]}"#,
        ];
        let path = write(dir.path(), "p.jsonl", &rows.join("\n"));
        let prompts = load_prompts(&path, dir.path()).unwrap();
        let got: Vec<_> = prompts.iter().map(roles_and_contents).collect();
        assert_eq!(
            got,
            [
                vec![("user", "q1"), ("assistant", "a1"), ("user", "q2")],
                vec![("user", "q")],
                vec![("user", "q"), ("assistant", "ref")],
            ]
        );
    }

    #[test]
    fn bad_rows_and_empty_files_are_errors_naming_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let bad = write(
            dir.path(),
            "bad.jsonl",
            "{\"instruction\": \"fine\"}\n{\"instruction\": \"x\", \"output\": 3}\n",
        );
        let err = load_prompts(&bad, dir.path()).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "{}:2: output: expected a string, found a number",
                bad.display()
            )
        );
        let blank = write(dir.path(), "blank.txt", "\n  \n");
        let err = load_prompts(&blank, dir.path()).unwrap_err();
        assert_eq!(err.to_string(), format!("{}: no prompts", blank.display()));
        let missing = dir.path().join("missing.txt");
        let err = load_prompts(&missing, dir.path()).unwrap_err();
        assert!(err
            .to_string()
            .starts_with(&format!("{}: cannot read", missing.display())));
    }

    #[test]
    fn the_training_loader_still_requires_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "p.jsonl", r#"{"instruction": "no output"}"#);
        let err =
            super::super::load_dataset(&path.to_string_lossy(), dir.path(), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}:1: output: missing", path.display())
        );
    }
}
