//! The real llama2.c model stories260K: greedy output must equal llama2.c's.

use std::path::{Path, PathBuf};

use lowbit_model::sampling::argmax;
use lowbit_model::source::load_model;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

#[test]
fn stories260k_greedy_matches_llama2c() {
    let path = data().join("models/stories260K.bin");
    let m = load_model(path.to_str().unwrap()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.config.num_kv_heads, 4);
    assert_eq!(m.config.vocab_size, 512);
    let model = m.transformer().unwrap();
    let prompt = m.tokenizer.encode("Once upon a time", true);
    let mut state = model.new_state(256);
    let mut logits = model
        .forward(&mut state, &prompt, prompt.len() - 1)
        .unwrap();
    let mut out = prompt.clone();
    for _ in 0..40 {
        let next = argmax(&logits) as u32;
        out.push(next);
        logits = model.forward(&mut state, &[next], 0).unwrap();
    }
    let text = m.tokenizer.decode(&out);
    let expected = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
    assert!(text.starts_with(expected), "got: {text:?}");
}

#[test]
fn truncated_llama2c_checkpoint_is_a_clear_error() {
    let src = std::fs::read(data().join("models/stories260K.bin")).unwrap();
    let dir = std::env::temp_dir().join(format!("lowbit-l2c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("cut.bin");
    std::fs::write(&p, &src[..src.len() / 2]).unwrap();
    let err = lowbit_model::llama2c::open_llama2c(&p)
        .err()
        .expect("a truncated file must not load")
        .to_string();
    assert!(
        err.contains("cut.bin") && err.contains("truncated"),
        "{err}"
    );
    std::fs::write(&p, &src[..10]).unwrap();
    let err = lowbit_model::llama2c::open_llama2c(&p)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("header"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
