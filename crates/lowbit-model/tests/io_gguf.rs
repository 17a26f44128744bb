//! GGUF reading and writing: round trips through the writer, the vocab-only test file, the
//! Gemma-3-270M Q4_K_M file when fetched, and parse speed on a Gemma-sized vocabulary.

mod io_common;

use std::path::PathBuf;

use io_common::*;
use lowbit_formats::GgmlType;
use lowbit_model::gguf::{open_gguf, GgufFile, GgufValue};
use lowbit_model::gguf_write::{gguf_bytes, write_gguf, GgufTensorWrite};

#[test]
fn round_trip_metadata_and_tensors() {
    let dir = TempDir::new("roundtrip");
    let path = dir.write("small.gguf", &small_gguf());
    let (g, store) = open_gguf(&path).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.data_offset % 32, 0);
    // Every metadata entry comes back unchanged.
    for (k, v) in small_metadata() {
        assert_eq!(g.get(&k), Some(&v), "key {k}");
    }
    assert_eq!(g.metadata.len(), small_metadata().len());

    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.get_u64("llama.block_count"), Some(2));
    assert_eq!(g.get_u64("i8"), None, "negative ints are not u64");
    assert_eq!(g.get_i64("i8"), Some(-5));
    assert_eq!(g.get_f32("llama.rope.freq_base"), Some(10000.0));
    assert_eq!(g.get_f32("f64"), Some(0.125));
    assert_eq!(g.get_bool("llama.use_parallel"), Some(true));
    assert_eq!(g.get_str("general.name"), Some("tiny"));
    assert_eq!(g.get_str("llama.block_count"), None);
    assert_eq!(
        g.get_str_array(TOKENS_KEY).unwrap(),
        vec!["<unk>", "<s>", "hello", "▁wörld"]
    );
    assert_eq!(
        g.get_f32_array("tokenizer.ggml.scores").unwrap(),
        vec![0.0, -1.5, 2.0, 3.0]
    );
    assert_eq!(
        g.get_i32_array("tokenizer.ggml.token_type").unwrap(),
        vec![2, 3, 1, 1]
    );
    assert_eq!(g.get_str_array("tokenizer.ggml.scores"), None);
    assert_eq!(g.get("missing"), None);

    // Tensors: GGUF dims are reversed row-major shapes.
    let a = g.tensor("a.weight").unwrap();
    assert_eq!(
        (a.dtype, a.dims.clone(), a.shape()),
        (GgmlType::F32, vec![4, 2], vec![2, 4])
    );
    let q = g.tensor("q.weight").unwrap();
    assert_eq!(
        (q.dtype, q.dims.clone(), q.byte_len()),
        (GgmlType::Q8_0, vec![32, 2], 68)
    );
    assert_eq!(q.offset % 32, 0);

    let (a_data, q_data) = small_tensor_data();
    let va = store.get("a.weight").unwrap();
    assert_eq!((va.shape, va.data), (&[2usize, 4][..], &a_data[..]));
    let vq = store.get("q.weight").unwrap();
    assert_eq!((vq.shape, vq.data), (&[2usize, 32][..], &q_data[..]));
    assert_eq!(
        store.to_f32("a.weight").unwrap(),
        vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    );
    let deq = store.to_f32("q.weight").unwrap();
    assert_eq!(deq[..32], (0..32).map(|i| i as f32).collect::<Vec<_>>()[..]);
}

#[test]
fn write_gguf_is_atomic_and_respects_alignment() {
    let dir = TempDir::new("write");
    let path = dir.path().join("out.gguf");
    let data = f32_bytes(&[1.0; 3]);
    let meta = vec![
        ("general.architecture", GgufValue::String("llama".into())),
        ("general.alignment", GgufValue::U32(64)),
    ];
    let tensors = [
        GgufTensorWrite {
            name: "x".into(),
            dtype: GgmlType::F32,
            shape: vec![3],
            data: &data,
        },
        GgufTensorWrite {
            name: "y".into(),
            dtype: GgmlType::F32,
            shape: vec![1, 3],
            data: &data,
        },
    ];
    write_gguf(&path, meta.iter().map(|(k, v)| (*k, v)), &tensors).unwrap();
    // Only the target remains: no temp file left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("out.gguf")]);
    let (g, store) = open_gguf(&path).unwrap();
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset % 64, 0);
    assert!(g.tensors.iter().all(|t| t.offset % 64 == 0));
    assert_eq!(store.to_f32("y").unwrap(), vec![1.0; 3]);

    // Bad input to the writer is an error naming the tensor, and leaves nothing behind.
    let bad = [GgufTensorWrite {
        name: "z".into(),
        dtype: GgmlType::Q4_0,
        shape: vec![16],
        data: &data,
    }];
    let msg = err_msg(
        write_gguf(&dir.path().join("bad.gguf"), meta.clone(), &bad),
        "bad tensor",
    );
    assert!(msg.contains("'z'") && msg.contains("bad.gguf"), "{msg}");
    assert!(!dir.path().join("bad.gguf").exists());
    let mixed = vec![(
        "m",
        GgufValue::Array(vec![GgufValue::U8(1), GgufValue::F32(1.0)]),
    )];
    let msg = err_msg(gguf_bytes(mixed, &[]), "mixed array");
    assert!(msg.contains("mixes u8 and f32"), "{msg}");
}

#[test]
fn invalid_utf8_strings_are_replaced() {
    let mut bytes = small_gguf();
    // The first token "<unk>" starts after its 8-byte length.
    bytes[OFF_FIRST_TOKEN_LEN + 8] = 0xff;
    let g = GgufFile::parse(std::path::Path::new("utf8.gguf"), &bytes).unwrap();
    assert_eq!(g.get_str_array(TOKENS_KEY).unwrap()[0], "\u{fffd}unk>");
}

/// Copies of llama.cpp's vocab-only llama-spm GGUF: the lowbit cache first, then the shared data.
fn llama_spm_candidates() -> Vec<PathBuf> {
    const NAME: &str = "ggml-vocab-llama-spm.gguf";
    let mut v = Vec::new();
    if let Some(c) = std::env::var_os("LOWBIT_CACHE") {
        v.push(PathBuf::from(c).join("tokenizers").join(NAME));
    }
    if let Some(h) = std::env::var_os("HOME") {
        v.push(PathBuf::from(h).join(".cache/lowbit/tokenizers").join(NAME));
    }
    v.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/tokenizers")
            .join(NAME),
    );
    v.into_iter().filter(|p| p.is_file()).collect()
}

#[test]
fn vocab_only_llama_spm() {
    let mut checked = 0;
    for path in llama_spm_candidates() {
        let g = match open_gguf(&path) {
            Ok((g, store)) => {
                assert_eq!(store.names().count(), 0);
                g
            }
            Err(e) => {
                // A copy passed through a text-mode transfer has its non-UTF-8 bytes replaced by
                // U+FFFD (EF BF BD), which breaks every binary field: it must fail cleanly.
                let bytes = std::fs::read(&path).unwrap();
                let mangled = bytes.windows(3).any(|w| w == [0xef, 0xbf, 0xbd]);
                assert!(mangled, "{} does not parse: {e}", path.display());
                assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
                eprintln!(
                    "warning: {} is a mangled copy (U+FFFD replacements), refused: {e}",
                    path.display()
                );
                continue;
            }
        };
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.tensors.len(), 0);
        let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap();
        assert_eq!(tokens.len(), 32000);
        assert_eq!(&tokens[..3], &["<unk>", "<s>", "</s>"]);
        assert_eq!(
            g.get_f32_array("tokenizer.ggml.scores").unwrap().len(),
            32000
        );
        assert_eq!(
            g.get_i32_array("tokenizer.ggml.token_type").unwrap().len(),
            32000
        );
        assert_eq!(g.get_str("tokenizer.ggml.model"), Some("llama"));
        assert_eq!(g.get_u64("llama.block_count"), Some(32));
        checked += 1;
    }
    if checked == 0 {
        eprintln!("skipping: no intact ggml-vocab-llama-spm.gguf found");
    }
}

/// The Gemma-3-270M Q4_K_M GGUF if it has been fetched (scripts/fetch-gemma.sh).
fn gemma_path() -> Option<PathBuf> {
    const NAME: &str = "gemma-3-270m-q4_k_m.gguf";
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("LOWBIT_GEMMA_GGUF") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(c) = std::env::var_os("LOWBIT_CACHE") {
        candidates.push(PathBuf::from(c).join("models").join(NAME));
    }
    if let Some(h) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(h).join(".cache/lowbit/models").join(NAME));
    }
    candidates.into_iter().find(|p| p.is_file())
}

#[test]
fn gemma_270m_q4_k_m() {
    let Some(path) = gemma_path() else {
        eprintln!("skipping: Gemma GGUF not fetched");
        return;
    };
    let t0 = std::time::Instant::now();
    let (g, store) = open_gguf(&path).unwrap();
    eprintln!("opened {} in {:?}", path.display(), t0.elapsed());
    // Header parse alone, pages warm (the 262,144-entry vocabulary dominates).
    let map = lowbit_model::Backing::map_file(&path).unwrap();
    let t0 = std::time::Instant::now();
    GgufFile::parse(&path, map.bytes()).unwrap();
    eprintln!("parsed the header again in {:?}", t0.elapsed());
    assert_eq!(g.architecture(), Some("gemma3"));
    assert_eq!(g.tensors.len(), 236);
    assert_eq!(store.names().count(), 236);
    let types: std::collections::BTreeSet<GgmlType> = g.tensors.iter().map(|t| t.dtype).collect();
    for t in [
        GgmlType::Q5_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
        GgmlType::F32,
    ] {
        assert!(types.contains(&t), "no {t} tensor");
    }
    for k in [
        "gemma3.block_count",
        "gemma3.embedding_length",
        "gemma3.attention.head_count",
        "gemma3.context_length",
    ] {
        assert!(g.get_u64(k).is_some(), "missing {k}");
    }
    assert!(g.get_f32("gemma3.rope.freq_base").is_some());
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        262144
    );
    let norm = store.entry("output_norm.weight").unwrap();
    assert_eq!((norm.dtype, norm.shape.clone()), (GgmlType::F32, vec![640]));
    let emb = store.entry("token_embd.weight").unwrap();
    assert_eq!(emb.shape, vec![262144, 640]);
    // The last tensor ends inside the file.
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(g
        .tensors
        .iter()
        .all(|t| g.data_offset + t.offset + t.byte_len() as u64 <= len));
}

#[test]
fn big_vocab_parses_fast() {
    // A Gemma-sized vocabulary: 262,144 strings plus scores and types.
    let n = 262_144;
    let tokens: Vec<GgufValue> = (0..n)
        .map(|i| GgufValue::String(format!("tok{i}")))
        .collect();
    let scores: Vec<GgufValue> = (0..n).map(|i| GgufValue::F32(-(i as f32))).collect();
    let types: Vec<GgufValue> = (0..n).map(|_| GgufValue::I32(1)).collect();
    let meta = vec![
        ("tokenizer.ggml.tokens", GgufValue::Array(tokens)),
        ("tokenizer.ggml.scores", GgufValue::Array(scores)),
        ("tokenizer.ggml.token_type", GgufValue::Array(types)),
    ];
    let bytes = gguf_bytes(meta, &[]).unwrap();
    let path = std::path::Path::new("vocab.gguf");
    let mut best = std::time::Duration::MAX;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        let g = GgufFile::parse(path, &bytes).unwrap();
        best = best.min(t0.elapsed());
        assert_eq!(g.get_array("tokenizer.ggml.tokens").unwrap().len(), n);
    }
    eprintln!(
        "parsed a {n}-token vocabulary ({} bytes) in {best:?}",
        bytes.len()
    );
    // The target is < 100 ms in release; tests run in the dev profile, so allow slack.
    assert!(
        best < std::time::Duration::from_millis(1000),
        "took {best:?}"
    );
}
