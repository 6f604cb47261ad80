//! ggml's K-quants: 256-value super-blocks. `quantize_q4_k`, `quantize_q5_k` and
//! `quantize_q6_k` repeat ggml's reference quantizers (`quantize_row_q4_K_ref`, …, the path
//! `llama-quantize` takes without an importance matrix) operation for operation, in float32
//! and in the same order, so the bytes are ggml's; the dequantizers repeat gguf-py's.

use half::f16;

use crate::quant::simd::Avx2;

/// Values per super-block.
pub const QK_K: usize = 256;
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round to nearest (even) through the float adder, with its
/// out-of-range behaviour (|x| > 4194303 wraps) reproduced bit for bit.
#[inline(always)]
fn nearest_int(x: f32) -> i32 {
    let val = x + 12_582_912.0f32;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

fn f16_round(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// ggml's `make_qkx2_quants`: codes `l` in `0..=nmax` and `(scale, −min)` for `x`, the
/// weighted least-squares refinement over `nstep + 1` candidate scales. The scalar
/// transcription, kept as the oracle [`make_qkx2_quants_lanes`] is tested against.
#[cfg(test)]
fn make_qkx2_quants(nmax: i32, x: &[f32; 32], weights: &[f32; 32], l_out: &mut [u8; 32], rmin: f32, rdelta: f32, nstep: i32) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l_out[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                *l_out = laux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's search for a Q4_K/Q5_K sub-block: codes in `0..=nmax`, candidate scales from
/// `(rmin + rdelta·is + nmax) / (max − min)` for `is` in `0..=nstep`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Qkx2 {
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
}

/// Q4_K's search (`make_qkx2_quants(32, 15, …, -1.f, 0.1f, 20, …)` in ggml).
const Q4_K_SEARCH: Qkx2 = Qkx2 { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20 };
/// Q5_K's search (`make_qkx2_quants(32, 31, …, -0.5f, 0.1f, 15, …)`).
const Q5_K_SEARCH: Qkx2 = Qkx2 { nmax: 31, rmin: -0.5, rdelta: 0.1, nstep: 15 };

/// The sub-blocks of a super-block, searched at once by [`make_qkx2_quants_lanes`].
const SUBS: usize = 8;

/// One value per sub-block.
type Lanes = [f32; SUBS];

/// `f` of every lane.
#[inline(always)]
fn lanes(f: impl Fn(usize) -> f32) -> Lanes {
    std::array::from_fn(f)
}

/// ggml's `make_qkx2_quants` for the eight sub-blocks of a super-block at once, sub-block
/// `k` in lane `k` (`x[i][k]` is its element `i`): `(scale, −min)` per lane, codes in
/// `l_out[i][k]`.
///
/// Every lane runs the scalar search's float32 operations in its order, so the bits are
/// ggml's; its branches (a flat sub-block, `det > 0`, a positive `min`, a better candidate)
/// become per-lane selects, so the 21 candidates × 32 values run as 8-lane vectors instead of
/// one scalar chain per sub-block (the search was nearly all of a Q4_K run). As in ggml,
/// a better candidate's `min` is used by the candidates after it.
#[inline(always)]
fn make_qkx2_quants_lanes(search: Qkx2, x: &[Lanes; 32], weights: &[Lanes; 32], l_out: &mut [[u8; SUBS]; 32]) -> (Lanes, Lanes) {
    let Qkx2 { nmax, rmin, rdelta, nstep } = search;
    let code = |v: f32| nearest_int(v).clamp(0, nmax) as f32;
    let (mut min, mut max, mut sum_w) = (x[0], x[0], weights[0]);
    let mut sum_x = lanes(|k| sum_w[k] * x[0][k]);
    for i in 1..32 {
        for k in 0..SUBS {
            let v = x[i][k];
            min[k] = if v < min[k] { v } else { min[k] };
            max[k] = if v > max[k] { v } else { max[k] };
            sum_w[k] += weights[i][k];
            sum_x[k] += weights[i][k] * v;
        }
    }
    min = lanes(|k| if min[k] > 0.0 { 0.0 } else { min[k] });
    // A flat sub-block returns at once in ggml; here its lane runs on (on infinities, all
    // discarded) and is set at the end.
    let flat: [bool; SUBS] = std::array::from_fn(|k| max[k] == min[k]);
    let mut iscale = lanes(|k| nmax as f32 / (max[k] - min[k]));
    let mut scale = lanes(|k| 1.0 / iscale[k]);
    let mut best_error = [0f32; SUBS];
    let mut best = [[0f32; SUBS]; 32];
    for i in 0..32 {
        for k in 0..SUBS {
            let l = code(iscale[k] * (x[i][k] - min[k]));
            best[i][k] = l;
            let diff = scale[k] * l + min[k] - x[i][k];
            best_error[k] += weights[i][k] * (diff * diff);
        }
    }
    let mut laux = [[0f32; SUBS]; 32];
    for is in 0..=nstep {
        let numerator = rmin + rdelta * is as f32 + nmax as f32;
        iscale = lanes(|k| numerator / (max[k] - min[k]));
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; SUBS], [0f32; SUBS], [0f32; SUBS]);
        for i in 0..32 {
            let (xi, wi) = (&x[i], &weights[i]);
            let l = lanes(|k| code(iscale[k] * (xi[k] - min[k])));
            let wl = lanes(|k| wi[k] * l[k]);
            sum_l = lanes(|k| sum_l[k] + wl[k]);
            sum_l2 = lanes(|k| sum_l2[k] + wl[k] * l[k]);
            sum_xl = lanes(|k| sum_xl[k] + wl[k] * xi[k]);
            laux[i] = l;
        }
        let det = lanes(|k| sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k]);
        let mut this_scale = lanes(|k| (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / det[k]);
        let mut this_min = lanes(|k| (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / det[k]);
        for k in 0..SUBS {
            if this_min[k] > 0.0 {
                this_min[k] = 0.0;
                this_scale[k] = sum_xl[k] / sum_l2[k];
            }
        }
        let mut cur_error = [0f32; SUBS];
        for i in 0..32 {
            for k in 0..SUBS {
                let diff = this_scale[k] * laux[i][k] + this_min[k] - x[i][k];
                cur_error[k] += weights[i][k] * (diff * diff);
            }
        }
        let better: [bool; SUBS] = std::array::from_fn(|k| det[k] > 0.0 && cur_error[k] < best_error[k]);
        for i in 0..32 {
            for k in 0..SUBS {
                best[i][k] = if better[k] { laux[i][k] } else { best[i][k] };
            }
        }
        for k in 0..SUBS {
            if better[k] {
                best_error[k] = cur_error[k];
                scale[k] = this_scale[k];
                min[k] = this_min[k];
            }
        }
    }
    for i in 0..32 {
        for k in 0..SUBS {
            l_out[i][k] = if flat[k] { 0 } else { best[i][k] as u8 };
        }
    }
    (lanes(|k| if flat[k] { 0.0 } else { scale[k] }), lanes(|k| -min[k]))
}

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights (what Q6_K uses):
/// signed codes stored as `l + nmax` and the scale. The scalar transcription, kept as the
/// oracle [`make_qx_quants_lanes`] is tested against.
#[cfg(test)]
fn make_qx_quants(nmax: i32, x: &[f32; 16], l_out: &mut [i8; 16]) -> f32 {
    let n = x.len();
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = x[i] * x[i];
        let l = l as f32;
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
                l_out[i] = (nmax + l) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_qx_quants` (`rmse_type = 1`, no weights) for eight of Q6_K's 16-value
/// sub-blocks at once, sub-block `k` in lane `k` (`x[i][k]` is its element `i`): the scale
/// per lane, codes (`l + nmax`) in `l_out[i][k]`. As [`make_qkx2_quants_lanes`], every
/// lane runs the scalar search's operations in its order and its branches become selects.
#[inline(always)]
fn make_qx_quants_lanes(nmax: i32, x: &[Lanes; 16], l_out: &mut [[i8; SUBS]; 16]) -> Lanes {
    let code = |v: f32| nearest_int(v).clamp(-nmax, nmax - 1) as f32;
    let (mut max, mut amax) = ([0f32; SUBS], [0f32; SUBS]);
    for row in x {
        for k in 0..SUBS {
            if row[k].abs() > amax[k] {
                amax[k] = row[k].abs();
                max[k] = row[k];
            }
        }
    }
    // A sub-block below the threshold returns zeros at once in ggml; its lane runs on and
    // is set at the end.
    let tiny: [bool; SUBS] = std::array::from_fn(|k| amax[k] < GROUP_MAX_EPS);
    let search = |iscale: &Lanes, codes: &mut [Lanes; 16]| {
        let (mut sumlx, mut suml2) = ([0f32; SUBS], [0f32; SUBS]);
        for (row, out) in x.iter().zip(codes.iter_mut()) {
            for k in 0..SUBS {
                let l = code(iscale[k] * row[k]);
                out[k] = l;
                let w = row[k] * row[k];
                sumlx[k] += w * row[k] * l;
                suml2[k] += w * l * l;
            }
        }
        (sumlx, suml2)
    };
    let mut best = [[0f32; SUBS]; 16];
    let iscale = lanes(|k| -(nmax as f32) / max[k]);
    let (sumlx, suml2) = search(&iscale, &mut best);
    let mut scale = lanes(|k| if suml2[k] != 0.0 { sumlx[k] / suml2[k] } else { 0.0 });
    let mut best_fit = lanes(|k| scale[k] * sumlx[k]);
    let mut laux = [[0f32; SUBS]; 16];
    for is in (-9i32..=9).filter(|&is| is != 0) {
        let numerator = -(nmax as f32 + 0.1f32 * is as f32);
        let (sumlx, suml2) = search(&lanes(|k| numerator / max[k]), &mut laux);
        for k in 0..SUBS {
            if suml2[k] > 0.0 && sumlx[k] * sumlx[k] > best_fit[k] * suml2[k] {
                for i in 0..16 {
                    best[i][k] = laux[i][k];
                }
                scale[k] = sumlx[k] / suml2[k];
                best_fit[k] = scale[k] * sumlx[k];
            }
        }
    }
    for i in 0..16 {
        for k in 0..SUBS {
            l_out[i][k] = if tiny[k] { 0 } else { (best[i][k] as i32 + nmax) as i8 };
        }
    }
    lanes(|k| if tiny[k] { 0.0 } else { scale[k] })
}

/// The 6-bit scales and mins of the eight sub-blocks, packed into 12 bytes as ggml packs them.
#[inline(always)]
fn pack_scales_mins(scales: &[f32; 8], mins: &[f32; 8], out: &mut [u8]) -> (f32, f32) {
    let max_scale = scales.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let max_min = mins.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    out[..12].fill(0);
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            out[j] = ls;
            out[j + 4] = lm;
        } else {
            out[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            out[j - 4] |= (ls >> 4) << 6;
            out[j] |= (lm >> 4) << 6;
        }
    }
    (max_scale, max_min)
}

/// ggml's `get_scale_min_k4`.
#[inline(always)]
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Codes of one super-block for Q4_K / Q5_K: the sub-block fits, their scales packed, then
/// every code recomputed from the stored (rounded) scales, as ggml does. Writes `d`, `dmin`
/// and the 12 scale bytes into `head` (16 bytes) and returns the codes.
#[inline(always)]
fn k_block_codes(x: &[f32], search: Qkx2, head: &mut [u8], cpu: Option<Avx2>) -> [u8; QK_K] {
    let nmax = search.nmax;
    let x: &[f32; QK_K] = x.try_into().expect("a super-block");
    let mut l = [0u8; QK_K];
    // Sub-block k's element i in lane k of row i, and ggml's weights `av_x + |x|`.
    let xs: [Lanes; 32] = std::array::from_fn(|i| lanes(|k| x[32 * k + i]));
    let mut sum_x2 = [0f32; SUBS];
    for row in &xs {
        for k in 0..SUBS {
            sum_x2[k] += row[k] * row[k];
        }
    }
    let av_x = lanes(|k| (sum_x2[k] / 32.0).sqrt());
    let weights: [Lanes; 32] = std::array::from_fn(|i| lanes(|k| av_x[k] + xs[i][k].abs()));
    let mut codes = [[0u8; SUBS]; 32];
    let (scales, mins) = match cpu {
        #[cfg(target_arch = "x86_64")]
        Some(cpu) => cpu.qkx2_search(search, &xs, &weights, &mut codes),
        _ => make_qkx2_quants_lanes(search, &xs, &weights, &mut codes),
    };
    for (i, row) in codes.iter().enumerate() {
        for k in 0..SUBS {
            l[32 * k + i] = row[k];
        }
    }
    let (max_scale, max_min) = pack_scales_mins(&scales, &mins, &mut head[4..16]);
    head[..2].copy_from_slice(&f16::from_f32(max_scale / 63.0).to_le_bytes());
    head[2..4].copy_from_slice(&f16::from_f32(max_min / 63.0).to_le_bytes());
    let (d_all, dmin_all) = (f16_round(max_scale / 63.0), f16_round(max_min / 63.0));
    for j in 0..8 {
        let (sc, m) = scale_min(j, &head[4..16]);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    l
}

/// Q4_K: `d`, `dmin` (f16), 12 bytes of 6-bit scales and mins, 128 bytes of nibbles. 144 bytes.
#[inline(always)]
pub fn quantize_q4_k(x: &[f32], out: &mut [u8], cpu: Option<Avx2>) {
    let l = k_block_codes(x, Q4_K_SEARCH, &mut out[..16], cpu);
    let qs = &mut out[16..144];
    for (chunk, q) in l.chunks_exact(64).zip(qs.chunks_exact_mut(32)) {
        for i in 0..32 {
            q[i] = chunk[i] | (chunk[i + 32] << 4);
        }
    }
}

/// Q5_K: as Q4_K plus 32 bytes of fifth bits. 176 bytes.
#[inline(always)]
pub fn quantize_q5_k(x: &[f32], out: &mut [u8], cpu: Option<Avx2>) {
    let l = k_block_codes(x, Q5_K_SEARCH, &mut out[..16], cpu);
    let (qh, ql) = out[16..176].split_at_mut(32);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (chunk, q) in l.chunks_exact(64).zip(ql.chunks_exact_mut(32)) {
        for j in 0..32 {
            let mut l1 = chunk[j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = chunk[j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            q[j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales, `d` (f16). 210 bytes.
///
/// Kept out of line (so built for the baseline CPU; its search still runs in the AVX2
/// kernel): inlined into the AVX-512 code, LLVM left its code-recompute loop scalar, and a
/// 1024×4096 Q6_K took 12.2-12.4 ms instead of 10.3-10.6.
#[inline(never)]
pub fn quantize_q6_k(x: &[f32], out: &mut [u8], cpu: Option<Avx2>) {
    let x: &[f32; QK_K] = x.try_into().expect("a super-block");
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    // Sub-blocks 8h..8h+8 at once: sub-block 8h + k's element i in lane k of row i.
    for half in 0..2 {
        let xs: [Lanes; 16] = std::array::from_fn(|i| lanes(|k| x[16 * (8 * half + k) + i]));
        let mut codes = [[0i8; SUBS]; 16];
        let found = match cpu {
            #[cfg(target_arch = "x86_64")]
            Some(cpu) => cpu.qx_search(32, &xs, &mut codes),
            _ => make_qx_quants_lanes(32, &xs, &mut codes),
        };
        scales[8 * half..8 * half + 8].copy_from_slice(&found);
        for (i, row) in codes.iter().enumerate() {
            for k in 0..SUBS {
                l[16 * (8 * half + k) + i] = row[k];
            }
        }
    }
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for &scale in &scales {
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    out[..210].fill(0);
    if max_abs_scale < GROUP_MAX_EPS {
        return; // all zeros, d = 0
    }
    let iscale = -128.0 / max_scale;
    let d_bytes = f16::from_f32(1.0 / iscale).to_le_bytes();
    out[208..210].copy_from_slice(&d_bytes);
    let d_all = f16::from_le_bytes(d_bytes).to_f32();
    let mut sc = [0i8; 16];
    for ib in 0..16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        out[192 + ib] = sc[ib] as u8;
    }
    for j in 0..16 {
        let d = d_all * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    let (ql, rest) = out.split_at_mut(128);
    let qh = &mut rest[..64];
    for half in 0..2 {
        let (j, ql, qh) = (half * 128, &mut ql[half * 64..half * 64 + 64], &mut qh[half * 32..half * 32 + 32]);
        for i in 0..32 {
            let q = |k: usize| l[j + i + 32 * k] as u8;
            ql[i] = (q(0) & 0xf) | ((q(2) & 0xf) << 4);
            ql[i + 32] = (q(1) & 0xf) | ((q(3) & 0xf) << 4);
            qh[i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
}

fn dequantize_k(b: &[u8], out: &mut [f32], fifth_bits: Option<&[u8]>, qs: &[u8]) {
    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
    let dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
    for j in 0..8 {
        let (sc, m) = scale_min(j, &b[4..16]);
        let (dj, mj) = (d * sc as f32, dmin * m as f32);
        let nibbles = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        for i in 0..32 {
            let low = if j % 2 == 0 { nibbles[i] & 0xf } else { nibbles[i] >> 4 };
            let high = fifth_bits.map_or(0, |qh| ((qh[i] >> j) & 1) << 4);
            out[32 * j + i] = dj * (low | high) as f32 - mj;
        }
    }
}

/// Q4_K values: `d·sc · q − dmin·m`.
pub fn dequantize_q4_k(b: &[u8], out: &mut [f32]) {
    dequantize_k(b, out, None, &b[16..144]);
}

/// Q5_K values.
pub fn dequantize_q5_k(b: &[u8], out: &mut [f32]) {
    dequantize_k(b, out, Some(&b[16..48]), &b[48..176]);
}

/// Q6_K values: `d·sc · (q − 32)`.
pub fn dequantize_q6_k(b: &[u8], out: &mut [f32]) {
    let d = f16::from_le_bytes([b[208], b[209]]).to_f32();
    for (n, o) in out.iter_mut().enumerate() {
        let (half, within) = (n / 128, n % 128);
        let (k, i) = (within / 32, within % 32);
        let ql = b[half * 64 + i + 32 * (k % 2)];
        let low = if k < 2 { ql & 0xf } else { ql >> 4 };
        let high = (b[128 + half * 32 + i] >> (2 * k)) & 3;
        let q = (low | (high << 4)) as i8 - 32;
        let scale = d * (b[192 + n / 16] as i8) as f32;
        *o = scale * q as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!([nearest_int(0.5), nearest_int(1.5), nearest_int(-0.5), nearest_int(2.4)], [0, 2, 0, 2]);
    }

    /// Sub-blocks that take every branch of the search: random scales and offsets, all
    /// positive (min clamped to 0), flat (constant, zero), ties and a lone outlier.
    fn sub_blocks(seed: u64) -> Vec<[f32; 32]> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 // in [0, 1)
        };
        let mut blocks = Vec::new();
        for case in 0..4096 {
            let (scale, offset) = (10f32.powf(next() * 8.0 - 4.0), next() * 4.0 - 2.0);
            let mut b: [f32; 32] = std::array::from_fn(|_| (next() * 2.0 - 1.0 + offset) * scale);
            match case % 8 {
                0 => b = [offset * scale; 32],
                1 => b = [0.0; 32],
                2 => b.iter_mut().for_each(|v| *v = v.abs() + scale),
                3 => b.iter_mut().for_each(|v| *v = (*v * 4.0 / scale).round() * 0.25),
                4 => b[(next() * 32.0) as usize] = 1e3 * scale,
                _ => {}
            }
            blocks.push(b);
        }
        blocks
    }

    /// The portable lanes and, where the CPU has it, the AVX2 kernel (a CPU without AVX2
    /// checks the portable path alone).
    #[test]
    fn the_lane_search_is_the_scalar_search_bit_for_bit() {
        let blocks = sub_blocks(0x9e37_79b9_7f4a_7c15);
        for search in [Q4_K_SEARCH, Q5_K_SEARCH] {
            let Qkx2 { nmax, rmin, rdelta, nstep } = search;
            for eight in blocks.chunks_exact(SUBS) {
                let xs: [Lanes; 32] = std::array::from_fn(|i| lanes(|k| eight[k][i]));
                let weights: [Lanes; 32] = std::array::from_fn(|i| lanes(|k| 0.5 + (i as f32 * 0.37 + k as f32).sin().abs() * xs[i][k].abs()));
                let mut codes = [[0u8; SUBS]; 32];
                let portable = make_qkx2_quants_lanes(search, &xs, &weights, &mut codes);
                #[allow(unused_mut)]
                let mut searches = vec![("portable", portable, codes)];
                #[cfg(target_arch = "x86_64")]
                if let Some(cpu) = Avx2::detect() {
                    let found = cpu.qkx2_search(search, &xs, &weights, &mut codes);
                    searches.push(("avx2", found, codes));
                }
                for k in 0..SUBS {
                    let w: [f32; 32] = std::array::from_fn(|i| weights[i][k]);
                    let mut want = [0u8; 32];
                    let (scale, min) = make_qkx2_quants(nmax, &eight[k], &w, &mut want, rmin, rdelta, nstep);
                    for (path, (scales, mins), codes) in &searches {
                        let got = (scales[k].to_bits(), mins[k].to_bits());
                        assert_eq!(got, (scale.to_bits(), min.to_bits()), "{path}: {:?}", eight[k]);
                        assert_eq!(std::array::from_fn::<u8, 32, _>(|i| codes[i][k]), want, "{path}: {:?}", eight[k]);
                    }
                }
            }
        }
    }

    /// Q6_K's search, as above, on the same sub-blocks cut in halves (16 values each).
    #[test]
    fn the_q6_k_lane_search_is_the_scalar_search_bit_for_bit() {
        let halves: Vec<[f32; 16]> = sub_blocks(0x2545_f491_4f6c_dd1d)
            .iter()
            .flat_map(|b| [b[..16].try_into().unwrap(), b[16..].try_into().unwrap()])
            .chain([[1e-16f32; 16], [-1e-14; 16]]) // below and above ggml's threshold
            .collect();
        for eight in halves.chunks_exact(SUBS) {
            let xs: [Lanes; 16] = std::array::from_fn(|i| lanes(|k| eight[k][i]));
            let mut codes = [[0i8; SUBS]; 16];
            let portable = make_qx_quants_lanes(32, &xs, &mut codes);
            #[allow(unused_mut)]
            let mut searches = vec![("portable", portable, codes)];
            #[cfg(target_arch = "x86_64")]
            if let Some(cpu) = Avx2::detect() {
                let found = cpu.qx_search(32, &xs, &mut codes);
                searches.push(("avx2", found, codes));
            }
            for k in 0..SUBS {
                let mut want = [0i8; 16];
                let scale = make_qx_quants(32, &eight[k], &mut want);
                for (path, scales, codes) in &searches {
                    assert_eq!(scales[k].to_bits(), scale.to_bits(), "{path}: {:?}", eight[k]);
                    assert_eq!(std::array::from_fn::<i8, 16, _>(|i| codes[i][k]), want, "{path}: {:?}", eight[k]);
                }
            }
        }
    }

    #[test]
    fn k_quants_reproduce_a_smooth_block_closely() {
        let x: Vec<f32> = (0..QK_K).map(|i| ((i as f32) * 0.37).sin()).collect();
        for (q, dq, size, tol) in [
            ((|x, o| quantize_q4_k(x, o, Avx2::detect())) as fn(&[f32], &mut [u8]), dequantize_q4_k as fn(&[u8], &mut [f32]), 144, 0.1),
            (|x, o| quantize_q5_k(x, o, Avx2::detect()), dequantize_q5_k, 176, 0.05),
            (|x, o| quantize_q6_k(x, o, Avx2::detect()), dequantize_q6_k, 210, 0.03),
        ] {
            let mut b = vec![0u8; size];
            q(&x, &mut b);
            let mut y = vec![0f32; QK_K];
            dq(&b, &mut y);
            let worst = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < tol, "{size}: {worst}");
        }
    }
}
