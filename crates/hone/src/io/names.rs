//! Names a user typed, matched against the names a file or a config defines: the nearest few by
//! spelling, so an error can suggest them instead of listing every name there is.

/// How many of the nearest names a message suggests: enough to catch the intended one, few
/// enough to read (LLaMA-Factory's own dataset_info.json names ~110 datasets).
pub const SUGGESTIONS: usize = 3;

/// Up to `count` of `names`, the closest in spelling to `name` first (normalized edit distance
/// with transpositions, so `lora_rnak` finds `lora_rank`); ties keep the order of `names`.
pub fn nearest<'a, S: AsRef<str>>(name: &str, names: &'a [S], count: usize) -> Vec<&'a str> {
    let mut scored: Vec<(f64, &str)> = names
        .iter()
        .map(|n| {
            let n = n.as_ref();
            (strsim::normalized_damerau_levenshtein(name, n), n)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(count).map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_names_come_first() {
        let names = ["alpaca_en", "identity", "alpaca_zh", "glaive_toolcall_en"];
        assert_eq!(nearest("alpaca_e", &names, 2), ["alpaca_en", "alpaca_zh"]);
        assert_eq!(nearest("identiy", &names, 1), ["identity"]);
        assert_eq!(nearest("glaive", &names, 9).len(), 4);
        assert!(nearest("x", &names[..0], 3).is_empty());
    }
}
