//! An Ollama Modelfile for an exported GGUF: `FROM` the file, the chat template rewritten in Go
//! template syntax, the template's default system prompt, and a `stop` for every token that ends
//! generation, so Ollama formats turns as the model was trained and stops where it should.
//!
//! The template is not translated from Jinja source: it is rendered on probe conversations and its
//! turn layout read off the output (`PREFIX role SEPARATOR content SUFFIX` per message, as ChatML and
//! its relatives have). The Go template is accepted only when it reproduces every probe exactly.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::chat::{ChatTemplate, Message};
use crate::io::atomic;
use crate::tokenizer::Tokenizer;

/// The Modelfile's name beside the GGUF: what `ollama create NAME -f Modelfile` reads.
pub const MODELFILE: &str = "Modelfile";

/// Where [`write_modelfile`] puts the Modelfile for `gguf_path`.
pub fn modelfile_path(gguf_path: &Path) -> PathBuf {
    gguf_path.with_file_name(MODELFILE)
}

/// Writes the Modelfile for `gguf_path` beside it (atomically) and returns its path.
pub fn write_modelfile(gguf_path: &Path, tok: &Tokenizer) -> Result<PathBuf> {
    let name = gguf_path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a file name", gguf_path.display()))?;
    let text = ollama_modelfile(name, tok)?;
    let path = modelfile_path(gguf_path);
    atomic::write_file(&path, |out| {
        Ok(std::io::Write::write_all(out, text.as_bytes())?)
    })
    .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(path)
}

/// The Modelfile text for a GGUF named `gguf_file_name` in the same directory.
pub fn ollama_modelfile(gguf_file_name: &str, tok: &Tokenizer) -> Result<String> {
    let template = ChatTemplate::for_tokenizer(tok)?;
    let layout = TurnLayout::probe(&template)
        .context("the chat template cannot be written as an Ollama template")?;
    let mut text = format!("FROM ./{gguf_file_name}\n");
    text += &format!("TEMPLATE \"\"\"{}\"\"\"\n", layout.go_template()?);
    if let Some(system) = &layout.default_system {
        if system.contains("\"\"\"") {
            bail!("the default system prompt contains \"\"\", which a Modelfile cannot quote");
        }
        text += &format!("SYSTEM \"\"\"{system}\"\"\"\n");
    }
    for id in tok.stop_ids() {
        let token = tok
            .inner()
            .id_to_token(id)
            .with_context(|| format!("stop id {id} is not in the vocabulary"))?;
        text += &format!("PARAMETER stop {}\n", serde_json::to_string(&token)?);
    }
    Ok(text)
}

/// Texts that cannot occur in a real template, to find where message contents land.
const PROBE: [&str; 4] = [
    "HONE·SYSTEM·1",
    "HONE·USER·2",
    "HONE·ASSISTANT·3",
    "HONE·USER·4",
];

/// How a template lays out turns.
#[derive(Debug, PartialEq)]
struct TurnLayout {
    /// Before the first turn (e.g. a bos token the template writes itself).
    lead: String,
    /// Before the role name.
    prefix: String,
    /// Between the role name and the content.
    separator: String,
    /// After the content.
    suffix: String,
    /// The system prompt the template inserts when the conversation has none.
    default_system: Option<String>,
}

impl TurnLayout {
    fn probe(template: &ChatTemplate) -> Result<TurnLayout> {
        let [s, u, a, u2] = PROBE;
        let full = template.render(
            &[
                Message::new("system", s),
                Message::new("user", u),
                Message::new("assistant", a),
                Message::new("user", u2),
            ],
            true,
        )?;
        let at = |needle: &str| {
            full.find(needle).with_context(|| {
                format!(
                    "a message's content does not appear in the rendered conversation: {full:?}"
                )
            })
        };
        let (is, iu, ia, iu2) = (at(s)?, at(u)?, at(a)?, at(u2)?);
        if !(is < iu && iu < ia && ia < iu2) {
            bail!("the rendered conversation does not keep the messages in order");
        }
        // Between an assistant's content and a user's: SUFFIX PREFIX "user" SEPARATOR.
        let between = &full[ia + a.len()..iu2];
        let role_at = between
            .rfind("user")
            .context("the role name does not appear in the turn header")?;
        let (suffix_prefix, separator) = (&between[..role_at], &between[role_at + "user".len()..]);
        let head = &full[..is];
        let before_role = &head[..head
            .rfind("system")
            .context("the system turn header does not name its role")?];
        let prefix = common_suffix(suffix_prefix, before_role);
        let layout = TurnLayout {
            lead: before_role[..before_role.len() - prefix.len()].to_string(),
            prefix: prefix.to_string(),
            separator: separator.to_string(),
            suffix: suffix_prefix[..suffix_prefix.len() - prefix.len()].to_string(),
            default_system: None,
        };
        let conversation = [
            Some(("system", s)),
            Some(("user", u)),
            Some(("assistant", a)),
            Some(("user", u2)),
        ];
        if layout.render(&conversation) != full {
            bail!("its turns are not laid out as PREFIX role SEPARATOR content SUFFIX: {full:?}");
        }
        let user_only = template.render(&[Message::new("user", u)], true)?;
        let default_system = layout.default_system(&user_only)?;
        Ok(TurnLayout {
            default_system,
            ..layout
        })
    }

    /// What the Go template produces for `turns` (role, content).
    fn render(&self, turns: &[Option<(&str, &str)>]) -> String {
        let mut out = self.lead.clone();
        for (role, content) in turns.iter().flatten() {
            out += &format!(
                "{}{role}{}{content}{}",
                self.prefix, self.separator, self.suffix
            );
        }
        out + &format!("{}assistant{}", self.prefix, self.separator)
    }

    /// The system prompt in `rendered` (a lone user turn) that the template added by itself.
    fn default_system(&self, rendered: &str) -> Result<Option<String>> {
        let [_, u, _, _] = PROBE;
        if self.render(&[Some(("user", u))]) == rendered {
            return Ok(None);
        }
        let start = format!("{}{}system{}", self.lead, self.prefix, self.separator);
        let end = format!("{}{}user{}", self.suffix, self.prefix, self.separator);
        let system = rendered
            .strip_prefix(start.as_str())
            .and_then(|rest| rest.find(&end).map(|i| &rest[..i]))
            .context("without a system message the template writes something other than a default system turn")?;
        if self.render(&[Some(("system", system)), Some(("user", u))]) != rendered {
            bail!("without a system message the template writes something other than a default system turn: {rendered:?}");
        }
        Ok(Some(system.to_string()))
    }

    /// The layout in Ollama's Go template syntax. Ollama passes system messages as `.System` (and
    /// again among `.Messages`), so the system turn comes from `.System` and the loop skips them.
    fn go_template(&self) -> Result<String> {
        for literal in [&self.lead, &self.prefix, &self.separator, &self.suffix] {
            if literal.contains("{{") || literal.contains("\"\"\"") {
                bail!(
                    "the turn markup {literal:?} cannot be written literally in an Ollama template"
                );
            }
        }
        let (p, sep, suf) = (&self.prefix, &self.separator, &self.suffix);
        Ok(format!(
            "{lead}{{{{ if .System }}}}{p}system{sep}{{{{ .System }}}}{suf}{{{{ end }}}}\
             {{{{ range .Messages }}}}{{{{ if ne .Role \"system\" }}}}{p}{{{{ .Role }}}}{sep}{{{{ .Content }}}}{suf}{{{{ end }}}}{{{{ end }}}}\
             {p}assistant{sep}",
            lead = self.lead
        ))
    }
}

/// The longest common suffix of `a` and `b`, on character boundaries.
fn common_suffix<'a>(a: &'a str, b: &str) -> &'a str {
    let n = a
        .chars()
        .rev()
        .zip(b.chars().rev())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x.len_utf8())
        .sum::<usize>();
    &a[a.len() - n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn chatml_with_a_default_system_prompt() {
        let template = ChatTemplate::new(SMOLLM2, None, None).unwrap();
        let layout = TurnLayout::probe(&template).unwrap();
        assert_eq!(layout.lead, "");
        assert_eq!(layout.prefix, "<|im_start|>");
        assert_eq!(layout.separator, "\n");
        assert_eq!(layout.suffix, "<|im_end|>\n");
        assert_eq!(
            layout.default_system.as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        assert_eq!(
            layout.go_template().unwrap(),
            "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\
             {{ range .Messages }}{{ if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn templates_of_another_shape_are_refused() {
        // Llama 2 style: the system prompt is folded into the first user turn.
        let llama2 = "{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>{{ m['content'] }}<</SYS>>{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}";
        let template = ChatTemplate::new(llama2, None, None).unwrap();
        assert!(TurnLayout::probe(&template).is_err());
    }
}
