//! The K-quants' scale searches on arbitrary finite floats (subnormals, huge values, ties,
//! constant sub-blocks): every build this CPU runs (the portable lanes, AVX2, AVX-512)
//! writes the same bytes and the same statistics. The unit tests hold the portable lanes
//! to the scalar transcription of ggml; this holds the kernels to them on inputs no test
//! generator thought of.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quantbridge::quant::gguf::GgufType;
use quantbridge::quant::{ElemSlice, Engine, Fresh, Kernel, TensorView};

fuzz_target!(|input: &[u8]| {
    let Some((&choice, data)) = input.split_first() else { return };
    // Whole super-blocks: one row of `blocks` × 256 values, the input's floats repeated.
    let floats: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).map(|v| if v.is_finite() { v } else { 0.0 }).collect();
    if floats.is_empty() {
        return;
    }
    let blocks = 1 + (choice as usize >> 2) % 4;
    let values: Vec<f32> = floats.iter().copied().cycle().take(blocks * 256).collect();
    let ty = [GgufType::Q4K, GgufType::Q5K, GgufType::Q6K][(choice % 4).min(2) as usize];
    let Ok(view) = TensorView::new(ElemSlice::F32(&values), 0, vec![1, blocks * 256], vec![0, 1]) else { return };
    let results: Vec<_> = Kernel::supported().into_iter().map(|k| (k, Engine::new(k, &Fresh).quantize_gguf(&view, ty, true))).collect();
    let (first_kernel, first) = &results[0];
    for (kernel, result) in &results[1..] {
        match (first, result) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.codes, b.codes, "{first_kernel:?} vs {kernel:?}");
                // Bits, not values: a block whose f16 scale overflows has NaN statistics.
                let bits = |s: &Option<quantbridge::quant::Stats>| s.map(|s| [s.mse.to_bits(), s.max_abs_error.to_bits(), s.sqnr_db.to_bits()]);
                assert_eq!(bits(&a.stats), bits(&b.stats), "{first_kernel:?} vs {kernel:?}");
            }
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{first_kernel:?}: {:?} vs {kernel:?}: {:?}", a.as_ref().err(), b.as_ref().err()),
        }
    }
});
