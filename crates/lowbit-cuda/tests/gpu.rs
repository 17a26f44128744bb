//! GPU kernels against the CPU references. Each test prints "SKIP: no CUDA device" and passes
//! when no driver or device exists (CI).

use lowbit_cuda::reference::{self as r, Rng};
use lowbit_cuda::{CudaBackend, Int4Kernel, WeightFormat};

fn backend() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) => {
            println!("SKIP: no CUDA device ({e})");
            None
        }
    }
}

#[test]
fn no_device_is_an_error_not_a_panic() {
    // On a GPU machine this opens the device; elsewhere it must return an error.
    match CudaBackend::new(0) {
        Ok(b) => println!("device: {} ({})", b.device_name(), b.arch()),
        Err(e) => println!("SKIP: no CUDA device ({e})"),
    }
    assert!(CudaBackend::new(1 << 20).is_err());
}

#[test]
fn gemv_all_formats_and_batches_match_cpu() {
    let Some(be) = backend() else { return };
    let mut rng = Rng::new(1);
    for format in [
        WeightFormat::Int4G128,
        WeightFormat::Int4G128Tiled,
        WeightFormat::Q4K,
        WeightFormat::Q8_0,
        WeightFormat::Bf16,
        WeightFormat::Q6K,
        WeightFormat::F32,
        WeightFormat::Nvfp4,
        WeightFormat::Mxfp4,
    ] {
        // (13, 172): an odd width only the f32 layout holds.
        for (rows, cols) in [(37, 512), (256, 1280), (64, 4096), (1000, 2048), (13, 172)] {
            if cols % format.k_multiple() != 0 {
                continue;
            }
            let (bytes, scales, vals) = r::random_matrix(format, rows, cols, &mut rng);
            let w = be
                .upload_matrix(format, rows, cols, &bytes, scales.as_deref())
                .unwrap();
            let max_batch = if format == WeightFormat::Int4G128Tiled {
                lowbit_cuda::MAX_BATCH_TILED
            } else {
                lowbit_cuda::MAX_BATCH
            };
            for batch in 1..=max_batch {
                let x = rng.vec(batch * cols, 1.0);
                let xd = be.upload(&x).unwrap();
                // Poison the output so an unwritten element fails.
                let mut yd = be.upload(&vec![f32::NAN; batch * rows]).unwrap();
                be.gemv(&w, &xd, batch, &mut yd).unwrap();
                let y = be.download(&yd).unwrap();
                let want = r::gemv(&vals, rows, cols, &x, batch);
                let err = r::rel_l2(&y, &want);
                // INT4 runs on the tensor cores with activations rounded to f16 (relative
                // 2^-11 each); the other kernels are f32 throughout.
                let tol = if matches!(format, WeightFormat::Int4G128 | WeightFormat::Int4G128Tiled)
                {
                    1e-3
                } else {
                    1e-5
                };
                assert!(
                    err < tol,
                    "{format:?} {rows}x{cols} batch {batch}: rel L2 {err:e}"
                );
            }
        }
    }
}

/// Every INT4 kernel variant, on shapes that cover row tails, both row tiles, batches whose
/// activations fit in shared memory and (K = 32768 at batch 8, past the pre-pass scratch and
/// near the shared-memory limit) ones that fall back.
#[test]
fn int4_kernel_variants_match_cpu() {
    let Some(mut be) = backend() else { return };
    let mut rng = Rng::new(11);
    for (rows, cols) in [(37, 512), (40, 4096), (8, 32768)] {
        let (bytes, scales, vals) = r::random_matrix(WeightFormat::Int4G128, rows, cols, &mut rng);
        let w = be
            .upload_matrix(
                WeightFormat::Int4G128,
                rows,
                cols,
                &bytes,
                scales.as_deref(),
            )
            .unwrap();
        for batch in [1, 2, 5, 8] {
            let x = rng.vec(batch * cols, 1.0);
            let xd = be.upload(&x).unwrap();
            let want = r::gemv(&vals, rows, cols, &x, batch);
            for k in Int4Kernel::ALL {
                be.set_int4_kernel(k);
                let mut yd = be.upload(&vec![f32::NAN; batch * rows]).unwrap();
                be.gemv(&w, &xd, batch, &mut yd).unwrap();
                let err = r::rel_l2(&be.download(&yd).unwrap(), &want);
                assert!(
                    err < 1e-3,
                    "{} {rows}x{cols} batch {batch}: rel L2 {err:e}",
                    k.name()
                );
            }
        }
    }
}

#[test]
fn rmsnorm_and_rope_match_cpu() {
    let Some(be) = backend() else { return };
    let mut rng = Rng::new(2);
    let (rows, n) = (3, 4096);
    let x = rng.vec(rows * n, 2.0);
    let w = rng.vec(n, 1.0);
    let mut y = be.alloc::<f32>(rows * n).unwrap();
    be.rmsnorm(
        &be.upload(&x).unwrap(),
        &be.upload(&w).unwrap(),
        &mut y,
        rows,
        n,
        1e-5,
    )
    .unwrap();
    let err = r::rel_l2(&be.download(&y).unwrap(), &r::rmsnorm(&x, &w, n, 1e-5));
    assert!(err < 1e-5, "rmsnorm rel L2 {err:e}");

    for neox in [true, false] {
        for pos in [0usize, 7, 4000] {
            let (nh, hd) = (8, 128);
            let v = rng.vec(nh * hd, 1.0);
            let mut vd = be.upload(&v).unwrap();
            let p = be.upload(&[pos as i32]).unwrap();
            be.rope(&mut vd, nh, hd, &p, 500000.0, neox).unwrap();
            let err = r::rel_l2(
                &be.download(&vd).unwrap(),
                &r::rope(&v, nh, hd, pos, 500000.0, neox),
            );
            assert!(err < 1e-5, "rope neox={neox} pos={pos}: rel L2 {err:e}");
        }
    }
}

#[test]
fn split_k_decode_attention_matches_cpu() {
    let Some(be) = backend() else { return };
    let mut rng = Rng::new(3);
    for (nh, nkv, hd, max_seq, seq, split) in [
        (32, 8, 128, 512, 300, 64),
        (8, 8, 64, 100, 1, 16),
        (4, 2, 64, 1000, 1000, 128),
    ] {
        // bf16 caches written through store_kv, one position at a time, as decode does.
        let mut kc = be.alloc::<u16>(nkv * max_seq * hd).unwrap();
        let mut vc = be.alloc::<u16>(nkv * max_seq * hd).unwrap();
        let mut kh = vec![0f32; nkv * max_seq * hd];
        let mut vh = vec![0f32; nkv * max_seq * hd];
        for p in 0..seq {
            let k = rng.vec(nkv * hd, 1.0);
            let v = rng.vec(nkv * hd, 1.0);
            let pd = be.upload(&[p as i32]).unwrap();
            be.store_kv(
                &be.upload(&k).unwrap(),
                &be.upload(&v).unwrap(),
                &mut kc,
                &mut vc,
                nkv,
                hd,
                max_seq,
                &pd,
            )
            .unwrap();
            for h in 0..nkv {
                for d in 0..hd {
                    let o = (h * max_seq + p) * hd + d;
                    kh[o] = half::bf16::from_f32(k[h * hd + d]).to_f32();
                    vh[o] = half::bf16::from_f32(v[h * hd + d]).to_f32();
                }
            }
        }
        let q = rng.vec(nh * hd, 1.0);
        let mut out = be.upload(&vec![f32::NAN; nh * hd]).unwrap();
        let mut scratch = be
            .alloc::<f32>(CudaBackend::attention_scratch_len(nh, hd, max_seq, split))
            .unwrap();
        let last = be.upload(&[seq as i32 - 1]).unwrap();
        be.attention_decode(
            &be.upload(&q).unwrap(),
            &kc,
            &vc,
            &mut out,
            &mut scratch,
            nh,
            nkv,
            hd,
            max_seq,
            &last,
            split,
        )
        .unwrap();
        let want = r::attention(&q, &kh, &vh, nh, nkv, hd, max_seq, seq);
        let err = r::rel_l2(&be.download(&out).unwrap(), &want);
        assert!(
            err < 1e-4,
            "attention nh={nh} nkv={nkv} hd={hd} seq={seq}: rel L2 {err:e}"
        );
    }
}

#[test]
fn shape_errors_are_errors() {
    let Some(be) = backend() else { return };
    assert!(be
        .upload_matrix(WeightFormat::Int4G128, 4, 100, &[0; 200], Some(&[0; 4]))
        .is_err());
    let w = be.random_matrix(WeightFormat::Q8_0, 8, 64, 1).unwrap();
    let x = be.alloc::<f32>(64).unwrap();
    let mut y = be.alloc::<f32>(8).unwrap();
    assert!(be.gemv(&w, &x, 2, &mut y).is_err());
    assert!(be.gemv(&w, &x, 9, &mut y).is_err());
}

/// The tiled INT4 kernel's persistent grid splits tiles between warps; shapes with many tiles
/// per warp, a few, and far fewer units than warps, run twice each to catch a workspace that
/// is not left clean, and interleaved with a second matrix sharing the workspace.
#[test]
fn int4_tiled_split_tiles_and_workspace_reuse() {
    let Some(be) = backend() else { return };
    let mut rng = Rng::new(21);
    let mut mats = Vec::new();
    for (rows, cols) in [
        (16, 128),
        (33, 384),
        (4096, 1024),
        (14336 / 4, 4096),
        (3000, 14336 / 2),
    ] {
        let (bytes, scales, vals) =
            r::random_matrix(WeightFormat::Int4G128Tiled, rows, cols, &mut rng);
        let w = be
            .upload_matrix(
                WeightFormat::Int4G128Tiled,
                rows,
                cols,
                &bytes,
                scales.as_deref(),
            )
            .unwrap();
        mats.push((w, vals, rows, cols));
    }
    for round in 0..2 {
        for (w, vals, rows, cols) in &mats {
            for batch in [1, 3, 8, 16] {
                let x = rng.vec(batch * cols, 1.0);
                let xd = be.upload(&x).unwrap();
                let mut yd = be.upload(&vec![f32::NAN; batch * rows]).unwrap();
                be.gemv(w, &xd, batch, &mut yd).unwrap();
                let err = r::rel_l2(
                    &be.download(&yd).unwrap(),
                    &r::gemv(vals, *rows, *cols, &x, batch),
                );
                assert!(
                    err < 1e-3,
                    "round {round} {rows}x{cols} batch {batch}: rel L2 {err:e}"
                );
            }
        }
    }
    for batch in [1, 8, 16] {
        println!(
            "int4t plan batch {batch}, K 4096: {:?}",
            be.int4t_launch_plan(batch, 4096).unwrap()
        );
    }
}

/// The fused decode-step kernels compute exactly what the separate ones do.
#[test]
fn fused_step_kernels_match_separate_ones() {
    let Some(be) = backend() else { return };
    let mut rng = Rng::new(31);
    // add_rmsnorm == add then rmsnorm (bit for bit: same operations in the same order per
    // element; the block sums are the same reduction).
    let n = 4096;
    let (x0, d, w) = (rng.vec(n, 2.0), rng.vec(n, 1.0), rng.vec(n, 1.0));
    let (dd, wd) = (be.upload(&d).unwrap(), be.upload(&w).unwrap());
    let mut xa = be.upload(&x0).unwrap();
    let mut ya = be.alloc::<f32>(n).unwrap();
    be.add_rmsnorm(&mut xa, &dd, &wd, &mut ya, 1, n, 1e-5)
        .unwrap();
    let mut xb = be.upload(&x0).unwrap();
    let mut yb = be.alloc::<f32>(n).unwrap();
    be.add(&mut xb, &dd, n).unwrap();
    be.rmsnorm(&xb, &wd, &mut yb, 1, n, 1e-5).unwrap();
    assert_eq!(be.download(&xa).unwrap(), be.download(&xb).unwrap());
    let want: Vec<f64> = be
        .download(&yb)
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let err = r::rel_l2(&be.download(&ya).unwrap(), &want);
    assert!(err < 1e-6, "add_rmsnorm rel L2 {err:e}");
    // qkv_rope_store == split + rope(q) + rope(k) + store_kv, at a few positions.
    let (nh, nkv, hd, max_seq) = (8, 2, 128, 64);
    for p in [0, 5, 63] {
        let qkv = rng.vec((nh + 2 * nkv) * hd, 1.0);
        let qkvd = be.upload(&qkv).unwrap();
        let pos = be.upload(&[p]).unwrap();
        let mut q1 = be.alloc::<f32>(nh * hd).unwrap();
        let mut kc1 = be.alloc::<u16>(nkv * max_seq * hd).unwrap();
        let mut vc1 = be.alloc::<u16>(nkv * max_seq * hd).unwrap();
        be.qkv_rope_store(
            &qkvd, &mut q1, &mut kc1, &mut vc1, nh, nkv, hd, max_seq, &pos, 10000.0, true,
        )
        .unwrap();
        let mut q2 = be.upload(&qkv[..nh * hd]).unwrap();
        let mut k2 = be.upload(&qkv[nh * hd..(nh + nkv) * hd]).unwrap();
        let v2 = be.upload(&qkv[(nh + nkv) * hd..]).unwrap();
        let mut kc2 = be.alloc::<u16>(nkv * max_seq * hd).unwrap();
        let mut vc2 = be.alloc::<u16>(nkv * max_seq * hd).unwrap();
        be.rope(&mut q2, nh, hd, &pos, 10000.0, true).unwrap();
        be.rope(&mut k2, nkv, hd, &pos, 10000.0, true).unwrap();
        be.store_kv(&k2, &v2, &mut kc2, &mut vc2, nkv, hd, max_seq, &pos)
            .unwrap();
        assert_eq!(
            be.download(&q1).unwrap(),
            be.download(&q2).unwrap(),
            "q at {p}"
        );
        assert_eq!(
            be.download(&kc1).unwrap(),
            be.download(&kc2).unwrap(),
            "k cache at {p}"
        );
        assert_eq!(
            be.download(&vc1).unwrap(),
            be.download(&vc2).unwrap(),
            "v cache at {p}"
        );
    }
}
