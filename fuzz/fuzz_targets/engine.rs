//! The engine on arbitrary strided views, element types and specs: never panics, and the
//! fast path (with and without stats, AVX-512, AVX2 and portable) equals the scalar
//! reference bit for bit, and every build gives the same statistics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quantbridge::quant::{quantize_reference, ElemSlice, Engine, Fresh, Granularity, Kernel, QuantSpec, ScaleDType, TensorView};

fn take(data: &mut &[u8]) -> u8 {
    let (first, rest) = data.split_first().unwrap_or((&0, &[]));
    *data = rest;
    *first
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let ndim = 1 + (take(&mut data) % 3) as usize;
    let mut shape: Vec<usize> = (0..ndim).map(|_| (take(&mut data) % 40) as usize).collect();
    let mut strides: Vec<isize> = (0..ndim).map(|_| take(&mut data) as i8 as isize % 50).collect();
    let origin = take(&mut data) as usize * 4;
    let bits = [2u8, 4, 8][(take(&mut data) % 3) as usize];
    let flags = take(&mut data);
    let granularity = match take(&mut data) % 5 {
        0 => Granularity::Tensor,
        1 => Granularity::Channel,
        2 => Granularity::Group(128),
        3 => Granularity::Group(64),
        _ => Granularity::Group(1 + (take(&mut data) % 70) as usize),
    };
    // Wide rows, row-major: rows of many groups, which the engine finds 16 at a time and
    // encodes a batch per kernel call (the input's floats repeat to fill the buffer).
    let wide = flags & 8 != 0;
    if wide {
        *shape.last_mut().unwrap() *= 16;
        let mut step = 1isize;
        for (stride, &dim) in strides.iter_mut().zip(&shape).rev() {
            *stride = step;
            step *= dim.max(1) as isize;
        }
    }
    // A tall transposed weight (column-major, rows adjacent in memory): gathered in
    // 16×16 or 8×8 blocks, its groups of 64 or 128 found 16 at a time, encoded a batch per
    // kernel call, with the next group's lines prefetched.
    if flags & 16 != 0 && !wide {
        let rows = 4 * shape[0];
        let cols = 16 * shape[ndim - 1];
        shape = vec![rows, cols];
        strides = vec![1, rows.max(1) as isize];
    }
    let scale_dtype = [ScaleDType::F32, ScaleDType::F16, ScaleDType::BF16][(take(&mut data) % 3) as usize];
    let spec = QuantSpec { bits, symmetric: flags & 1 != 0, granularity, scale_dtype, pack: flags & 2 != 0, stats: flags & 4 != 0 };
    let mut values: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if (wide || flags & 16 != 0) && !values.is_empty() {
        let needed = origin + shape.iter().product::<usize>();
        values = values.iter().copied().cycle().take(needed.max(values.len())).collect();
    }
    // The element type: half precision is widened inside the kernels (loads, transposes,
    // reversed rows), float64 rounded as it is read.
    let halves: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
    let brains: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let doubles: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    let elements = match flags & 96 {
        0 => ElemSlice::F32(&values),
        32 => ElemSlice::F16(&halves),
        64 => ElemSlice::BF16(&brains),
        _ => ElemSlice::F64(&doubles),
    };
    let Ok(view) = TensorView::new(elements, origin, shape, strides) else { return };
    let reference = quantize_reference(&view, &spec);
    let kernels = Kernel::supported();
    // The statistics (fused into the vector encodes, a separate pass in the portable
    // build) are the same bits in every build: same chunks, same lane order (docs/math.md).
    if spec.stats {
        let stats: Vec<_> = kernels.iter().map(|&k| Engine::new(k, &Fresh).quantize(&view, &spec).ok().map(|q| q.stats)).collect();
        for s in &stats[1..] {
            if let (Some(a), Some(b)) = (s, &stats[0]) {
                assert_eq!(a, b);
            }
        }
    }
    // Every build this CPU runs (portable, AVX2, AVX-512), with and without statistics.
    for (kernel, stats) in kernels.iter().flat_map(|&k| [(k, spec.stats), (k, false)]) {
        let fast = Engine::new(kernel, &Fresh).quantize(&view, &QuantSpec { stats, ..spec });
        match (&fast, &reference) {
            (Ok(f), Ok(r)) => {
                assert_eq!(f.codes, r.codes);
                assert_eq!(f.scales, r.scales);
                assert_eq!(f.zero_points, r.zero_points);
                let a: Vec<u32> = f.dequantize().unwrap().iter().map(|v| v.to_bits()).collect();
                let b: Vec<u32> = f.dequantize_reference().iter().map(|v| v.to_bits()).collect();
                assert_eq!(a, b);
            }
            (Err(_), Err(_)) => {}
            (f, r) => panic!("fast {:?} vs reference {:?}", f.as_ref().err(), r.as_ref().err()),
        }
    }
});
