//! `lowbit eval compare`: several models against one base in one table (size, bits per weight,
//! PPL, ΔPPL, KLD mean / p99, top-1 agreement), and an SVG of mean KLD against bits per weight
//! with the Pareto front (no model both smaller and closer to the base) marked.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::kld::KldResult;

/// One compared model.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    pub model: String,
    /// Bits per weight of the decoder layers' linear weights (codes, scales and zero points), when
    /// known.
    pub bits_per_weight: Option<f64>,
    /// Bytes on disk.
    pub size_bytes: u64,
    #[serde(flatten)]
    pub kld: KldResult,
}

/// Which points are on the Pareto front of (bits, kld), both to be minimised: no other point is
/// at most as large in both and smaller in one. Points without bits are never on it.
pub fn pareto_front(points: &[(Option<f64>, f64)]) -> Vec<bool> {
    points
        .iter()
        .map(|&(b, k)| {
            let Some(b) = b else { return false };
            !points
                .iter()
                .any(|&(ob, ok)| ob.is_some_and(|ob| ob <= b && ok <= k && (ob < b || ok < k)))
        })
        .collect()
}

fn fmt_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else {
        format!("{:.1} kB", n / 1e3)
    }
}

/// The text table: one line per model, Pareto-front models marked with `*`.
pub fn table(rows: &[CompareRow], base: &str) -> String {
    let front = pareto_front(
        &rows
            .iter()
            .map(|r| (r.bits_per_weight, r.kld.kld_mean))
            .collect::<Vec<_>>(),
    );
    let width = rows.iter().map(|r| r.model.len()).max().unwrap_or(5).max(5);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<width$} {:>6} {:>10} {:>17} {:>9} {:>20} {:>9} {:>7}",
        "model", "bpw", "size", "PPL", "ΔPPL", "KLD mean", "KLD p99", "top-1"
    );
    for (r, on_front) in rows.iter().zip(front) {
        let k = &r.kld;
        let _ = writeln!(
            s,
            "{} {:<width$} {:>6} {:>10} {:>17} {:>+9.4} {:>20} {:>9.5} {:>6.2}%",
            if on_front { '*' } else { ' ' },
            r.model,
            r.bits_per_weight
                .map(|b| format!("{b:.3}"))
                .unwrap_or_else(|| "-".into()),
            fmt_bytes(r.size_bytes),
            format!("{:.4} ± {:.4}", k.ppl, k.ppl_stderr),
            k.delta_ppl,
            format!("{:.6} ± {:.6}", k.kld_mean, k.kld_stderr),
            k.kld_p99,
            100.0 * k.top1
        );
    }
    if let Some(k) = rows.first().map(|r| &r.kld) {
        let _ = writeln!(
            s,
            "base {base}: PPL {:.4} ± {:.4}; {} chunks of {}, {} scored tokens; * = Pareto front \
             (bits per weight vs mean KLD); bpw counts the decoder layers' linear weights",
            k.ppl_base, k.ppl_base_stderr, k.chunks, k.ctx, k.scored
        );
    }
    s
}

/// The `--json` object: base, and one entry per model with every KLD statistic.
pub fn json(rows: &[CompareRow], base: &str) -> serde_json::Value {
    let front = pareto_front(
        &rows
            .iter()
            .map(|r| (r.bits_per_weight, r.kld.kld_mean))
            .collect::<Vec<_>>(),
    );
    let models: Vec<serde_json::Value> = rows
        .iter()
        .zip(front)
        .map(|(r, f)| {
            let mut v = serde_json::to_value(r).expect("plain data serializes");
            v["pareto"] = serde_json::json!(f);
            v
        })
        .collect();
    serde_json::json!({ "base": base, "models": models })
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "Nice" tick values covering [lo, hi]: steps of 1, 2 or 5 × 10^k, about `n` of them.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

/// A hand-written SVG scatter plot of mean KLD (log scale when it spans more than a factor of
/// 20) against bits per weight: every model a labelled point, the Pareto front joined by a line
/// and its points filled. Models without a bits-per-weight figure are left out.
pub fn svg_plot(rows: &[CompareRow], base: &str) -> String {
    let (w, h) = (720.0, 480.0);
    let (left, right, top, bottom) = (80.0, 30.0, 50.0, 60.0);
    let pts: Vec<(f64, f64, &str)> = rows
        .iter()
        .filter_map(|r| {
            r.bits_per_weight
                .map(|b| (b, r.kld.kld_mean, r.model.as_str()))
        })
        .collect();
    let front = pareto_front(&pts.iter().map(|p| (Some(p.0), p.1)).collect::<Vec<_>>());
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    if !x0.is_finite() {
        (x0, x1) = (0.0, 16.0);
    }
    let pad = ((x1 - x0) * 0.08).max(0.25);
    let (x0, x1) = (x0 - pad, x1 + pad);
    let pos: Vec<f64> = pts.iter().map(|p| p.1).filter(|k| *k > 0.0).collect();
    let kmin = pos.iter().cloned().fold(f64::INFINITY, f64::min);
    let kmax = pts.iter().map(|p| p.1).fold(0f64, f64::max);
    let log = pos.len() == pts.len() && !pts.is_empty() && kmax / kmin > 20.0;
    let (y0, y1) = if log {
        (kmin.log10().floor(), kmax.log10().ceil())
    } else {
        (0.0, if kmax > 0.0 { kmax * 1.1 } else { 1.0 })
    };
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let sy = |k: f64| {
        let v = if log { k.max(1e-300).log10() } else { k };
        h - bottom - (v - y0) / (y1 - y0).max(1e-12) * (h - top - bottom)
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">Mean KL-divergence vs bits per weight (base: {})</text>"#,
        w / 2.0,
        xml_escape(short_name(base))
    );
    // Axes and grid.
    let (ax, ay) = (left, h - bottom);
    let _ = writeln!(
        s,
        r##"<path d="M{ax},{top} V{ay} H{}" stroke="#333" fill="none"/>"##,
        w - right
    );
    for t in ticks(x0, x1, 8) {
        let x = sx(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{ay}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            ay + 18.0,
            trim(t)
        );
    }
    let yt: Vec<(f64, String)> = if log {
        (y0 as i64..=y1 as i64)
            .map(|e| (10f64.powi(e as i32), format!("1e{e}")))
            .collect()
    } else {
        ticks(y0, y1, 6).into_iter().map(|t| (t, trim(t))).collect()
    };
    for (t, label) in yt {
        let y = sy(t);
        let _ = writeln!(
            s,
            r##"<line x1="{ax}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            w - right,
            ax - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">bits per weight (decoder linear layers)</text>"#,
        (left + w - right) / 2.0,
        h - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">mean KLD (nats{})</text>"#,
        (top + ay) / 2.0,
        (top + ay) / 2.0,
        if log { ", log scale" } else { "" }
    );
    // The Pareto front, left to right.
    let mut fp: Vec<(f64, f64)> = pts
        .iter()
        .zip(&front)
        .filter(|(_, f)| **f)
        .map(|(p, _)| (p.0, p.1))
        .collect();
    fp.sort_by(|a, b| a.0.total_cmp(&b.0));
    if fp.len() > 1 {
        let d: Vec<String> = fp
            .iter()
            .map(|(b, k)| format!("{:.1},{:.1}", sx(*b), sy(*k)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline class="pareto" points="{}" fill="none" stroke="#d62728" stroke-width="2" stroke-dasharray="6 4"/>"##,
            d.join(" ")
        );
    }
    for ((b, k, name), f) in pts.iter().zip(&front) {
        let (x, y) = (sx(*b), sy(*k));
        let (class, fill) = if *f {
            ("point pareto", "#d62728")
        } else {
            ("point", "white")
        };
        let _ = writeln!(
            s,
            r##"<circle class="{class}" cx="{x:.1}" cy="{y:.1}" r="5" fill="{fill}" stroke="#d62728" stroke-width="1.5"><title>{}: {b:.3} bpw, KLD {k:.6}</title></circle>"##,
            xml_escape(name)
        );
        // Labels to the right of the point, or to its left near the right edge.
        let (lx, anchor) = if x > left + 0.7 * (w - left - right) {
            (x - 8.0, "end")
        } else {
            (x + 8.0, "start")
        };
        let _ = writeln!(
            s,
            r#"<text x="{lx:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
            y - 8.0,
            xml_escape(short_name(name))
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="end" fill="#d62728">● Pareto front</text>"##,
        w - right,
        top - 8.0
    );
    s.push_str("</svg>\n");
    s
}

/// The last path component: labels stay short.
fn short_name(m: &str) -> &str {
    let t = m.trim_end_matches('/');
    t.rsplit('/').next().unwrap_or(t)
}

fn trim(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// Write `bytes` to `path` through a temporary file next to it and a rename, so a reader never
/// sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, bpw: Option<f64>, kld: f64) -> CompareRow {
        CompareRow {
            model: model.into(),
            bits_per_weight: bpw,
            size_bytes: 123_456_789,
            kld: KldResult {
                ppl: 16.0 + kld,
                ppl_stderr: 0.5,
                ppl_base: 15.0,
                ppl_base_stderr: 0.4,
                delta_ppl: 1.0 + kld,
                kld_mean: kld,
                kld_stderr: kld / 20.0,
                kld_median: kld / 2.0,
                kld_p99: kld * 5.0,
                kld_max: kld * 9.0,
                top1: 0.9,
                top1_stderr: 0.01,
                rms_dp: 0.05,
                rms_dp_stderr: 0.001,
                scored: 1020,
                chunks: 4,
                ctx: 512,
            },
        }
    }

    fn rows() -> Vec<CompareRow> {
        vec![
            row("out/w4g128", Some(4.25), 0.08),
            row("out/w8", Some(8.0), 0.002),
            row("out/<bad> & w4", Some(4.5), 0.2), // dominated by w4g128
            row("out/w2g64", Some(2.5), 0.9),
            row("plain.bin", None, 0.5),
        ]
    }

    #[test]
    fn pareto_front_keeps_only_undominated_points() {
        let f = pareto_front(
            &rows()
                .iter()
                .map(|r| (r.bits_per_weight, r.kld.kld_mean))
                .collect::<Vec<_>>(),
        );
        assert_eq!(f, vec![true, true, false, true, false]);
        // Ties are not domination.
        assert_eq!(
            pareto_front(&[(Some(4.0), 0.1), (Some(4.0), 0.1)]),
            vec![true, true]
        );
    }

    #[test]
    fn table_and_json_have_every_model() {
        let t = table(&rows(), "base.gguf");
        for r in rows() {
            assert!(t.contains(&r.model), "{t}");
        }
        assert!(t.lines().nth(1).unwrap().starts_with('*'), "{t}");
        assert!(t.lines().nth(3).unwrap().starts_with(' '), "{t}");
        assert!(
            t.contains("4.250") && t.contains("0.080000") && t.contains("90.00%"),
            "{t}"
        );
        let j = json(&rows(), "base.gguf");
        assert_eq!(j["base"], "base.gguf");
        let m = j["models"].as_array().unwrap();
        assert_eq!(m.len(), 5);
        for key in [
            "model",
            "bits_per_weight",
            "size_bytes",
            "ppl",
            "ppl_base",
            "delta_ppl",
            "kld_mean",
            "kld_p99",
            "top1",
            "pareto",
        ] {
            assert!(m[0].get(key).is_some(), "{key} missing: {}", m[0]);
        }
        assert_eq!(m[2]["pareto"], false);
        assert!(m[4]["bits_per_weight"].is_null());
    }

    #[test]
    fn svg_is_well_formed_with_every_point() {
        let svg = svg_plot(&rows(), "base & co");
        // Well-formed enough for an XML parser: one root, balanced tags, escaped text.
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        let mut stack = Vec::new();
        let mut rest = svg.as_str();
        while let Some(i) = rest.find('<') {
            let j = rest[i..].find('>').expect("tag closes") + i;
            let tag = &rest[i + 1..j];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name.to_string()), "unbalanced </{name}>");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap().to_string());
            }
            // Text between tags holds no raw '&' other than entities.
            let text_end = rest[j..].find('<').map_or(rest.len(), |k| k + j);
            for (p, _) in rest[j + 1..text_end].match_indices('&') {
                let t = &rest[j + 1 + p..text_end];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;"]
                        .iter()
                        .any(|e| t.starts_with(e)),
                    "{t}"
                );
            }
            rest = &rest[j + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
        // Four points have bits per weight; three are on the front, joined by one polyline.
        assert_eq!(svg.matches("<circle class=\"point").count(), 4);
        assert_eq!(svg.matches("<circle class=\"point pareto\"").count(), 3);
        assert_eq!(svg.matches("<polyline class=\"pareto\"").count(), 1);
        assert!(svg.contains("&lt;bad&gt; &amp; w4") && svg.contains("base &amp; co"));
        assert!(svg.contains("log scale"), "KLD spans 0.002..0.9: log axis");
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let p = std::env::temp_dir().join(format!("lowbit-compare-{}.svg", std::process::id()));
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        std::fs::remove_file(&p).unwrap();
        assert!(write_atomic(Path::new("/nonexistent-dir/x.svg"), b"x").is_err());
    }
}
