//! `--export gguf`: a small model (llama2.c stories260K, q/k rows in NeoX order as `lowbit
//! quantize` holds them) written as GGUF, loaded back by lowbit's GGUF loader, gives the logits
//! of its dequantized weights; the tokenizer travels along.

use std::path::{Path, PathBuf};

use lowbit_formats::GgmlType;
use lowbit_model::source::{load_llama2c, load_model};
use lowbit_model::{Backing, TensorEntry, Transformer, WeightStore};
use lowbit_quant::gguf_export::{config_metadata, export_gguf, tensor_type, GgufScheme};

fn stories() -> Option<PathBuf> {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/models/stories260K.bin");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} not found", p.display());
        None
    }
}

/// `w` with every matrix replaced by F32 values decoded from the GGUF type the exporter picks.
fn dequantized_reference(
    c: &lowbit_model::ModelConfig,
    w: &WeightStore,
    scheme: GgufScheme,
) -> WeightStore {
    let tied = !w.contains("lm_head.weight");
    let mut out = WeightStore::new("reference");
    for n in w.names() {
        let e = w.entry(n).unwrap();
        let mut v = w.to_f32(n).unwrap();
        if e.shape.len() == 2 {
            let g = lowbit_quant::gguf_export::gguf_tensor_name(c.arch, n).unwrap();
            let layer = n
                .strip_prefix("model.layers.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse().ok());
            let head = n == "lm_head.weight" || (tied && n == "model.embed_tokens.weight");
            let ty = tensor_type(scheme, &g, layer, c.num_layers, e.shape[1], head);
            let mut bytes = vec![0u8; ty.byte_len(v.len()).unwrap()];
            lowbit_formats::quantize_rows(ty, &v, e.shape[1], &mut bytes).unwrap();
            lowbit_formats::dequantize(ty, &bytes, &mut v).unwrap();
        }
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let len = bytes.len();
        let b = out.add_backing(Backing::Owned(bytes));
        out.insert(
            n,
            TensorEntry {
                dtype: GgmlType::F32,
                shape: e.shape.clone(),
                backing: b,
                offset: 0,
                len,
            },
        )
        .unwrap();
    }
    out
}

#[test]
fn gguf_export_loads_back_with_the_dequantized_logits() {
    let Some(p) = stories() else { return };
    let src = load_llama2c(&p).unwrap();
    let tok = lowbit_model::tokenizer::llama2c::Llama2cTokenizer::open(
        &p.with_file_name("tok512.bin"),
        Some(512),
    )
    .unwrap();
    let (mut c, mut w) = (src.config.clone(), src.weights);
    lowbit_quant::hf_source::undo_interleaved_rope(&mut c, &mut w).unwrap();
    let tmp = std::env::temp_dir().join(format!("lowbit-gguf-export-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let toks: Vec<u32> = (1..48).map(|t| (t * 37 % 512) as u32).collect();
    for scheme in ["q8_0", "q4_k_m", "q4_0"] {
        let scheme = GgufScheme::parse(scheme).unwrap();
        let mut meta = config_metadata(&c, "stories260K").unwrap();
        meta.extend(lowbit_quant::hf_source::tokenizer_metadata_from_llama2c(&tok).unwrap());
        let out = tmp.join(format!("{}.gguf", scheme.name()));
        let r = export_gguf(&out, &c, &w, meta, scheme, &[], false, &mut |_, _, _| {}).unwrap();
        assert!(r.file_bytes > 0 && r.bits_per_weight > 4.0, "{r:?}");

        let loaded = load_model(out.to_str().unwrap()).unwrap();
        assert_eq!(loaded.source, "gguf");
        // The tokenizer came along.
        let text = "Once upon a time, there was a little dog.";
        assert_eq!(
            loaded.tokenizer.encode(text, true),
            src.tokenizer.encode(text, true)
        );
        let got_model = loaded.transformer().unwrap();
        let got = got_model
            .forward(&mut got_model.new_state(toks.len()), &toks, 0)
            .unwrap();
        let reference =
            Transformer::load(c.clone(), &dequantized_reference(&c, &w, scheme)).unwrap();
        let want = reference
            .forward(&mut reference.new_state(toks.len()), &toks, 0)
            .unwrap();
        let num: f64 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        let rel = (num / den).sqrt();
        eprintln!("{}: relative logits difference {rel:.3e}", scheme.name());
        // lowbit's kernels may multiply quantized weights by 8-bit quantized activations (as
        // llama.cpp does), so logits are close, not bit-identical, to f32 math on the same weights.
        assert!(rel < 2e-2, "{}: {rel}", scheme.name());
        // The weights themselves are exactly the dequantized ones, once the q/k rows that went
        // back to llama.cpp's interleaved order are put in NeoX order again.
        let (mut lc, mut lw) = (loaded.config.clone(), loaded.weights);
        lowbit_quant::hf_source::undo_interleaved_rope(&mut lc, &mut lw).unwrap();
        let want_w = dequantized_reference(&c, &w, scheme);
        for n in w.names() {
            assert_eq!(
                lw.to_f32(n).unwrap(),
                want_w.to_f32(n).unwrap(),
                "{} {n}",
                scheme.name()
            );
        }
    }
    // Refused without --force; nothing half-written is left behind.
    let out = tmp.join("q8_0.gguf");
    let e = export_gguf(
        &out,
        &c,
        &w,
        config_metadata(&c, "x").unwrap(),
        GgufScheme::Q4KM,
        &[],
        false,
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    // No tokenizer metadata: a clear error.
    let e = export_gguf(
        &tmp.join("n.gguf"),
        &c,
        &w,
        config_metadata(&c, "x").unwrap(),
        GgufScheme::Q4KM,
        &[],
        false,
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("tokenizer"), "{e}");
    assert!(std::fs::read_dir(&tmp).unwrap().all(|f| {
        let n = f.unwrap().file_name().to_string_lossy().into_owned();
        !n.starts_with('.')
    }));
    std::fs::remove_dir_all(&tmp).unwrap();
}
