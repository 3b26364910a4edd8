//! Bad input to the HF checkpoint writer: each case is a clear error naming the tensor or the
//! directory, and nothing (no partial checkpoint, no staging directory) is left behind.

mod common;

use std::path::Path;

use candle_core::Device;
use common::{dir_entries, fixture};
use hone::export::{
    tensors_in_hf_order, write_hf_checkpoint, HfWriteOptions, NamedTensor, SaveDtype,
};
use hone::io::gguf::GgufFile;
use hone::io::source::ModelSource;
use hone::model::{weights, ModelConfig};
use hone::tokenizer::Tokenizer;

type Tensors = Vec<NamedTensor>;

fn base(name: &str) -> (ModelConfig, Tensors) {
    let source = ModelSource::HfDir(fixture(&format!("models/{name}")));
    let (cfg, w) = weights::load(&source, &Device::Cpu).unwrap();
    let tensors = tensors_in_hf_order(&cfg, w).unwrap();
    (cfg, tensors)
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_gguf(&GgufFile::open(&fixture("tokenizer/tiny-spm.gguf")).unwrap()).unwrap()
}

/// The error of writing `tensors` to `dir` (one shard per tensor, so a late failure comes after
/// files were written), checking that `dir`'s parent holds exactly `left` afterwards.
fn write_error(
    dir: &Path,
    cfg: &ModelConfig,
    tensors: Tensors,
    opts: HfWriteOptions,
    left: &[&str],
) -> String {
    let opts = HfWriteOptions {
        max_shard_bytes: 1,
        ..opts
    };
    let err = write_hf_checkpoint(dir, cfg, tensors, &tokenizer(), SaveDtype::F16, &opts)
        .expect_err("the write should fail");
    let parent = dir.parent().unwrap();
    assert_eq!(dir_entries(parent), left, "left in {}", parent.display());
    format!("{err:#}")
}

fn set(tensors: &mut Tensors, name: &str, index: usize, value: f32) {
    let t = tensors.iter_mut().find(|(n, _, _)| n == name).unwrap();
    t.2[index] = value;
}

#[test]
fn broken_tensors_are_named_and_nothing_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (cfg, tensors) = base("llama-tied");
    type Damage = fn(&mut Tensors);
    // The NaN sits in a late tensor: earlier shards are on disk when it is found.
    let cases: [(&str, Damage); 6] = [
        (
            "tensor model.layers.1.mlp.down_proj.weight: value NaN at index 5 is not finite",
            |t| set(t, "model.layers.1.mlp.down_proj.weight", 5, f32::NAN),
        ),
        ("value inf at index 0 is not finite", |t| {
            set(t, "model.norm.weight", 0, f32::INFINITY)
        }),
        (
            "tensor model.norm.weight: value 70000 at index 3 is beyond the range of float16",
            |t| set(t, "model.norm.weight", 3, 70000.0),
        ),
        (
            "tensor model.layers.0.mlp.up_proj.weight: missing (19 of the 20 tensors",
            |t| t.retain(|(n, _, _)| n != "model.layers.0.mlp.up_proj.weight"),
        ),
        (
            "tensor model.norm.weight: shape [31], but the config implies [32]",
            |t| {
                let norm = t
                    .iter_mut()
                    .find(|(n, _, _)| n == "model.norm.weight")
                    .unwrap();
                norm.1 = vec![31];
                norm.2.pop();
            },
        ),
        (
            "tensor lm_head.weight: the config ties the output head",
            |t| {
                let embed = t[0].clone();
                t.push(("lm_head.weight".into(), embed.1, embed.2));
            },
        ),
    ];
    for (expected, damage) in cases {
        let mut broken = tensors.clone();
        damage(&mut broken);
        let err = write_error(&out, &cfg, broken, HfWriteOptions::default(), &[]);
        assert!(err.contains(expected), "{err}");
        assert!(
            err.starts_with(&format!("{}: cannot write the checkpoint", out.display())),
            "{err}"
        );
    }
}

#[test]
fn an_existing_directory_is_kept_unless_overwriting_and_then_replaced_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let (cfg, tensors) = base("mistral");

    let err = write_error(
        &out,
        &cfg,
        tensors.clone(),
        HfWriteOptions::default(),
        &["out"],
    );
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(dir_entries(&out), ["notes.txt"], "untouched");

    // A failure while overwriting keeps the old directory as it was.
    let mut broken = tensors.clone();
    set(&mut broken, "lm_head.weight", 0, f32::NAN);
    let overwrite = HfWriteOptions {
        overwrite: true,
        ..Default::default()
    };
    write_error(&out, &cfg, broken, overwrite.clone(), &["out"]);
    assert_eq!(dir_entries(&out), ["notes.txt"], "untouched");

    write_hf_checkpoint(
        &out,
        &cfg,
        tensors,
        &tokenizer(),
        SaveDtype::F32,
        &overwrite,
    )
    .unwrap();
    assert!(!out.join("notes.txt").exists(), "replaced, not mixed");
    assert!(out.join("model.safetensors").exists());
    assert_eq!(dir_entries(tmp.path()), ["out"]);
}

#[test]
fn an_unwritable_parent_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    // A file where the parent directory should be: no directory can be created under it, even
    // by root (for whom permission bits would not stop the write).
    let blocker = tmp.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let out = blocker.join("out");
    let (cfg, tensors) = base("llama-tied");
    let opts = HfWriteOptions::default();
    let err =
        write_hf_checkpoint(&out, &cfg, tensors, &tokenizer(), SaveDtype::F32, &opts).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains(&format!("{}: cannot create directory", blocker.display())),
        "{err}"
    );
    assert_eq!(dir_entries(tmp.path()), ["blocker"]);
}

#[test]
fn dtype_names_parse() {
    assert_eq!("bf16".parse::<SaveDtype>().unwrap(), SaveDtype::BF16);
    assert_eq!("float16".parse::<SaveDtype>().unwrap(), SaveDtype::F16);
    let err = "q8_0".parse::<SaveDtype>().unwrap_err().to_string();
    assert_eq!(err, "dtype \"q8_0\" is not one of f32, bf16, f16");
}
