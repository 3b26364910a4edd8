//! Reading a dataset file into JSON rows, each with the line it starts on. A file is a JSON array
//! of rows when its first non-blank character is `[`, else JSON Lines (one row a line, blank
//! lines ignored), whatever its extension: Hugging Face `datasets` reads both forms from either.
//! A `.parquet` file (how datasets are stored on the Hub) or an `.arrow` file (what `datasets`
//! saves: an Arrow IPC stream, or the IPC file form) gives each row as the JSON object `datasets`
//! would (columns by name, lists and structs nested), its `line` the row's 1-based number. A
//! `.csv` file (a header line, then a row a record) gives each cell as text, an empty one as null
//! (as `datasets` reads CSV through pandas); its `line` is where the record starts.

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde::de::IgnoredAny;
use serde_json::Value;

use crate::io::untrusted::catching_panics;

/// One row of a file: the line it starts on, and its JSON or why it is not JSON.
#[derive(Debug)]
pub(super) struct RawRow {
    pub line: usize,
    pub value: Result<Value, String>,
}

/// The rows of a file. A JSON Lines row that is not JSON is returned as such (it can be skipped);
/// a JSON array file that does not parse is an error for the whole file, since nothing after the
/// fault can be trusted.
pub(super) fn read_rows(path: &Path) -> Result<Vec<RawRow>> {
    let mut rows = Vec::new();
    for_each_row(path, |row| {
        rows.push(row);
        Ok(())
    })?;
    Ok(rows)
}

/// [`read_rows`], each row handed to `take` as it is read and dropped after: JSON Lines are read a
/// line at a time, and a JSON array's rows parsed one at a time, so a large dataset is never held
/// whole as JSON values. `take`'s error stops the reading and is returned.
pub(super) fn for_each_row(path: &Path, take: impl FnMut(RawRow) -> Result<()>) -> Result<()> {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    // The parquet and Arrow readers panic on some malformed files (see `io::untrusted`).
    let unreadable = |format: &str| format!("{}: not a readable {format} file", path.display());
    let rows = match extension.as_deref() {
        Some("parquet") => catching_panics(unreadable("parquet"), || parquet_rows(path))?,
        Some("arrow") => catching_panics(unreadable("Arrow"), || arrow_rows(path))?,
        Some("csv") => csv_rows(path)?,
        _ => return json_rows(path, take),
    };
    rows.into_iter().try_for_each(take)
}

/// The rows of a JSON array file or a JSON Lines file, told apart by the first character that is
/// not blank (after a byte-order mark).
fn json_rows(path: &Path, mut take: impl FnMut(RawRow) -> Result<()>) -> Result<()> {
    let cannot_read = || format!("{}: cannot read", path.display());
    let mut reader = BufReader::new(fs::File::open(path).with_context(cannot_read)?);
    if starts_with_array(&mut reader).with_context(cannot_read)? {
        let text = read_text(path)?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        return array_rows(text, take).with_context(|| path.display().to_string());
    }
    let mut line = String::new();
    for number in 1.. {
        line.clear();
        let read = reader.read_line(&mut line).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => anyhow!("{}:{number}: not UTF-8 text", path.display()),
            _ => anyhow!("{}: cannot read: {e}", path.display()),
        })?;
        if read == 0 {
            break;
        }
        let text = line.strip_suffix('\n').unwrap_or(&line);
        let text = text.strip_suffix('\r').unwrap_or(text);
        let text = match number {
            1 => text.strip_prefix('\u{feff}').unwrap_or(text),
            _ => text,
        };
        if text.trim().is_empty() {
            continue;
        }
        take(RawRow {
            line: number,
            value: serde_json::from_str(text)
                .map_err(|e| format!("not valid JSON at column {}: {}", e.column(), message(&e))),
        })?;
    }
    Ok(())
}

/// Whether the first character after a byte-order mark and blanks is `[`; reads no further.
fn starts_with_array(reader: &mut impl BufRead) -> io::Result<bool> {
    let mut marks = 0;
    loop {
        let Some(&first) = reader.fill_buf()?.first() else {
            return Ok(false);
        };
        match first {
            0xEF | 0xBB | 0xBF if marks < 3 => marks += 1,
            b if b.is_ascii_whitespace() => {}
            b => return Ok(b == b'['),
        }
        reader.consume(1);
    }
}

/// The rows of a parquet file, read with the `parquet` crate's record reader.
fn parquet_rows(path: &Path) -> Result<Vec<RawRow>> {
    let file = fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| anyhow!("{}: not a readable parquet file: {e}", path.display()))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    rows.enumerate()
        .map(|(i, row)| {
            let row = row.map_err(|e| anyhow!("{}: row {}: {e}", path.display(), i + 1))?;
            Ok(RawRow {
                line: i + 1,
                value: Ok(row.to_json_value()),
            })
        })
        .collect()
}

/// The rows of an Arrow IPC stream, or of the IPC file form (the same stream between a leading
/// magic and a trailing footer), through `arrow-json` (nulls kept as nulls).
///
/// Decoded from the bytes in memory by arrow-ipc's push decoder, which allocates only as bytes
/// arrive: its readers allocate whatever length a file declares before reading it (a 114-byte file
/// asked for 1.7 GB, found by fuzzing).
fn arrow_rows(path: &Path) -> Result<Vec<RawRow>> {
    let bytes = fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let unreadable =
        |e: &dyn std::fmt::Display| anyhow!("{}: not a readable Arrow file: {e}", path.display());
    let stream = ipc_stream(&bytes).map_err(|e| unreadable(&e))?;
    let mut buffer =
        arrow_buffer::Buffer::from_vec(bytes).slice_with_length(stream.start, stream.len());
    let mut decoder = arrow_ipc::reader::StreamDecoder::new();
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow_json::writer::JsonArray>(Vec::new());
    while let Some(batch) = decoder.decode(&mut buffer).map_err(|e| unreadable(&e))? {
        writer.write(&batch).map_err(|e| unreadable(&e))?;
    }
    decoder.finish().map_err(|e| unreadable(&e))?;
    writer.finish().map_err(|e| unreadable(&e))?;
    let json = writer.into_inner();
    let rows: Vec<Value> = match json.is_empty() {
        true => Vec::new(),
        false => serde_json::from_slice(&json).map_err(|e| unreadable(&e))?,
    };
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, value)| RawRow {
            line: i + 1,
            value: Ok(value),
        })
        .collect())
}

/// Where the IPC stream lies in an Arrow file: all of it, or in the file form (what `datasets`
/// writes is the stream form) between the 8-byte magic and the footer, whose length the last 10
/// bytes give.
fn ipc_stream(bytes: &[u8]) -> Result<std::ops::Range<usize>> {
    const MAGIC: &[u8] = b"ARROW1";
    if !bytes.starts_with(MAGIC) {
        return Ok(0..bytes.len());
    }
    let tail = bytes.len().checked_sub(10).filter(|&t| t >= 8);
    let Some(tail) = tail.filter(|&t| &bytes[t + 4..] == MAGIC) else {
        bail!("the file form's footer is missing");
    };
    let footer_len = i32::from_le_bytes(bytes[tail..tail + 4].try_into().expect("4 bytes"));
    match usize::try_from(footer_len)
        .ok()
        .and_then(|n| tail.checked_sub(n))
    {
        Some(end) if end >= 8 => Ok(8..end),
        _ => bail!("the footer's length {footer_len} does not fit in the file"),
    }
}

/// The records of a CSV file with a header line, each as an object of its cells.
fn csv_rows(path: &Path) -> Result<Vec<RawRow>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let header: Vec<String> = reader
        .headers()
        .with_context(|| format!("{}: no header line", path.display()))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_string())
        .collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let object: serde_json::Map<String, Value> = header
            .iter()
            .zip(record.iter())
            .map(|(name, cell)| {
                let value = match cell {
                    "" => Value::Null,
                    text => Value::String(text.to_string()),
                };
                (name.clone(), value)
            })
            .collect();
        rows.push(RawRow {
            line,
            value: Ok(Value::Object(object)),
        });
    }
    Ok(rows)
}

/// The non-blank lines of a text file (a byte-order mark dropped), each with its 1-based number.
pub(super) fn text_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let text = read_text(path)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| (i + 1, line.to_owned()))
        .collect())
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    String::from_utf8(bytes).map_err(|e| anyhow!("{}: not UTF-8 text: {e}", path.display()))
}

/// The rows of a JSON array, each parsed and handed to `take` in turn with the line it starts on.
/// An array that does not parse is an error at serde_json's position in the whole text.
fn array_rows(text: &str, mut take: impl FnMut(RawRow) -> Result<()>) -> Result<()> {
    let not_an_array = || -> anyhow::Error {
        match serde_json::from_str::<Vec<IgnoredAny>>(text) {
            Err(e) => anyhow!(
                "{}: not a valid JSON array of rows (column {}): {}",
                e.line(),
                e.column(),
                message(&e)
            ),
            Ok(_) => anyhow!("not a valid JSON array of rows"),
        }
    };
    let bytes = text.as_bytes();
    let at_end = |pos: usize| skip_whitespace(bytes, pos) == bytes.len();
    let mut pos = text.find('[').expect("a JSON array") + 1;
    let mut line = 1 + newlines(&bytes[..pos]);
    let (mut elements, mut expect_element) = (0, true);
    loop {
        let start = skip_whitespace(bytes, pos);
        line += newlines(&bytes[pos..start]);
        pos = start;
        match bytes.get(pos) {
            Some(b']') if (elements == 0 || !expect_element) && at_end(pos + 1) => return Ok(()),
            Some(b',') if !expect_element => {
                pos += 1;
                expect_element = true;
                continue;
            }
            Some(b']') | Some(b',') | None => return Err(not_an_array()),
            Some(_) if !expect_element => return Err(not_an_array()),
            Some(_) => {}
        }
        let mut stream = serde_json::Deserializer::from_str(&text[pos..]).into_iter::<Value>();
        let Some(Ok(value)) = stream.next() else {
            return Err(not_an_array());
        };
        take(RawRow {
            line,
            value: Ok(value),
        })?;
        let end = pos + stream.byte_offset();
        line += newlines(&bytes[pos..end]);
        pos = end;
        (elements, expect_element) = (elements + 1, false);
    }
}

/// serde_json's message without the " at line L column C" it appends (the caller places it).
fn message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let location = format!(" at line {} column {}", error.line(), error.column());
    text.strip_suffix(&location).unwrap_or(&text).to_owned()
}

fn skip_whitespace(bytes: &[u8], mut pos: usize) -> usize {
    while bytes.get(pos).is_some_and(u8::is_ascii_whitespace) {
        pos += 1;
    }
    pos
}

fn newlines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_and_values(rows: Vec<RawRow>) -> Vec<(usize, Result<Value, String>)> {
        rows.into_iter().map(|r| (r.line, r.value)).collect()
    }

    /// The rows of `text` as a JSON array.
    fn array(text: &str) -> Result<Vec<RawRow>> {
        let mut rows = Vec::new();
        array_rows(text, |row| {
            rows.push(row);
            Ok(())
        })?;
        Ok(rows)
    }

    #[test]
    fn json_lines_keep_their_line_numbers_and_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        std::fs::write(&path, "\u{feff}{\"a\": 1}\n\n  \n{\"a\": \n[2]\n").unwrap();
        let rows = read_rows(&path).unwrap();
        let rows = lines_and_values(rows);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], (1, Ok(serde_json::json!({"a": 1}))));
        assert_eq!(rows[1].0, 4);
        assert_eq!(
            rows[1].1,
            Err("not valid JSON at column 6: EOF while parsing a value".to_owned())
        );
        assert_eq!(rows[2], (5, Ok(serde_json::json!([2]))));
    }

    #[test]
    fn array_elements_get_the_line_they_start_on() {
        let text = "\n[\n  {\"a\": \"x\\n]\",\n   \"b\": [1, 2]},\n\n  {\"a\": 2}, 3\n  ,\"s\"]\n";
        let rows = lines_and_values(array(text).unwrap());
        let lines: Vec<usize> = rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, vec![3, 6, 6, 7]);
        assert_eq!(rows[0].1, Ok(serde_json::json!({"a": "x\n]", "b": [1, 2]})));
        assert_eq!(rows[3].1, Ok(serde_json::json!("s")));
        assert!(array("[]").unwrap().is_empty());
        assert!(array("[1] x").is_err() && array("[1,]").is_err() && array("[1 2]").is_err());
    }

    #[test]
    fn a_broken_array_names_the_line() {
        let err = array("[\n{\"a\": 1},\n{\"a\": }\n]").unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "3: not a valid JSON array of rows (column 7): expected value"
        );
    }
}
