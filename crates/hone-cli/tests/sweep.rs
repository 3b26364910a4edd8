//! `hone sweep` on the tiny model: trials drawn from each method's space, successive halving on
//! the eval loss (each rung continuing its survivors from their checkpoints), a ranked table, a
//! failed trial reported by name, and a compare report of the best.

mod common;

use common::{arg, hone, train_config};
use serde_json::Value;

#[test]
fn a_sweep_halves_its_trials_and_ranks_them_by_eval_loss() {
    let dir = tempfile::tempdir().unwrap();
    let base = train_config(dir.path());
    let out = dir.path().join("sweep");
    let sweep = dir.path().join("sweep.yaml");
    let text = format!(
        "base: {base}\noutput_dir: {out}\ntrials: 6\nmax_steps: 4\neta: 2\nseed: 1\n\
         overrides:\n  val_size: 0.25\n  lr_scheduler_type: cosine\n\
         space:\n  learning_rate: [1.0e-3, 1.0e-2]\n\
         methods:\n  lora: {{lora_rank: [2, 4]}}\n  ia3: {{}}\n  loha: {{decompose_both: [true]}}\n\
         compare:\n  prompts: {data}\n  best: 2\n  max_new_tokens: 4\n",
        base = base.display(),
        out = out.display(),
        data = dir.path().join("data.jsonl").display(),
    );
    std::fs::write(&sweep, text).unwrap();
    let run = hone(&["sweep", arg(&sweep)]);
    run.ok();

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    let outcome = &json["outcome"];
    assert_eq!(outcome["rungs"], serde_json::json!([1, 2, 4]));
    let trials = outcome["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 6);
    let reached = |t: &Value| t["evals"].as_array().unwrap().len();
    // LoHa refuses LoKr's decompose_both: those trials fail by name, ranked last.
    let failed: Vec<&Value> = trials.iter().filter(|t| !t["error"].is_null()).collect();
    for t in &failed {
        assert_eq!(t["keys"]["finetuning_type"], "loha");
        assert!(
            t["error"].as_str().unwrap().contains("decompose_both"),
            "{t}"
        );
    }
    let alive = trials.len() - failed.len();
    // Rung 1 trains every live trial, rung 2 the best half, rung 3 the best of those.
    let counts: Vec<usize> = (1..=3)
        .map(|r| trials.iter().filter(|t| reached(t) >= r).count())
        .collect();
    assert_eq!(counts, vec![alive, (alive / 2).max(1), 1]);
    let best = &trials[0];
    assert_eq!(reached(best), 3);
    let losses: Vec<f64> = trials[1..counts[1]]
        .iter()
        .map(|t| t["evals"][1][1].as_f64().unwrap())
        .collect();
    assert!(
        losses.windows(2).all(|w| w[0] <= w[1]),
        "ranked by eval loss: {losses:?}"
    );
    // The winner continued from its rung checkpoints, and ends with its final adapter.
    let winner = std::path::PathBuf::from(best["dir"].as_str().unwrap());
    assert!(winner.join("checkpoint-1").is_dir() && winner.join("checkpoint-2").is_dir());
    assert!(winner.join("adapter_config.json").is_file());
    let table = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(table.contains("| 1 | trial-"), "{table}");
    // The report compares the two best as their last rung left them.
    assert!(out.join("report.html").is_file() && out.join("report.md").is_file());
    let best_dirs: Vec<String> = std::fs::read_dir(out.join("best"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(best_dirs.len(), 2, "{best_dirs:?}");
    let winner_name = best["name"].as_str().unwrap();
    assert!(
        best_dirs.contains(&format!("{winner_name}-step4")),
        "{best_dirs:?}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains(&format!("{winner_name}-step4")), "{report}");
}
