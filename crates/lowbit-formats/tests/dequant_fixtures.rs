//! Bit-exact comparison of lowbit's dequantization with gguf-py's numpy reference.
//!
//! The fixtures are written by `scripts/gen_format_fixtures.py`; see its docstring for the cases.

use lowbit_formats::dequant::is_supported;
use lowbit_formats::{dequantize, dequantize_row, dequantize_rows, row_bytes, GgmlType};
use std::collections::BTreeSet;
use std::path::PathBuf;

struct Case {
    ty: GgmlType,
    name: String,
    quant: Vec<u8>,
    expected: Vec<f32>,
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

fn load_cases() -> Vec<Case> {
    let dir = fixtures_dir();
    let index_path = dir.join("index.json");
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&index_path).unwrap_or_else(|e| panic!("{}: {e}", index_path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", index_path.display()));
    let field = |c: &serde_json::Value, k: &str| -> usize {
        c[k].as_u64()
            .unwrap_or_else(|| panic!("index.json: case without {k}: {c}")) as usize
    };
    let mut cases = Vec::new();
    for c in index["cases"]
        .as_array()
        .expect("index.json: no cases array")
    {
        let id = field(c, "type_id") as u32;
        let ty = GgmlType::from_id(id).unwrap_or_else(|| panic!("unknown type id {id}"));
        assert_eq!(
            c["type"].as_str(),
            Some(ty.name()),
            "type name and id disagree: {c}"
        );
        let file = dir.join(c["file"].as_str().expect("case without file"));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let (qo, ql) = (field(c, "quant_offset"), field(c, "quant_len"));
        let (fo, n) = (field(c, "f32_offset"), field(c, "elements"));
        let quant = bytes[qo..qo + ql].to_vec();
        let expected = bytes[fo..fo + 4 * n]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let name = format!("{}/{}", ty.name(), c["case"].as_str().unwrap_or("?"));
        cases.push(Case {
            ty,
            name,
            quant,
            expected,
        });
    }
    cases
}

/// Bitwise equality, except that any NaN equals any NaN (numpy and Rust may differ in payload).
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn assert_bit_exact(name: &str, got: &[f32], expected: &[f32]) {
    assert_eq!(got.len(), expected.len(), "{name}: length");
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| !same(got[i], expected[i]))
        .collect();
    if !bad.is_empty() {
        let show: Vec<String> = bad
            .iter()
            .take(8)
            .map(|&i| {
                format!(
                    "[{i}] got {:e} ({:#010x}) want {:e} ({:#010x})",
                    got[i],
                    got[i].to_bits(),
                    expected[i],
                    expected[i].to_bits()
                )
            })
            .collect();
        panic!(
            "{name}: {} of {} values differ:\n  {}",
            bad.len(),
            got.len(),
            show.join("\n  ")
        );
    }
}

#[test]
fn matches_gguf_py_bit_for_bit() {
    let cases = load_cases();
    assert!(!cases.is_empty());
    for c in &cases {
        let mut out = vec![0f32; c.expected.len()];
        dequantize(c.ty, &c.quant, &mut out).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_bit_exact(&c.name, &out, &c.expected);
    }
}

#[test]
fn rows_and_single_row_agree_with_whole_tensor() {
    for c in load_cases() {
        // Rows of two blocks each (fixtures hold an even number of blocks).
        let cols = 2 * c.ty.block_size();
        let rb = row_bytes(c.ty, cols).unwrap();
        let mut out = vec![f32::NAN; c.expected.len()];
        dequantize_rows(c.ty, &c.quant, cols, &mut out)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_bit_exact(&c.name, &out, &c.expected);

        let mut row = vec![0f32; cols];
        dequantize_row(c.ty, &c.quant[rb..2 * rb], &mut row).unwrap();
        assert_bit_exact(&c.name, &row, &c.expected[cols..2 * cols]);
    }
}

#[test]
fn every_supported_type_has_fixtures() {
    let covered: BTreeSet<GgmlType> = load_cases().iter().map(|c| c.ty).collect();
    for id in 0..64 {
        if let Some(ty) = GgmlType::from_id(id) {
            if is_supported(ty) {
                assert!(covered.contains(&ty), "no fixture for {ty}");
            }
        }
    }
}

#[test]
fn bad_lengths_are_errors_not_panics() {
    for c in load_cases() {
        let mut out = vec![0f32; c.expected.len()];
        assert!(
            dequantize(c.ty, &c.quant[..c.quant.len() - 1], &mut out).is_err(),
            "{}",
            c.name
        );
        assert!(
            dequantize_row(c.ty, &c.quant, &mut out[1..]).is_err(),
            "{}",
            c.name
        );
        let mut longer = vec![0f32; c.expected.len() + c.ty.block_size()];
        assert!(
            dequantize(c.ty, &c.quant, &mut longer).is_err(),
            "{}",
            c.name
        );
    }
}
