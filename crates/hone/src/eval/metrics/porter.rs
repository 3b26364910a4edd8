//! NLTK's `PorterStemmer` in its default `NLTK_EXTENSIONS` mode, the stemmer Google's rouge-score
//! applies with `use_stemmer=True`.
//!
//! Written here rather than taken from `rust-stemmers`: that crate implements Snowball English
//! (Porter2), which stems differently (e.g. "generalizations" → "general" vs NLTK's "gener",
//! "dying" → "die" vs NLTK's "die" by its irregular-forms table, "fully"...), so its ROUGE would not
//! equal rouge-score's. This is a line-by-line port of nltk/stem/porter.py (nltk 3.10), whose
//! extensions to Porter's 1980 algorithm are: an irregular-forms table, "ies"/"ied" on 4-letter
//! words, step 1c needing a consonant before the "y", "alli"/"fulli"/"logi" in step 2, "bli" for
//! "abli", and a 2-letter vowel-consonant stem counting as cvc. Words are ASCII lowercase here
//! (rouge-score's tokens are `[a-z0-9]+`).

/// NLTK's irregular forms: word → stem, looked up before any rule.
const IRREGULAR: [(&str, &str); 16] = [
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

/// Stems one lowercase ASCII word as `nltk.stem.porter.PorterStemmer().stem(word)` does.
pub fn stem(word: &str) -> String {
    let word = word.to_lowercase();
    if let Some((_, stem)) = IRREGULAR.iter().find(|(w, _)| *w == word) {
        return stem.to_string();
    }
    if word.chars().count() <= 2 {
        return word;
    }
    let mut w: Vec<u8> = word.into_bytes();
    for step in [step1a, step1b, step1c, step2, step3, step4, step5a, step5b] {
        w = step(w);
    }
    String::from_utf8(w).expect("the steps only remove or append ASCII")
}

fn is_vowel(c: u8) -> bool {
    matches!(c, b'a' | b'e' | b'i' | b'o' | b'u')
}

/// Per letter, whether it is a consonant: not a vowel, and a "y" only when it follows a vowel or
/// starts the word.
fn consonant_flags(w: &[u8]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let flag = if is_vowel(c) {
            false
        } else if c == b'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(flag);
    }
    flags
}

fn is_consonant(w: &[u8], i: usize) -> bool {
    consonant_flags(&w[..=i])[i]
}

/// Porter's m: the number of vowel-sequence → consonant-sequence transitions.
fn measure(stem: &[u8]) -> usize {
    consonant_flags(stem)
        .windows(2)
        .filter(|pair| !pair[0] && pair[1])
        .count()
}

fn contains_vowel(stem: &[u8]) -> bool {
    consonant_flags(stem).iter().any(|&c| !c)
}

fn ends_double_consonant(w: &[u8]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

/// Consonant-vowel-consonant at the end, the last not w, x or y; or (NLTK) a 2-letter
/// vowel-consonant word.
fn ends_cvc(w: &[u8]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], b'w' | b'x' | b'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

fn positive_measure(stem: &[u8]) -> bool {
    measure(stem) > 0
}

fn measure_above_1(stem: &[u8]) -> bool {
    measure(stem) > 1
}

/// One rule: suffix, replacement, and the condition on the stem left after removing the suffix.
type Rule<'a> = (&'a str, &'a str, &'a dyn Fn(&[u8]) -> bool);

/// NLTK's `_apply_rule_list`: the first rule whose suffix matches decides; if its condition fails
/// the word is left as it is.
fn apply_rules(w: Vec<u8>, rules: &[Rule]) -> Vec<u8> {
    for (suffix, replacement, condition) in rules {
        if w.ends_with(suffix.as_bytes()) {
            let stem = &w[..w.len() - suffix.len()];
            if condition(stem) {
                return [stem, replacement.as_bytes()].concat();
            }
            return w;
        }
    }
    w
}

fn replace_suffix(w: &[u8], suffix: &str, replacement: &str) -> Vec<u8> {
    [&w[..w.len() - suffix.len()], replacement.as_bytes()].concat()
}

fn always(_: &[u8]) -> bool {
    true
}

fn step1a(w: Vec<u8>) -> Vec<u8> {
    if w.ends_with(b"ies") && w.len() == 4 {
        return replace_suffix(&w, "ies", "ie");
    }
    apply_rules(
        w,
        &[
            ("sses", "ss", &always),
            ("ies", "i", &always),
            ("ss", "ss", &always),
            ("s", "", &always),
        ],
    )
}

fn step1b(w: Vec<u8>) -> Vec<u8> {
    if w.ends_with(b"ied") {
        let replacement = if w.len() == 4 { "ie" } else { "i" };
        return replace_suffix(&w, "ied", replacement);
    }
    if w.ends_with(b"eed") {
        let stem = &w[..w.len() - 3];
        return if measure(stem) > 0 {
            [stem, b"ee"].concat()
        } else {
            w
        };
    }
    let Some(stem) = ["ed", "ing"].iter().find_map(|suffix| {
        let stem = w.strip_suffix(suffix.as_bytes())?;
        contains_vowel(stem).then(|| stem.to_vec())
    }) else {
        return w;
    };
    let last = *stem.last().expect("a stem with a vowel is not empty");
    if stem.ends_with(b"at") || stem.ends_with(b"bl") || stem.ends_with(b"iz") {
        return [&stem[..], b"e"].concat();
    }
    if ends_double_consonant(&stem) {
        // "*d": undouble, except l, s and z.
        return if matches!(last, b'l' | b's' | b'z') {
            stem
        } else {
            stem[..stem.len() - 1].to_vec()
        };
    }
    if measure(&stem) == 1 && ends_cvc(&stem) {
        return [&stem[..], b"e"].concat();
    }
    stem
}

fn step1c(w: Vec<u8>) -> Vec<u8> {
    let consonant_before = |stem: &[u8]| stem.len() > 1 && is_consonant(stem, stem.len() - 1);
    apply_rules(w, &[("y", "i", &consonant_before)])
}

fn step2(w: Vec<u8>) -> Vec<u8> {
    if let Some(stem) = w.strip_suffix(b"alli") {
        if positive_measure(stem) {
            return step2([stem, b"al"].concat());
        }
    }
    // NLTK tests "logi" on the stem plus its "l".
    let logi = |stem: &[u8]| positive_measure(&[stem, b"l"].concat());
    apply_rules(
        w,
        &[
            ("ational", "ate", &positive_measure),
            ("tional", "tion", &positive_measure),
            ("enci", "ence", &positive_measure),
            ("anci", "ance", &positive_measure),
            ("izer", "ize", &positive_measure),
            ("bli", "ble", &positive_measure),
            ("alli", "al", &positive_measure),
            ("entli", "ent", &positive_measure),
            ("eli", "e", &positive_measure),
            ("ousli", "ous", &positive_measure),
            ("ization", "ize", &positive_measure),
            ("ation", "ate", &positive_measure),
            ("ator", "ate", &positive_measure),
            ("alism", "al", &positive_measure),
            ("iveness", "ive", &positive_measure),
            ("fulness", "ful", &positive_measure),
            ("ousness", "ous", &positive_measure),
            ("aliti", "al", &positive_measure),
            ("iviti", "ive", &positive_measure),
            ("biliti", "ble", &positive_measure),
            ("fulli", "ful", &positive_measure),
            ("logi", "log", &logi),
        ],
    )
}

fn step3(w: Vec<u8>) -> Vec<u8> {
    apply_rules(
        w,
        &[
            ("icate", "ic", &positive_measure),
            ("ative", "", &positive_measure),
            ("alize", "al", &positive_measure),
            ("iciti", "ic", &positive_measure),
            ("ical", "ic", &positive_measure),
            ("ful", "", &positive_measure),
            ("ness", "", &positive_measure),
        ],
    )
}

fn step4(w: Vec<u8>) -> Vec<u8> {
    let ion = |stem: &[u8]| measure(stem) > 1 && matches!(stem.last(), Some(b's' | b't'));
    apply_rules(
        w,
        &[
            ("al", "", &measure_above_1),
            ("ance", "", &measure_above_1),
            ("ence", "", &measure_above_1),
            ("er", "", &measure_above_1),
            ("ic", "", &measure_above_1),
            ("able", "", &measure_above_1),
            ("ible", "", &measure_above_1),
            ("ant", "", &measure_above_1),
            ("ement", "", &measure_above_1),
            ("ment", "", &measure_above_1),
            ("ent", "", &measure_above_1),
            ("ion", "", &ion),
            ("ou", "", &measure_above_1),
            ("ism", "", &measure_above_1),
            ("ate", "", &measure_above_1),
            ("iti", "", &measure_above_1),
            ("ous", "", &measure_above_1),
            ("ive", "", &measure_above_1),
            ("ize", "", &measure_above_1),
        ],
    )
}

fn step5a(w: Vec<u8>) -> Vec<u8> {
    if let Some(stem) = w.strip_suffix(b"e") {
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            return stem.to_vec();
        }
    }
    w
}

fn step5b(w: Vec<u8>) -> Vec<u8> {
    if w.ends_with(b"ll") && measure(&w[..w.len() - 1]) > 1 {
        return w[..w.len() - 1].to_vec();
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nltk_stems_for_every_fixture_word() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/metrics/porter.json"
        );
        let golden: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(golden.len() > 100);
        let wrong: Vec<String> = golden
            .iter()
            .filter(|(word, want)| stem(word) != want.as_str().unwrap())
            .map(|(word, want)| format!("{word}: {} (NLTK: {want})", stem(word)))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn y_is_a_consonant_only_after_a_vowel_or_first() {
        assert_eq!(consonant_flags(b"toy"), [true, false, true]);
        assert_eq!(
            consonant_flags(b"syzygy"),
            [true, false, true, false, true, false]
        );
        assert_eq!(measure(b"trouble"), 1);
        assert_eq!(measure(b"oaten"), 2);
    }
}
